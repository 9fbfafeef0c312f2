"""The Runs pane's dashboard and rollout browser on a real tiny `aha grpo` run (a child process, once per module):
the plots have a point per logged step and only the metrics the run has, the browser shows a step's G
completions with their rewards and advantage, sorts them, follows a prompt and searches; a job's events do not
count twice beside the file; a file that grows (a half-written line included) or is rewritten by a resume is
followed; a 2,000-step run opens in under a second; a trace-generation run shows accepted and rejected replies
with the verifier's reason from its files alone, and with its job's events; the plots follow the light and dark themes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import theme
from app.qt import QtWidgets
from app.runs.dashboard import PLOTS, RunDashboard
from app.runs.rollouts import RolloutBrowser
from engine import cli
from engine.distill.generate import rejected_path
from engine.store import Store
from engine.train.follow import read_jsonl
from tests.support.char_model import make_char_model

SEVENS = """
def sevens(prompts, completions, **columns):
    return [completion.count("7") / 4 for completion in completions]
"""
ODD = """
def odd(prompts, completions, answer, **columns):
    return [float(int(value) % 2) for value in answer]
"""
STEPS, PROMPTS, G = 3, 2, 3
TINY = ["--dataset", "addition", "--prompts-per-step", str(PROMPTS), "--num-generations", str(G),
        "--max-completion-length", "8", "--lora-r", "4", "--lora-alpha", "8", "--seed", "3"]


def grpo_args(folder: Path, steps: int, run_dir: Path) -> list[str]:
    return ["grpo", "--model", str(folder / "student"), *TINY, "--rewards", f"{folder / 'sevens.py'}:sevens",
            "format", "--max-steps", str(steps), "--output-dir", str(run_dir), "--events", "jsonl"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """A real tiny GRPO run, made by an `aha grpo` child process: {"run": the run's row, "events": its events}."""
    folder = tmp_path_factory.mktemp("dashboard")
    make_char_model(folder / "student")
    (folder / "sevens.py").write_text(SEVENS)
    run_dir = folder / "run"
    result = subprocess.run([sys.executable, "-m", "engine.cli", *grpo_args(folder, STEPS, run_dir)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "AHA_HOME": str(folder / "home")})
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    with Store(folder / "home" / "aha.db") as store:
        run = store.get_run(events[0]["run_id"])
    return {"run": run, "events": events, "folder": folder}


def copy_run(tiny_run, tmp_path) -> dict:
    directory = tmp_path / "copy"
    shutil.copytree(tiny_run["run"]["dir"], directory)
    return {**tiny_run["run"], "dir": str(directory)}


def shown(qtbot, widget):
    qtbot.addWidget(widget)
    widget.resize(1100, 800)
    widget.show()
    return widget


def test_the_dashboard_plots_every_logged_step_of_a_real_run(qtbot, tiny_run):
    dashboard = shown(qtbot, RunDashboard())
    dashboard.open_run(tiny_run["run"])
    plots = dashboard.plots
    assert {"Reward", "Groups with equal rewards (frac_reward_zero_std)", "Grad norm", "Learning rate", "Entropy",
            "Time per step (s)", "Clip ratios"} <= set(plots)
    assert "Loss" not in plots and "Trace acceptance rate" not in plots  # GRPO's loss is no progress; no traces
    assert plots["Reward"].left == ["reward", "rewards/sevens/mean", "rewards/format/mean"]
    length = plots["Completion length (tokens) · clipped ratio (right)"]
    assert length.right == ["completions/clipped_ratio"]
    for plot in plots.values():
        assert all(plot.points(metric) == STEPS for metric in plot.curves), plot.spec.title
    assert dashboard.eta_text() == f"step {STEPS} of {STEPS}"
    assert dashboard.title.text() == f"grpo run {tiny_run['run']['id']} · complete"


def test_the_rollout_browser_shows_a_steps_completions_sorts_follows_and_searches(qtbot, tiny_run):
    browser = shown(qtbot, RolloutBrowser())
    browser.open_run(tiny_run["run"])
    samples = read_jsonl(Path(tiny_run["run"]["dir"]) / "samples.jsonl")
    assert browser.steps() == list(range(1, STEPS + 1))
    assert browser.step_box.currentData() == STEPS and browser.list.count() == PROMPTS  # the latest step
    browser.show_step(1)
    first = samples[0]
    assert browser.selected_record()["prompt_id"] == first["prompt_id"]
    assert len(browser.cards) == G
    for card, completion in zip(browser.cards, first["completions"], strict=True):
        header = card.header.text()
        assert f"reward {completion['reward']:.3g}" in header and f"advantage {completion['advantage']:+.3g}" in header
        assert f"{completion['length']} tokens" in header and ("clipped" in header) == completion["truncated"]
        assert card.rewards.text().startswith("sevens ") and " format " in card.rewards.text()
        assert card.think.header.text().startswith("Thought") or not completion["thinking"]
        assert not card.think.expanded  # folded, as Chat folds a finished thought
        assert card.answer.toPlainText() == (completion["answer_text"].strip() or "(no answer)")
    browser.sort_box.setCurrentText("reward, best first")
    rewards = [card.completion["reward"] for card in browser.cards]
    assert rewards == sorted(rewards, reverse=True)

    browser.follow_selected_prompt()
    drawn = [record["step"] for record in samples if record["prompt_id"] == first["prompt_id"]]
    assert browser.mode == "prompt" and browser.list.count() == len(drawn)
    assert [browser._records[row]["step"] for row in range(browser.list.count())] == drawn

    text = next(c["text"] for record in samples for c in record["completions"] if len(c["text"].strip()) >= 3)
    browser.search.setText(text.strip())
    qtbot.waitUntil(lambda: browser.mode == "search")
    matches = [record for record in samples if text.strip().casefold() in
               "\n".join([record["prompt"], record["answer"], *(c["text"] for c in record["completions"])]).casefold()]
    assert browser.list.count() == len(matches) >= 1
    browser.back_to_step()
    assert browser.mode == "step" and browser.list.count() == PROMPTS


def test_a_growing_run_is_followed_and_events_do_not_count_twice(qtbot, tiny_run, tmp_path):
    """A run's files as they are written: the dashboard and browser poll them (a half-written line waits), a
    job's event for a step the file has not yet is shown at once and its file copy replaces it, and a resume's
    rewrite starts the curves over."""
    run = copy_run(tiny_run, tmp_path)
    metrics_path, samples_path = Path(run["dir"]) / "metrics.jsonl", Path(run["dir"]) / "samples.jsonl"
    metric_lines = metrics_path.read_text().splitlines(keepends=True)
    sample_lines = samples_path.read_text().splitlines(keepends=True)
    metrics_path.write_text(metric_lines[0])
    samples_path.write_text("".join(sample_lines[:PROMPTS]))
    dashboard, browser = shown(qtbot, RunDashboard()), shown(qtbot, RolloutBrowser())
    dashboard.open_run({**run, "status": "running"})
    browser.open_run({**run, "status": "running"})
    reward = dashboard.plots["Reward"]
    assert reward.points("reward") == 1 and browser.steps() == [1]

    metrics_events = [event for event in tiny_run["events"] if event["type"] == "metrics"]
    dashboard.add_event(metrics_events[1])  # the job says step 2 before the file has it
    qtbot.waitUntil(lambda: reward.points("reward") == 2)
    with open(metrics_path, "a") as stream:
        stream.write(metric_lines[1] + metric_lines[2][:20])  # step 2 again, and half of step 3
    with open(samples_path, "a") as stream:
        stream.write("".join(sample_lines[PROMPTS:2 * PROMPTS]))
    qtbot.waitUntil(lambda: browser.steps() == [1, 2] and browser.step_box.currentData() == 2)
    time.sleep(0.6)
    qtbot.wait(600)  # a poll or two: step 2 is still one point, step 3 not there yet
    assert reward.points("reward") == 2
    with open(metrics_path, "a") as stream:
        stream.write(metric_lines[2][20:])
    qtbot.waitUntil(lambda: reward.points("reward") == 3)
    assert browser.list.count() == PROMPTS and len(browser.cards) == G

    replacement = Path(run["dir"]) / "metrics.tmp"  # what a resume from step 1 leaves
    replacement.write_text(metric_lines[0])
    os.replace(replacement, metrics_path)
    qtbot.waitUntil(lambda: reward.points("reward") == 1)


def test_learning_signal_warnings_show_as_a_banner(qtbot, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    first = json.loads((Path(run["dir"]) / "metrics.jsonl").read_text().splitlines()[0])
    lines = [{**first, "step": step, "completions/clipped_ratio": 0.97} for step in range(1, 5)]
    (Path(run["dir"]) / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dashboard = shown(qtbot, RunDashboard())
    dashboard.open_run({**run, "config": {**run["config"], "max_completion_length": 8}})
    qtbot.waitUntil(dashboard.banner.isVisible)  # computed right after the curves are drawn
    texts = [dashboard.banner_layout.itemAt(index).widget().text() for index in range(dashboard.banner_layout.count())]
    assert any(text.startswith("⚠ step 3: 97% of completions hit max_completion_length (now 8)") for text in texts), texts
    assert [warning.key for warning in dashboard.warnings].count("clipped") == 1


def test_a_run_of_2000_steps_opens_in_under_a_second(qtbot, tiny_run, tmp_path):
    first = json.loads((Path(tiny_run["run"]["dir"]) / "metrics.jsonl").read_text().splitlines()[0])
    directory = tmp_path / "long"
    directory.mkdir()
    with open(directory / "metrics.jsonl", "w") as stream:
        for step in range(1, 2001):
            varied = {key: value * (1 + (step % 17) / 17) if isinstance(value, float) else value
                      for key, value in first.items()}
            stream.write(json.dumps({**varied, "step": step, "time": first["time"] + step}) + "\n")
    dashboard = shown(qtbot, RunDashboard())
    qtbot.waitUntil(lambda: len(dashboard._items) == len(PLOTS))  # the plots it makes while the window idles
    # The CPU time this process spends: on a machine shared with other jobs the wall clock also counts their turns.
    started, wall = time.process_time(), time.perf_counter()
    dashboard.open_run({**tiny_run["run"], "dir": str(directory), "config": {"max_steps": 3000}})
    QtWidgets.QApplication.processEvents()  # painted
    seconds, wall = time.process_time() - started, time.perf_counter() - wall
    print(f"2,000 steps opened in {seconds:.3f} s of CPU ({wall:.3f} s of wall-clock time)")
    assert seconds < 1.0
    assert dashboard.plots["Reward"].points("reward") == 2000
    assert dashboard.eta_text().startswith("step 2000 of 3000 · ")


def test_a_trace_generation_run_shows_accepted_and_rejected_replies(qtbot, adder, tmp_path, capsys):
    (tmp_path / "odd.py").write_text(ODD)
    out = tmp_path / "traces.jsonl"
    assert cli.main(["distill", "generate", "--teacher", adder, "--model", "adder", "--dataset", "addition",
                     "--limit", "6", "-k", "2", "--reward", "accuracy", "--reward", f"{tmp_path / 'odd.py'}:odd",
                     "-o", str(out), "--events", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [run] = Store().list_runs(kind="generate")
    browser = shown(qtbot, RolloutBrowser())
    browser.open_run(run)
    assert browser.steps() == list(range(1, 7))
    samples = [event for event in events if event["type"] == "sample"]
    odd = next(sample["step"] for sample in samples if int(sample["answer"]) % 2)
    even = next(sample["step"] for sample in samples if not int(sample["answer"]) % 2)
    verdicts = lambda: [card.header.text().split(" · ")[-1] for card in browser.cards]  # noqa: E731
    # From the files alone (the run was started outside this window): the rejected replies with their reasons.
    browser.show_step(even)
    assert verdicts() == ["rejected: odd"] * 2 and "rejected (" not in browser.prompt_view.text()
    even_sample = next(sample for sample in samples if sample["step"] == even)
    assert [card.answer.toPlainText() for card in browser.cards] == [rf"\boxed{{{even_sample['answer']}}}"] * 2
    assert even_sample["prompt"] in browser.prompt_view.text()
    browser.show_step(odd)
    assert verdicts() == ["accepted", "passed, not kept (a duplicate or the keep rule)"]
    browser.search.setText(even_sample["prompt"])
    qtbot.waitUntil(lambda: browser.mode == "search")
    assert even in {record["step"] for record in browser._records}  # a wholly rejected prompt is found too
    browser.back_to_step()
    for event in samples:  # the job's events as well: the same replies, not twice
        browser.add_event(event)
    for step in (even, odd):
        browser.show_step(step)
        assert len(browser.cards) == 2 and len(browser.records(step)) == 1
    browser.show_step(even)
    assert verdicts() == ["rejected: odd"] * 2
    [record] = browser.records(odd)  # the files' copy stands: it says why the passing reply was dropped
    assert [completion.get("dropped") for completion in record["completions"]] == [None, "duplicate"]

    # A traces file written before the rejected replies were kept: the kept ones and the counts.
    rejected_path(out).unlink()
    browser.open_run(run)
    browser.show_step(odd)
    assert verdicts() == ["accepted"]  # one kept (a duplicate)
    browser.show_step(even)
    assert browser.cards == [] and "2 rejected (odd 2)" in browser.prompt_view.text()
    for event in samples:  # the job's events carry the rejected replies
        browser.add_event(event)
    browser.show_step(even)
    assert verdicts() == ["rejected: odd"] * 2
    browser.show_step(odd)
    assert verdicts() == ["accepted", "passed, not kept (a duplicate or the keep rule)"]

    dashboard = shown(qtbot, RunDashboard())
    dashboard.open_run(run)
    assert set(dashboard.plots) == {"Trace acceptance rate", "Rejected replies by reason"}
    assert dashboard.plots["Trace acceptance rate"].points("acceptance_rate") == 6
    assert dashboard.eta_text() == "6 prompts done"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_plots_follow_the_theme(qtbot, tiny_run, restyled, monkeypatch, scheme):
    monkeypatch.setenv("AHA_THEME", scheme)
    dashboard = shown(qtbot, RunDashboard())
    dashboard.open_run(tiny_run["run"])
    theme.apply(restyled)
    qtbot.waitUntil(lambda: dashboard.graphics.backgroundBrush().color().name() == theme.colors().surface)
    item = dashboard.plots["Reward"].item
    assert item.getAxis("left").textPen().color().name() == theme.colors().muted


def test_an_sft_run_shows_its_loss_and_clear_empties_both_views(qtbot, tiny_run, tmp_path):
    directory = tmp_path / "sft"
    directory.mkdir()
    lines = [{"step": step, "time": 100.0 + step, "loss": 2.0 / step, "token_accuracy": 0.1 * step, "grad_norm": 1.0,
              "learning_rate": 1e-3, "training_s": 0.5, "tokens": 900, "tokens_per_s": 1800.0} for step in (1, 2)]
    lines[1]["eval/accuracy"] = 0.25
    (directory / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dashboard = shown(qtbot, RunDashboard())
    dashboard.open_run({"id": 9, "kind": "distill-sft", "status": "complete", "dir": str(directory),
                        "config": {"max_steps": 4}})
    assert set(dashboard.plots) == {"Loss", "Accuracy", "Grad norm", "Learning rate", "Time per step (s)",
                                    "Tokens per second"}
    assert dashboard.plots["Accuracy"].left == ["token_accuracy", "eval/accuracy"]
    assert dashboard.plots["Accuracy"].points("eval/accuracy") == 1
    assert dashboard.eta_text() == "step 2 of 4 · 1.0 s left: training 1.0 s"
    dashboard.clear()
    assert dashboard.plots == {} and dashboard.eta_text() == "" and not dashboard.banner.isVisible()
    browser = shown(qtbot, RolloutBrowser())
    browser.open_run(tiny_run["run"])
    assert browser.cards
    browser.clear()
    assert browser.cards == [] and browser.steps() == [] and browser.list.count() == 0


def test_the_held_out_curve_is_pass_at_1_over_k_when_the_run_samples_k(qtbot, tmp_path):
    """num_generations_eval = 4: eval/pass@1 is the held-out curve, labelled with its k, beside cons@4 and pass@4;
    eval/accuracy (the same number) is not drawn twice. A greedy run keeps its eval/accuracy curve."""
    directory = tmp_path / "sampled"
    directory.mkdir()
    lines = [{"step": step, "loss": 1.0 / step, "token_accuracy": 0.2 * step, "training_s": 0.5} for step in (1, 2, 3)]
    for line, accuracy in zip(lines[1:], (0.25, 0.5), strict=True):
        line.update({"eval/accuracy": accuracy, "eval/pass@1": accuracy, "eval/cons@k": accuracy + 0.1,
                     "eval/pass@k": accuracy + 0.25, "eval/format": 1.0, "eval/seconds": 2.0})
    (directory / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dashboard = shown(qtbot, RunDashboard())
    dashboard.open_run({"id": 4, "kind": "distill-sft", "status": "complete", "dir": str(directory),
                        "config": {"max_steps": 3, "num_generations_eval": 4}})
    plot = dashboard.plots["Accuracy"]
    assert plot.left == ["token_accuracy", "eval/pass@1", "eval/cons@k", "eval/pass@k", "eval/format"]
    assert plot.points("eval/pass@1") == 2 and list(plot.curves["eval/pass@1"].yData[1:]) == [0.25, 0.5]
    labels = {name: curve.opts["name"] for name, curve in plot.curves.items()}
    assert labels["eval/pass@1"] == "held-out pass@1 (k=4)"
    assert labels["eval/cons@k"] == "held-out cons@4" and labels["eval/pass@k"] == "held-out pass@4"
    legend = [label.text for _, label in plot.item.legend.items]
    assert "held-out pass@1 (k=4)" in legend
    for line in lines:  # the same run, evaluated greedily
        for name in ("eval/pass@1", "eval/cons@k", "eval/pass@k"):
            line.pop(name, None)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dashboard.open_run({"id": 5, "kind": "distill-sft", "status": "complete", "dir": str(directory),
                        "config": {"max_steps": 3}})
    assert dashboard.plots["Accuracy"].left == ["token_accuracy", "eval/accuracy", "eval/format"]
