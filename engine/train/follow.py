"""Following a run's files while it is written: `JsonlFollower` reads the records appended to metrics.jsonl or
samples.jsonl since its last read (from a byte offset), leaves a half-written last line for the next read, and
starts over when the file was rewritten (a resume truncates both files to its checkpoint's step); `SampleIndex`
indexes samples.jsonl by step and prompt. `eta` splits the time left of a run into generation and training;
`trace_progress_history` and `trace_records` read a trace-generation run's files (traces, progress, rejected
replies) in the same shapes.

It knows the files' formats and the metric names of the step times; what the metrics mean is for others.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Batch:
    """What one read found: the new `records`, and `restarted` when the file was rewritten since the last read
    (then `records` are the file's whole content and what was read before is void)."""

    records: list[dict] = field(default_factory=list)
    restarted: bool = False


class JsonlFollower:
    """Incremental reader of a JSON-lines file that another process appends to.

    Each `read()` returns the complete lines added since the previous one, parsed (lines that are not a JSON
    object are skipped). A last line without its newline is not read until it has one. A file that shrank
    below the offset, or was replaced by another file (os.replace: a new inode), is read again from the start
    with `restarted` set. A missing file reads as nothing.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file the offset is in

    def read(self) -> Batch:
        try:
            stream = open(self.path, "rb")  # noqa: SIM115 - closed below; stat on the open file, not the path
        except OSError:
            restarted = self.offset > 0
            self.offset, self._identity = 0, None
            return Batch([], restarted)
        with stream:
            status = os.fstat(stream.fileno())
            identity = (status.st_dev, status.st_ino)
            restarted = self._identity is not None and (identity != self._identity or status.st_size < self.offset)
            if restarted:
                self.offset = 0
            self._identity = identity
            if status.st_size == self.offset:
                return Batch([], restarted)
            stream.seek(self.offset)
            data = stream.read(max(status.st_size - self.offset, 0))
        end = data.rfind(b"\n")
        if end < 0:
            return Batch([], restarted)
        self.offset += end + 1
        return Batch(parse_lines(data[:end + 1]), restarted)


def parse_lines(data: bytes) -> list[dict]:
    """The JSON objects of complete lines; blank lines, broken lines and non-objects are skipped."""
    records = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete record of a JSON-lines file (a half-written last line left out); [] when missing."""
    return JsonlFollower(path).read().records


@dataclass(frozen=True)
class Eta:
    """Time left of a run, in seconds: `total`, and its `generation` and `training` parts (None when the steps
    do not report them); `per_step` the mean step time it is based on."""

    total: float
    per_step: float
    generation: float | None = None
    training: float | None = None


def eta(history: Sequence[Mapping], max_steps: int | None) -> Eta | None:
    """The time left from the mean step time of the logged steps: per step, `generation_s` + `training_s` when
    the steps report them (GRPO reports both, SFT `training_s`), else the wall-clock time between the first and
    last record over the steps between them. None without max_steps, steps left, or two points to measure.

    Example: steps 1..4 of 10, each generation_s 3 and training_s 1 → Eta(total=24, per_step=4,
    generation=18, training=6).
    """
    if not history or not max_steps:
        return None
    last = int(history[-1].get("step", 0))
    left = max_steps - last
    if left <= 0:
        return None
    generation = _mean(history, "generation_s")
    training = _mean(history, "training_s")
    if generation is not None or training is not None:
        per_step = (generation or 0.0) + (training or 0.0)
        return Eta(per_step * left, per_step, None if generation is None else generation * left,
                   None if training is None else training * left)
    first = history[0]
    steps = last - int(first.get("step", 0))
    times = [record.get("time") for record in (first, history[-1])]
    if steps <= 0 or not all(_finite(value) for value in times):
        return None
    per_step = (times[1] - times[0]) / steps
    return Eta(per_step * left, per_step)


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _mean(history: Sequence[Mapping], key: str) -> float | None:
    values = [record[key] for record in history if _finite(record.get(key))]
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class _Line:
    step: int
    prompt_id: str
    offset: int
    length: int


class SampleIndex:
    """samples.jsonl indexed by step and prompt without keeping it in memory: `refresh()` takes in the lines
    appended since the last call (a rewritten file is indexed again: `refresh` returns True then), and the
    records of a step, of a prompt across steps, or matching a text are parsed from the file when asked. A run
    of thousands of steps has hundreds of megabytes of rollouts; only the line positions are held."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._follower = JsonlFollower(path)
        self._lines: list[_Line] = []
        self._by_step: dict[int, list[_Line]] = {}

    def refresh(self) -> bool:
        """Index the new complete lines; True when the file was rewritten (everything indexed again)."""
        follower = self._follower
        start = follower.offset
        try:
            with open(self.path, "rb") as stream:
                status = os.fstat(stream.fileno())
                identity = (status.st_dev, status.st_ino)
                restarted = follower._identity is not None and (identity != follower._identity
                                                                 or status.st_size < start)
                if restarted:
                    start = 0
                    self._lines, self._by_step = [], {}
                follower._identity = identity
                stream.seek(start)
                data = stream.read(max(status.st_size - start, 0))
        except OSError:
            restarted = bool(self._lines)
            self._lines, self._by_step = [], {}
            follower.offset, follower._identity = 0, None
            return restarted
        end = data.rfind(b"\n")
        follower.offset = start + (end + 1 if end >= 0 else 0)
        position = 0
        while 0 <= position <= end:
            stop = data.index(b"\n", position)
            line = data[position:stop]
            record = _step_and_prompt(line)
            if record is not None:
                entry = _Line(record[0], record[1], start + position, stop - position)
                self._lines.append(entry)
                self._by_step.setdefault(entry.step, []).append(entry)
            position = stop + 1
        return restarted

    def steps(self) -> list[int]:
        return sorted(self._by_step)

    def __len__(self) -> int:
        return len(self._lines)

    def records(self, step: int) -> list[dict]:
        """The step's records (one per prompt), in the order written."""
        return self._read(self._by_step.get(step, []))

    def prompt_history(self, prompt_id: str) -> list[dict]:
        """Every record of one prompt, by step: how its completions changed over the run."""
        return self._read([line for line in self._lines if line.prompt_id == prompt_id])

    def search(self, text: str, limit: int = 200) -> list[dict]:
        """Records whose prompt, answer or a completion's text contains `text` (case-insensitive), by step,
        at most `limit`. The raw lines are screened first, so only candidates are parsed."""
        needle = text.casefold()
        if not needle:
            return []
        found = []
        ascii_needle = needle.encode("utf-8") if needle.isascii() and needle.isprintable() and '"' not in needle and "\\" not in needle else None
        for data in self._raw(self._lines):
            if ascii_needle is not None and ascii_needle not in data.lower():
                continue
            record = _parse(data)
            if record is not None and needle in record_text(record).casefold():
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    def _raw(self, lines: list[_Line]):
        if not lines:
            return
        with open(self.path, "rb") as stream:
            for line in lines:
                stream.seek(line.offset)
                yield stream.read(line.length)

    def _read(self, lines: list[_Line]) -> list[dict]:
        try:
            return [record for record in map(_parse, self._raw(lines)) if record is not None]
        except OSError:
            return []


def record_text(record: Mapping) -> str:
    """What a search looks in: the prompt, the answer and every completion's text."""
    parts = [str(record.get("prompt") or ""), str(record.get("answer") or "")]
    parts += [str(completion.get("text") or "") for completion in record.get("completions", ())]
    return "\n".join(parts)


def _parse(data: bytes) -> dict | None:
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


_HEAD = re.compile(rb'\{"step": (\d+), "prompt_id": "([^"\\]*)"')


def _step_and_prompt(line: bytes) -> tuple[int, str] | None:
    """(step, prompt_id) of a samples.jsonl line: from its head as Run.log_samples writes it, else the line
    parsed whole."""
    head = _HEAD.match(line)
    if head is not None:
        return int(head.group(1)), head.group(2).decode("utf-8", "replace")
    record = _parse(line) if line.strip() else None
    if record is None or not isinstance(record.get("step"), int):
        return None
    return record["step"], str(record.get("prompt_id", ""))


def trace_progress_history(records: Sequence[Mapping], last: Mapping | None = None) -> list[dict]:
    """A trace-generation run's progress file (engine.distill.generate: one record per finished prompt) as
    metrics records, one step per prompt as its `metrics` events number them: cumulative samples, accepted
    and kept replies, the acceptance rate so far and each rejection reason's count (`rejected/<reason>`).
    With `last` (the last step made of earlier records: an incremental read) the steps and totals carry on."""
    history: list[dict] = []
    for record in records:
        if "prompt_id" not in record:
            continue  # the header with the settings
        previous = history[-1] if history else (last or {})
        step = int(previous.get("step", 0)) + 1
        totals = {name: previous.get(name, 0) + int(record.get(name, 0)) for name in ("samples", "accepted", "kept")}
        rejected = {key: value for key, value in previous.items() if key.startswith("rejected/")}
        for reason, count in (record.get("rejected") or {}).items():
            rejected[f"rejected/{reason}"] = rejected.get(f"rejected/{reason}", 0) + int(count)
        history.append({"step": step, **totals, **rejected,
                        "acceptance_rate": totals["accepted"] / totals["samples"] if totals["samples"] else 0.0})
    return history


def trace_records(traces: Sequence[Mapping], progress: Sequence[Mapping], rejected: Sequence[Mapping] = (),
                  pass_threshold: float = 1.0) -> list[dict]:
    """A trace-generation run's files as rollout records (samples.jsonl's shape), one per finished prompt,
    numbered as its `sample` events are: the kept replies of the traces file (`accepted` True, `verdict` None)
    and the replies of the rejected file (engine.distill.generate.rejected_path: `accepted` False, `verdict` the
    verifier's own reason, None for a passing reply dropped as a duplicate or by the keep rule, `dropped` which),
    in sample order; `rejected`, the progress file's count per reason, and `samples`. A file written before the
    rejected file existed gives only the kept replies: the counts say what the rest were."""
    replies: dict[str, list[tuple[int, dict, dict]]] = {}  # prompt id → (sample, line, completion)
    for row in traces:
        thinking, answer = str(row.get("thinking") or ""), str(row.get("answer") or "")
        replies.setdefault(str(row.get("prompt_id")), []).append((_sample_number(row), row, {
            "text": f"<think>\n{thinking}\n</think>\n\n{answer}", "thinking": thinking, "answer_text": answer,
            "rewards": dict(row.get("rewards") or {}), "reward": row.get("reward"), "accepted": True,
            "verdict": None, "length": _tokens(row), "truncated": False}))
    for row in rejected:
        thinking, answer = str(row.get("thinking") or ""), str(row.get("answer") or "")
        reason = row.get("reason")
        replies.setdefault(str(row.get("prompt_id")), []).append((_sample_number(row), row, {
            "text": str(row.get("text") or f"<think>\n{thinking}\n</think>\n\n{answer}"), "thinking": thinking,
            "answer_text": answer, "rewards": dict(row.get("rewards") or {}), "reward": row.get("reward"),
            "accepted": False, "verdict": None if reason is None else str(reason), "dropped": row.get("dropped"),
            "length": _tokens(row), "truncated": bool(row.get("truncated"))}))
    records = []
    for record in progress:
        if "prompt_id" not in record:
            continue
        identity = str(record["prompt_id"])
        rows = sorted(replies.get(identity, []), key=lambda entry: entry[0])
        first = rows[0][1] if rows else {}
        records.append({"step": len(records) + 1, "prompt_id": identity, "prompt": first.get("prompt", ""),
                        "answer": _text(first.get("gold")), "completions": [entry[2] for entry in rows],
                        "rejected": dict(record.get("rejected") or {}), "samples": record.get("samples")})
    return records


def _sample_number(row: Mapping) -> int:
    value = row.get("sample")
    return value if isinstance(value, int) else 0


def _tokens(row: Mapping) -> int | None:
    length = (row.get("usage") or {}).get("completion_tokens")
    return int(length) if isinstance(length, int | float) else None


def with_verdicts(record: Mapping, pass_threshold: float = 1.0) -> dict:
    """A trace-generation `sample` event's record with each completion's `verdict`: None when verification
    passed it, else the reason it was rejected (engine.distill.generate.rejection_reason)."""
    from engine.distill.generate import rejection_reason

    completions = []
    for completion in record.get("completions", ()):
        finish = "length" if completion.get("truncated") else "stop"
        completions.append({**completion, "verdict": rejection_reason(finish, completion.get("rewards") or {},
                                                                        pass_threshold)})
    return {**record, "completions": completions}


def _text(value) -> str | None:
    return None if value is None else str(value)
