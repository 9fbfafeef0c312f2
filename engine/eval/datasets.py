"""Evaluation rows `{"prompt_id", "prompt", "answer"}` from a built-in task (its held-out problems, prompts
unchanged) or a JSONL/CSV/Parquet file (through engine.train.data, with column mapping). Files in the shapes
of MATH-500 and AIME (`problem`/`answer`) and GSM8K (`question`/`answer` ending `#### N`) are recognized,
and their problems get DeepSeek's math prompt unless the file has a `prompt` column or a template is given.
Nothing here knows models or scoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import AhaError
from engine.train.answers import gold_answer
from engine.train.data import TASK_ROWS, TaskSource, file_records, is_task, open_dataset, prompt_id

# DeepSeek-R1's recommended prompt for math (the model card's usage recommendations).
MATH_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
# Problem columns looked for in order, when no --prompt-column is given: a ready prompt, MATH-500/AIME, GSM8K.
PROBLEM_COLUMNS = ("prompt", "problem", "question")
ID_COLUMNS = ("id", "unique_id")


def eval_rows(spec: str, *, limit: int | None = None, prompt_column: str | None = None,
              answer_column: str | None = None, template: str | None = None, seed: int = 0) -> list[dict]:
    """The problems of an evaluation, `limit` at most (a task: `limit` or 100 held-out problems).

    spec: a built-in task (`addition`, `arithmetic`; `seed` picks its held-out draw, 0 = the problems
    training's held-out evaluation uses), a file, or a Hugging Face dataset `owner/name[:split]`.
    A file's problem column is `prompt_column`, else the first of prompt/problem/question it has (any
    case); its answer column `answer_column`, else `answer`. A GSM8K answer "…#### 1,234" becomes "1234",
    a boxed one its box. The prompt is `template` with `{problem}` replaced when given, else the file's
    `prompt` column as it is, else MATH_PROMPT around the problem. prompt_id: the row's id/unique_id
    column (any case), else a hash of problem and answer (a repeated one gets "#2", "#3").
    """
    if limit is not None and limit < 1:
        raise AhaError(f"--limit must be at least 1, got {limit}")
    if template is not None and "{problem}" not in template:
        raise AhaError(f"the prompt template {template!r} has no {{problem}}: write where the problem goes, "
                       "e.g. '{problem} Answer with a number.'")
    if is_task(spec):
        rows = TaskSource(spec).heldout(limit or TASK_ROWS, seed=seed)
        return _unique_ids([{"prompt_id": prompt_id(row), "prompt": _filled(template, row["prompt"]),
                             "answer": row["answer"]} for row in rows])
    records = _records(spec, prompt_column, answer_column)
    rows = []
    for record in records[:limit]:
        answer = _answer(record["answer"])
        if answer is None or answer == "":
            raise AhaError(f"dataset {spec}: a row has an empty answer (problem {str(record['prompt'])[:40]!r}); "
                           "give every row one, or map another column with --answer-column")
        problem = str(record["prompt"])
        id_column = _column([column for column, value in record.items() if value is not None], ID_COLUMNS)
        identity = None if id_column is None else record[id_column]
        if template is not None:
            prompt = _filled(template, problem)
        elif record["_shape"] == "prompt":
            prompt = problem
        else:
            prompt = _filled(MATH_PROMPT, problem)
        rows.append({"prompt_id": prompt_id({"id": identity, "prompt": problem, "answer": answer}),
                     "prompt": prompt, "answer": answer})
    return _unique_ids(rows)


def _records(spec: str, prompt_column: str | None, answer_column: str | None) -> list[dict[str, Any]]:
    """A file's rows with the problem under "prompt", the answer under "answer" and the detected shape
    under "_shape" ("prompt" when the problem column is a ready prompt)."""
    path = Path(spec).expanduser()
    if path.exists() or "/" not in spec or path.suffix:
        columns = list(file_records(path, 1)[0])
        problem = prompt_column or _column(columns, PROBLEM_COLUMNS)
        answer = answer_column or _column(columns, ("answer",))
        if problem is None:
            raise AhaError(f"dataset {path} has no problem column (looked for {', '.join(PROBLEM_COLUMNS)}); its "
                           f"columns: {', '.join(map(str, columns)) or 'none'}; name yours with --prompt-column")
        if answer is None:
            raise AhaError(f"dataset {path} has no answer column; its columns: {', '.join(map(str, columns))}; "
                           "name yours with --answer-column")
        rows = open_dataset(str(path), prompt_column=problem, answer_column=answer)
    else:  # a Hub dataset: its columns are known only once loaded, so try the shapes in order
        rows = _hub_records(spec, prompt_column, answer_column)
        problem = rows[0].get("_column")
    shape = "prompt" if str(problem).lower() == "prompt" else "problem"
    for row in rows:
        row["_shape"] = shape
    return rows


def _hub_records(spec: str, prompt_column: str | None, answer_column: str | None) -> list[dict[str, Any]]:
    candidates = [prompt_column] if prompt_column else list(PROBLEM_COLUMNS)
    error = None
    for column in candidates:
        try:
            rows = open_dataset(spec, prompt_column=column, answer_column=answer_column or "answer")
        except AhaError as failure:
            if "has no column" not in str(failure):
                raise
            error = failure
            continue
        for row in rows:
            row["_column"] = column
        return rows
    raise error


def _column(columns: list, wanted: tuple[str, ...]) -> str | None:
    """The first of `wanted` among `columns`, matched without case (AIME files spell it `Problem`)."""
    by_lower = {str(column).lower(): column for column in columns}
    return next((by_lower[name] for name in wanted if name in by_lower), None)


def _answer(value: Any) -> str | None:
    """A reference answer as text: GSM8K's "…#### 1,234" → "1234" (its separators dropped), a boxed
    answer its box, a number its digits."""
    if value is None:
        return None
    text = str(value)
    if "####" in text:
        return text.rsplit("####", 1)[-1].strip().replace(",", "")
    return gold_answer(text).strip()


def _filled(template: str | None, problem: str) -> str:
    return problem if template is None else template.replace("{problem}", problem)


def _unique_ids(rows: list[dict]) -> list[dict]:
    seen: dict[str, int] = {}
    for row in rows:
        base = row["prompt_id"]
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            row["prompt_id"] = f"{base}#{seen[base]}"
    return rows
