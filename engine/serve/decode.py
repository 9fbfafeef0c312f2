"""One request's decoding, on a worker thread: wait for the turn, load the model, stream the reply through
ChatModel.stream, cut the answer at a stop string, and hand each piece to `emit` (`Delta`, then one
`Finished`, or an ApiError); with --save, the same pieces go into a new conversation of the store.

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


class _Saved:
    """With --save: the request's messages as a new conversation, and the reply as its new assistant message,
    written as the client gets it (so an answer cut at a stop string is saved cut). Shaped as `aha chat`
    saves a turn (engine.chat.conversation), with the conversation's settings of the request."""

    def __init__(self, model, served: ServedModel, request: ChatRequest, sampling: dict):
        from engine.chat.conversation import title_from
        from engine.store import Store

        self.store = Store()
        try:
            conversation = self.store.create_conversation(
                title_from(request.last_user_text),
                settings={"model": str(served.path), "served_as": served.id, "source": "aha serve",
                          "system_prompt": request.system_prompt, "temperature": sampling["temperature"],
                          "top_p": sampling["top_p"], "seed": sampling["seed"],
                          "thinking_budget": request.thinking_budget, "thinking": request.thinking})
            parent = None
            for message in request.messages:
                if message["role"] != "system":
                    parent = self.store.add_message(conversation.id, parent, message["role"], message["content"],
                                                    thinking=message.get("thinking", "")).id
            self.conversation_id = conversation.id
            self.writer = self.store.begin_assistant_message(
                conversation.id, parent, model=model.path.name, sampling=dict(sampling))
        except BaseException:
            self.store.close()
            raise

    def append(self, kind: str, text: str) -> None:
        self.writer.append(kind, text)

    def finish(self, stats: dict) -> dict:
        """Write the end (a stop string is a complete reply); the stats gain the conversation's and message's ids."""
        from engine.chat.conversation import status_for

        reason = stats.get("stop_reason")
        self.writer.finish("complete" if reason == "stop_string" else status_for(reason), stats)
        return {**stats, "conversation_id": self.conversation_id, "message_id": self.writer.message_id}

    def close(self) -> None:
        """Finish a reply that ended without `finish` (a failure), then close the store."""
        from engine.store import WriterState

        try:
            if self.writer.state is WriterState.STREAMING:
                self.writer.finish("error", {"stop_reason": "error"})
        finally:
            self.store.close()


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
        saved = _Saved(model, served, request, sampling) if save else None
        try:
            _relay(model.stream(request.messages, cancel=halt, **sampling), request, halt, cancel, emit, saved,
                   {"queued_s": queued_s, "load_s": load_s})
        finally:
            if saved is not None:
                saved.close()
    except Exception as error:  # noqa: BLE001 - a bug in one request must not take the server down
        emit(ApiError(500, f"internal error: {type(error).__name__}: {error}", type="server_error"))
    finally:
        host.turns.release()


def _relay(events: Iterator, request: ChatRequest, halt: _Halt, cancel: threading.Event,
           emit: Callable[[object], None], saved: _Saved | None, timings: dict) -> None:
    """The engine's events to `emit` (and to the saved message): the answer cut at the first stop string."""
    stopper = StopMatcher(request.stop)

    def out(kind: str, text: str) -> None:
        emit(Delta(kind, text))
        if saved is not None:
            saved.append(kind, text)

    for event in events:
        if event.kind == "thinking":
            out("thinking", event.text)
        elif event.kind == "answer":
            if halt.stop_string.is_set():
                continue
            text, reached = stopper.feed(event.text)
            if text:
                out("answer", text)
            if reached:
                halt.stop_string.set()
        else:
            if rest := stopper.flush():
                out("answer", rest)
            stats = {**(event.stats or {}), **timings}
            if halt.stop_string.is_set() and not cancel.is_set():
                stats["stop_reason"] = "stop_string"
            if saved is not None:
                stats = saved.finish(stats)
            emit(Finished(stats, finish_reason(stats.get("stop_reason"))))
