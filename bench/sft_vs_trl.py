"""Benchmark: SFT steps on reasoning traces, `aha distill sft` vs TRL's SFTTrainer, same model, data and settings.

The char-level Qwen2 of the distillation test (random weights, full fine-tuning), the built-in 3-digit
addition task's teacher traces (prompt → `<think>` one line per column `</think>` answer) as a
prompt/completion dataset, loss on the completion only, batch 64, lr 2e-3 constant, AdamW, no gradient
checkpointing (--gradient-checkpointing turns it on in both, TRL's default), CPU. Each run is a child
process (so peak RSS is its own), the two alternate, and the first steps of each run are warm-up.
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

BATCH, ROWS, WARMUP = 64, 64 * 40, 3


def traces(path: Path) -> list[dict]:
    """The task's rows as `aha distill generate` writes them, plus the same rows as prompt/completion."""
    from engine.data import TaskSource

    source = TaskSource("addition", seed=0)
    rows = [source.row(index) for index in range(ROWS)]
    with open(path, "w", encoding="utf-8") as stream:
        for row in rows:
            thinking, _, answer = row["completion"].removeprefix("<think>\n").partition("</think>\n")
            stream.write(json.dumps({"prompt": row["prompt"], "thinking": thinking, "answer": answer}) + "\n")
    return rows


def run_aha(model: Path, steps: int, out: Path, checkpointing: bool) -> list[float]:
    from engine.distill import TraceSFTConfig, train_sft_on_traces

    marks: list[float] = []
    traces(out / "traces.jsonl")
    config = TraceSFTConfig(model=str(model), traces=str(out / "traces.jsonl"), use_peft=False, learning_rate=2e-3,
                            lr_scheduler_type="constant", per_device_train_batch_size=BATCH, max_steps=steps,
                            save_steps=10_000, max_length=256, seed=0, device="cpu",
                            gradient_checkpointing=checkpointing, output_dir=str(out / "run"))
    train_sft_on_traces(config, on_event=lambda event: marks.append(time.perf_counter())
                        if event["type"] == "metrics" else None)
    return marks


def run_trl(model: Path, steps: int, out: Path, checkpointing: bool) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from engine.distill import trace_completion
    from engine.train import load_tokenizer

    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    rows = traces(out / "traces.jsonl")
    # The completion exactly as aha builds it (trace_completion); the char model's template renders just
    # the user's text, so plain prompt strings give the same token sequences.
    records = []
    for row in rows:
        thinking, _, answer = row["completion"].removeprefix("<think>\n").partition("</think>\n")
        records.append({"prompt": row["prompt"], "completion": trace_completion(thinking, answer)})
    args = SFTConfig(output_dir=str(out / "trl"), per_device_train_batch_size=BATCH, max_steps=steps,
                     learning_rate=2e-3, lr_scheduler_type="constant", use_cpu=True, bf16=False, report_to="none",
                     logging_steps=1, save_strategy="no", seed=0, max_length=256, completion_only_loss=True,
                     gradient_checkpointing=checkpointing, dataloader_num_workers=0)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model, attn_implementation="eager"), args=args,
                         train_dataset=Dataset.from_list(records), processing_class=load_tokenizer(model),
                         callbacks=[Marks()])
    trainer.train()
    return marks


def child(which: str, model: Path, steps: int, checkpointing: bool) -> None:
    import torch

    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory() as out:
        marks = (run_aha if which == "aha" else run_trl)(model, steps, Path(out), checkpointing)
    print(json.dumps({"step_s": [b - a for a, b in zip(marks, marks[1:], strict=False)]}))


def measure(which: str, model: Path, steps: int, checkpointing: bool) -> tuple[float, float]:
    """(median step seconds after the warm-up, peak RSS MB) of one child run."""
    process = subprocess.Popen([sys.executable, __file__, "--child", which, "--model", str(model),
                                "--steps", str(steps), *(["--gradient-checkpointing"] if checkpointing else [])],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{which} run failed (status {status}); run it alone with --child {which} to see why")
    step_s = json.loads(output.strip().splitlines()[-1])["step_s"]
    return statistics.median(step_s[WARMUP:]), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="both with gradient checkpointing (TRL's SFTConfig default; aha's is off)")
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
        print(f"{which:4s} step {step * 1000:6.1f} ms (runs: {', '.join(f'{r[0] * 1000:.1f}' for r in rows)})   "
              f"peak RSS {rss:6.0f} MB")
    print(f"ratio aha/TRL: step time {summary['aha'][0] / summary['trl'][0]:.2f}x, "
          f"peak memory {summary['aha'][1] / summary['trl'][1]:.2f}x (batch {BATCH} traces, full fine-tuning, "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, CPU, 2 threads)")


if __name__ == "__main__":
    main()
