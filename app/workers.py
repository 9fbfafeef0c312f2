"""Running work off the GUI thread: ThreadJob (a Python thread) and ProcessJob (a child speaking the job contract).

ThreadJob runs a function and ends in `finished(result)` or `failed(str)`. ProcessJob runs `aha … --events
jsonl` (or any argv that speaks the same JSON lines), re-emits each stdout event as `event(object)` and always
ends in one `finished(JobOutcome)`. Both emit on the GUI thread. This module knows the event envelope (a
JSON object with a "type"), the exit codes and the cancel protocol; what an event means is for the panes.
"""

from __future__ import annotations

import enum
import json
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from app.qt import QtCore, Signal
from engine.errors import AhaError
from engine.jobs import CancelToken, make_event


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


class JobStatus(enum.StrEnum):
    """How a child job ended; the same words as the store's run statuses."""

    COMPLETE = "complete"
    CANCELLED = "cancelled"
    ERROR = "error"        # it reported an error (exit 2: the user can fix it; exit 1: a bug), or could not start
    CRASHED = "crashed"    # killed by a signal, or it ended without a final done/error event


@dataclass(frozen=True)
class JobOutcome:
    """The end of a ProcessJob, as qutebrowser's ProcessOutcome; `str()` is a sentence for the user.

    `exit_code` is None when the child was killed by a signal (then `signal` is its number) or never started.
    `error` is the error event's message, else the last non-empty stderr line; `result` is the done event's.
    `forced` says the job sent SIGTERM or SIGKILL itself (a cancel the child did not answer in time).
    """

    status: JobStatus
    exit_code: int | None = None
    signal: int | None = None
    result: dict | None = None
    error: str | None = None
    stderr_tail: tuple[str, ...] = ()
    title: str = "the job"
    forced: bool = False

    def __str__(self) -> str:
        if self.status == JobStatus.COMPLETE:
            text = f"{self.title} complete."
        elif self.status == JobStatus.CANCELLED:
            step = (self.result or {}).get("step")
            text = f"{self.title} cancelled" + (f" at step {step}." if step is not None else ".")
        elif self.status == JobStatus.ERROR:
            text = f"{self.title} failed: {self.error or f'exit status {self.exit_code}'}"
        else:
            if self.forced:
                how = "was stopped by force: it did not answer cancel in time"
            elif self.signal is not None:
                how = f"crashed (killed by signal {self.signal})"
            elif self.exit_code not in (0, None):
                how = f"crashed (exit status {self.exit_code})"
            else:
                how = "ended without reporting how"
            text = f"{self.title} {how}" + (f": {self.error}" if self.error else ".")
        return text[:1].upper() + text[1:]


def outcome_of(exit_code: int | None, signal: int | None, final: dict | None, stderr_tail: tuple[str, ...] = (),
               title: str = "the job", forced: bool = False) -> JobOutcome:
    """The outcome of a child that exited with `exit_code` (or died of `signal`) after `final`, its done or
    error event (None if it sent neither); `title` and `forced` are the JobOutcome's.

    Rules, first match wins: a signal → crashed; exit 130 or done{cancelled} → cancelled; an error event,
    exit 1 or exit 2 → error; exit 0 with done{complete} → complete; no final event → crashed; else error.
    """
    final_type = (final or {}).get("type")
    done_status = final.get("status") if final_type == "done" else None
    lines = [line for line in stderr_tail if line.strip()]
    stderr_line = lines[-1].removeprefix("aha: error: ") if lines else None
    error_line = final.get("message") if final_type == "error" else None
    if signal is not None:
        status = JobStatus.CRASHED
    elif exit_code == 130 or done_status == JobStatus.CANCELLED:
        status = JobStatus.CANCELLED
    elif final_type == "error" or exit_code in (1, 2):
        status = JobStatus.ERROR
    elif exit_code == 0 and done_status == JobStatus.COMPLETE:
        status = JobStatus.COMPLETE
    elif final is None:
        status = JobStatus.CRASHED
    else:
        status = JobStatus.ERROR   # done{complete} yet a failing exit code, or a status we do not know
    failed = status in (JobStatus.ERROR, JobStatus.CRASHED)
    result = final.get("result") if final_type == "done" else None
    return JobOutcome(status=status, exit_code=exit_code, signal=signal,
                      result=result if isinstance(result, dict) else None,
                      error=(error_line or stderr_line) if failed else None,
                      stderr_tail=tuple(stderr_tail), title=title, forced=forced)


def parse_event(line: bytes) -> dict:
    """One stdout line → its event; a line that is not a JSON object with a "type" → a warning log event."""
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("type"), str):
        return event
    text = line.decode("utf-8", errors="replace")
    shown = text if len(text) <= 200 else text[:200] + "…"
    return make_event("log", level="warning", message=f"ignored a line from the job that is not an event: {shown}")


def aha_command() -> list[str]:
    """How this Aha starts its own CLI in a child: this Python with `-m engine.cli` (no console script
    needed), or in the standalone bundle (PyInstaller sets sys.frozen) the bundle's executable itself, where
    `aha ARGS` is the CLI (app.launch)."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "engine.cli"]


def aha_argv(args: list[str]) -> list[str]:
    """`aha ARGS --events jsonl` as an argv for a child (aha_command)."""
    return [*aha_command(), *args, "--events", "jsonl"]


class JobState(enum.Enum):
    """A ProcessJob's lifecycle: NOT_STARTED → RUNNING → (CANCELLING) → FINISHED, or → DETACHED at window close."""

    NOT_STARTED = "not started"
    RUNNING = "running"
    CANCELLING = "cancelling"
    FINISHED = "finished"
    DETACHED = "detached"


# What the user calls a job of each run kind (engine.run_index's kinds); other kinds are named as they are.
KIND_NAMES = {"grpo": "GRPO", "sft": "SFT", "distill-sft": "SFT", "distill-kd": "KD", "generate": "trace generation",
              "demo": "demo", "serve": "the server"}

# How long a training job may take to answer Stop before it is terminated: the current step and a
# checkpoint, which on a large model take minutes (the default of 5 s suits a download, not a training step).
TRAINING_GRACE_S = 600.0

_running: list[ProcessJob] = []


def running_jobs() -> list[ProcessJob]:
    """The ProcessJobs started and not yet finished (or detached), oldest first."""
    return list(_running)


class ProcessJob(QtCore.QObject):
    """A child process that speaks the job contract: JSON-line events on stdout, `cancel` on stdin.

    `ProcessJob(args)` runs `aha ARGS --events jsonl`; `ProcessJob(argv=[...])` runs any command that prints
    the same events (`accelerate launch … -m engine.cli … --events jsonl`). Each stdout line is emitted as
    `event`; a line that is not an event becomes a warning `log` event. The last STDERR_LINES stderr lines
    are kept. The end is always one `finished(JobOutcome)`, a crash or an OOM included: the window never
    goes down with the child. The job holds itself in `running_jobs()` from start() until then.
    """

    STDERR_LINES = 20

    started = Signal()
    event = Signal(object)
    finished = Signal(object)   # JobOutcome

    def __init__(self, args: list[str] | None = None, parent: QtCore.QObject | None = None, *,
                 argv: list[str] | None = None, kind: str | None = None, grace_s: float = 5.0):
        super().__init__(parent)
        if (args is None) == (argv is None):
            raise ValueError("ProcessJob takes either aha's args or a whole argv, not both or neither")
        self.argv = aha_argv(args) if argv is None else list(argv)
        words = [word for word in (args or []) if not word.startswith("-")]
        self.kind = kind or " ".join(words[:2]) or "job"   # the start event's kind replaces it
        self.run_id: int | None = None
        self.grace_ms = int(grace_s * 1000)
        self.state = JobState.NOT_STARTED
        self.stderr_tail: deque[str] = deque(maxlen=self.STDERR_LINES)
        self._stdout = b""
        self._stderr = b""
        self._final: dict | None = None      # the done or error event
        self._forced = False
        self._terminate_timer = QtCore.QTimer(self, singleShot=True, timeout=self.terminate)
        self._kill_timer = QtCore.QTimer(self, singleShot=True, timeout=lambda: self.terminate(kill=True))
        self.process = QtCore.QProcess(self)
        self.process.setProgram(self.argv[0])
        self.process.setArguments(self.argv[1:])
        self.process.started.connect(self.started)
        self.process.readyReadStandardOutput.connect(self._on_stdout)
        self.process.readyReadStandardError.connect(self._on_stderr)
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)

    @property
    def title(self) -> str:
        """What the user calls this job: "GRPO run 7", "download"."""
        name = KIND_NAMES.get(self.kind, self.kind)
        return f"{name} run {self.run_id}" if self.run_id is not None else name

    def start(self) -> ProcessJob:
        if self.state != JobState.NOT_STARTED:
            raise RuntimeError(f"ProcessJob.start: expected state {JobState.NOT_STARTED.value}, "
                               f"found {self.state.value}")
        self.state = JobState.RUNNING
        _running.append(self)
        self.process.start()
        return self

    def is_running(self) -> bool:
        """True from start() until `finished` is emitted (or the job is detached)."""
        return self.state in (JobState.RUNNING, JobState.CANCELLING)

    def cancel(self) -> None:
        """Write `cancel` to the child's stdin; SIGTERM after the grace period, SIGKILL after another.

        The engine stops at its next safe point and ends with done{cancelled}. A second cancel writes the
        line again (the engine may then stop at once); it does not restart the grace period. A no-op once
        the job has ended."""
        if not self.is_running():
            return
        self.process.write(b"cancel\n")
        if self.state == JobState.RUNNING:
            self.state = JobState.CANCELLING
            self._terminate_timer.start(self.grace_ms)

    def terminate(self, kill: bool = False) -> None:
        """SIGTERM now and SIGKILL after the grace period (like qutebrowser's GUIProcess), or SIGKILL now."""
        if not self.is_running() or self.process.state() == QtCore.QProcess.ProcessState.NotRunning:
            return
        self._forced = True
        if kill:
            self.process.kill()
            return
        self.process.terminate()
        self._kill_timer.start(self.grace_ms)

    def detach(self) -> None:
        """Let the child outlive this object and the window: the window is closing while it runs.

        QProcess kills a running child when it is destroyed, and has no detach. So the job closes the child's
        stdin (no more `cancel` can come), stops listening, and tells its QProcess that the process is not
        running (the protected setProcessState): its destructor then only closes the pipes. The child must
        survive that: its stdout and stderr are closed once the window's process exits, so its later writes
        fail with EPIPE. No `finished` is emitted; the store's pid and heartbeat tell the Runs pane the rest.
        """
        if not self.is_running():
            return
        self.state = JobState.DETACHED
        self._terminate_timer.stop()
        self._kill_timer.stop()
        _forget(self)
        self.process.blockSignals(True)
        self.process.closeWriteChannel()
        self.process.setProcessState(QtCore.QProcess.ProcessState.NotRunning)

    def _on_stdout(self) -> None:
        self._stdout += bytes(self.process.readAllStandardOutput())
        *lines, self._stdout = self._stdout.split(b"\n")
        for line in lines:
            self._on_line(line)

    def _on_line(self, line: bytes) -> None:
        if not line.strip():
            return
        event = parse_event(line.strip())
        if event["type"] == "start":
            self.kind = str(event.get("kind") or self.kind)
            self.run_id = event.get("run_id")
        elif event["type"] in ("done", "error"):
            self._final = event
        self.event.emit(event)

    def _on_stderr(self) -> None:
        self._stderr += bytes(self.process.readAllStandardError())
        *lines, self._stderr = self._stderr.split(b"\n")
        redrawn = self._stderr.rfind(b"\r", 0, len(self._stderr) - 1)   # a bar redrawn in place: its last frame
        self._stderr = self._stderr[redrawn + 1:]
        for line in lines:
            self._keep_stderr_line(line)

    def _keep_stderr_line(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r").rsplit("\r", 1)[-1].rstrip()
        if text:
            self.stderr_tail.append(text)

    def _on_finished(self, exit_code: int, exit_status: QtCore.QProcess.ExitStatus) -> None:
        self._on_stdout()
        self._on_line(self._stdout)                # a last line without its newline
        self._on_stderr()
        self._keep_stderr_line(self._stderr)
        self._stdout = self._stderr = b""
        crashed = exit_status == QtCore.QProcess.ExitStatus.CrashExit   # then exitCode() is the signal
        self._end(outcome_of(None if crashed else exit_code, exit_code if crashed else None, self._final,
                             tuple(self.stderr_tail), title=self.title, forced=self._forced))

    def _on_error(self, error: QtCore.QProcess.ProcessError) -> None:
        if error == QtCore.QProcess.ProcessError.FailedToStart:   # no `finished` follows this one
            message = f"could not start {self.argv[0]}: {self.process.errorString()}"
            self._end(JobOutcome(JobStatus.ERROR, error=message, title=self.title))
        # Crashed comes with `finished` (CrashExit); a write to a child that closed its stdin is not an end

    def _end(self, outcome: JobOutcome) -> None:
        if not self.is_running():
            return
        self.state = JobState.FINISHED
        self._terminate_timer.stop()
        self._kill_timer.stop()
        _forget(self)
        self.finished.emit(outcome)


def _forget(job: ProcessJob) -> None:
    if job in _running:
        _running.remove(job)
