"""engine.jobs: the terminal progress bar with ETA (its text at several points of a stage), the terminal sink
on a TTY and off one, the JSON-lines sink, and `aha … --events auto|jsonl` choosing between them for real."""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys

import pytest

from engine.jobs import JsonlSink, Progress, TerminalSink, format_bar, make_event, sink_for
from tests.support import platforms

ERASE = "\r\x1b[2K"  # carriage return + erase line: the bar redraws itself in place


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


# format_bar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    # Under way: 45 of 100 in 9 s → 5/s, ETA = 9 · 55 / 45 = 11 s; 45% of 28 columns is 13 (12.6 rounded).
    ((45, 100, 9.0, "", "x"), "x [#############...............]  45% · 45/100 · 5/s · ETA 0:11"),
    # Bytes in decimal units: 12.3 of 27 MB in 4.1 s → 3.0 MB/s, ETA = 4.1 · 14.7 / 12.3 = 4.9 s → 0:05.
    ((12_300_000, 27_000_000, 4.1, "B", "download"),
     "download [#############...............]  46% · 12.3 MB/27.0 MB · 3.0 MB/s · ETA 0:05"),
    # An hour to go gets an hours field.
    ((1, 3601, 1.0, "steps", "grpo"), "grpo [............................]   0% · 1 steps/3601 steps · 1 steps/s · "
                                      "ETA 1:00:00"),
    # 59.6 s rounds to a whole minute.
    ((1, 2, 59.6, "", ""), "[##############..............]  50% · 1/2 · 0.0167785/s · ETA 1:00"),
    # Nothing done yet: no rate, the ETA is unknown.
    ((0, 10, 5.0, "steps", "grpo"), "grpo [............................]   0% · 0 steps/10 steps · ETA --:--"),
    # Finished: a full bar, 100%, nothing left.
    ((10, 10, 20.0, "steps", "grpo"), "grpo [############################] 100% · 10 steps/10 steps · 0.5 steps/s · "
                                      "ETA 0:00"),
    # More than the total (an estimate that was low, as the quantizer's): the bar stays full.
    ((15, 10, 3.0, "", ""), "[############################] 100% · 15/10 · 5/s · ETA 0:00"),
], ids=["under-way", "bytes", "hours", "rounding", "not-started", "finished", "past-the-total"])
def test_bar_text_percent_counts_rate_and_eta(args, expected):
    """The bar line at several points of a stage: filled columns, percent, done/total in the unit (bytes
    in KB/MB/GB), the rate over the whole stage, and ETA = elapsed · (total − done) / done as m:ss or
    h:mm:ss."""
    assert format_bar(*args) == expected


def test_bar_width_zero_is_the_text_alone():
    """width=0 (what the Models pane uses beside its own bar widget) keeps percent, counts, rate and ETA."""
    assert format_bar(3, 7, 1.5, width=0) == "[]  43% · 3/7 · 2/s · ETA 0:02"


def test_bar_with_an_unknown_total_does_not_fail():
    """A total of 0 (a download whose size the Hub did not send): no division by zero, an empty bar at 0%,
    and what is known — the bytes so far and the rate — still shown."""
    line = format_bar(5_000_000, 0, 2.0, "B", "download")
    assert line.startswith("download [............................]   0% · 5.0 MB/")
    assert " · 2.5 MB/s · " in line


def test_bar_at_zero_elapsed_has_no_rate():
    """The first event of a stage can come at elapsed 0: no division by zero, and no rate is claimed."""
    line = format_bar(5, 10, 0.0, "steps", "s")
    assert line.startswith("s [##############..............]  50% · 5 steps/10 steps · ETA ")
    assert "/s" not in line


def test_progress_events_carry_what_the_bar_needs(monkeypatch):
    """Progress throttles to one event per interval but always sends the last one (done = total), with
    elapsed_s on the monotonic clock the bar's rate and ETA come from."""
    now = [100.0]
    monkeypatch.setattr("engine.jobs.time.monotonic", lambda: now[0])
    events: list[dict] = []
    progress = Progress(events.append, "grpo", 4, unit="steps", interval_s=1.0)
    for _ in range(4):
        now[0] += 0.5
        progress.advance()
    assert [(event["done"], event["elapsed_s"]) for event in events] == [(1, 0.5), (3, 1.5), (4, 2.0)]
    assert events[-1] == {"type": "progress", "stage": "grpo", "done": 4, "total": 4, "unit": "steps",
                          "elapsed_s": 2.0}


# The sinks ----------------------------------------------------------------------------------------

EVENTS = [
    make_event("progress", stage="grpo", done=1, total=4, unit="steps", elapsed_s=2.0),
    make_event("log", message="hello"),
    make_event("progress", stage="grpo", done=2, total=4, unit="steps", elapsed_s=4.0),
    make_event("metrics", step=2, loss=0.5),
    make_event("progress", stage="grpo", done=4, total=4, unit="steps", elapsed_s=8.0),
    make_event("artifact", kind="gguf", path="/tmp/m.gguf"),
    make_event("log", message="careful", level="warning"),
    make_event("error", message="boom"),
]
BARS = {done: format_bar(done, 4, 2.0 * done, "steps", "grpo") for done in (1, 2, 4)}


def test_terminal_sink_draws_the_bar_in_place_on_a_tty():
    """On a terminal each progress event redraws one line (\\r, erase line, the bar); a message while the bar
    is shown first ends the bar's line; the last event (done = total) ends it too; metrics are not drawn."""
    stream = FakeTTY()
    sink = TerminalSink(stream)
    for event in EVENTS:
        sink(event)
    assert stream.getvalue() == (f"{ERASE}{BARS[1]}\nhello\n{ERASE}{BARS[2]}{ERASE}{BARS[4]}\n"
                                 "wrote /tmp/m.gguf\nwarning: careful\nerror: boom\n")


def test_terminal_sink_off_a_tty_prints_only_finished_stages():
    """Into a file or a pipe there is no redrawing: no control codes, one line per finished stage."""
    stream = io.StringIO()
    sink = TerminalSink(stream)
    for event in EVENTS:
        sink(event)
    assert stream.getvalue() == f"hello\n{BARS[4]}\nwrote /tmp/m.gguf\nwarning: careful\nerror: boom\n"


def test_jsonl_sink_writes_one_object_per_line():
    stream = io.StringIO()
    sink = JsonlSink(stream)
    for event in EVENTS:
        sink(event)
    assert [json.loads(line) for line in stream.getvalue().splitlines()] == EVENTS


def test_sink_for_picks_the_sink_and_its_stream():
    """--events auto: the bar on stderr; jsonl: JSON lines on stdout (stdout stays for the result)."""
    auto = sink_for("auto")
    assert isinstance(auto, TerminalSink) and auto.stream is sys.stderr
    jsonl = sink_for("jsonl")
    assert isinstance(jsonl, JsonlSink) and jsonl.stream is sys.stdout


# `aha export` with its stderr on a terminal -------------------------------------------------------


def export_on_a_terminal(source, out, *flags: str) -> tuple[int, str, str]:
    """Run `aha export` in a child process with stderr on a pseudo-terminal and stdout on a pipe; returns
    (exit code, stdout, what the terminal received)."""
    import pty

    master, slave = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", "export", str(source), "-o", str(out), *flags],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    received = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            assert ready, "the child wrote nothing for 120 s"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            received += chunk
        stdout = child.stdout.read().decode()
        child.wait(timeout=60)
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()
    return child.returncode, stdout, received.decode().replace("\r\n", "\n")


@platforms.pseudo_terminal
def test_export_draws_a_bar_on_a_terminal(checkpoint, tmp_path):
    """`aha export` in a child process with stderr on a pseudo-terminal: the bar is drawn in place there,
    every drawing with its ETA, the last one full at 100%; stdout gets the output path alone."""
    code, stdout, terminal = export_on_a_terminal(checkpoint("qwen2"), tmp_path / "bar.gguf")
    assert code == 0, terminal
    assert stdout == f"{tmp_path / 'bar.gguf'}\n"
    bars = [part for part in terminal.split(ERASE) if part.startswith("writing bar.gguf [")]
    assert bars and all(" · ETA " in bar for bar in bars), terminal
    assert bars[-1].startswith("writing bar.gguf [############################] 100% · ")
    assert f"wrote {tmp_path / 'bar.gguf'}\n" in terminal


def test_export_with_events_jsonl_prints_json_lines_and_no_bar(checkpoint, tmp_path, capsys, monkeypatch):
    """`aha export --events jsonl` with stderr on a terminal: stdout is JSON events only (progress with
    done/total/elapsed, ending in `done`) and the terminal gets no bar."""
    from engine import cli

    terminal = FakeTTY()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["export", str(checkpoint("qwen2")), "-o", str(tmp_path / "events.gguf"), "--events", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["type"] == "done" and events[-1]["gguf"] == str(tmp_path / "events.gguf")
    progress = [event for event in events if event["type"] == "progress"]
    assert progress and {"stage", "done", "total", "unit", "elapsed_s"} <= set(progress[-1])
    assert progress[-1]["done"] == progress[-1]["total"]
    assert terminal.getvalue() == ""
