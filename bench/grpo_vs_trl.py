"""Benchmark: one GRPO step of `aha grpo` vs TRL's GRPOTrainer, same tiny model, data, reward and settings.

The char-level Qwen2 of the learning test (random weights), the built-in 3-digit addition task,
reward = accuracy + 0.2·format, 16 prompts × 8 generations of up to 32 tokens at temperature 0.7,
LoRA r=16 α=32 on all linear layers, lr 1e-3, β=0, one update per batch in 4 micro-batches of 32
(gradient checkpointing off in both, as aha's default; --gradient-checkpointing turns it on in both, TRL's
default), CPU. Each run is a child
process (so peak RSS is its own), the two alternate, and the first step of each run is warm-up.
TRL is needed only here: `pip install trl==1.16.0`. Prints median step time, peak RSS and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS, GENERATIONS, MAX_TOKENS = 16, 8, 32
ACCUMULATION = 4  # the 128 rollouts of a step go through forward/backward as 4 micro-batches of 32
SETTINGS = dict(learning_rate=1e-3, temperature=0.7, beta=0.0, lora_r=16, lora_alpha=32, seed=0)


def run_aha(model: Path, steps: int, out: Path, checkpointing: bool) -> list[float]:
    from engine.grpo import load_grpo_config, train

    marks: list[float] = []
    config = load_grpo_config(None, {
        "model": str(model), "dataset": "addition", "rewards": ["accuracy", "format"], "reward_weights": [1.0, 0.2],
        "prompts_per_step": PROMPTS, "num_generations": GENERATIONS, "max_completion_length": MAX_TOKENS,
        "max_steps": steps, "save_steps": 10_000, "device": "cpu", "output_dir": str(out), "lora_dropout": 0.0,
        "gradient_accumulation_steps": ACCUMULATION, "gradient_checkpointing": checkpointing, **SETTINGS})
    train(config, on_event=lambda event: marks.append(time.perf_counter()) if event["type"] == "metrics" else None)
    return marks


def run_trl(model: Path, steps: int, out: Path, checkpointing: bool) -> list[float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from engine.data import TaskSource
    from engine.rewards import accuracy_reward, format_reward
    from engine.train import load_tokenizer

    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

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
    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=PROMPTS * GENERATIONS // ACCUMULATION,
                      gradient_accumulation_steps=ACCUMULATION,
                      num_generations=GENERATIONS, max_completion_length=MAX_TOKENS, max_steps=steps,
                      learning_rate=SETTINGS["learning_rate"], temperature=SETTINGS["temperature"],
                      beta=SETTINGS["beta"], num_iterations=1, use_cpu=True, bf16=False, report_to="none",
                      logging_steps=1, save_strategy="no", seed=0, loss_type="dapo",
                      gradient_checkpointing=checkpointing)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model, attn_implementation="eager"),
                          reward_funcs=[accuracy_reward, format_weighted], args=args, train_dataset=dataset,
                          processing_class=tokenizer,
                          peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0),
                          callbacks=[Marks()])
    trainer.train()
    return marks


def child(which: str, model: Path, steps: int, checkpointing: bool) -> None:
    import torch

    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        marks = (run_aha if which == "aha" else run_trl)(model, steps, Path(out), checkpointing)
    steps_s = [b - a for a, b in zip([start, *marks], marks, strict=False)]
    print(json.dumps({"step_s": steps_s}))


def measure(which: str, model: Path, steps: int, checkpointing: bool) -> tuple[float, float]:
    """(median step seconds after the first, peak RSS MB) of one child run."""
    process = subprocess.Popen([sys.executable, __file__, "--child", which, "--model", str(model),
                                "--steps", str(steps), *(["--gradient-checkpointing"] if checkpointing else [])], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{which} run failed (status {status}); run it alone with --child {which} to see why")
    step_s = json.loads(output.strip().splitlines()[-1])["step_s"]
    return statistics.median(step_s[1:]), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="both with gradient checkpointing (TRL's GRPOConfig default; aha's is off)")
    parser.add_argument("--child", choices=("aha", "trl"))
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.steps, args.gradient_checkpointing)
        return
    with tempfile.TemporaryDirectory() as work:
        model = Path(work) / "char-model"
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        "from tests.support.char_model import make_char_model; "
                        f"make_char_model(__import__('pathlib').Path({str(model)!r}))"], check=True)
        results: dict[str, list[tuple[float, float]]] = {"trl": [], "aha": []}
        for _ in range(args.rounds):
            for which in ("trl", "aha"):
                results[which].append(measure(which, model, args.steps, args.gradient_checkpointing))
    summary = {}
    for which, rows in results.items():
        step = statistics.median(r[0] for r in rows)
        rss = max(r[1] for r in rows)
        summary[which] = (step, rss)
        print(f"{which:4s} step {step:6.2f} s (runs: {', '.join(f'{r[0]:.2f}' for r in rows)})   peak RSS {rss:6.0f} MB")
    print(f"ratio aha/TRL: step time {summary['aha'][0] / summary['trl'][0]:.2f}x, "
          f"peak memory {summary['aha'][1] / summary['trl'][1]:.2f}x "
          f"({PROMPTS} prompts x {GENERATIONS} generations x {MAX_TOKENS} tokens, {ACCUMULATION} micro-batches, "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, CPU, 2 threads)")


if __name__ == "__main__":
    main()
