"""`aha distill sft`: SFT of a student on teacher traces, built on engine.train.core and engine.train.sft.

End to end: traces from the scripted GGUF teacher (verified by the rewards), then LoRA SFT of the tiny
qwen2 student (an R1 template that pre-fills `<think>\\n`): the loss on the traces falls, and a run killed
with SIGKILL and resumed ends with the uninterrupted run's adapter weights exactly. Also the assistant turn
and its prefill, the one-line errors, and (slow) a programmatic teacher's addition traces teaching the
char-level student from scratch. `aha distill kd`: a few logit-distillation steps from the scripted
teacher lower kd_loss; a teacher with another tokenizer is refused with the reason; on-policy steps (lmbda)
train on the student's own samples, and `aha distill kd --resume` after a cut matches an uninterrupted run;
a teacher whose output layer is padded past the tokenizer (as Qwen's are) works.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.cli import main
from engine.distill.generate import generate_traces
from engine.distill.kd import KDConfig, train_kd_on_traces
from engine.distill.teachers import OpenAITeacher, Sampling
from engine.distill.traces import (
    TaskTraces,
    TraceSFTConfig,
    completion_after_prefill,
    load_traces,
    trace_completion,
    train_sft_on_traces,
)
from engine.errors import AhaError
from engine.train.core import load_tokenizer
from engine.train.data import TaskSource
from tests.support import platforms
from tests.support.char_model import make_char_model
from tests.support.llama_server import serve_gguf
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"learning_rate": 0.01, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "save_steps": 1, "seed": 7,
            "per_device_train_batch_size": 2, "lr_scheduler_type": "constant", "max_length": 256}


@pytest.fixture(scope="module")
def traces(scripted_gguf, tmp_path_factory) -> Path:
    """Verified traces of the scripted teacher, served by llama_cpp.server on loopback: QUESTION is answered
    right for "4" and "2+2", wrong for "5"."""
    work = tmp_path_factory.mktemp("distill-sft")
    out = work / "traces.jsonl"
    rows = [{"prompt": QUESTION, "answer": "4"}, {"prompt": QUESTION, "answer": "5"},
            {"id": "again", "prompt": QUESTION, "answer": "2+2"}]
    with pytest.MonkeyPatch.context() as patch, serve_gguf(scripted_gguf, work / "server.log", "sk-loopback") as server:
        patch.setenv("AHA_TEST_SFT_TEACHER_KEY", "sk-loopback")  # for this fixture only, not later tests
        teacher = OpenAITeacher(server.url, api_key_env="AHA_TEST_SFT_TEACHER_KEY", concurrency=1)
        try:
            stats = generate_traces(teacher, rows, k=1, out_path=out,
                                    sampling=Sampling(temperature=0.0, max_tokens=200))
        finally:
            teacher.close()
    assert "AHA_TEST_SFT_TEACHER_KEY" not in os.environ
    assert stats.kept == 2
    return out


def config(student, traces, **changes) -> TraceSFTConfig:
    return TraceSFTConfig(model=str(student), traces=str(traces), **{**SETTINGS, **changes})


def adapter_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(run_dir) / "final" / "adapter" / "adapter_model.safetensors")


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_assistant_turn_after_the_templates_prefill(checkpoint, traces):
    assert trace_completion(" think ", "42\n") == "<think>\nthink\n</think>\n\n42"
    assert completion_after_prefill("<｜User｜>q<｜Assistant｜><think>\n", "<think>\nx\n</think>\n\n1") == "x\n</think>\n\n1"
    assert completion_after_prefill("q", "<think>\nx\n</think>\n\n1") == "<think>\nx\n</think>\n\n1"
    tokenizer = load_tokenizer(checkpoint("qwen2"))  # the R1 template pre-fills <think>\n
    [row] = load_traces(config(checkpoint("qwen2"), traces), tokenizer)  # the two lines are one trace
    assert row == {"prompt": QUESTION, "answer": "4", "completion": f"{THOUGHT.strip()}\n</think>\n\n{ANSWER}"}


@platforms.posix_signals
def test_sft_loss_falls_and_resume_after_sigkill_matches(checkpoint, traces, tmp_path, capsys):
    """Run A uninterrupted in this process; run B in a child `aha distill sft` killed with SIGKILL right after
    step 2's checkpoint, then resumed with --resume: B ends with A's adapter weights exactly."""
    student = checkpoint("qwen2")
    straight = train_sft_on_traces(config(student, traces, max_steps=4, output_dir=str(tmp_path / "straight")))
    assert straight["status"] == "complete" and straight["step"] == 4
    curve = losses(straight["run_dir"])
    assert curve[-1] < curve[0] * 0.9, curve
    with capsys.disabled():
        print(f"\n[distill-sft] LoRA SFT loss on the traces {curve[0]:.3f} → {curve[-1]:.3f} in 4 steps")

    killed_dir = tmp_path / "killed"
    environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in SETTINGS.items()]
    command = [sys.executable, "-m", "engine.cli", "distill", "sft", "--student", str(student), "--traces",
               str(traces), *flags, "--max-steps", "4", "--output-dir", str(killed_dir), "--events", "jsonl"]
    child = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    try:
        for line in child.stdout:
            event = json.loads(line)
            if event["type"] == "artifact" and event.get("kind") == "checkpoint" and event["step"] == 2:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert not (killed_dir / "final").exists()
    resumed = subprocess.run([sys.executable, "-m", "engine.cli", "distill", "sft", "--resume", str(killed_dir),
                              "--events", "jsonl"], cwd=REPO, env=environment, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads(resumed.stdout.splitlines()[-1])
    assert done["type"] == "done" and done["status"] == "complete" and done["result"]["step"] == 4
    steps = [json.loads(line)["step"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    expected, actual = adapter_weights(straight["run_dir"]), adapter_weights(killed_dir)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_errors_are_one_line(checkpoint, tmp_path, capsys):
    student = checkpoint("qwen2")
    capsys.readouterr()  # what building the fixture printed (when this test is the first to need it)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "thinking": "t", "answer": "a"}) + "\n"
                   + json.dumps({"prompt": "q", "answer": "a"}) + "\n")
    with pytest.raises(AhaError, match=r"line 2 has no column 'thinking'"):
        train_sft_on_traces(config(student, bad, output_dir=str(tmp_path / "a")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "q", "thinking": "t", "answer": " ", "reward": 1.0}) + "\n"
                     + json.dumps({"prompt": "q2", "thinking": "t", "answer": "a", "reward": 0.5}) + "\n")
    with pytest.raises(AhaError, match="no traces left"):
        train_sft_on_traces(config(student, empty, min_reward=1.0, output_dir=str(tmp_path / "b")))
    assert main(["distill", "sft", "--student", str(student), "--traces", str(bad), "--output-dir",
                 str(tmp_path / "c")]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "line 2" in message
    with pytest.raises(AhaError, match="eval_steps needs held-out prompts"):
        config(student, bad, eval_steps=5).validate()
    with pytest.raises(AhaError, match="cannot change"):
        train_sft_on_traces(resume=tmp_path, overrides={"learning_rate": 1.0})


def test_cli_sft_learns_the_built_in_tasks_own_traces(checkpoint, tmp_path, capsys):
    """`aha distill sft --dataset addition` without --traces trains on the task's programmatic teacher traces
    (after the student template's `<think>\\n` prefill) and evaluates on the task's held-out split."""
    student = checkpoint("qwen2")
    run_dir = tmp_path / "run"
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in SETTINGS.items()]
    assert main(["distill", "sft", "--student", str(student), "--dataset", "addition", *flags, "--max-steps", "2",
                 "--eval-steps", "2", "--eval-samples", "2", "--max-completion-length", "8",
                 "--output-dir", str(run_dir), "--events", "jsonl"]) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (done["type"], done["status"], done["result"]["step"]) == ("done", "complete", 2)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "loss" in record] == [1, 2]
    assert math.isfinite(records[-1]["eval/loss"]) and "eval/accuracy" in records[-1]

    row = TaskSource("addition", seed=SETTINGS["seed"]).row(0)  # "<think>\n5+8=13\n…\n</think>\n1376"
    thinking, answer = row["completion"].removeprefix("<think>\n").split("</think>\n")
    assert TaskTraces(TaskSource("addition", seed=SETTINGS["seed"]), load_tokenizer(student)).row(0) == {
        **row, "completion": f"{thinking}</think>\n\n{answer}"}
    with pytest.raises(AhaError, match=r"no traces given: pass --traces .* or --dataset addition or arithmetic"):
        TraceSFTConfig(model=str(student), dataset=str(tmp_path / "heldout.jsonl")).validate()


@pytest.fixture
def kd_teacher(checkpoint, tiny_dir, tmp_path):
    """The scripted teacher: the qwen2 student fine-tuned, whose saved tokenizer gained <|endoftext|>; it
    gets the student's tokenizer files."""
    student, teacher = checkpoint("qwen2"), tmp_path / "teacher"
    shutil.copytree(tiny_dir / "scripted", teacher)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (student / name).exists():
            shutil.copy(student / name, teacher / name)
    return teacher


def test_kd_steps_lower_kd_loss_and_a_foreign_tokenizer_is_refused(checkpoint, traces, kd_teacher, tmp_path, capsys):
    student, teacher = checkpoint("qwen2"), kd_teacher
    result = train_kd_on_traces(KDConfig(model=str(student), teacher=str(teacher), traces=str(traces), max_steps=4,
                                         output_dir=str(tmp_path / "kd"), **SETTINGS))
    assert result["status"] == "complete" and Path(result["adapter"]).is_dir()
    records = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    curve = [record["kd_loss"] for record in records]
    assert curve[-1] < curve[0] * 0.9, curve
    with capsys.disabled():
        print(f"\n[distill-kd] kd_loss {curve[0]:.3f} → {curve[-1]:.3f} in 4 steps")
    char = make_char_model(tmp_path / "char")
    with pytest.raises(AhaError, match=r"teacher's tokenizer differs from the student's \(\d+ vs 20 tokens"):
        train_kd_on_traces(KDConfig(model=str(student), teacher=str(char), traces=str(traces),
                                    output_dir=str(tmp_path / "refused")))
    with pytest.raises(AhaError, match="kd_kind must be one of"):
        KDConfig(model=str(student), teacher=str(teacher), traces=str(traces), kd_kind="l2").validate()


def test_kd_on_policy_steps_and_cli_resume_match(checkpoint, kd_teacher, traces, tmp_path):
    """lmbda = 0.5: some steps train on the student's own samples (the choice and the samples come from
    the checkpointed RNG). `aha distill kd` cut after 2 steps and resumed to 4 ends with the weights of an
    uninterrupted 4-step run."""
    student = checkpoint("qwen2")
    settings = dict(model=str(student), teacher=str(kd_teacher), traces=str(traces), lmbda=0.5,
                    max_completion_length=24, kd_kind="jsd", **SETTINGS)
    whole = train_kd_on_traces(KDConfig(max_steps=4, output_dir=str(tmp_path / "whole"), **settings))
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert sorted({record["on_policy"] for record in records}) == [0.0, 1.0], records
    # A divergence is ≥ 0 by construction; > 0 says the two models' logits really differ on every step
    # (0 would mean the student was scored against itself, e.g. the teacher forward given the student's model).
    assert all(math.isfinite(record["kd_loss"]) and record["kd_loss"] > 1e-3 for record in records), records

    toml = tmp_path / "kd.toml"
    toml.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    cut = tmp_path / "cut"
    assert main(["distill", "kd", "--config", str(toml), "--max-steps", "2", "--output-dir", str(cut),
                 "--events", "jsonl"]) == 0
    assert main(["distill", "kd", "--resume", str(cut), "--max-steps", "4", "--events", "jsonl"]) == 0
    expected, actual = adapter_weights(whole["run_dir"]), adapter_weights(cut)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    resumed = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["on_policy"] for r in resumed] == [r["on_policy"] for r in records]

    # On-policy only: every step's sequences are the student's samples (the traces' answers are not used).
    only = train_kd_on_traces(KDConfig(**{**settings, "lmbda": 1.0}, max_steps=1, output_dir=str(tmp_path / "only")))
    assert json.loads((Path(only["run_dir"]) / "metrics.jsonl").read_text().splitlines()[0])["on_policy"] == 1.0
    with pytest.raises(AhaError, match="lmbda is the fraction of on-policy steps"):
        KDConfig(**{**settings, "lmbda": 1.5}).validate()


def test_kd_teacher_with_an_output_layer_padded_past_the_tokenizer(checkpoint, kd_teacher, traces, tmp_path):
    """Qwen2.5-1.5B and -7B pad their output layers to different sizes for one tokenizer: the logits are
    compared over the tokenizer's tokens only."""
    from transformers import AutoModelForCausalLM

    student = checkpoint("qwen2")
    model = AutoModelForCausalLM.from_pretrained(kd_teacher)
    size = len(load_tokenizer(student))
    model.resize_token_embeddings(size + 13)
    model.save_pretrained(kd_teacher)
    result = train_kd_on_traces(KDConfig(model=str(student), teacher=str(kd_teacher), traces=str(traces), max_steps=2,
                                         output_dir=str(tmp_path / "kd"), **SETTINGS))
    assert result["status"] == "complete"
    model.resize_token_embeddings(size - 1)
    model.save_pretrained(kd_teacher)
    with pytest.raises(AhaError, match=rf"teacher's output layer has {size - 1} rows but the tokenizer has {size} tokens"):
        train_kd_on_traces(KDConfig(model=str(student), teacher=str(kd_teacher), traces=str(traces), max_steps=1,
                                    output_dir=str(tmp_path / "small")))


def programmatic_distillation(work: Path, seed: int = 0, target: float = 0.25, max_steps: int = 1000) -> dict:
    """16,000 of the addition task's programmatic teacher traces written as a traces file, then full SFT of a
    random-init char-level student on them (batch 64, lr 2e-3) until held-out-200 greedy accuracy (checked
    every 10 steps) reaches `target`. bench/learning.py runs it over seeds to 40 %. (That learning from scratch
    is tested by tests/test_demo.py's slow demo, whose cold start is `aha distill sft` on the task's traces.)"""
    source = TaskSource("addition", seed=seed)
    path = work / "addition.jsonl"
    with open(path, "w", encoding="utf-8") as stream:
        for index in range(16_000):
            row = source.row(index)
            thinking, _, answer = row["completion"].removeprefix("<think>\n").partition("</think>\n")
            stream.write(json.dumps({"prompt": row["prompt"], "thinking": thinking, "answer": answer,
                                     "gold": row["answer"]}) + "\n")
    student = make_char_model(work / "char", seed=seed)
    return train_sft_on_traces(TraceSFTConfig(
        model=str(student), traces=str(path), dataset="addition", use_peft=False, learning_rate=2e-3,
        lr_scheduler_type="constant", per_device_train_batch_size=64, max_steps=max_steps, eval_steps=10,
        eval_samples=200, stop_at_accuracy=target, max_completion_length=48, seed=seed, save_steps=10_000,
        output_dir=str(work / "run")))
