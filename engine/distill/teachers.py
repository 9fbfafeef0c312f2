"""Teachers for distillation: k sampled replies per prompt, each split into thinking and answer.

Three kinds: a local GGUF through engine.chat.runtime, a Hugging Face checkpoint through transformers, and any
OpenAI-compatible chat endpoint (Ollama, llama.cpp's server, vLLM, LM Studio) over stdlib HTTP with a
thread pool. A teacher only generates; verification, keep rules and files are engine.distill.generate's.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Protocol

from engine import r1
from engine.errors import AhaError
from engine.think import CLOSE_TAG, OPEN_TAG, split_thinking

TEACHER_KINDS = ("gguf", "hf", "openai")
# Fields in which OpenAI-compatible servers return reasoning apart from the answer: DeepSeek's API,
# vLLM and llama.cpp's server (`reasoning_content`), Ollama and newer vLLM (`reasoning`), others (`thinking`).
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of a trace-generation run; recorded with every sample."""

    temperature: float = r1.TEMPERATURE    # DeepSeek's advice for R1 models: 0.6
    top_p: float = r1.TOP_P                # 0.95
    max_tokens: int = 4096                 # reply budget (thinking + answer)
    seed: int | None = None                # sample i of a prompt uses seed + i; None: the teacher's own randomness

    def for_sample(self, index: int) -> dict:
        """This sample's settings as recorded: the seed made specific to sample `index`."""
        return {**asdict(self), "seed": None if self.seed is None else self.seed + index}


@dataclass(frozen=True)
class TeacherSample:
    """One reply. `raw` is the reply as written, what the verifier reads: relative to the prompt, so it
    starts inside the thought when `prefilled`; an endpoint's separate reasoning field is put back inline
    as `<think>\n…\n</think>\n\n`. thinking and answer are its two parts, stripped of surrounding space."""

    thinking: str
    answer: str
    raw: str
    prefilled: bool
    finish_reason: str                     # "stop" | "length" (token budget or context) | "cancelled"
    sampling: dict                         # Sampling.for_sample(i)
    timing: dict = field(default_factory=dict)   # seconds (wall time of the request or batch), …
    usage: dict = field(default_factory=dict)    # prompt_tokens, completion_tokens when known


class Teacher(Protocol):
    kind: str                              # "gguf" | "hf" | "openai"
    name: str                              # file or folder name, or the served model's name

    def describe(self) -> dict:
        """{kind, name, …} as recorded with every sample (never an API key)."""

    def generate(self, prompts: Sequence[str], k: int, sampling: Sampling,
                 cancel=None) -> Iterator[tuple[int, list[TeacherSample]]]:
        """(index into prompts, its k samples) for each prompt as it completes (any order for endpoints).
        After a cancel, prompts not yet complete are not yielded."""

    def close(self) -> None:
        """Free the model or the connections."""


def split_reply(content: str, reasoning: str = "", prefilled: bool | None = None) -> tuple[str, str, str, bool]:
    """(thinking, answer, raw, prefilled) of an endpoint's reply. `reasoning` is the thought an endpoint returned
    apart from the content; without it the thought is inline in `content`. `prefilled=None` decides from
    the text: a `</think>` with no `<think>` before it means the prompt opened the thought (the R1
    templates end with `<think>\\n`, so the reply holds only the closing tag)."""
    if reasoning:
        raw = f"{OPEN_TAG}\n{reasoning.strip()}\n{CLOSE_TAG}\n\n{content.lstrip()}"
        thinking, answer = split_thinking(raw)
        return thinking.strip(), answer.strip(), raw, False
    if prefilled is None:
        closing = content.find(CLOSE_TAG)
        prefilled = closing != -1 and OPEN_TAG not in content[:closing]
    thinking, answer = split_thinking(content, prefilled)
    return thinking.strip(), answer.strip(), content, prefilled


def parse_teacher(spec: str) -> tuple[str, str]:
    """`gguf:PATH` | `hf:FOLDER` | `openai:BASE_URL` → (kind, target)."""
    kind, _, target = spec.partition(":")
    if kind not in TEACHER_KINDS or not target:
        raise AhaError(f"unknown teacher {spec!r}: give gguf:PATH, hf:FOLDER or openai:BASE_URL "
                       "(e.g. openai:http://localhost:11434/v1 for Ollama)")
    return kind, target


def make_teacher(spec: str, *, model: str | None = None, api_key_env: str | None = None, concurrency: int = 4,
                 n_ctx: int = 4096, timeout_s: float = 600.0) -> Teacher:
    """A teacher from a `--teacher` spec (see parse_teacher)."""
    kind, target = parse_teacher(spec)
    if kind == "gguf":
        return GGUFTeacher(target, n_ctx=n_ctx)
    if kind == "hf":
        return HFTeacher(target)
    return OpenAITeacher(target, model=model, api_key_env=api_key_env, concurrency=concurrency, timeout_s=timeout_s)


def _user_turn(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def is_cancelled(cancel) -> bool:
    """Accept engine.jobs.CancelToken (`.cancelled`), threading.Event (`.is_set()`) or None."""
    if cancel is None:
        return False
    flag = getattr(cancel, "cancelled", None)
    return bool(flag) if flag is not None else bool(cancel.is_set())


# Local GGUF ---------------------------------------------------------------------------------------

class GGUFTeacher:
    """A GGUF model run in-process by llama.cpp (engine.chat.runtime): samples one after another."""

    kind = "gguf"

    def __init__(self, path: str | Path, n_ctx: int = 4096, chat_model=None):
        from engine.chat.runtime import ChatModel

        self.path = Path(path).expanduser()
        self.name = self.path.name
        self.model = chat_model if chat_model is not None else ChatModel(self.path, n_ctx=n_ctx)

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "path": str(self.path)}

    def generate(self, prompts: Sequence[str], k: int, sampling: Sampling,
                 cancel=None) -> Iterator[tuple[int, list[TeacherSample]]]:
        for index, prompt in enumerate(prompts):
            samples = []
            for sample_index in range(k):
                samples.append(self._sample(prompt, sampling.for_sample(sample_index), cancel))
                if is_cancelled(cancel):
                    return
            yield index, samples

    def _sample(self, prompt: str, settings: dict, cancel) -> TeacherSample:
        messages = _user_turn(prompt)
        prefilled = self.model.render(messages).prefilled
        started = time.monotonic()
        # Rebuild the reply as written: the think parser dropped a tag at each change of kind.
        pieces: list[str] = []
        current = "thinking" if prefilled else "answer"
        stats: dict = {}
        for event in self.model.stream(messages, temperature=settings["temperature"], top_p=settings["top_p"],
                                       max_tokens=settings["max_tokens"], seed=settings["seed"], cancel=cancel):
            if event.kind == "done":
                stats = event.stats or {}
                continue
            if event.kind != current:
                pieces.append(CLOSE_TAG if current == "thinking" else OPEN_TAG)
                current = event.kind
            pieces.append(event.text)
        if stats.get("stop_reason") == "error":
            raise AhaError(f"{self.name}: {stats.get('error', 'generation failed')}")
        if current == "thinking" and stats.get("thinking_unfinished") is False:
            pieces.append(CLOSE_TAG)  # the thought closed and nothing followed
        raw = "".join(pieces)
        thinking, answer = split_thinking(raw, prefilled)
        finish = {"eos": "stop", "cancelled": "cancelled"}.get(stats.get("stop_reason"), "length")
        timing = {"seconds": round(time.monotonic() - started, 6),
                  **{key: stats.get(key) for key in ("prompt_s", "thinking_s", "answer_s", "tokens_per_s")}}
        usage = {"prompt_tokens": stats.get("prompt_tokens"),
                 "completion_tokens": (stats.get("thinking_tokens") or 0) + (stats.get("answer_tokens") or 0)}
        return TeacherSample(thinking.strip(), answer.strip(), raw, prefilled, finish, settings, timing, usage)

    def close(self) -> None:
        self.model.close()


# Hugging Face checkpoint --------------------------------------------------------------------------

class HFTeacher:
    """A Hugging Face causal LM through transformers: the k samples of a prompt in one batch."""

    kind = "hf"

    def __init__(self, folder: str | Path, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.folder = Path(folder).expanduser()
        self.name = self.folder.name
        if not (self.folder / "config.json").is_file():
            raise AhaError(f"{self.folder} is not a Hugging Face checkpoint folder (no config.json); "
                           "give the folder holding config.json, the weights and the tokenizer")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_cuda = self.device.startswith("cuda")
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        if not getattr(self.tokenizer, "chat_template", None):
            raise AhaError(f"{self.name}'s tokenizer has no chat template; a teacher needs one to be prompted "
                           "as at inference")
        if not on_cuda:
            torch.set_flush_denormal(True)  # tiny models' denormals slow CPU math over ten times
        # Eager attention on CPU: sdpa had erratic 60× slow calls there at small sizes (2 threads).
        self.model = AutoModelForCausalLM.from_pretrained(
            self.folder, dtype=torch.bfloat16 if on_cuda else torch.float32,
            attn_implementation="sdpa" if on_cuda else "eager").to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = sorted({*eos, *([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])})

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "path": str(self.folder)}

    def generate(self, prompts: Sequence[str], k: int, sampling: Sampling,
                 cancel=None) -> Iterator[tuple[int, list[TeacherSample]]]:
        from engine.chat.runtime import ends_inside_thinking

        for index, prompt in enumerate(prompts):
            if is_cancelled(cancel):
                return
            rendered = self.tokenizer.apply_chat_template(_user_turn(prompt), tokenize=False, add_generation_prompt=True)
            yield index, self._batch(rendered, ends_inside_thinking(rendered), k, sampling)

    def _batch(self, rendered: str, prefilled: bool, k: int, sampling: Sampling) -> list[TeacherSample]:
        import torch

        prompt_ids = self.tokenizer(rendered, add_special_tokens=False, return_tensors="pt").input_ids  # (1, P)
        bos = self.tokenizer.bos_token_id
        if bos is not None and not rendered.startswith(self.tokenizer.bos_token or "\0") and \
                getattr(self.tokenizer, "add_bos_token", False):
            prompt_ids = torch.cat([torch.tensor([[bos]]), prompt_ids], dim=1)
        input_ids = prompt_ids.repeat(k, 1).to(self.device)              # (k, P)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        greedy = sampling.temperature <= 0
        options = {"do_sample": False} if greedy else {"do_sample": True, "temperature": sampling.temperature,
                                                       "top_p": sampling.top_p, "top_k": 0}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        started = time.monotonic()
        with torch.no_grad():
            output = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                         max_new_tokens=sampling.max_tokens, eos_token_id=self.eos_ids,
                                         pad_token_id=pad, **options)   # (k, P + T)
        seconds = time.monotonic() - started
        samples = []
        for sample_index, row in enumerate(output[:, input_ids.shape[1]:].tolist()):
            ends = [position for position, token in enumerate(row) if token in self.eos_ids]
            ids = row[: ends[0]] if ends else row
            raw = self.tokenizer.decode(ids, skip_special_tokens=False)
            thinking, answer = split_thinking(raw, prefilled)
            samples.append(TeacherSample(
                thinking.strip(), answer.strip(), raw, prefilled, "stop" if ends else "length",
                sampling.for_sample(sample_index), {"seconds": round(seconds, 6), "batch": k},
                {"prompt_tokens": prompt_ids.shape[1], "completion_tokens": len(ids)}))
        return samples

    def close(self) -> None:
        self.model = None


# OpenAI-compatible endpoint -----------------------------------------------------------------------

RETRIES = 2                                # extra tries after a 5xx, a timeout or a dropped connection
RETRY_BACKOFF_S = 0.5                      # wait before try n+1: RETRY_BACKOFF_S · 2ⁿ


class _Retry(Exception):
    """A failure worth another try; the message is the last one's."""


class OpenAITeacher:
    """Any OpenAI-compatible `/chat/completions` endpoint, `concurrency` requests in flight.

    The base URL is the one OpenAI clients take (`http://host:port/v1`); a bare `http://host:port`
    gets `/v1` added. The API key, if any, comes from the environment variable the user names, and is
    sent as a Bearer token; it is never recorded."""

    kind = "openai"

    def __init__(self, base_url: str, model: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 4, timeout_s: float = 600.0):
        self.base_url = _normalize_base_url(base_url)
        self.concurrency = max(1, int(concurrency))
        self.timeout_s = timeout_s
        self.api_key_env = api_key_env
        self._api_key = None
        if api_key_env:
            self._api_key = os.environ.get(api_key_env, "").strip()
            if not self._api_key:
                raise AhaError(f"the environment variable {api_key_env} holds no API key; set it "
                               f"(export {api_key_env}=…) or leave out --api-key-env")
        self.requests = 0                  # chat requests sent (tests count them)
        self._lock = threading.Lock()
        self.name = model or self._only_model()

    # -- HTTP ----------------------------------------------------------------------------------------
    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = f"{self.base_url}{path}"
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=self._headers())
        last = ""
        for attempt in range(RETRIES + 1):
            try:
                return self._send(request, url)
            except _Retry as retry:
                last = str(retry)
                if attempt < RETRIES:
                    time.sleep(RETRY_BACKOFF_S * 2 ** attempt)
        raise AhaError(f"the teacher at {url} failed {RETRIES + 1} times: {last}; check the server's log")

    def _send(self, request: urllib.request.Request, url: str) -> dict:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            message = _error_message(error)
            if error.code >= 500:
                raise _Retry(f"HTTP {error.code} {message}") from error
            advice = {401: f"check the API key{f' in {self.api_key_env}' if self.api_key_env else ' (--api-key-env)'}",
                      403: "check the API key's permissions",
                      404: "check the base URL (it usually ends in /v1) and the model name (--model)"}
            raise AhaError(f"the teacher at {url} refused the request (HTTP {error.code}: {message}); "
                           f"{advice.get(error.code, 'check the request settings')}") from error
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, TimeoutError):
                raise _Retry(f"no reply within {self.timeout_s:g} s") from error
            raise AhaError(f"cannot reach the teacher at {url} ({reason}); start the server or check the URL") from error
        except TimeoutError as error:
            raise _Retry(f"no reply within {self.timeout_s:g} s") from error
        except (ConnectionError, HTTPException) as error:
            raise _Retry(f"the connection broke ({type(error).__name__}: {error})") from error
        try:
            return json.loads(payload)
        except ValueError as error:
            raise AhaError(f"the teacher at {url} did not answer with JSON ({payload[:80]!r}); "
                           "is it an OpenAI-compatible endpoint?") from error

    def _only_model(self) -> str:
        """The served model's name when the server serves exactly one (GET /models)."""
        listing = self._request("GET", "/models")
        names = [entry.get("id") for entry in listing.get("data") or [] if isinstance(entry, dict) and entry.get("id")]
        if len(names) == 1:
            return names[0]
        served = ", ".join(names[:10]) or "none listed"
        raise AhaError(f"the teacher at {self.base_url} serves {len(names)} models ({served}); "
                       "name one with --model")

    # -- generation ----------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "url": self.base_url}

    def complete(self, prompt: str, settings: dict) -> TeacherSample:
        """One request, one sample."""
        body = {"model": self.name, "messages": _user_turn(prompt), "temperature": settings["temperature"],
                "top_p": settings["top_p"], "max_tokens": settings["max_tokens"], "stream": False}
        if settings.get("seed") is not None:
            body["seed"] = settings["seed"]
        with self._lock:
            self.requests += 1
        started = time.monotonic()
        response = self._request("POST", "/chat/completions", body)
        seconds = time.monotonic() - started
        try:
            choice = response["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise AhaError(f"the teacher at {self.base_url}/chat/completions returned no choices "
                           f"({json.dumps(response)[:120]}); is it an OpenAI-compatible endpoint?") from error
        reasoning = next((message[name] for name in REASONING_FIELDS if isinstance(message.get(name), str)
                          and message[name].strip()), "")
        thinking, answer, raw, prefilled = split_reply(message.get("content") or "", reasoning)
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        usage = {key: value for key, value in (response.get("usage") or {}).items()
                 if key in ("prompt_tokens", "completion_tokens")}
        return TeacherSample(thinking, answer, raw, prefilled, finish, settings, {"seconds": round(seconds, 6)}, usage)

    def generate(self, prompts: Sequence[str], k: int, sampling: Sampling,
                 cancel=None) -> Iterator[tuple[int, list[TeacherSample]]]:
        jobs = ((index, sample_index) for index in range(len(prompts)) for sample_index in range(k))
        results: dict[int, list[TeacherSample | None]] = {}
        pending: dict[Future, tuple[int, int]] = {}
        executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher")
        try:
            while True:
                # Keep the pool busy (and no more: requests are submitted as slots free up).
                while len(pending) < 2 * self.concurrency and not is_cancelled(cancel):
                    job = next(jobs, None)
                    if job is None:
                        break
                    index, sample_index = job
                    results.setdefault(index, [None] * k)
                    future = executor.submit(self.complete, prompts[index], sampling.for_sample(sample_index))
                    pending[future] = job
                if not pending:
                    return
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    index, sample_index = pending.pop(future)
                    results[index][sample_index] = future.result()  # an AhaError ends the run
                    if all(sample is not None for sample in results[index]):
                        yield index, results.pop(index)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        pass


def _normalize_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise AhaError(f"teacher URL {url!r} is not an http(s) URL; give e.g. http://localhost:8000/v1")
    if parsed.path in ("", "/"):
        url += "/v1"
    return url


def _error_message(error: urllib.error.HTTPError) -> str:
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

