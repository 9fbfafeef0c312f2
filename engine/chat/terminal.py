"""`aha chat` on a terminal: thinking shown dimmed and apart from the answer, stats under each reply.

Also the `--json` form: one JSON object per line (`thinking`, `answer`, `done`). Ctrl+C during a reply
stops it (the partial message is saved as `stopped`); Ctrl+C again, or Ctrl+D at the prompt, leaves.
Knows how to draw, not how to chat: the turn itself is engine.chat.conversation's.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

from engine.chat.conversation import stats_line
from engine.chat.runtime import ChatEvent

DIM, RESET = "\x1b[2m", "\x1b[0m"


class TerminalChatView:
    """Writes a streamed reply: a dimmed thinking block, a blank line, the answer, a stats line."""

    def __init__(self, stream: TextIO | None = None, color: bool | None = None):
        self.stream = stream or sys.stdout
        self.color = self.stream.isatty() if color is None else color
        self._kind: str | None = None

    def _style(self, code: str) -> str:
        return code if self.color else ""

    def show(self, events: Iterator[ChatEvent]) -> dict:
        """Draw every event; returns the done stats."""
        stats: dict = {}
        self._kind, self._fresh, self._last = None, False, ""
        for event in events:
            if event.kind == "done":
                stats = event.stats or {}
                break
            if event.kind != self._kind:
                self._switch(event.kind)
            self.stream.write(event.text.lstrip("\n") if self._kind == "answer" and self._fresh else event.text)
            self._fresh = self._fresh and not event.text.strip()
            self._last = event.text or self._last
            self.stream.flush()
        self.stream.write(self._style(RESET) + "\n")
        for warning in stats.get("warnings", []):
            self.stream.write(f"{self._style(DIM)}warning: {warning}{self._style(RESET)}\n")
        self.stream.write(f"{self._style(DIM)}{stats_line(stats)}{self._style(RESET)}\n")
        self.stream.flush()
        return stats

    def _switch(self, kind: str) -> None:
        """Open the dimmed thinking block, or close it before the answer (whose leading newlines go)."""
        if kind == "thinking":
            self.stream.write(f"{self._style(DIM)}Thinking…\n")
        elif self._kind == "thinking":
            self.stream.write(self._style(RESET) + ("\n" if self._last.endswith("\n") else "\n\n"))
        self._kind, self._fresh = kind, kind == "answer"


def write_json_events(events: Iterator[ChatEvent], stream: TextIO | None = None, **done_fields) -> dict:
    """`--json`: {"type": "thinking"|"answer", "text"} per delta, then {"type": "done", "stats", …}."""
    stream = stream or sys.stdout
    stats: dict = {}
    for event in events:
        if event.kind == "done":
            stats = event.stats or {}
            record = {"type": "done", "stats": stats, **done_fields}
        else:
            record = {"type": event.kind, "text": event.text}
        stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        stream.flush()
    return stats


class InterruptToCancel:
    """While active, the first Ctrl+C sets `cancel` (the reply ends cleanly, saved as stopped); a second
    one raises KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.cancel.is_set():
            raise KeyboardInterrupt
        self.cancel.set()

    def __enter__(self) -> InterruptToCancel:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
