"""The shapes of the events every long job emits, version 1: one frozen dataclass per type, all in this file.

A job's events are what `aha … --events jsonl` writes (one JSON object per line) and what the GUI's
ProcessJob reads. Every event carries `"v": 1` and its `"type"`:

- `start`: the first event of every job: `kind`, `pid`, `run_id`/`run_dir` when the job has a run, and
  `stages`, the ordered stage names the job will go through.
- `progress`: `stage` with its `stage_index`/`stage_count` in `stages`, `done`/`total` in `unit`,
  `elapsed_s`, `eta_s` (None until measurable), the `phase` within the stage when there is one.
- `metrics`: a step's measured values, flat (`step`, then name → number).
- `sample`: one prompt's completions, the same shape from every producer (see `Completion`).
- `log` (`message`, `level` info | warning), `artifact` (`kind`, `path`, `final`: False for a scratch
  file the job removes).
- exactly one final event: `done` (`status` complete | cancelled, `result`) or `error` (`message`, and
  `exception`: the exception's class name when the error is a bug, None for a user-facing error).

`make(type, **fields)` builds the event through its dataclass (so a wrong field fails where it is made)
and returns the plain dict that is written; fields a dataclass does not name are kept in `extra` for the
event types that allow them (progress, metrics, log, artifact), and refused for the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

VERSION = 1
FINAL_TYPES = ("done", "error")
DONE_STATUSES = ("complete", "cancelled")
LEVELS = ("info", "warning")


@dataclass(frozen=True)
class Event:
    """Base: `to_json()` is the wire form, {"v": 1, "type": …, fields…, extra fields…}."""

    type: ClassVar[str] = ""
    open: ClassVar[bool] = False  # whether fields beyond the named ones are allowed (kept in `extra`)

    def to_json(self) -> dict[str, Any]:
        named = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "extra"}
        return {"v": VERSION, "type": self.type, **named, **getattr(self, "extra", {})}


@dataclass(frozen=True)
class Start(Event):
    type: ClassVar[str] = "start"
    kind: str
    pid: int
    stages: list[str]
    run_id: int | None = None
    run_dir: str | None = None


@dataclass(frozen=True)
class Progress(Event):
    type: ClassVar[str] = "progress"
    open: ClassVar[bool] = True
    stage: str
    done: float
    total: float
    unit: str = ""
    elapsed_s: float = 0.0
    eta_s: float | None = None
    stage_index: int | None = None  # filled by the job from its stages
    stage_count: int | None = None
    phase: str | None = None
    label: str | None = None  # what a person reads, "writing model.gguf"; the stage is the job's own name
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metrics(Event):
    type: ClassVar[str] = "metrics"
    open: ClassVar[bool] = True
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """One completion of a sample: its text split at </think>, each reward's score (None: the reward has no
    opinion), their weighted sum, the group advantage (GRPO), whether it was kept (trace generation) or right
    (evaluation), its length in tokens (None where the producer cannot count them) and whether it hit the length
    limit (an evaluation: its thought was cut by it); an evaluation's final answer as the verifier read it
    (`extracted`, None: none found) and the thought's length in tokens, `</think>` included."""

    text: str
    thinking: str
    answer_text: str
    rewards: dict[str, float | None]
    reward: float | None
    length: int | None
    truncated: bool
    advantage: float | None = None
    accepted: bool | None = None
    extracted: str | None = None
    thinking_length: int | None = None


@dataclass(frozen=True)
class Sample(Event):
    type: ClassVar[str] = "sample"
    step: int
    prompt_id: str
    prompt: str
    completions: list[dict[str, Any]]
    answer: str | None = None
    problem: int | None = None      # an eval's problem, by its place in the dataset (0 = the first)

    def __post_init__(self) -> None:
        checked = [dataclasses.asdict(item) if isinstance(item, Completion) else dataclasses.asdict(Completion(**item))
                   for item in self.completions]
        object.__setattr__(self, "completions", checked)


@dataclass(frozen=True)
class Log(Event):
    type: ClassVar[str] = "log"
    open: ClassVar[bool] = True
    message: str
    level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"log level {self.level!r} is not one of {', '.join(LEVELS)}")


@dataclass(frozen=True)
class Artifact(Event):
    type: ClassVar[str] = "artifact"
    open: ClassVar[bool] = True
    kind: str
    path: str | None = None
    final: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Done(Event):
    type: ClassVar[str] = "done"
    status: str
    result: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in DONE_STATUSES:
            raise ValueError(f"done status {self.status!r} is not one of {', '.join(DONE_STATUSES)}")


@dataclass(frozen=True)
class Error(Event):
    type: ClassVar[str] = "error"
    message: str
    exception: str | None = None


TYPES: dict[str, type[Event]] = {kind.type: kind for kind in (Start, Progress, Metrics, Sample, Log, Artifact,
                                                               Done, Error)}


def build(type: str, **fields: Any) -> Event:
    """The event of `type` from keyword fields; unknown fields go to `extra` where the type is open."""
    kind = TYPES.get(type)
    if kind is None:
        raise ValueError(f"unknown event type {type!r}; expected one of {', '.join(TYPES)}")
    names = {item.name for item in dataclasses.fields(kind)}
    named = {key: value for key, value in fields.items() if key in names and key != "extra"}
    rest = {key: value for key, value in fields.items() if key not in names and key not in ("v", "type")}
    if rest and not kind.open:
        raise ValueError(f"{type} events have no field(s) {', '.join(sorted(rest))}")
    return kind(**named, extra={**fields.get("extra", {}), **rest}) if kind.open else kind(**named)


def make(type: str, **fields: Any) -> dict[str, Any]:
    """The wire form (a dict) of a checked event."""
    return build(type, **fields).to_json()


def parse(event: Mapping[str, Any]) -> Event:
    """A received dict back into its dataclass; ValueError/TypeError for an event of no known type or shape."""
    if event.get("v") != VERSION:
        raise ValueError(f"event version {event.get('v')!r} is not {VERSION}")
    return build(**{key: value for key, value in event.items() if key != "v"})
