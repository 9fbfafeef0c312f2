"""Benchmark: ChatModel.stream vs raw llama-cpp-python create_chat_completion(stream=True).

Same GGUF (a random 0.3B Qwen2 as Q8_0, whose every token is a real piece of text), same prompt, greedy,
the same number of generated tokens, runs alternating. Reports generation speed (first → last token)
and time to first token for both, and the ratios. Goal: ≥ 0.97 of raw tokens/s, ≤ 10 ms extra TTFT.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The random model ends early on some prompts (it samples an end-of-generation token, or, for Aha, which
# also stops at R1's turn markers, a new turn); the benchmark uses the first of these whose greedy reply
# runs the whole budget in both peers.
PROMPTS = [f"What is {a} + {b}? Please reason step by step, and put your final answer within \\boxed{{}}."
           for a, b in ((12, 35), (48, 17), (101, 99), (7, 5), (333, 444), (20, 22), (9, 91), (64, 36))]
CHAT_SHAPE = "hidden=1024, layers=24, vocab_pad_to=64, ascii_only=True"  # ~0.29B parameters; every token is text


def prepare(work: Path) -> Path:
    from bench.export import build_checkpoint
    from engine.export import export

    gguf = work / "qwen2-0.3b-chat-q8_0.gguf"
    if not gguf.exists():
        export(build_checkpoint(work / "qwen2-0.3b-chat", CHAT_SHAPE, mute_special=True), gguf, "q8_0")
    return gguf


def timed(deltas) -> tuple[float, float, int]:
    """(time to first delta, first→last delta seconds, deltas) of an iterator of text deltas."""
    start = time.perf_counter()
    first = last = None
    count = 0
    for _ in deltas:
        last = time.perf_counter()
        first = first or last
        count += 1
    return first - start, last - first, count


def ours(model, messages, max_tokens: int, tokens: list):
    for event in model.stream(messages, temperature=0.0, max_tokens=max_tokens):
        if event.kind == "done":
            tokens.append(event.stats["thinking_tokens"] + event.stats["answer_tokens"])
        else:
            yield event.text


def raw(llm, messages, max_tokens: int, reasons: list):
    for chunk in llm.create_chat_completion(messages, stream=True, temperature=0.0, max_tokens=max_tokens):
        choice = chunk["choices"][0]
        if choice.get("finish_reason"):
            reasons.append(choice["finish_reason"])
        if choice["delta"].get("content"):
            yield choice["delta"]["content"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    args = parser.parse_args()
    import llama_cpp

    from engine.chat import ChatModel

    gguf = prepare(args.work)
    model = ChatModel(gguf, n_ctx=2048, n_threads=args.threads)
    llm = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                          verbose=False, n_gpu_layers=-1 if model.gpu_offload else 0)
    messages = None
    for prompt in PROMPTS:
        candidate, reasons, counts = [{"role": "user", "content": prompt}], [], []
        "".join(raw(llm, candidate, args.max_tokens, reasons))
        "".join(ours(model, candidate, args.max_tokens, counts))
        if reasons == ["length"] and counts == [args.max_tokens]:
            messages = candidate
            break
    if messages is None:
        raise SystemExit("every prompt ended early on this random model; try --max-tokens 100")
    texts = {"aha": "".join(ours(model, messages, args.max_tokens, [])),
             "raw": "".join(raw(llm, messages, args.max_tokens, []))}
    rows = {"aha": [], "raw": []}
    tokens, reasons = [], []
    for _ in range(args.rounds):
        rows["raw"].append(timed(raw(llm, messages, args.max_tokens, reasons)))
        rows["aha"].append(timed(ours(model, messages, args.max_tokens, tokens)))
    n = tokens[0]
    assert all(t == args.max_tokens for t in tokens) and set(reasons) == {"length"}, (tokens, reasons)
    same = texts["raw"] == texts["aha"].replace("<think>", "")
    print(f"{gguf.name}: {n} greedy tokens per run, {args.rounds} alternating runs each, {args.threads} threads, "
          f"GPU offload: {model.gpu_offload}; identical text: {same}")
    summary = {}
    for name, runs in rows.items():
        speed = statistics.median((n - 1) / span for _, span, _ in runs)
        ttft = statistics.median(first for first, _, _ in runs) * 1000
        summary[name] = (speed, ttft)
        print(f"  {name}: {speed:7.1f} tok/s, time to first token {ttft:6.1f} ms")
    print(f"ratio aha/raw tokens/s: {summary['aha'][0] / summary['raw'][0]:.3f}; "
          f"time-to-first-token overhead: {summary['aha'][1] - summary['raw'][1]:+.1f} ms")
    model.close()
    llm.close()


if __name__ == "__main__":
    main()
