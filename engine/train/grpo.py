"""GRPO (DeepSeekMath, arXiv 2402.03300; DeepSeek-R1, arXiv 2501.12948): the config, the rollouts and the
training loop behind `aha grpo`, with the pure math re-exported from `engine.train.grpo_math`.

One step: prompts_per_step prompts × num_generations completions from the KV-cache sampler → rewards
(`engine.train.rewards`) → group advantages → num_iterations updates of the clipped surrogate loss. The model
setup, checkpoints, resume, cancel and metrics plumbing are `engine.train.core`'s.
"""

from __future__ import annotations

import contextlib
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import AhaError
from engine.jobs import CancelToken, OnEvent, count, ignore
from engine.train.config import eval_temperature_setting, num_generations_eval_setting, setting
from engine.train.core import StepAbandoned, TrainConfig
from engine.train.grpo_math import (
    frac_reward_zero_std,
    group_advantages,
    grpo_loss,
)
from engine.train.sampling import check_eval_settings

__all__ = ["GRPOConfig", "LOSS_TYPES", "group_advantages", "grpo_loss", "load_grpo_config", "train"]

# TRL's loss_type names → grpo_math aggregations.
LOSS_TYPES = {"grpo": "sequence", "dapo": "token", "dr_grpo": "constant"}
# grpo_loss's metric names → the names recorded per step.
CLIP_METRICS = {"clip_ratio_low": "clip_ratio/low", "clip_ratio_high": "clip_ratio/high",
                "clip_ratio_region": "clip_ratio/region"}


@dataclass(frozen=True)
class GRPOConfig(TrainConfig):
    """`aha grpo` settings: TRL GRPOConfig names where the concept is the same. One step is one batch of
    prompts_per_step × num_generations rollouts and num_iterations optimizer updates on it (with μ = 1,
    the default, exactly one update: then a step is what TRL calls a step)."""

    dataset: str = setting("", "the prompts: a built-in task (addition, arithmetic), a .jsonl/.csv/.parquet file or a "
                               "Hugging Face dataset owner/name[:split]", "Data")
    prompt_column: str = setting("prompt", "the dataset's column holding the prompt", "Data")
    answer_column: str = setting("answer", "the dataset's column holding the ground truth (for the accuracy and "
                                           "length rewards)", "Data")
    system_prompt: str | None = setting(None, "a system message before each prompt; none by default, as DeepSeek "
                                              "advises instructions in the user turn", "Data")
    rewards: tuple[str, ...] = setting(("accuracy", "format"), "reward functions, summed into each completion's "
                                                               "reward (TRL's reward_funcs): accuracy, format, length, "
                                                               "language, reward_model, judge, "
                                                               "repetition or path/to/file.py:function", "Loss")
    reward_weights: tuple[float, ...] | None = setting(None, "one weight per reward in that sum (TRL's "
                                                             "reward_weights); unset: 1 each", "Loss")
    reward_tasks: tuple[str, ...] | None = setting(None, "rewards that apply only to some rows, by the data's task "
                                                         "column: reward=task1|task2 entries (e.g. accuracy=math "
                                                         "reward_model=general, as R1's stage 4); a reward not named "
                                                         "scores every row", "Loss")
    language: str | None = setting(None, "target language of the thought for the language reward (ISO 639-1: en, "
                                         "zh, de …); unset: the prompt's language", "Loss")
    reward_model: str | None = setting(None, "a Hugging Face sequence-classification reward model folder for the "
                                             "reward_model reward (Skywork-Reward, ArmoRM …); it scores prompt + "
                                             "answer, the thought left out", "Loss")
    reward_model_device: str | None = setting(None, "device of the reward model (cuda:1, cpu); unset: the "
                                                    "training device's kind", "Model")
    reward_model_4bit: bool = setting(False, "load the reward model in 4 bits (bitsandbytes NF4)", "Model")
    reward_model_batch_size: int = setting(8, "completions per reward-model forward pass", "Loss")
    judge_url: str | None = setting(None, "OpenAI-compatible base URL of a generative judge for the judge reward "
                                          "(e.g. http://localhost:11434/v1); it rates prompt + answer 1-10, "
                                          "scored (n - 1) / 9", "Loss")
    judge_model: str | None = setting(None, "the judge's model name (unset: the one the endpoint serves)", "Loss")
    judge_template: str | None = setting(None, "a prompt-template file with {question} and {answer} (unset: "
                                               "MT-Bench's single-answer grading)", "Loss", metavar="FILE")
    judge_api_key_env: str | None = setting(None, "environment variable holding the judge's API key", "Loss",
                                            metavar="VAR")
    judge_concurrency: int = setting(4, "judge requests in flight", "Loss")
    judge_timeout: float = setting(60.0, "seconds to wait for one judge reply; an unanswered sample is left "
                                         "unscored, not 0", "Loss")
    judge_retries: int = setting(2, "retries of a judge request that timed out or failed", "Loss")
    prompts_per_step: int = setting(16, "prompts sampled per step, so the batch is prompts_per_step × "
                                        "num_generations completions (TRL sizes it in completions)", "Rollouts")
    num_generations: int = setting(8, "G: completions per prompt, compared with each other for the group "
                                      "advantages (TRL's num_generations)", "Rollouts")
    max_prompt_length: int | None = setting(None, "longer prompts keep their last N tokens, as TRL's "
                                                  "max_prompt_length (unset: no limit)", "Data")
    max_completion_length: int = setting(256, "token budget of each completion (TRL's max_completion_length); "
                                              "longer ones are cut (clipped)", "Rollouts")
    temperature: float = setting(0.7, "sampling temperature of the completions (the log-probs use it too)",
                                 "Rollouts")
    top_p: float = setting(1.0, "nucleus sampling: sample from the smallest token set with this much probability",
                           "Rollouts")
    beta: float = setting(0.0, "β, the KL penalty towards the starting model (TRL's beta); 0 needs no reference "
                               "forward pass", "Loss")
    epsilon: float = setting(0.2, "clip range ε (ε_low, TRL's epsilon): how far one update may move a token's "
                                  "probability ratio", "Loss")
    epsilon_high: float | None = setting(None, "upper clip ε_high (TRL's epsilon_high; DAPO's clip-higher uses "
                                               "0.28); unset: epsilon", "Loss")
    loss_type: str = setting("dapo", "loss normalisation (TRL's loss_type): grpo (per sequence, DeepSeekMath), dapo "
                                     "(per token, DAPO) or dr_grpo (a constant, Dr. GRPO)", "Loss",
                             choices=tuple(LOSS_TYPES))
    scale_rewards: str = setting("group", "divide advantages by the reward std of the group, the batch, or none "
                                          "(Dr. GRPO), as TRL's scale_rewards", "Loss",
                                 choices=("group", "batch", "none"))
    importance_sampling_level: str = setting("token", "importance ratio per token (PPO, GRPO) or one per "
                                                      "completion, the length-normalized sequence ratio of GSPO "
                                                      "(TRL's importance_sampling_level; GSPO pairs it with "
                                                      "loss_type grpo); it only matters with num_iterations > 1",
                                             "Loss", choices=("token", "sequence"))
    num_iterations: int = setting(1, "μ: optimizer updates on each batch of rollouts (TRL's num_iterations)",
                                  "Optimizer")
    mask_truncated_completions: bool = setting(False, "leave clipped completions (no EOS within the budget) out "
                                                      "of the loss, as DAPO's overlong filtering (TRL's "
                                                      "mask_truncated_completions)", "Loss")
    learning_rate: float = setting(1e-5, "AdamW's peak learning rate (after the warmup)", "Optimizer")
    eval_steps: int = setting(0, "held-out accuracy every N steps (a built-in task's held-out prompts or "
                                 "eval_dataset; greedy, or over num_generations_eval samples); 0: never", "Logging")
    num_generations_eval: int = num_generations_eval_setting()
    eval_temperature: float = eval_temperature_setting()
    eval_dataset: str | None = setting(None, "held-out prompts and answers for eval_steps when the dataset is a file",
                                       "Data")
    eval_samples: int = setting(200, "held-out prompts per evaluation", "Data")

    MEMORY_SETTINGS: typing.ClassVar[dict[str, tuple[str, ...]]] = {
        "generation": ("prompts_per_step", "num_generations", "max_completion_length"),
        "training": ("prompts_per_step", "num_generations", "max_completion_length", "gradient_accumulation_steps"),
    }
    CPU_SETTINGS: typing.ClassVar[dict[str, int]] = {"prompts_per_step": 4, "num_generations": 4,
                                                     "max_completion_length": 128, "eval_samples": 50}

    def validate(self) -> None:
        super().validate()
        if not self.dataset:
            raise AhaError("no dataset given: set dataset = \"file.jsonl\" (or a built-in task: addition, "
                           "arithmetic) in the config or pass --dataset")
        if self.loss_type not in LOSS_TYPES:
            raise AhaError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise AhaError(f"scale_rewards must be group, batch or none, got {self.scale_rewards!r}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise AhaError(f"importance_sampling_level must be token or sequence, "
                           f"got {self.importance_sampling_level!r}")
        if self.num_generations < 2:
            raise AhaError("num_generations must be at least 2: GRPO compares completions of the same prompt")
        for name in ("prompts_per_step", "max_completion_length", "num_iterations"):
            if getattr(self, name) < 1:
                raise AhaError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise AhaError("temperature must be > 0 for GRPO: greedy completions of a prompt are all equal")
        if not 0 < self.top_p <= 1:
            raise AhaError(f"top_p must be above 0 and at most 1, got {self.top_p}")
        for name in ("beta", "epsilon", "eval_steps"):
            if not getattr(self, name) >= 0:
                raise AhaError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.epsilon_high is not None and not self.epsilon_high >= self.epsilon:
            raise AhaError(f"epsilon_high ({self.epsilon_high}) must be at least epsilon ({self.epsilon})")
        check_eval_settings(self)
        for name in ("max_prompt_length", "eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AhaError(f"{name} must be at least 1, got {getattr(self, name)}")
        from engine.train.rewards import CONFIGURED_REWARDS, parse_reward_tasks

        for name, needs in CONFIGURED_REWARDS.items():
            if name in self.rewards and not getattr(self, "judge_url" if name == "judge" else name):
                raise AhaError(f"the {name} reward needs the setting {needs}")
        parse_reward_tasks(self.reward_tasks, self.rewards)
        for name in ("reward_model_batch_size", "judge_concurrency"):
            if getattr(self, name) < 1:
                raise AhaError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.judge_timeout > 0 or self.judge_retries < 0:
            raise AhaError("judge_timeout must be above 0 seconds and judge_retries 0 or more")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise AhaError(f"{len(self.rewards)} rewards but {len(self.reward_weights)} reward_weights: give one each")
        batch = self.prompts_per_step * self.num_generations
        if batch % self.gradient_accumulation_steps:
            raise AhaError(f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) must divide "
                           f"prompts_per_step × num_generations ({batch})")


def load_grpo_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> GRPOConfig:
    """Defaults, then the TOML file, then flags; validated."""
    from engine.train.config import load_config

    config = load_config(GRPOConfig, path, overrides)
    config.validate()
    return config


# The loop -----------------------------------------------------------------------------------------

def train(config: GRPOConfig | None = None, *, resume: str | Path | None = None,
          overrides: dict[str, Any] | None = None, on_event: OnEvent = ignore,
          cancel: CancelToken | None = None) -> dict[str, Any]:
    """Run GRPO for config (a new run) or continue the run in `resume` (its saved config; `overrides`
    may change max_steps, save_steps, logging_steps and eval_steps). Returns {"status", "run_dir",
    "step", "adapter"/"model"}; the caller emits `done`. SIGINT/SIGTERM cancel cleanly when called from
    the main thread (engine.train.session). Under `accelerate launch`/torchrun each process trains on its share of the prompts."""
    from engine.train.config import run_config
    from engine.train.core import check_model_folder
    from engine.train.data import open_dataset
    from engine.train.rewards import build_reward_set
    from engine.train.session import run_session

    config = run_config(GRPOConfig, config, resume, overrides)
    # Everything a user can get wrong in the config fails here, before minutes of model loading.
    check_model_folder(config.model)
    rewards = build_reward_set(config)
    needs_answer = "accuracy" in config.rewards or "length" in config.rewards
    source = open_dataset(config.dataset, config.seed, config.prompt_column,
                          config.answer_column if needs_answer else None)
    heldout = _heldout_rows(config, source)

    def check(distributed) -> None:
        if config.prompts_per_step % distributed.world_size:
            raise AhaError(f"prompts_per_step ({config.prompts_per_step}) must be a multiple of the number of "
                           f"processes ({distributed.world_size})")
        rows = config.prompts_per_step // distributed.world_size * config.num_generations  # each process's batch
        if rows % config.gradient_accumulation_steps:
            raise AhaError(f"gradient_accumulation_steps ({config.gradient_accumulation_steps}) must divide each "
                           f"process's {rows} rollouts (prompts_per_step / {distributed.world_size} processes × "
                           "num_generations)")

    def make_step(trainer, stream):
        return GRPOStep(config, trainer, rewards, stream, _reference_model(config, trainer), heldout)

    return run_session("grpo", config, source, make_step, describe=_describe, resume=resume, on_event=on_event,
                       cancel=cancel, check=check)


def _describe(config: GRPOConfig, trainer) -> str:
    """'GRPO on MODEL (LoRA r=16, 40,960 trainable parameters, cpu), 16 prompts × 8 completions of up to 256
    tokens per step, 100 steps to go'."""
    return (f"GRPO on {config.model} ({trainer.describe()}), {config.prompts_per_step} prompts × "
            f"{config.num_generations} completions of up to {config.max_completion_length} tokens per step, "
            f"{count(config.max_steps - trainer.step, 'steps')} to go")


def _heldout_rows(config: GRPOConfig, source) -> list[dict]:
    from engine.train.data import heldout_rows

    if not config.eval_steps:
        return []
    return heldout_rows(source, config.eval_dataset, config.eval_samples, config.seed, config.prompt_column,
                        config.answer_column)


def _reference_model(config: GRPOConfig, trainer):
    """None when β = 0 (no reference forward at all) or under LoRA (the adapter is disabled instead);
    a frozen second copy only for full fine-tuning with β > 0."""
    from engine.train.core import load_model

    if config.beta == 0 or config.use_peft:
        return None
    model, _ = load_model(config, trainer.device, trainable=False)
    return model


class MicroBatch(typing.NamedTuple):
    """Rows of one forward/backward: ids and attention (n, P + T), completion_ids and loss_mask (n, T),
    advantages (n,); T is the longest completion among these rows."""

    ids: typing.Any
    attention: typing.Any
    completion_ids: typing.Any
    loss_mask: typing.Any
    advantages: typing.Any


def micro_batches(ids, attention, completion_ids, loss_mask, advantages, count: int) -> list[MicroBatch]:
    """The batch as `count` micro-batches of equal row counts, rows grouped by completion length (shortest
    first) and each micro-batch cut after its own longest completion, so short completions do not pay for
    the padding of long ones. The loss is a weighted sum over micro-batches, so order does not change it.
    ids/attention (N, P + T), completion_ids/loss_mask (N, T) with the completion's tokens (and its EOS)
    counted by attention[:, P:], advantages (N,)."""
    import torch

    batch, prompt = ids.shape[0], ids.shape[1] - completion_ids.shape[1]
    lengths = attention[:, prompt:].sum(1)  # (N,)
    order = torch.argsort(lengths, stable=True) if count > 1 else torch.arange(batch, device=ids.device)  # (N,)
    size = batch // count
    parts = []
    for start in range(0, batch, size):
        rows = order[start:start + size]  # (n,)
        width = max(int(lengths[rows].max()), 1)
        parts.append(MicroBatch(ids[rows, :prompt + width], attention[rows, :prompt + width],
                                completion_ids[rows, :width], loss_mask[rows, :width], advantages[rows]))
    return parts


class GRPOStep:
    """One GRPO step as `Trainer.fit` calls it: step number in, metrics out."""

    def __init__(self, config: GRPOConfig, trainer, rewards, stream, reference, heldout: list[dict]):
        from engine.train.sampling import eos_token_ids, pad_token_id

        self.config, self.trainer, self.rewards, self.stream = config, trainer, rewards, stream
        self.reference, self.heldout = reference, heldout
        self.model, self.tokenizer = trainer.model, trainer.tokenizer
        self.eos = eos_token_ids(self.tokenizer, self.model)
        self.pad = pad_token_id(self.tokenizer)
        self.aggregation = LOSS_TYPES[config.loss_type]
        self.epsilon_high = config.epsilon if config.epsilon_high is None else config.epsilon_high
        self.signals = _signal_watch(config, trainer)

    def __call__(self, step: int) -> dict[str, float]:
        import torch

        config, trainer = self.config, self.trainer
        group = config.num_generations
        rows = self.stream.next(config.prompts_per_step)
        distributed = trainer.distributed
        rows = rows[distributed.rank::distributed.world_size]  # this process's share of the prompts

        # 1. Rollouts: G consecutive completions per prompt (group_advantages' layout).
        trainer.phase = "generation"
        trainer.report_phase("rollout")
        prompt_ids, rendered, prefilled = self._encode([row["prompt"] for row in rows])
        with trainer.sampling():
            rollout = _sample(self.model, [ids for ids in prompt_ids for _ in range(group)], config, self.eos,
                              self.pad, trainer.step_cancel)
        if rollout.cancelled:
            raise StepAbandoned
        generation_s = rollout.seconds
        trainer.phase = "training"
        trainer.report_phase("update")
        started = time.perf_counter()
        texts = _decode(self.tokenizer, rollout, self.eos)

        # 2. Rewards (NaN: unscored) and advantages.
        repeat = [index for index in range(len(rows)) for _ in range(group)]
        keys = dict.fromkeys(key for row in rows for key in row if key != "prompt")  # every column, in order
        columns = {key: [rows[index].get(key) for index in repeat] for key in keys}
        columns.update(prefilled=[prefilled[index] for index in repeat],
                       completion_ids=[ids[:length] for ids, length in
                                       zip(rollout.completion_ids.tolist(), rollout.lengths.tolist(), strict=True)])
        scores = self.rewards.score([rows[index]["prompt"] for index in repeat], texts, **columns)
        rewards = torch.tensor(scores.totals, dtype=torch.float32, device=trainer.device)  # (N,)
        if config.scale_rewards == "batch" and distributed.enabled:  # the std of every process's rewards
            every = torch.tensor([total for totals in distributed.gather(scores.totals) for total in totals],
                                 dtype=torch.float32, device=trainer.device)  # (world · N,)
            mine = slice(distributed.rank * len(rewards), (distributed.rank + 1) * len(rewards))
            advantages = group_advantages(every, group, scale="batch")[mine]  # (N,)
        else:
            advantages = group_advantages(rewards, group, scale=config.scale_rewards)  # (N,)

        # 3. μ updates on the batch.
        ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)  # (N, P + T)
        attention = torch.cat([rollout.prompt_mask, rollout.mask], 1)  # (N, P + T)
        loss_mask = rollout.mask * rollout.terminated[:, None] if config.mask_truncated_completions else rollout.mask  # (N, T)
        update = self._updates(ids, attention, rollout.completion_ids, loss_mask, advantages)
        training_s = time.perf_counter() - started

        # Every process's rollouts go into the step's metrics and samples (rank 0 records them).
        shares = distributed.gather({
            "totals": scores.totals, "per_reward": scores.per_reward, "lengths": rollout.lengths.tolist(),
            "terminated": rollout.terminated.tolist(), "update": update, "errors": scores.errors,
            "samples": _samples(rows, rendered, prefilled, texts, scores, advantages, rollout, group)})
        for error in dict.fromkeys(error for share in shares for error in share["errors"]):
            trainer.run.log(error, "warning")
        metrics = _metrics(shares, group, generation_s, training_s)
        samples = [record for share in shares for record in share["samples"]]
        trainer.run.log_samples(step, samples)
        if config.eval_steps and (step % config.eval_steps == 0 or step == config.max_steps):
            metrics.update(self.evaluate())
        for warning in self.signals.update(step, metrics, samples):  # each learning-signal warning once
            trainer.run.log(warning.message, "warning")
        return metrics

    def evaluate(self) -> dict[str, float]:
        from engine.train.sampling import evaluate_heldout

        with self.trainer.sampling():
            return evaluate_heldout(self.model, self.tokenizer, self.heldout, self.config)

    def _encode(self, prompts: list) -> tuple[list[list[int]], list[str], list[bool]]:
        from engine.train.sampling import encode_prompts

        ids, rendered, prefilled = encode_prompts(self.tokenizer, prompts, self.config.system_prompt)
        if self.config.max_prompt_length:
            ids = [sequence[-self.config.max_prompt_length:] for sequence in ids]
        return ids, rendered, prefilled

    def _updates(self, ids, attention, completion_ids, loss_mask, advantages) -> dict[str, float]:
        """num_iterations optimizer steps on one batch, each over gradient_accumulation_steps micro-batches
        (micro_batches: grouped by completion length, each cut after its longest completion).

        old_logp: with μ = 1 it is logp.detach() (ρ ≡ 1, no extra forward); with μ > 1 it is computed once,
        before the first update. ref_logp: only when β ≠ 0, with the adapter disabled (or the frozen copy).
        Micro-batch losses are weighted so their sum is the loss of the whole batch for every aggregation.
        Under several processes DDP averages the ranks' gradients: exact for "sequence" and "constant"
        (equal shares), per-process token counts for "token".
        """
        import torch

        config, trainer = self.config, self.trainer
        batch = completion_ids.shape[0]
        parts = micro_batches(ids, attention, completion_ids, loss_mask, advantages, config.gradient_accumulation_steps)
        total_tokens = loss_mask.sum().clamp(min=1)  # ()
        old_logp: list = [None] * len(parts)
        ref_logp: list = [None] * len(parts)
        if config.num_iterations > 1:
            with torch.no_grad():
                old_logp = [self._logp(self.model, part)[0] for part in parts]  # (n, T_part) each
        if config.beta != 0:
            with torch.no_grad(), self._reference_context() as reference:
                ref_logp = [self._logp(reference, part)[0] for part in parts]  # (n, T_part) each
        totals: dict[str, float] = {}
        entropy_sum = 0.0
        steps = []
        for iteration in range(config.num_iterations):
            for index, part in enumerate(parts):
                with trainer.accumulate(last=index == len(parts) - 1):
                    logp, entropy = self._logp(trainer.training_model, part, with_entropy=iteration == 0)  # (n, T) ×2
                    old = old_logp[index] if old_logp[index] is not None else logp.detach()  # (n, T)
                    loss, metrics = grpo_loss(logp, old, ref_logp[index], part.advantages, part.loss_mask,
                                              epsilon_low=config.epsilon, epsilon_high=self.epsilon_high,
                                              beta=config.beta, aggregation=self.aggregation,
                                              max_len=config.max_completion_length,
                                              importance_sampling_level=config.importance_sampling_level)
                    share = (part.loss_mask.sum() / total_tokens if self.aggregation == "token"
                             else torch.tensor(len(part.advantages) / batch))  # this micro-batch's weight
                    (loss * share).backward()
                weight = float(share) / config.num_iterations
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * weight
                for key, value in metrics.items():
                    totals[key] = totals.get(key, 0.0) + value * weight
                if entropy is not None:
                    entropy_sum += float((entropy * part.loss_mask).sum())
            steps.append(trainer.optimizer_step())
        totals["grad_norm"] = sum(update["grad_norm"] for update in steps) / len(steps)  # mean over the μ updates
        totals["learning_rate"] = steps[0]["learning_rate"]
        totals["entropy"] = entropy_sum / float(total_tokens)
        return totals

    def _logp(self, model, part: MicroBatch, with_entropy: bool = False):
        """Log-probs of the completion tokens under `model` at the sampling temperature, in fp32, with the
        output layer fused into the log-softmax and chunked (engine.train.fused_head: no (n, T, V) logits):
        ids (n, P + T) → logp (n, T); and the per-token entropy (n, T) when asked (no grad)."""
        from engine.train.fused_head import token_logp
        from engine.train.sampling import position_ids

        logp, entropy, _ = token_logp(model, part.completion_ids, self.config.temperature, input_ids=part.ids,
                                      attention_mask=part.attention, position_ids=position_ids(part.attention))
        return logp, entropy if with_entropy else None

    @contextlib.contextmanager
    def _reference_context(self):
        """The reference policy: the frozen copy (full fine-tuning), else the same model with its LoRA
        adapter switched off (peft's disable_adapter), so no second copy is ever loaded."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.model.disable_adapter():
                yield self.model

def _signal_watch(config: GRPOConfig, trainer):
    """The run's learning-signal watch (engine.train.signals). A resumed run replays the steps it kept, so a
    warning given before the resume is not given again."""
    import dataclasses

    from engine.train.follow import read_jsonl
    from engine.train.signals import SignalWatch

    watch = SignalWatch(dataclasses.asdict(config))
    if trainer.step:
        samples: dict[int, list[dict]] = {}
        for record in read_jsonl(trainer.run.dir / "samples.jsonl"):
            samples.setdefault(int(record.get("step", 0)), []).append(record)
        for record in read_jsonl(trainer.run.dir / "metrics.jsonl"):
            watch.update(int(record.get("step", 0)), record, samples.get(int(record.get("step", 0))))
    return watch


def _metrics(shares: list[dict], group: int, generation_s: float, training_s: float) -> dict[str, float]:
    """The step's metrics over every process's share (one share alone): rewards, each reward's mean,
    completion lengths, and the update's loss/clip/KL/entropy averaged over the processes (their shares
    are equal). Unscored samples (NaN) count in `unscored` only."""
    import torch

    rewards = torch.tensor([total for share in shares for total in share["totals"]], dtype=torch.float32)  # (N,)
    scored = rewards[~torch.isnan(rewards)]  # (S,)
    lengths = torch.tensor([length for share in shares for length in share["lengths"]], dtype=torch.float32)  # (N,)
    terminated = torch.tensor([done for share in shares for done in share["terminated"]], dtype=torch.bool)  # (N,)
    metrics = {
        "reward": float(scored.mean()) if scored.numel() else math.nan,
        "reward_std": float(scored.std()) if scored.numel() > 1 else 0.0,
        "frac_reward_zero_std": frac_reward_zero_std(rewards, group),
        "unscored": float(torch.isnan(rewards).float().mean()),
    }
    for name in shares[0]["per_reward"]:
        present = [value for share in shares for value in share["per_reward"][name] if value is not None]
        metrics[f"rewards/{name}/mean"] = sum(present) / len(present) if present else math.nan
    if "rewards/accuracy/mean" in metrics:
        metrics["accuracy"] = metrics["rewards/accuracy/mean"]
    metrics.update({
        "completions/mean_length": float(lengths.mean()),
        "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": float((~terminated).float().mean()),
        "completions/mean_terminated_length": float(lengths[terminated].mean()) if terminated.any() else 0.0,
        "completions/mean_clipped_length": float(lengths[~terminated].mean()) if (~terminated).any() else 0.0,
    })
    for key in shares[0]["update"]:
        value = sum(share["update"][key] for share in shares) / len(shares)
        metrics[CLIP_METRICS.get(key, key)] = value
    tokens = float(lengths.sum())  # every process generated at the same time
    metrics.update({"generation_s": generation_s, "training_s": training_s,
                    "tokens_per_s": tokens / generation_s if generation_s else 0.0})
    return metrics


def _sample(model, prompts, config: GRPOConfig, eos, pad, cancel):
    from engine.train.sampling import sample

    return sample(model, prompts, max_new_tokens=config.max_completion_length, eos_ids=eos, pad_id=pad,
                  temperature=config.temperature, top_p=config.top_p, cancel=cancel)


def _decode(tokenizer, rollout, eos) -> list[str]:
    from engine.train.sampling import decode

    return decode(tokenizer, rollout.completion_ids, rollout.mask, eos)


def _samples(rows, rendered, prefilled, texts, scores, advantages, rollout, group) -> list[dict]:
    """One record per prompt for samples.jsonl and the `sample` event (engine.events.Sample): the prompt,
    its answer, and each completion split at </think>, with its rewards, advantage, length and whether it
    hit max_completion_length (the rollout browser's rows)."""
    from engine.think import split_thinking
    from engine.train.data import prompt_id

    lengths, terminated = rollout.lengths.tolist(), rollout.terminated.tolist()
    records = []
    for index, row in enumerate(rows):
        completions = []
        for offset in range(group):
            sample = index * group + offset
            total = scores.totals[sample]
            thinking, answer_text = split_thinking(texts[sample], prefilled[index])
            completions.append({
                "text": texts[sample], "thinking": thinking, "answer_text": answer_text,
                "rewards": {name: _number(values[sample]) for name, values in scores.per_reward.items()},
                "reward": _number(total), "advantage": float(advantages[sample]),
                "length": lengths[sample], "truncated": not terminated[sample],
            })
        records.append({"prompt_id": prompt_id(row), "prompt": rendered[index], "answer": _text(row.get("answer")),
                        "completions": completions})
    return records


def _number(value: float | None) -> float | None:
    """A score as JSON carries it: NaN (unscored) as None."""
    return None if value is None or math.isnan(value) else float(value)


def _text(value) -> str | None:
    return None if value is None else str(value)
