"""The whole training workflow in the real window, across its panes, on real child processes and the tiny
Qwen2 checkpoint: a GRPO run started from the Train form (the CPU smoke-test preset, Ctrl+Return) opens in
the Runs pane and streams into its dashboard and rollout browser; Ctrl+. there stops it (cancelled, its
checkpoint kept) and Ctrl+R resumes it to complete; Export from the Runs pane opens the run's adapter in the
Export pane, whose export merges it, checks the GGUF against the HF model, and "Chat with it" adds the GGUF
to the library and opens a new conversation with it. Each pane's own tests (test_app_train,
test_app_runs, test_app_dashboard, test_app_export) go into the details; this one checks the hand-offs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app import workers
from app.qt import Qt
from app.workers import JobStatus
from engine.models import Library
from tests.support.window import open_window

SMOKE = "CPU smoke test"
STEPS = 4
# Each GRPO step of a child made this much slower, so that Stop lands while the run is running.
SLOW_STEP = ("engine.train.grpo:GRPOStep.__call__", "0.5")


def slowed_aha_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "tests.support.slowed_cli", *SLOW_STEP, *args, "--events", "jsonl"]


@pytest.fixture
def window(qtbot, monkeypatch):
    with open_window(qtbot, monkeypatch) as main:
        yield main


def test_train_then_runs_then_export_then_chat(qtbot, window, checkpoint, monkeypatch):
    monkeypatch.setattr(workers, "aha_argv", slowed_aha_argv)    # the training jobs, the resume included
    base = checkpoint("qwen2")
    qtbot.keyClick(window, Qt.Key.Key_4, Qt.KeyboardModifier.ControlModifier)
    assert window.stack.currentWidget() is window.train
    train = window.train
    train.model.set_model(str(base))
    train.apply_preset(SMOKE)
    train.set_values({**train.values(), "device": "cpu", "max_steps": STEPS, "save_steps": 1})
    train.start_button.setFocus()
    with qtbot.waitSignal(train.run_started, timeout=10_000) as started:
        qtbot.keyClick(train.start_button, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    job = started.args[0]
    assert window.stack.currentWidget() is window.runs       # a started run opens in Runs
    runs = window.runs
    dashboard, rollouts = runs.dashboard, runs.rollouts
    qtbot.waitUntil(lambda: runs.selected_row() is not None and runs.selected_row().id == job.run_id, timeout=60_000)
    qtbot.waitUntil(lambda: "Reward" in dashboard.plots and dashboard.plots["Reward"].points("reward") >= 1,
                    timeout=120_000)                          # it streams in while the run runs
    assert job.is_running() and rollouts.steps()

    runs.table.setFocus()
    qtbot.keyClick(runs.table, Qt.Key.Key_Period, Qt.KeyboardModifier.ControlModifier)   # Stop
    with qtbot.waitSignal(job.finished, timeout=120_000) as ended:
        pass
    assert ended.args[0].status == JobStatus.CANCELLED, str(ended.args[0])
    qtbot.waitUntil(lambda: runs.selected_row().status == "cancelled", timeout=10_000)
    run_dir = Path(runs.selected_row().summary.dir)
    kept = sorted((run_dir / "checkpoints").glob("step-*"))
    assert kept and int(kept[-1].name[5:]) < STEPS               # stopped before the end, its checkpoint kept

    qtbot.keyClick(runs.table, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)        # Resume
    qtbot.waitUntil(lambda: runs.job_for(job.run_id) is not None, timeout=10_000)
    resumed = runs.job_for(job.run_id)
    with qtbot.waitSignal(resumed.finished, timeout=180_000) as ended:
        pass
    assert ended.args[0].status == JobStatus.COMPLETE, str(ended.args[0])
    qtbot.waitUntil(lambda: runs.selected_row() is not None and runs.selected_row().id == job.run_id
                    and runs.selected_row().status == "complete", timeout=10_000)
    qtbot.waitUntil(lambda: dashboard.plots["Reward"].points("reward") == STEPS, timeout=10_000)
    qtbot.waitUntil(lambda: rollouts.steps() == list(range(1, STEPS + 1)), timeout=10_000)
    assert all(len(record["completions"]) == train.values()["num_generations"]
               for record in rollouts.records(STEPS))

    runs.export_selected()                                    # Export… on the run: its adapter on its base
    assert window.stack.currentWidget() is window.export
    export = window.export
    qtbot.waitUntil(lambda: export.source is not None, timeout=30_000)
    assert export.source.adapter is not None and Path(export.source.adapter).is_dir()
    assert export.base_edit.text() == str(base)
    export.type_combo.setCurrentIndex(export.type_combo.findData("f32"))
    export.check_box.setChecked(True)
    job = export.start_export()
    with qtbot.waitSignal(job.finished, timeout=180_000) as ended:
        pass
    assert ended.args[0].status == JobStatus.COMPLETE, str(ended.args[0])
    assert export.check_list.item(0).text() == "Check passed", export.check_lines()
    gguf = Path(export.output_edit.text())
    assert gguf.is_file()

    export.chat_button.click()                                # Chat with it: in the library, a new chat with it
    assert window.stack.currentIndex() == 0 and window.chat_stack.currentWidget() is window.chat
    assert str(gguf) in [str(entry.path) for entry in Library().entries()]
    assert window.chat.settings.values()["model"] == str(gguf)
