"""Batched llama.cpp sampling: the k samples of a prompt, and several prompts, decoded together in one batch.

A Teacher (engine.distill.teachers) for evaluation. Each sample is one llama.cpp sequence with its own
sampler chain and seed. A prompt is evaluated once, on the first of its sequences; the others get its KV
cells by copying the sequence (`llama_memory_seq_cp`, as llama.cpp's examples/batched does), then every
decode step feeds one token per active sequence and asks logits for those tokens only. Sequences are
scheduled continuously: when one ends (end of generation, budget, context) its slot takes the next sample
waiting, so a short reply does not leave its slot idle until the longest one of its batch ends.

Prompts are rendered by engine.chat.runtime.ChatModel (the GGUF's sandboxed template, prefilled `<think>`),
stops are ChatModel's (llama.cpp's end-of-generation tokens and the R1 turn markers), and the sampler chain
is the one ChatModel gets from llama-cpp-python (top-k 40, top-p, min-p 0.05, temperature, then a seeded
draw; greedy at temperature 0), so a sample here is the sample the chat would give.
"""

from __future__ import annotations

import ctypes
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.distill.teachers import Sampling, TeacherSample, _user_turn, is_cancelled
from engine.errors import AhaError
from engine.think import CLOSE_TAG, OPEN_TAG, split_thinking

TOP_K = 40                   # ChatModel.stream's defaults: the chat and the evaluation sample alike
MIN_P = 0.05
MAX_PARALLEL = 64            # sequences in one batch at most
KV_BUDGET_BYTES = 2 << 30    # the KV cache of one generate call stays under this (f16 cells)
PROMPT_BATCH = 512           # prompt tokens per llama_decode call
CELL_PAD = 256               # llama.cpp pads a context to a multiple of 256 cells


@dataclass
class _Slot:
    """One running sample: a llama.cpp sequence id, its sampler, what it has generated so far."""

    seq: int
    prompt: int                          # index into the prompts
    sample: int                          # index among the prompt's k samples
    sampler: object
    n_prompt: int
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    started: float = 0.0


def kv_bytes_per_token(n_layer: int, n_embd: int, n_head: int, n_head_kv: int) -> int:
    """Bytes one KV cell takes in f16: 2 (K and V) · n_layer · n_embd · n_head_kv / n_head · 2 bytes (a head
    of n_embd / n_head: an estimate for models whose heads are wider, as Qwen3's)."""
    return 2 * n_layer * (n_embd * n_head_kv // max(n_head, 1)) * 2


def default_parallel(k: int, n_prompts: int, per_sequence: int, cell_bytes: int,
                     budget: int = KV_BUDGET_BYTES, cap: int = MAX_PARALLEL) -> int:
    """Sequences decoded together: as many as the work has (k · prompts) up to `cap`, and no more than fit
    the KV budget (n · per_sequence · cell_bytes ≤ budget); at least 1."""
    fit = budget // max(per_sequence * cell_bytes, 1)
    return max(1, min(k * n_prompts, cap, fit))


def thinking_token_count(pieces: Sequence[bytes], prefilled: bool) -> int:
    """Tokens of the reply's thought: those up to and including the one that completes the first `</think>`
    of the thought (prefilled, or opened by the reply's own leading `<think>`); all of them when the thought
    never closes; 0 when the reply has no thought."""
    text = b"".join(pieces)
    open_tag, close_tag = OPEN_TAG.encode(), CLOSE_TAG.encode()
    if prefilled:
        start = 0
    elif text.lstrip().startswith(open_tag):
        start = text.find(open_tag) + len(open_tag)
    else:
        return 0
    closing = text.find(close_tag, start)
    if closing == -1:
        return len(pieces)
    end, seen = closing + len(close_tag), 0
    for count, piece in enumerate(pieces, 1):
        seen += len(piece)
        if seen >= end:
            return count
    return len(pieces)


class BatchedGGUF:
    """A GGUF model sampled in batches by llama.cpp: `generate` yields each prompt's k samples when done."""

    kind = "gguf"

    def __init__(self, path: str | Path, n_ctx: int = 4096, n_parallel: int | None = None,
                 n_threads: int | None = None, chat_model=None):
        import llama_cpp

        from engine.chat.runtime import ChatModel, physical_cores

        self.path = Path(path).expanduser()
        self.name = self.path.name
        if n_ctx < 16:
            raise AhaError(f"context size {n_ctx} is too small; give at least the prompt plus the reply budget.")
        self.n_ctx = n_ctx                   # per sequence: prompt + reply
        self.n_parallel = n_parallel
        self.n_threads = n_threads or physical_cores()
        # ChatModel owns the weights, the template and the stops; its own context only tokenizes (smallest size).
        self.chat = chat_model if chat_model is not None else ChatModel(self.path, n_ctx=256, n_threads=self.n_threads)
        llm = self.chat._llm
        self._model = llm.model
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._stop_ids = set(self.chat._stop_ids)
        self._cell_bytes = kv_bytes_per_token(*(f(self._model) for f in (
            llama_cpp.llama_model_n_layer, llama_cpp.llama_model_n_embd, llama_cpp.llama_model_n_head,
            llama_cpp.llama_model_n_head_kv)))
        self.last_parallel: int | None = None    # what the last generate call used (for reports)

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "path": str(self.path), "batched": True}

    # -- llama.cpp objects ----------------------------------------------------------------------------
    def _context(self, n_parallel: int, per_sequence: int):
        import llama_cpp

        params = llama_cpp.llama_context_default_params()
        params.n_seq_max = n_parallel
        params.n_ctx = n_parallel * per_sequence      # room for per_sequence cells of every sequence
        params.n_batch = params.n_ubatch = max(PROMPT_BATCH, n_parallel)
        params.n_threads = params.n_threads_batch = self.n_threads
        # One unified KV buffer: a copied prompt's cells are shared by its sequences, not duplicated, and
        # each step attends in one pass; with flash attention, 89.7 against 70.8 tokens/s for one stream per
        # sequence without it (bench/eval.py, 2 threads: 3.1× the create_completion loop instead of 2.2×).
        params.kv_unified = True
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not ctx:
            raise AhaError(f"llama.cpp could not make a context of {n_parallel} × {per_sequence} tokens for "
                           f"{self.name}; lower the reply budget or the number of samples decoded together.")
        return ctx

    def _sampler(self, settings: dict):
        import llama_cpp

        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if settings["temperature"] <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        seed = llama_cpp.LLAMA_DEFAULT_SEED if settings["seed"] is None else settings["seed"] & 0xFFFFFFFF
        for stage in (llama_cpp.llama_sampler_init_top_k(TOP_K), llama_cpp.llama_sampler_init_top_p(settings["top_p"], 1),
                      llama_cpp.llama_sampler_init_min_p(MIN_P, 1), llama_cpp.llama_sampler_init_temp(settings["temperature"]),
                      llama_cpp.llama_sampler_init_dist(seed)):
            llama_cpp.llama_sampler_chain_add(chain, stage)
        return chain

    def _piece(self, token: int, buffer) -> bytes:
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:n]

    # -- generation -----------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], k: int, sampling: Sampling,
                 cancel=None) -> Iterator[tuple[int, list[TeacherSample]]]:
        """(index into prompts, its k samples) for each prompt as its last sample ends. After a cancel,
        prompts not yet complete are not yielded."""
        import llama_cpp

        if k < 1 or not prompts:
            return
        rendered = [self.chat.render(_user_turn(prompt)) for prompt in prompts]
        longest = max(len(r.tokens) for r in rendered)
        # llama.cpp pads a context to multiples of 256 cells; a reply still stops at n_ctx.
        per_sequence = -(-min(self.n_ctx, longest + max(sampling.max_tokens, 0)) // CELL_PAD) * CELL_PAD
        n_parallel = self.n_parallel or default_parallel(k, len(prompts), per_sequence, self._cell_bytes)
        n_parallel = max(1, min(n_parallel, k * len(prompts)))
        self.last_parallel = n_parallel
        results: dict[int, list[TeacherSample | None]] = {i: [None] * k for i in range(len(prompts))}
        waiting = deque((p, s) for p in range(len(prompts)) for s in range(k))
        ctx = self._context(n_parallel, per_sequence)
        seq_capacity = min(self.n_ctx, llama_cpp.llama_n_ctx_seq(ctx))
        batch = llama_cpp.llama_batch_init(max(PROMPT_BATCH, n_parallel), 0, 1)
        memory = llama_cpp.llama_get_memory(ctx)
        buffer = ctypes.create_string_buffer(64)
        free = list(range(n_parallel - 1, -1, -1))
        active: list[_Slot] = []
        try:
            while waiting or active:
                if is_cancelled(cancel):
                    return
                # Admit the next prompt's waiting samples into the free slots: one prompt evaluation each time.
                while waiting and free:
                    prompt_index = waiting[0][0]
                    joining = []
                    while waiting and free and waiting[0][0] == prompt_index:
                        joining.append(_Slot(free.pop(), *waiting.popleft(), None, len(rendered[prompt_index].tokens)))
                    active.extend(joining)       # before their samplers exist: freed below whatever happens
                    self._start(ctx, memory, batch, rendered[prompt_index].tokens, joining, sampling, seq_capacity)
                    for slot in joining:
                        if slot.finish is not None:
                            yield from self._retire(slot, results, rendered, sampling, memory, free, k, buffer)
                    active = [slot for slot in active if slot.finish is None]
                if not active:
                    continue
                if is_cancelled(cancel):
                    return
                # One decode step: the last token of every running sequence, logits for each.
                batch.n_tokens = len(active)
                for row, slot in enumerate(active):
                    batch.token[row] = slot.tokens[-1]
                    batch.pos[row] = slot.n_prompt + len(slot.tokens) - 1
                    batch.n_seq_id[row] = 1
                    batch.seq_id[row][0] = slot.seq
                    batch.logits[row] = 1
                self._decode(ctx, batch)
                for row, slot in enumerate(active):
                    self._advance(slot, llama_cpp.llama_sampler_sample(slot.sampler, ctx, row), sampling,
                                  seq_capacity)
                for slot in [s for s in active if s.finish is not None]:
                    yield from self._retire(slot, results, rendered, sampling, memory, free, k, buffer)
                active = [slot for slot in active if slot.finish is None]
        finally:
            for slot in active:
                if slot.sampler is not None:
                    llama_cpp.llama_sampler_free(slot.sampler)
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)

    def _decode(self, ctx, batch) -> None:
        import llama_cpp

        code = llama_cpp.llama_decode(ctx, batch)
        if code != 0:
            raise AhaError(f"llama.cpp failed to decode a batch of {batch.n_tokens} tokens with {self.name} "
                           f"(code {code}); lower the number of samples decoded together.")

    def _start(self, ctx, memory, batch, tokens: list[int], slots: list[_Slot], sampling: Sampling,
               seq_capacity: int) -> None:
        """Evaluate a prompt once on the first slot's sequence, copy its cells to the others' sequences,
        and draw every slot's first token from the prompt's last logits."""
        import llama_cpp

        started = time.monotonic()
        for slot in slots:
            slot.sampler = self._sampler(sampling.for_sample(slot.sample))
            slot.started = started
        if len(tokens) >= seq_capacity or sampling.max_tokens < 1:
            for slot in slots:
                slot.finish = "length"       # no room for a reply (ChatModel: context_full)
            return
        first = slots[0].seq
        for offset in range(0, len(tokens), PROMPT_BATCH):
            chunk = tokens[offset:offset + PROMPT_BATCH]
            batch.n_tokens = len(chunk)
            for row, token in enumerate(chunk):
                batch.token[row] = token
                batch.pos[row] = offset + row
                batch.n_seq_id[row] = 1
                batch.seq_id[row][0] = first
                batch.logits[row] = 0
            if offset + len(chunk) == len(tokens):
                batch.logits[len(chunk) - 1] = 1
            self._decode(ctx, batch)
        for slot in slots[1:]:
            llama_cpp.llama_memory_seq_cp(memory, first, slot.seq, -1, -1)
        for slot in slots:
            self._advance(slot, llama_cpp.llama_sampler_sample(slot.sampler, ctx, -1), sampling, seq_capacity)

    def _advance(self, slot: _Slot, token: int, sampling: Sampling, seq_capacity: int) -> None:
        import llama_cpp

        if token in self._stop_ids or llama_cpp.llama_vocab_is_eog(self._vocab, token):
            slot.finish = "stop"
            return
        slot.tokens.append(token)
        if len(slot.tokens) >= sampling.max_tokens or slot.n_prompt + len(slot.tokens) >= seq_capacity:
            slot.finish = "length"

    def _retire(self, slot: _Slot, results, rendered, sampling: Sampling, memory, free: list[int], k: int,
                buffer) -> Iterator[tuple[int, list[TeacherSample]]]:
        """Free the slot's sequence, make its TeacherSample, and yield its prompt once all k are in."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(memory, slot.seq, -1, -1)
        llama_cpp.llama_sampler_free(slot.sampler)
        slot.sampler = None
        free.append(slot.seq)
        prompt = rendered[slot.prompt]
        pieces = [self._piece(token, buffer) for token in slot.tokens]
        raw = b"".join(pieces).decode("utf-8", errors="replace")
        thinking, answer = split_thinking(raw, prompt.prefilled)
        usage = {"prompt_tokens": slot.n_prompt, "completion_tokens": len(slot.tokens),
                 "thinking_tokens": thinking_token_count(pieces, prompt.prefilled)}
        timing = {"seconds": round(time.monotonic() - slot.started, 6)}
        samples = results[slot.prompt]
        samples[slot.sample] = TeacherSample(thinking.strip(), answer.strip(), raw, prompt.prefilled, slot.finish,
                                             sampling.for_sample(slot.sample), timing, usage)
        if all(sample is not None for sample in samples):
            del results[slot.prompt]
            yield slot.prompt, samples

    def close(self) -> None:
        chat, self.chat = getattr(self, "chat", None), None
        if chat is not None:
            chat.close()
