"""Benchmark: the DeepSeek-R1 recipe in miniature over several seeds, the source of the README's two learning
claims (the test suite runs seed 0 only, and stops the distillation at 25 %).

Per seed (default 0 1 2; the seed of the random init, of the training data and of the run):
(a) distillation: tests/test_distill_sft.py's programmatic-teacher test, with its settings — 16,000
    3-digit-addition teacher traces written as a traces file, full SFT of the random-init char-level Qwen2
    (~0.86M parameters) with `train_sft_on_traces`, batch 64, lr 2e-3 constant, held-out-200 greedy accuracy
    every 10 steps — but trained until that accuracy reaches --distill-target (default 40 %, the test's
    25 %) or for --distill-max-steps (1000, the test's budget); reports the steps, the seconds and the
    accuracy (held-out-200 at the stop, and on the 500 held-out problems of (b)).
(b) SFT then GRPO: tests/test_grpo_learning.py's stages, imported from it (its functions and settings): SFT
    until held-out-200 accuracy reaches 30 %, then 100 GRPO steps with LoRA r=16 (16 prompts × 8 generations
    at temperature 0.7, accuracy + 0.2·format); reports held-out-500 greedy accuracy before and after, the
    gain in points (the test asserts ≥ 15 on seed 0) and the seconds of each stage.
Then min / median / max over the seeds. CPU, --threads 2 by default (the README's "2 CPU cores"). There is
no peer here: the goal is that every seed learns (gain ≥ 15 points, the distillation reaches its target).
A seed takes a few minutes on 2 quiet cores (each stage's seconds are printed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def distill(work: Path, seed: int, target: float, max_steps: int) -> dict:
    """(a): the programmatic teacher's traces teach the char student from scratch, to `target`."""
    from tests.test_distill_sft import programmatic_distillation
    from tests.test_grpo_learning import heldout_accuracy

    started = time.perf_counter()
    result = programmatic_distillation(work, seed, target, max_steps)
    seconds = time.perf_counter() - started
    if result["status"] != "complete":
        raise SystemExit(f"seed {seed}: the distillation ended {result['status']}")
    return {"steps": result["step"], "s": seconds, "accuracy_200": result["eval_accuracy"],
            "accuracy_500": heldout_accuracy(result["model"]), "reached": result["eval_accuracy"] >= target}


def sft_then_grpo(work: Path, seed: int) -> dict:
    """(b): tests/test_grpo_learning.py's pipeline, timed."""
    from tests.test_grpo_learning import (
        GRPO_STEPS,
        MIN_GAIN,
        SFT_TARGET,
        grpo_stage,
        heldout_accuracy,
        sft_stage,
    )

    started = time.perf_counter()
    sft = sft_stage(work, seed)
    sft_s = time.perf_counter() - started
    if sft["status"] != "complete" or sft["eval_accuracy"] < SFT_TARGET:
        raise SystemExit(f"seed {seed}: SFT did not reach {SFT_TARGET:.0%} ({sft})")
    before = heldout_accuracy(sft["model"])
    started = time.perf_counter()
    grpo = grpo_stage(sft["model"], work, seed)
    grpo_s = time.perf_counter() - started
    if grpo["status"] != "complete" or grpo["step"] != GRPO_STEPS:
        raise SystemExit(f"seed {seed}: GRPO ended {grpo['status']} at step {grpo['step']}")
    after = heldout_accuracy(sft["model"], grpo["adapter"])
    return {"sft_steps": sft["step"], "sft_s": sft_s, "sft_accuracy_200": sft["eval_accuracy"], "before": before,
            "after": after, "gain_points": (after - before) * 100, "learned": after - before >= MIN_GAIN, "grpo_s": grpo_s}


def spread(values: list[float], form: str) -> str:
    return (f"min {form.format(min(values))}, median {form.format(statistics.median(values))}, "
            f"max {form.format(max(values))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parts", nargs="+", choices=("distill", "grpo"), default=["distill", "grpo"])
    parser.add_argument("--distill-target", type=float, default=0.40, help="held-out-200 accuracy to stop at")
    parser.add_argument("--distill-max-steps", type=int, default=1000, help="the distillation's step budget")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from tests.test_grpo_learning import GRPO_STEPS, HELDOUT, MIN_GAIN, SFT_TARGET

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"seeds {' '.join(map(str, args.seeds))}, {torch.get_num_threads()} threads, CPU", flush=True)
    results: dict[str, list[dict]] = {part: [] for part in args.parts}
    for seed in args.seeds:
        if "distill" in args.parts:
            with tempfile.TemporaryDirectory() as work:
                row = distill(Path(work), seed, args.distill_target, args.distill_max_steps)
            results["distill"].append(row)
            print(f"seed {seed} distill: {row['steps']} steps in {row['s']:.1f} s, held-out-200 accuracy "
                  f"{row['accuracy_200']:.1%} ({'reached' if row['reached'] else 'did not reach'} "
                  f"{args.distill_target:.0%}), held-out-{HELDOUT} {row['accuracy_500']:.1%}", flush=True)
        if "grpo" in args.parts:
            with tempfile.TemporaryDirectory() as work:
                row = sft_then_grpo(Path(work), seed)
            results["grpo"].append(row)
            print(f"seed {seed} SFT→GRPO: SFT {row['sft_steps']} steps in {row['sft_s']:.1f} s (held-out-200 "
                  f"{row['sft_accuracy_200']:.1%}); held-out-{HELDOUT} {row['before']:.1%} → {row['after']:.1%} "
                  f"after {GRPO_STEPS} GRPO steps in {row['grpo_s']:.1f} s: {row['gain_points']:+.1f} points",
                  flush=True)
    print(f"over {len(args.seeds)} seed(s):")
    if results.get("distill"):
        rows = results["distill"]
        print(f"  distill to {args.distill_target:.0%} held-out-200: reached on {sum(r['reached'] for r in rows)} "
              f"of {len(rows)}; steps {spread([r['steps'] for r in rows], '{:.0f}')}; seconds "
              f"{spread([r['s'] for r in rows], '{:.1f}')}; held-out-{HELDOUT} accuracy "
              f"{spread([r['accuracy_500'] * 100 for r in rows], '{:.1f} %')}")
    if results.get("grpo"):
        rows = results["grpo"]
        print(f"  SFT to {SFT_TARGET:.0%} then {GRPO_STEPS} GRPO steps: held-out-{HELDOUT} gain "
              f"{spread([r['gain_points'] for r in rows], '{:+.1f}')} points (≥ {MIN_GAIN * 100:.0f} on "
              f"{sum(r['learned'] for r in rows)} of {len(rows)}); GRPO seconds "
              f"{spread([r['grpo_s'] for r in rows], '{:.1f}')}; SFT seconds {spread([r['sft_s'] for r in rows], '{:.1f}')}")


if __name__ == "__main__":
    main()
