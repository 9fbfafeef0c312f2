"""The demo in the real window, from the first-run screen to a chat with the model it trained: the button runs
the real `aha demo --smoke` child (a few steps of every stage: the plumbing, not the learning), the Runs
pane follows the cold start and GRPO runs live (their metrics and rollouts routed to each stage's own run),
the Eval pane opens each evaluation when its stage ends (the last one is the before/after table of both
models), the status bar names the stage in progress, and the end is a new conversation with the exported
GGUF, which the library and the Models pane keep. Stop cancels the demo like any training job (its current
stage run ends cancelled), and closing the window while it runs asks first, saying it keeps running."""

from __future__ import annotations

import pytest

from app.demo import DemoFlow
from app.qt import Qt, QtWidgets
from app.workers import JobStatus
from engine.models import Library
from tests.support.window import open_window

SMOKE = ("--smoke",)
DEMO_MS = 240_000   # the smoke demo takes 25–75 s on 2 busy cores; the limit only ends a hang


@pytest.fixture
def window(qtbot, monkeypatch):
    monkeypatch.setattr(DemoFlow, "FLAGS", SMOKE)
    with open_window(qtbot, monkeypatch) as main:
        yield main


def test_the_demo_runs_from_the_welcome_screen_through_runs_and_eval_to_a_chat_with_its_model(qtbot, window):
    flow, runs, eval_pane = window.demo, window.runs, window.eval_pane
    assert window.chat_stack.currentWidget() is window.empty        # a fresh data directory: the first run
    panes, routed = [], []                      # the panes brought to the front; (run shown, event) to its views
    flow.pane_requested.connect(panes.append)
    runs.dashboard.add_event = lambda event: routed.append((runs._shown[0], event))
    statuses = []
    flow.status_changed.connect(statuses.append)

    qtbot.mouseClick(window.empty.demo_button, Qt.MouseButton.LeftButton)
    job = flow.job
    assert job is not None and job.argv[-3:] == ["--smoke", "--events", "jsonl"]
    assert window.stack.currentWidget() is runs                     # the demo is watched in the Runs pane
    assert window.demo_status.isVisible() and window.demo_status.stop_button.isVisible()
    assert not window.empty.demo_button.isEnabled()                 # one demo at a time
    qtbot.waitUntil(lambda: flow.stage == "grpo" and runs.selected_row() is not None   # GRPO shown as it runs
                    and runs.selected_row().id == flow.stage_runs.get("grpo"), timeout=DEMO_MS)
    assert runs.selected_row().kind == "grpo"
    assert window.demo_status.text().startswith("Demo 4/7 · GRPO")
    with qtbot.waitSignal(job.finished, timeout=DEMO_MS) as ended:
        pass
    outcome = ended.args[0]
    assert outcome.status == JobStatus.COMPLETE, f"{outcome}\n" + "\n".join(outcome.stderr_tail)
    result = outcome.result
    gguf = result["gguf"]

    # each stage was shown where it belongs, in order
    kinds = {stage: window.store.get_run(run_id)["kind"] for stage, run_id in flow.stage_runs.items()}
    assert kinds == {"cold-start": "distill-sft", "eval-cold-start": "eval", "grpo": "grpo", "eval-grpo": "eval",
                     "export": "export"}
    assert panes == ["runs", "runs", "eval", "runs", "eval"]        # start, cold start, its table, GRPO, the table
    grpo = [event for shown, event in routed if shown == flow.stage_runs["grpo"]]   # GRPO's, live, unwrapped:
    assert {"metrics", "sample"} <= {event["type"] for event in grpo}                # its curves and rollouts
    assert any(event["type"] == "progress" and event["stage"] == "train" for event in grpo)
    assert all(event.get("stage") == "model" for shown, event in routed if shown == job.run_id)   # no stage run
    assert any(text.startswith("Demo 2/7 · cold start") for text in statuses)
    assert len(flow.stage_lines) == 7 and flow.stage_lines[-1].startswith("[7/7] chat")
    assert eval_pane.run_id == flow.stage_runs["eval-grpo"]         # the before/after table: both models
    assert eval_pane.results_model.rowCount() == 2

    # the end: a new conversation with the exported GGUF, asked the demo's question
    assert window.stack.currentWidget() is window.chat_stack and window.chat_stack.currentWidget() is window.chat
    assert window.chat.settings.values()["model"] == gguf
    assert gguf in [str(entry.path) for entry in Library().entries()]
    qtbot.waitUntil(lambda: not window.chat.session.busy, timeout=60_000)
    conversation = window.store.get_conversation(window.chat.conversation_id)
    assert conversation.settings["model"] == gguf
    assert window.demo_status.text().startswith("Demo complete in ")
    assert not window.demo_status.stop_button.isVisible() and window.demo_status.dismiss_button.isVisible()

    # the Models pane keeps the model, the Runs pane the runs (the demo's own run shown as "demo")
    qtbot.waitUntil(lambda: window.models.model.row_of(gguf) is not None, timeout=30_000)
    runs.refresh()
    qtbot.waitUntil(lambda: {row.kind for row in runs.model.rows()} >= {"demo", "distill-sft", "eval", "grpo"},
                    timeout=30_000)
    demo_row = next(row for row in runs.model.rows() if row.kind == "demo")
    assert demo_row.id == result["run_id"] and demo_row.status == "complete"


def test_stop_cancels_the_demo_and_closing_asks_first(qtbot, window, monkeypatch):
    flow, runs = window.demo, window.runs
    asked = []
    def answer(parent, title, text, *args):
        asked.append(text)
        return QtWidgets.QMessageBox.StandardButton.Cancel
    monkeypatch.setattr(QtWidgets.QMessageBox, "question", answer)

    qtbot.mouseClick(window.empty.demo_button, Qt.MouseButton.LeftButton)
    job = flow.job
    qtbot.waitUntil(lambda: "cold-start" in flow.stage_runs, timeout=DEMO_MS)
    window.close()                                   # asked, answered Cancel: the window and the demo stay
    assert window.isVisible() and job.is_running()
    assert "demo run" in asked[0] and "The demo keeps running too" in asked[0]

    qtbot.mouseClick(window.demo_status.stop_button, Qt.MouseButton.LeftButton)
    assert not window.demo_status.stop_button.isEnabled()
    with qtbot.waitSignal(job.finished, timeout=DEMO_MS) as ended:
        pass
    assert ended.args[0].status == JobStatus.CANCELLED, str(ended.args[0])
    demo_run = window.store.get_run(job.run_id)
    assert demo_run["kind"] == "demo" and demo_run["status"] == "cancelled"
    last_stage = next(stage for stage in reversed(list(flow.stage_runs)))
    assert window.store.get_run(flow.stage_runs[last_stage])["status"] in ("cancelled", "complete")
    assert window.demo_status.text().startswith("Demo cancelled")
    assert Library().entries() == [] and flow.result is None        # no model: the welcome screen again
    assert window.empty.demo_button.isEnabled()
    assert runs.job_for(flow.stage_runs["cold-start"]) is None
