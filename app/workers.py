"""Running work off the GUI thread: ThreadJob (a Python thread) and ProcessJob (`aha … --events jsonl`).

Both speak the same signals — `event(object)` for each engine event, `finished(object)` with the result
or exit status, `failed(str)` with a one-line error — so a pane can switch between in-process work (a
chat stream, loading a model) and a child process (downloads, training) without changing its slots.
All signals are emitted on the GUI thread.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from collections.abc import Callable

from app.qt import QtCore, Signal
from engine.errors import AhaError
from engine.jobs import CancelToken


class ThreadJob(QtCore.QObject):
    """Runs `work(emit, cancel)` on a daemon thread. `emit(event)` only queues: a GUI-thread timer drains
    the queue every DRAIN_MS and emits `event` there, so no signal ever crosses threads (emitting from a
    Python thread at hundreds of events a second is where PySide6 has crashed) and a fast stream
    reaches widgets in batches."""

    DRAIN_MS = 15

    event = Signal(object)
    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, work: Callable, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self._work = work
        self.cancel = CancelToken()
        self._thread: threading.Thread | None = None
        self._queue: deque = deque()          # append/popleft are atomic: the only thing the threads share
        self._drain = QtCore.QTimer(self, interval=self.DRAIN_MS, timeout=self._on_drain)
        self._active = False

    def start(self) -> ThreadJob:
        self._active = True
        self._drain.start()
        self._thread = threading.Thread(target=self._run, daemon=True, name="aha-job")
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            result = self._work(lambda event: self._queue.append(("event", event)), self.cancel)
        except AhaError as error:
            self._queue.append(("failed", str(error)))
        except Exception as error:  # noqa: BLE001 - a bug: shown as one line with its type
            self._queue.append(("failed", f"unexpected error: {type(error).__name__}: {error}"))
        else:
            self._queue.append(("finished", result))

    def _on_drain(self) -> None:
        while self._queue:
            kind, payload = self._queue.popleft()
            if kind == "event":
                self.event.emit(payload)
                continue
            self._drain.stop()
            self._active = False
            (self.finished if kind == "finished" else self.failed).emit(payload)

    def stop(self) -> None:
        self.cancel.cancel()

    def is_running(self) -> bool:
        """True from start() until `finished` or `failed` has been delivered on the GUI thread."""
        return self._active

    def wait(self, timeout_s: float | None = None) -> bool:
        """Join the worker thread (the GUI-side delivery of its end still needs the event loop)."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self._thread is None or not self._thread.is_alive()


class ProcessJob(QtCore.QObject):
    """Runs `python -m engine.cli ARGS --events jsonl` in a QProcess; each stdout line is an event.

    `terminate()` asks the process to stop (SIGTERM), then kills it after a grace period, like
    qutebrowser's GUIProcess. A crash or an OOM in the child never takes the window down.
    """

    event = Signal(object)
    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, args: list[str], parent: QtCore.QObject | None = None, grace_ms: int = 3000):
        super().__init__(parent)
        self.args = [*args, "--events", "jsonl"]
        self.grace_ms = grace_ms
        self._error_line: str | None = None
        self._buffer = b""
        self.process = QtCore.QProcess(self)
        self.process.setProgram(sys.executable)
        self.process.setArguments(["-m", "engine.cli", *self.args])
        self.process.readyReadStandardOutput.connect(self._on_stdout)
        self.process.readyReadStandardError.connect(self._on_stderr)
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)

    def start(self) -> ProcessJob:
        self.process.start()
        return self

    def terminate(self, kill: bool = False) -> None:
        if self.process.state() == QtCore.QProcess.ProcessState.NotRunning:
            return
        if kill:
            self.process.kill()
            return
        self.process.terminate()
        QtCore.QTimer.singleShot(self.grace_ms, lambda: self.terminate(kill=True))

    def _on_stdout(self) -> None:
        self._buffer += bytes(self.process.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("type") == "error":
                    self._error_line = event.get("message")
                self.event.emit(event)

    def _on_stderr(self) -> None:
        text = bytes(self.process.readAllStandardError()).decode("utf-8", errors="replace")
        for line in text.splitlines():
            if line.startswith("aha: error: "):
                self._error_line = line.removeprefix("aha: error: ")

    def _on_finished(self, exit_code: int, exit_status) -> None:
        self._on_stdout()
        if exit_code == 0 and exit_status == QtCore.QProcess.ExitStatus.NormalExit:
            self.finished.emit(exit_code)
        else:
            self.failed.emit(self._error_line or f"the job stopped (exit code {exit_code})")

    def _on_error(self, error) -> None:
        if error == QtCore.QProcess.ProcessError.FailedToStart:
            self.failed.emit(f"could not start {sys.executable}: {self.process.errorString()}")
