"""Benchmark: BatchedGGUF (the batched llama.cpp sampler `aha eval` uses) vs the plain create_completion loop.

The work of an evaluation: k samples of `--tokens` tokens for each of `--prompts` prompts, temperature 0.6,
top-p 0.95, sample i of a prompt seeded seed + i, on the random 0.3B Qwen2 Q8_0 of bench/chat.py (every token
a real piece of text, special tokens muted, so every sample runs the whole budget), `--threads` threads on
both sides. The loop side is what the same samples cost without batching: llama_cpp.Llama.create_completion
once per sample, on the same rendered prompt tokens, with the same sampler settings (top-k 40, min-p 0.05,
no repeat penalty) and seeds; llama-cpp-python keeps the prompt's cells between calls of the same prompt,
so the loop pays prompt evaluation about once per prompt as well. Both sides are warmed up first and must
run to the budget (BatchedGGUF also ends a sample at an end-of-generation token or an R1 turn marker, as the
chat does; create_completion only at EOS; the shortfall is printed). Reports completion tokens per second of
each side (wall time of the whole work) and the ratio. Goal: ≥ 3×.

`--loop-prompts N` times the loop on the first N prompts only (its speed per token does not depend on the
prompt count; the whole loop takes minutes on two cores); the batched side always does the whole work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def loop(llm, prompts: list[list[int]], k: int, tokens: int, seed: int) -> tuple[int, float]:
    """(completion tokens, seconds) of k create_completion calls per prompt."""
    done = 0
    start = time.perf_counter()
    for prompt in prompts:
        for index in range(k):
            reply = llm.create_completion(prompt, max_tokens=tokens, temperature=0.6, top_p=0.95, top_k=40,
                                          min_p=0.05, repeat_penalty=1.0, seed=seed + index)
            done += reply["usage"]["completion_tokens"]
    return done, time.perf_counter() - start


def batched(teacher, prompts: list[str], k: int, tokens: int, seed: int) -> tuple[int, float]:
    """(completion tokens, seconds) of one BatchedGGUF.generate over all prompts."""
    from engine.distill.teachers import Sampling

    start = time.perf_counter()
    results = dict(teacher.generate(prompts, k, Sampling(temperature=0.6, top_p=0.95, max_tokens=tokens, seed=seed)))
    seconds = time.perf_counter() - start
    return sum(s.usage["completion_tokens"] for samples in results.values() for s in samples), seconds


def main() -> None:
    from bench.chat import PROMPTS, prepare
    from engine.eval.batched import BatchedGGUF
    from engine.llama_backend import load_llama

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=None, help="sequences decoded together (default: all)")
    parser.add_argument("--loop-prompts", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    args = parser.parse_args()
    gguf = prepare(args.work)
    prompts = PROMPTS[:args.prompts]
    teacher = BatchedGGUF(gguf, n_ctx=4096, n_parallel=args.parallel, n_threads=args.threads)
    rendered = [teacher.chat.render([{"role": "user", "content": p}]).tokens for p in prompts]
    llm = load_llama(gguf, n_ctx=max(map(len, rendered)) + args.tokens + 8, n_threads=args.threads,
                     n_threads_batch=args.threads, verbose=False)  # as Aha loads it (engine.llama_backend)
    loop(llm, rendered[:1], 1, 8, args.seed)                     # warm-up: weights paged in, buffers made
    batched(teacher, prompts[:1], 2, 8, args.seed)
    n_loop = args.loop_prompts or len(prompts)
    loop_tokens, loop_s = loop(llm, rendered[:n_loop], args.k, args.tokens, args.seed)
    batch_tokens, batch_s = batched(teacher, prompts, args.k, args.tokens, args.seed)
    print(f"model: {gguf.name}; {len(prompts)} prompts × k={args.k} × {args.tokens} tokens, {args.threads} threads, "
          f"{teacher.last_parallel} sequences decoded together")
    print(f"loop over create_completion: {loop_tokens} tokens in {loop_s:.1f} s ({n_loop} prompts) = "
          f"{loop_tokens / loop_s:.1f} tokens/s")
    print(f"BatchedGGUF:                 {batch_tokens} tokens in {batch_s:.1f} s = {batch_tokens / batch_s:.1f} tokens/s")
    print(f"ratio: {(batch_tokens / batch_s) / (loop_tokens / loop_s):.2f}× (goal ≥ 3×)")
    teacher.close()
    llm.close()
    expected = args.k * args.tokens
    if batch_tokens < expected * len(prompts):
        print(f"batched samples ended early {expected * len(prompts) - batch_tokens} tokens before the budget "
              "(an end-of-generation token or an R1 turn marker, where the chat stops too; create_completion "
              "stops at EOS only); speeds are per generated token")

if __name__ == "__main__":
    main()
