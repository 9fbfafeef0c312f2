"""`aha pipeline`: the pipeline file's checks (one line each, before any run exists), `--set`, the bundled
r1 and r1-mini files; r1-mini with a few steps per stage killed with SIGKILL during stage 3 (rejection
sampling) and resumed, against the same pipeline uninterrupted: the same final adapter, finished stages not
redone, the stage runs children of the pipeline run. The whole r1-mini (the demo's settings) is the slow test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli, events, run_index
from engine.errors import AhaError
from engine.pipeline.spec import apply_sets, bundled_names, load_pipeline, parse_pipeline, parse_set
from engine.pipeline.state import read_state
from engine.store import Store
from tests.support import platforms

REPO = Path(__file__).resolve().parents[1]
STAGE_KINDS = {"cold_start": "distill-sft", "reasoning_rl": "grpo", "rejection": "generate",
               "rejection_sft": "distill-sft", "final_rl": "grpo", "eval": "eval", "export": "export"}
# r1-mini in seconds: every stage's real command, a few steps each (the plumbing; the learning is the slow test's);
# rejection sampling keeps the well-formed samples (after 12 steps the model gets no sum right).
QUICK = ["cold_start.max_steps=12", "cold_start.eval_steps=6", "cold_start.eval_samples=8",
         "cold_start.save_steps=6", "cold_start.stop_at_accuracy=1.0",
         "reasoning_rl.max_steps=3", "reasoning_rl.prompts_per_step=2", "reasoning_rl.num_generations=4",
         "reasoning_rl.warmup_steps=0", "reasoning_rl.save_steps=3",
         "rejection.limit=40", "rejection.max_tokens=24", "rejection.reward=['format']",
         "rejection_sft.max_steps=6", "rejection_sft.eval_steps=6", "rejection_sft.eval_samples=8",
         "rejection_sft.save_steps=3", "rejection_sft.stop_at_accuracy=1.0",
         "final_rl.max_steps=3", "final_rl.prompts_per_step=2", "final_rl.num_generations=4",
         "final_rl.warmup_steps=0", "final_rl.save_steps=3",
         "eval.k=2", "eval.limit=6", "eval.max_tokens=24"]


def stage_table(**settings) -> dict:
    return {"name": "s", "kind": "sft", "model": "@base", "dataset": "addition", **settings}


def parse(*stages, **top) -> object:
    return parse_pipeline({"model": "demo", "stage": list(stages), **top}, "p.toml")


# The file ------------------------------------------------------------------------------------------

def test_bundled_pipelines_parse_with_their_references():
    assert {"r1", "r1-mini"} <= set(bundled_names())
    mini, _ = load_pipeline("r1-mini")
    assert [stage.name for stage in mini.stages] == list(STAGE_KINDS)
    assert [stage.run_kind for stage in mini.stages] == list(STAGE_KINDS.values())
    assert mini.stage("rejection_sft").settings["traces"] == "@rejection.traces"
    assert mini.stage("rejection_sft").settings["model"] == "@base"  # R1 fine-tunes the base, not the RL model
    assert mini.stage("eval").settings["models"] == ["@cold_start", "@reasoning_rl", "@final_rl"]
    real, _ = load_pipeline("r1", model="/models/r1-distill-qwen-1.5b")
    assert real.model == "/models/r1-distill-qwen-1.5b"
    kinds = [stage.kind for stage in real.stages]
    assert kinds[:5] == ["sft", "grpo", "generate", "sft", "grpo"] and "eval" in kinds


@pytest.mark.parametrize(("data", "message"), [
    ({"stage": [stage_table()], "model": "demo", "steps": 3}, "unknown key 'steps'"),
    ({"stage": [stage_table()]}, "no base model"),
    ({"model": "demo"}, "no stages"),
    ({"model": "demo", "stage": [stage_table(), stage_table()]}, "two stages are named 's'"),
    ({"model": "demo", "stage": [stage_table(kind="ppo")]}, "kind 'ppo'; use one of sft, kd, grpo"),
    ({"model": "demo", "stage": [stage_table(name="base")]}, "needs a name"),
    ({"model": "demo", "stage": [stage_table(learning_rat=1e-3)]}, "no setting 'learning_rat'"),
    ({"model": "demo", "stage": [stage_table(output_dir="x")]}, "sets output_dir, which the pipeline sets itself"),
    ({"model": "demo", "stage": [stage_table(model="@later")]}, "refers to @later, which is not an earlier stage"),
    ({"model": "demo", "stage": [stage_table(), stage_table(name="t", traces="@s.traces")]},
     r"@s \(sft\) gives model, adapter, base, run_dir, not 'traces'"),
    ({"model": "demo", "stage": [stage_table(dataset="${data}")]}, r"uses \$\{data\}, which is not a variable"),
    ({"model": "demo", "seed": "zero", "stage": [stage_table()]}, "seed must be a whole number"),
])
def test_each_mistake_in_a_pipeline_file_is_one_line(data, message):
    with pytest.raises(AhaError, match=message) as raised:
        parse_pipeline(data, "p.toml")
    assert "\n" not in str(raised.value) and str(raised.value).startswith("p.toml")


def test_variables_and_sets_override_the_file():
    data = {"model": "demo", "vars": {"data": "addition", "steps": 5},
            "stage": [stage_table(dataset="${data}", max_steps="${steps}"),
                      {"name": "g", "kind": "grpo", "model": "@s", "dataset": "${data}/x"}]}
    spec = parse_pipeline(apply_sets(data, ["data=arithmetic", "s.learning_rate=3e-4", "seed=4"]), "p.toml")
    assert spec.seed == 4
    assert spec.stage("s").settings == {"model": "@base", "dataset": "arithmetic", "max_steps": 5,
                                        "learning_rate": 3e-4}
    assert spec.stage("g").settings["dataset"] == "arithmetic/x"  # a variable inside a string: its text
    assert parse_set("s.rewards=['accuracy', 'format']") == ("s.rewards", ["accuracy", "format"])
    assert parse_set("data=my file.jsonl") == ("data", "my file.jsonl")  # not TOML: the text
    with pytest.raises(AhaError, match="has no stage 'nope'"):
        apply_sets(data, ["nope.max_steps=3"])
    with pytest.raises(AhaError, match="write KEY=VALUE"):
        apply_sets(data, ["max_steps"])
    assert data["vars"]["data"] == "addition"  # the file's table is left as it was


def test_cli_show_and_bad_files_say_one_line(tmp_path, capsys):
    assert cli.main(["pipeline", "show", "r1-mini", "--set", "cold_start.max_steps=7"]) == 0
    shown = capsys.readouterr().out
    assert "3. rejection (generate) ← @reasoning_rl" in shown and "max_steps = 7" in shown
    broken = tmp_path / "broken.toml"
    broken.write_text("model = 'demo'\n[[stage]]\nname = 'a'\nkind = 'sft'\nmodel = '@b'\n")
    for argv, message in ((["pipeline", "run", str(broken)], "refers to @b, which is not an earlier stage"),
                          (["pipeline", "run", "nowhere.toml"], "pipeline file nowhere.toml not found"),
                          (["pipeline", "resume", str(tmp_path)], "is not a pipeline run")):
        assert cli.main(argv) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    with Store() as store:
        assert store.list_runs(kind="pipeline") == []  # a refused file is no run
    broken.write_text("model = [")
    assert cli.main(["pipeline", "show", str(broken)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err


TWO_STAGES = """
model = "demo"
[[stage]]
name = "sft"
kind = "sft"
model = "@base"
dataset = "addition"
use_peft = false
max_steps = 2
per_device_train_batch_size = 4
max_completion_length = 16
learning_rate = -1.0
[[stage]]
name = "rl"
kind = "grpo"
model = "@sft"
dataset = "addition"
max_steps = 1
prompts_per_step = 1
num_generations = 2
max_completion_length = 8
"""


def test_a_failed_stage_is_one_line_and_resume_with_set_fixes_it(tmp_path, capsys):
    assert cli.main(["pipeline", "run", str(tmp_path / "absent.toml")]) == 2
    missing = tmp_path / "missing.toml"
    missing.write_text(TWO_STAGES.replace('model = "demo"', f'model = "{tmp_path / "no-model"}"', 1))
    assert cli.main(["pipeline", "run", str(missing)]) == 2
    assert "model folder" in capsys.readouterr().err
    with Store() as store:
        assert store.list_runs(kind="pipeline") == []  # a missing base model is refused before the run exists

    pipeline = tmp_path / "two.toml"
    pipeline.write_text(TWO_STAGES)
    out = tmp_path / "two"
    assert cli.main(["pipeline", "run", str(pipeline), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    line = error.splitlines()[-1]  # the run directory's line above it, then the error
    assert line.startswith("aha: error: stage 'sft': learning_rate must be above 0, got -1.0; then `aha pipeline "
                           f"resume {out.resolve()}`"), error
    state = read_state(out)
    assert (state["status"], [stage["status"] for stage in state["stages"]]) == ("error", ["error", "pending"])
    for bad, message in ((["--set", "seed=3"], "its seed is fixed"), (["--set", "nope.x=1"], "has no stage 'nope'")):
        assert cli.main(["pipeline", "resume", str(out), *bad]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["pipeline", "resume", str(out), "--set", "sft.learning_rate=1e-3", "--events", "none"]) == 0
    state = read_state(out)
    assert [stage["status"] for stage in state["stages"]] == ["complete", "complete"]
    assert json.loads((out / "sft" / "config.json").read_text())["learning_rate"] == 1e-3
    assert cli.main(["pipeline", "resume", str(out), "--set", "sft.max_steps=4"]) == 2
    assert "is complete" in capsys.readouterr().err


# Running, killing and resuming -------------------------------------------------------------------------

def final_adapter(directory: Path) -> bytes:
    return (directory / "final_rl" / "final" / "adapter" / "adapter_model.safetensors").read_bytes()


def trace_texts(directory: Path) -> list[tuple[str, str, str]]:
    rows = [json.loads(line) for line in (directory / "rejection" / "traces.jsonl").read_text().splitlines()]
    return [(row["prompt"], row["thinking"], row["answer"]) for row in rows]


@platforms.posix_signals
def test_sigkill_during_rejection_sampling_and_resume_give_the_uninterrupted_adapter(tmp_path, capsys):
    straight = tmp_path / "straight"
    assert cli.main(["pipeline", "run", "r1-mini", "--out", str(straight), "--events", "jsonl",
                     *sum((["--set", item] for item in QUICK), [])]) == 0
    stream = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for event in stream:
        events.parse(event)
    assert stream[0]["type"] == "start" and stream[0]["stages"] == list(STAGE_KINDS)
    assert stream[-1]["type"] == "done" and stream[-1]["status"] == "complete"
    state = read_state(straight)
    assert [stage["status"] for stage in state["stages"]] == ["complete"] * len(STAGE_KINDS)

    # Lineage: every stage run is the pipeline's child, of its kind; each model's source is recorded.
    with Store() as store:
        children = store.child_runs(state["run_id"])
        assert [run["kind"] for run in children] == list(STAGE_KINDS.values())
        assert all(run["status"] == "complete" for run in children)
    stages = {stage["name"]: stage for stage in state["stages"]}
    assert stages["reasoning_rl"]["inputs"]["model"] == {"ref": "@cold_start",
                                                         "value": stages["cold_start"]["outputs"]["model"]}
    assert stages["rejection"]["inputs"]["teacher"]["value"] == f"hf:{stages['reasoning_rl']['run_dir']}"
    assert stages["rejection_sft"]["inputs"]["model"]["value"] == state["base_model"]
    assert stages["final_rl"]["inputs"]["model"]["value"] == stages["rejection_sft"]["outputs"]["model"]
    assert state["report"]["baseline"] == "cold_start" and len(state["report"]["models"]) == 3
    assert Path(stages["export"]["outputs"]["gguf"]).stat().st_size > 0

    # The same pipeline in a child process, SIGKILLed once stage 3 has written some traces.
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "engine.cli", "pipeline", "run", "r1-mini", "--out", str(killed),
               "--events", "jsonl", *sum((["--set", item] for item in QUICK), [])]
    import torch

    environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    child = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    try:
        for line in child.stdout:
            event = json.loads(line)
            if event["type"] == "progress" and event["stage"] == "rejection" and event["done"] >= 8:
                capsys.readouterr()
                assert cli.main(["pipeline", "resume", str(killed)]) == 2  # not beside its live process
                assert f"(process {child.pid}); cancel it or wait for it" in capsys.readouterr().err
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.wait(timeout=120)
    assert child.returncode == -signal.SIGKILL
    before = read_state(killed)
    assert [stage["status"] for stage in before["stages"]][:3] == ["complete", "complete", "running"]
    written = len(trace_texts(killed))
    assert 0 < written < len(trace_texts(straight))  # killed in the middle of stage 3
    cold_start_run = before["stages"][0]["run_id"]
    cold_start_model = Path(before["stages"][0]["outputs"]["model"]) / "model.safetensors"
    made_at = cold_start_model.stat().st_mtime_ns

    capsys.readouterr()
    with Store() as store:  # `aha runs resume ID` hands a pipeline to `aha pipeline resume`
        assert run_index.resume_plan(store, str(before["run_id"]), events="jsonl").argv == [
            "pipeline", "resume", str(killed.resolve()), "--events", "jsonl"]
    assert cli.main(["runs", "resume", str(before["run_id"]), "--events", "jsonl"]) == 0
    resumed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert resumed[-1]["type"] == "done" and resumed[-1]["status"] == "complete"
    ran = [event["stage"] for event in resumed if event["type"] == "log" and "stage_done" in event]
    assert ran == ["rejection", "rejection_sft", "final_rl", "eval", "export"]  # finished stages are not redone
    after = read_state(killed)
    assert after["stages"][0]["run_id"] == cold_start_run and cold_start_model.stat().st_mtime_ns == made_at
    assert trace_texts(killed) == trace_texts(straight)
    assert final_adapter(killed) == final_adapter(straight)
    with Store() as store:
        assert store.get_run(after["run_id"])["status"] == "complete"
        kinds = [run["kind"] for run in store.child_runs(after["run_id"])]
    # stage 3's generation is recorded twice (the killed one and the one that finished it), each a child
    assert kinds == ["distill-sft", "grpo", "generate", "generate", "distill-sft", "grpo", "eval", "export"]
    assert cli.main(["pipeline", "resume", str(killed)]) == 2
    assert "is complete" in capsys.readouterr().err

    # `aha runs rm` of a pipeline deletes its folder and its stage runs' records with it.
    with Store() as store:
        stage_ids = [run["id"] for run in store.child_runs(state["run_id"])]
        assert "with the stage runs in it" in run_index.deletion_question(store.get_run(state["run_id"]))
        with pytest.raises(AhaError, match="is a pipeline: start it again"):
            run_index.duplicate_settings(store.get_run(state["run_id"]))
        run_index.remove(store, str(state["run_id"]), lambda question: True)
        assert not straight.exists()
        remaining = {run["id"] for run in store.list_runs()}
        assert remaining.isdisjoint([state["run_id"], *stage_ids])


@pytest.mark.slow
def test_r1_mini_runs_the_four_stages_and_reports_the_last_against_the_cold_start(tmp_path, capsys):
    """The bundled r1-mini as it ships (the demo's settings, ~3 minutes on 2 cores): every stage a real run,
    the final evaluation's table against the cold start printed at the end."""
    out = tmp_path / "r1-mini"
    assert cli.main(["pipeline", "run", "r1-mini", "--out", str(out), "--events", "none"]) == 0
    printed = capsys.readouterr().out
    state = read_state(out)
    assert state["status"] == "complete"
    stages = {stage["name"]: stage for stage in state["stages"]}
    assert all(stage["status"] == "complete" for stage in stages.values())
    # the cold start learned the task from the base (its stop rule: 60 % held-out greedy), and so did the SFT of
    # the base on the kept samples (it reached the rule at ~310 of its 500 steps on the development machine)
    with Store() as store:
        for name, least in (("cold_start", 0.6), ("rejection_sft", 0.3)):
            accuracy = [value for _, value in store.metric_series(stages[name]["run_id"], "eval/accuracy")]
            assert accuracy[-1] >= least, (name, accuracy)
    kept = stages["rejection"]["metric"]
    assert kept["value"] > 0.1, kept  # rejection sampling kept a real share of the RL model's samples
    report = state["report"]
    assert report["baseline"] == "cold_start" and [model["label"] for model in report["models"]][0] == "cold_start"
    assert all(0 <= model["pass@1"] <= 1 for model in report["models"])
    assert "evaluation (eval):" in printed and "cold_start" in printed and f"{report['gain_points']:+.1f}" in printed
    assert Path(stages["export"]["outputs"]["gguf"]).stat().st_size > 0
