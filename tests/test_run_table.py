"""engine.run_index's helpers for the Runs pane, on a real store: the table's rows (status by the recover rules,
steps, duration, key metric by kind, re-read when a run moves on), the filter, the settings diff, the settings a
duplicate starts from, what to export, and stopping a run started elsewhere (SIGINT, refused when it cannot)."""

from __future__ import annotations

import doctest
import subprocess
import sys
import time

import pytest

from engine import cli, run_index
from engine.errors import AhaError
from engine.run_index import RunTable, filter_rows, settings_diff
from engine.store import Store
from tests.support import platforms


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def store():
    with Store() as opened:
        yield opened


def test_the_examples_in_the_docstrings_hold():
    assert doctest.testmod(run_index).failed == 0


def test_rows_have_status_steps_duration_and_the_key_metric_of_their_kind(store, tmp_path):
    grpo = store.create_run("grpo", {"model": str(tmp_path / "char"), "dataset": "addition", "max_steps": 4},
                            status="complete")
    for step, reward in ((1, 0.25), (2, 0.5)):
        store.add_metrics(grpo, step, {"reward": reward, "loss": 0.1})
    sft = store.create_run("distill-sft", {"model": "student", "traces": "t.jsonl", "max_steps": 2},
                           status="cancelled")
    store.add_metrics(sft, 1, {"loss": 3.05, "eval/accuracy": 0.125})
    kd = store.create_run("distill-kd", {"model": "student", "max_steps": 2}, pid=dead_pid())   # killed
    running = store.create_run("grpo", {"max_steps": 10}, pid=None)
    store.claim_run(running)                                  # this process: alive, fresh heartbeat
    export = store.create_run("export", {}, status="complete")
    now = time.time() + 30
    rows = {row.id: row for row in RunTable().rows(store, now=now)}
    assert list(rows) == [export, running, kd, sft, grpo]     # newest first
    assert (rows[grpo].status, rows[grpo].steps_text, rows[grpo].metric_text) == ("complete", "2/4", "reward 0.500")
    assert (rows[sft].metric_name, rows[sft].metric_text) == ("loss", "loss 3.050")
    assert (rows[kd].status, rows[kd].metric_text) == ("crashed", "–")
    assert store.get_run(kd)["status"] == "crashed"           # recorded, as `aha runs list` does
    assert (rows[running].status, rows[running].running, rows[running].steps_text) == ("running", True, "–/10")
    assert rows[running].duration_s == pytest.approx(now - store.get_run(running)["created_at"])
    finished = store.get_run(grpo)
    assert rows[grpo].duration_s == pytest.approx(finished["updated_at"] - finished["created_at"])
    assert rows[export].metric_text == "–" and rows[grpo].summary.dataset == "addition"


def test_a_row_follows_its_run_as_it_records_steps(store):
    run = store.create_run("grpo", {"max_steps": 3}, pid=None)
    store.claim_run(run)
    table = RunTable()
    store.add_metrics(run, 1, {"reward": 0.1})
    [row] = table.rows(store)
    assert (row.steps_text, row.metric_text) == ("1/3", "reward 0.100")
    store.add_metrics(run, 2, {"reward": 0.7, "eval/accuracy": 0.5})
    store.update_run_status(run, "complete")
    [row] = table.rows(store)
    assert (row.status, row.steps_text, row.metric_text) == ("complete", "2/3", "reward 0.700")


def test_held_out_accuracy_when_a_grpo_run_has_no_reward_and_the_texts():
    assert run_index.metric_text("eval/accuracy", 0.625) == "62.5%"
    assert run_index.metric_text("loss", 0.00012345) == "0.000123"
    assert [run_index.duration_text(s) for s in (42, 720, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == [
        "42 s", "12 min", "3 h 05 min", "2 d 4 h"]


def test_held_out_accuracy_is_the_key_metric_of_a_grpo_run_without_rewards(store):
    run = store.create_run("grpo", {}, status="complete")
    store.add_metrics(run, 2, {"eval/accuracy": 0.75})
    [row] = RunTable().rows(store)
    assert row.metric_text == "held-out accuracy 75.0%"


def test_filter_by_kind_and_status(store):
    ids = {name: store.create_run(kind, {}, status=status)
           for name, kind, status in (("old-sft", "sft", "complete"), ("sft", "distill-sft", "cancelled"),
                                      ("grpo", "grpo", "complete"))}
    rows = RunTable().rows(store)
    assert [row.id for row in filter_rows(rows, kind="distill-sft")] == [ids["sft"], ids["old-sft"]]
    assert [row.id for row in filter_rows(rows, status="complete")] == [ids["grpo"], ids["old-sft"]]
    assert [row.id for row in filter_rows(rows, kind="grpo", status="cancelled")] == []
    assert len(filter_rows(rows)) == 3


def test_settings_diff_keeps_only_what_differs_nested_and_missing_keys_included():
    configs = [{"model": "m", "lr": 1e-3, "teacher": {"kind": "hf", "path": "a"}, "seed": 3},
               {"model": "m", "lr": 1e-3, "teacher": {"kind": "hf", "path": "b"}, "seed": 3, "lmbda": 0.5},
               {"model": "m", "lr": 2e-3, "teacher": {"kind": "hf", "path": "a"}, "seed": 3}]
    assert settings_diff(configs) == [("lmbda", ["–", "0.5", "–"]), ("lr", ["0.001", "0.001", "0.002"]),
                                      ("teacher.path", ["a", "b", "a"])]
    assert settings_diff(configs[:1] * 2) == []
    with pytest.raises(ValueError):
        settings_diff(configs[:1])


def test_duplicate_gives_the_train_forms_kind_and_the_settings_without_the_output_folder(store):
    run = store.get_run(store.create_run("sft", {"model": "m", "output_dir": "runs/mine", "learning_rate": 1e-3}))
    assert run_index.duplicate_settings(run) == ("distill-sft", {"model": "m", "output_dir": None,
                                                                 "learning_rate": 1e-3})
    export = store.get_run(store.create_run("export", {"src": "m"}))
    with pytest.raises(AhaError, match="is an export, which the Train form does not start"):
        run_index.duplicate_settings(export)


def test_export_source_is_the_final_adapter_else_the_newest_checkpoints(store, tmp_path):
    run = store.create_run("grpo", {"model": "/models/base"}, dir=tmp_path)
    assert run_index.export_source(store, store.get_run(run)) is None
    for step in (1, 2):
        (tmp_path / f"checkpoints/step-{step}/adapter").mkdir(parents=True)
        store.add_artifact("checkpoint", tmp_path / f"checkpoints/step-{step}", run_id=run)
    assert run_index.export_source(store, store.get_run(run)) == (str(tmp_path / "checkpoints/step-2/adapter"),
                                                                   "/models/base")
    (tmp_path / "final/adapter").mkdir(parents=True)
    store.add_artifact("adapter", tmp_path / "final/adapter", run_id=run)
    assert run_index.export_source(store, store.get_run(run)) == (str(tmp_path / "final/adapter"), "/models/base")
    full = store.create_run("distill-sft", {"model": "/models/base"}, dir=tmp_path / "full")
    (tmp_path / "full/checkpoints/step-1/model").mkdir(parents=True)
    store.add_artifact("checkpoint", tmp_path / "full/checkpoints/step-1", run_id=full)
    assert run_index.export_source(store, store.get_run(full)) == (str(tmp_path / "full/checkpoints/step-1/model"), "")


@platforms.posix_signals
def test_stop_elsewhere_sends_sigint_to_the_runs_process(store):
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                              "signal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n"
                              "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        run = store.create_run("grpo", {}, pid=child.pid)
        store.claim_run(run, child.pid)
        line = run_index.stop_elsewhere(store.get_run(run))
        assert line == (f"Asked run {run} (process {child.pid}) to stop after its current step; its checkpoint "
                        "is kept.")
        assert child.wait(timeout=10) == 130
    finally:
        child.kill()
        child.wait()


def test_stop_elsewhere_refuses_a_finished_or_dead_run_and_on_windows(store, monkeypatch, capsys):
    done = store.get_run(store.create_run("grpo", {}, status="complete"))
    with pytest.raises(AhaError, match=f"run {done['id']} is complete; there is nothing to stop"):
        run_index.stop_elsewhere(done)
    dead = store.create_run("grpo", {}, pid=dead_pid())
    with pytest.raises(AhaError, match="has no live process; it crashed"):
        run_index.stop_elsewhere(store.get_run(dead))
    mine = store.create_run("grpo", {}, pid=None)
    store.claim_run(mine)
    # Only these two patches are undone: monkeypatch.undo() would also undo the test's AHA_HOME (conftest),
    # and the command below would then read the user's own store.
    with monkeypatch.context() as patch:
        patch.setattr(run_index, "process_alive", lambda pid: True)   # the Windows check of it needs Windows
        patch.setattr(sys, "platform", "win32")
        with pytest.raises(AhaError, match="Windows cannot send it Ctrl"):
            run_index.stop_elsewhere(store.get_run(mine))
    assert cli.main(["runs", "stop", str(done["id"])]) == 2
    assert capsys.readouterr().err == f"aha: error: run {done['id']} is complete; there is nothing to stop\n"


def test_an_eval_run_shows_the_pass_at_1_of_its_last_model(store):
    run = store.create_run("eval", {"models": ["hf:base", "run:7"]}, status="complete")
    store.add_metrics(run, 0, {"pass@1": 0.25, "cons@k": 0.3})
    store.add_metrics(run, 1, {"pass@1": 0.625, "cons@k": 0.7})
    [row] = RunTable().rows(store)
    assert row.metric_text == "pass@1 62.5%"
