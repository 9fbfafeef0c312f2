"""Benchmark: one GRPO step of `aha grpo` vs TRL's GRPOTrainer, same tiny model, data, reward and settings.

The char-level Qwen2 of the learning test (random weights), the built-in 3-digit addition task,
reward = accuracy + 0.2·format, 16 prompts × 8 generations of up to 32 tokens at temperature 0.7,
LoRA r=16 α=32 on all linear layers, lr 1e-3, β=0, one update per batch in --micro-batches 4 of 32
(gradient_accumulation_steps in both; aha sorts the rollouts by length into them), gradient
checkpointing off in both as aha's default (--gradient-checkpointing turns it on in both, TRL's
default), CPU. Each run is a child process (so peak RSS is its own), the two alternate, and the first
step of each run is warm-up.
Prints median step time, peak RSS and the ratios, and next to them each side's mean completion length
over the timed steps (`completions/mean_length`, which both trainers log): the step time is only
comparable while the two sample completions of about the same length.
TRL is needed only here, in its own environment: `sh bench/trl_venv.sh`, then run this with
.cache/bench-venv/bin/python (as `make bench` does).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from versus_trl import Marks, main, step_marks  # noqa: E402  (bench/ is the script's folder, on sys.path)

PROMPTS, GENERATIONS, MAX_TOKENS = 16, 8, 32
SETTINGS = dict(learning_rate=1e-3, temperature=0.7, beta=0.0, lora_r=16, lora_alpha=32, seed=0)


LOGGED = ("completions/mean_length",)  # the same metric, by the same name, in both trainers' logs


def run_aha(model: Path, steps: int, out: Path, checkpointing: bool, micro_batches: int) -> Marks:
    from engine.train.grpo import load_grpo_config, train

    marks, on_event, _ = step_marks(LOGGED)
    config = load_grpo_config(None, {
        "model": str(model), "dataset": "addition", "rewards": ["accuracy", "format"], "reward_weights": [1.0, 0.2],
        "prompts_per_step": PROMPTS, "num_generations": GENERATIONS, "max_completion_length": MAX_TOKENS,
        "max_steps": steps, "save_steps": 10_000, "device": "cpu", "output_dir": str(out), "lora_dropout": 0.0,
        "gradient_accumulation_steps": micro_batches, "gradient_checkpointing": checkpointing, **SETTINGS})
    train(config, on_event=on_event)
    return marks


def run_trl(model: Path, steps: int, out: Path, checkpointing: bool, micro_batches: int) -> Marks:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from engine.train.core import load_tokenizer
    from engine.train.data import TaskSource
    from engine.train.rewards import accuracy_reward, format_reward

    marks, _, callback = step_marks(LOGGED)

    def format_weighted(prompts, completions, **columns):
        return [0.2 * r if r is not None else None for r in format_reward(prompts, completions, **columns)]

    source = TaskSource("addition", seed=0)
    rows = [source.row(i) for i in range(PROMPTS * (steps + 1))]
    # Plain-text prompts: the char model's chat template renders just the user's text, as aha applies it.
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]}
                                 for r in rows])
    tokenizer = load_tokenizer(model)  # the char tokenizer as written (AutoTokenizer would rebuild it)
    # One generation of PROMPTS × GENERATIONS per optimizer step (TRL's steps_per_generation defaults to
    # gradient_accumulation_steps), as in aha.
    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=PROMPTS * GENERATIONS // micro_batches,
                      gradient_accumulation_steps=micro_batches,
                      num_generations=GENERATIONS, max_completion_length=MAX_TOKENS, max_steps=steps,
                      learning_rate=SETTINGS["learning_rate"], temperature=SETTINGS["temperature"],
                      beta=SETTINGS["beta"], num_iterations=1, use_cpu=True, bf16=False, report_to="none",
                      logging_steps=1, save_strategy="no", seed=0, loss_type="dapo",
                      gradient_checkpointing=checkpointing)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model, attn_implementation="eager"),
                          reward_funcs=[accuracy_reward, format_weighted], args=args, train_dataset=dataset,
                          processing_class=tokenizer,
                          peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0),
                          callbacks=[callback])
    trainer.train()
    return marks


if __name__ == "__main__":
    main(__file__, __doc__, {"aha": run_aha, "trl": run_trl}, steps=6, warmup=1,
         options={"micro_batches": (int, 4, "forward/backward passes per step (gradient_accumulation_steps)")},
         settings=lambda micro_batches: f"{PROMPTS} prompts x {GENERATIONS} generations x {MAX_TOKENS} tokens, "
                                        f"{micro_batches} micro-batches")
