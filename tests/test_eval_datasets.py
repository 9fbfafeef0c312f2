"""Evaluation rows: a built-in task's held-out problems, and files in the MATH-500, AIME and GSM8K shapes
(JSONL, CSV, Parquet) with DeepSeek's math prompt, a given template, and one-line errors."""

import csv
import importlib.util
import json
import sys
import types

import pytest

from engine.errors import AhaError
from engine.eval.datasets import MATH_PROMPT, eval_rows
from engine.train.data import TaskSource, prompt_id


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_csv(path, records):
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def write_parquet(path, records, monkeypatch):
    """A Parquet file written with pyarrow; without pyarrow (not in every environment) a stand-in module
    whose read_table reads the records back, so the shape handling on top of engine.train.data is tested."""
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow
        import pyarrow.parquet

        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(records), path)
        return path
    path.write_text(json.dumps(records), encoding="utf-8")
    table = types.SimpleNamespace(to_pylist=lambda: json.loads(path.read_text(encoding="utf-8")))
    parquet = types.ModuleType("pyarrow.parquet")
    parquet.read_table = lambda _path: table
    package = types.ModuleType("pyarrow")
    package.parquet = parquet
    monkeypatch.setitem(sys.modules, "pyarrow", package)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", parquet)
    return path


MATH500 = [{"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "solution": "…", "answer": "\\frac{3}{4}",
            "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"},
           {"problem": "Compute $2^{10}$.", "solution": "…", "answer": "1024", "subject": "Algebra", "level": 1,
            "unique_id": "test/algebra/2.json"}]
AIME = [{"ID": "2024-I-1", "Problem": "Find the remainder when 2024 is divided by 1000.", "Solution": "…",
         "Answer": 24}]
GSM8K = [{"question": "Tom has 1,000 apples and buys 234 more. How many?",
          "answer": "He has 1000+234=<<1000+234=1234>>1234.\n#### 1,234"},
         {"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"}]


def test_builtin_task_rows_are_its_heldout_problems_unchanged():
    rows = eval_rows("addition", limit=5)
    heldout = TaskSource("addition").heldout(5)
    assert [row["prompt"] for row in rows] == [row["prompt"] for row in heldout]
    assert [row["answer"] for row in rows] == [row["answer"] for row in heldout]
    assert [row["prompt_id"] for row in rows] == [prompt_id(row) for row in heldout]
    assert set(rows[0]) == {"prompt_id", "prompt", "answer"}
    assert len(eval_rows("arithmetic")) == 100
    assert eval_rows("addition", limit=2, template="Q: {problem}")[0]["prompt"] == "Q: " + heldout[0]["prompt"]


def test_math500_jsonl_gets_the_math_prompt(tmp_path):
    rows = eval_rows(str(write_jsonl(tmp_path / "math500.jsonl", MATH500)))
    assert rows[0] == {"prompt_id": "test/algebra/1.json", "answer": "\\frac{3}{4}",
                       "prompt": "What is $\\frac{1}{2}+\\frac{1}{4}$?\nPlease reason step by step, and put your "
                                 "final answer within \\boxed{}."}
    assert rows[1]["prompt"] == MATH_PROMPT.replace("{problem}", "Compute $2^{10}$.")
    assert len(eval_rows(str(tmp_path / "math500.jsonl"), limit=1)) == 1


def test_aime_parquet_with_capitalized_columns(tmp_path, monkeypatch):
    rows = eval_rows(str(write_parquet(tmp_path / "aime.parquet", AIME, monkeypatch)))
    assert rows == [{"prompt_id": "2024-I-1", "answer": "24",
                     "prompt": MATH_PROMPT.replace("{problem}", AIME[0]["Problem"])}]


def test_gsm8k_csv_answer_after_the_marks_without_separators(tmp_path):
    rows = eval_rows(str(write_csv(tmp_path / "gsm8k.csv", GSM8K)))
    assert [row["answer"] for row in rows] == ["1234", "42"]
    assert rows[1]["prompt"] == "What is 6 times 7?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert rows[0]["prompt_id"] != rows[1]["prompt_id"]


def test_a_prompt_column_is_used_as_it_is_and_a_template_wins(tmp_path):
    path = write_jsonl(tmp_path / "ready.jsonl", [{"prompt": "2+2=", "answer": "4"}, {"prompt": "2+2=", "answer": "4"}])
    rows = eval_rows(str(path))
    assert [row["prompt"] for row in rows] == ["2+2=", "2+2="]
    assert rows[1]["prompt_id"] == rows[0]["prompt_id"] + "#2"          # a repeated problem keeps its own id
    templated = eval_rows(str(write_jsonl(tmp_path / "m.jsonl", MATH500)), template="Solve: {problem} Box it.")
    assert templated[1]["prompt"] == "Solve: Compute $2^{10}$. Box it."


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "custom.jsonl", [{"q": "1+1?", "gold": "\\boxed{2}"}])
    rows = eval_rows(str(path), prompt_column="q", answer_column="gold")
    assert rows[0]["answer"] == "2" and rows[0]["prompt"] == MATH_PROMPT.replace("{problem}", "1+1?")


@pytest.mark.parametrize(("records", "kwargs", "words"), [
    ([{"q": "1+1?", "answer": "2"}], {}, ["bad.jsonl", "q, answer", "--prompt-column"]),
    ([{"problem": "1+1?", "gold": "2"}], {}, ["bad.jsonl", "problem, gold", "--answer-column"]),
    ([{"problem": "1+1?", "answer": "2"}], {"prompt_column": "text"}, ["bad.jsonl", "'text'", "--prompt-column"]),
    ([{"problem": "1+1?", "answer": ""}], {}, ["bad.jsonl", "empty answer", "--answer-column"]),
    ([{"problem": "1+1?", "answer": "2"}], {"template": "no slot"}, ["{problem}"]),
    ([{"problem": "1+1?", "answer": "2"}], {"limit": 0}, ["--limit"]),
])
def test_mistakes_are_one_line_errors(tmp_path, records, kwargs, words):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(AhaError) as error:
        eval_rows(str(path), **kwargs)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(AhaError, match="not found"):
        eval_rows(str(tmp_path / "nothing.jsonl"))
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(AhaError, match="broken.jsonl line 1"):
        eval_rows(str(tmp_path / "broken.jsonl"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(AhaError, match="unknown file type"):
        eval_rows(str(tmp_path / "data.txt"))


def test_hub_dataset_shapes_are_tried_in_order(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return GSM8K

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    rows = eval_rows("openai/gsm8k:test", limit=1)
    assert rows == [{"prompt_id": rows[0]["prompt_id"], "answer": "1234",
                     "prompt": MATH_PROMPT.replace("{problem}", GSM8K[0]["question"])}]
    assert set(calls) == {("openai/gsm8k", "test")}
    with pytest.raises(AhaError, match="has no column 'text'"):
        eval_rows("openai/gsm8k:test", prompt_column="text")
