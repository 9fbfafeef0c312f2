"""Datasets: files with column mapping and one-line errors, the built-in tasks' traces, determinism and
the held-out split, and the checkpointable prompt stream."""

import importlib.util
import json
import random
import re

import pytest

from engine.errors import AhaError
from engine.train.data import (
    TASK_ROWS,
    PromptStream,
    TaskSource,
    addition_problem,
    arithmetic_problem,
    first_rows,
    heldout_rows,
    is_heldout,
    is_task,
    load_rows,
    open_dataset,
    teacher_trace,
)

# Built-in tasks -----------------------------------------------------------------------------------


def test_addition_trace_writes_one_line_per_column():
    """One line per column, ones first, the carry written out (625 + 751 = 1376)."""
    assert teacher_trace(["6+0=6", "2+5=7", "5+8=13"], 1376) == "<think>\n6+0=6\n2+5=7\n5+8=13\n</think>\n1376"

    class Fixed(random.Random):
        def randint(self, low, high):
            return self.values.pop(0)

    rng = Fixed()
    rng.values = [526, 850]
    assert addition_problem(rng) == {"prompt": "526+850=", "answer": "1376",
                                     "completion": "<think>\n6+0=6\n2+5=7\n5+8=13\n</think>\n1376"}
    rng.values = [178, 256]  # carries into the tens and hundreds
    assert addition_problem(rng)["completion"] == "<think>\n8+6=14\n7+5+1=13\n1+2+1=4\n</think>\n434"


def _check_trace(row):
    """Every `a op b … = c` line of the trace is true, and the answer is the prompt's value."""
    expression = row["prompt"].removesuffix("=")
    assert int(row["answer"]) == eval(expression)  # digits and + - * only
    match = re.fullmatch(r"<think>\n((?:.*\n)*)</think>\n(-?\d+)", row["completion"])
    assert match, row["completion"]
    assert match[2] == row["answer"]
    for line in match[1].splitlines():
        if "=" in line:
            left, right = line.split("=")
            assert eval(left) == int(right), (row, line)


@pytest.mark.parametrize("task", ["addition", "arithmetic"])
def test_task_rows_are_correct_and_deterministic(task):
    source = TaskSource(task, seed=3)
    rows = [source.row(index) for index in range(300)]
    for row in rows:
        _check_trace(row)
        assert set(row["prompt"]) <= set("0123456789+-*=")
    assert rows == [TaskSource(task, seed=3).row(index) for index in range(300)]
    assert rows != [TaskSource(task, seed=4).row(index) for index in range(300)]
    if task == "arithmetic":
        assert {row["prompt"][len(row["prompt"].rstrip("=0123456789")) - 1] for row in rows} >= set("+-*")
        assert any(row["answer"].startswith("-") for row in rows)


def test_arithmetic_covers_subtraction_with_borrow_and_multiplication():
    rng = random.Random(0)
    rows = [arithmetic_problem(rng) for _ in range(500)]
    assert any("+10=" in row["completion"] for row in rows)  # a borrow
    assert any("*" in row["prompt"] and row["completion"].count("\n") > 4 for row in rows)  # partial products


@pytest.mark.parametrize("task", ["addition", "arithmetic"])
def test_heldout_split_is_disjoint_from_training(task):
    source = TaskSource(task, seed=0)
    heldout = source.heldout(500)
    prompts = {row["prompt"] for row in heldout}
    assert len(prompts) == 500 and all(is_heldout(prompt) for prompt in prompts)
    assert heldout == TaskSource(task, seed=99).heldout(500)  # the same whatever the training seed
    training = {source.row(index)["prompt"] for index in range(5000)}
    assert not training & prompts


def test_unknown_task_is_one_line():
    with pytest.raises(AhaError, match="unknown built-in task 'multiplication'"):
        TaskSource("multiplication")


# Files --------------------------------------------------------------------------------------------


def test_jsonl_with_column_mapping(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"question": "1+1=", "solution": "2", "level": 1}) + "\n\n"
                    + json.dumps({"question": "2+2=", "solution": "4", "level": 2}) + "\n")
    rows = load_rows(path, prompt_column="question", answer_column="solution")
    assert rows == [{"prompt": "1+1=", "answer": "2", "level": 1}, {"prompt": "2+2=", "answer": "4", "level": 2}]


def test_missing_column_names_column_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "a", "answer": "1"}) + "\n" + json.dumps({"prompt": "b"}) + "\n")
    with pytest.raises(AhaError) as error:
        load_rows(path)
    message = str(error.value)
    assert "\n" not in message
    assert f"{path} line 2 has no column 'answer'" in message and "--answer-column" in message
    with pytest.raises(AhaError, match="line 1 has no column 'question'.*--prompt-column"):
        load_rows(path, prompt_column="question")
    assert load_rows(path, answer_column=None)[1] == {"prompt": "b"}


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": \n')
    with pytest.raises(AhaError, match=r"line 2 is not valid JSON"):
        load_rows(path)


def test_csv_with_mapping_and_missing_column(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("q,a\n3+4=,7\n5+5=,10\n")
    assert load_rows(path, "q", "a") == [{"prompt": "3+4=", "answer": "7"}, {"prompt": "5+5=", "answer": "10"}]
    with pytest.raises(AhaError, match=r"data.csv line 2 has no column 'prompt'.*its columns: q, a"):
        load_rows(path)


def test_parquet_needs_pyarrow(tmp_path):
    path = tmp_path / "data.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1")
        with pytest.raises(AhaError) as error:
            load_rows(path)
        assert "needs pyarrow: pip install pyarrow" in str(error.value) and "\n" not in str(error.value)
    else:
        import pyarrow
        import pyarrow.parquet

        pyarrow.parquet.write_table(pyarrow.table({"p": ["1+2="], "answer": ["3"]}), path)
        assert load_rows(path, prompt_column="p") == [{"prompt": "1+2=", "answer": "3"}]


def test_open_dataset_errors(tmp_path):
    with pytest.raises(AhaError, match="not found"):
        open_dataset(str(tmp_path / "missing.jsonl"))
    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(AhaError, match="not a file or a built-in task .*pip install datasets"):
            open_dataset("openai/gsm8k")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(AhaError, match="unknown file type"):
        open_dataset(str(tmp_path / "data.txt"))
    assert isinstance(open_dataset("addition"), TaskSource)


def test_a_finite_list_of_rows_from_a_task_or_a_file(tmp_path, monkeypatch):
    """distill generate needs a list: a task's first training problems (TASK_ROWS unless told), a file's first
    rows (all unless told). A file named like a task, in the working folder, is the file."""
    task = open_dataset("arithmetic", seed=2)
    assert first_rows(task, 3) == [TaskSource("arithmetic", seed=2).row(index) for index in range(3)]
    assert len(first_rows(task, None)) == TASK_ROWS
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{n}+1=", "answer": str(n + 1)}) + "\n" for n in range(5)))
    assert [row["prompt"] for row in first_rows(open_dataset(str(path)), 2)] == ["0+1=", "1+1="]
    assert len(first_rows(open_dataset(str(path)), None)) == 5
    monkeypatch.chdir(tmp_path)
    assert is_task("addition") and not is_task("data.jsonl") and not is_task(None)
    (tmp_path / "addition").write_text(json.dumps({"prompt": "mine", "answer": "1"}) + "\n")
    assert not is_task("addition")
    with pytest.raises(AhaError, match="unknown file type"):
        open_dataset("addition")  # the file, not the task


# The stream ---------------------------------------------------------------------------------------


def test_prompt_stream_state_resumes_the_same_rows():
    rows = [{"prompt": str(index), "answer": str(index)} for index in range(10)]
    stream = PromptStream(rows, seed=5)
    first = stream.next(7) + stream.next(7)  # crosses into the second epoch
    assert sorted(row["prompt"] for row in first[:10]) == sorted(row["prompt"] for row in rows)
    state = stream.state_dict()
    after = stream.next(9)
    resumed = PromptStream(rows, seed=5)
    resumed.load_state_dict(state)
    assert resumed.next(9) == after
    task = PromptStream(TaskSource("addition", seed=1))
    task.next(3)
    copy = PromptStream(TaskSource("addition", seed=1))
    copy.load_state_dict(task.state_dict())
    assert copy.next(4) == task.next(4)


def test_held_out_rows_come_from_any_dataset_name(tmp_path):
    """eval_dataset takes what dataset takes (a task's held-out split too); without it only a task has held-out
    rows, and a file says what to set."""
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{n}+1=", "answer": str(n + 1)}) + "\n" for n in range(5)))
    rows = open_dataset(str(path))
    task = TaskSource("addition", seed=0)
    assert heldout_rows(rows, "addition", 4) == task.heldout(4)
    assert heldout_rows(task, None, 3) == task.heldout(3)
    assert [row["prompt"] for row in heldout_rows(task, str(path), 2)] == ["0+1=", "1+1="]
    with pytest.raises(AhaError, match="^eval_steps needs held-out rows: set eval_dataset"):
        heldout_rows(rows, None, 3)
