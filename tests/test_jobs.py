"""engine.jobs: the terminal progress bar with ETA (its text at several points of a stage), the terminal sink
on a TTY and off one, the JSON-lines sink, and `aha … --events auto|jsonl` choosing between them for real."""

from __future__ import annotations

import io
import json
import sys

import pytest

from engine.jobs import (
    JsonlSink,
    Progress,
    TerminalSink,
    count,
    format_bar,
    format_rate,
    format_seconds,
    make_event,
    sink_for,
)
from tests.support import platforms
from tests.support.on_a_terminal import run_on_a_terminal

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
    # An hour to go gets an hours field; one a second is "1 step/s".
    ((1, 3601, 1.0, "steps", "grpo"), "grpo [............................]   0% · 1/3,601 steps · 1 step/s · "
                                      "ETA 1:00:00"),
    # 59.6 s for one item: slower than one a second reads as seconds each; ETA 59.6 s rounds to a minute.
    ((1, 2, 59.6, "", ""), "[##############..............]  50% · 1/2 · 60 s each · ETA 1:00"),
    # Nothing done yet: no rate, the ETA is unknown.
    ((0, 10, 5.0, "steps", "grpo"), "grpo [............................]   0% · 0/10 steps · ETA --:--"),
    # Finished: a full bar, 100%, nothing left; 10 steps in 20 s is 2 s/step.
    ((10, 10, 20.0, "steps", "grpo"),
     "grpo [############################] 100% · 10/10 steps · 2 s/step · ETA 0:00"),
    # The "1 steps/5 steps · 0.0612295 steps/s": one step of five in 16.3 s.
    ((1, 5, 16.33, "steps", "grpo"), "grpo [######......................]  20% · 1/5 steps · 16 s/step · ETA 1:05"),
    # A total of one is singular.
    ((0, 1, 0.0, "steps", "grpo"), "grpo [............................]   0% · 0/1 step · ETA --:--"),
    # More than the total (an estimate that was low, as the quantizer's): the bar stays full.
    ((15, 10, 3.0, "", ""), "[############################] 100% · 15/10 · 5/s · ETA 0:00"),
], ids=["under-way", "bytes", "hours", "rounding", "not-started", "finished", "slow-steps", "one-step",
        "past-the-total"])
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
    assert line.startswith("s [##############..............]  50% · 5/10 steps · ETA ")
    assert "/s" not in line


@pytest.mark.parametrize(("rate", "unit", "expected"), [
    (3.24, "steps", "3.2 steps/s"), (1.0, "steps", "1 step/s"), (12.4, "steps", "12 steps/s"),
    (1234.0, "tokens", "1,234 tokens/s"), (0.0612295, "steps", "16 s/step"), (0.5, "steps", "2 s/step"),
    (1 / 1.5, "prompts", "1.5 s/prompt"), (3_000_000.0, "B", "3.0 MB/s"), (0.25, "", "4 s each"),
])
def test_rates_read_at_a_glance(rate, unit, expected):
    """At least one a second: so many per second; slower: seconds per one (the issue's 0.0612295 steps/s is
    16 s/step); never more than three significant digits."""
    assert format_rate(rate, unit) == expected


@pytest.mark.parametrize(("seconds", "expected"), [
    (0.4712, "0.47 s"), (1.74, "1.7 s"), (16.3, "16 s"), (59.4, "59 s"), (59.6, "1:00"), (112.0, "1:52"),
    (3725.0, "1:02:05"),
])
def test_durations(seconds, expected):
    assert format_seconds(seconds) == expected


def test_counts_are_singular_for_one():
    assert (count(1, "steps"), count(0, "steps"), count(5, "steps"), count(1234, "tokens")) == \
        ("1 step", "0 steps", "5 steps", "1,234 tokens")


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
    assert events[-1] == {"v": 1, "type": "progress", "stage": "grpo", "done": 4, "total": 4, "unit": "steps",
                          "elapsed_s": 2.0, "eta_s": 0.0, "stage_index": None, "stage_count": None, "phase": None,
                          "label": None}
    assert events[0]["eta_s"] == 1.5  # 0.5 s for 1 of 4: 1.5 s to go


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
    is shown takes the bar's line and the bar is drawn again below it; the last event (done = total) ends
    the bar's line; metrics that are not a training step's are not drawn."""
    stream = FakeTTY()
    sink = TerminalSink(stream)
    for event in EVENTS:
        sink(event)
    assert stream.getvalue() == (f"{ERASE}{BARS[1]}{ERASE}hello\n{BARS[1]}{ERASE}{BARS[2]}{ERASE}{BARS[4]}\n"
                                 "wrote /tmp/m.gguf\nwarning: careful\n")


def test_terminal_sink_off_a_tty_prints_only_finished_stages():
    """Into a file or a pipe there is no redrawing: no control codes, one line per finished stage."""
    stream = io.StringIO()
    sink = TerminalSink(stream)
    for event in EVENTS:
        sink(event)
    assert stream.getvalue() == f"hello\n{BARS[4]}\nwrote /tmp/m.gguf\nwarning: careful\n"


def grpo_step(step: int, **changes) -> dict:
    """A GRPO step's metrics event with the keys engine.train.grpo records (rounded values, for readable sums)."""
    metrics = {"reward": 0.25, "reward_std": 0.4, "frac_reward_zero_std": 0.5, "unscored": 0.0,
               "rewards/accuracy/mean": 0.25, "rewards/format/mean": 0.5, "accuracy": 0.25,
               "completions/mean_length": 84.4, "completions/clipped_ratio": 0.125, "kl": 0.0012, "loss": 0.01,
               "grad_norm": 0.5, "learning_rate": 1e-5, "generation_s": 12.0, "training_s": 4.25,
               "tokens_per_s": 90.0}
    return make_event("metrics", step=step, **{**metrics, **changes})


def test_terminal_sink_writes_a_line_per_grpo_step_and_a_summary():
    """A GRPO run's events (as Trainer.fit and the CLI send them) off a terminal: one line per logged step with
    reward (and per reward), accuracy, zero-std share, length and clipped share, KL and the step time split
    into generation and training; a held-out line where the step evaluated; at `done` the summary table
    (first / last / mean), the best held-out accuracy when the last was not the best, and the run directory."""
    events = [
        make_event("start", kind="grpo", pid=7, stages=["load", "train"], run_id=7, run_dir="/runs/grpo-7"),
        make_event("progress", stage="grpo", done=0, total=3, unit="steps", elapsed_s=0.0, step=0, max_steps=3),
        grpo_step(1, **{"eval/accuracy": 0.315, "eval/format": 0.98, "eval/seconds": 4.2}),
        make_event("progress", stage="grpo", done=1, total=3, unit="steps", elapsed_s=20.5, step=1, max_steps=3),
        grpo_step(2, reward=0.75, accuracy=None, kl=0.0034, **{"rewards/format/mean": 1.0}),
        make_event("progress", stage="grpo", done=2, total=3, unit="steps", elapsed_s=36.7, step=2, max_steps=3),
        grpo_step(3, reward=0.5, unscored=0.25, **{"eval/accuracy": 0.2, "eval/format": 0.9, "eval/seconds": 3.8}),
        make_event("progress", stage="grpo", done=3, total=3, unit="steps", elapsed_s=57.0, step=3, max_steps=3),
        make_event("artifact", kind="adapter", path="/runs/grpo-7/final/adapter", step=3),
        make_event("done", status="complete", result=dict(run_dir="/runs/grpo-7", step=3, adapter="/runs/grpo-7/final/adapter")),
    ]
    stream = io.StringIO()
    sink = TerminalSink(stream)
    for event in events:
        sink(event)
    assert stream.getvalue().splitlines() == [
        "run directory: /runs/grpo-7",
        "step 1/3 · reward 0.250 (format 0.500) · accuracy 25% · zero-std groups 50% · length 84 tokens "
        "(12% clipped) · KL 0.0012 · 16 s (generation 12 s, training 4.2 s)",
        "held-out at step 1: accuracy 31.5% · format 98.0% · 4.2 s",
        "step 2/3 · reward 0.750 (format 1.000) · accuracy – · zero-std groups 50% · length 84 tokens "
        "(12% clipped) · KL 0.0034 · 16 s (generation 12 s, training 4.2 s)",
        "step 3/3 · reward 0.500 (format 0.500) · accuracy 25% · zero-std groups 50% · unscored 25% · length 84 "
        "tokens (12% clipped) · KL 0.0012 · 16 s (generation 12 s, training 4.2 s)",
        "held-out at step 3: accuracy 20.0% · format 90.0% · 3.8 s",
        format_bar(3, 3, 57.0, "steps", "grpo"),
        "wrote /runs/grpo-7/final/adapter",
        "GRPO complete at step 3: 3 steps in 57 s (19 s/step)",
        "                         first     last     mean",
        "  reward                 0.250    0.500    0.500",
        "    format               0.500    0.500    0.667",
        "  accuracy                 25%      25%      25%",
        "  zero-std groups          50%      50%      50%",
        "  unscored                  0%      25%       8%",
        "  completion length         84       84       84",
        "  clipped                  12%      12%      12%",
        "  KL                    0.0012   0.0012   0.0019",
        "  generation              12 s     12 s     12 s",
        "  training               4.2 s    4.2 s    4.2 s",
        "  held-out accuracy      31.5%    20.0%    25.8%",
        "  held-out format        98.0%    90.0%    94.0%",
        "best held-out accuracy 31.5% at step 1",
        "run directory: /runs/grpo-7",
    ]


def test_terminal_sink_writes_sft_and_kd_steps():
    """SFT's step line: loss, token accuracy, grad norm, learning rate, tokens/s and step time; held-out loss
    beside accuracy; logit distillation's steps name the student's own samples (on-policy); a cancelled run
    says where it stopped and how to continue."""
    sft = {"loss": 1.23456, "token_accuracy": 0.4567, "grad_norm": 0.52, "learning_rate": 2e-5, "training_s": 0.42,
           "tokens": 512.0, "tokens_per_s": 1219.0}
    kd = {"loss": 0.8, "kd_loss": 0.8, "on_policy": 1.0, "grad_norm": 1.5, "learning_rate": 2e-5, "training_s": 2.5,
          "tokens": 100.0, "tokens_per_s": 40.0}
    stream = io.StringIO()
    sink = TerminalSink(stream)
    sink(make_event("progress", stage="sft", done=0, total=10, unit="steps", elapsed_s=0.0, step=0, max_steps=10))
    sink(make_event("metrics", step=1, **sft, **{"eval/loss": 0.9, "eval/accuracy": 0.125, "eval/format": 1.0,
                                                 "eval/seconds": 1.5}))
    sink(make_event("progress", stage="sft", done=1, total=10, unit="steps", elapsed_s=2.0, step=1, max_steps=10))
    sink(make_event("done", status="cancelled", result=dict(run_dir="/runs/sft-3", step=1)))
    assert stream.getvalue().splitlines() == [
        "step  1/10 · loss 1.235 · token accuracy 45.7% · grad norm 0.52 · lr 2.0e-05 · 1,219 tokens/s · 0.42 s",
        "held-out at step 1: loss 0.900 · accuracy 12.5% · format 100.0% · 1.5 s",
        "SFT cancelled at step 1 of 10 after 1 step in 2.0 s (2 s/step)",
        "                         first     last     mean",
        "  loss                   1.235    1.235    1.235",
        "  token accuracy         45.7%    45.7%    45.7%",
        "  tokens/s               1,219    1,219    1,219",
        "  step time             0.42 s   0.42 s   0.42 s",
        "  held-out loss          0.900    0.900    0.900",
        "  held-out accuracy      12.5%    12.5%    12.5%",
        "  held-out format       100.0%   100.0%   100.0%",
        "run directory: /runs/sft-3",
        "continue it with --resume /runs/sft-3",
    ]
    stream = io.StringIO()
    sink = TerminalSink(stream)
    sink(make_event("metrics", step=7, **kd))
    assert stream.getvalue() == ("step 7 · loss 0.800 · on the student's samples · grad norm 1.5 · lr 2.0e-05 · "
                                 "40 tokens/s · 2.5 s\n")


def test_terminal_sink_leaves_other_metrics_and_done_alone():
    """A trace generation's per-prompt metrics and an export's `done` are not a training run's: no lines."""
    stream = io.StringIO()
    sink = TerminalSink(stream)
    sink(make_event("metrics", step=1, samples=4, accepted=2, kept=2, acceptance_rate=0.5, samples_per_s=0.8))
    sink(make_event("done", status="complete", result=dict(gguf="/tmp/m.gguf")))
    assert stream.getvalue() == ""


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
    """`aha export` with stderr on a pseudo-terminal: (exit code, stdout, what the terminal received)."""
    return run_on_a_terminal("export", str(source), "-o", str(out), *flags, silence_s=120)


@platforms.pseudo_terminal
def test_export_draws_a_bar_on_a_terminal(checkpoint, tmp_path):
    """`aha export` in a child process with stderr on a pseudo-terminal: the bar is drawn in place there,
    every drawing with its ETA, the last one full at 100%; the output path is named once, by its "wrote" line
    (nothing on stdout)."""
    code, stdout, terminal = export_on_a_terminal(checkpoint("qwen2"), tmp_path / "bar.gguf")
    assert code == 0, terminal
    assert stdout == ""
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
    assert events[-1]["type"] == "done" and events[-1]["result"]["gguf"] == str(tmp_path / "events.gguf")
    progress = [event for event in events if event["type"] == "progress"]
    assert progress and {"stage", "done", "total", "unit", "elapsed_s"} <= set(progress[-1])
    assert progress[-1]["done"] == progress[-1]["total"]
    assert terminal.getvalue() == ""


def test_heldout_line_names_pass_at_1_and_cons_at_k_when_the_step_sampled_k():
    from engine.run_report import heldout_line

    sampled = {"step": 4, "eval/accuracy": 0.3125, "eval/pass@1": 0.3125, "eval/cons@k": 0.4, "eval/pass@k": 0.6,
               "eval/format": 1.0, "eval/seconds": 2.5}
    assert heldout_line(sampled) == "held-out at step 4: pass@1 31.2% · cons@k 40.0% · format 100.0% · 2.5 s"
    greedy = {"step": 4, "eval/accuracy": 0.3125, "eval/format": 1.0}
    assert heldout_line(greedy) == "held-out at step 4: accuracy 31.2% · format 100.0%"
