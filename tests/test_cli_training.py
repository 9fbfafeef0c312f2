"""What `aha grpo` and `aha distill sft|kd` show on the terminal, run for real on the char-level tiny model
(a few steps of a few tokens): the run directory first, a note with smaller settings on a CPU, one line per
logged step, held-out lines, the summary at the end, readable rates; `--events jsonl` stays JSON only; and
every flag of the training commands says in --help what it does."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli
from tests.support import platforms
from tests.support.char_model import make_char_model
from tests.support.on_a_terminal import run_on_a_terminal

REPO = Path(__file__).resolve().parents[1]
ERASE = "\r\x1b[2K"
REWARD_FILE = """
def sevens(prompts, completions, **columns):
    return [completion.count("7") / 4 for completion in completions]
"""
# A tiny GRPO run: 2 prompts × 2 completions of ≤ 8 tokens, LoRA r=4.
TINY_GRPO = ["--dataset", "addition", "--prompts-per-step", "2", "--num-generations", "2",
             "--max-completion-length", "8", "--lora-r", "4", "--lora-alpha", "8", "--seed", "3"]
TINY_SFT = ["--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "1e-3", "--device", "cpu"]
SMALL_BATCH = ["--per-device-train-batch-size", "2", "--max-length", "64"]
# Numbers of 5 significant digits or more after the point: the "0.0612295 steps/s" the issue showed.
LONG_FLOAT = re.compile(r"\d\.\d{5,}")
ONE_STEPS = re.compile(r"(?<![\d.,/])1 steps")  # a count of one in the plural ("3.1 steps/s" is a rate)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli-training")
    reward = folder / "reward.py"
    reward.write_text(REWARD_FILE)
    traces = folder / "traces.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "thinking": f"{a}+{b}={a + b}", "answer": str(a + b)}
            for a, b in ((12, 34), (5, 7), (40, 2), (9, 9))]
    traces.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"student": make_char_model(folder / "student"), "teacher": make_char_model(folder / "teacher", seed=1),
            "reward": reward, "traces": traces}


def screen(text: str) -> list[str]:
    """The lines a terminal shows after `text`: an erase-line (\\r ESC[2K) clears the line being written."""
    lines = [""]
    for token in re.split(r"(\r\x1b\[2K|\r?\n)", text):
        if token == ERASE:
            lines[-1] = ""
        elif token in ("\n", "\r\n"):
            lines.append("")
        else:
            lines[-1] += token
    return lines[:-1] if lines[-1] == "" else lines


@platforms.pseudo_terminal
def test_grpo_on_a_terminal_shows_each_step_held_out_results_and_a_summary(work, tmp_path):
    """`aha grpo --eval-steps 2` on a terminal: the run directory is the first line; then one line per logged
    step with reward (and per reward), accuracy, zero-std share, length and clipped share and the step time
    split into generation and training, each followed by the bar drawn again below it; a held-out line at
    steps 2 and 3 (the last); at the end the summary table and the run directory. No 7-digit floats, no
    "1 steps"; nothing on stdout."""
    run = tmp_path / "run"
    code, stdout, terminal = run_on_a_terminal(
        "grpo", "--model", str(work["student"]), *TINY_GRPO, "--rewards", f"{work['reward']}:sevens", "format",
        "accuracy", "--max-steps", "3", "--eval-steps", "2", "--eval-samples", "4", "--output-dir", str(run))
    assert code == 0, terminal
    assert stdout == ""
    lines = screen(terminal)
    assert lines[0] == f"run directory: {run}"
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(" · ")[0] for line in steps] == ["step 1/3", "step 2/3", "step 3/3"], lines
    for line in steps:
        assert re.fullmatch(r"step \d/3 · reward \d\.\d{3} \(sevens \d\.\d{3}, format \d\.\d{3}\) · accuracy \d+% · "
                            r"zero-std groups \d+% · length \d+ tokens \(\d+% clipped\) · "
                            r"[\d.]+ s \(generation [\d.]+ s, training [\d.]+ s\)", line), line
    assert [line.split(":")[0] for line in lines if line.startswith("held-out")] == ["held-out at step 2",
                                                                                      "held-out at step 3"]
    assert all(re.fullmatch(r"held-out at step \d: accuracy \d+\.\d% · format \d+\.\d% · [\d.]+ s", line)
               for line in lines if line.startswith("held-out"))
    # Each step line takes the bar's place and the bar comes back below it.
    assert len(re.findall(re.escape(ERASE) + r"step \d/3 [^\n]*\ngrpo \[", terminal)) == 3, terminal
    summary = lines.index(next(line for line in lines if line.startswith("GRPO complete at step 3: 3 steps in ")))
    assert re.fullmatch(r"GRPO complete at step 3: 3 steps in [\d.]+ s \([\d.]+ (s/step|steps/s)\)", lines[summary])
    assert lines[summary + 1].split() == ["first", "last", "mean"]
    labels = [line[:20].strip() for line in lines[summary + 2:-1]]
    assert labels[:3] == ["reward", "sevens", "format"]
    assert {"accuracy", "zero-std groups", "completion length", "clipped", "generation", "training",
            "held-out accuracy", "held-out format"} <= set(labels), labels
    assert lines[-1] == f"run directory: {run}"
    assert not LONG_FLOAT.search(terminal) and not ONE_STEPS.search(terminal), terminal


def test_grpo_events_jsonl_stays_json_only(work, tmp_path, capsys):
    """--events jsonl: every stdout line is a JSON event, nothing on stderr; the run directory comes first
    (the start event with run_dir), the bar's first progress event (done 0) carries max_steps, and each step's
    metrics event has the numbers the terminal line shows."""
    run = tmp_path / "run"
    code = cli.main(["grpo", "--model", str(work["student"]), *TINY_GRPO, "--rewards", f"{work['reward']}:sevens",
                     "--max-steps", "1", "--output-dir", str(run), "--events", "jsonl"])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert (events[0]["type"], events[0]["kind"], events[0]["run_dir"]) == ("start", "grpo", str(run))
    progress = [event for event in events if event["type"] == "progress" and event["stage"] == "train"]
    assert (progress[0]["done"], progress[0]["max_steps"], progress[-1]["done"]) == (0, 1, 1)
    [metrics] = [event for event in events if event["type"] == "metrics"]
    assert {"reward", "rewards/sevens/mean", "frac_reward_zero_std", "completions/mean_length",
            "completions/clipped_ratio", "generation_s", "training_s"} <= set(metrics)
    assert events[-1]["type"] == "done" and events[-1]["result"]["run_dir"] == str(run)


def test_distill_sft_shows_the_cpu_note_steps_held_out_and_summary(work, tmp_path, capsys):
    """`aha distill sft` (off a terminal, as into a log file): the run directory, then on the CPU the note with
    the exact flags of a smaller setting (at the default batch of 8 and max_length 1024), one line per step
    with loss, token accuracy, tokens/s and time, the held-out line, and the summary."""
    run = tmp_path / "run"
    code = cli.main(["distill", "sft", "--student", str(work["student"]), "--traces", str(work["traces"]), *TINY_SFT,
                     "--dataset", "addition", "--max-steps", "2", "--eval-steps", "2", "--eval-samples", "4",
                     "--max-completion-length", "8", "--output-dir", str(run)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"run directory: {run}"
    assert lines[1] == ("warning: training on the CPU (device = cpu), where a step at these settings can take minutes: "
                        "for a first run try --per-device-train-batch-size 4 --max-length 512 (now 8 and 1024)")
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 2
    for line in steps:
        assert re.fullmatch(r"step \d/2 · loss \d+\.\d{3} · token accuracy \d+\.\d% · grad norm [\d.e+-]+ · "
                            r"lr \d\.\de-\d\d · [\d,.]+ tokens/s · [\d.]+ s", line), line
    [heldout] = [line for line in lines if line.startswith("held-out")]
    assert re.fullmatch(r"held-out at step 2: loss \d+\.\d{3} · accuracy \d+\.\d% · format \d+\.\d% · [\d.]+ s",
                        heldout)
    assert any(re.fullmatch(r"SFT complete at step 2: 2 steps in .*", line) for line in lines), lines
    assert {"loss", "token accuracy", "tokens/s", "step time", "held-out loss"} <= {line[:20].strip() for line in lines}
    assert lines[-1] == f"run directory: {run}"
    assert not LONG_FLOAT.search(captured.err)


def test_distill_kd_on_policy_steps(work, tmp_path, capsys):
    """`aha distill kd --lmbda 1`: every step trains on the student's own samples and its line says so; the
    summary names the run logit distillation. Settings already small for a CPU: the note says only that."""
    run = tmp_path / "run"
    code = cli.main(["distill", "kd", "--student", str(work["student"]), "--teacher", str(work["teacher"]),
                     "--traces", str(work["traces"]), *TINY_SFT, *SMALL_BATCH, "--lmbda", "1",
                     "--max-completion-length", "8", "--max-steps", "2", "--output-dir", str(run)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.err.splitlines()
    assert lines[:2] == [f"run directory: {run}", "training on the CPU (device = cpu)"]
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(" · ")[:3:2] for line in steps] == [["step 1/2", "on the student's samples"],
                                                           ["step 2/2", "on the student's samples"]], steps
    assert any(line.startswith("Distillation complete at step 2: 2 steps in ") for line in lines), lines


@platforms.posix_signals
def test_grpo_at_its_defaults_on_a_cpu_suggests_smaller_flags_first(work, tmp_path):
    """At the defaults (16 prompts × 8 completions × 256 tokens) on a CPU the second line, before the model
    loads, names the exact flags of a setting a CPU can run. The child is stopped right after it."""
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", "grpo", "--model", str(work["student"]),
                              "--dataset", "addition", "--device", "cpu", "--output-dir", str(run)],
                             cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        first, second = child.stderr.readline(), child.stderr.readline()
    finally:
        child.kill()
        child.wait(timeout=60)
    assert first == f"run directory: {run}\n"
    assert second == ("warning: training on the CPU (device = cpu), where a step at these settings can take minutes: "
                      "for a first run try --prompts-per-step 4 --num-generations 4 --max-completion-length 128 "
                      "(now 16, 8 and 256)\n")


def subcommand(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        [choices] = [action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        parser = choices[name]
    return parser


@pytest.mark.parametrize("command", [("grpo",), ("distill", "sft"), ("distill", "kd"), ("distill", "generate")],
                         ids=" ".join)
def test_every_training_flag_says_what_it_does(command):
    """Each flag's help says what it does, not only its default ("default: 16" alone was most of them)."""
    parser = subcommand(cli.build_parser(), *command)
    bare = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        described = re.sub(r"\(?default:? [^)]*\)?", "", action.help or "").strip(" .;,")
        if len(described) < 8:
            bare.append(action.option_strings[-1])
    assert not bare, f"flags without a description: {bare}"
