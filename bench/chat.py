"""Benchmark: ChatModel.stream vs raw llama-cpp-python create_chat_completion(stream=True).

Same GGUF (a random 0.3B Qwen2 as Q8_0, whose every token is a real piece of text), same prompt, greedy,
the same number of generated tokens, runs alternating (which side goes first alternates too). Every timed
run starts from an empty KV cache on both sides (`Llama.reset()`; ChatModel keeps its llama.cpp context
between streams, and llama-cpp-python reuses the longest cached prefix of a prompt, so a repeated prompt
would otherwise cost one decode): time to first token is a fresh prompt's, prompt evaluation included.
Checked on every run: both sides evaluate every prompt token (llama.cpp's perf counters), both stop at the
token budget, and their texts are identical (Aha's thinking + answer, with the `<think>` tags its parser
routes on put back, against raw's content); a difference exits non-zero. Reports generation speed
(first → last token), time to first token next to the prompt evaluation time, and the ratios.
Goal: ≥ 0.97 of raw tokens/s, ≤ 10 ms extra TTFT.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
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
    from engine.export.pipeline import export

    gguf = work / "qwen2-0.3b-chat-q8_0.gguf"
    if not gguf.exists():
        export(build_checkpoint(work / "qwen2-0.3b-chat", CHAT_SHAPE, mute_special=True), gguf, "q8_0")
    return gguf


class Side:
    """One peer: `run(messages, max_tokens)` streams a reply from an empty KV cache and returns a Run."""

    def __init__(self, llm):
        self.llm = llm  # the llama_cpp.Llama whose context this side uses

    def deltas(self, messages, max_tokens: int, end: dict):
        """The reply's text deltas as they arrive; fills `end` with "stop" (and whatever `text` needs)."""
        raise NotImplementedError

    def text(self, deltas: list[str], end: dict) -> str:
        return "".join(deltas)

    def run(self, messages, max_tokens: int) -> Run:
        import llama_cpp

        self.llm.reset()  # forget the cached prefix: the whole prompt is evaluated again
        llama_cpp.llama_perf_context_reset(self.llm.ctx)
        end: dict = {}
        deltas = []
        start = time.perf_counter()
        first = last = None
        for delta in self.deltas(messages, max_tokens, end):
            last = time.perf_counter()
            first = first or last
            deltas.append(delta)
        perf = llama_cpp.llama_perf_context(self.llm.ctx)
        # llama.cpp decodes each generated token but the last one in a batch of its own (n_eval).
        return Run(first - start, last - first, self.text(deltas, end), perf.n_eval + 1, end["stop"],
                   perf.n_p_eval, perf.t_p_eval_ms / 1000)


@dataclass(frozen=True)
class Run:
    ttft_s: float        # call → first delta
    span_s: float        # first → last delta
    text: str
    tokens: int          # generated
    stop: str | None     # "length" at the token budget
    prompt_tokens: int   # as llama.cpp evaluated the prompt
    prompt_s: float


class Aha(Side):
    def __init__(self, model):
        super().__init__(model._llm)  # ChatModel's llama.cpp context, which it keeps between its streams
        self.model = model

    def deltas(self, messages, max_tokens: int, end: dict):
        kinds = end["kinds"] = []
        for event in self.model.stream(messages, temperature=0.0, max_tokens=max_tokens):
            if event.kind == "done":
                end["stop"] = "length" if event.stats["stop_reason"] == "max_tokens" else event.stats["stop_reason"]
                end["prefilled"] = event.stats["prefilled"]
            else:
                kinds.append(event.kind)
                yield event.text

    def text(self, deltas: list[str], end: dict) -> str:
        """Thinking + answer as the model wrote them: the `<think>`/`</think>` tags that the parser routes on
        (and drops) put back where the kind changes; a prefilled prompt opened the first thought itself."""
        kind, parts = "thinking" if end["prefilled"] else "answer", []
        for delta, delta_kind in zip(deltas, end["kinds"], strict=True):
            if delta_kind != kind:
                parts.append("<think>" if delta_kind == "thinking" else "</think>")
                kind = delta_kind
            parts.append(delta)
        return "".join(parts)


class Raw(Side):
    def deltas(self, messages, max_tokens: int, end: dict):
        end["stop"] = None
        for chunk in self.llm.create_chat_completion(messages, stream=True, temperature=0.0, max_tokens=max_tokens):
            choice = chunk["choices"][0]
            if choice.get("finish_reason"):
                end["stop"] = choice["finish_reason"]
            if choice["delta"].get("content"):
                yield choice["delta"]["content"]


def first_difference(a: str, b: str) -> str:
    index = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at character {index}: raw {a[index:index + 40]!r} vs aha {b[index:index + 40]!r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    args = parser.parse_args()
    from engine.chat.runtime import ChatModel
    from engine.llama_backend import load_llama

    gguf = prepare(args.work)
    model = ChatModel(gguf, n_ctx=2048, n_threads=args.threads)
    llm = load_llama(gguf, n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,  # as Aha loads it
                     verbose=False, n_gpu_layers=-1 if model.gpu_offload else 0)
    sides = {"raw": Raw(llm), "aha": Aha(model)}
    messages = None
    for prompt in PROMPTS:  # these runs are the warm-up too
        candidate = [{"role": "user", "content": prompt}]
        runs = {name: side.run(candidate, args.max_tokens) for name, side in sides.items()}
        if all(run.stop == "length" and run.tokens == args.max_tokens for run in runs.values()):
            messages = candidate
            break
    if messages is None:
        raise SystemExit("every prompt ended early on this random model; try --max-tokens 100")
    prompt_tokens = len(model.render(messages).tokens)
    rows: dict[str, list[Run]] = {"raw": [], "aha": []}
    for round_ in range(args.rounds):
        for name in ("raw", "aha") if round_ % 2 == 0 else ("aha", "raw"):
            rows[name].append(sides[name].run(messages, args.max_tokens))
        raw, aha = rows["raw"][-1], rows["aha"][-1]
        for name, run in (("raw", raw), ("aha", aha)):
            if run.prompt_tokens != prompt_tokens or run.stop != "length" or run.tokens != args.max_tokens:
                raise SystemExit(f"run {round_ + 1}, {name}: evaluated {run.prompt_tokens} of {prompt_tokens} prompt "
                                 f"tokens, generated {run.tokens} of {args.max_tokens}, stop {run.stop!r}")
        if raw.text != aha.text:
            raise SystemExit(f"run {round_ + 1}: the two sides' texts differ {first_difference(raw.text, aha.text)}")
    print(f"{gguf.name}: prompt of {prompt_tokens} tokens evaluated in full on every run by both sides (empty KV "
          f"cache), {args.max_tokens} greedy tokens per run, {args.rounds} alternating runs each, {args.threads} "
          f"threads, GPU offload: {model.gpu_offload}; texts identical on every run ({len(raw.text)} characters)")
    summary = {}
    for name, runs in rows.items():
        speed = statistics.median((run.tokens - 1) / run.span_s for run in runs)
        ttft = statistics.median(run.ttft_s for run in runs) * 1000
        prompt_ms = statistics.median(run.prompt_s for run in runs) * 1000
        summary[name] = (speed, ttft)
        print(f"  {name}: {speed:7.1f} tok/s ({1000 / speed:5.1f} ms a token), time to first token {ttft:6.1f} ms "
              f"(of which llama.cpp's prompt evaluation {prompt_ms:6.1f} ms)")
    print(f"ratio aha/raw tokens/s: {summary['aha'][0] / summary['raw'][0]:.3f}; "
          f"time-to-first-token overhead: {summary['aha'][1] - summary['raw'][1]:+.1f} ms")
    model.close()
    llm.close()


if __name__ == "__main__":
    main()
