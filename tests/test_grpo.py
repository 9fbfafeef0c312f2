"""The GRPO loop on the tiny char model: metrics and rollouts recorded (in the run directory and the store),
every loss type and option path runs, no reference forward when β = 0, exact resume after SIGKILL and after
SIGTERM or SIGINT, the `aha grpo` command with TOML + flags + JSON-lines events, and the one-line errors a
user meets."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine import cli
from engine.errors import AhaError
from engine.train.grpo import GRPOConfig, group_advantages, grpo_loss, load_grpo_config, train
from tests.support import platforms
from tests.support.char_model import make_char_model

REPO = Path(__file__).resolve().parents[1]
# Rewards the random-init model can earn, so advantages (and gradients) are not all zero.
REWARD_FILE = """
def sevens(prompts, completions, **columns):
    return [completion.count("7") / 4 for completion in completions]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpo")
    model = make_char_model(folder / "char")
    reward = folder / "reward.py"
    reward.write_text(REWARD_FILE)
    return model, reward


def tiny(setup, **changes) -> GRPOConfig:
    model, reward = setup
    settings = dict(model=str(model), dataset="addition", rewards=(f"{reward}:sevens", "format"),
                    reward_weights=(1.0, 0.2), prompts_per_step=4, num_generations=4, max_completion_length=12,
                    max_steps=4, learning_rate=1e-2, lora_r=4, lora_alpha=8, lora_dropout=0.1, save_steps=1,
                    seed=7, loss_type="grpo", lr_scheduler_type="constant")
    return GRPOConfig(**{**settings, **changes})


def adapter_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(run_dir) / "final" / "adapter" / "adapter_model.safetensors")


def test_public_api_reexports_the_math():
    from engine.train import grpo_math

    assert group_advantages is grpo_math.group_advantages and grpo_loss is grpo_math.grpo_loss


def test_steps_record_every_metric_and_rollout(setup, tmp_path):
    """β > 0 (reference = adapter disabled), μ = 2, gradient accumulation, DAPO aggregation, masked
    truncations and a held-out evaluation, all in one short run."""
    events = []
    config = tiny(setup, output_dir=str(tmp_path / "run"), max_steps=2, beta=0.04, num_iterations=2,
                  gradient_accumulation_steps=2, loss_type="dapo", mask_truncated_completions=True,
                  rewards=("accuracy", "format", f"{setup[1]}:sevens"), reward_weights=(1.0, 0.2, 1.0),
                  eval_steps=2, eval_samples=4, lora_dropout=0.0)  # no dropout noise in the KL below
    result = train(config, on_event=events.append)
    assert result["status"] == "complete" and result["step"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in metrics] == [1, 2]
    expected = {"reward", "reward_std", "rewards/accuracy/mean", "rewards/format/mean", "rewards/sevens/mean",
                "accuracy", "frac_reward_zero_std", "completions/mean_length", "completions/min_length",
                "completions/max_length", "completions/clipped_ratio", "completions/mean_terminated_length",
                "kl", "clip_ratio/low", "clip_ratio/high", "clip_ratio/region", "ratio_mean", "entropy", "loss",
                "grad_norm", "learning_rate", "generation_s", "training_s", "tokens_per_s", "eval/accuracy"}
    assert expected <= set(metrics[-1]), expected - set(metrics[-1])
    assert metrics[-1]["kl"] > 1e-6  # logged, and positive once the policy has moved (see the next test)
    assert metrics[-1]["entropy"] > 0 and 0 < metrics[-1]["completions/max_length"] <= 12
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 4 and all(len(sample["completions"]) == 4 for sample in samples)
    completion = samples[0]["completions"][0]
    assert {"text", "thinking", "answer_text", "reward", "rewards", "advantage", "length", "truncated"} <= set(completion)
    assert set(completion["rewards"]) == {"accuracy", "format", "sevens"}
    for sample in samples:  # advantages are centred within each group
        assert abs(sum(entry["advantage"] for entry in sample["completions"])) < 1e-4
    assert {event["type"] for event in events} >= {"progress", "metrics", "sample", "artifact", "log"}
    progress = [event for event in events if event["type"] == "progress"]
    assert {"eta_s", "generation_s", "training_s", "step"} <= set(progress[-1])
    weights = adapter_weights(result["run_dir"])
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in weights.items())


def test_kl_is_measured_against_the_model_with_its_adapter_disabled(setup, tmp_path):
    """μ = 1, no dropout: at step 1 the adapter is still the identity (lora_B = 0), so the policy equals the
    reference and the k3 KL is exactly 0; after one update it is positive. A reference forward that left the
    adapter on would be the policy itself and give 0 at step 2 too."""
    train(tiny(setup, output_dir=str(tmp_path / "run"), max_steps=2, beta=0.04, lora_dropout=0.0))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["kl"] == pytest.approx(0, abs=1e-7) and metrics[1]["kl"] > 1e-7, metrics


def test_tensorboard_scalars_and_a_resume_purges_the_replayed_steps(setup, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train(tiny(setup, output_dir=str(run_dir), max_steps=3, report_to=("tensorboard",)))
    # As after a crash between step 2's checkpoint and step 3's: the resume replays step 3.
    shutil.rmtree(run_dir / "checkpoints" / "step-3")
    train(resume=run_dir, overrides={"max_steps": 4})

    def scalars(name: str) -> list[tuple[int, float]]:
        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        return [(event.step, event.value) for event in events.Scalars(name)]

    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in scalars("reward")] == [1, 2, 3, 4]  # step 3 once: the first one was purged
    assert [value for _, value in scalars("reward")] == pytest.approx([line["reward"] for line in logged], abs=1e-6)
    assert {"loss", "grad_norm", "completions/mean_length"} <= set(EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()["scalars"])


def test_tensorboard_missing_is_one_line(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(AhaError, match=r"^report_to = tensorboard needs the tensorboard package: pip install tensorboard$"):
        train(tiny(setup, output_dir=str(tmp_path / "run"), max_steps=1, report_to=("tensorboard",)))
    with pytest.raises(AhaError, match="report_to knows tensorboard"):
        tiny(setup, report_to=("wandb",)).validate()


def test_full_fine_tuning_with_a_reference_copy(setup, tmp_path):
    """No adapter to disable: β > 0 needs a frozen copy of the starting weights. Step 1 compares the model
    with an identical copy (KL 0); after one update the KL against the copy is positive (a reference that
    shared the policy's weights, or followed its updates, would stay at 0)."""
    result = train(tiny(setup, output_dir=str(tmp_path / "run"), max_steps=2, use_peft=False, beta=0.1,
                        loss_type="dr_grpo", learning_rate=1e-4))
    assert result["status"] == "complete" and Path(result["model"], "model.safetensors").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["kl"] == pytest.approx(0, abs=1e-7) and metrics[1]["kl"] > 1e-7, metrics


def test_gradient_checkpointing_gives_the_same_step(setup, tmp_path):
    """Recomputing activations in backward changes memory, not the result."""
    plain = train(tiny(setup, output_dir=str(tmp_path / "plain"), max_steps=2, lora_dropout=0.0))
    checkpointed = train(tiny(setup, output_dir=str(tmp_path / "checkpointed"), max_steps=2, lora_dropout=0.0,
                              gradient_checkpointing=True))
    expected, actual = adapter_weights(plain["run_dir"]), adapter_weights(checkpointed["run_dir"])
    assert all(torch.allclose(expected[name], actual[name], atol=1e-6) for name in expected)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_length_grouped_micro_batches_give_the_whole_batchs_gradient(setup, tmp_path, monkeypatch, loss_type):
    """gradient_accumulation_steps = 4 sorts the 16 rollouts by length and cuts each micro-batch after its
    longest completion; the weighted micro-batch losses add up to the whole batch's, for every aggregation:
    the first step's accumulated gradient (same rollouts) is the whole batch's. (Weights after AdamW are no
    test: its first step moves every parameter by ±lr whatever the gradient's size, rounding noise too.)"""
    from engine.train.core import Trainer

    gradients: list[dict[str, torch.Tensor]] = []
    original = Trainer.optimizer_step

    def record(self):
        gradients.append({name: parameter.grad.clone() for name, parameter in self.model.named_parameters()
                          if parameter.grad is not None})
        return original(self)

    monkeypatch.setattr(Trainer, "optimizer_step", record)
    for name, accumulation in (("whole", 1), ("parts", 4)):
        train(tiny(setup, output_dir=str(tmp_path / name), max_steps=1, lora_dropout=0.0, loss_type=loss_type,
                   beta=0.04, gradient_accumulation_steps=accumulation))
    whole, parts = gradients
    assert whole.keys() == parts.keys() and any(tensor.abs().sum() > 0 for tensor in whole.values())
    for name in whole:
        assert torch.allclose(whole[name], parts[name], rtol=1e-4, atol=1e-7), name


def test_micro_batches_cut_padding_after_each_ones_longest_completion():
    from engine.train.grpo import micro_batches

    lengths = [5, 1, 3, 2]
    completion = torch.zeros(4, 5, dtype=torch.long)
    for row, length in enumerate(lengths):
        completion[row, :length] = 10 + row
    prompt = torch.ones(4, 2, dtype=torch.long)
    ids, attention = torch.cat([prompt, completion], 1), torch.cat([prompt, (completion > 0).long()], 1)
    parts = micro_batches(ids, attention, completion, (completion > 0).long(), torch.arange(4.0), 2)
    assert [part.advantages.tolist() for part in parts] == [[1.0, 3.0], [2.0, 0.0]]  # shortest first
    assert [tuple(part.ids.shape) for part in parts] == [(2, 2 + 2), (2, 2 + 5)]
    assert parts[0].completion_ids.tolist() == [[11, 0], [13, 13]]


@platforms.posix_signals
def test_resume_after_sigkill_matches_an_uninterrupted_run(setup, tmp_path):
    """Run A uninterrupted in this process; run B in a child process killed with SIGKILL right after
    step 2's checkpoint, then resumed with `aha grpo --resume`: B ends with A's adapter weights exactly.
    Sampling, LoRA dropout (0.1) and the data order all depend on the restored state."""
    straight = train(tiny(setup, output_dir=str(tmp_path / "straight")))
    toml = tmp_path / "run.toml"
    toml.write_text("\n".join(f"{key} = {json.dumps(value)}" for key, value in {
        "model": str(setup[0]), "dataset": "addition", "rewards": [f"{setup[1]}:sevens", "format"],
        "reward_weights": [1.0, 0.2], "prompts_per_step": 4, "num_generations": 4, "max_completion_length": 12,
        "learning_rate": 0.01, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "save_steps": 1, "seed": 7,
        "loss_type": "grpo", "lr_scheduler_type": "constant"}.items()) + "\n")
    killed_dir = tmp_path / "killed"
    environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    command = [sys.executable, "-m", "engine.cli", "grpo", "--config", str(toml), "--max-steps", "4",
               "--output-dir", str(killed_dir), "--events", "jsonl"]
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
    resumed = subprocess.run([sys.executable, "-m", "engine.cli", "grpo", "--resume", str(killed_dir),
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
    before = adapter_weights(straight["run_dir"])  # and the run did learn something
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in before.items())


@platforms.posix_signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_cancels_with_a_checkpoint_and_resume_matches(setup, tmp_path, signum):
    """SIGTERM (what the GUI's cancel sends) or SIGINT (Ctrl+C) during step 1: the run stops after that step
    with status `cancelled` and a checkpoint of it, and a resume ends with the uninterrupted run's weights."""
    straight = train(tiny(setup, output_dir=str(tmp_path / "straight"), max_steps=3))

    def on_event(event):
        if event["type"] == "metrics" and event["step"] == 1:
            os.kill(os.getpid(), signum)

    config = tiny(setup, output_dir=str(tmp_path / "cancelled"), max_steps=3, save_steps=100)
    result = train(config, on_event=on_event)
    assert result == {"status": "cancelled", "run_dir": str(tmp_path / "cancelled"), "step": 1}
    assert (tmp_path / "cancelled" / "checkpoints" / "step-1" / "adapter").is_dir()
    finished = train(resume=tmp_path / "cancelled")
    assert finished["status"] == "complete" and finished["step"] == 3
    expected, actual = adapter_weights(straight["run_dir"]), adapter_weights(finished["run_dir"])
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    with pytest.raises(AhaError, match="lora_r cannot change"):
        train(resume=tmp_path / "cancelled", overrides={"lora_r": 8})


def test_cli_toml_flags_and_jsonl_events(setup, tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(f'model = "{setup[0]}"\ndataset = "addition"\nrewards = ["{setup[1]}:sevens"]\n'
                    'num_generations = 8\nmax_steps = 50\nprompts_per_step = 2\nmax_completion_length = 8\n'
                    "learning_rate = 1e-3\n")
    code = cli.main(["grpo", "--config", str(toml), "--num-generations", "4", "--max-steps", "2",
                     "--loss-type", "dr_grpo", "--no-use-peft", "--use-peft", "--events", "jsonl"])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["type"] == "done" and events[-1]["status"] == "complete"
    run_dir = Path(events[-1]["result"]["run_dir"])
    assert run_dir.parent == Path(os.environ["AHA_HOME"]) / "runs"  # output_dir unset: under the data dir
    assert [event["step"] for event in events if event["type"] == "metrics"] == [1, 2]
    saved = load_grpo_config(run_dir / "config.toml")
    assert (saved.num_generations, saved.max_steps, saved.loss_type, saved.learning_rate) == (4, 2, "dr_grpo", 1e-3)
    assert {event["type"] for event in events} >= {"progress", "metrics", "sample", "artifact", "log", "done"}


# One-line errors ----------------------------------------------------------------------------------


def one_line_cli_error(args, capsys) -> str:
    assert cli.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("aha: error: ") and "\n" not in error
    return error


def test_error_model_folder_missing(setup, tmp_path, capsys):
    error = one_line_cli_error(["grpo", "--model", str(tmp_path / "nowhere"), "--dataset", "addition"], capsys)
    assert f"model folder {tmp_path / 'nowhere'} not found" in error
    assert not (Path(os.environ["AHA_HOME"]) / "runs").exists() or not any((Path(os.environ["AHA_HOME"]) / "runs").iterdir())


def test_error_dataset_column_missing(setup, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "1+1=", "answer": "2"}\n')
    error = one_line_cli_error(["grpo", "--model", str(setup[0]), "--dataset", str(data)], capsys)
    assert f"{data} line 1 has no column 'prompt' (map yours with --prompt-column)" in error


def test_error_reward_file_import(setup, tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("def reward(prompts, completions:\n")
    error = one_line_cli_error(["grpo", "--model", str(setup[0]), "--dataset", "addition",
                                "--rewards", f"{broken}:reward"], capsys)
    assert f"cannot import reward file {broken}" in error


def test_error_4bit_without_cuda(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AHA_ALLOW_CPU_4BIT", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    error = one_line_cli_error(["grpo", "--model", str(setup[0]), "--dataset", "addition", "--load-in-4bit",
                                "--output-dir", str(tmp_path / "run")], capsys)
    assert error.startswith("aha: error: 4-bit needs CUDA")


def test_error_cuda_out_of_memory(setup, tmp_path, monkeypatch):
    import engine.train.grpo

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine.train.grpo, "_sample", out_of_memory)
    with pytest.raises(AhaError) as error:
        train(tiny(setup, output_dir=str(tmp_path / "run")))
    assert str(error.value) == ("CUDA out of memory during generation at step 1: lower prompts_per_step (now 4), "
                                "num_generations (now 4), max_completion_length (now 12); gradient_checkpointing = "
                                "true and load_in_4bit = true also save memory")


def test_config_errors(setup, tmp_path):
    with pytest.raises(AhaError, match="no dataset given"):
        load_grpo_config(None, {"model": "m"})
    with pytest.raises(AhaError, match="loss_type must be one of grpo, dapo, dr_grpo"):
        load_grpo_config(None, {"model": "m", "dataset": "addition", "loss_type": "ppo"})
    with pytest.raises(AhaError, match="must divide prompts_per_step × num_generations"):
        load_grpo_config(None, {"model": "m", "dataset": "addition", "gradient_accumulation_steps": 3})
    with pytest.raises(AhaError, match="2 rewards but 1 reward_weights"):
        load_grpo_config(None, {"model": "m", "dataset": "addition", "reward_weights": [1.0]})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(AhaError, match="already holds a run: resume it with --resume"):
        train(tiny(setup, output_dir=str(tmp_path / "run")))


def test_qlora_step_on_a_4bit_base(setup, tmp_path, monkeypatch):
    """QLoRA's code path — a bitsandbytes NF4 base with LoRA on top — runs GRPO steps on CPU behind the
    test/bench-only switch AHA_ALLOW_CPU_4BIT (bitsandbytes' CPU kernels, fp32 compute). The CUDA path
    (bf16 compute) is tests/test_gpu.py's; a user on CPU gets the one-line "4-bit needs CUDA" instead."""
    monkeypatch.setenv("AHA_ALLOW_CPU_4BIT", "1")
    events = []
    result = train(tiny(setup, output_dir=str(tmp_path / "run"), max_steps=2, load_in_4bit=True, beta=0.04),
                   on_event=events.append)
    assert result["status"] == "complete"
    assert any("QLoRA r=4 on a 4-bit NF4 base" in event.get("message", "") for event in events)
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in adapter_weights(result["run_dir"]).items())


@platforms.mpi_on_linux
def test_two_processes_under_accelerate_launch(setup, tmp_path):
    """`accelerate launch --cpu --num_processes 2`: two CPU processes (gloo; accelerate starts them through
    mpirun, from the mpich wheel of the dev extra) each train on half of the prompts with DDP's averaged
    gradients; rank 0 alone writes the run, with every process's rollouts in its samples and metrics;
    every rank's RNG is checkpointed, and the job resumes under 2 processes."""
    import socket

    def free_port() -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return str(probe.getsockname()[1])

    toml = tmp_path / "run.toml"
    toml.write_text(f'model = "{setup[0]}"\ndataset = "addition"\nrewards = ["{setup[1]}:sevens"]\n'
                    'prompts_per_step = 4\nnum_generations = 4\nmax_completion_length = 12\nlearning_rate = 0.01\n'
                    'lora_r = 4\nlora_alpha = 8\nsave_steps = 1\n')
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost:2\n")  # MPICH's format: this machine, 2 slots
    run_dir = tmp_path / "run"
    bin_dir = Path(sys.executable).parent
    accelerate = [str(bin_dir / "accelerate"), "launch", "--cpu", "--num_processes", "2", "--mpirun_hostfile",
                  str(hostfile), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    environment = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}

    def launch(*args: str) -> list[dict]:
        done = subprocess.run([*accelerate, "--main_process_port", free_port(), "-m", "engine.cli", "grpo", *args,
                               "--events", "jsonl"], cwd=REPO, capture_output=True, text=True, timeout=180,
                              env=environment)
        assert done.returncode == 0, done.stderr[-2000:]
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    events = launch("--config", str(toml), "--max-steps", "2", "--output-dir", str(run_dir))
    assert [event["type"] for event in events].count("done") == 1  # rank 0 speaks for the job
    assert events[-1]["status"] == "complete" and events[-1]["result"]["step"] == 2
    assert any("cpu × 2 processes" in event.get("message", "") for event in events)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [sample["step"] for sample in samples] == [1] * 4 + [2] * 4  # both halves of 4 prompts per step
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for step in (1, 2):  # the logged reward is the mean over both processes' 16 completions
        rewards = [c["reward"] for s in samples if s["step"] == step for c in s["completions"]]
        assert len(rewards) == 16
        logged = next(m for m in metrics if m["step"] == step)
        assert logged["reward"] == pytest.approx(sum(rewards) / 16, abs=1e-6)
    assert sorted(path.name for path in (run_dir / "checkpoints" / "step-2").glob("rng*")) == ["rng-0.pt", "rng-1.pt"]
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in adapter_weights(run_dir).items())

    events = launch("--resume", str(run_dir), "--max-steps", "3")
    assert events[-1]["status"] == "complete" and events[-1]["result"]["step"] == 3
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_micro_batches_must_divide_each_processs_share(setup, monkeypatch):
    """4 prompts × 4 generations over 2 processes are 8 rollouts each: 16 micro-batches cannot split them
    (caught before any collective, so faked processes suffice)."""
    from engine.train import distributed

    monkeypatch.setattr(distributed, "init_distributed", lambda device="auto": distributed.Distributed(0, 2))
    monkeypatch.setattr(distributed, "close_distributed", lambda job: None)
    with pytest.raises(AhaError, match=r"gradient_accumulation_steps \(16\) must divide each process's 8 rollouts"):
        train(tiny(setup, gradient_accumulation_steps=16))


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, (0, 1, 0)),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, 1)),  # torchrun
    ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"}, (1, 2, 1)),  # MPICH / Intel MPI
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, (2, 3, 0)),
])
def test_launch_environment_reads_torchrun_and_mpi(environ, expected):
    from engine.train.distributed import launch_environment

    assert launch_environment(environ) == expected


def test_beta_zero_runs_no_reference_forward(setup, tmp_path, monkeypatch):
    """β = 0: in a real run of 2 steps × 2 micro-batches the reference context (adapter disabled) is never
    entered, peft's disable_adapter is never called and the only log-prob forwards are the policy's, one per
    micro-batch. β = 0.04, counted the same way: one reference context per step and a reference forward per
    micro-batch (so the counters do see the reference when there is one)."""
    from peft import PeftModel

    from engine.train.grpo import GRPOStep

    counts = {"context": 0, "disable_adapter": 0, "logp": 0}
    reference_context, disable_adapter, logp = GRPOStep._reference_context, PeftModel.disable_adapter, GRPOStep._logp

    def counting_context(self):
        counts["context"] += 1
        return reference_context(self)

    def counting_disable(self, *args, **kwargs):
        counts["disable_adapter"] += 1
        return disable_adapter(self, *args, **kwargs)

    def counting_logp(self, *args, **kwargs):
        counts["logp"] += 1
        return logp(self, *args, **kwargs)

    monkeypatch.setattr(GRPOStep, "_reference_context", counting_context)
    monkeypatch.setattr(PeftModel, "disable_adapter", counting_disable)
    monkeypatch.setattr(GRPOStep, "_logp", counting_logp)
    seen = {}
    for beta in (0.0, 0.04):
        counts.update(context=0, disable_adapter=0, logp=0)
        result = train(tiny(setup, output_dir=str(tmp_path / f"beta-{beta}"), max_steps=2, beta=beta,
                            gradient_accumulation_steps=2))
        assert result["status"] == "complete"
        seen[beta] = dict(counts)
    assert seen[0.0] == {"context": 0, "disable_adapter": 0, "logp": 2 * 2}
    assert seen[0.04] == {"context": 2, "disable_adapter": 2, "logp": 2 * 2 + 2 * 2}


def test_metrics_go_to_the_store_as_to_metrics_jsonl(setup, tmp_path):
    """Every metric of every step is in the store's metrics table under the run's id (run.json's store_id),
    with the value metrics.jsonl has; the run's store row points at the directory and ends `complete`."""
    from engine.store import Store

    run_dir = tmp_path / "run"
    train(tiny(setup, output_dir=str(run_dir), max_steps=2))
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    names = {name for line in lines for name in line} - {"step", "time"}
    assert [line["step"] for line in lines] == [1, 2] and {"reward", "loss", "grad_norm", "entropy"} <= names
    run_id = json.loads((run_dir / "run.json").read_text())["store_id"]
    with Store() as store:
        run = store.get_run(run_id)
        assert Path(run["dir"]) == run_dir.resolve() and run["status"] == "complete"
        stored_names = {row[0] for row in store.db.execute("SELECT DISTINCT name FROM metrics WHERE run_id = ?",
                                                           (run_id,))}
        assert stored_names == {name for name in names if any(line.get(name) is not None for line in lines)}
        for name in names:
            expected = [(line["step"], line[name]) for line in lines if line.get(name) is not None]
            assert store.metric_series(run_id, name) == expected, name
