"""What GRPO and distillation share: the common settings (TrainConfig), model + LoRA/QLoRA setup,
sampling with the adapter merged, optimizer and LR schedule, RNG state, and the step
loop (`Trainer.fit`) with checkpoints, exact resume, progress and one-line errors.

A trainer (`engine.train.grpo`, `engine.train.sft`) supplies one function that performs a training step and returns
its metrics; `Trainer.fit` does everything around it. Nothing here knows rewards, rollouts or datasets.
Config files and flags are `engine.train.config`'s, the run directory `engine.train.runs`'s, several processes
`engine.train.distributed`'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import AhaError
from engine.jobs import CancelToken, Progress
from engine.train.config import setting
from engine.train.distributed import Distributed, accelerate_cpu, launch_environment
from engine.train.runs import Run, write_json

# A test and benchmark switch, not a user setting: no config key or flag sets it and the README does not
# offer it. AHA_ALLOW_CPU_4BIT=1 lets load_in_4bit run on bitsandbytes' CPU 4-bit kernels (fp32 compute,
# slow), so that the QLoRA code path (NF4 loading, prepare_model_for_kbit_training, LoRA over Linear4bit)
# runs in the CPU test suite (tests/test_grpo.py::test_qlora_step_on_a_4bit_base) and in
# `bench/gpu_grpo.py --small` without a GPU. It is not what QLoRA on CUDA runs (bf16 compute, CUDA
# kernels): tests/test_gpu.py tests that. Unset, load_in_4bit on a CPU is the one-line "4-bit needs CUDA".
ALLOW_CPU_4BIT_ENV = "AHA_ALLOW_CPU_4BIT"
SCHEDULES = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Settings every trainer shares; names as in TRL/transformers where the concept is the same."""

    model: str = setting("", "the Hugging Face checkpoint folder to train (config.json, *.safetensors, tokenizer): "
                             "TRL's model_name_or_path, as a local folder", "Model")
    output_dir: str | None = setting(None, "the run directory for checkpoints, metrics, samples and the final adapter "
                                           "(TRL's output_dir); unset: <data dir>/runs/<kind>-<id>", "Logging")
    device: str = setting("auto", "where to train: auto (CUDA when present, else CPU), cpu, cuda or cuda:N; fp32 on "
                                  "CPU, bf16 on CUDA", "Model")
    seed: int = setting(42, "seed of the data order, sampling and LoRA initialisation (TRL's seed): the same seed "
                            "repeats a run", "Data")
    # Adapter: LoRA through peft, or full fine-tuning with use_peft = false (small models).
    use_peft: bool = setting(True, "train a LoRA adapter through peft (TRL's use_peft); off: full fine-tuning of "
                                   "every weight, small models only", "LoRA")
    lora_r: int = setting(16, "LoRA rank r (peft's r): the adapter's size and capacity", "LoRA")
    lora_alpha: int = setting(32, "LoRA scale numerator α: the update is scaled by lora_alpha / lora_r", "LoRA")
    lora_dropout: float = setting(0.0, "dropout on the LoRA branch's input while training", "LoRA")
    lora_target_modules: tuple[str, ...] = setting(("all-linear",), "layers that get LoRA (peft's target_modules): "
                                                                    "all-linear, or module names such as q_proj v_proj",
                                                   "LoRA")
    load_in_4bit: bool = setting(False, "QLoRA: load the base in 4-bit NF4 (bitsandbytes, bf16 compute; CUDA only) "
                                        "to train on less memory", "LoRA")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, "
                                                  "about 30% slower", "Model")
    attn_implementation: str = setting("auto", "attention kernel: auto (eager on CPU, sdpa on CUDA) or a "
                                               "transformers attn_implementation such as eager or sdpa", "Model")
    # (auto is eager on CPU because sdpa stalls at tiny sizes there)
    # Sampling with LoRA folded into a copy of the base weights (one matmul per layer instead of three):
    # auto = on CPU; on CUDA it costs a copy of every adapted weight, so only when asked; never for 4-bit.
    merge_adapter_for_sampling: str = setting("auto", "sample with LoRA merged into a copy of the weights (faster, "
                                                      "costs their memory): auto (on for CPU), on or off", "Rollouts",
                                              choices=("auto", "on", "off"))
    # Optimizer (AdamW) and schedule.
    learning_rate: float = setting(1e-5, "AdamW's peak learning rate (after the warmup)", "Optimizer")
    weight_decay: float = setting(0.0, "AdamW weight decay: how strongly weights are pulled towards 0", "Optimizer")
    adam_beta1: float = setting(0.9, "AdamW β1: decay of the gradients' running mean (momentum)", "Optimizer")
    adam_beta2: float = setting(0.999, "AdamW β2: decay of the squared gradients' running mean", "Optimizer")
    adam_epsilon: float = setting(1e-8, "AdamW ε: added to the denominator, for numerical stability", "Optimizer")
    lr_scheduler_type: str = setting("linear", "learning rate after the warmup: linear (down to 0 at max_steps), "
                                               "cosine or constant", "Optimizer", choices=SCHEDULES)
    warmup_steps: int = setting(0, "steps over which the learning rate ramps up from near 0", "Optimizer")
    warmup_ratio: float = setting(0.0, "warmup as a fraction of max_steps, used when warmup_steps is 0", "Optimizer")
    max_grad_norm: float = setting(1.0, "clip the gradient norm to this (0: no clipping)", "Optimizer")
    gradient_accumulation_steps: int = setting(1, "split each step's batch into this many micro-batches: the same "
                                                  "update on less memory (unlike in TRL, the batch keeps its size)",
                                               "Optimizer")
    max_steps: int = setting(100, "optimizer steps to train (a resumed run may raise it)", "Optimizer")
    logging_steps: int = setting(1, "record metrics (metrics.jsonl, the terminal's step line) every N steps", "Logging")
    save_steps: int = setting(50, "write a checkpoint every N steps (and always at the end and on Ctrl+C)", "Logging")
    save_total_limit: int | None = setting(3, "checkpoints kept, oldest deleted first; unset keeps all", "Logging")
    report_to: tuple[str, ...] = setting((), "also record metrics to: tensorboard (<run>/tensorboard; pip install "
                                             "tensorboard)", "Logging", choices=("tensorboard", "none"))

    # Settings a user can lower when CUDA runs out of memory, per phase of a step (see `Trainer.fit`).
    MEMORY_SETTINGS: typing.ClassVar[dict[str, tuple[str, ...]]] = {"training": ("gradient_accumulation_steps",)}
    # Values for a first run on a CPU, where a step at the defaults takes minutes (see `smaller_for_cpu`).
    CPU_SETTINGS: typing.ClassVar[dict[str, int]] = {}

    def smaller_for_cpu(self) -> dict[str, int]:
        """The CPU_SETTINGS this config is above ({name: suggested value}); eval_samples only when it evaluates."""
        larger = {}
        for name, value in self.CPU_SETTINGS.items():
            current = getattr(self, name)
            if name == "eval_samples" and not getattr(self, "eval_steps", 0):
                continue
            if current is None or current > value:
                larger[name] = value
        return larger

    def validate(self) -> None:
        """Raise AhaError for values no run can use."""
        if not self.model:
            raise AhaError("no model given: set model = \"path/to/hf-checkpoint\" in the config or pass --model")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise AhaError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.lr_scheduler_type not in SCHEDULES:
            raise AhaError(f"lr_scheduler_type must be one of {', '.join(SCHEDULES)}, got {self.lr_scheduler_type!r}")
        for name in ("max_steps", "gradient_accumulation_steps", "logging_steps", "save_steps", "lora_r", "lora_alpha"):
            if getattr(self, name) < 1:
                raise AhaError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise AhaError(f"save_total_limit must be at least 1 (or unset to keep every checkpoint), got "
                           f"{self.save_total_limit}")
        # Written as `not (in range)` so that NaN is refused too.
        for name in ("learning_rate", "adam_epsilon"):
            if not getattr(self, name) > 0:
                raise AhaError(f"{name} must be above 0, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm", "warmup_steps"):
            if not getattr(self, name) >= 0:
                raise AhaError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2", "lora_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise AhaError(f"{name} must be at least 0 and below 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio <= 1:
            raise AhaError(f"warmup_ratio is a fraction of max_steps, between 0 and 1; got {self.warmup_ratio}")
        if self.load_in_4bit and not self.use_peft:
            raise AhaError("load_in_4bit trains LoRA adapters on a frozen 4-bit base: set use_peft = true")
        unknown = sorted(set(self.report_to) - {"tensorboard", "none"})
        if unknown:
            raise AhaError(f"report_to knows tensorboard (or none), not {unknown[0]!r}")
        if self.merge_adapter_for_sampling not in ("auto", "on", "off"):
            raise AhaError(f"merge_adapter_for_sampling must be auto, on or off, got {self.merge_adapter_for_sampling!r}")


# Model, tokenizer, adapter ------------------------------------------------------------------------

def resolve_device(name: str = "auto"):
    """`auto` → cuda when available, else cpu; `cuda` without CUDA is a one-line error."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() and not accelerate_cpu() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AhaError("device = cuda but torch sees no CUDA GPU: set device = \"cpu\" (slow) or install torch's CUDA build")
    if name == "cuda" and launch_environment()[1] > 1:  # one GPU per process under accelerate launch / torchrun
        name = f"cuda:{launch_environment()[2]}"
    return torch.device(name)


def cpu_note(config: TrainConfig, resume: bool = False) -> tuple[str, dict[str, int]]:
    """(what to tell a user whose run trains on the CPU, the smaller settings it suggests): a new run above
    the config's CPU_SETTINGS gets their exact flags; a resumed run keeps its settings, so only the fact.

    Example: GRPO at its defaults → "training on the CPU (no CUDA GPU found), where a step at these settings
    can take minutes: for a first run try --prompts-per-step 4 --num-generations 4 --max-completion-length
    128 (now 16, 8 and 256)".
    """
    reason = "device = cpu" if config.device == "cpu" else "no CUDA GPU found"
    note = f"training on the CPU ({reason})"
    smaller = {} if resume else config.smaller_for_cpu()
    if not smaller:
        return note, smaller
    flags = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in smaller.items())
    now = [str(getattr(config, name)) if getattr(config, name) is not None else "unset" for name in smaller]
    now_text = now[0] if len(now) == 1 else f"{', '.join(now[:-1])} and {now[-1]}"
    return (f"{note}, where a step at these settings can take minutes: for a first run try {flags} "
            f"(now {now_text})", smaller)


# What a checkpoint folder holds its weights and its tokenizer in (any one of each will do).
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_folder(path: str | Path) -> Path:
    """The folder of a Hugging Face checkpoint, checked without loading it: config.json that parses, weights,
    a tokenizer; each thing missing is one line, before a run exists."""
    folder = Path(path).expanduser()
    if folder.is_file():
        raise AhaError(f"{folder} is a file, not a model folder: give the Hugging Face checkpoint folder "
                       "(config.json, *.safetensors, tokenizer files); a GGUF file cannot be trained")
    if not folder.is_dir():
        raise AhaError(f"model folder {folder} not found: give a Hugging Face checkpoint folder (config.json, "
                       "*.safetensors, tokenizer files)")
    if not (folder / "config.json").is_file():
        raise AhaError(f"{folder} has no config.json: give a Hugging Face checkpoint folder, not a GGUF file "
                       "or an adapter folder")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            try:
                json.loads((folder / name).read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as error:
                raise AhaError(f"{folder / name} is not valid JSON ({error}); re-download or re-save the "
                               "checkpoint") from None
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise AhaError(f"{folder} has no weights (model.safetensors or its shards): the download or save is "
                       "incomplete; re-download or re-save the checkpoint")
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        from engine.export.checkpoint import index_tensors

        index_tensors(shards)  # reads the headers only: a corrupt or truncated file is one line here
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise AhaError(f"{folder} has no tokenizer (tokenizer.json): copy the tokenizer files of the model it "
                       "was trained from into it, or save it with tokenizer.save_pretrained")
    return folder


def load_tokenizer(path: str | Path):
    """The checkpoint's tokenizer exactly as its tokenizer.json defines it. transformers 5's AutoTokenizer
    rebuilds some model types' tokenizers (qwen2 among them) from code, dropping a custom pre-tokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(path)
    try:
        tokenizer = (PreTrainedTokenizerFast.from_pretrained(folder) if (folder / "tokenizer.json").is_file()
                     else AutoTokenizer.from_pretrained(folder))
    except Exception as error:  # noqa: BLE001 - a broken tokenizer file is the user's, not our bug
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise AhaError(f"cannot load the tokenizer in {folder}: {reason}; re-download or re-save the "
                       "checkpoint's tokenizer files") from error
    if tokenizer.eos_token_id is None:
        raise AhaError(f"the tokenizer in {folder} has no EOS token: sampling would never stop")
    return tokenizer


def check_4bit(config: TrainConfig, device) -> None:
    """load_in_4bit off CUDA is a one-line AhaError (unless ALLOW_CPU_4BIT_ENV, for tests and benchmarks)."""
    if config.load_in_4bit and device.type != "cuda" and os.environ.get(ALLOW_CPU_4BIT_ENV) != "1":
        raise AhaError("4-bit needs CUDA: load_in_4bit (QLoRA) runs bitsandbytes NF4 on an NVIDIA GPU; set "
                       "load_in_4bit = false to train LoRA on the full-precision model")


def load_model(config: TrainConfig, device, trainable: bool = True):
    """(model, tokenizer) from config.model: fp32 on CPU, bf16 on CUDA, NF4 with bf16 compute for
    load_in_4bit. The base is frozen when `trainable` is False (a reference model)."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    folder = check_model_folder(config.model)
    on_cuda = device.type == "cuda"
    check_4bit(config, device)
    dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    attention = config.attn_implementation
    if attention == "auto":
        attention = "sdpa" if on_cuda else "eager"
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attention}
    if config.load_in_4bit:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if on_cuda else torch.float32)
        kwargs["device_map"] = {"": device}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as error:
        raise AhaError(f"cannot load the model in {folder}: {str(error).splitlines()[0]}") from error
    if not config.load_in_4bit:
        model.to(device)
    elif not on_cuda:  # (ALLOW_CPU_4BIT_ENV) bitsandbytes repacks CPU 4-bit weights for eval, for good: the
        for module in model.modules():  # training forward after a rollout then fails. Keep the plain layout.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    if not trainable:
        model.requires_grad_(False).eval()
    return model, load_tokenizer(folder)


def add_adapter(model, config: TrainConfig):
    """LoRA on the target modules (peft), or the whole model trainable when use_peft is false."""
    if not config.use_peft:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = config.lora_target_modules
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules="all-linear" if tuple(targets) == ("all-linear",) else list(targets),
                      task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as error:
        raise AhaError(f"cannot add LoRA: {str(error).splitlines()[0]}; check lora_target_modules") from error


def merges_for_sampling(config: TrainConfig, device) -> bool:
    """merge_adapter_for_sampling resolved: auto is on for CPU, off for CUDA (the weight copies cost
    memory); a 4-bit base or full fine-tuning has nothing to merge."""
    if not config.use_peft or config.load_in_4bit or config.merge_adapter_for_sampling == "off":
        return False
    return config.merge_adapter_for_sampling == "on" or device.type == "cpu"


@contextlib.contextmanager
def merged_adapter(model, enabled: bool = True) -> Iterator[None]:
    """For sampling only (no grad): every plain LoRA layer runs on a merged copy W' = W + s·B·A of its
    base weight, so a forward is one matmul where LoRA takes three (x·Wᵀ + s·(x·Aᵀ)·Bᵀ). The original W
    is put back untouched afterwards (peft's own merge/unmerge adds and subtracts in place, which drifts);
    the copies cost the adapted weights' memory once. Layers peft merges differently (DoRA, biases,
    quantized bases) are left alone."""
    import torch

    swapped = []
    if enabled:
        from peft.tuners.lora import LoraLayer

        with torch.no_grad():
            for module in model.modules():
                if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
                    continue
                names = [name for name in module.active_adapters if name in module.lora_A]
                base = module.get_base_layer()
                if (not names or any(name in module.lora_variant or module.lora_bias[name] for name in names)
                        or type(base) is not torch.nn.Linear or type(base.weight) is not torch.nn.Parameter):
                    continue
                original = base.weight.data
                merged = original.clone()
                for name in names:
                    merged += module.get_delta_weight(name).to(original.dtype)
                base.weight.data = merged
                module.merged_adapters.extend(names)
                swapped.append((module, base, original, names))
    try:
        yield
    finally:
        for module, base, original, names in swapped:
            base.weight.data = original
            for name in names:
                module.merged_adapters.remove(name)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Factor on the learning rate after `step` optimizer steps:
    warmup:   (step + 1) / (warmup + 1)       for step < warmup  (never 0: the first step moves)
    linear:   (T − step) / (T − warmup)
    cosine:   ½ · (1 + cos(π · (step − warmup) / (T − warmup)))
    constant: 1
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0
    return factor


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states."""
    import numpy
    import torch

    state = {"python": random.getstate(), "numpy": numpy.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    import numpy
    import torch

    random.setstate(state["python"])
    numpy.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    import numpy
    import torch

    random.seed(seed)
    numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StepAbandoned(Exception):
    """Raised by a step function that saw the cancel token before changing any weights."""


# The trainer --------------------------------------------------------------------------------------

class Trainer:
    """Model (+ adapter), tokenizer, AdamW, LR schedule and the step loop around a trainer's step function.

    `resume=True` restores the run's latest checkpoint: weights or adapter, optimizer, scheduler, RNG
    states and the state the step function saved (data position), so the run continues exactly. Under
    several processes the model is wrapped in DistributedDataParallel (`training_model`): step functions
    run their gradient forward passes through it, inside `accumulate`, and sample with `model`.
    """

    def __init__(self, config: TrainConfig, run: Run, *, cancel: CancelToken | None = None, resume: bool = False,
                 distributed: Distributed | None = None):
        import torch

        self.config, self.run = config, run
        self.cancel = cancel or CancelToken()
        self.distributed = distributed or Distributed()
        self.device = resolve_device(config.device)
        check_4bit(config, self.device)  # settings that cannot run fail before the work starts
        loading = Progress(run.emit, "load", total=2, unit="parts", label=f"loading {Path(config.model).name}")
        loading.update(0, force=True, phase="model")
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # tiny models' denormals: a 12.5 s evaluation became 0.9 s
            note, smaller = cpu_note(config, resume)
            run.log(note, "warning" if smaller else "info")
        seed_everything(config.seed)
        self.model, self.tokenizer = load_model(config, self.device)
        loading.update(1, force=True, phase="adapter" if config.use_peft else "optimizer")
        self.model = add_adapter(self.model, config)
        if config.gradient_checkpointing:
            if hasattr(self.model, "activation_checkpointing_enable"):  # its name since transformers 5.2x
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.config.use_cache = False
        self.model.train()
        self.training_model = self.model
        if self.distributed.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.training_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            seed_everything(config.seed + self.distributed.rank)  # the same weights, different samples
        self.parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)
        warmup = config.warmup_steps or math.ceil(config.warmup_ratio * config.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config.lr_scheduler_type, warmup, config.max_steps))
        self.step = 0
        self.phase = "training"  # set by the step function: names the memory settings on a CUDA OOM
        self.should_stop = False  # set by the step function to end the run early, as complete
        self.resumed_state: dict[str, Any] = {}
        self._progress: Progress | None = None  # the step loop's, while fit runs
        if resume:
            self._restore()
        loading.update(2, force=True, phase="ready")

    @property
    def trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters)

    def describe(self) -> str:
        """'LoRA r=16, 40,960 trainable parameters, cpu' (× N processes under several)."""
        config = self.config
        adapter = f"LoRA r={config.lora_r}" if config.use_peft else "full fine-tuning"
        if config.load_in_4bit:
            adapter = f"QLoRA r={config.lora_r} on a 4-bit NF4 base"
        processes = self.distributed.world_size
        where = self.device.type + (f" × {processes} processes" if processes > 1 else "")
        return f"{adapter}, {self.trainable_parameters:,} trainable parameters, {where}"

    def sampling(self):
        """Context for generating with self.model: the adapter merged into weight copies when
        merge_adapter_for_sampling resolves on (merges_for_sampling)."""
        return merged_adapter(self.model, merges_for_sampling(self.config, self.device))

    @property
    def step_cancel(self) -> CancelToken | None:
        """The token a step function may check mid-step (to abandon it); None under several processes,
        where the ranks agree on a cancel at step boundaries only."""
        return None if self.distributed.enabled else self.cancel

    def accumulate(self, last: bool):
        """Context for one micro-batch's gradient forward and backward: under several processes, only the
        last micro-batch of an update all-reduces the gradients (DDP's no_sync for the others)."""
        if self.distributed.enabled and not last:
            return self.training_model.no_sync()
        return contextlib.nullcontext()

    # the step function's tools

    def optimizer_step(self) -> dict[str, float]:
        """Clip, step, advance the schedule, zero the gradients. Returns grad_norm (before clipping) and
        the learning rate the step used."""
        import torch

        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, limit)
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(grad_norm), "learning_rate": learning_rate}

    # checkpoints

    def save_checkpoint(self, state: Mapping[str, Any]) -> Path:
        """checkpoints/step-N: adapter (or full model + tokenizer), optimizer, scheduler, RNG, `state`.
        Under several processes each rank's RNG goes to rng-<rank>.pt and rank 0 writes the rest."""
        import torch

        path = self.run.checkpoint_dir / f"step-{self.step}"
        staging = self.run.checkpoint_dir / f".rng-step-{self.step}"
        if self.distributed.enabled:
            staging.mkdir(parents=True, exist_ok=True)
            torch.save(rng_state(), staging / f"rng-{self.distributed.rank}.pt")
            self.distributed.barrier()
        if not self.distributed.is_main:
            self.distributed.barrier()  # until rank 0 has renamed the checkpoint into place
            return path
        with self.run.new_checkpoint(self.step, self.config.save_total_limit) as folder:
            if self.config.use_peft:
                self.model.save_pretrained(folder / "adapter")
            else:
                self.model.save_pretrained(folder / "model")
                self.tokenizer.save_pretrained(folder / "model")
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
            if self.distributed.enabled:
                for file in staging.glob("rng-*.pt"):
                    os.replace(file, folder / file.name)
                shutil.rmtree(staging, ignore_errors=True)
            else:
                torch.save(rng_state(), folder / "rng.pt")
            write_json(folder / "state.json", {"step": self.step, "world_size": self.distributed.world_size, **state})
        self.distributed.barrier()
        self.run.artifact("checkpoint", path, step=self.step)
        return path

    def save_final(self) -> Path:
        """final/adapter (a PEFT adapter folder, for `aha export --adapter`) or final/model (a checkpoint)."""
        target = self.run.dir / "final" / ("adapter" if self.config.use_peft else "model")
        if not self.distributed.is_main:
            return target
        shutil.rmtree(target, ignore_errors=True)
        self.model.save_pretrained(target)
        if not self.config.use_peft:
            self.tokenizer.save_pretrained(target)
        self.run.artifact("adapter" if self.config.use_peft else "model", target, step=self.step)
        return target

    def _restore(self) -> None:
        import torch

        checkpoint = self.run.latest_checkpoint()
        if checkpoint is None:
            self.run.log("no checkpoint yet: starting the run from step 0", "warning")
            return
        if self.config.use_peft:
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            set_peft_model_state_dict(self.model, load_peft_weights(str(checkpoint / "adapter"), device=str(self.device)))
        else:
            from safetensors.torch import load_file

            weights = {}
            for file in sorted((checkpoint / "model").glob("*.safetensors")):
                weights.update(load_file(file, device=str(self.device)))
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            if unexpected or [key for key in missing if "lm_head" not in key]:
                raise AhaError(f"checkpoint {checkpoint} does not fit the model {self.config.model}")
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=self.device))
        self.scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt"))
        state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
        self.step = int(state.pop("step"))
        saved_world = int(state.pop("world_size", 1))
        if saved_world != self.distributed.world_size:
            raise AhaError(f"{checkpoint} was written by {saved_world} process(es); resume it with as many "
                           f"(this job has {self.distributed.world_size})")
        self.resumed_state = state
        rng_file = checkpoint / (f"rng-{self.distributed.rank}.pt" if self.distributed.enabled else "rng.pt")
        set_rng_state(torch.load(rng_file, weights_only=False))  # our own file: trusted
        self.run.truncate_logs(self.step)
        self.run.log(f"resumed from {checkpoint.name}")

    # the loop

    def fit(self, step_function: Callable[[int], dict[str, float]], state: Callable[[], dict[str, Any]],
            restore_state: Callable[[dict[str, Any]], None], stage: str) -> str:
        """Run step_function(step) until max_steps, `should_stop`, a cancel or an error; returns "complete"
        or "cancelled".

        Around each step: metrics to the run (every logging_steps), progress with ETA (split into the
        step's `generation_s`/`training_s` when it reports them), a checkpoint every save_steps, at the
        end and on cancel. A step that raises StepAbandoned is rolled back (RNG and `state`) so a resume
        replays it exactly. A CUDA out-of-memory error becomes a one-line AhaError naming the settings.
        """
        config = self.config
        start = self.step
        progress = self._progress = Progress(self.run.emit, stage, total=max(config.max_steps - start, 1), unit="steps",
                                             label=self.run.kind.removeprefix("distill-"))
        progress.update(0, force=True, step=start, max_steps=config.max_steps)  # the bar shows from the start
        timings: dict[str, float] = {}
        saved_at = self.step if start else None
        status = "complete"
        self.run.set_status("running")
        if "tensorboard" in config.report_to:
            self.run.report_to_tensorboard(resumed_step=start)
        try:
            while self.step < config.max_steps:
                if self.distributed.any(self.cancel.cancelled):
                    status = "cancelled"
                    break
                snapshot, data_snapshot = rng_state(), state()
                try:
                    metrics = self._guarded(step_function, self.step + 1)
                except StepAbandoned:
                    set_rng_state(snapshot)
                    restore_state(data_snapshot)
                    status = "cancelled"
                    break
                self.step += 1
                for key in ("generation_s", "training_s"):
                    if key in metrics:
                        timings[key] = timings.get(key, 0.0) + metrics[key]
                if self.step % config.logging_steps == 0 or self.step == config.max_steps:
                    self.run.log_metrics(self.step, metrics)
                done = self.step - start
                elapsed = time.monotonic() - progress.started
                progress.update(done, force=True, step=self.step, max_steps=config.max_steps,
                                eta_s=round(elapsed / done * (config.max_steps - self.step), 1),
                                **{key: round(value / done, 3) for key, value in timings.items()})
                if self.step % config.save_steps == 0 or self.step == config.max_steps or self.should_stop:
                    self.save_checkpoint(state())
                    saved_at = self.step
                if self.should_stop:
                    break
            if status == "cancelled" and saved_at != self.step:
                self.save_checkpoint(state())
        except BaseException:
            self.run.set_status("error")
            raise
        finally:
            self.run.close()
        self.run.set_status(status)
        return status

    def report_phase(self, phase: str) -> None:
        """A progress event naming the part of the step now running ("rollout", "update"): the first
        rollout of a run can take minutes, and the bar should say what it waits for."""
        progress = self._progress
        if progress is not None:
            progress.update(progress.done, force=True, phase=phase, step=self.step, max_steps=self.config.max_steps)

    def _guarded(self, step_function: Callable[[int], dict[str, float]], step: int) -> dict[str, float]:
        import torch

        try:
            return step_function(step)
        except torch.cuda.OutOfMemoryError as error:
            raise AhaError(out_of_memory_message(self.config, self.phase, step)) from error


def out_of_memory_message(config: TrainConfig, phase: str, step: int) -> str:
    """'CUDA out of memory during generation at step 3: lower num_generations (now 8), …'."""
    names = config.MEMORY_SETTINGS.get(phase) or next(iter(config.MEMORY_SETTINGS.values()))
    lower = [f"{name} (now {getattr(config, name)})" for name in names if name != "gradient_accumulation_steps"]
    advice = f"lower {', '.join(lower)}" if lower else ""
    if "gradient_accumulation_steps" in names:
        raise_it = f"raise gradient_accumulation_steps (now {config.gradient_accumulation_steps})"
        advice = f"{advice} or {raise_it}" if advice else raise_it
    extras = [name for name, value in (("gradient_checkpointing", config.gradient_checkpointing),
                                       ("load_in_4bit", config.load_in_4bit)) if not value]
    if extras:
        advice += "; " + " and ".join(f"{name} = true" for name in extras) + " also save memory"
    return f"CUDA out of memory during {phase} at step {step}: {advice}"
