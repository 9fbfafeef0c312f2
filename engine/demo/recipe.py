"""The demo's settings: one `DemoRecipe` per flavour (DEFAULT, the real demo; SMOKE, a few steps of every
stage that check the plumbing and learn nothing), and the configs of the real commands built from it.

Each stage is the command a user would run on a real model (`aha distill sft`, `aha eval`, `aha grpo`), with
settings chosen for the tiny model; `command_line` prints that command so a person can run it by hand.
DEFAULT's numbers were calibrated on 2 CPU cores (bench/demo.py), aiming at the whole demo within 2 minutes
and a GRPO gain of at least 15 points of held-out pass@1 for seeds 0, 1 and 2; what was reached is in the
README. Three findings set them:
- The cold start learns 3-digit addition in a sudden jump: held-out greedy accuracy stays ~0 % for a while,
  then reaches 40–75 % within 50 steps. A model stopped in the middle of the jump (~30 % greedy) is fragile:
  its samples are mostly wrong (pass@1 ~15 %) and GRPO's first updates break it. So the cold start stops once
  it passes 60 % (checked every 10 steps, so it does not overshoot far), past the jump, where pass@1 is
  50–70 % and GRPO has groups to learn from.
- The weights' init sets when the jump comes: transformers' default normal init (std 0.02) is small for width
  64 and the plateau lasted 375–725 steps by seed; at std 0.06 it lasts 190–250 (seeds 0–3), the two thirds
  of the demo's time that varied most by seed.
- The smallest model learns fastest in wall time: 2 layers of width 64 jump no later than 4 of width 128
  (the ~1M-parameter shape of the learning tests), at half the cost per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.demo.model import DemoModelSpec

TASK = "addition"  # 3-digit addition: a programmatic teacher writes one line per column with its carry


@dataclass(frozen=True)
class DemoRecipe:
    """Every number of the demo's stages."""

    model: DemoModelSpec = field(default_factory=DemoModelSpec)
    # stage 2, cold start: full SFT on the task's programmatic traces until held-out greedy accuracy passes
    sft_learning_rate: float = 2e-3
    sft_batch: int = 64
    sft_eval_steps: int = 10            # held-out greedy accuracy this often (the stop rule reads it)
    sft_eval_samples: int = 100
    sft_target: float | None = 0.60     # stop_at_accuracy (None: run sft_max_steps); see the module docstring
    sft_max_steps: int = 1000
    max_completion_length: int = 40     # a trace is ~30 tokens
    # stage 4, GRPO: LoRA on the cold-start model, accuracy + format rewards
    grpo_steps: int = 100
    grpo_prompts: int = 8               # prompts per step
    grpo_generations: int = 8           # the group size G
    grpo_learning_rate: float = 5e-4    # seed 0 at 1e-3: -3.0 points, 7e-4: +13.2, 5e-4: +15.2 (+16.2 warmed 20)
    grpo_temperature: float = 0.6       # the paper's evaluation sampling; 0.7 without top-p learned less
    grpo_top_p: float = 0.95
    grpo_warmup_steps: int = 20         # Adam's first steps on a zero LoRA B are full-sized: warm up
    lora_r: int = 16
    lora_alpha: int = 32
    reward_weights: tuple[float, float] = (1.0, 0.2)   # accuracy, format
    grpo_eval_steps: int = 0            # held-out greedy accuracy in the dashboard every N steps (0: none)
    grpo_eval_samples: int = 100
    # stages 3 and 5, evaluation as in the paper: k samples per problem at temperature 0.6, top-p 0.95
    eval_k: int = 4
    eval_limit: int = 100
    eval_max_tokens: int = 48
    # stage 7: the demo model knows one kind of question, written as it was trained
    chat_question: str = "358+467="


DEFAULT = DemoRecipe()
SMOKE = DemoRecipe(
    model=DemoModelSpec(layers=1, hidden=64, heads=2, kv_heads=2, ffn=128),
    sft_batch=8, sft_eval_steps=2, sft_eval_samples=4, sft_target=None, sft_max_steps=2,
    max_completion_length=16, grpo_steps=2, grpo_prompts=2, grpo_generations=2, grpo_eval_steps=0,
    eval_k=2, eval_limit=4, eval_max_tokens=16)


def sft_config(recipe: DemoRecipe, model: Path, out: Path, seed: int):
    """`aha distill sft --student MODEL --dataset addition …`: the cold start, full fine-tuning (the model is
    random: LoRA would have nothing to adapt), on the task's own teacher traces."""
    from engine.distill.traces import TraceSFTConfig

    return TraceSFTConfig(
        model=str(model), dataset=TASK, use_peft=False, learning_rate=recipe.sft_learning_rate,
        lr_scheduler_type="constant", per_device_train_batch_size=recipe.sft_batch, max_steps=recipe.sft_max_steps,
        eval_steps=recipe.sft_eval_steps, eval_samples=recipe.sft_eval_samples, stop_at_accuracy=recipe.sft_target,
        max_completion_length=recipe.max_completion_length, seed=seed, save_steps=recipe.sft_max_steps,
        output_dir=str(out))


def grpo_config(recipe: DemoRecipe, sft_model: Path, out: Path, seed: int):
    """`aha grpo --model SFT_MODEL --dataset addition …`: LoRA GRPO with the R1 paper's rule-based rewards
    (accuracy, format), no KL term (beta 0, as DAPO and TRL's default), one update per batch."""
    from engine.train.grpo import GRPOConfig

    return GRPOConfig(
        model=str(sft_model), dataset=TASK, use_peft=True, lora_r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
        lora_target_modules=("all-linear",), learning_rate=recipe.grpo_learning_rate, lr_scheduler_type="constant",
        prompts_per_step=recipe.grpo_prompts, num_generations=recipe.grpo_generations,
        temperature=recipe.grpo_temperature, top_p=recipe.grpo_top_p, max_completion_length=recipe.max_completion_length,
        rewards=("accuracy", "format"), reward_weights=recipe.reward_weights, beta=0.0, num_iterations=1,
        loss_type="grpo", warmup_steps=recipe.grpo_warmup_steps, max_steps=recipe.grpo_steps, eval_steps=recipe.grpo_eval_steps,
        eval_samples=recipe.grpo_eval_samples, seed=seed, save_steps=recipe.grpo_steps, output_dir=str(out))


def eval_config(recipe: DemoRecipe, models: tuple[str, ...], out: Path, seed: int):
    """`aha eval MODEL… --dataset addition -k K …`: pass@1 over k samples and cons@k on the held-out
    problems, the first model the baseline."""
    from engine.eval.runner import EvalConfig

    return EvalConfig(models=tuple(models), dataset=TASK, k=recipe.eval_k, limit=recipe.eval_limit,
                      max_tokens=recipe.eval_max_tokens, seed=seed, device="cpu", output_dir=str(out))


def command_line(kind: str, config: Any) -> str:
    """The `aha` command that runs `config` (the settings that differ from the defaults), as a person would
    type it: kind is a Train-form kind (distill-sft, grpo, …) or "eval"."""
    from engine.train.commands import KINDS, changed_values, command_args, setting_flags, shell_line
    from engine.train.config import describe_settings

    if kind == "eval":
        infos = [info for info in describe_settings(type(config)) if info.name != "models"]
        return shell_line(["eval", *config.models, *setting_flags(config, infos)])
    if kind not in KINDS:
        raise ValueError(f"no command for run kind {kind!r}")
    return shell_line(command_args(kind, changed_values(kind, config)))
