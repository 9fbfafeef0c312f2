"""In-process llama.cpp chat runtime for reasoning models: render, stream thinking and answer, measure.

`ChatModel.stream()` yields `ChatEvent`s — "thinking" and "answer" deltas routed by engine.think, then
one "done" with stop reason and timings measured on a monotonic clock at token granularity. A thinking
budget ends a thought at N tokens: the budget's text (engine.chat.reasoning) goes into the context, is
streamed as the thought's end, and decoding goes on from there to the answer. The chat
template comes from the GGUF (checked and rendered in a sandbox) or, when a file has none, the known R1
template. Knows nothing of the store, conversations or Qt: a list of messages in, events out.
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine import r1
from engine.chat.reasoning import (
    ThinkingSwitch,
    budget_text,
    check_budget,
    ends_inside_thinking,
    thinking_switch,
)
from engine.chat_template import ChatTemplate
from engine.errors import AhaError
from engine.think import ThinkParser, split_thinking

HISTORY_POLICIES = ("strip", "keep")
STOP_REASONS = ("eos", "max_tokens", "context_full", "cancelled", "error")


@dataclass(frozen=True)
class ChatEvent:
    """kind: "thinking" | "answer" | "done"; text: the new text ("" for done); stats on done."""

    kind: str
    text: str = ""
    stats: dict | None = None


@dataclass(frozen=True)
class RenderedPrompt:
    """Exactly what the model will see, and what was decided while rendering it."""

    text: str
    tokens: list[int]
    prefilled: bool                          # the prompt ends inside an open <think>
    history: str                             # "strip" | "keep"
    warnings: list[str] = field(default_factory=list)


def physical_cores() -> int:
    """Physical CPU cores (llama.cpp is fastest with one thread per core)."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:
        cores = None
    return max(1, cores or (os.cpu_count() or 2) // 2)


def history_messages(messages: list[dict], policy: str) -> list[dict]:
    """Messages as the template receives them. Assistant turns may carry `thinking` apart from `content`
    (the answer); `strip` drops earlier reasoning, `keep` puts it back inline as <think>…</think>."""
    if policy not in HISTORY_POLICIES:
        raise AhaError(f"unknown history policy {policy!r}; use strip or keep.")
    shaped = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant":
            inline_thinking, answer = split_thinking(content) if r1.THINK_CLOSE in content else ("", content)
            thinking = message.get("thinking") or inline_thinking
            content = answer if policy == "strip" or not thinking else (
                f"{r1.THINK_OPEN}\n{thinking}\n{r1.THINK_CLOSE}\n\n{answer}")
        shaped.append({"role": role, "content": content})
    return shaped


class _Clock:
    """Token-granular timing: each token's duration is the time since the previous one arrived."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.last = self.start
        self.first_token: float | None = None
        self.first_answer: float | None = None
        self.seconds = {"thinking": 0.0, "answer": 0.0}
        self.tokens = {"thinking": 0, "answer": 0}

    def token(self, kind: str, prompt_s: float | None) -> None:
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
            # The first token's own decode follows the prompt; its duration excludes prompt processing.
            self.last = self.start + (prompt_s if prompt_s is not None else now - self.start)
        self.seconds[kind] += max(now - self.last, 0.0)
        self.tokens[kind] += 1
        self.last = now


class ChatModel:
    """A GGUF model loaded in-process by llama.cpp, with its (sandboxed) chat template."""

    def __init__(self, path: Path | str, n_ctx: int = 4096, n_gpu_layers: int = -1, n_threads: int | None = None):
        import llama_cpp

        from engine.llama_backend import load_llama
        from engine.models import read_gguf_info

        self.path = Path(path).expanduser()
        self.info = read_gguf_info(self.path)          # one-line AhaError for missing/corrupt/non-GGUF files
        if self.info.kind == "adapter":
            raise AhaError(f"{self.path.name} is a LoRA adapter, not a model; load its base model instead.")
        self.template_warning = None
        template_source = self.info.chat_template
        if not template_source:
            template_source = r1.CHAT_TEMPLATE
            self.template_warning = f"{self.path.name} carries no chat template; using the known DeepSeek-R1 template."
        # Checked before llama.cpp sees the file: an escaping template is refused and nothing runs.
        ChatTemplate(template_source, origin=self.path.name)
        self.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        self.n_threads = n_threads or physical_cores()
        try:
            self._llm = load_llama(self.path, n_ctx=n_ctx, verbose=False,
                                   n_gpu_layers=n_gpu_layers if self.gpu_offload else 0,
                                   n_threads=self.n_threads, n_threads_batch=self.n_threads)
        except (ValueError, RuntimeError) as exc:
            raise AhaError(f"llama.cpp could not load {self.path.name} ({exc}); the file may be for a newer "
                           "llama.cpp or damaged.") from exc
        bos, eos = self._llm.token_bos(), self._llm.token_eos()
        self.bos_text = self._token_text(bos)
        self.template = ChatTemplate(template_source, self.bos_text, self._token_text(eos), self.path.name)
        # End of generation: llama.cpp's end-of-generation tokens, plus the R1 turn markers as single tokens.
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._stop_ids = {eos} | {t for t in (self._single_token(s) for s in r1.STOPS) if t is not None}
        self.thinking_switch: ThinkingSwitch = thinking_switch(self.template)

    # -- prompt -------------------------------------------------------------------------------------
    def _token_text(self, token: int) -> str:
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def _single_token(self, text: str) -> int | None:
        ids = self._llm.tokenize(text.encode(), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    @property
    def context_size(self) -> int:
        return self._llm.n_ctx()

    def render(self, messages: list[dict], history: str = "strip", thinking: bool | None = None) -> RenderedPrompt:
        """The exact prompt text and tokens the model will see for these messages. `thinking` sets the
        template's thinking switch (None: the template's default); a template without one ignores it."""
        warnings = [self.template_warning] if self.template_warning else []
        variables = {}
        if thinking is not None:
            switch = self.thinking_switch
            if switch.supported:
                variables[switch.variable] = thinking
            elif not thinking:
                warnings.append(f"thinking cannot be turned off: {switch.reason}")
        if any(m["role"] == "system" and (m.get("content") or "").strip() for m in messages):
            warnings.append(r1.SYSTEM_PROMPT_WARNING)
        shaped = history_messages(messages, history)
        text = self.template.render(shaped, add_generation_prompt=True, **variables)
        if history == "keep" and any(m.get("thinking") for m in messages if m["role"] == "assistant") \
                and r1.THINK_CLOSE not in text.rsplit(r1.ASSISTANT, 1)[0]:
            warnings.append("this model's chat template drops earlier reasoning itself; history policy 'keep' "
                            "has no effect with it.")
        # A template that writes BOS itself must not get a second one from the tokenizer.
        starts_with_bos = bool(self.bos_text) and text.startswith(self.bos_text)
        add_bos = not starts_with_bos and self.info.add_bos is not False
        tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        return RenderedPrompt(text, tokens, ends_inside_thinking(text), history, warnings)

    # -- generation ---------------------------------------------------------------------------------
    def _prompt_seconds(self) -> float | None:
        import llama_cpp

        data = llama_cpp.llama_perf_context(self._llm.ctx)
        return data.t_p_eval_ms / 1000 if data.n_p_eval > 0 else None

    def stream(self, messages: list[dict], temperature: float = r1.TEMPERATURE, top_p: float = r1.TOP_P,
               max_tokens: int = 4096, seed: int | None = None, cancel=None, *, history: str = "strip",
               top_k: int = 40, min_p: float = 0.05, thinking_budget: int | None = None,
               budget_message: str | None = None, budget_close: str | None = None,
               thinking: bool | None = None) -> Iterator[ChatEvent]:
        """Stream thinking/answer deltas, then one done event with stats. Never raises mid-stream: a
        failure ends the stream with stop_reason "error" (the text so far has been yielded).

        thinking_budget: when the thought has N tokens, budget_text(budget_message, budget_close) is put into
        the context (and streamed: the message as the thought's last words, the close ends it) and the model
        answers from there. max_tokens bounds the tokens the model writes, thinking and answer together."""
        import llama_cpp

        thinking_budget = check_budget(thinking_budget)
        prompt = self.render(messages, history, thinking)
        clock = _Clock()
        parser = ThinkParser(prefilled=prompt.prefilled)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        n_ctx, stop_reason, error, prompt_s = self.context_size, None, None, None
        if len(prompt.tokens) >= n_ctx:
            stop_reason = "context_full"
            error = (f"the conversation ({len(prompt.tokens)} tokens) does not fit the context ({n_ctx}); "
                     "start a new chat or raise the context size.")
        context = list(prompt.tokens)   # what the model has seen and written so far, the budget's text included
        generated, budget_tokens = 0, 0

        def budget_due() -> bool:
            return (thinking_budget is not None and not budget_tokens and parser.in_thinking
                    and clock.tokens["thinking"] >= thinking_budget)

        if stop_reason is None:
            if seed is not None:
                self._llm.set_seed(seed)
            llama_cpp.llama_perf_context_reset(self._llm.ctx)
            try:
                while stop_reason is None:
                    if budget_due():
                        inserted = self._llm.tokenize(budget_text(budget_message, budget_close).encode("utf-8"),
                                                      add_bos=False, special=True)
                        if len(context) + len(inserted) >= n_ctx:
                            stop_reason = "context_full"
                            break
                        budget_tokens = len(inserted)
                        context += inserted
                        for segment in parser.feed(decoder.decode(self._llm.detokenize(inserted))):
                            yield ChatEvent(segment.kind, segment.text)
                    # llama.cpp keeps the evaluated prefix: after the budget's text only the new tokens are evaluated.
                    tokens = self._llm.generate(context, temp=temperature, top_p=top_p, top_k=top_k,
                                                min_p=min_p, repeat_penalty=1.0)
                    try:
                        for token in tokens:
                            if prompt_s is None:
                                prompt_s = self._prompt_seconds()
                            if token in self._stop_ids or llama_cpp.llama_vocab_is_eog(self._vocab, token):
                                stop_reason = "eos"
                                break
                            generated += 1
                            context.append(token)
                            was_thinking = parser.in_thinking
                            segments = parser.feed(decoder.decode(self._llm.detokenize([token])))
                            clock.token("thinking" if was_thinking or parser.in_thinking else "answer", prompt_s)
                            for segment in segments:
                                if segment.kind == "answer" and clock.first_answer is None:
                                    clock.first_answer = time.monotonic()
                                yield ChatEvent(segment.kind, segment.text)
                            if cancel is not None and _is_cancelled(cancel):
                                stop_reason = "cancelled"
                            elif generated >= max_tokens:
                                stop_reason = "max_tokens"
                            elif len(context) >= n_ctx:
                                stop_reason = "context_full"
                            if stop_reason or budget_due():
                                break
                        else:
                            stop_reason = "eos"
                    finally:
                        tokens.close()
            except Exception as exc:  # noqa: BLE001 - reported as the stream's end, text so far kept
                stop_reason, error = "error", f"generation failed: {exc}"
        for segment in parser.feed(decoder.decode(b"", final=True)) + parser.finish():
            yield ChatEvent(segment.kind, segment.text)
        stats = self._stats(prompt, clock, prompt_s, parser, stop_reason, error, generated)
        stats.update(context_used=len(context), thinking_budget=thinking_budget,
                     budget_ended_thought=bool(budget_tokens), budget_tokens=budget_tokens, thinking=thinking)
        yield ChatEvent("done", stats=stats)

    def _stats(self, prompt, clock, prompt_s, parser, stop_reason, error, generated) -> dict:
        generation_s = clock.seconds["thinking"] + clock.seconds["answer"]
        stats = {
            "prompt_tokens": len(prompt.tokens),
            "prompt_s": round(prompt_s, 6) if prompt_s is not None else None,
            "ttft_s": round(clock.first_token - clock.start, 6) if clock.first_token else None,
            "thinking_tokens": clock.tokens["thinking"],
            "thinking_s": round(clock.seconds["thinking"], 6),
            "answer_tokens": clock.tokens["answer"],
            "answer_s": round(clock.seconds["answer"], 6),
            "time_to_first_answer_token_s": round(clock.first_answer - clock.start, 6) if clock.first_answer else None,
            "tokens_per_s": round(generated / generation_s, 3) if generation_s > 0 else None,
            "context_used": len(prompt.tokens) + generated,
            "context_size": self.context_size,
            "stop_reason": stop_reason,
            "thinking_unfinished": parser.ended_in_thinking,
            "prefilled": prompt.prefilled,
            "history": prompt.history,
            "warnings": prompt.warnings,
        }
        if error:
            stats["error"] = error
        return stats

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()

    def __enter__(self) -> ChatModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_cancelled(cancel) -> bool:
    """Accept engine.jobs.CancelToken (`.cancelled`) or threading.Event (`.is_set()`)."""
    flag = getattr(cancel, "cancelled", None)
    return bool(flag) if flag is not None else bool(cancel.is_set())


@dataclass(frozen=True)
class ChatResult:
    thinking: str
    answer: str
    stats: dict


def complete(model: ChatModel, messages: list[dict], **sampling) -> ChatResult:
    """Non-streaming helper built on `stream`: the whole thinking, answer and stats."""
    parts: dict[str, list[str]] = {"thinking": [], "answer": []}
    stats: dict = {}
    for event in model.stream(messages, **sampling):
        if event.kind == "done":
            stats = event.stats or {}
        else:
            parts[event.kind].append(event.text)
    return ChatResult("".join(parts["thinking"]), "".join(parts["answer"]), stats)
