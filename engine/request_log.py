"""The request log of `aha serve`, read from its events: one finished request as the cells a window's log shows
(time, request, model, status, tokens with the reasoning share, duration), and the server's OpenAI base URL.

It knows the fields of the server's `log` events (engine.serve.server: event "ready" with its `url`, event
"request" per answered request, whose `message` is the terminal's line) and nothing of HTTP or of the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.jobs import format_seconds

DEFAULT_PORT = 11435   # engine.serve.server's (a test keeps them equal): importing it would load Starlette


def base_url(url: str) -> str:
    """The OpenAI base URL clients are given, from the server's address ("http://127.0.0.1:11435" →
    "http://127.0.0.1:11435/v1"); an address that already ends in /v1 is kept."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class RequestRecord:
    """One answered request as the server reported it; `at` is when its event arrived (the events carry no clock),
    `line` the server's own sentence for it (waits, a client that went away, errors), `cancelled` whether the client
    went away before the reply was complete, `budget_ended` whether the thinking budget ended the thought.

    Example:
    >>> event = {"type": "log", "event": "request", "method": "POST", "path": "/v1/chat/completions",
    ...          "model": "tiny", "status": 200, "stream": True, "prompt_tokens": 24, "completion_tokens": 312,
    ...          "reasoning_tokens": 280, "duration_s": 1.84}
    >>> record = RequestRecord.from_event(event, datetime(2026, 1, 2, 14, 3, 7))
    >>> record.time_text(), record.status_text(), record.tokens_text(), record.duration_text()
    ('14:03:07', '200 · stream', '24 → 312 · 280 thinking', '1.8 s')
    """

    at: datetime
    method: str
    path: str
    model: str | None
    status: int | None
    stream: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    reasoning_tokens: int | None
    duration_s: float | None
    line: str = ""
    cancelled: bool = False
    budget_ended: bool = False

    @classmethod
    def from_event(cls, event: dict[str, Any], at: datetime | None = None) -> RequestRecord:
        duration = event.get("duration_s")
        return cls(at=at or datetime.now(), method=str(event.get("method") or ""), path=str(event.get("path") or ""),
                   model=str(event["model"]) if event.get("model") else None, status=_count(event.get("status")),
                   stream=bool(event.get("stream")), prompt_tokens=_count(event.get("prompt_tokens")),
                   completion_tokens=_count(event.get("completion_tokens")),
                   reasoning_tokens=_count(event.get("reasoning_tokens")),
                   duration_s=float(duration) if isinstance(duration, int | float) else None,
                   line=str(event.get("message") or ""), cancelled=event.get("stop_reason") == "cancelled",
                   budget_ended=bool(event.get("budget_ended_thought")))

    @property
    def failed(self) -> bool:
        """An HTTP error (4xx, 5xx), a request that ended without a status, or one its client left mid-reply."""
        return self.status is None or self.status >= 400 or self.cancelled

    def time_text(self) -> str:
        return self.at.strftime("%H:%M:%S")

    def request_text(self) -> str:
        """"POST /v1/chat/completions"."""
        return f"{self.method} {self.path}".strip()

    def status_text(self) -> str:
        """"200", "200 · stream", "404", "200 · stream · cancelled" (the client went away); "—" without a status."""
        words = [str(self.status) if self.status is not None else "—"]
        words += ["stream"] * self.stream + ["cancelled"] * self.cancelled
        return " · ".join(words)

    def tokens_text(self) -> str:
        """Prompt → completion tokens, and how many of those were thinking: "24 → 312 · 280 thinking", "… · 256
        thinking (budget)" when the budget ended the thought; "—" for a request that generated nothing (a model
        list)."""
        if self.prompt_tokens is None and self.completion_tokens is None:
            return "—"
        prompt = "?" if self.prompt_tokens is None else f"{self.prompt_tokens:,}"
        completion = "?" if self.completion_tokens is None else f"{self.completion_tokens:,}"
        text = f"{prompt} → {completion}"
        if self.reasoning_tokens:
            text += f" · {self.reasoning_tokens:,} thinking" + (" (budget)" if self.budget_ended else "")
        return text

    def duration_text(self) -> str:
        """"< 1 ms", "4 ms", "470 ms" under a second (a model list, a refusal), then engine.jobs.format_seconds:
        "1.8 s"."""
        if self.duration_s is None:
            return "—"
        if self.duration_s < 0.0005:
            return "< 1 ms"
        milliseconds = round(self.duration_s * 1000)
        return f"{milliseconds} ms" if milliseconds < 1000 else format_seconds(max(self.duration_s, 1.0))


def is_request(event: dict[str, Any]) -> bool:
    return event.get("type") == "log" and event.get("event") == "request"


def served_models(event: dict[str, Any]) -> list[str]:
    """The model names a ready event lists."""
    models = event.get("models")
    return [str(name) for name in models] if isinstance(models, list) else []


def ready_url(event: dict[str, Any]) -> str | None:
    """The server's base URL when `event` says it is listening, else None."""
    if event.get("type") == "log" and event.get("event") == "ready" and event.get("url"):
        return base_url(str(event["url"]))
    return None
