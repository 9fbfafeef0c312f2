"""Benchmark: Aha's batched KV-cache sampler (engine.train.sampling.sample, which GRPO's rollouts use) vs
transformers' model.generate, same model, same prompts, same settings, in the same process.

The char-level Qwen2 (~0.86M parameters) of the learning tests, two ways: `random` (random init; with a
20-token vocabulary it samples EOS now and then, so its rows end at scattered steps) and `sft` (after
tests/test_grpo_learning.py's SFT stage to 30 %, imported from it, ~1 min: its rows end with EOS after an
answer, as in a GRPO rollout). Held-out addition prompts, --rows of them per
call (default 128, the learning test's GRPO batch of 16 × 8, and 8), --tokens new tokens (40) at
temperature 0.7 (generate: do_sample, top_k=0, so plain temperature sampling like ours), EOS = <eos>.
Median of --repeats runs per side, alternating, the same seed for both sides in a run; prints seconds and
mean completion length (to EOS, inclusive) per side, so equal work is visible, and the ratio generate /
ours. CPU, --threads 2. Goal: ours no slower than generate (ratio ≥ 1) on every row.
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

EOS, PAD, TEMPERATURE = 1, 0, 0.7  # tests/support/char_model.py's ids


def models(which: list[str], work: Path):
    """(name, folder) of each model asked for, built here."""
    from tests.support.char_model import make_char_model
    from tests.test_grpo_learning import sft_stage

    for name in which:
        if name == "random":
            yield name, make_char_model(work / "random", seed=0)
        else:
            started = time.perf_counter()
            sft = sft_stage(work / "sft", seed=0)
            print(f"(sft: {sft['step']} SFT steps to held-out-200 {sft['eval_accuracy']:.1%} in "
                  f"{time.perf_counter() - started:.0f} s)", flush=True)
            yield name, Path(sft["model"])


def ours(model, ids, tokens: int) -> float:
    """Mean completion length of one call of the sampler."""
    from engine.train.sampling import sample

    rollout = sample(model, ids, max_new_tokens=tokens, eos_ids=[EOS], pad_id=PAD, temperature=TEMPERATURE)
    return float(rollout.lengths.float().mean())


def theirs(model, prompt_ids, prompt_mask, tokens: int) -> float:
    """Mean completion length of one call of model.generate."""
    import torch

    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=tokens, do_sample=True,
                         temperature=TEMPERATURE, top_k=0, eos_token_id=EOS, pad_token_id=PAD)
    completion = out[:, prompt_ids.shape[1]:]  # (B, T), padded after each row's EOS
    ended = completion == EOS
    lengths = torch.where(ended.any(1), ended.int().argmax(1) + 1, completion.shape[1])
    return float(lengths.float().mean())


def compare(model, tokenizer, rows: int, tokens: int, repeats: int) -> dict[str, tuple[float, float]]:
    """side -> (median seconds, mean completion length) of `repeats` alternating calls on `rows` prompts."""
    import torch

    from engine.train.data import TaskSource
    from engine.train.sampling import encode_prompts, left_pad

    ids, _, _ = encode_prompts(tokenizer, [row["prompt"] for row in TaskSource("addition").heldout(rows)])
    prompt_ids, prompt_mask = left_pad(ids, PAD)
    sides = {"ours": lambda: ours(model, ids, tokens), "generate": lambda: theirs(model, prompt_ids, prompt_mask, tokens)}
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    lengths: dict[str, list[float]] = {side: [] for side in sides}
    for run in range(repeats + 1):  # the first run of each is warm-up
        for side in list(sides)[::1 if run % 2 == 0 else -1]:
            torch.manual_seed(run)
            started = time.perf_counter()
            length = sides[side]()
            if run:
                seconds[side].append(time.perf_counter() - started)
                lengths[side].append(length)
    return {side: (statistics.median(seconds[side]), statistics.mean(lengths[side])) for side in sides}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("random", "sft"), default=["random", "sft"])
    parser.add_argument("--rows", type=int, nargs="+", default=[128, 8])
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from tests.test_grpo_learning import load

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"{args.tokens} new tokens at temperature {TEMPERATURE}, median of {args.repeats} alternating runs, "
          f"{torch.get_num_threads()} threads, CPU", flush=True)
    ratios = []
    with tempfile.TemporaryDirectory() as work:
        for name, folder in models(args.models, Path(work)):
            model, tokenizer = load(folder)
            for rows in args.rows:
                result = compare(model, tokenizer, rows, args.tokens, args.repeats)
                (ours_s, ours_length), (generate_s, generate_length) = result["ours"], result["generate"]
                ratios.append(generate_s / ours_s)
                print(f"{name:6s} {rows:4d} rows: ours {ours_s:.3f} s (mean length {ours_length:.1f}), generate "
                      f"{generate_s:.3f} s (mean length {generate_length:.1f}); ratio generate/ours {ratios[-1]:.2f}x",
                      flush=True)
    print(f"ratio generate/ours: min {min(ratios):.2f}x over {len(ratios)} cases")


if __name__ == "__main__":
    main()
