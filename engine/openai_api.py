"""One client for OpenAI-compatible HTTP endpoints (`/models`, `/chat/completions`), with one retry policy.

Each try waits `timeout_s`; a timeout, a dropped connection, HTTP 5xx and HTTP 429 are tried again up to
`retries` more times, try n + 1 waiting backoff_s · 2ⁿ⁻¹ after try n. Other refusals (401, 404, …), an
unreachable server and a reply that is not JSON are not tried again. Every failure is a one-line AhaError
naming the URL and the setting to fix. The client knows nothing of prompts, samples or scores: whether a
failed request ends the job (the distillation teacher) or leaves one sample unscored (the judge reward) is
the caller's. It lives in the engine's kernel because engine.distill and engine.train both use it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException

from engine.errors import AhaError


class Refused(AhaError):
    """The server refused the request (a 4xx other than 429): the configuration's fault."""


class NoReply(AhaError):
    """No usable reply: the server is unreachable, answered with something other than JSON, or every try failed."""


class Unreachable(NoReply):
    """Nothing listens at the URL (refused connection, unknown host)."""


class NotJSON(NoReply):
    """A 200 whose body is not JSON: not an OpenAI-compatible endpoint."""


class Unanswered(NoReply):
    """Every try timed out, broke off or got a 5xx or a 429."""


class _Retry(Exception):
    """A failure worth another try; the message is the last one's."""


def normalize_base_url(url: str, role: str = "server") -> str:
    """The base URL as OpenAI clients take it (`http://host:port/v1`): a bare `http://host:port` gets /v1."""
    url = url.strip().rstrip("/")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise AhaError(f"{role} URL {url!r} is not an http(s) URL; give e.g. http://localhost:8000/v1")
    if parsed.path in ("", "/"):
        url += "/v1"
    return url


def error_message(error: urllib.error.HTTPError) -> str:
    """The server's own error text (OpenAI's {"error": {"message"}} shape and its variants)."""
    try:
        body = error.read().decode("utf-8", errors="replace")
    except Exception:  # the body is a courtesy; the status code says enough
        return error.reason or ""
    try:
        detail = json.loads(body)
        detail = detail.get("error", detail) if isinstance(detail, dict) else detail
        detail = detail.get("message", detail.get("detail", detail)) if isinstance(detail, dict) else detail
        text = detail if isinstance(detail, str) else json.dumps(detail)
    except ValueError:
        text = body
    return " ".join(text.split())[:200] or str(error.reason)


class OpenAIClient:
    """JSON requests to one OpenAI-compatible base URL. `role` names the server in error lines ("the teacher
    at …"); `key_setting` and `model_setting` are where the user sets the API key's variable and the model
    name (a flag or a config key), named in the advice. The API key, if any, comes from the environment
    variable `api_key_env` and is sent as a Bearer token; it is never recorded."""

    def __init__(self, base_url: str, *, api_key_env: str | None = None, timeout_s: float = 60.0, retries: int = 2,
                 backoff_s: float = 0.5, role: str = "server", key_setting: str = "--api-key-env",
                 model_setting: str = "--model"):
        self.role, self.key_setting, self.model_setting = role, key_setting, model_setting
        self.base_url = normalize_base_url(base_url, role)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, max(0, int(retries)), backoff_s
        self.api_key_env = api_key_env
        self._api_key = ""
        if api_key_env:
            self._api_key = os.environ.get(api_key_env, "").strip()
            if not self._api_key:
                raise AhaError(f"the environment variable {api_key_env} holds no API key; set it "
                               f"(export {api_key_env}=…) or leave out {key_setting}")

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON reply to one request, tried up to 1 + retries times (see the module's policy)."""
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(body).encode("utf-8") if body is not None else None
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return self._send(urllib.request.Request(url, data=data, method=method, headers=headers), url)
            except _Retry as retry:
                last = str(retry)
        raise Unanswered(f"the {self.role} at {url} failed {self.retries + 1} times: {last}; check the server's log")

    def _send(self, request: urllib.request.Request, url: str) -> dict:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            message = error_message(error)
            if error.code >= 500 or error.code == 429:
                raise _Retry(f"HTTP {error.code} {message}") from error
            raise Refused(f"the {self.role} at {url} refused the request (HTTP {error.code}: {message}); "
                          f"{self._advice(error.code)}") from error
        except urllib.error.URLError as error:  # raised while connecting or sending
            if isinstance(error.reason, TimeoutError):
                raise _Retry(f"no reply within {self.timeout_s:g} s") from error
            raise Unreachable(f"cannot reach the {self.role} at {url} ({error.reason}); start the server or "
                              "check the URL") from error
        except TimeoutError as error:
            raise _Retry(f"no reply within {self.timeout_s:g} s") from error
        except (ConnectionError, HTTPException) as error:
            raise _Retry(f"the connection broke ({type(error).__name__}: {error})") from error
        try:
            return json.loads(payload)
        except ValueError as error:
            raise NotJSON(f"the {self.role} at {url} did not answer with JSON ({payload[:80]!r}); "
                          "is it an OpenAI-compatible endpoint?") from error

    def _advice(self, status: int) -> str:
        if status == 401:
            return f"check the API key in {self.api_key_env}" if self.api_key_env else \
                f"check the API key ({self.key_setting})"
        if status == 403:
            return "check the API key's permissions"
        if status == 404:
            return f"check the base URL (it usually ends in /v1) and the model name ({self.model_setting})"
        return f"check the {self.role} settings"

    def only_model(self) -> str:
        """The served model's name when the server serves exactly one (GET /models)."""
        listing = self.request("GET", "/models")
        names = [entry.get("id") for entry in listing.get("data") or [] if isinstance(entry, dict) and entry.get("id")]
        if len(names) == 1:
            return names[0]
        served = ", ".join(names[:10]) or "none listed"
        raise AhaError(f"the {self.role} at {self.base_url} serves {len(names)} models ({served}); "
                       f"name one with {self.model_setting}")

    def chat(self, body: dict) -> dict:
        """POST /chat/completions with `body` (model, messages, sampling settings); the JSON reply."""
        return self.request("POST", "/chat/completions", body)
