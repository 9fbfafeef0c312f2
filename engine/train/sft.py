"""Supervised fine-tuning on prompt → completion traces with the loss on the completion only: the cold
start of the R1 recipe and the core of sequence-level distillation (what DeepSeek trained its R1 distills with). Batches come
from a file or fresh from a built-in task's programmatic teacher; `stop_at_accuracy` ends the run once
held-out accuracy (greedy, or pass@1 over num_generations_eval samples) reaches it (a fixed step count
lands anywhere from 12% to 81% on the tiny task).
Setup, checkpoints, resume and cancel are `engine.train.core`'s.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from engine.errors import AhaError
from engine.jobs import CancelToken, OnEvent, count, ignore
from engine.train.config import eval_temperature_setting, num_generations_eval_setting, setting
from engine.train.core import TrainConfig
from engine.train.sampling import check_eval_settings

if typing.TYPE_CHECKING:
    import torch

__all__ = ["Batch", "SFTConfig", "build_batch", "pack_batch", "pad_batch", "run_sft", "sft_loss", "train_sft"]


@dataclass(frozen=True)
class SFTConfig(TrainConfig):
    """SFT settings, named as in TRL's SFTConfig where the concept is the same."""

    dataset: str = setting("", "the training rows: a .jsonl/.csv/.parquet file with prompt and completion "
                               "columns, or a built-in task (addition, arithmetic)", "Data")
    prompt_column: str = setting("prompt", "the dataset's column holding the prompt", "Data")
    completion_column: str = setting("completion", "the dataset's column holding the completion to learn", "Data")
    answer_column: str = setting("answer", "the held-out rows' column holding the ground truth (for held-out "
                                           "accuracy)", "Data")
    system_prompt: str | None = setting(None, "a system message before each prompt (none by default)", "Data")
    per_device_train_batch_size: int = setting(8, "sequences per optimizer step on each process, split into "
                                                  "gradient_accumulation_steps micro-batches (in TRL it is the "
                                                  "micro-batch)", "Optimizer")
    max_length: int | None = setting(1024, "longer sequences (prompt + completion) are cut to this many tokens "
                                           "(TRL's max_length); unset: no limit", "Data")
    completion_only_loss: bool = setting(True, "loss on the completion (assistant) tokens only, not the prompt's "
                                               "(TRL's completion_only_loss)", "Loss")
    packing: bool = setting(False, "pack several sequences into each row of max_length tokens, as TRL's packing (no "
                                   "padding; they never attend to each other)", "Data")
    learning_rate: float = setting(2e-5, "AdamW's peak learning rate (after the warmup)", "Optimizer")
    eval_steps: int = setting(0, "held-out accuracy every N steps (greedy, or over num_generations_eval samples); "
                                 "0: never", "Logging")
    num_generations_eval: int = num_generations_eval_setting()
    eval_temperature: float = eval_temperature_setting()
    eval_dataset: str | None = setting(None, "held-out prompts and answers when the dataset is a file", "Data")
    eval_samples: int = setting(200, "held-out prompts per evaluation", "Data")
    max_completion_length: int = setting(256, "token budget of each reply in the held-out evaluation", "Rollouts")
    stop_at_accuracy: float | None = setting(None, "end the run once held-out accuracy (pass@1 when "
                                                   "num_generations_eval > 1) reaches this (0 to 1; needs eval_steps)",
                                             "Optimizer")

    CPU_SETTINGS: typing.ClassVar[dict[str, int]] = {"per_device_train_batch_size": 4, "max_length": 512,
                                                     "eval_samples": 50}

    def validate(self) -> None:
        super().validate()
        if not self.dataset:
            raise AhaError("no dataset given: set dataset = \"traces.jsonl\" (or a built-in task: addition, arithmetic)")
        check_batch_settings(self)
        if self.per_device_train_batch_size % self.gradient_accumulation_steps:
            raise AhaError(f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) must divide "
                           f"per_device_train_batch_size ({self.per_device_train_batch_size})")
        if self.stop_at_accuracy is not None and not self.eval_steps:
            raise AhaError("stop_at_accuracy needs eval_steps (how often to measure held-out accuracy)")


def check_batch_settings(config: SFTConfig) -> None:
    """The counts and fractions of an SFT-like config that no run can use, as one line."""
    for name in ("per_device_train_batch_size", "max_length", "eval_samples", "max_completion_length"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise AhaError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.eval_steps < 0:
        raise AhaError(f"eval_steps must be 0 (never) or more, got {config.eval_steps}")
    check_eval_settings(config)
    if config.stop_at_accuracy is not None and not 0 <= config.stop_at_accuracy <= 1:
        raise AhaError(f"stop_at_accuracy is a held-out accuracy, between 0 and 1; got {config.stop_at_accuracy}")


class Batch(NamedTuple):
    """One micro-batch, right-padded: ids, attention and loss_mask (B, L). Packed batches have no attention
    mask: their position ids (B, L) restart at 0 for every sequence, and transformers turns that into a
    block-diagonal causal mask, so packed sequences never see each other."""

    ids: torch.Tensor
    attention: torch.Tensor | None
    loss_mask: torch.Tensor
    positions: torch.Tensor | None = None


def tokenize_rows(tokenizer, rows: list[dict], *, system_prompt: str | None = None, max_length: int | None = None,
                  completion_only_loss: bool = True) -> tuple[list[list[int]], list[list[int]]]:
    """(sequences, targets): the rendered prompt (chat template, as at inference), the completion and EOS,
    cut at max_length; targets 1 on the completion and its EOS (everywhere with completion_only_loss=False)."""
    from engine.train.sampling import encode_prompts

    prompt_ids, _, _ = encode_prompts(tokenizer, [row["prompt"] for row in rows], system_prompt)
    completions = tokenizer([row["completion"] for row in rows], add_special_tokens=False).input_ids  # one call
    sequences, targets = [], []
    for prompt, completion in zip(prompt_ids, completions, strict=True):
        completion = completion + [tokenizer.eos_token_id]
        sequence = (prompt + completion)[:max_length] if max_length else prompt + completion
        sequences.append(sequence)
        targets.append([0 if completion_only_loss and index < len(prompt) else 1 for index in range(len(sequence))])
    return sequences, targets


def pad_batch(sequences: list[list[int]], targets: list[list[int]], pad: int, device: Any = None) -> Batch:
    """One sequence per row, right-padded with `pad` (attention and loss_mask 0 there)."""
    import torch

    width = max(len(sequence) for sequence in sequences)
    rest = [width - len(sequence) for sequence in sequences]  # one tensor per field: no per-row copies
    ids = torch.tensor([sequence + [pad] * gap for sequence, gap in zip(sequences, rest, strict=True)])  # (B, L)
    attention = torch.tensor([[1] * len(sequence) + [0] * gap for sequence, gap in zip(sequences, rest, strict=True)])
    loss_mask = torch.tensor([list(target) + [0] * gap for target, gap in zip(targets, rest, strict=True)])  # (B, L)
    return Batch(ids.to(device), attention.to(device), loss_mask.to(device))


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: sequence indices grouped into bins whose lengths sum to ≤ capacity (a longer
    sequence gets a bin of its own). Each bin is one row of a packed batch."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [b for b in range(len(bins)) if room[b] >= lengths[index]]
        if fits:
            best = min(fits, key=lambda b: room[b])
            bins[best].append(index)
            room[best] -= lengths[index]
        else:
            bins.append([index])
            room.append(capacity - lengths[index])
    return bins


def pack_batch(sequences: list[list[int]], targets: list[list[int]], capacity: int, pad: int,
               device: Any = None) -> Batch:
    """Sequences packed into rows of up to `capacity` tokens (pack_bins), position ids restarting at each
    sequence; a row's tail padding continues as a sequence of its own that no loss covers."""
    import torch

    rows = pack_bins([len(sequence) for sequence in sequences], capacity)
    width = max(sum(len(sequences[index]) for index in row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (R, L)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (R, L)
    positions = torch.zeros((len(rows), width), dtype=torch.long)  # (R, L)
    for row, members in enumerate(rows):
        start = 0
        for index in members:
            end = start + len(sequences[index])
            ids[row, start:end] = torch.tensor(sequences[index])
            loss_mask[row, start:end] = torch.tensor(targets[index])
            positions[row, start:end] = torch.arange(end - start)
            start = end
        positions[row, start:] = torch.arange(width - start)
    return Batch(ids.to(device), None, loss_mask.to(device), positions.to(device))


def build_batch(tokenizer, rows: list[dict], *, system_prompt: str | None = None, max_length: int | None = None,
                completion_only_loss: bool = True, packing: bool = False, device: Any = None) -> Batch:
    """The micro-batch of `rows` (prompt, completion): padded, or packed into rows of max_length tokens."""
    from engine.train.sampling import pad_token_id

    sequences, targets = tokenize_rows(tokenizer, rows, system_prompt=system_prompt, max_length=max_length,
                                       completion_only_loss=completion_only_loss)
    if packing:
        capacity = max_length or sum(len(sequence) for sequence in sequences)
        return pack_batch(sequences, targets, capacity, pad_token_id(tokenizer), device)
    return pad_batch(sequences, targets, pad_token_id(tokenizer), device)


def model_logits(model, batch: Batch):
    """Logits (B, L−1, V) at positions 0..L−2, the predictions of tokens 1..L−1."""
    return model(input_ids=batch.ids, attention_mask=batch.attention, position_ids=batch.positions,
                 use_cache=False).logits[:, :-1]


def sft_loss(model, batch: Batch):
    """Mean negative log-likelihood of the masked tokens of `batch`.

    1. the hidden states at positions 0..L−2 predict the tokens at 1..L−1 (shift by one)
    2. logp_t = log softmax(logits_{t−1})[ids_t], fp32, the output layer fused in and chunked
       (engine.train.fused_head.token_logp: no (B, L, V) logits)
    3. loss = −Σ_t logp_t · m_t / Σ_t m_t   over the whole batch (every target token weighs the same)
    Returns (loss, {"loss", "token_accuracy", "tokens"}).
    """
    import torch

    from engine.train.fused_head import token_logp

    targets = batch.ids[:, 1:]  # (B, L−1)
    logp, _, hits = token_logp(model, targets, input_ids=batch.ids, attention_mask=batch.attention,
                               position_ids=batch.positions)  # (B, L−1) each
    mask = batch.loss_mask[:, 1:].float()  # (B, L−1)
    tokens = mask.sum().clamp(min=1)  # ()
    loss = -(torch.where(mask > 0, logp, 0.0) * mask).sum() / tokens  # ()
    accuracy = (hits.float() * mask).sum() / tokens  # ()
    return loss, {"loss": float(loss.detach()), "token_accuracy": float(accuracy), "tokens": float(tokens)}


def train_sft(config: SFTConfig | None = None, *, resume: str | Path | None = None, on_event: OnEvent = ignore,
              cancel: CancelToken | None = None) -> dict[str, Any]:
    """Run SFT for config (a new run) or continue the run in `resume`. Returns {"status", "run_dir", "step",
    "model"/"adapter", "eval_accuracy"} (the last held-out accuracy, when measured)."""
    from engine.train.config import run_config
    from engine.train.core import check_model_folder
    from engine.train.data import TaskSource, heldout_rows, open_dataset

    config = run_config(SFTConfig, config, resume)
    check_model_folder(config.model)
    source = open_dataset(config.dataset, config.seed, config.prompt_column, None, required=(config.completion_column,))
    if not isinstance(source, TaskSource) and config.completion_column != "completion":
        source = [{**row, "completion": row[config.completion_column]} for row in source]
    heldout = heldout_rows(source, config.eval_dataset, config.eval_samples, config.seed, config.prompt_column,
                           config.answer_column) if config.eval_steps else []
    return run_sft(config, source, heldout, resume=resume, on_event=on_event, cancel=cancel)


def run_sft(config: SFTConfig, source, heldout: list[dict], *, resume: str | Path | None = None,
            on_event: OnEvent = ignore, cancel: CancelToken | None = None, kind: str = "sft",
            make_step=None) -> dict[str, Any]:
    """The SFT loop on prepared rows: `source` (a TaskSource or rows with prompt and completion), `heldout`
    (rows with prompt and answer). Sets up the run (new, or `resume`'s), the trainer and the data stream,
    fits, saves the final adapter/model. `make_step(config, trainer, stream, heldout)` builds the step
    (default SFTStep). Returns train_sft's result."""
    from engine.train.session import run_session

    make_step = make_step or SFTStep
    return run_session(kind, config, source, lambda trainer, stream: make_step(config, trainer, stream, heldout),
                       describe=_describe, resume=resume, on_event=on_event, cancel=cancel)


def _describe(config: SFTConfig, trainer) -> str:
    """'SFT on MODEL (LoRA r=16, 40,960 trainable parameters, cpu), 8 sequences of up to 1024 tokens per
    step, 100 steps to go'."""
    teacher = getattr(config, "teacher", "")
    what = f"Logit distillation of {config.model} from {teacher}" if teacher else f"SFT on {config.model}"
    lengths = f" of up to {config.max_length} tokens" if config.max_length else ""
    sequences = config.per_device_train_batch_size * trainer.distributed.world_size
    return (f"{what} ({trainer.describe()}), {count(sequences, 'sequences')}{lengths} per step, "
            f"{count(config.max_steps - trainer.step, 'steps')} to go")


class SFTStep:
    """One SFT step as `Trainer.fit` calls it; evaluates and asks the trainer to stop at the target accuracy."""

    def __init__(self, config: SFTConfig, trainer, stream, heldout: list[dict]):
        self.config, self.trainer, self.stream, self.heldout = config, trainer, stream, heldout
        self.last_accuracy: float | None = None

    def __call__(self, step: int) -> dict[str, float]:
        import time

        from engine.train.core import StepAbandoned

        config, trainer = self.config, self.trainer
        if trainer.step_cancel is not None and trainer.step_cancel.cancelled:
            raise StepAbandoned
        started = time.perf_counter()
        distributed = trainer.distributed  # per_device_train_batch_size rows for each process
        rows = self.stream.next(config.per_device_train_batch_size * distributed.world_size)
        rows = rows[distributed.rank::distributed.world_size]
        micro = config.per_device_train_batch_size // config.gradient_accumulation_steps
        batches = self.batches(rows, micro)
        total_tokens = sum(float(batch.loss_mask[:, 1:].sum()) for batch in batches)
        metrics: dict[str, float] = {}
        for index, batch in enumerate(batches):
            with trainer.accumulate(last=index == len(batches) - 1):
                loss, details = self.loss(batch)
                share = details.pop("tokens") / max(total_tokens, 1.0)  # token-weighted, as one big batch
                (loss * share).backward()
            for key, value in details.items():
                metrics[key] = metrics.get(key, 0.0) + value * share
        metrics.update(trainer.optimizer_step())
        metrics["training_s"] = time.perf_counter() - started
        metrics["tokens"] = sum(distributed.gather(total_tokens))  # the loss tokens of every process
        metrics["tokens_per_s"] = metrics["tokens"] / metrics["training_s"]
        if config.eval_steps and (step % config.eval_steps == 0 or step == config.max_steps):
            metrics.update(self.evaluate())
        return metrics

    def batches(self, rows: list[dict], micro: int) -> list[Batch]:
        """The step's micro-batches of `micro` rows each."""
        config = self.config
        return [build_batch(self.trainer.tokenizer, rows[start:start + micro], system_prompt=config.system_prompt,
                            max_length=config.max_length, completion_only_loss=config.completion_only_loss,
                            packing=config.packing, device=self.trainer.device)
                for start in range(0, len(rows), micro)]

    def loss(self, batch: Batch):
        """(loss, details with "tokens", the masked target count) of one micro-batch."""
        return sft_loss(self.trainer.training_model, batch)

    def evaluate(self) -> dict[str, float]:
        from engine.train.sampling import evaluate_heldout

        with self.trainer.sampling():
            metrics = evaluate_heldout(self.trainer.model, self.trainer.tokenizer, self.heldout, self.config)
        accuracy = self.last_accuracy = metrics["eval/accuracy"]  # pass@1 over the k samples when k > 1
        if self.config.stop_at_accuracy is not None and accuracy >= self.config.stop_at_accuracy:
            self.trainer.should_stop = True
            what = "accuracy" if self.config.num_generations_eval == 1 else (
                f"pass@1 (k={self.config.num_generations_eval})")
            self.trainer.run.log(f"held-out {what} {accuracy:.1%} reached stop_at_accuracy "
                                 f"{self.config.stop_at_accuracy:.1%}: stopping")
        return metrics
