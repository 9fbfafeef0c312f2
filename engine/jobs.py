"""The event protocol every long job speaks, its two sinks (terminal bar, JSON lines) and cancel tokens.

An event is a plain dict: `{"type": "progress"|"metrics"|"sample"|"log"|"artifact"|"done"|"error", ...}`.
Jobs take `on_event` and `cancel`; they never print. The CLI picks a sink: a progress bar with ETA when
stderr is a terminal, one JSON object per line on stdout with `--events jsonl` (what the GUI reads).
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


def _human(value: float, unit: str) -> str:
    if unit == "B":
        for prefix in ("B", "KB", "MB", "GB", "TB"):
            if abs(value) < 1000 or prefix == "TB":
                return f"{value:.1f} {prefix}" if prefix != "B" else f"{value:.0f} B"
            value /= 1000
    return f"{value:g}{(' ' + unit) if unit else ''}"


def _clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_bar(done: float, total: float, elapsed_s: float, unit: str = "", label: str = "", width: int = 28) -> str:
    """One line: label [#####.....] 45% 12.3/27.0 MB · 3.2 MB/s · ETA 0:05.

    ETA = elapsed · (total − done) / done, the rate measured over the whole stage so far.
    """
    fraction = min(max(done / total, 0.0), 1.0) if total else 0.0
    filled = int(round(fraction * width))
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = elapsed_s * (total - done) / done if done > 0 else float("nan")
    parts = [f"{label} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%",
             f"{_human(done, unit)}/{_human(total, unit)}"]
    if rate > 0:
        parts.append(f"{_human(rate, unit)}/s")
    parts.append(f"ETA {_clock(eta)}" if eta == eta else "ETA --:--")
    return " · ".join(parts).strip()


class TerminalSink:
    """Draws progress events as a bar on a terminal (or prints plain lines when not a TTY)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.is_tty = self.stream.isatty()
        self._bar_shown = False

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "progress":
            line = format_bar(event["done"], event["total"], event.get("elapsed_s", 0.0),
                              event.get("unit", ""), event.get("stage", ""))
            if self.is_tty:
                self.stream.write("\r\x1b[2K" + line)
                self._bar_shown = True
                if event["done"] >= event["total"]:
                    self.stream.write("\n")
                    self._bar_shown = False
            elif event["done"] >= event["total"]:
                self.stream.write(line + "\n")
        elif kind in ("log", "artifact", "error"):
            if self._bar_shown:
                self.stream.write("\n")
                self._bar_shown = False
            text = event.get("message") or event.get("path") or json.dumps(event, ensure_ascii=False)
            prefix = {"log": "", "artifact": "wrote ", "error": "error: "}[kind]
            level = event.get("level")
            self.stream.write(f"{'warning: ' if level == 'warning' else ''}{prefix}{text}\n")
        self.stream.flush()


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
