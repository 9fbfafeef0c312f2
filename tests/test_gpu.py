"""On an NVIDIA GPU, what the CPU suite cannot show: QLoRA through the real bitsandbytes CUDA path (no
AHA_ALLOW_CPU_4BIT), the fused output layer under bf16 hidden states against a float64 reference, a bf16
LoRA GRPO run with gradient checkpointing and micro-batches that checkpoints and resumes, the GPU benchmark
as a smoke test, and two NCCL processes under `accelerate launch --multi_gpu`.

Every test is marked `gpu`: tests/conftest.py skips them where torch sees no CUDA GPU. Run them with
`pytest -m gpu -rs` (bench/gpu_check.sh does, with the benchmark after them).
"""

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.train.grpo import train
from tests.support.char_model import make_char_model
from tests.test_grpo import REWARD_FILE, adapter_weights, tiny

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
FINITE_METRICS = ("reward", "loss", "grad_norm", "entropy", "kl", "completions/mean_length", "tokens_per_s")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(char model folder, reward file), as tests/test_grpo.py's `tiny` takes them."""
    folder = tmp_path_factory.mktemp("gpu")
    reward = folder / "reward.py"
    reward.write_text(REWARD_FILE)
    return make_char_model(folder / "char"), reward


@pytest.fixture
def trainers(monkeypatch):
    """Every Trainer a run builds, as (trainer, info): info["start_step"] and info["adapter"] (the peft state
    dict, on CPU) as they were at the run's first optimizer step, before it changed any weight, and
    info["micro_batches"], the accumulate() calls per optimizer step."""
    from peft import get_peft_model_state_dict

    from engine.train.core import Trainer

    seen: list[tuple[Trainer, dict]] = []
    optimizer_step, accumulate = Trainer.optimizer_step, Trainer.accumulate

    def info(trainer) -> dict:
        for known, record in seen:
            if known is trainer:
                return record
        record = {"micro_batches": [0], "start_step": None, "adapter": None}
        seen.append((trainer, record))
        return record

    def record_step(self):
        record = info(self)
        if record["adapter"] is None:
            record["start_step"] = self.step
            record["adapter"] = {name: tensor.detach().cpu().clone()
                                 for name, tensor in get_peft_model_state_dict(self.model).items()}
        result = optimizer_step(self)
        record["micro_batches"].append(0)
        return result

    def count_micro_batch(self, last):
        info(self)["micro_batches"][-1] += 1
        return accumulate(self, last)

    monkeypatch.setattr(Trainer, "optimizer_step", record_step)
    monkeypatch.setattr(Trainer, "accumulate", count_micro_batch)
    return seen


def metrics_of(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_finite(metrics: list[dict]) -> None:
    for line in metrics:
        for name in FINITE_METRICS:
            assert math.isfinite(line[name]), (line["step"], name, line[name])


def lora_moved(before: dict, after) -> bool:
    """Some lora_B (zero at the start) is non-zero now and no LoRA tensor went non-finite."""
    after = {name: tensor.detach().cpu() for name, tensor in after.items()}
    assert all(torch.isfinite(tensor).all() for tensor in after.values())
    return any("lora_B" in name and not torch.equal(before[name], after[name]) and after[name].abs().sum() > 0
               for name in before)


# (a) QLoRA on CUDA ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["char", "qwen2"])
def test_qlora_grpo_steps_on_a_real_4bit_cuda_base(setup, checkpoint, trainers, tmp_path, monkeypatch, model):
    """load_in_4bit on CUDA through the product path (the CPU switch unset): every targeted linear layer of
    the base is a bitsandbytes Linear4bit holding NF4 weights (double-quantized, bf16 compute) on the GPU,
    nothing else of the decoder stays a full-precision Linear, the output layer is the fp32 Linear the
    fused head uses, the LoRA weights move and every step's metrics are finite. The char model has a tied
    head and fp32 weights; tiny Qwen2 an untied head, qkv biases, bf16 weights and the R1 template."""
    import bitsandbytes

    from engine.train.core import ALLOW_CPU_4BIT_ENV
    from engine.train.fused_head import output_layer

    monkeypatch.delenv(ALLOW_CPU_4BIT_ENV, raising=False)
    folder = setup[0] if model == "char" else checkpoint("qwen2")
    events = []
    result = train(tiny((folder, setup[1]), output_dir=str(tmp_path / "run"), max_steps=2, load_in_4bit=True,
                        beta=0.04, device="cuda"), on_event=events.append)
    assert result["status"] == "complete" and result["step"] == 2
    assert any("QLoRA r=4 on a 4-bit NF4 base" in event.get("message", "") and ", cuda)" in event["message"]
               for event in events)
    (trainer, record), = trainers
    assert trainer.device.type == "cuda"
    peft_model = trainer.model
    four_bit = [module for module in peft_model.modules() if isinstance(module, bitsandbytes.nn.Linear4bit)]
    assert len(four_bit) == 7 * peft_model.config.num_hidden_layers  # q k v o gate up down in every layer
    for module in four_bit:
        weight = module.weight
        assert isinstance(weight, bitsandbytes.nn.Params4bit) and weight.dtype == torch.uint8
        assert weight.device.type == "cuda" and weight.quant_state.absmax.device.type == "cuda"
        assert weight.quant_state.quant_type == "nf4" and weight.quant_state.nested  # bnb_4bit_use_double_quant
        assert module.compute_dtype == torch.bfloat16
    plain = [name for name, module in peft_model.named_modules()
             if type(module) is torch.nn.Linear and "lora_" not in name and not name.endswith("lm_head")]
    assert not plain, plain
    head = output_layer(peft_model)
    assert head is not None and head.weight.dtype == torch.float32  # fused, fp32 (prepare_model_for_kbit_training)
    assert all(parameter.device.type == "cuda" for parameter in peft_model.parameters())
    trainable = [name for name, parameter in peft_model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert lora_moved(record["adapter"], adapter_weights(result["run_dir"]))
    assert_finite(metrics_of(result["run_dir"]))


# (b) The fused head on CUDA ------------------------------------------------------------------------

def test_fused_head_bf16_hidden_fp32_head_matches_float64():
    """R1 distills' width (H = 1536), 2 × 700 positions (two full chunks and a partial one), V = 32,003,
    τ = 0.6: bf16 hidden states through an fp32 head, as under QLoRA, on CUDA, against float64 autograd on
    the CPU from the very same (bf16-exact) inputs. Tolerances, from fp32 arithmetic (the CPU's fp32 path
    measured 9e-6 logp, 3e-5 entropy, 3.7e-6 of the largest weight gradient on these inputs; cuBLAS' fp32
    GEMM accumulates in fp32 too, in another order):
    - logp: 1e-4 nats, 10× that; a PPO ratio exp(Δ) off by 0.01% against a clip at ε = 0.2. TF32 or bf16
      logits would miss it by 10–1000×.
    - entropy: 5e-4 (lse − Σ p·z cancels in fp32).
    - ∂hidden comes back in bf16: its rounding (≤ 2^-8 relative) plus 1e-4 of the largest entry.
    - ∂weight (fp32, summed over chunks): 5e-5 of the largest entry.
    - top-1 hits: equal wherever the reference's top two logits differ by more than 1e-3."""
    from engine.train.fused_head import fused_head_logp

    generator = torch.Generator().manual_seed(0)
    batch, length, width, vocabulary, temperature = 2, 700, 1536, 32_003, 0.6
    hidden = torch.randn(batch, length, width, generator=generator).bfloat16()
    weight = torch.randn(vocabulary, width, generator=generator) * (3 / math.sqrt(width))  # logits' std ≈ 3
    ids = torch.randint(0, vocabulary, (batch, length), generator=generator)
    upstream = torch.randn(batch, length, generator=generator, dtype=torch.float64)

    hidden_cuda = hidden.cuda().requires_grad_()
    weight_cuda = weight.cuda().requires_grad_()
    logp, entropy, hits = fused_head_logp(hidden_cuda, weight_cuda, None, ids.cuda(), temperature)
    (logp.double() * upstream.cuda()).sum().backward()
    assert logp.dtype == torch.float32 and hidden_cuda.grad.dtype == torch.bfloat16
    assert weight_cuda.grad.dtype == torch.float32

    hidden64, weight64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    logits = hidden64 @ weight64.t() / temperature  # (B, T, V)
    log_softmax = logits.log_softmax(-1)
    expected = log_softmax.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    (expected * upstream).sum().backward()
    with torch.no_grad():
        expected_entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        top2 = logits.topk(2, -1).values
        clear = top2[..., 0] - top2[..., 1] > 1e-3

    precision = torch.get_float32_matmul_precision()
    assert (logp.double().cpu() - expected).abs().max() <= 1e-4, precision
    assert (entropy.double().cpu() - expected_entropy).abs().max() <= 5e-4, precision
    reference = hidden64.grad
    assert ((hidden_cuda.grad.double().cpu() - reference).abs()
            <= 2**-8 * reference.abs() + 1e-4 * reference.abs().max()).all(), precision
    reference = weight64.grad
    assert (weight_cuda.grad.double().cpu() - reference).abs().max() <= 5e-5 * reference.abs().max(), precision
    assert torch.equal(hits.cpu()[clear], (logits.argmax(-1) == ids)[clear])


def test_fused_head_never_holds_the_logits_on_cuda():
    """8 completions of 2,048 tokens over R1's 151,936-token vocabulary through a frozen fp32 head (as
    under LoRA and QLoRA): the logits would be 10 GB in fp32. The fused forward and backward allocate at
    most a few chunks' logits (CHUNK × V × 4 bytes = 311 MB each) on top of their inputs."""
    from engine.train.fused_head import CHUNK, fused_head_logp

    batch, length, width, vocabulary = 8, 2048, 1536, 151_936
    generator = torch.Generator("cuda").manual_seed(0)
    hidden = torch.randn(batch, length, width, device="cuda", dtype=torch.bfloat16, generator=generator)
    hidden.requires_grad_()
    weight = torch.randn(vocabulary, width, device="cuda", generator=generator) * (3 / math.sqrt(width))
    ids = torch.randint(0, vocabulary, (batch, length), device="cuda", generator=generator)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    logp, entropy, _ = fused_head_logp(hidden, weight, None, ids, temperature=0.6)
    logp.sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    chunk_logits, all_logits = CHUNK * vocabulary * 4, batch * length * vocabulary * 4
    assert extra <= 6 * chunk_logits < all_logits / 4, (extra, chunk_logits, all_logits)
    assert torch.isfinite(logp).all() and torch.isfinite(entropy).all() and torch.isfinite(hidden.grad).all()


# (c) bf16 LoRA, gradient checkpointing, micro-batches, resume --------------------------------------

def test_bf16_lora_with_checkpointing_and_micro_batches_resumes(setup, trainers, tmp_path):
    """A bf16 base with LoRA on CUDA, gradient checkpointing on, 16 rollouts in 2 micro-batches: 2 steps
    with a checkpoint each, then `resume` to step 3. The resumed trainer starts at step 2 with exactly the
    step-2 checkpoint's adapter, the CUDA RNG state is in the checkpoint, and the run's metrics are steps
    1–3 once each. (Not bit-equal to an uninterrupted run: CUDA kernels are not deterministic here.)"""
    run_dir = tmp_path / "run"
    config = tiny(setup, output_dir=str(run_dir), max_steps=2, device="cuda", gradient_checkpointing=True,
                  gradient_accumulation_steps=2, lora_dropout=0.0, beta=0.04)
    first = train(config)
    assert first["status"] == "complete" and first["step"] == 2
    (trainer, record), = trainers
    base = trainer.model.get_base_model()
    assert trainer.device.type == "cuda" and base.is_activation_checkpointing
    assert {parameter.dtype for parameter in trainer.model.parameters() if not parameter.requires_grad} == {torch.bfloat16}
    assert all(parameter.device.type == "cuda" for parameter in trainer.model.parameters())
    assert record["micro_batches"][:2] == [2, 2]  # two forward/backward passes per optimizer step
    assert lora_moved(record["adapter"], adapter_weights(run_dir))
    step_two = run_dir / "checkpoints" / "step-2"
    assert "cuda" in torch.load(step_two / "rng.pt", weights_only=False)
    saved = load_file(step_two / "adapter" / "adapter_model.safetensors")

    resumed = train(resume=run_dir, overrides={"max_steps": 3})
    assert resumed["status"] == "complete" and resumed["step"] == 3
    (_, second) = trainers[1]
    assert second["start_step"] == 2
    assert saved.keys() == second["adapter"].keys()
    assert all(torch.equal(saved[name], second["adapter"][name]) for name in saved)
    metrics = metrics_of(run_dir)
    assert [line["step"] for line in metrics] == [1, 2, 3]
    assert_finite(metrics)


# (d) The GPU benchmark as a smoke test -------------------------------------------------------------

def test_gpu_benchmark_smoke(tmp_path):
    """bench/gpu_grpo.py --small on CUDA (QLoRA by default): its lines parse, the exact command and the
    versions are printed, the three peak-memory numbers are positive and reserved ≥ allocated."""
    command = [sys.executable, "bench/gpu_grpo.py", "--small", "--steps", "2", "--generations", "4",
               "--max-completion-length", "16", "--work", str(tmp_path / "work")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()

    def line(prefix: str) -> str:
        found = [text for text in lines if text.startswith(prefix)]
        assert len(found) == 1, (prefix, done.stdout)
        return found[0]

    assert line("command: ").endswith("bench/gpu_grpo.py --small --steps 2 --generations 4 "
                                      f"--max-completion-length 16 --work {tmp_path / 'work'}")
    assert "four_bit=True" in line("settings: ")
    device = line("device: ")
    assert not device.startswith("device: cpu") and "driver " in device and "torch's CUDA " in device
    assert re.match(r"versions: python \S+, torch \S+, transformers \S+, peft \S+, bitsandbytes \S+, ", line("versions: "))
    assert "QLoRA (NF4)" in line("run: ") and "status complete" in line("run: ")
    steps = [re.match(r"  step (\d+): generation (\S+) s \((\d+) tokens/s, mean length (\d+)\), training (\S+) s$", text)
             for text in lines if text.startswith("  step ")]
    assert [int(match[1]) for match in steps] == [1, 2] and all(float(match[5]) > 0 for match in steps)
    assert re.match(r"median step \S+ s, generation \d+ tokens/s", line("median step "))
    memory = re.match(r"peak VRAM: allocated (\S+) GiB, reserved (\S+) GiB, NVML(?: (\S+) GiB \((.*)\)|: not available \(.*\))$",
                      line("peak VRAM: "))
    assert memory, line("peak VRAM: ")
    allocated, reserved = float(memory[1]), float(memory[2])
    assert 0 < allocated <= reserved
    if memory[3] is not None:
        assert float(memory[3]) > 0 and "CUDA context" in memory[4]


# (e) Two NCCL processes ----------------------------------------------------------------------------

def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def test_two_gpus_under_accelerate_launch_multi_gpu(setup, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (torchrun, NCCL, one GPU per process): each rank
    samples half of the prompts on its own GPU, DDP all-reduces the gradients, rank 0 alone writes the run
    with both ranks' rollouts, every rank's RNG is checkpointed and the job resumes under 2 processes."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA GPUs for 2 NCCL processes (torch.cuda.device_count() is {torch.cuda.device_count()})")
    toml = tmp_path / "run.toml"
    toml.write_text(f'model = "{setup[0]}"\ndataset = "addition"\nrewards = ["{setup[1]}:sevens"]\n'
                    'prompts_per_step = 4\nnum_generations = 4\nmax_completion_length = 12\nlearning_rate = 0.01\n'
                    'lora_r = 4\nlora_alpha = 8\nsave_steps = 1\ndevice = "cuda"\n')
    run_dir = tmp_path / "run"
    bin_dir = Path(sys.executable).parent
    environment = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
                   "NCCL_DEBUG": "WARN"}  # NCCL says why, should it fail

    def launch(*args: str) -> list[dict]:
        done = subprocess.run([str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "--main_process_port", free_port(), "-m", "engine.cli", "grpo", *args,
                               "--events", "jsonl"], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=environment)
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(text) for text in done.stdout.splitlines() if text.startswith("{")]

    events = launch("--config", str(toml), "--max-steps", "2", "--output-dir", str(run_dir))
    assert [event["type"] for event in events].count("done") == 1
    assert events[-1]["status"] == "complete" and events[-1]["result"]["step"] == 2
    assert any("cuda × 2 processes" in event.get("message", "") for event in events)
    samples = [json.loads(text) for text in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [sample["step"] for sample in samples] == [1] * 4 + [2] * 4
    assert sorted(path.name for path in (run_dir / "checkpoints" / "step-2").glob("rng*")) == ["rng-0.pt", "rng-1.pt"]
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in adapter_weights(run_dir).items())
    for line in metrics_of(run_dir):  # β = 0 here: no kl
        assert all(math.isfinite(line[name]) for name in ("reward", "loss", "grad_norm", "entropy")), line

    events = launch("--resume", str(run_dir), "--max-steps", "3")
    assert events[-1]["status"] == "complete" and events[-1]["result"]["step"] == 3
    assert [line["step"] for line in metrics_of(run_dir)] == [1, 2, 3]
