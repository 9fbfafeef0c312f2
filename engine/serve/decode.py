"""One request's decoding, on a worker thread: wait for the turn, load the model, stream the reply through
ChatModel.stream (with --save, through engine.chat.conversation into a new conversation of the store), cut
the answer at a stop string, and hand each piece to `emit` (`Delta`, then one `Finished`, or an ApiError).

`cancel` is set when the client goes away (or the server stops): it ends the wait for the turn or the
decoding at the next token. Knows nothing of HTTP or asyncio: `emit` is the app's bridge to its loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from engine.errors import AhaError
from engine.serve.host import ModelHost, ServedModel
from engine.serve.protocol import ApiError, ChatRequest, StopMatcher, finish_reason


@dataclass(frozen=True)
class Delta:
    """A piece of the reply: kind "thinking" (→ reasoning_content) or "answer" (→ content)."""

    kind: str
    text: str


@dataclass(frozen=True)
class Finished:
    """The end of the reply: the engine's done stats (with queued_s and load_s) and the finish_reason."""

    stats: dict
    finish: str


class _Halt:
    """The cancel token the engine polls: the client's `cancel`, or a stop string reached."""

    def __init__(self, cancel: threading.Event):
        self.client, self.stop_string = cancel, threading.Event()

    @property
    def cancelled(self) -> bool:
        return self.client.is_set() or self.stop_string.is_set()


def sampling_for(request: ChatRequest, n_ctx: int) -> dict:
    """ChatModel.stream's sampling for a request; no max_tokens: as long as the context allows."""
    return {"temperature": request.temperature, "top_p": request.top_p, "max_tokens": request.max_tokens or n_ctx,
            "seed": request.seed, "thinking_budget": request.thinking_budget, "thinking": request.thinking}


def _saved_stream(model, served: ServedModel, request: ChatRequest, halt: _Halt, sampling: dict) -> Iterator:
    """The reply streamed into a new conversation: the request's messages, then the model's reply, saved as
    `aha chat` saves one (engine.chat.conversation.stream_reply)."""
    from engine.chat.conversation import TurnSettings, stream_reply, title_from
    from engine.store import Store

    settings = TurnSettings(temperature=sampling["temperature"], top_p=sampling["top_p"],
                            max_tokens=sampling["max_tokens"], seed=sampling["seed"],
                            system_prompt=request.system_prompt, thinking_budget=request.thinking_budget,
                            thinking=request.thinking)
    with Store() as store:
        conversation = store.create_conversation(
            title_from(request.last_user_text),
            settings={"model": str(served.path), "served_as": served.id, "source": "aha serve",
                      "system_prompt": settings.system_prompt, "temperature": settings.temperature,
                      "top_p": settings.top_p, "seed": settings.seed, "thinking_budget": settings.thinking_budget,
                      "thinking": settings.thinking})
        parent = None
        for message in request.messages:
            if message["role"] != "system":
                parent = store.add_message(conversation.id, parent, message["role"], message["content"],
                                           thinking=message.get("thinking", "")).id
        yield from stream_reply(store, model, conversation.id, parent, settings, cancel=halt)


def decode(host: ModelHost, served: ServedModel, request: ChatRequest, cancel: threading.Event,
           emit: Callable[[object], None], save: bool = False) -> None:
    """Serve one request; never raises (a failure is emitted as an ApiError, or ends the stream's stats)."""
    started = time.monotonic()
    if not host.turns.acquire(cancel):
        emit(Finished({"stop_reason": "cancelled", "queued_s": round(time.monotonic() - started, 3)}, "stop"))
        return
    try:
        queued_s = round(time.monotonic() - started, 3)
        try:
            model = host.load(served)
        except AhaError as error:
            emit(ApiError(500, f"cannot load {served.id}: {error}", type="server_error", code="model_load_failed"))
            return
        load_s = round(time.monotonic() - started - queued_s, 3)
        halt = _Halt(cancel)
        sampling = sampling_for(request, model.context_size)
        events = (_saved_stream(model, served, request, halt, sampling) if save
                  else model.stream(request.messages, cancel=halt, **sampling))
        stopper = StopMatcher(request.stop)
        for event in events:
            if event.kind == "thinking":
                emit(Delta("thinking", event.text))
            elif event.kind == "answer":
                if halt.stop_string.is_set():
                    continue
                text, reached = stopper.feed(event.text)
                if text:
                    emit(Delta("answer", text))
                if reached:
                    halt.stop_string.set()
            else:
                if rest := stopper.flush():
                    emit(Delta("answer", rest))
                stats = {**(event.stats or {}), "queued_s": queued_s, "load_s": load_s}
                if halt.stop_string.is_set() and not cancel.is_set():
                    stats["stop_reason"] = "stop_string"
                emit(Finished(stats, finish_reason(stats.get("stop_reason"))))
    except Exception as error:  # noqa: BLE001 - a bug in one request must not take the server down
        emit(ApiError(500, f"internal error: {type(error).__name__}: {error}", type="server_error"))
    finally:
        host.turns.release()
