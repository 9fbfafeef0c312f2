"""The whole training workflow in the real window, across its panes, on real child processes and the tiny
Qwen2 checkpoint: a GRPO run started from the Train form (the CPU smoke-test preset, Ctrl+Return) opens in
the Runs pane and streams into its dashboard and rollout browser; Export from the Runs pane opens the run's
adapter in the Export pane, whose export merges it, checks the GGUF against the HF model, and "Chat with it"
adds the GGUF to the library and opens a new conversation with it. Each pane's own tests (test_app_train,
test_app_runs, test_app_dashboard, test_app_export) go into the details; this one checks the hand-offs."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import workers
from app.main import MainWindow
from app.qt import Qt
from app.workers import JobStatus
from engine.models import Library
from engine.store import Store

SMOKE = "CPU smoke test"


@pytest.fixture
def window(qtbot):
    store = Store()
    main = MainWindow(store)
    qtbot.addWidget(main)
    main.resize(1280, 800)
    main.show()
    yield main
    for job in workers.running_jobs():           # a failed test's child: never left behind
        job.terminate(kill=True)
        job.process.waitForFinished(10_000)
    main.train.shutdown()
    main.export.shutdown()
    store.close()


def test_train_then_runs_then_export_then_chat(qtbot, window, checkpoint):
    base = checkpoint("qwen2")
    qtbot.keyClick(window, Qt.Key.Key_4, Qt.KeyboardModifier.ControlModifier)
    assert window.stack.currentWidget() is window.train
    train = window.train
    train.model.set_model(str(base))
    train.apply_preset(SMOKE)
    train.set_values({**train.values(), "device": "cpu"})
    train.start_button.setFocus()
    with qtbot.waitSignal(train.run_started, timeout=10_000) as started:
        qtbot.keyClick(train.start_button, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    job = started.args[0]
    assert window.stack.currentWidget() is window.runs       # a started run opens in Runs
    with qtbot.waitSignal(job.finished, timeout=180_000) as ended:
        pass
    assert ended.args[0].status == JobStatus.COMPLETE, str(ended.args[0])
    runs = window.runs
    qtbot.waitUntil(lambda: runs.selected_row() is not None and runs.selected_row().id == job.run_id
                    and runs.selected_row().status == "complete", timeout=10_000)
    steps = train.values()["max_steps"]
    dashboard, rollouts = runs.dashboard, runs.rollouts
    qtbot.waitUntil(lambda: "Reward" in dashboard.plots and dashboard.plots["Reward"].points("reward") == steps,
                    timeout=10_000)
    qtbot.waitUntil(lambda: rollouts.steps() == list(range(1, steps + 1)), timeout=10_000)
    assert all(len(record["completions"]) == train.values()["num_generations"]
               for record in rollouts.records(steps))

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
