"""The Runs pane driven as a user would, on real child processes and the char-level tiny model: a GRPO run
followed from its job shows running, is stopped from the pane (cancelled, checkpoint kept), resumed, killed with
SIGKILL (crashed) and resumed to complete; a run started in a terminal updates live, stops on SIGINT, and is deleted
only after the Undo offer ends; tiny SFT and KD runs are listed with their kind and key metric, filtered, compared
(curves overlaid, settings diffed), duplicated into the Train form, offered for export and opened in the file
manager."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app import workers
from app.qt import Qt, QtGui, QtWidgets
from app.runs.view import RUN_ID_ROLE, RunsPane
from app.workers import JobStatus, ProcessJob
from engine.errors import AhaError
from engine.store import Store
from tests.support import platforms
from tests.support.char_model import make_char_model

REPO = Path(__file__).resolve().parents[1]
TINY_GRPO = ["--dataset", "addition", "--prompts-per-step", "2", "--num-generations", "2",
             "--max-completion-length", "8", "--lora-r", "4", "--lora-alpha", "8", "--seed", "3", "--save-steps", "1"]
TINY_DISTILL = ["--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "1e-3", "--device", "cpu", "--max-steps", "2",
                "--max-completion-length", "8", "--per-device-train-batch-size", "2", "--max-length", "64"]
# Each GRPO step of a child made this much slower, so that the test's stop or kill lands while it runs.
SLOW_STEP = ("engine.train.grpo:GRPOStep.__call__", "0.4")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """The tiny models, and a data directory where a tiny SFT and a tiny KD run are started at once, in
    terminals of their own, as a user would (`distill_home` waits for them: the GRPO tests run meanwhile)."""
    folder = tmp_path_factory.mktemp("runs-pane")
    traces = folder / "traces.jsonl"
    traces.write_text("".join(f'{{"prompt": "{a}+{b}=", "thinking": "{a}+{b}={a + b}", "answer": "{a + b}"}}\n'
                              for a, b in ((12, 34), (5, 7), (40, 2), (9, 9))))
    student, teacher = make_char_model(folder / "student"), make_char_model(folder / "teacher", seed=1)
    home = folder / "home"
    env = {**os.environ, "AHA_HOME": str(home), "PYTHONPATH": str(REPO)}
    commands = [["distill", "sft", "--student", str(student), "--traces", str(traces), *TINY_DISTILL],
                ["distill", "kd", "--student", str(student), "--teacher", str(teacher), "--traces", str(traces),
                 "--lmbda", "1", *TINY_DISTILL]]
    children = [subprocess.Popen([sys.executable, "-m", "engine.cli", *command, "--events", "none"], cwd=REPO,
                                 env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True) for command in commands]
    yield {"student": student, "traces": traces, "home": home, "children": children}
    for child in children:
        if child.returncode is None:
            child.kill()
            child.communicate()


@pytest.fixture
def distill_home(work, monkeypatch):
    """The data directory of the SFT and KD runs, once both are complete."""
    for child in work["children"]:
        if child.returncode is None:
            _, err = child.communicate(timeout=300)
            assert child.returncode == 0, err
    monkeypatch.setenv("AHA_HOME", str(work["home"]))


@pytest.fixture
def fast_poll(monkeypatch):
    monkeypatch.setattr(RunsPane, "POLL_MS", 250)


@pytest.fixture
def make_pane(qtbot, fast_poll):
    stores = []

    def make() -> RunsPane:
        store = Store()
        stores.append(store)
        pane = RunsPane(store)
        qtbot.addWidget(pane)
        pane.resize(1100, 700)
        pane.show()
        return pane

    yield make
    for job in workers.running_jobs():           # a failed test's child: never left behind
        job.terminate(kill=True)
        job.process.waitForFinished(10_000)
    for store in stores:
        store.close()


def row_of(pane: RunsPane, run_id: int | None):
    return pane.model.find(run_id) if run_id is not None else None


def status_of(pane: RunsPane, run_id: int | None) -> str | None:
    row = row_of(pane, run_id)
    return row.status if row else None


def shown_ids(pane: RunsPane) -> list[int]:
    return [pane.proxy.index(row, 0).data(RUN_ID_ROLE) for row in range(pane.proxy.rowCount())]


def slowed_aha_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "tests.support.slowed_cli", *SLOW_STEP, *args, "--events", "jsonl"]


@platforms.posix_signals
def test_a_followed_grpo_job_stops_resumes_crashes_and_resumes_to_complete(qtbot, make_pane, work, tmp_path,
                                                                            monkeypatch):
    """A GRPO job (as the Train pane starts it) followed by the pane: selected and running as soon as it
    starts; Stop cancels it at a step with its checkpoint kept; Resume continues it as `aha runs resume`;
    that job killed with SIGKILL shows crashed; Resume again runs it to complete, 4 of 4 steps."""
    monkeypatch.setattr(workers, "aha_argv", slowed_aha_argv)     # every job of this test, resumes included
    pane = make_pane()
    run_dir = tmp_path / "run"
    job = ProcessJob(["grpo", "--model", str(work["student"]), *TINY_GRPO, "--max-steps", "4",
                      "--output-dir", str(run_dir)], grace_s=RunsPane.STOP_GRACE_S)
    pane.follow_job(job)
    job.start()
    qtbot.waitUntil(lambda: job.run_id is not None and pane.selected_row() is not None
                    and pane.selected_row().id == job.run_id and status_of(pane, job.run_id) == "running")
    run_id = job.run_id
    assert pane.dashboard.run["id"] == run_id and pane.job_for(run_id) is job
    assert pane.stop_action.isEnabled() and not pane.resume_action.isEnabled() and not pane.delete_action.isEnabled()
    qtbot.waitUntil(lambda: (row_of(pane, run_id).summary.step or 0) >= 1)
    with qtbot.waitSignal(job.finished) as stopped:
        pane.stop_action.trigger()
    assert stopped.args[0].status == JobStatus.CANCELLED, stopped.args[0]
    qtbot.waitUntil(lambda: status_of(pane, run_id) == "cancelled")
    cancelled_at = stopped.args[0].result["step"]
    assert cancelled_at < 4 and (run_dir / "checkpoints" / f"step-{cancelled_at}").is_dir()
    assert pane.resume_action.isEnabled() and pane.status.full_text().startswith(f"GRPO run {run_id} cancelled")

    pane.resume_action.trigger()
    qtbot.waitUntil(lambda: pane.job_for(run_id) is not None)
    resumed = pane.job_for(run_id)
    assert resumed.argv[-5:] == ["runs", "resume", str(run_id), "--events", "jsonl"]
    def kill_at_its_first_step(event: dict) -> None:
        if event["type"] == "metrics" and resumed.process.processId():
            assert event["step"] == cancelled_at + 1
            os.kill(resumed.process.processId(), signal.SIGKILL)

    with qtbot.waitSignal(resumed.finished) as killed:
        resumed.event.connect(kill_at_its_first_step)
    assert killed.args[0].status == JobStatus.CRASHED
    qtbot.waitUntil(lambda: status_of(pane, run_id) == "crashed")
    assert pane.resume_action.isEnabled()

    pane.resume_action.trigger()
    qtbot.waitUntil(lambda: pane.job_for(run_id) is not None)
    outcomes = []
    pane.job_for(run_id).finished.connect(outcomes.append)
    qtbot.waitUntil(lambda: bool(outcomes))
    assert outcomes[0].status == JobStatus.COMPLETE, outcomes[0]
    qtbot.waitUntil(lambda: status_of(pane, run_id) == "complete")
    row = row_of(pane, run_id)
    assert (row.kind, row.steps_text, row.metric_text.split()[0]) == ("grpo", "4/4", "reward")
    assert row.summary.dir == str(run_dir.resolve())


@platforms.posix_signals
def test_a_run_from_a_terminal_updates_live_stops_on_sigint_and_is_deleted_after_undo(qtbot, make_pane, work,
                                                                                       tmp_path, monkeypatch):
    """`aha grpo` started in a terminal shows in the table and its steps move; it cannot be deleted while it
    runs; Stop sends it SIGINT: it checkpoints and ends cancelled. Delete asks (naming the folder), hides the
    row and offers Undo, which brings it back; deleted again, its folder and record go once the offer ends."""
    run_dir = tmp_path / "terminal-run"
    child = subprocess.Popen([sys.executable, "-m", "tests.support.slowed_cli", *SLOW_STEP, "grpo", "--model",
                              str(work["student"]), *TINY_GRPO, "--max-steps", "30", "--output-dir", str(run_dir),
                              "--events", "none"], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        pane = make_pane()
        qtbot.waitUntil(lambda: pane.model.rowCount() == 1 and pane.model.row_at(0).running
                        and (pane.model.row_at(0).summary.step or 0) >= 1)
        run_id = pane.model.row_at(0).id
        first_step = pane.model.row_at(0).summary.step
        qtbot.waitUntil(lambda: row_of(pane, run_id).summary.step > first_step)      # live
        pane.select_run(run_id)
        assert pane.job_for(run_id) is None and not pane.delete_action.isEnabled()
        pane.delete_selected()
        assert pane.status.full_text().startswith(f"run {run_id} is running (process {child.pid})")
        pane.stop_action.trigger()
        assert pane.status.full_text().startswith(f"Asked run {run_id} (process {child.pid}) to stop")
        assert child.wait(timeout=120) == 130
    finally:
        child.kill()
        child.wait()
    qtbot.waitUntil(lambda: status_of(pane, run_id) == "cancelled")
    step = row_of(pane, run_id).summary.step
    assert (run_dir / "checkpoints" / f"step-{step}").is_dir()

    questions = []

    def answer_yes(parent, title, text, *args):
        questions.append(text)
        return QtWidgets.QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QtWidgets.QMessageBox, "question", answer_yes)
    pane.select_run(run_id)
    pane.delete_action.trigger()
    assert questions[-1].startswith(f"Delete run {run_id} ({run_dir.resolve()}, ") and questions[-1].endswith(" MB)?")
    assert shown_ids(pane) == [] and pane.toast.isVisible() and pane.toast.label.text() == f"Deleted run {run_id}"
    assert run_dir.is_dir() and pane.store.get_run(run_id)
    pane.toast.button.click()                                       # Undo
    assert shown_ids(pane) == [run_id] and pane.selected_row().id == run_id and run_dir.is_dir()
    pane.undo_seconds = 0.3
    pane.delete_action.trigger()
    assert shown_ids(pane) == [] and run_dir.is_dir()
    qtbot.waitUntil(lambda: not run_dir.exists())                   # the offer ended
    with pytest.raises(AhaError):
        pane.store.get_run(run_id)
    qtbot.waitUntil(lambda: pane.model.rowCount() == 0)
    assert pane.table_stack.currentWidget() is pane.empty and pane.status.full_text() == (
        f"Deleted run {run_id} and {run_dir.resolve()}.")


def test_sft_and_kd_runs_are_listed_with_their_key_metric_and_filtered(qtbot, make_pane, distill_home):
    pane = make_pane()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 2)
    kd, sft = sorted(pane.model.rows(), key=lambda row: row.kind)      # started at once: either may be first
    assert [(row.kind, row.status, row.steps_text) for row in (sft, kd)] == [
        ("distill-sft", "complete", "2/2"), ("distill-kd", "complete", "2/2")]
    for row in (sft, kd):
        assert row.metric_label == "loss" and row.metric_text == f"loss {row.metric_value:.3f}"
        assert pane.proxy.index(shown_ids(pane).index(row.id), 8).data() == row.metric_text
    assert [pane.proxy.index(0, column).data() for column in (2, 3)] == ["student", "traces.jsonl"]
    pane.kind_filter.setCurrentIndex(pane.kind_filter.findData("distill-kd"))
    assert shown_ids(pane) == [kd.id]
    pane.status_filter.setCurrentIndex(pane.status_filter.findData("cancelled"))
    assert shown_ids(pane) == []
    pane.select_run(sft.id)                                          # filtered out: the filter makes way
    assert pane.kind_filter.currentIndex() == pane.status_filter.currentIndex() == 0
    assert pane.selected_row().id == sft.id
    pane.status_filter.setCurrentIndex(pane.status_filter.findData("complete"))
    assert sorted(shown_ids(pane)) == sorted([sft.id, kd.id])
    pane.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    assert shown_ids(pane) == sorted([sft.id, kd.id])
    pane.table.sortByColumn(1, Qt.SortOrder.AscendingOrder)        # by kind
    assert shown_ids(pane) == [kd.id, sft.id]


def test_compare_overlays_the_curves_and_diffs_the_settings(qtbot, make_pane, distill_home, work):
    pane = make_pane()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 2)
    assert not pane.compare_action.isEnabled()
    pane.table.selectAll()
    assert pane.compare_action.isEnabled() and not pane.open_action.isEnabled()
    pane.compare_action.trigger()
    comparison = pane.comparison
    qtbot.addWidget(comparison)
    kd, sft = (row.id for row in sorted(pane.model.rows(), key=lambda row: row.kind))
    assert comparison.metric_box.currentText() == "loss"
    assert set(comparison.curves) == {kd, sft}
    assert sorted(comparison.legend_names()) == sorted([f"run {sft} · distill-sft", f"run {kd} · distill-kd"])
    for run_id, curve in comparison.curves.items():
        steps, values = curve.getData()
        assert list(steps) == [1, 2]
        assert list(values) == [value for _, value in pane.store.metric_series(run_id, "loss")]
    comparison.metric_box.setCurrentText("kd_loss")                 # recorded by KD only
    assert set(comparison.curves) == {kd} and comparison.empty.text() == f"No kd_loss in run {sft}"
    diff = comparison.diff()
    columns = [comparison.diff_table.horizontalHeaderItem(c).text() for c in range(comparison.diff_table.columnCount())]
    assert set(columns[1:]) == {f"run {kd} · distill-kd", f"run {sft} · distill-sft"} and columns[0] == "Setting"
    kd_column = columns.index(f"run {kd} · distill-kd") - 1
    assert diff["lmbda"][kd_column] == "1.0" and diff["lmbda"][1 - kd_column] == "–"
    assert diff["teacher"][1 - kd_column] == "–" and diff["teacher"][kd_column] == str(work["student"].parent / "teacher")
    assert "model" not in diff and "learning_rate" not in diff          # the same in both


def test_duplicate_export_and_open_folder(qtbot, make_pane, distill_home, work, monkeypatch):
    pane = make_pane()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 2)
    sft = next(row for row in pane.model.rows() if row.kind == "distill-sft")
    pane.select_run(sft.id)
    with qtbot.waitSignal(pane.duplicate_requested) as duplicated:
        pane.duplicate_action.trigger()
    kind, config = duplicated.args
    assert kind == "distill-sft"
    assert (config["traces"], config["learning_rate"], config["max_steps"], config["output_dir"]) == (
        str(work["traces"]), 1e-3, 2, None)
    with qtbot.waitSignal(pane.export_requested) as exported:
        pane.export_action.trigger()
    assert exported.args == [str(Path(sft.summary.dir) / "final" / "adapter"), str(work["student"])]
    assert pane.dashboard.run["id"] == sft.id and pane.rollouts.run["id"] == sft.id
    opened = []
    monkeypatch.setattr(QtGui.QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    pane.folder_action.trigger()
    assert opened == [sft.summary.dir]
