"""The ASGI app of `aha serve` (Starlette): GET /v1/models and POST /v1/chat/completions (streamed as
server-sent events or whole), the optional Bearer key, OpenAI-shaped errors, and one record per request for
the log (`on_request`).

Each chat request decodes on a worker thread of its own (engine.serve.decode); its pieces reach the event
loop through an asyncio queue. A task watches the request's `receive` for `http.disconnect` (uvicorn says
nothing else when a client goes away: a send to it is dropped), which sets the request's cancel event and
so ends the decoding, or the request's wait for its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.serve.decode import Delta, Finished, decode
from engine.serve.host import ModelHost
from engine.serve.protocol import (
    ApiError,
    ChatRequest,
    chunk,
    completion,
    models_list,
    parse_chat_request,
    usage,
    usage_chunk,
)

RECORD_KEY = "aha.record"  # where a request's log record lives in its ASGI scope
# A request's body is refused past this size (413), before it is all in memory: a 128k-token conversation is
# well under 1 MiB of JSON.
MAX_BODY_BYTES = 16 * 2 ** 20


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class ServeState:
    """What the endpoints share: the host, the options, the cancel events of the requests in flight."""

    def __init__(self, host: ModelHost, save: bool):
        self.host, self.save = host, save
        self._active: set[threading.Event] = set()
        self._lock = threading.Lock()
        self.stopping = False  # set by cancel_all: a cancel is then the server's, not a client going away

    def begin(self) -> threading.Event:
        cancel = threading.Event()
        with self._lock:
            self._active.add(cancel)
        return cancel

    def end(self, cancel: threading.Event) -> None:
        with self._lock:
            self._active.discard(cancel)

    def cancel_all(self) -> None:
        """Stop every decoding and every wait for a turn (the server is stopping)."""
        self.stopping = True
        with self._lock:
            for cancel in self._active:
                cancel.set()


class RequestLog:
    """ASGI middleware: when a request has been answered, `on_request(record)` with method, path, status,
    duration_s and what the endpoint put in the scope's record (model, tokens, stop reason …)."""

    def __init__(self, app, on_request: Callable[[dict], None]):
        self.app, self.on_request = app, on_request
        self.in_flight = 0  # requests not yet logged (read from any thread: an int is written atomically)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        started, status = time.monotonic(), {"code": 500}
        record = scope[RECORD_KEY] = {}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            try:
                self.on_request({"method": scope["method"], "path": scope["path"], "status": status["code"],
                                 "duration_s": round(time.monotonic() - started, 3), **record})
            finally:
                self.in_flight -= 1


class BearerKey:
    """ASGI middleware: with a key, every request must carry `Authorization: Bearer <key>` (else 401)."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.key:
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            given = header[7:].strip() if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode("utf-8"), self.key.encode("utf-8")):
                said = "a wrong API key" if given else "no API key"
                error = ApiError(401, f"the request has {said}; send the server's key as `Authorization: Bearer KEY` "
                                      "(the OpenAI client's api_key)", code="invalid_api_key")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _watch_disconnect(receive, cancel: threading.Event) -> None:
    """Set `cancel` when the client goes away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


class EventStream:
    """A text/event-stream response from an async iterator of bytes, watching for the client going away
    while it streams (then `cancel` is set and the iterator, which ends with the decoding, is drained)."""

    def __init__(self, chunks: AsyncIterator[bytes], cancel: threading.Event):
        self.chunks, self.cancel = chunks, cancel

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                                (b"x-accel-buffering", b"no")]})
        watcher = asyncio.create_task(_watch_disconnect(receive, self.cancel))
        try:
            async with contextlib.aclosing(self.chunks) as chunks:
                async for data in chunks:
                    if not watcher.done():  # the client is still there
                        await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # a server that raises on a send to a client that is gone
            self.cancel.set()
        finally:
            watcher.cancel()


async def _read_body(request: Request) -> bytes:
    """The request's body, or a 413 when it is over MAX_BODY_BYTES. Past the limit the rest is read and
    dropped (memory stays bounded) so that the client, still sending, gets the 413 rather than a broken pipe;
    past 64 times the limit the connection is simply closed with it."""
    pieces, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size <= MAX_BODY_BYTES:
            pieces.append(piece)
        elif size > 64 * MAX_BODY_BYTES:
            break
    if size > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES // 2 ** 20} MiB; send a shorter conversation",
                       code="request_too_large")
    return b"".join(pieces)


def create_app(host: ModelHost, *, api_key: str | None = None, save: bool = False,
               on_request: Callable[[dict], None] = lambda record: None) -> tuple[RequestLog, ServeState]:
    """The ASGI app (Starlette's, inside the key check inside the request log) and its shared state (whose
    `cancel_all` the server calls when it stops)."""
    state = ServeState(host, save)

    async def list_models(request: Request) -> JSONResponse:
        return JSONResponse(models_list(host.models))

    async def chat_completions(request: Request):
        record = request.scope.setdefault(RECORD_KEY, {})
        body = await _read_body(request)
        try:
            data = json.loads(body)
        except ValueError as error:
            raise ApiError(400, f"the request body is not JSON ({error})") from error
        parsed = parse_chat_request(data)
        record.update(model=parsed.model, stream=parsed.stream)
        served = host.resolve(parsed.model)
        if served is None:
            offered = ", ".join(model.id for model in host.models)
            raise ApiError(404, f"model {parsed.model!r} is not served here; GET /v1/models lists the served "
                                f"models ({offered})", code="model_not_found", param="model")
        record["model"] = served.id
        cancel = state.begin()
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def emit(item) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
                loop.call_soon_threadsafe(queue.put_nowait, item)

        threading.Thread(target=decode, args=(host, served, parsed, cancel, emit, state.save), daemon=True,
                         name="aha-serve-decode").start()
        identity, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if parsed.stream:
            return EventStream(_stream(parsed, served.id, identity, created, queue, cancel, record, state), cancel)
        return await _whole(request, parsed, served.id, identity, created, queue, cancel, record, state)

    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = (f"no such endpoint {request.method} {request.url.path}; served: GET /v1/models, "
                   "POST /v1/chat/completions") if error.status_code in (404, 405) else str(error.detail)
        return error_response(ApiError(error.status_code, message, code="not_found" if error.status_code == 404
                                       else None))

    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(ApiError(500, f"internal error: {type(error).__name__}: {error}", type="server_error"))

    app = Starlette(routes=[Route("/v1/models", list_models, methods=["GET"]),
                            Route("/v1/chat/completions", chat_completions, methods=["POST"])],
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error})
    return RequestLog(BearerKey(app, api_key), on_request), state


def _finish_record(record: dict, finished: Finished | None, cancel: threading.Event, state: ServeState) -> None:
    """The request's counts and why it ended, into its log record."""
    stats = finished.stats if finished else {}
    counts = usage(stats)
    # The engine's own reason when it finished; "cancelled" when the server stopped waiting for it.
    stop_reason = record.get("stop_reason") or stats.get("stop_reason") or ("cancelled" if cancel.is_set() else None)
    record.update(client_gone=cancel.is_set() and not state.stopping, prompt_tokens=counts["prompt_tokens"], completion_tokens=counts["completion_tokens"],
                  reasoning_tokens=counts["completion_tokens_details"]["reasoning_tokens"], stop_reason=stop_reason,
                  finish_reason=finished.finish if finished else None, queued_s=stats.get("queued_s"),
                  load_s=stats.get("load_s"),
                  thinking_budget=stats.get("thinking_budget"),
                  budget_ended_thought=bool(stats.get("budget_ended_thought")),
                  conversation_id=stats.get("conversation_id"))


def _failure(finished: Finished, state: ServeState) -> ApiError | None:
    """A reply that is not one: the engine failed (500), or the server stopped in the middle of it (503)."""
    if finished.stats.get("stop_reason") == "error":
        return ApiError(500, finished.stats.get("error") or "generation failed", type="server_error")
    if finished.stats.get("stop_reason") == "cancelled" and state.stopping:
        return ApiError(503, "the server stopped before the reply was finished; send the request again once it "
                             "is back", type="server_error", code="server_stopping")
    return None


async def _whole(request: Request, parsed: ChatRequest, model: str, identity: str, created: int,
                 queue: asyncio.Queue, cancel: threading.Event, record: dict, state: ServeState) -> JSONResponse:
    """Collect the reply, then answer with one chat.completion."""
    watcher = asyncio.create_task(_watch_disconnect(request.receive, cancel))
    parts: dict[str, list[str]] = {"thinking": [], "answer": []}
    finished = None
    try:
        while finished is None:
            item = await queue.get()
            if isinstance(item, ApiError):
                record.update(error=item.message, stop_reason="error")
                raise item
            if isinstance(item, Delta):
                parts[item.kind].append(item.text)
            else:
                finished = item
    finally:
        watcher.cancel()
        if finished is None and "error" not in record:  # the task was cancelled: the server stops
            cancel.set()
        state.end(cancel)
        _finish_record(record, finished, cancel, state)
    failure = _failure(finished, state)
    if failure is not None:
        record["error"] = failure.message
        raise failure
    thinking, answer = "".join(parts["thinking"]), "".join(parts["answer"])
    return JSONResponse(completion(identity, created, model, thinking, answer, finished.finish, finished.stats))


async def _stream(parsed: ChatRequest, model: str, identity: str, created: int, queue: asyncio.Queue,
                  cancel: threading.Event, record: dict, state: ServeState) -> AsyncIterator[bytes]:
    """The reply as chat.completion.chunk events: the role, reasoning_content and content deltas, the
    finish_reason, the usage (stream_options.include_usage), then [DONE]. A failure is an error event."""
    finished = None
    try:
        yield _sse(chunk(identity, created, model, {"role": "assistant", "content": ""}))
        while finished is None:
            item = await queue.get()
            if isinstance(item, ApiError):
                record.update(error=item.message, stop_reason="error")
                yield _sse(item.body())
                break
            if isinstance(item, Delta):
                field = "reasoning_content" if item.kind == "thinking" else "content"
                yield _sse(chunk(identity, created, model, {field: item.text}))
            else:
                finished = item
        if finished is not None:
            if (failure := _failure(finished, state)) is not None:
                record["error"] = failure.message
                yield _sse(failure.body())
            else:
                yield _sse(chunk(identity, created, model, {}, finished.finish))
                if parsed.include_usage:
                    yield _sse(usage_chunk(identity, created, model, finished.stats))
        yield _sse("[DONE]")
    finally:
        if finished is None and "error" not in record:  # the client went away, or the server stops
            cancel.set()
        state.end(cancel)
        _finish_record(record, finished, cancel, state)
