"""Datasets as rows of `{"prompt", "answer", …}`: JSONL/CSV/Parquet files with column mapping, and
built-in procedurally generated tasks (3-digit `addition`, multi-digit `arithmetic`) for offline use.

A task row also carries `completion`, a programmatic teacher's trace (`<think>\\n6+0=6\\n…\\n</think>\\n1376`).
`PromptStream` hands out rows in a deterministic order whose position is a checkpointable integer. Rows are
plain dicts of strings; nothing here knows tokenizers, chat templates or torch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import AhaError

# One problem in HELDOUT_EVERY (by a hash of its prompt) is held out: training never sees it, so the
# held-out split is disjoint from training whatever the seeds.
HELDOUT_EVERY = 20
FILE_KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
TASK_ROWS = 100  # problems of a built-in task that a command needing a finite list takes by default


def prompt_id(row: dict) -> str:
    """A row's identity across reruns: its `id` column, else a hash of its prompt and answer."""
    if row.get("id") is not None:
        return str(row["id"])
    text = json.dumps([row["prompt"], row.get("answer")], ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# Built-in tasks -----------------------------------------------------------------------------------

def addition_problem(rng: random.Random) -> dict[str, str]:
    """Two 3-digit numbers: prompt "123+456=", the teacher's column-by-column trace, the sum."""
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return _row(f"{a}+{b}=", _addition_lines(a, b), a + b)


def arithmetic_problem(rng: random.Random, max_digits: int = 3) -> dict[str, str]:
    """a+b, a-b or a*b with 1..max_digits-digit operands ("a*b" uses at most 2-digit multipliers)."""
    operator = rng.choice("+-*")
    a = rng.randint(0, 10 ** rng.randint(1, max_digits) - 1)
    b = rng.randint(0, 10 ** rng.randint(1, 2 if operator == "*" else max_digits) - 1)
    if operator == "+":
        return _row(f"{a}+{b}=", _addition_lines(a, b), a + b)
    if operator == "-":
        return _row(f"{a}-{b}=", _subtraction_lines(a, b), a - b)
    return _row(f"{a}*{b}=", _multiplication_lines(a, b), a * b)


TASKS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "addition": addition_problem,
    "arithmetic": arithmetic_problem,
}


def teacher_trace(lines: Sequence[str], answer: int) -> str:
    """The teacher's completion: `<think>\\n` + one line per step + `</think>\\n` + the answer."""
    return "<think>\n" + "".join(line + "\n" for line in lines) + f"</think>\n{answer}"


def _row(prompt: str, lines: list[str], answer: int) -> dict[str, str]:
    return {"prompt": prompt, "answer": str(answer), "completion": teacher_trace(lines, answer)}


def _digits(number: int, width: int) -> list[int]:
    """Least significant digit first, zero-filled to width."""
    return [int(char) for char in reversed(str(number).zfill(width))]


def _addition_lines(a: int, b: int) -> list[str]:
    """One line per column, ones first, with the carry: 5+8=13, then 2+5+1=8."""
    width = max(len(str(a)), len(str(b)))
    lines, carry = [], 0
    for x, y in zip(_digits(a, width), _digits(b, width), strict=True):
        total = x + y + carry
        lines.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        carry = total // 10
    return lines


def _subtraction_lines(a: int, b: int) -> list[str]:
    """Column subtraction of the larger minus the smaller, ones first, with the borrow: 3-5+10=8, then
    2-1-4+10=7, then 5-1-2=2 (a column that borrows shows its +10; -1 pays the borrow back). When a < b
    the first line names the swap (45-123 → "123-45") and the answer gets the minus sign."""
    lines = [] if a >= b else [f"{b}-{a}"]
    high, low = max(a, b), min(a, b)
    width = len(str(high))
    borrow = 0
    for x, y in zip(_digits(high, width), _digits(low, width), strict=True):
        value = x - borrow - y
        lines.append(f"{x}{'-1' if borrow else ''}-{y}{'+10' if value < 0 else ''}={value % 10 if value < 0 else value}")
        borrow = int(value < 0)
    return lines


def _multiplication_lines(a: int, b: int) -> list[str]:
    """One partial product per digit of b (ones first), then their sum: 123*4=492, 123*50=6150, 492+6150=6642."""
    partials = []
    lines = []
    for place, digit in enumerate(_digits(b, len(str(b)))):
        partial = a * digit * 10 ** place
        lines.append(f"{a}*{digit}{'0' * place}={partial}")
        partials.append(partial)
    if len(partials) > 1:
        lines.append("+".join(str(partial) for partial in partials) + f"={sum(partials)}")
    return lines


def is_heldout(prompt: str) -> bool:
    """Whether a task problem belongs to the held-out split (a fixed hash of its prompt)."""
    return zlib.crc32(prompt.encode()) % HELDOUT_EVERY == 0


@dataclass(frozen=True)
class TaskSource:
    """An endless, deterministic stream of one built-in task's training problems, and its held-out split.

    `row(i)` depends only on (task, seed, i), so a data position is one integer. Training rows never
    fall in the held-out split; `heldout(n)` is the same n problems whatever the training seed."""

    name: str
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise AhaError(f"unknown built-in task {self.name!r}: use one of {', '.join(TASKS)}")

    def row(self, index: int) -> dict[str, str]:
        rng = random.Random(f"{self.name}/train/{self.seed}/{index}")
        while True:
            problem = TASKS[self.name](rng)
            if not is_heldout(problem["prompt"]):
                return problem

    def heldout(self, count: int, seed: int = 0) -> list[dict[str, str]]:
        """`count` distinct held-out problems, the same for every training run."""
        rng = random.Random(f"{self.name}/heldout/{seed}")
        rows, seen = [], set()
        while len(rows) < count:
            problem = TASKS[self.name](rng)
            if is_heldout(problem["prompt"]) and problem["prompt"] not in seen:
                seen.add(problem["prompt"])
                rows.append(problem)
        return rows


# Files --------------------------------------------------------------------------------------------

def load_rows(path: str | Path, prompt_column: str = "prompt", answer_column: str | None = "answer",
              required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSONL, CSV or Parquet file, with `prompt_column` renamed to "prompt" and `answer_column`
    to "answer" (other columns kept). `prompt` is required, and so is `answer` when `answer_column` is
    not None, plus every name in `required`; a missing one is an AhaError naming the column, the file
    and (JSONL, CSV) the line."""
    path, kind = _dataset_file(path)
    try:
        return _mapped(_read_records(path, kind), str(path), prompt_column, answer_column, required)
    except UnicodeDecodeError as error:
        raise AhaError(f"dataset {path} is not UTF-8 text (byte {error.start} of a line); save it as UTF-8") from None


def file_records(path: str | Path, count: int) -> list[dict[str, Any]]:
    """The first `count` records of a JSONL, CSV or Parquet file as they are (columns not mapped), for a
    preview; the same one-line errors as `load_rows`."""
    path, kind = _dataset_file(path)
    records = []
    try:
        for _, record in _read_records(path, kind):
            records.append(record)
            if len(records) >= count:
                break
    except UnicodeDecodeError as error:
        raise AhaError(f"dataset {path} is not UTF-8 text (byte {error.start} of a line); save it as UTF-8") from None
    if not records:
        raise AhaError(f"dataset {path} has no rows")
    return records


def _dataset_file(path: str | Path) -> tuple[Path, str]:
    """(path, kind) of a dataset file that exists and has a known suffix; else a one-line AhaError."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise AhaError(f"dataset {path} is a folder; give a .jsonl, .csv or .parquet file or a built-in task "
                       f"({', '.join(TASKS)})")
    if not path.is_file():
        raise AhaError(f"dataset {path} not found: give a .jsonl, .csv or .parquet file or a built-in task "
                       f"({', '.join(TASKS)})")
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise AhaError(f"dataset {path}: unknown file type {path.suffix!r}; use .jsonl, .csv or .parquet")
    return path, kind


def _mapped(records, name: str, prompt_column: str, answer_column: str | None,
            required: Sequence[str]) -> list[dict[str, Any]]:
    """Records (line number or 0, dict) → rows with the mapped columns; the first missing column is an error."""
    needed = [prompt_column] + ([answer_column] if answer_column else []) + list(required)
    rows = []
    for line, record in records:
        missing = next((column for column in needed if column not in record or record[column] is None), None)
        if missing is not None:
            where = f"{name} line {line}" if line else name
            if missing in record:  # the column is there, its value is not (a short CSV row, a JSON null)
                raise AhaError(f"{where} has no value in column {missing!r}; give each row one")
            flag = {prompt_column: " (map yours with --prompt-column)",
                    answer_column: " (map yours with --answer-column)"}.get(missing, "")
            raise AhaError(f"{where} has no column {missing!r}{flag}; its columns: "
                           f"{', '.join(map(str, record)) or 'none'}")
        rows.append(_renamed(record, prompt_column, answer_column))
    if not rows:
        raise AhaError(f"dataset {name} has no rows")
    return rows


def _renamed(record: dict[str, Any], prompt_column: str, answer_column: str | None) -> dict[str, Any]:
    row = {key: value for key, value in record.items() if key not in (prompt_column, answer_column)}
    row["prompt"] = record[prompt_column]
    if answer_column:
        row["answer"] = record[answer_column]
    return row


def _read_records(path: Path, kind: str):
    """(line number or 0, record dict) for each record of the file."""
    if kind == "jsonl":
        with open(path, encoding="utf-8") as stream:
            for number, text in enumerate(stream, 1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as error:
                    raise AhaError(f"{path} line {number} is not valid JSON: {error.msg}") from error
                if not isinstance(record, dict):
                    raise AhaError(f"{path} line {number} is not a JSON object")
                yield number, record
    elif kind == "csv":
        with open(path, encoding="utf-8", newline="") as stream:
            reader = csv.DictReader(stream)
            for record in reader:
                yield reader.line_num, {key: value for key, value in record.items() if key is not None}
    else:
        try:
            import pyarrow.parquet
        except ImportError as error:
            raise AhaError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to JSONL)") from error
        for record in pyarrow.parquet.read_table(path).to_pylist():
            yield 0, record


# The stream a training loop reads -----------------------------------------------------------------

def is_task(spec: str | None) -> bool:
    """Whether a dataset name means a built-in task (a file of that name in the working folder wins)."""
    return spec in TASKS and not Path(spec).exists()


def open_dataset(spec: str, seed: int = 0, prompt_column: str = "prompt", answer_column: str | None = "answer",
                 required: Sequence[str] = ()) -> TaskSource | list[dict[str, Any]]:
    """The one resolver of dataset names, for every command: a built-in task by name (`addition`,
    `arithmetic`), a file's rows, or a Hugging Face dataset `owner/name` (`owner/name:split`, default
    train) when the `datasets` package is installed."""
    if is_task(spec):
        return TaskSource(spec, seed)
    path = Path(spec).expanduser()
    if not path.exists() and "/" in spec and not path.suffix:
        return _hub_rows(spec, prompt_column, answer_column, required)
    return load_rows(path, prompt_column, answer_column, required)


def heldout_rows(source: TaskSource | list[dict[str, Any]], eval_dataset: str | None, count: int, seed: int = 0,
                 prompt_column: str = "prompt", answer_column: str | None = "answer") -> list[dict[str, Any]]:
    """The held-out rows of an evaluation: `count` from `eval_dataset` (any name open_dataset takes; a task's
    held-out split), else from the training source when it is a task; a file has no held-out split of its own."""
    if eval_dataset:
        source = open_dataset(eval_dataset, seed, prompt_column, answer_column)
    if isinstance(source, TaskSource):
        return source.heldout(count)
    if eval_dataset:
        return source[:count]
    raise AhaError("eval_steps needs held-out rows: set eval_dataset (or use a built-in task)")


def first_rows(source: TaskSource | list[dict[str, Any]], count: int | None,
               task_default: int = TASK_ROWS) -> list[dict[str, Any]]:
    """A finite list of a dataset's rows: a file's first `count` (all when None), or a task's first
    `count` training problems (`task_default` when None: a task never ends)."""
    if isinstance(source, TaskSource):
        return [source.row(index) for index in range(task_default if count is None else count)]
    return source[:count]


def _hub_rows(spec: str, prompt_column: str, answer_column: str | None, required: Sequence[str]) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as error:
        raise AhaError(f"dataset {spec!r} is not a file or a built-in task ({', '.join(TASKS)}); to load it from "
                       "the Hugging Face Hub, pip install datasets (or save it as JSONL)") from error
    name, _, split = spec.partition(":")
    try:
        table = datasets.load_dataset(name, split=split or "train")
    except Exception as error:  # offline, unknown name, gated: the library's own first line says which
        raise AhaError(f"cannot load Hugging Face dataset {spec!r}: {str(error).splitlines()[0]}") from error
    return _mapped(((0, record) for record in table), spec, prompt_column, answer_column, required)


class PromptStream:
    """Rows in a deterministic order, `count` at a time. An endless source (a TaskSource, or anything with
    `row(index)`) yields row(0), row(1), …; a list of rows is reshuffled each epoch with Random((seed,
    epoch)). `position` (rows handed out so far) is the whole state, so a checkpoint can store it and a
    resumed run continues with the same rows."""

    def __init__(self, source, seed: int = 0, shuffle: bool = True):
        self.source, self.seed, self.shuffle = source, seed, shuffle
        self.position = 0
        self._epoch_order: tuple[int, list[int]] | None = None

    def next(self, count: int) -> list[dict[str, Any]]:
        rows = [self._row(self.position + offset) for offset in range(count)]
        self.position += count
        return rows

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])

    def _row(self, index: int) -> dict[str, Any]:
        if not isinstance(self.source, list):
            return self.source.row(index)
        epoch, offset = divmod(index, len(self.source))
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            order = list(range(len(self.source)))
            if self.shuffle:
                random.Random(f"{self.seed}/{epoch}").shuffle(order)
            self._epoch_order = (epoch, order)
        return self.source[self._epoch_order[1][offset]]
