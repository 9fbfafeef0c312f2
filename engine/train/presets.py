"""Presets of the Train form: named partial configs, per run kind, that fill a few settings and leave the
rest (the model, the dataset, what the user typed) alone. Each preset's values are settings of the kinds'
config classes (engine.train.commands.config_class); tests/test_train_presets.py validates every one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import AhaError

SFT_KINDS = ("distill-sft", "distill-kd")
TRAINING_KINDS = ("grpo", *SFT_KINDS)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str                                   # one sentence: what it is for
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind → {setting: value}

    def values(self, kind: str) -> dict[str, Any]:
        """This preset's settings for a run kind ({} where it has none)."""
        return dict(self.settings.get(kind, {}))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.settings)


def _for(kinds: tuple[str, ...], common: dict[str, Any], **per_kind: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kind: {**common, **per_kind.get(kind.replace("-", "_"), {})} for kind in kinds}


PRESETS: tuple[Preset, ...] = (
    Preset("R1 recipe (accuracy + format, β = 0, DAPO loss)",
           "DeepSeek-R1's rule-based rewards (accuracy and format), no KL penalty (β = 0, no reference model), "
           "DAPO's token-level loss with clip-higher (ε_high 0.28) and overlong filtering, 8 completions per prompt",
           {"grpo": {"rewards": ("accuracy", "format"), "beta": 0.0,
                     "loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "scale_rewards": "group",
                     "mask_truncated_completions": True, "num_generations": 8, "temperature": 1.0}}),
    Preset("QLoRA on an 8 GB GPU",
           "the base in 4-bit NF4 with LoRA r 16 on every linear layer, gradient checkpointing and micro-batches, "
           "for a 1.5B model on an 8 GB CUDA GPU",
           _for(TRAINING_KINDS, {"device": "cuda", "use_peft": True, "load_in_4bit": True, "lora_r": 16,
                                 "lora_alpha": 32, "lora_target_modules": ("all-linear",),
                                 "gradient_checkpointing": True, "gradient_accumulation_steps": 4},
                grpo={"prompts_per_step": 4, "num_generations": 4, "max_completion_length": 512},
                distill_sft={"per_device_train_batch_size": 8, "max_length": 1024},
                distill_kd={"per_device_train_batch_size": 8, "max_length": 1024})),
    Preset("CPU smoke test",
           "tiny sizes that finish in seconds on a CPU: 2 steps of 2 prompts, short completions, LoRA r 4 — to "
           "check that a model, a dataset and rewards work together before a real run",
           {**_for(TRAINING_KINDS, {"device": "cpu", "use_peft": True, "load_in_4bit": False, "lora_r": 4,
                                    "lora_alpha": 8, "max_steps": 2, "save_steps": 2, "eval_steps": 0,
                                    "gradient_accumulation_steps": 1},
                   grpo={"prompts_per_step": 2, "num_generations": 2, "max_completion_length": 8},
                   distill_sft={"per_device_train_batch_size": 2, "max_length": 64, "max_completion_length": 8},
                   distill_kd={"per_device_train_batch_size": 2, "max_length": 64, "max_completion_length": 8}),
            "generate": {"k": 2, "limit": 2, "max_tokens": 16, "concurrency": 1}}),
)


def preset(name: str) -> Preset:
    for item in PRESETS:
        if item.name == name:
            return item
    raise AhaError(f"unknown preset {name!r}: use one of {', '.join(item.name for item in PRESETS)}")


def apply_preset(name: str, kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the preset's settings for `kind` on top (a kind the preset does not cover: unchanged)."""
    return {**values, **preset(name).values(kind)}
