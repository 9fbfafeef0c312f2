"""Benchmark: `aha grpo` steps on an NVIDIA GPU for a random-weight model of DeepSeek-R1-Distill-Qwen-1.5B's shape.

QLoRA (4-bit NF4 base, LoRA r=16 on all linear layers; `--no-4bit` for a bf16 base), 8 generations of 512
tokens for one prompt per step (a random model rarely samples EOS, so every completion runs to the limit).
Prints per-step generation and training time, generation tokens/s and three peak-memory numbers for the
measured run (model loading included): torch.cuda.max_memory_allocated (live tensors only),
torch.cuda.max_memory_reserved (plus the caching allocator's free blocks) and the process's device memory
as NVML sees it (plus the CUDA context, cuBLAS workspaces and the rest), the number to compare with
nvidia-smi or with Unsloth's 5–7 GB for 1.5B GRPO. The first lines give the exact command, the GPU, the
driver and the library versions, so a number can be quoted with what produced it. The R1 tokenizer and
chat template come from the test fixtures; nothing is downloaded.

    python bench/gpu_grpo.py                      # the default configuration: QLoRA, no checkpointing
    python bench/gpu_grpo.py --small --steps 2    # a smoke test of this script (on a CPU too)
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# DeepSeek-R1-Distill-Qwen-1.5B's config.json (Qwen2ForCausalLM).
R1_DISTILL_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rope_theta=10000.0,
                       tie_word_embeddings=False, rms_norm_eps=1e-6)
SMALL = dict(R1_DISTILL_1_5B, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1024)  # --small: a smoke test of this script on a CPU


def build_checkpoint(folder: Path, shape: dict) -> Path:
    """Random bf16 weights of the shape, the fixtures' R1 tokenizer (ids beyond it decode to nothing)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tests.tiny_models import save_tokenizer

    if (folder / "config.json").exists():
        return folder
    ids = save_tokenizer(folder, ascii_only=True)
    config = Qwen2Config(bos_token_id=ids["bos"], eos_token_id=ids["eos"], **shape)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    return folder


GIB = 2**30
SMI_PROCESSES = ["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader,nounits"]
SMI_DEVICES = ["nvidia-smi", "--query-gpu=uuid,memory.used,driver_version", "--format=csv,noheader,nounits"]


def _uuid_key(uuid) -> str:
    """'GPU-6a5b…' (NVML), '6a5b…' (torch) and bytes alike → '6a5b…'."""
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    return text[4:] if text.startswith(("gpu-", "mig-")) else text


class NvmlMemory:
    """This process's device memory as NVML reports it (what nvidia-smi shows: the CUDA context, the
    caching allocator's whole pool, cuBLAS/cuDNN workspaces), peak over a thread that polls every
    `interval` seconds while the measured run trains. Through pynvml (the nvidia-ml-py package) when it
    imports, else `nvidia-smi`, else not available. Where our pid is not among NVML's processes (a
    container's PID namespace) or NVML gives no per-process number, the device's used memory above its
    level before this script touched CUDA stands in, which also counts any other process on that GPU."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.source, self.driver, self.cuda_driver = interval, None, "?", None
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self.source = pynvml, "pynvml"
            self.driver = self._text(pynvml.nvmlSystemGetDriverVersion())
            version = pynvml.nvmlSystemGetCudaDriverVersion()
            self.cuda_driver = f"{version // 1000}.{version % 1000 // 10}"
        except Exception:  # not installed, or no driver: try nvidia-smi
            self._nvml = None
            if shutil.which("nvidia-smi"):
                try:
                    lines = self._smi(SMI_DEVICES)
                    self.source, self.driver = "nvidia-smi", lines[0][2] if lines else "?"
                except (OSError, subprocess.SubprocessError, IndexError):
                    self.source = None
        self.baseline = self._devices() if self.source else {}  # before this process has a CUDA context
        self.key: str | None = None
        self.process_peak = self.device_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _text(value) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def _smi(self, command: list[str]) -> list[list[str]]:
        output = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout
        return [[field.strip() for field in line.split(",")] for line in output.splitlines() if line.strip()]

    def _devices(self) -> dict[str, int]:
        """{uuid key: used bytes} of every GPU NVML sees."""
        if self._nvml is not None:
            nvml, used = self._nvml, {}
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                used[_uuid_key(nvml.nvmlDeviceGetUUID(handle))] = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
            return used
        return {_uuid_key(uuid): int(float(mib) * 2**20) for uuid, mib, *_ in self._smi(SMI_DEVICES)}

    def _processes(self) -> dict[str, int]:
        """{uuid key: used bytes} of this process on each GPU where NVML lists it with a number."""
        pid, used = os.getpid(), {}
        if self._nvml is not None:
            nvml = self._nvml
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.pid == pid and process.usedGpuMemory is not None:
                        key = _uuid_key(nvml.nvmlDeviceGetUUID(handle))
                        used[key] = used.get(key, 0) + int(process.usedGpuMemory)
            return used
        for row in self._smi(SMI_PROCESSES):
            if len(row) == 3 and row[0] == str(pid) and row[2].replace(".", "", 1).isdigit():
                used[_uuid_key(row[1])] = used.get(_uuid_key(row[1]), 0) + int(float(row[2]) * 2**20)
        return used

    def start(self, torch_uuid: str, nvml_index: int | None = None) -> None:
        """Poll the GPU with torch's `uuid`; should NVML's uuids not match it, the GPU at `nvml_index` in
        NVML's order (or the only one)."""
        self.key = _uuid_key(torch_uuid)
        if self.source and self.key not in self.baseline:
            order = list(self.baseline)  # NVML's device order, for pynvml and nvidia-smi alike
            if nvml_index is not None and 0 <= nvml_index < len(order):
                self.key = order[nvml_index]
            elif len(order) == 1:
                self.key = order[0]
        if not self.source:
            return
        self._sample()
        self._thread = threading.Thread(target=self._poll, name="nvml-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            process = self._processes().get(self.key, 0)
            device = self._devices().get(self.key, 0)
        except Exception:  # one failed poll (a busy nvidia-smi, a driver hiccup) loses one sample
            return
        self.process_peak, self.device_peak = max(self.process_peak, process), max(self.device_peak, device)

    def stop(self) -> str:
        """'NVML 5.91 GiB (…how it was measured…)' or 'NVML: not available (…)'."""
        if not self.source:
            return "NVML: not available (no nvidia-ml-py, no nvidia-smi)"
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        how = (f"{self.source}, polled every {self.interval:g} s: includes the CUDA context and the allocator's "
               "cache")
        if self.process_peak:
            return f"NVML {self.process_peak / GIB:.2f} GiB (this process; {how})"
        if self.key in self.baseline and self.device_peak:
            return (f"NVML {(self.device_peak - self.baseline[self.key]) / GIB:.2f} GiB (the GPU's used memory "
                    f"above its level before this script: NVML has no number for our pid, as in a container's "
                    f"PID namespace, so other processes on the GPU count too; {how})")
        return f"NVML: not available ({self.source} gave no number for this GPU)"


def describe_setup(args, on_cuda: bool, nvml: NvmlMemory | None) -> list[str]:
    """The lines that let a result be quoted with what produced it: command, settings, device, versions."""
    import torch

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    settings = ", ".join(f"{name}={value}" for name, value in sorted(vars(args).items()))
    lines = [f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}", f"settings: {settings}"]
    if on_cuda:
        properties = torch.cuda.get_device_properties(torch.cuda.current_device())
        driver = nvml.driver if nvml is not None else "?"
        cuda_driver = f", driver's CUDA {nvml.cuda_driver}" if nvml is not None and nvml.cuda_driver else ""
        lines.append(f"device: {properties.name} ({properties.total_memory / GIB:.1f} GiB, compute capability "
                     f"{properties.major}.{properties.minor}); driver {driver}{cuda_driver}; torch's CUDA "
                     f"{torch.version.cuda}")
    else:
        lines.append("device: cpu (no CUDA GPU: a smoke test of this script, not a GPU measurement)")
    environment = [f"{name}={os.environ[name]}" for name in ("CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF",
                                                              "PYTORCH_ALLOC_CONF") if name in os.environ]
    if environment:
        lines.append(f"environment: {' '.join(environment)}")
    lines.append(f"versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
                 f"{version('transformers')}, peft {version('peft')}, bitsandbytes {version('bitsandbytes')}, "
                 f"accelerate {version('accelerate')}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps (the first one warms up)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=512)
    parser.add_argument("--no-4bit", dest="four_bit", action="store_false", help="LoRA on a bf16 base instead")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per update")
    parser.add_argument("--compare-generate", type=int, metavar="TOKENS", default=0,
                        help="also time our sampler against model.generate for 8 × TOKENS on the bf16 base")
    parser.add_argument("--small", action="store_true", help="a tiny shape, to try the script on a CPU")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "aha-gpu-bench")
    args = parser.parse_args()
    os.environ.setdefault("AHA_HOME", str(args.work / "home"))

    import torch

    on_cuda = torch.cuda.is_available()  # asks the driver; no CUDA context yet
    # NVML's baseline is read before this process has a context (only used where our pid is not listed).
    nvml = NvmlMemory() if on_cuda else None
    if args.small and args.four_bit and not on_cuda:
        # The test/bench-only switch of engine.train.core (ALLOW_CPU_4BIT_ENV): bitsandbytes' slow CPU 4-bit
        # kernels, so that the QLoRA path of this script can be smoke-tested without a GPU.
        from engine.train.core import ALLOW_CPU_4BIT_ENV

        os.environ[ALLOW_CPU_4BIT_ENV] = "1"

    from engine.train.grpo import GRPOConfig, train

    folder = build_checkpoint(args.work / ("small" if args.small else "r1-distill-qwen-1.5b-shape"),
                              SMALL if args.small else R1_DISTILL_1_5B)
    dataset = args.work / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}? Please reason step by step, and put "
                                                     "your final answer within \\boxed{}.", "answer": str(a + b)}) + "\n"
                               for a, b in ((12, 35), (48, 17), (101, 99), (7, 5), (333, 444), (20, 22))))
    for line in describe_setup(args, on_cuda, nvml):
        print(line, flush=True)
    steps = []
    if on_cuda:
        gc.collect()
        torch.cuda.empty_cache()  # a checkpoint built just now leaves its weights in the allocator's cache
        torch.cuda.reset_peak_memory_stats()
        try:  # torch's own CUDA → NVML index mapping (CUDA_VISIBLE_DEVICES), a fallback for the uuid
            nvml_index = torch.cuda._get_nvml_device_index(torch.cuda.current_device())
        except Exception:
            nvml_index = None
        nvml.start(str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid), nvml_index)
    config = GRPOConfig(model=str(folder), dataset=str(dataset), load_in_4bit=args.four_bit, lora_r=16, lora_alpha=32,
                        prompts_per_step=1, num_generations=args.generations,
                        max_completion_length=args.max_completion_length, temperature=0.6, top_p=0.95,
                        rewards=("accuracy", "format", "repetition"), learning_rate=1e-5, max_steps=args.steps,
                        save_steps=10_000, gradient_checkpointing=args.gradient_checkpointing,
                        gradient_accumulation_steps=args.gradient_accumulation_steps,
                        output_dir=str(args.work / f"run-{time.time():.0f}"))
    started = time.perf_counter()
    try:
        result = train(config, on_event=lambda event: steps.append(event) if event["type"] == "metrics" else None)
    finally:
        nvml_line = nvml.stop() if nvml is not None else None
    total = time.perf_counter() - started
    print(f"run: {'QLoRA (NF4)' if args.four_bit else 'LoRA (bf16)'}, {args.generations} × "
          f"{args.max_completion_length} tokens, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, {args.gradient_accumulation_steps} micro-batches; "
          f"status {result['status']} in {total:.1f} s with loading")
    for event in steps:
        print(f"  step {event['step']}: generation {event['generation_s']:.2f} s "
              f"({event['tokens_per_s']:.0f} tokens/s, mean length {event['completions/mean_length']:.0f}), "
              f"training {event['training_s']:.2f} s")
    timed = steps[1:] or steps
    step_s = statistics.median(event["generation_s"] + event["training_s"] for event in timed)
    tokens = statistics.median(event["tokens_per_s"] for event in timed)
    print(f"median step {step_s:.2f} s, generation {tokens:.0f} tokens/s (steps {timed[0]['step']}–{timed[-1]['step']})")
    if on_cuda:
        print(f"peak VRAM: allocated {torch.cuda.max_memory_allocated() / GIB:.2f} GiB, reserved "
              f"{torch.cuda.max_memory_reserved() / GIB:.2f} GiB, {nvml_line}")
    else:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB
        print(f"peak VRAM: none (CPU run); peak RSS {rss:.2f} GiB")
    if args.compare_generate:
        compare_generate(folder, args.compare_generate)


def compare_generate(folder: Path, tokens: int, rows: int = 8) -> None:
    """Our KV-cache loop against model.generate on the same bf16 model, prompts and token budget."""
    import torch

    from engine.train.core import TrainConfig, load_model, resolve_device
    from engine.train.sampling import encode_prompts, left_pad, sample

    model, tokenizer = load_model(TrainConfig(model=str(folder)), resolve_device("auto"), trainable=False)
    ids, _, _ = encode_prompts(tokenizer, ["What is 12 + 35?"] * rows)
    prompt_ids, prompt_mask = left_pad(ids, tokenizer.pad_token_id, model.device)
    timings: dict[str, list[float]] = {"loop": [], "generate": []}
    for _ in range(2):
        for name in timings:
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            started = time.perf_counter()
            if name == "loop":
                sample(model, ids, max_new_tokens=tokens, eos_ids=[-1], pad_id=tokenizer.pad_token_id, temperature=0.6)
            else:
                model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=tokens,
                               min_new_tokens=tokens, do_sample=True, temperature=0.6, top_k=0,
                               pad_token_id=tokenizer.pad_token_id)
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            timings[name].append(time.perf_counter() - started)
    loop, generate = min(timings["loop"]), min(timings["generate"])
    print(f"sampler vs generate, {rows} × {tokens} tokens, bf16 base: loop {loop:.2f} s "
          f"({loop / tokens * 1000:.1f} ms/token), generate {generate:.2f} s ({generate / tokens * 1000:.1f} ms/token)")


if __name__ == "__main__":
    main()
