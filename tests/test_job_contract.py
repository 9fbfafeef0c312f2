"""The job contract, command by command, in real child processes: each long command's `--events jsonl` stream
(first `start`, progress placed in `stages`, every event of a known type and shape, exactly one final event,
the exit code), cancel by SIGTERM and by `cancel` on stdin at a random point of the work (exit 130,
`done{cancelled}`, nothing left beside an export's output, what is resumable resumed), and a bug in a job
(exit 1, one line, an `error` event, the traceback in run.log).

A cancel must land while the job runs: tests/support/slowed_cli.py runs `aha` with one function made slower
(a tensor's conversion, a download chunk, a prompt's verification), nothing else changed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import cli, events
from tests.fake_ollama import FakeOllama
from tests.support import platforms
from tests.support.char_model import make_char_model
from tests.support.fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[1]
HOW = ["SIGTERM", "stdin"]
TINY_GRPO = ["--dataset", "addition", "--prompts-per-step", "2", "--num-generations", "2",
             "--max-completion-length", "8", "--lora-r", "4", "--lora-alpha", "8", "--seed", "3", "--device", "cpu"]
TINY_SFT = ["--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "1e-3", "--device", "cpu",
            "--per-device-train-batch-size", "2", "--max-length", "64"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("contract")
    traces = folder / "traces.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "thinking": f"{a}+{b}={a + b}", "answer": str(a + b)}
            for a, b in ((12, 34), (5, 7), (40, 2), (9, 9))]
    traces.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"student": make_char_model(folder / "student"), "teacher": make_char_model(folder / "teacher", seed=1),
            "traces": traces}


@pytest.fixture
def hub(gguf_file, monkeypatch, tmp_path):
    """The fake Hub serving our f16 export of the tiny qwen2 as unsloth/Tiny-R1-GGUF/tiny.gguf."""
    server = FakeHub()
    server.add("unsloth/Tiny-R1-GGUF", "tiny.gguf", gguf_file("qwen2", "f16").read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    with server as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        yield server


# A job in a child process ---------------------------------------------------------------------------

class Child:
    """`aha ARGS --events jsonl` (or slowed: MODULE:ATTR sleeps SECONDS per call) with its events read as
    they come."""

    def __init__(self, *args: str, slow: tuple[str, float] | None = None):
        head = ["-m", "tests.support.slowed_cli", slow[0], str(slow[1])] if slow else ["-m", "engine.cli"]
        self.process = subprocess.Popen([sys.executable, *head, *args, "--events", "jsonl"], cwd=REPO,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.events: list[dict] = []

    def until(self, predicate) -> dict:
        """Read events until one satisfies predicate; returns it."""
        for line in self.process.stdout:
            event = json.loads(line)
            self.events.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"the job ended first: {self.events[-3:]} {self.process.stderr.read()}")

    def cancel(self, how: str) -> None:
        time.sleep(random.uniform(0.0, 0.2))  # a random point of the work
        if how == "stdin":
            self.process.stdin.write("cancel\n")
            self.process.stdin.flush()
        else:
            self.process.send_signal(signal.SIGTERM)

    def finish(self, timeout: float = 180) -> tuple[int, list[dict], str]:
        out, err = self.process.communicate(timeout=timeout)
        self.events += [json.loads(line) for line in out.splitlines()]
        return self.process.returncode, self.events, err


def run(*args: str) -> tuple[int, list[dict], str]:
    return Child(*args).finish()


def check_stream(stream: list[dict], kind: str, *, run: bool) -> dict:
    """The contract every job's stream keeps; returns the final event."""
    start = stream[0]
    assert start["type"] == "start" and start["kind"] == kind and start["pid"] > 0, stream[:2]
    if run:
        assert start["run_id"] is not None
    stages = start["stages"]
    for event in stream:
        assert event["v"] == events.VERSION
        events.parse(event)  # a known type, every field of its shape
    indexes = []
    for event in stream:
        if event["type"] == "progress":
            assert event["stage_count"] == len(stages) and stages[event["stage_index"]] == event["stage"], event
            indexes.append(event["stage_index"])
    assert indexes == sorted(indexes), "stages run in the order announced"
    finals = [event for event in stream if event["type"] in events.FINAL_TYPES]
    assert len(finals) == 1 and finals[0] is stream[-1], finals
    assert [event["type"] for event in stream].count("start") == 1
    return stream[-1]


def leftovers(folder: Path) -> list[str]:
    """Scratch files an export may leave: .X.partial-PID, .X.work/."""
    return sorted(path.name for path in folder.iterdir() if ".partial" in path.name or path.name.endswith(".work"))


# Each command's stream --------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--type", "q4_k_m"], ["--type", "q8_0", "--ollama", "aha-r1:contract"]],
                         ids=["f16", "q4_k_m", "ollama"])
def test_export_stream(checkpoint, tmp_path, extra, monkeypatch):
    with FakeOllama() as url:
        monkeypatch.setenv("OLLAMA_HOST", url)
        code, stream, err = run("export", str(checkpoint("qwen2")), "-o", str(tmp_path / "m.gguf"), *extra)
    assert code == 0 and err == "", err  # nothing on stderr: no library chatter either
    done = check_stream(stream, "export", run=True)
    assert done["status"] == "complete" and done["result"]["gguf"] == str(tmp_path / "m.gguf")
    stages = stream[0]["stages"]
    assert stages == {0: ["write"], 1: ["write", "quantize"], 2: ["write", "register"]}[len(extra) // 2]
    assert {event["stage"] for event in stream if event["type"] == "progress"} == set(stages)
    scratch = [event for event in stream if event["type"] == "artifact" and not event["final"]]
    assert bool(scratch) == ("q4_k_m" in extra)  # the f16 a k-quant is made from: scratch, removed
    assert leftovers(tmp_path) == []
    from engine.store import Store

    with Store() as store:
        row = store.get_run(stream[0]["run_id"])
        assert (row["kind"], row["status"]) == ("export", "complete")
        assert str(tmp_path / "m.gguf") in {artifact["path"] for artifact in store.run_artifacts(row["id"])}


def test_pull_stream(hub):
    code, stream, err = run("models", "pull", "unsloth/Tiny-R1-GGUF", "tiny.gguf")
    assert code == 0 and err == "", err  # nothing on stderr: no library chatter either
    done = check_stream(stream, "pull", run=False)
    assert done["status"] == "complete" and Path(done["result"]["path"]).is_file()
    assert stream[0]["stages"] == ["download", "verify"]


def test_generate_stream(adder, tmp_path):
    out = tmp_path / "traces.jsonl"
    code, stream, err = run("distill", "generate", "--teacher", adder, "--model", "adder", "--dataset", "addition",
                            "--limit", "3", "-k", "2", "-o", str(out))
    assert code == 0 and err == "", err  # nothing on stderr: no library chatter either
    done = check_stream(stream, "generate", run=True)
    assert done["status"] == "complete" and done["result"]["kept"] == 3  # the adder says the same thing twice
    samples = [event for event in stream if event["type"] == "sample"]
    assert len(samples) == 3 and all(len(sample["completions"]) == 2 for sample in samples)
    assert [[completion["accepted"] for completion in sample["completions"]] for sample in samples] == \
        [[True, False]] * 3  # the duplicate is not kept
    counts = [(event["accepted"], event["kept"]) for event in stream if event["type"] == "metrics"]
    assert counts == [(2, 1), (4, 2), (6, 3)]  # acceptance counts in metrics, not in the sample


def test_grpo_stream(work, tmp_path):
    run_dir = tmp_path / "run"
    code, stream, err = run("grpo", "--model", str(work["student"]), *TINY_GRPO, "--max-steps", "2",
                            "--output-dir", str(run_dir))
    assert code == 0 and err == "", err  # nothing on stderr: no library chatter either
    done = check_stream(stream, "grpo", run=True)
    assert stream[0]["run_dir"] == str(run_dir) and stream[0]["stages"] == ["load", "train"]
    assert done["result"]["step"] == 2 and Path(done["result"]["adapter"]).is_dir()
    phases = [event.get("phase") for event in stream if event["type"] == "progress"]
    assert {"model", "rollout", "update"} <= set(phases), phases  # loading and the first rollout report too
    samples = [event for event in stream if event["type"] == "sample"]
    assert len(samples) == 4  # 2 steps × 2 prompts, each with its 2 completions
    completion = samples[0]["completions"][0]
    assert set(completion) == {"text", "thinking", "answer_text", "rewards", "reward", "advantage", "accepted",
                               "length", "truncated", "extracted", "thinking_length"}


@pytest.mark.parametrize("action", ["sft", "kd"])
def test_distill_training_stream(work, tmp_path, action):
    teacher = ["--teacher", str(work["teacher"])] if action == "kd" else []
    code, stream, err = run("distill", action, "--student", str(work["student"]), *teacher, "--traces",
                            str(work["traces"]), *TINY_SFT, "--max-steps", "2", "--output-dir", str(tmp_path / "run"))
    assert code == 0 and err == "", err  # nothing on stderr: no library chatter either
    done = check_stream(stream, f"distill-{action}", run=True)
    assert done["status"] == "complete" and done["result"]["step"] == 2


def test_a_user_error_is_an_error_event_and_exit_2(tmp_path):
    code, stream, err = run("export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.gguf"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("aha: error: ")
    final = check_stream(stream, "export", run=False)
    assert final["type"] == "error" and final["exception"] is None and "nowhere" in final["message"]
    assert list(tmp_path.iterdir()) == []


# Cancel ----------------------------------------------------------------------------------------------

def check_cancelled(child: Child, kind: str, run: bool) -> dict:
    code, stream, err = child.finish()
    assert code == 130, err
    done = check_stream(stream, kind, run=run)
    assert done == {**done, "type": "done", "status": "cancelled"}
    return done


@platforms.posix_signals
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", ["f16", "q4_k_m"])
def test_cancel_export_leaves_nothing_and_the_old_file_untouched(checkpoint, tmp_path, how, kind):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"the user's earlier export")
    child = Child("export", str(checkpoint("qwen2")), "-o", str(out), "--type", kind, "--force",
                  slow=("engine.export.gguf_writer:blocks", 0.1))
    child.until(lambda event: event["type"] == "progress" and event["stage"] == "write")
    child.cancel(how)
    check_cancelled(child, "export", run=True)
    assert out.read_bytes() == b"the user's earlier export"
    assert leftovers(tmp_path) == [] and sorted(path.name for path in tmp_path.iterdir() if path.name != "aha-home") == ["m.gguf"]


@platforms.posix_signals
@pytest.mark.parametrize("how", HOW)
def test_cancel_pull_keeps_the_partial_and_the_next_pull_finishes(hub, tmp_path, how):
    child = Child("models", "pull", "unsloth/Tiny-R1-GGUF", "tiny.gguf",
                  slow=("engine.models.hub:_ProgressFile.write", 1.0))
    child.until(lambda event: event["type"] == "progress" and event["stage"] == "download")
    child.cancel(how)
    done = check_cancelled(child, "pull", run=False)
    assert "the same pull resumes it" in done["result"]["message"]
    code, stream, err = run("models", "pull", "unsloth/Tiny-R1-GGUF", "tiny.gguf")
    assert code == 0, err
    assert Path(stream[-1]["result"]["path"]).read_bytes() == hub.files["unsloth/Tiny-R1-GGUF", "tiny.gguf"].data


@platforms.posix_signals
@pytest.mark.parametrize("how", HOW)
def test_cancel_generate_keeps_the_traces_and_a_rerun_finishes(adder, tmp_path, how):
    out = tmp_path / "traces.jsonl"
    args = ["distill", "generate", "--teacher", adder, "--model", "adder", "--dataset", "addition", "--limit", "20",
            "-k", "1", "--concurrency", "1", "-o", str(out)]
    child = Child(*args, slow=("engine.distill.generate:verify", 0.1))
    child.until(lambda event: event["type"] == "sample")
    child.cancel(how)
    check_cancelled(child, "generate", run=True)
    written = len(out.read_text().splitlines())
    assert 1 <= written < 20
    code, stream, err = run(*args)
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 20 and stream[-1]["result"]["skipped"] == written


@platforms.posix_signals
@pytest.mark.parametrize("how", HOW)
def test_cancel_grpo_checkpoints_and_resume_matches_an_uninterrupted_run(work, tmp_path, how):
    """Cancelled after a random point past step 1, the run keeps a checkpoint of the step it finished and its
    resume ends with the weights of a run that was never interrupted."""
    from safetensors.torch import load_file

    args = ["grpo", "--model", str(work["student"]), *TINY_GRPO, "--max-steps", "4", "--save-steps", "100"]
    # Half a second more per step (the tiny steps take a tenth of one) lets the cancel land before the end.
    child = Child(*args, "--output-dir", str(tmp_path / "cancelled"), slow=("engine.train.grpo:GRPOStep.__call__", 0.5))
    child.until(lambda event: event["type"] == "metrics")
    child.cancel(how)
    done = check_cancelled(child, "grpo", run=True)
    assert 1 <= done["result"]["step"] < 4
    assert (tmp_path / "cancelled" / "checkpoints" / f"step-{done['result']['step']}").is_dir()
    code, stream, err = run("grpo", "--resume", str(tmp_path / "cancelled"))
    assert code == 0, err
    assert run(*args, "--output-dir", str(tmp_path / "straight"))[0] == 0
    weights = [load_file(tmp_path / name / "final" / "adapter" / "adapter_model.safetensors")
               for name in ("straight", "cancelled")]
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][name] == weights[1][name]).all() for name in weights[0])


@platforms.posix_signals
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("action", ["sft", "kd"])
def test_cancel_distill_training_and_resume(work, tmp_path, how, action):
    teacher = ["--teacher", str(work["teacher"])] if action == "kd" else []
    child = Child("distill", action, "--student", str(work["student"]), *teacher, "--traces", str(work["traces"]),
                  *TINY_SFT, "--max-steps", "50", "--output-dir", str(tmp_path / "run"))
    child.until(lambda event: event["type"] == "metrics")
    child.cancel(how)
    done = check_cancelled(child, f"distill-{action}", run=True)
    step = done["result"]["step"]
    code, stream, err = run("distill", action, "--resume", str(tmp_path / "run"), "--max-steps", str(step + 1))
    assert code == 0, err
    assert stream[-1]["result"]["step"] == step + 1


# A bug ---------------------------------------------------------------------------------------------

def test_a_bug_is_exit_1_one_line_an_error_event_and_the_traceback_in_run_log(work, tmp_path, capsys, monkeypatch):
    from engine.train.grpo import GRPOStep

    def broken(self, step):
        raise KeyError("injected")

    monkeypatch.setattr(GRPOStep, "__call__", broken)
    run_dir = tmp_path / "run"
    code = cli.main(["grpo", "--model", str(work["student"]), *TINY_GRPO, "--max-steps", "2",
                     "--output-dir", str(run_dir), "--events", "jsonl"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == (f"aha: internal error: KeyError: 'injected' (traceback in {run_dir / 'run.log'}); "
                            "please report it\n")
    stream = [json.loads(line) for line in captured.out.splitlines()]
    final = check_stream(stream, "grpo", run=True)
    assert final["type"] == "error" and final["exception"] == "KeyError"
    log = (run_dir / "run.log").read_text()
    assert "Traceback (most recent call last)" in log and "in broken" in log
    from engine.store import Store

    with Store() as store:
        assert store.get_run(stream[0]["run_id"])["status"] == "error"


def test_library_chatter_goes_to_run_log_not_the_terminal(tmp_path, capsys):
    """While a run's job runs, a library's logger warnings and warnings.warn land in run.log; after it,
    the terminal is as it was (library errors only)."""
    import logging

    from engine.jobs import library_chatter_to, quiet_libraries

    quiet_libraries()
    log = tmp_path / "run.log"
    undo = library_chatter_to(log)
    try:
        logging.getLogger("transformers.modeling_utils").warning("a deprecation nobody asked for")
        code = compile('import warnings\nwarnings.warn("kernel not found", UserWarning)', "/x/peft/tuners.py", "exec")
        exec(code, {})
    finally:
        undo()
    text = log.read_text()
    assert "a deprecation nobody asked for" in text and "kernel not found" in text
    assert capsys.readouterr().err == ""
    logging.getLogger("transformers.modeling_utils").warning("after the job")
    assert "after the job" not in log.read_text()


def test_a_running_job_claims_its_run_and_keeps_its_heartbeat(monkeypatch):
    """run_job marks the job's run as this process's and refreshes its heartbeat while the work runs
    (every HEARTBEAT_S, here shortened); the run ends with the job's status."""
    from engine import jobs
    from engine.store import Store

    monkeypatch.setattr(jobs, "HEARTBEAT_S", 0.05)
    with Store() as store:
        run_id = store.create_run("export", {}, status="created")
    beats = []

    def work(job):
        job.emit(jobs.make_event("start", kind="export", pid=os.getpid(), stages=[], run_id=run_id, run_dir=None))
        with Store() as store:
            for _ in range(3):
                time.sleep(0.2)
                beats.append(store.get_run(run_id)["heartbeat_at"])
            assert store.get_run(run_id)["pid"] == os.getpid()
        return {}

    assert jobs.run_job("export", work, None, stages=["write"], sink=jobs.ignore) == 0
    assert beats == sorted(beats) and len(set(beats)) == 3, beats
    with Store() as store:
        assert store.get_run(run_id)["status"] == "complete"
