"""A pipeline run in the Runs pane, on a real store: its stages show as a chain of cards in order, each with its
status and key metric, read from its pipeline.json (engine.pipeline.state) at each poll, so a stage that
completes updates; a card opens its stage run's dashboard; a pipeline without a pipeline.json shows its child
runs; a stage run names its pipeline in the table; the kind filter has pipelines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.qt import Qt, QtGui
from app.runs.pipeline_chain import PipelineChain, card_style, title_lines
from app.runs.view import KIND, RUN_ID_ROLE, RunsPane
from app.theme import DARK
from engine import stage_chain
from engine.pipeline.state import new_stage, write_state
from engine.store import Store


@pytest.fixture
def store():
    with Store() as opened:
        yield opened


@pytest.fixture
def make_pane(qtbot, monkeypatch):
    monkeypatch.setattr(RunsPane, "POLL_MS", 200)
    stores = []

    def make() -> RunsPane:
        pane_store = Store()
        stores.append(pane_store)
        pane = RunsPane(pane_store)
        qtbot.addWidget(pane)
        pane.resize(1200, 760)
        pane.show()
        return pane

    yield make
    for pane_store in stores:
        pane_store.close()


def stage_run(store: Store, parent: int, kind: str, directory: Path, status: str, metric: str,
              values: list[float]) -> int:
    """A stage run as its command leaves it: a row under the pipeline, a run directory with metrics.jsonl,
    the same metrics in the store."""
    directory.mkdir(parents=True)
    run_id = store.create_run(kind, {"model": "/base", "max_steps": len(values)}, dir=directory, status=status,
                              pid=os.getpid() if status == "running" else None)
    store.set_run_parent(run_id, parent)
    (directory / "metrics.jsonl").write_text("".join(json.dumps({"step": step, metric: value}) + "\n"
                                                     for step, value in enumerate(values, 1)))
    for step, value in enumerate(values, 1):
        store.add_metrics(run_id, step, {metric: value})
    return run_id


@pytest.fixture
def pipeline(store, tmp_path) -> dict:
    """A pipeline run 'r1-mini' of three stages: cold start (SFT, complete, held-out accuracy 62%), reasoning
    (GRPO, running) and evaluate (pending, no run yet)."""
    folder = tmp_path / "pipeline"
    folder.mkdir()
    run_id = store.create_run("pipeline", {"name": "r1-mini"}, dir=folder, status="running", pid=os.getpid())
    sft = stage_run(store, run_id, "distill-sft", folder / "cold_start", "complete", "loss", [3.0, 2.0, 1.5])
    grpo = stage_run(store, run_id, "grpo", folder / "reasoning", "running", "reward", [0.4, 0.3])
    stages = [new_stage("cold_start", "sft", "cold start"), new_stage("reasoning", "grpo", "reasoning"),
              new_stage("evaluate", "eval", "evaluate")]
    stages[0].update(status="complete", run_id=sft, run_kind="distill-sft", run_dir=str(folder / "cold_start"),
                     inputs={"model": {"ref": "@base", "value": "/base"}},
                     metric={"label": "held-out accuracy", "value": 0.62, "text": "62%"},
                     summary="held-out accuracy 62% after 3 steps", seconds=35.2)
    stages[1].update(status="running", run_id=grpo, run_kind="grpo", run_dir=str(folder / "reasoning"),
                     inputs={"model": {"ref": "@cold_start.model", "value": str(folder / "cold_start")}})
    state = {"format": "aha-pipeline", "version": 1, "name": "r1-mini", "status": "running", "run_id": run_id,
             "run_dir": str(folder), "stages": stages, "report": None}
    write_state(folder, state)
    return {"id": run_id, "dir": folder, "sft": sft, "grpo": grpo, "state": state}


def card_texts(pane: RunsPane) -> list[tuple[str, str, str]]:
    return [(card.title.full_text(), card.status.text(), card.detail.full_text()) for card in pane.chain.cards]


def test_the_chain_shows_the_stages_updates_as_one_completes_and_opens_a_stage(qtbot, make_pane, store, pipeline):
    pane = make_pane()
    qtbot.waitUntil(lambda: pane.model.find(pipeline["grpo"]) is not None)
    pane.select_run(pipeline["id"])
    qtbot.waitUntil(lambda: pane.chain.isVisible() and len(pane.chain.cards) == 3)
    cards = card_texts(pane)
    assert [title for title, _, _ in cards] == ["cold start", "reasoning", "evaluate"]
    assert [status for _, status, _ in cards] == ["complete", "running", "pending"]
    assert cards[0][2] == "held-out accuracy 62%"
    assert cards[1][2] == "reward 0.300"             # no metric in the file yet: the run's latest key metric
    assert pane.chain.cards[0].kind.full_text() == f"sft · run {pipeline['sft']}"
    assert pane.chain.cards[0].duration.text() == "35 s"
    assert pane.chain.cards[1].duration.text().startswith("step 2/2 · ")     # running: its run's last step
    assert pane.chain.heading.full_text() == (f"Pipeline r1-mini (run {pipeline['id']}): running, "
                                              "1 of 3 stages complete")
    assert "#StageCard { background" in pane.chain.cards[1].styleSheet()
    assert "2px solid" in pane.chain.cards[1].styleSheet() and "dashed" in pane.chain.cards[2].styleSheet()
    assert pane.below.currentWidget() is pane.overview    # the pipeline itself: its stages' lines, lineage
    assert "   model ← @base = /base" in pane.overview.toPlainText()
    assert pane.dashboard.run is None and pane.chain.open_pipeline.isHidden()

    state = pipeline["state"]
    state["stages"][1].update(status="complete", seconds=95.0, summary="reward 0.70 after 2 steps",
                              metric={"label": "reward", "value": 0.7, "text": "0.70"})
    state["stages"][2].update(status="running")
    write_state(pipeline["dir"], state)
    store.update_run_status(pipeline["grpo"], "complete")
    qtbot.waitUntil(lambda: [status for _, status, _ in card_texts(pane)] == ["complete", "complete", "running"])
    assert card_texts(pane)[1][2] == "reward 0.70" and pane.chain.cards[1].duration.text() == "1 min"
    assert "2 of 3 stages complete" in pane.chain.heading.full_text()

    qtbot.mouseClick(pane.chain.cards[0], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: pane.dashboard.run is not None and pane.dashboard.run["id"] == pipeline["sft"])
    assert pane.selected_row().id == pipeline["sft"]
    assert pane.below.currentWidget() is pane.tabs and pane.chain.isVisible()   # the chain stays, the card tinted
    assert "rgba(" in pane.chain.cards[0].styleSheet() and "rgba(" not in pane.chain.cards[1].styleSheet()
    qtbot.waitUntil(lambda: "Loss" in pane.dashboard.plots and pane.dashboard.plots["Loss"].points("loss") == 3)
    qtbot.mouseClick(pane.chain.cards[2], Qt.MouseButton.LeftButton)   # no run yet: nothing opens
    assert pane.selected_row().id == pipeline["sft"]
    assert not pane.chain.open_pipeline.isHidden()
    pane.chain.open_pipeline.click()
    qtbot.waitUntil(lambda: pane.selected_row().id == pipeline["id"])


def test_without_pipeline_json_the_children_show_and_the_table_names_the_pipeline(qtbot, make_pane, store, pipeline):
    (pipeline["dir"] / "pipeline.json").unlink()
    pane = make_pane()
    qtbot.waitUntil(lambda: pane.model.find(pipeline["grpo"]) is not None)
    pane.select_run(pipeline["grpo"])
    qtbot.waitUntil(lambda: len(pane.chain.cards) == 2)
    assert card_texts(pane) == [("cold_start", "complete", "loss 1.500"), ("reasoning", "running", "reward 0.300")]
    assert pane.chain.heading.full_text().startswith(f"Pipeline (run {pipeline['id']}): running")

    row = next(index for index in range(pane.proxy.rowCount())
               if pane.proxy.index(index, 0).data(RUN_ID_ROLE) == pipeline["grpo"])
    assert pane.proxy.index(row, KIND).data() == f"grpo ⟵ pipeline {pipeline['id']}"
    pane.kind_filter.setCurrentIndex(pane.kind_filter.findData("pipeline"))
    assert [pane.proxy.index(index, 0).data(RUN_ID_ROLE) for index in range(pane.proxy.rowCount())] == [pipeline["id"]]

    pane.select_run(pipeline["id"])
    other = store.create_run("grpo", {}, status="complete")    # not a stage: no chain
    pane.kind_filter.setCurrentIndex(0)
    qtbot.waitUntil(lambda: pane.model.find(other) is not None)
    pane.select_run(other)
    qtbot.waitUntil(lambda: not pane.chain.isVisible())


def test_the_engine_reads_the_chain_alone_as_the_cli_would(store, pipeline):
    """Without the pane's rows the store is asked; a stage the file calls running whose run ended says how."""
    chain = stage_chain.read_chain(store, store.get_run(pipeline["id"]))
    assert chain.status == "running" and chain.stages[1].status == "running"
    assert chain.stages[1].metric == "reward 0.300" and chain.stages[1].duration.startswith("step 2/2 · ")
    for run_id in (pipeline["grpo"], pipeline["id"]):    # the pipeline killed mid-stage
        store.update_run_status(run_id, "crashed")
    chain = stage_chain.read_chain(store, store.get_run(pipeline["id"]))
    assert chain.status == "crashed"
    assert chain.source == "pipeline.json" and [stage.status for stage in chain.stages] == [
        "complete", "crashed", "pending"]
    assert stage_chain.stage_line(chain.stages[0]) == (f"1. cold start (sft, run {pipeline['sft']}): complete · "
                                                       "held-out accuracy 62% · 35 s")
    assert stage_chain.stage_line(chain.stages[2]) == "3. evaluate (eval): pending"
    assert stage_chain.chain_text(chain).splitlines()[:2] == [
        f"pipeline r1-mini (run {pipeline['id']}): crashed, 1 of 3 stages complete", stage_chain.stage_line(chain.stages[0])]


def test_cards_that_do_not_fit_scroll_sideways_and_a_shorter_chain_drops_its_cards(qtbot):
    def chain(count: int) -> stage_chain.Chain:
        return stage_chain.Chain(1, "long", "running", tuple(
            stage_chain.Stage(number, f"s{number}", f"stage {number}", "sft", "pending", None, None, None, None, None)
            for number in range(1, count + 1)), "pipeline.json")

    widget = PipelineChain()
    qtbot.addWidget(widget)
    widget.resize(900, 200)
    widget.show()
    widget.set_chain(chain(3))
    fitting = widget.scroll.height()
    widget.set_chain(chain(9))                      # 9 × 128 px: wider than the pane
    assert widget.scroll.height() > fitting and len(widget.cards) == 9 and len(widget.arrows) == 8
    qtbot.waitUntil(widget.scroll.horizontalScrollBar().isVisible)
    widget.set_chain(chain(2))
    assert widget.scroll.height() == fitting and len(widget.cards) == 2 and len(widget.arrows) == 1


def test_a_card_title_wraps_at_a_word_into_two_lines_and_the_shown_card_is_framed(qtbot):
    metrics = QtGui.QFontMetrics(QtGui.QFont())
    text = "SFT on the kept samples"
    assert title_lines(text, metrics, metrics.horizontalAdvance(text)) == text
    assert title_lines(text, metrics, metrics.horizontalAdvance("SFT on the kept")) == "SFT on the kept\nsamples"
    narrow = metrics.horizontalAdvance("SFT on")
    first, second = title_lines(text, metrics, narrow).split("\n")
    assert first == "SFT on" and second.endswith("…") and metrics.horizontalAdvance(second) <= narrow
    assert "\n" not in title_lines("Rejectionsampling", metrics, narrow)   # one word: elided on its one line
    stage = stage_chain.Stage(2, "rl", "reasoning RL", "grpo", "complete", 3, "grpo", None, None, 13.0)
    assert f"1px solid {DARK.accent}" in card_style(stage, True, DARK)
    assert DARK.accent not in card_style(stage, False, DARK)
