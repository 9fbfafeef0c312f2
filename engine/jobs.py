"""The job contract every long command speaks (`run_job`), its two sinks (terminal bar, JSON lines), cancel
tokens and the progress helper.

Events are plain dicts built through their dataclasses in engine.events (`make_event` checks them):
`start`, `progress`, `metrics`, `sample`, `log`, `artifact`, then exactly one `done` or `error`. Jobs take
`on_event` and `cancel`; they never print. The CLI runs each long subcommand through `run_job`, which
installs the cancel handling (SIGINT, SIGTERM, a `cancel` line on stdin), emits `start` first and the
final event last, keeps a run's heartbeat, and maps the outcome to the exit code (0 complete, 130
cancelled, 2 a user-facing error, 1 a bug). The sink is a progress bar with ETA (and a training run's step
lines, engine.run_report) on stderr, or one JSON object per line on stdout with `--events jsonl` (what the
GUI reads). The rate, time and size formats here are the ones every view shows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from engine import events
from engine.errors import AhaError, Cancelled

EVENT_TYPES = tuple(events.TYPES)

OnEvent = Callable[[dict], None]

EXIT_COMPLETE, EXIT_BUG, EXIT_USER_ERROR, EXIT_CANCELLED = 0, 1, 2, 130
HEARTBEAT_S = 10.0  # a running job refreshes its run's heartbeat this often (Store.recover allows far more)


def make_event(type: str, **fields: Any) -> dict:
    """One event dict, checked against its dataclass (engine.events); raises on an unknown type or field."""
    return events.make(type, **fields)


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
    """Emits `progress` events for one stage: `done`/`total` in `unit`, throttled to ~10 per second, with
    eta_s = elapsed · (total − done) / done. `label` is what a person reads (the stage is the job's name)."""

    def __init__(self, on_event: OnEvent, stage: str, total: float, unit: str = "", interval_s: float = 0.1,
                 label: str | None = None):
        self.on_event, self.stage, self.total, self.unit, self.label = on_event, stage, total, unit, label
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
            elapsed = now - self.started
            fields.setdefault("eta_s", eta(elapsed, done, self.total))
            if self.label:
                fields.setdefault("label", self.label)
            self.on_event(make_event("progress", stage=self.stage, done=done, total=self.total,
                                     unit=self.unit, elapsed_s=round(elapsed, 3), **fields))


def eta(elapsed_s: float, done: float, total: float) -> float | None:
    """Seconds left at the rate so far, elapsed · (total − done) / done; None before anything is done."""
    if done <= 0 or total <= 0:
        return None
    return round(max(elapsed_s * (total - done) / done, 0.0), 1)


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
        if kind == "start":
            if event.get("run_dir"):
                self._print(f"run directory: {event['run_dir']}")
        elif kind == "progress":
            self.report.progress(event)
            label = event.get("label") or event.get("stage", "")  # a phase is the GUI's detail, not the bar's
            line = format_bar(event["done"], event["total"], event.get("elapsed_s", 0.0), event.get("unit", ""), label)
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
        elif kind in ("log", "artifact"):
            text = event.get("message") or event.get("path") or json.dumps(event, ensure_ascii=False)
            if kind == "artifact" and not event.get("final", True):
                return  # a scratch file: not a result the user keeps
            prefix = "wrote " if kind == "artifact" and not event.get("message") else ""
            level = event.get("level")
            self._print(f"{'warning: ' if level == 'warning' else ''}{prefix}{text}")
        # `error`: run_job prints the one line itself (aha: error: …), the bar's last state stays above it.
        self.stream.flush()

    def _print(self, line: str) -> None:
        if self._bar is None:
            self.stream.write(line + "\n")
        else:
            self.stream.write(f"{ERASE_LINE}{line}\n{self._bar}")


class JsonlSink:
    """Writes one JSON object per line (the `--events jsonl` protocol the GUI's ProcessJob reads). When the
    reader goes away (the window closed while training runs on) the events go nowhere and the job goes on:
    its run directory holds everything the Runs pane shows."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        line = json.dumps(event, ensure_ascii=False, default=str)
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):  # the pipe's reader is gone, or the stream was closed
                self.stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - kept for the job's life


def sink_for(mode: str) -> OnEvent:
    """`"jsonl"` → JsonlSink on stdout, `"none"` → ignore, anything else → TerminalSink on stderr."""
    if mode == "jsonl":
        return JsonlSink()
    if mode == "none":
        return ignore
    return TerminalSink()


# Libraries underneath ------------------------------------------------------------------------------

# Libraries whose internal warnings (deprecations, optional kernels, progress bars) are noise for a user of `aha`.
QUIET_LIBRARIES = ("bitsandbytes", "transformers", "peft", "accelerate", "torch", "huggingface_hub", "datasets")


def quiet_libraries() -> None:
    """Keep third-party chatter off the terminal: only their errors are shown, their progress bars are off
    (huggingface_hub's switch, which transformers reads too; set before either is imported)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=rf"{name}(\..*)?$")


def library_chatter_to(log: Path) -> Callable[[], None]:
    """Until the returned undo is called, the libraries' warnings (their loggers and warnings.warn) go to
    `log`, the run's run.log, where a person looking into a run finds them; the terminal sees none of them."""
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name in QUIET_LIBRARIES:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logger.addHandler(handler)
        warnings.filterwarnings("always", module=rf"{name}(\..*)?$")
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if any(f"/{name}/" in filename.replace(os.sep, "/") for name in QUIET_LIBRARIES):
            with contextlib.suppress(OSError), open(log, "a", encoding="utf-8") as stream:
                stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [warning] "
                             f"{warnings.formatwarning(message, category, filename, lineno, line)}")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    filters = warnings.filters[:len(QUIET_LIBRARIES)]

    def undo() -> None:
        warnings.showwarning = shown
        for entry in filters:
            with contextlib.suppress(ValueError):
                warnings.filters.remove(entry)
        for name in QUIET_LIBRARIES:
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.setLevel(logging.ERROR)
            logger.propagate = True
        handler.close()

    return undo


# The job runner ----------------------------------------------------------------------------------

class Job:
    """What a job's work sees: `emit` (its events go through here), `cancel` (the token every cancel sets)
    and `stages`. The first event out is always `start`: a run announces itself with a `start` event
    carrying run_id/run_dir (engine.train.runs), which the job completes with kind, pid and stages; any other
    first event is preceded by a `start` of the job without a run."""

    def __init__(self, kind: str, stages: Sequence[str], sink: OnEvent, cancel: CancelToken | None = None):
        self.kind, self.stages, self.sink = kind, list(stages), sink
        self.cancel = cancel or CancelToken()
        self.run_id: int | None = None
        self.run_dir: Path | None = None
        self.started = False
        self.finished = False
        self._heartbeat: threading.Event | None = None
        self._undo_chatter: Callable[[], None] | None = None

    def emit(self, event: dict) -> None:
        kind = event["type"]
        if kind in events.FINAL_TYPES:
            raise ValueError("a job's work returns its result; run_job emits the final event")
        if kind == "start":
            if self.started:  # a second run in one job (never today): say where it is
                self.sink(make_event("log", message=f"run directory: {event.get('run_dir')}"))
                return
            self._start(event.get("run_id"), event.get("run_dir"))
            return
        if not self.started:
            self._start(None, None)
        if kind == "progress":
            event = self._placed(event)
        self.sink(event)

    def _start(self, run_id: int | None, run_dir: str | None) -> None:
        self.started = True
        self.run_id, self.run_dir = run_id, Path(run_dir) if run_dir else None
        self.sink(make_event("start", kind=self.kind, pid=os.getpid(), stages=self.stages, run_id=run_id,
                             run_dir=run_dir))
        if run_id is not None:
            self._keep_heartbeat(run_id)
        if self.run_dir is not None and self.run_dir.is_dir():
            self._undo_chatter = library_chatter_to(self.run_dir / "run.log")

    def _placed(self, event: dict) -> dict:
        """The progress event with its stage's index and the stage count (from `stages`)."""
        stage = event["stage"]
        index = self.stages.index(stage) if stage in self.stages else None
        return {**event, "stage_index": index, "stage_count": len(self.stages)}

    def _keep_heartbeat(self, run_id: int) -> None:
        """Mark the run as this process's and refresh its heartbeat every HEARTBEAT_S on a thread of its
        own (with its own store connection) until the job ends."""
        from engine.store import Store

        with Store() as store:
            store.claim_run(run_id, os.getpid())
        stop = self._heartbeat = threading.Event()

        def beat() -> None:
            with Store() as store:
                while not stop.wait(HEARTBEAT_S):
                    with contextlib.suppress(Exception):  # a locked database skips a beat, no more
                        store.heartbeat(run_id)

        threading.Thread(target=beat, name="aha-heartbeat", daemon=True).start()

    def finish(self, event: dict) -> None:
        """Emit the final event (after `start`, when nothing else was emitted) and stop the heartbeat."""
        if not self.started:
            self._start(None, None)
        if self._heartbeat is not None:
            self._heartbeat.set()
        if self._undo_chatter is not None:
            self._undo_chatter()
        self.finished = True
        status = event.get("status", "error")
        _settle_run(self.run_id, status)
        self.sink(event)

    def log_file(self) -> Path | None:
        """The run's run.log, where a bug's traceback goes; None for a job without a run."""
        return self.run_dir / "run.log" if self.run_dir is not None else None


@contextlib.contextmanager
def cancel_handling(cancel: CancelToken, read_stdin: bool = True) -> Iterator[CancelToken]:
    """While the block runs, SIGINT, SIGTERM and a line `cancel` on stdin set the token; a second one of
    any of them raises KeyboardInterrupt in the main thread (stop now). Signals are only installed from
    the main thread; stdin is read by a daemon thread when it is a pipe or a file (the GUI writes to it),
    and its end is not a cancel (the window may close while training goes on)."""
    import _thread

    def again() -> None:
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()

    def handler(signum, frame) -> None:
        again()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    if read_stdin and _stdin_is_ours():
        def read() -> None:
            with contextlib.suppress(Exception):  # stdin closed or unreadable: no stdin cancel, nothing else
                for line in sys.stdin:
                    if line.strip() == "cancel":
                        if cancel.cancelled:
                            _thread.interrupt_main()
                        cancel.cancel()

        threading.Thread(target=read, name="aha-stdin-cancel", daemon=True).start()
    try:
        yield cancel
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stdin_is_ours() -> bool:
    """Whether reading stdin for `cancel` is safe: a real file descriptor that is not a terminal (a
    person at a terminal has Ctrl+C)."""
    try:
        return sys.stdin is not None and not sys.stdin.isatty() and sys.stdin.fileno() >= 0
    except (ValueError, OSError, AttributeError):  # pytest's captured stdin, a closed stream
        return False


def bug_line(error: BaseException, log: Path | None) -> str:
    """'internal error: KeyError: 'x' (traceback in runs/grpo-3/run.log); please report it' — a bug as the one
    line a user sees."""
    where = (f"traceback in {log}" if log is not None
             else "run again with AHA_DEBUG=1 to see the traceback")
    return f"internal error: {type(error).__name__}: {error} ({where}); please report it"


def run_job(kind: str, work: Callable[[Job], Mapping[str, Any] | None], args: Any = None, *,
            stages: Sequence[str] = (), sink: OnEvent | None = None) -> int:
    """Run `work(job)` as the job `kind` and return the exit code: 0 complete, 130 cancelled, 2 a
    user-facing error (AhaError: one line on stderr), 1 a bug (one line on stderr; the traceback in the
    run's run.log, or on stderr with AHA_DEBUG=1 when there is no run).

    `work` returns its result (a dict; `status` "cancelled" when it stopped on the token, else complete),
    or raises Cancelled when it stopped without a result. The events: `start` first, the work's own,
    then exactly one `done` (with the result) or `error`. `args.events` picks the sink (auto, jsonl, none).
    """
    sink = sink or sink_for(getattr(args, "events", "auto") or "auto")
    job = Job(kind, stages, sink)
    try:
        with cancel_handling(job.cancel):
            try:
                result = dict(work(job) or {})
                status = result.pop("status", "complete")
            except (Cancelled, KeyboardInterrupt) as stopped:
                status, result = "cancelled", {"message": str(stopped)} if isinstance(stopped, Cancelled) else {}
    except AhaError as error:
        job.finish(make_event("error", message=str(error)))
        print(f"aha: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (BrokenPipeError, SystemExit):
        raise
    except Exception as error:  # a bug: one line for the user, the traceback where it can be read
        log = job.log_file()
        text = "".join(traceback.format_exception(error))
        if log is not None:
            with contextlib.suppress(OSError), open(log, "a", encoding="utf-8") as stream:
                stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [error] {text}")
        line = bug_line(error, log)
        with contextlib.suppress(Exception):
            job.finish(make_event("error", message=line, exception=type(error).__name__))
        print(f"aha: {line}", file=sys.stderr)
        if log is None and os.environ.get("AHA_DEBUG") == "1":
            print(text, file=sys.stderr, end="")
        return EXIT_BUG
    job.finish(make_event("done", status=status, result=_json_result(result)))
    if status == "cancelled":
        if getattr(args, "events", "auto") != "jsonl" and "message" in result:
            print(f"aha: {result['message']}", file=sys.stderr)
        return EXIT_CANCELLED
    return EXIT_COMPLETE


def _json_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result as JSON can carry it: paths as strings, None and empty values left out."""
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in result.items()
            if value is not None and value != ""}


def _settle_run(run_id: int | None, status: str) -> None:
    """The run's row gets the job's outcome unless its work recorded one (a trainer does)."""
    if run_id is None:
        return
    from engine.store import Store

    with contextlib.suppress(Exception), Store() as store:
        if store.get_run(run_id)["status"] in ("created", "running"):
            store.update_run_status(run_id, status)
