"""The OpenAI chat-completions wire format as `aha serve` speaks it: a request body checked into a
`ChatRequest`, and the completion, chunk, usage and error shapes built from the engine's stats.

Reasoning travels in `reasoning_content` (the message's and each delta's), never inside `content`; `usage`
counts the thought in `completion_tokens_details.reasoning_tokens`. Unknown request fields are ignored, as
llama.cpp's server does; a known field of the wrong type is an `ApiError` (HTTP 400) with one line. Pure:
no HTTP, no model, no store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine import r1
from engine.errors import AhaError

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4  # OpenAI's limit on `stop` strings
# Why the engine stopped → OpenAI's finish_reason ("stop_string": the answer reached a request's `stop`; a
# cancel is the client's own, and it is gone).
FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "max_tokens": "length", "context_full": "length",
                  "cancelled": "stop"}


class ApiError(Exception):
    """An error the client gets as OpenAI's {"error": {"message", "type", "code", "param"}} with `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


@dataclass(frozen=True)
class ChatRequest:
    """One checked /v1/chat/completions request, in the engine's terms."""

    model: str
    messages: list[dict]             # engine shape: role (system|user|assistant), content, thinking
    stream: bool = False
    include_usage: bool = False      # stream_options.include_usage: a last chunk with the usage
    temperature: float = r1.TEMPERATURE
    top_p: float = r1.TOP_P
    max_tokens: int | None = None    # None: bounded by the context only
    seed: int | None = None
    stop: tuple[str, ...] = ()
    thinking_budget: int | None = None
    reasoning_effort: str | None = None
    thinking: bool | None = None     # chat_template_kwargs.enable_thinking: the template's switch (None: its default)

    @property
    def system_prompt(self) -> str:
        return "\n\n".join(m["content"] for m in self.messages if m["role"] == "system" and m["content"].strip())

    @property
    def last_user_text(self) -> str:
        return self.messages[-1]["content"]


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise _bad(f"{name} must be a number from {low:g} to {high:g}, not {value!r}", name)
    return float(value)


def _integer(body: dict, name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(f"{name} must be an integer of at least {low}, not {value!r}", name)
    return value


def _boolean(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{name} must be true or false, not {value!r}", name)
    return value


def _text(content, index: int) -> str:
    """A message's content: a string, null, or a list of text parts (images and audio are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(f"messages[{index}].content has a part of type {kind!r}; only text parts are supported",
                           "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{index}].content must be a string or a list of text parts", "messages")


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _bad("messages must be a non-empty list of {role, content} objects", "messages")
    shaped = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise _bad(f"messages[{index}] must be an object with role and content", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"messages[{index}].role {role!r} is not supported; use system, user or assistant "
                       "(tools are not served)", "messages")
        item = {"role": ROLES[role], "content": _text(message.get("content"), index)}
        thinking = message.get("reasoning_content")
        if role == "assistant" and isinstance(thinking, str) and thinking:
            item["thinking"] = thinking
        shaped.append(item)
    if shaped[-1]["role"] != "user":
        raise _bad(f"the last message must be the user's, not the {shaped[-1]['role']}'s: the model answers it",
                   "messages")
    return shaped


def _stops(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(item, str) for item in stops) or len(stops) > MAX_STOPS:
        raise _bad(f"stop must be a string or a list of at most {MAX_STOPS} strings", "stop")
    return tuple(item for item in stops if item)


def _effort(value) -> tuple[str | None, int | None]:
    """reasoning_effort → (the effort, its thinking budget), through engine.chat.reasoning."""
    if value is None:
        return None, None
    from engine.chat.reasoning import effort_budget

    if not isinstance(value, str):
        raise _bad(f"reasoning_effort must be a string (low, medium or high), not {value!r}", "reasoning_effort")
    try:
        return value, effort_budget(value)
    except AhaError as error:
        raise _bad(str(error), "reasoning_effort") from error


def _thinking_switch(value) -> bool | None:
    """chat_template_kwargs.enable_thinking (llama.cpp's and vLLM's field; `thinking` as DeepSeek-V3.1 names it)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("chat_template_kwargs must be an object such as {\"enable_thinking\": false}", "chat_template_kwargs")
    for name in ("enable_thinking", "thinking"):
        if value.get(name) is not None:
            return _boolean(value, name)
    return None


def parse_chat_request(body) -> ChatRequest:
    """The request body (already JSON-decoded) as a ChatRequest, or an ApiError naming the first bad field.

    Sampling a request leaves out takes DeepSeek's R1 advice (temperature 0.6, top_p 0.95); an explicit
    `thinking_budget_tokens` wins over `reasoning_effort`; `max_completion_tokens` is read as `max_tokens`;
    `chat_template_kwargs.enable_thinking` sets the template's thinking switch where it has one."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model is required: the id of a model from GET /v1/models", "model")
    if (n := _integer(body, "n", 1)) not in (None, 1):
        raise _bad(f"n must be 1: one choice per request is served, not {n}", "n")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options must be an object such as {\"include_usage\": true}", "stream_options")
    effort, effort_tokens = _effort(body.get("reasoning_effort"))
    budget = _integer(body, "thinking_budget_tokens", 0)
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    temperature, top_p = _number(body, "temperature", 0.0, 2.0), _number(body, "top_p", 0.0, 1.0)
    return ChatRequest(
        model=model.strip(), messages=_messages(body.get("messages")), stream=_boolean(body, "stream"),
        include_usage=_boolean(options or {}, "include_usage"),
        temperature=r1.TEMPERATURE if temperature is None else temperature,
        top_p=r1.TOP_P if top_p is None else top_p,
        max_tokens=max_tokens, seed=_integer(body, "seed", -(2 ** 63)), stop=_stops(body.get("stop")),
        thinking_budget=budget if budget is not None else effort_tokens, reasoning_effort=effort,
        thinking=_thinking_switch(body.get("chat_template_kwargs")))


# Responses --------------------------------------------------------------------------------------

def finish_reason(stop_reason: str | None) -> str:
    """The engine's stop reason as OpenAI's finish_reason: eos → stop, a token or context limit → length."""
    return FINISH_REASONS.get(stop_reason or "", "stop")


def usage(stats: dict) -> dict:
    """OpenAI's usage from the engine's done stats: the thought is counted in reasoning_tokens."""
    thinking, answer = stats.get("thinking_tokens") or 0, stats.get("answer_tokens") or 0
    prompt = stats.get("prompt_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": thinking + answer, "total_tokens": prompt + thinking + answer,
            "completion_tokens_details": {"reasoning_tokens": thinking}}


def completion(completion_id: str, created: int, model: str, thinking: str, answer: str, finish: str,
               stats: dict) -> dict:
    """A whole chat.completion object."""
    message = {"role": "assistant", "content": answer, "reasoning_content": thinking}
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage(stats)}


def chunk(completion_id: str, created: int, model: str, delta: dict, finish: str | None = None) -> dict:
    """One chat.completion.chunk with one choice."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def usage_chunk(completion_id: str, created: int, model: str, stats: dict) -> dict:
    """The last chunk of a stream asked for with stream_options.include_usage: no choices, the usage."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage(stats)}


def models_list(models) -> dict:
    """GET /v1/models: each served model with its id and the file's modification time."""
    return {"object": "list", "data": [{"id": model.id, "object": "model", "created": model.created,
                                        "owned_by": "aha"} for model in models]}


class StopMatcher:
    """Finds the request's stop strings in the answer as it streams. Text that could be the start of a
    stop string is held back until it is not; `feed` returns the text safe to send and whether a stop
    string was reached (the text is then cut before it).

    Example:
    >>> matcher = StopMatcher(("END",))
    >>> matcher.feed("one E"), matcher.feed("N"), matcher.feed("D two")
    (('one ', False), ('', False), ('', True))
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(stop for stop in stops if stop)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buffer = self.pending + text
        found = [buffer.find(stop) for stop in self.stops if stop in buffer]
        if found:
            self.pending = ""
            return buffer[:min(found)], True
        held = max((size for stop in self.stops for size in range(1, len(stop)) if buffer.endswith(stop[:size])),
                   default=0)
        self.pending = buffer[len(buffer) - held:] if held else ""
        return buffer[:len(buffer) - held], False

    def flush(self) -> str:
        """What is held back, at the end of the answer (it turned out to be no stop string)."""
        text, self.pending = self.pending, ""
        return text
