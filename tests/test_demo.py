"""`aha demo`: the seven stages through the CLI with the SMOKE recipe (a few steps of each: the plumbing, not the
learning), real runs in the test's own store; a bad --out; a cancel in a real child process. The DEFAULT
recipe's learning (gain ≥ 10 points; see the slow test for why not 15) is the slow test's, written with the recipe's calibration.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli, events, run_index
from engine.demo.pipeline import STAGES, TerminalView, agreement, default_out, table_text
from engine.errors import AhaError
from engine.pipeline.events import inner_event
from engine.store import Store
from tests.fake_ollama import FakeOllama

REPO = Path(__file__).resolve().parents[1]
STAGE_KINDS = {"cold-start": "distill-sft", "eval-cold-start": "eval", "grpo": "grpo", "eval-grpo": "eval",
               "export": "export"}


def stage_logs(stream: list[dict], key: str) -> list[dict]:
    return [event for event in stream if event["type"] == "log" and key in event]


def test_smoke_demo_runs_every_stage_as_a_real_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    with FakeOllama() as url:
        monkeypatch.setenv("OLLAMA_HOST", url)
        assert cli.main(["demo", "--smoke", "--seed", "3", "--out", str(out), "--ollama", "aha-demo:smoke",
                         "--events", "jsonl"]) == 0
    stream = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for event in stream:
        events.parse(event)  # every event of a known type and shape
    start, done = stream[0], stream[-1]
    assert start["type"] == "start" and start["kind"] == "demo" and start["stages"] == list(STAGES)
    assert [event["type"] for event in stream].count("start") == 1  # the stage runs' own became logs
    assert done["type"] == "done" and done["status"] == "complete", done

    # Progress placed in the demo's stages, in order; a stage's own stage is its phase.
    placed = [event for event in stream if event["type"] == "progress"]
    indexes = [event["stage_index"] for event in placed]
    assert indexes == sorted(indexes) and set(indexes) == set(range(len(STAGES)))
    assert all(STAGES[event["stage_index"]] == event["stage"] for event in placed)
    training = [event for event in placed if event["stage"] == "grpo" and event["phase"] == "train"]
    assert training and inner_event(training[-1])["stage"] == "train"

    # One stage_run log per stage with a run, one stage_done per stage, in order.
    started = stage_logs(stream, "stage_run")
    assert [event["stage"] for event in started] == list(STAGE_KINDS)
    finished = stage_logs(stream, "stage_done")
    assert [event["stage"] for event in finished] == list(STAGES)
    assert all(event["message"].startswith(f"[{index}/7] ") for index, event in enumerate(finished, 1))
    assert all(event["stage_done"]["seconds"] >= 0 for event in finished)

    # The demo run and its stage runs are in the store, each of its kind, complete, inside --out.
    result = done["result"]
    with Store() as store:
        demo = store.get_run(start["run_id"])
        assert (demo["kind"], demo["status"], Path(demo["dir"])) == ("demo", "complete", out.resolve())
        for event in started:
            run = store.get_run(event["stage_run"]["run_id"])
            assert run["kind"] == STAGE_KINDS[event["stage"]] == event["stage_run"]["kind"]
            assert run["status"] == "complete", run
            if event["stage"] != "export":
                assert Path(run["dir"]) == out.resolve() / event["stage"] == Path(event["stage_run"]["run_dir"])
        assert [stage["name"] for stage in result["stages"]] == list(STAGES)

        # A demo is rerun, not resumed or duplicated; exporting it exports its GRPO stage's model.
        with pytest.raises(AhaError, match="rerun `aha demo`"):
            run_index.resume_plan(store, str(demo["id"]))
        with pytest.raises(AhaError, match="rerun `aha demo`"):
            run_index.duplicate_settings(demo)
        assert run_index.export_source(store, demo) == (str(out / "grpo" / "final" / "adapter"),
                                                        str(out / "cold-start" / "final" / "model"))

    # The GGUF is in the library, the chat answered, demo.json is the result.
    gguf = Path(result["gguf"])
    assert gguf.is_file() and gguf.parent == out / "export" and Path(result["modelfile"]).is_file()
    from engine.models import Library

    assert gguf in [entry.path for entry in Library().entries()]
    assert result["ollama"] == "aha-demo:smoke" and finished[5]["stage_done"]["check_passed"] is True
    chat = result["chat"]
    assert chat["question"] and chat["thinking"] and "answer" in chat
    assert set(result["table"]) == {"cold_start", "grpo"} and result["agreement"]["problems"] >= 1
    saved = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    assert saved["status"] == "complete" and saved["stages"] == result["stages"] and saved["gguf"] == result["gguf"]

    # On a terminal: the stage lines and GRPO's steps (the stage runs' other logs are in their run.log), then
    # the table, the chat and where everything is.
    terminal = io.StringIO()
    view = TerminalView(terminal)
    for event in stream:
        view(event)
    lines = terminal.getvalue().splitlines()
    assert [line[:5] for line in lines if line.startswith("[")] == [f"[{index}/7]" for index in range(1, 8)]
    assert any(line.startswith("step 1/") and "reward" in line for line in lines)
    assert not any("model 1 of" in line for line in lines)  # an evaluation's own log line
    text = table_text(saved)
    assert text.splitlines()[1].startswith("cold start") and text.splitlines()[2].startswith("GRPO")
    assert f"chat: {chat['question']}" in text and str(gguf) in text and f"aha chat {gguf}" in text

    # Deleting the demo deletes its folder and the stage runs that were in it.
    with Store() as store:
        line = run_index.delete_run(store, store.get_run(start["run_id"]))
        assert not out.exists() and store.list_runs() == [] and "and its stage runs" in line


def test_demo_refuses_an_out_that_is_not_new(tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert cli.main(["demo", "--smoke", "--out", str(used), "--events", "jsonl"]) == 2
    captured = capsys.readouterr()
    stream = [json.loads(line) for line in captured.out.splitlines()]
    assert [event["type"] for event in stream] == ["start", "error"] and stream[0]["run_id"] is None
    assert "not empty; use another --out or remove it" in stream[1]["message"]
    assert captured.err.count("\n") == 1 and captured.err.startswith("aha: error: --out")
    assert (used / "notes.txt").read_text() == "mine" and sorted(path.name for path in used.iterdir()) == ["notes.txt"]
    assert cli.main(["demo", "--smoke", "--out", str(used / "notes.txt"), "--events", "none"]) == 2
    assert "is a file" in capsys.readouterr().err
    with Store() as store:
        assert store.list_runs() == []  # a refusal is no run


def test_default_out_is_the_first_free_folder(tmp_path):
    first = default_out(0)
    assert first.name == "seed-0-1" and first.parent.name == "demo"
    first.mkdir()
    assert default_out(0) == first  # empty: still free
    (first / "demo.json").write_text("{}")
    assert default_out(0).name == "seed-0-2" and default_out(1).name == "seed-1-1"


def test_agreement_counts_the_same_answers():
    assert agreement(["12", "7", None, "3"], ["12", "8", None, "3"]) == {"problems": 4, "same": 3, "share": 0.75}


def test_cancel_ends_the_stage_run_cancelled_and_the_demo(tmp_path):
    """`cancel` on stdin while the cold start trains (its steps slowed, so the cancel lands in the stage)."""
    out = tmp_path / "demo"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.slowed_cli", "engine.train.sft:SFTStep.__call__", "1.0", "demo",
         "--smoke", "--out", str(out), "--events", "jsonl"], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    stream = []
    for line in child.stdout:
        stream.append(json.loads(line))
        if stream[-1].get("stage_run", {}).get("kind") == "distill-sft":
            child.stdin.write("cancel\n")
            child.stdin.flush()
            break
    else:
        raise AssertionError(f"the demo ended first: {stream[-3:]} {child.stderr.read()}")
    rest, err = child.communicate(timeout=180)
    stream += [json.loads(line) for line in rest.splitlines()]
    assert child.returncode == 130, err
    done = stream[-1]
    assert done["type"] == "done" and done["status"] == "cancelled", done
    assert [event["stage"] for event in stage_logs(stream, "stage_run")] == ["cold-start"]
    assert [event["stage"] for event in stage_logs(stream, "stage_done")] == ["model", "cold-start"]
    with Store() as store:
        cold_start = store.get_run(stage_logs(stream, "stage_run")[0]["stage_run"]["run_id"])
        assert cold_start["status"] == "cancelled" and store.get_run(stream[0]["run_id"])["status"] == "cancelled"
    saved = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    assert saved["status"] == "cancelled" and [stage["name"] for stage in saved["stages"]] == ["model", "cold-start"]


@pytest.mark.slow
def test_default_demo_seed_0_learns_exports_and_chats(tmp_path, capsys):
    """The real demo (DEFAULT recipe, seed 0) as a user runs it: the cold start passes its target, GRPO raises
    held-out pass@1 by ≥ 10 points, the exported q8_0 GGUF's greedy answers mostly agree with the HF model's,
    and `aha chat` on it streams a think block and an answer. Times are bench/demo.py's."""
    from engine.demo.recipe import DEFAULT

    out = tmp_path / "demo"
    assert cli.main(["demo", "--seed", "0", "--out", str(out), "--events", "none"]) == 0
    result = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    with capsys.disabled():
        print(f"\n[demo] seed 0: {table_text(result)}")
    assert result["status"] == "complete"
    cold = next(stage for stage in result["stages"] if stage["name"] == "cold-start")
    with Store() as store:
        cold_run = Path(store.get_run(cold["run_id"])["dir"])
    assert cold_run == (out / "cold-start").resolve()
    assert json.loads((cold_run / "config.json").read_text())["stop_at_accuracy"] == DEFAULT.sft_target
    evals = [record for record in map(json.loads, (cold_run / "metrics.jsonl").read_text().splitlines())
             if "eval/accuracy" in record]
    # From scratch: the random model answers nothing, the cold start ends past its target.
    assert evals[0]["eval/accuracy"] < 0.05 and evals[-1]["eval/accuracy"] >= DEFAULT.sft_target
    cold_pass1, grpo_pass1 = result["table"]["cold_start"]["pass@1"], result["table"]["grpo"]["pass@1"]
    assert result["gain_points"] == pytest.approx((grpo_pass1 - cold_pass1) * 100, abs=0.06)
    # The gain depends on the CPU's float kernels: seed 0 gained +16.2 points on the machine the recipe was
    # tuned on, and +12.5 and +13.0 in two runs on an AMD EPYC (cold starts 60.8 % and 59.8 %). bench/demo.py
    # measures the recipe; this asserts that GRPO clearly learns (p < 0.001 at 400 samples is ~6 points).
    assert result["gain_points"] >= 10, result["table"]
    assert result["agreement"]["problems"] == DEFAULT.eval_limit and result["agreement"]["share"] >= 0.8
    capsys.readouterr()
    assert cli.main(["chat", result["gguf"], "-p", DEFAULT.chat_question, "--temperature", "0", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [line["type"] for line in lines]
    assert kinds.count("thinking") >= 2 and kinds.count("answer") >= 1 and kinds[-1] == "done", kinds
    assert kinds.index("answer") > max(i for i, kind in enumerate(kinds) if kind == "thinking")  # thought first
    thinking = "".join(line["text"] for line in lines if line["type"] == "thinking")
    assert thinking.count("=") >= 3, thinking  # one line per column, as the teacher wrote them
    assert any(ch.isdigit() for ch in "".join(line["text"] for line in lines if line["type"] == "answer"))
