"""ProcessJob against a scripted child: a small Python script (CHILD) that prints events (some in pieces, some
garbage), writes stderr, exits with each exit code of the job contract, crashes, ignores SIGTERM or honours
`cancel` on stdin. Each test checks the JobOutcome and the events received; every test takes `qtbot`, so a
Qt warning fails it (qt_log_level_fail). The window's close prompt and detach are checked at the end.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
import shiboken6

from app.main import MainWindow
from app.qt import QtWidgets
from app.workers import JobOutcome, JobStatus, ProcessJob, outcome_of, running_jobs
from engine.store import Store
from tests.support import platforms

GRACE_S = 0.2

CHILD = r'''
import json, os, signal, sys, time
from pathlib import Path

def event(type, **fields):
    sys.stdout.write(json.dumps({"v": 1, "type": type, **fields}) + "\n")
    sys.stdout.flush()

def pieces(*parts):
    for part in parts:
        sys.stdout.write(part)
        sys.stdout.flush()
        time.sleep(0.03)

scenario = sys.argv[1]
if scenario == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
event("start", kind="grpo", pid=os.getpid(), stages=["train"], run_id=7, run_dir=None)
if scenario == "complete":
    pieces('{"v": 1, "type": "prog', 'ress", "stage": "train", "done": 1, "total": 2}\n{"v": 1, "ty',
           'pe": "metrics", "step": 1, "loss": 0.5}\n')
    pieces("this is not json\n", '{"no": "type"}\n', "[1, 2]\n", "\n")
    print("a warning on stderr", file=sys.stderr, flush=True)
    event("done", status="complete", result={"step": 2, "adapter": "/runs/7/adapter"})
elif scenario == "last-line-unterminated":
    sys.stdout.write(json.dumps({"v": 1, "type": "done", "status": "complete", "result": {}}))
elif scenario == "user-error":
    event("error", message="model 'x' is not in the library", exception=None)
    print("aha: error: model 'x' is not in the library", file=sys.stderr)
    sys.exit(2)
elif scenario == "bug":
    print("aha: internal error: ValueError: boom (traceback in run.log)", file=sys.stderr)
    sys.exit(1)
elif scenario == "no-final-event":
    sys.exit(0)
elif scenario == "noisy-exit-3":
    for index in range(30):
        print(f"stderr line {index}", file=sys.stderr)
    print("\x1b[2K 10%\r 50%\r100% last frame", file=sys.stderr)
    sys.exit(3)
elif scenario == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
elif scenario == "abort":
    os.abort()
elif scenario in ("stubborn", "dies-on-sigterm"):
    time.sleep(30)                        # reads no stdin: only a signal ends it
elif scenario == "honours-cancel":
    line = sys.stdin.readline()
    if line.strip() == "cancel":
        event("done", status="cancelled", result={"step": 3})
        sys.exit(130)
    Path(sys.argv[2]).write_text("stdin closed")      # EOF: the window let go; keep running a little
    time.sleep(0.3)
    Path(sys.argv[2] + ".alive").write_text("still running")
'''


@pytest.fixture
def child(tmp_path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    return script


@pytest.fixture(autouse=True)
def _no_job_left_running():
    """A job left in the registry would make a later window's close ask a question nobody answers."""
    yield
    left = running_jobs()
    for job in left:
        job.terminate(kill=True)
        job.process.waitForFinished(3000)
    assert not left, f"jobs left running: {[job.title for job in left]}"


def make_job(child: Path, scenario: str, *extra: str) -> tuple[ProcessJob, list[dict]]:
    job = ProcessJob(argv=[sys.executable, str(child), scenario, *extra], kind="scripted", grace_s=GRACE_S)
    events: list[dict] = []
    job.event.connect(events.append)
    return job, events


def run_to_end(qtbot, child: Path, scenario: str, cancel: bool = False) -> tuple[JobOutcome, list[dict]]:
    """Start the scenario, cancel it after its first event if asked, and return its outcome and events."""
    job, events = make_job(child, scenario)
    with qtbot.waitSignal(job.finished) as finished:
        job.start()
        if cancel:
            qtbot.waitUntil(lambda: bool(events))
            job.cancel()
    assert not job.is_running() and job not in running_jobs()
    return finished.args[0], events


def types(events: list[dict]) -> list[str]:
    return [event["type"] for event in events]


def test_events_arrive_whole_and_garbage_becomes_warnings(qtbot, child):
    outcome, events = run_to_end(qtbot, child, "complete")
    assert types(events) == ["start", "progress", "metrics", "log", "log", "log", "done"]
    assert events[1]["done"] == 1 and events[2]["loss"] == 0.5
    warnings = [event for event in events if event["type"] == "log"]
    assert all(event["level"] == "warning" for event in warnings)
    assert "this is not json" in warnings[0]["message"] and '{"no": "type"}' in warnings[1]["message"]
    assert outcome.status == JobStatus.COMPLETE == "complete" and outcome.exit_code == 0
    assert outcome.result == {"step": 2, "adapter": "/runs/7/adapter"} and outcome.error is None
    assert outcome.stderr_tail == ("a warning on stderr",)
    assert str(outcome) == "GRPO run 7 complete." and outcome.title == "GRPO run 7"


def test_a_last_line_without_its_newline_is_still_read(qtbot, child):
    outcome, events = run_to_end(qtbot, child, "last-line-unterminated")
    assert types(events) == ["start", "done"] and outcome.status == JobStatus.COMPLETE


def test_exit_2_with_an_error_event_is_an_error_with_its_message(qtbot, child):
    outcome, events = run_to_end(qtbot, child, "user-error")
    assert types(events) == ["start", "error"]
    assert (outcome.status, outcome.exit_code) == (JobStatus.ERROR, 2)
    assert outcome.error == "model 'x' is not in the library"
    assert str(outcome) == "GRPO run 7 failed: model 'x' is not in the library"


def test_exit_1_is_an_error_with_the_last_stderr_line(qtbot, child):
    outcome, _ = run_to_end(qtbot, child, "bug")
    assert (outcome.status, outcome.exit_code) == (JobStatus.ERROR, 1)
    assert outcome.error == "aha: internal error: ValueError: boom (traceback in run.log)"


def test_exit_0_without_a_final_event_is_a_crash(qtbot, child):
    outcome, _ = run_to_end(qtbot, child, "no-final-event")
    assert (outcome.status, outcome.exit_code, outcome.error) == (JobStatus.CRASHED, 0, None)
    assert str(outcome) == "GRPO run 7 ended without reporting how."


def test_the_stderr_tail_keeps_the_last_lines_and_a_redrawn_bars_last_frame(qtbot, child):
    outcome, _ = run_to_end(qtbot, child, "noisy-exit-3")
    assert (outcome.status, outcome.exit_code) == (JobStatus.CRASHED, 3)
    assert len(outcome.stderr_tail) == ProcessJob.STDERR_LINES
    assert outcome.stderr_tail[0] == "stderr line 11" and outcome.error == "100% last frame"
    assert str(outcome) == "GRPO run 7 crashed (exit status 3): 100% last frame"


@platforms.posix_signals
@pytest.mark.parametrize(("scenario", "signal_number"), [("sigkill", signal.SIGKILL), ("abort", signal.SIGABRT)])
def test_a_child_killed_by_a_signal_crashed(qtbot, child, scenario, signal_number):
    outcome, events = run_to_end(qtbot, child, scenario)
    assert types(events) == ["start"]
    assert (outcome.status, outcome.exit_code, outcome.signal) == (JobStatus.CRASHED, None, signal_number)
    assert not outcome.forced and f"killed by signal {signal_number}" in str(outcome)


def test_cancel_goes_through_stdin_and_ends_cancelled(qtbot, child):
    started = time.monotonic()
    outcome, events = run_to_end(qtbot, child, "honours-cancel", cancel=True)
    assert types(events) == ["start", "done"] and events[-1]["status"] == "cancelled"
    assert (outcome.status, outcome.exit_code, outcome.forced) == (JobStatus.CANCELLED, 130, False)
    assert outcome.result == {"step": 3} and str(outcome) == "GRPO run 7 cancelled at step 3."
    assert time.monotonic() - started < 2.0     # no grace period was waited for


@platforms.posix_signals
def test_cancel_sends_sigterm_after_the_grace_period(qtbot, child):
    started = time.monotonic()
    outcome, _ = run_to_end(qtbot, child, "dies-on-sigterm", cancel=True)
    assert (outcome.status, outcome.signal, outcome.forced) == (JobStatus.CRASHED, signal.SIGTERM, True)
    assert "stopped by force" in str(outcome) and time.monotonic() - started >= GRACE_S


@platforms.posix_signals
def test_cancel_kills_a_child_that_ignores_stdin_and_sigterm(qtbot, child):
    started = time.monotonic()
    outcome, _ = run_to_end(qtbot, child, "stubborn", cancel=True)
    assert (outcome.status, outcome.signal, outcome.forced) == (JobStatus.CRASHED, signal.SIGKILL, True)
    assert time.monotonic() - started >= 2 * GRACE_S


def test_cancel_of_a_job_that_is_not_running_does_nothing(qtbot, child):
    job, _ = make_job(child, "no-final-event")
    job.cancel()                                     # not started
    job.terminate()
    assert not job.is_running() and running_jobs() == []
    with qtbot.waitSignal(job.finished):
        job.start()
    job.cancel()                                     # ended
    job.terminate(kill=True)
    with pytest.raises(RuntimeError, match="expected state not started, found finished"):
        job.start()


def test_a_program_that_cannot_start_is_an_error(qtbot, tmp_path):
    job = ProcessJob(argv=[str(tmp_path / "no-such-program")], kind="scripted")
    with qtbot.waitSignal(job.finished) as finished:
        job.start()
    outcome = finished.args[0]
    assert outcome.status == JobStatus.ERROR and outcome.exit_code is None
    assert outcome.error.startswith(f"could not start {tmp_path / 'no-such-program'}")
    assert running_jobs() == []


def test_the_registry_holds_a_job_while_it_runs(qtbot, child):
    job, events = make_job(child, "honours-cancel")
    assert running_jobs() == []
    with qtbot.waitSignal(job.finished):
        job.start()
        assert running_jobs() == [job]
        qtbot.waitUntil(lambda: bool(events))
        job.cancel()
    assert running_jobs() == []


def test_aha_args_run_the_engine_cli_with_jsonl_events(qtbot):
    job = ProcessJob(["models", "pull", "org/repo", "file.gguf"])
    assert job.argv == [sys.executable, "-m", "engine.cli", "models", "pull", "org/repo", "file.gguf",
                        "--events", "jsonl"]
    assert job.kind == "models pull" and job.grace_ms == 5000
    with pytest.raises(ValueError, match="not both"):
        ProcessJob(["models", "list"], argv=["aha"])


def test_outcome_rules_without_a_child():
    """The table of outcome_of, for the cases the scripted child does not reach."""
    done = {"type": "done", "status": "complete", "result": {"a": 1}}
    assert outcome_of(0, None, done).status == JobStatus.COMPLETE
    assert outcome_of(130, None, None).status == JobStatus.CANCELLED           # stopped before its done event
    assert outcome_of(0, None, {"type": "done", "status": "cancelled"}).status == JobStatus.CANCELLED
    assert outcome_of(3, None, {"type": "error", "message": "m"}).error == "m"
    assert outcome_of(2, None, None, ("aha: error: no such file",)).error == "no such file"
    assert outcome_of(1, None, done).status == JobStatus.ERROR                  # done, then a failing exit
    assert outcome_of(None, 9, done).status == JobStatus.CRASHED
    assert outcome_of(0, None, {"type": "done", "status": "complete", "result": "x"}).result is None


@platforms.posix_signals
def test_a_detached_child_outlives_its_job(qtbot, child, tmp_path):
    marker = tmp_path / "stdin-closed"
    job, events = make_job(child, "honours-cancel", str(marker))
    job.start()
    qtbot.waitUntil(lambda: bool(events))
    job.detach()
    assert not job.is_running() and running_jobs() == []
    shiboken6.delete(job)                            # QProcess's destructor would kill a child it thinks runs
    qtbot.waitUntil(lambda: marker.with_name("stdin-closed.alive").exists())
    assert marker.read_text() == "stdin closed"


@pytest.fixture
def window(qtbot):
    main = MainWindow(Store())
    qtbot.addWidget(main)
    main.show()
    return main


def test_closing_the_window_asks_while_a_job_runs_and_then_leaves_it_running(qtbot, child, tmp_path, window,
                                                                             monkeypatch):
    marker = tmp_path / "stdin-closed"
    job, events = make_job(child, "honours-cancel", str(marker))
    job.start()
    qtbot.waitUntil(lambda: bool(events))
    asked: list[str] = []

    def answer(button):
        def question(parent, title, text, *args):
            asked.append(text)
            return button
        return question

    monkeypatch.setattr(QtWidgets.QMessageBox, "question", answer(QtWidgets.QMessageBox.StandardButton.Cancel))
    window.close()
    assert window.isVisible() and job.is_running()
    assert asked[0].startswith("1 job still running: GRPO run 7.") and "keeps running" in asked[0]
    monkeypatch.setattr(QtWidgets.QMessageBox, "question", answer(QtWidgets.QMessageBox.StandardButton.Close))
    window.close()
    assert not window.isVisible() and not job.is_running() and running_jobs() == []
    qtbot.waitUntil(lambda: marker.with_name("stdin-closed.alive").exists())   # detached, not killed
