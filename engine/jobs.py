"""The event protocol every long job speaks, its two sinks (terminal bar, JSON lines) and cancel tokens.

An event is a plain dict: `{"type": "progress"|"metrics"|"sample"|"log"|"artifact"|"done"|"error", ...}`.
Jobs take `on_event` and `cancel`; they never print. The CLI picks a sink: a progress bar with ETA (and a
training run's step lines, engine.run_report) on stderr, or one JSON object per line on stdout with
`--events jsonl` (what the GUI reads). The rate, time and size formats here are the ones every view shows.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

EVENT_TYPES = ("progress", "metrics", "sample", "log", "artifact", "done", "error")

OnEvent = Callable[[dict], None]


def make_event(type: str, **fields: Any) -> dict:
    """One event dict; raises on an unknown type so the vocabulary stays closed."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}; expected one of {', '.join(EVENT_TYPES)}")
    return {"type": type, **fields}


def ignore(event: dict) -> None:
    """The do-nothing sink."""


class CancelToken:
    """Set from any thread (or a signal handler); jobs check `cancelled` at step boundaries."""

    def __init__(self) -> None:
        self._flag = threading.Event()

    def cancel(self) -> None:
        self._flag.set()

    @property
    def cancelled(self) -> bool:
        return self._flag.is_set()


class Progress:
    """Emits `progress` events for one stage: `done`/`total` in `unit`, throttled to ~10 per second."""

    def __init__(self, on_event: OnEvent, stage: str, total: float, unit: str = "", interval_s: float = 0.1):
        self.on_event, self.stage, self.total, self.unit = on_event, stage, total, unit
        self.done = 0.0
        self.started = time.monotonic()
        self._interval_s = interval_s
        self._last = -1.0

    def advance(self, amount: float = 1.0, **fields: Any) -> None:
        self.update(self.done + amount, **fields)

    def update(self, done: float, force: bool = False, **fields: Any) -> None:
        self.done = done
        now = time.monotonic()
        if force or done >= self.total or now - self._last >= self._interval_s:
            self._last = now
            self.on_event(make_event("progress", stage=self.stage, done=done, total=self.total,
                                     unit=self.unit, elapsed_s=round(now - self.started, 3), **fields))


def format_bytes(value: float) -> str:
    """A size in decimal units, as every view shows one: '512 B', '12.3 MB', '1.1 GB'."""
    if abs(value) < 1000:
        return f"{value:.0f} B"
    for prefix in ("KB", "MB", "GB"):
        value /= 1000
        if abs(value) < 1000:
            return f"{value:.1f} {prefix}"
    return f"{value / 1000:.1f} TB"


def _human(value: float, unit: str) -> str:
    if unit == "B":
        return format_bytes(value)
    return f"{_plain(value)}{(' ' + unit) if unit else ''}"


def _plain(value: float) -> str:
    """A count as people write it: 7, 1,234, 2.5."""
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 1000 else f"{value:.3g}"


def _short(value: float) -> str:
    """Two or three significant digits, no trailing .0: 3.2, 5, 16, 1,234."""
    return f"{value:.1f}".removesuffix(".0") if value < 10 else f"{value:,.0f}"


def singular(unit: str) -> str:
    """'steps' → 'step' (units are named in the plural)."""
    return unit[:-1] if unit.endswith("s") and unit != "B" else unit


def count(value: float, unit: str) -> str:
    """'1 step', '5 steps'."""
    return f"{_plain(value)} {singular(unit) if value == 1 else unit}"


def format_rate(rate: float, unit: str = "") -> str:
    """A rate a person reads at a glance: '3.2 steps/s' at one or more a second, '16 s/step' below it,
    '3.0 MB/s' for bytes."""
    if unit == "B":
        return f"{_human(rate, unit)}/s"
    if rate >= 1:
        shown = _short(rate)
        name = singular(unit) if shown == "1" else unit
        return f"{shown} {name}/s" if name else f"{shown}/s"
    return f"{_short(1 / rate)} s/{singular(unit)}" if unit else f"{_short(1 / rate)} s each"


def format_seconds(seconds: float) -> str:
    """'0.47 s', '1.7 s', '16 s', then m:ss from a minute on."""
    if seconds >= 59.5:
        return _clock(seconds)
    if seconds >= 10:
        return f"{seconds:.0f} s"
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds:.2f} s"


def _clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_bar(done: float, total: float, elapsed_s: float, unit: str = "", label: str = "", width: int = 28) -> str:
    """One line: label [#####.....] 45% · 12.3 MB/27.0 MB · 3.2 MB/s · ETA 0:05 (or 1/5 steps · 16 s/step).

    ETA = elapsed · (total − done) / done, the rate measured over the whole stage so far.
    """
    fraction = min(max(done / total, 0.0), 1.0) if total else 0.0
    filled = int(round(fraction * width))
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = elapsed_s * (total - done) / done if done > 0 else float("nan")
    counts = (f"{_human(done, unit)}/{_human(total, unit)}" if unit == "B"
              else f"{_plain(done)}/{count(total, unit)}" if unit else f"{_plain(done)}/{_plain(total)}")
    parts = [f"{label} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%", counts]
    if rate > 0:
        parts.append(format_rate(rate, unit))
    parts.append(f"ETA {_clock(eta)}" if eta == eta else "ETA --:--")
    return " · ".join(parts).strip()


ERASE_LINE = "\r\x1b[2K"  # carriage return + erase line: the bar redraws itself in place


class TerminalSink:
    """Draws progress events as a bar on a terminal (or prints plain lines when not a TTY), and a training
    run's metrics as one line per logged step and a summary at `done` (engine.run_report). On a terminal
    a message is printed above the bar, which is then drawn again below it."""

    def __init__(self, stream: TextIO | None = None):
        from engine.run_report import RunReport

        self.stream = stream or sys.stderr
        self.is_tty = self.stream.isatty()
        self._bar: str | None = None  # the unfinished bar on screen (terminal only)
        self.report = RunReport()

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "progress":
            self.report.progress(event)
            line = format_bar(event["done"], event["total"], event.get("elapsed_s", 0.0),
                              event.get("unit", ""), event.get("stage", ""))
            finished = event["done"] >= event["total"]
            if self.is_tty:
                self.stream.write(ERASE_LINE + line + ("\n" if finished else ""))
                self._bar = None if finished else line
            elif finished:
                self.stream.write(line + "\n")
        elif kind == "metrics":
            for line in self.report.metrics(event):
                self._print(line)
        elif kind == "done":
            for line in self.report.summary(event):
                self._print(line)
        elif kind in ("log", "artifact", "error"):
            text = event.get("message") or event.get("path") or json.dumps(event, ensure_ascii=False)
            prefix = {"log": "", "artifact": "wrote ", "error": "error: "}[kind]
            level = event.get("level")
            self._print(f"{'warning: ' if level == 'warning' else ''}{prefix}{text}")
        self.stream.flush()

    def _print(self, line: str) -> None:
        if self._bar is None:
            self.stream.write(line + "\n")
        else:
            self.stream.write(f"{ERASE_LINE}{line}\n{self._bar}")


class JsonlSink:
    """Writes one JSON object per line (the `--events jsonl` protocol the GUI's ProcessJob reads)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        line = json.dumps(event, ensure_ascii=False, default=str)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def sink_for(mode: str) -> OnEvent:
    """`"jsonl"` → JsonlSink on stdout, `"none"` → ignore, anything else → TerminalSink on stderr."""
    if mode == "jsonl":
        return JsonlSink()
    if mode == "none":
        return ignore
    return TerminalSink()
