"""Teachers for distillation: k sampled replies per prompt, each split into thinking and answer.

Three kinds: a local GGUF through engine.chat.runtime, a Hugging Face checkpoint (+ a PEFT adapter) through
engine.train.sampling's KV-cache sampler, several prompts per batch, and any OpenAI-compatible chat endpoint
(Ollama, llama.cpp's server, vLLM, LM Studio) through engine.openai_api's client with a thread pool. A teacher
only generates; verification, keep rules and files are engine.distill.generate's (and engine.eval.runner's,
which evaluates models through the same interface).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from engine import r1
from engine.errors import AhaError
from engine.openai_api import OpenAIClient
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
    usage: dict = field(default_factory=dict)    # prompt_tokens, completion_tokens, thinking_tokens when known


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
    """`gguf:PATH` | `hf:FOLDER[+ADAPTER]` | `hf:RUN_DIR` | `openai:BASE_URL` → (kind, target); resolve_hf_target
    resolves an hf target."""
    kind, _, target = spec.partition(":")
    if kind not in TEACHER_KINDS or not target:
        raise AhaError(f"unknown teacher {spec!r}: give gguf:PATH, hf:FOLDER[+ADAPTER], hf:RUN_DIR or openai:BASE_URL "
                       "(e.g. openai:http://localhost:11434/v1 for Ollama)")
    return kind, target


def split_adapter(target: str) -> tuple[str, str | None]:
    """`FOLDER+ADAPTER` → (FOLDER, ADAPTER); a target without `+`, or a folder whose own name has one, → (target, None).

    Example:
    >>> split_adapter("runs/sft/final/model+runs/grpo/final/adapter")
    ('runs/sft/final/model', 'runs/grpo/final/adapter')
    """
    if "+" not in target or (Path(target).expanduser() / "config.json").is_file():
        return target, None
    folder, adapter = target.rsplit("+", 1)
    return (folder, adapter) if folder and adapter else (target, None)


def prompt_seed(seed: int, prompt: str) -> int:
    """The generator seed of one prompt's samples: seed + CRC-32 of its UTF-8 text (stable across runs,
    processes and resumes, unlike hash())."""
    return int(seed) + zlib.crc32(prompt.encode("utf-8"))


def resolve_hf_target(target: str) -> tuple[str, str | None, str | None]:
    """(model folder, adapter or None, a note to log or None) of an hf: target: `FOLDER[+ADAPTER]`, or a run
    of `aha grpo` / `aha sft` / `aha distill sft` given by its directory or its store id: the run's
    final/adapter on the base it trained (its saved `model` setting), or its final/model; a run with no final
    output yet, its newest checkpoint (and a note saying so); a run with neither, a one-line AhaError."""
    from engine.train.runs import CHECKPOINTS, saved_config

    directory = Path(target).expanduser()
    if target.isdigit() and not directory.exists():
        from engine.run_index import find_run
        from engine.store import Store

        with Store() as store:
            run = find_run(store, target)
        if not run["dir"]:
            raise AhaError(f"run {target} has no run directory; give hf:FOLDER of a model instead")
        directory = Path(run["dir"])
    if not (directory / "run.json").is_file():
        return (*split_adapter(target), None)
    base = str(saved_config(directory).get("model") or "")
    final = directory / "final"
    if (final / "adapter" / "adapter_config.json").is_file():
        return base, str(final / "adapter"), None
    if (final / "model" / "config.json").is_file():
        return str(final / "model"), None, None
    steps = sorted((path for path in (directory / CHECKPOINTS).glob("step-*") if path.name[5:].isdigit()),
                   key=lambda path: int(path.name[5:])) if (directory / CHECKPOINTS).is_dir() else []
    for step in reversed(steps):
        note = (f"{directory.name} has no final output yet (still running or stopped early): using its "
                f"newest checkpoint {step.name}")
        if (step / "adapter" / "adapter_config.json").is_file():
            return base, str(step / "adapter"), note
        if (step / "model" / "config.json").is_file():
            return str(step / "model"), None, note
    raise AhaError(f"the run in {directory} has no final adapter or model and no checkpoint yet; wait for its "
                   "first checkpoint (save_steps) or resume it with `aha runs resume`, then try again")


def make_teacher(spec: str, *, model: str | None = None, api_key_env: str | None = None, concurrency: int = 4,
                 n_ctx: int = 4096, timeout_s: float = 600.0, on_event=None) -> Teacher:
    """A teacher from a `--teacher` spec (see parse_teacher; an hf: run directory, see resolve_hf_target,
    whose note goes to `on_event` as a log event)."""
    kind, target = parse_teacher(spec)
    if kind == "gguf":
        return GGUFTeacher(target, n_ctx=n_ctx)
    if kind == "hf":
        folder, adapter, note = resolve_hf_target(target)
        if note is not None and on_event is not None:
            from engine.jobs import make_event

            on_event(make_event("log", level="warning", message=note))
        return HFTeacher(folder, adapter=adapter)
    return OpenAITeacher(target, model=model, api_key_env=api_key_env, concurrency=concurrency, timeout_s=timeout_s)


def thinking_token_count(completion_ids: Sequence[int], close_id: int | None, prefilled: bool,
                         open_id: int | None = None) -> int:
    """Tokens of the thought, `</think>` included: up to the first `close_id`; all of them when the thought
    never closed (the prompt opened it, or the completion did); 0 for a reply with no thought at all."""
    ids = list(completion_ids)
    if close_id is not None and close_id in ids:
        return ids.index(close_id) + 1
    return len(ids) if prefilled or (open_id is not None and open_id in ids) else 0


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
                 "completion_tokens": (stats.get("thinking_tokens") or 0) + (stats.get("answer_tokens") or 0),
                 "thinking_tokens": stats.get("thinking_tokens") or 0}
        return TeacherSample(thinking.strip(), answer.strip(), raw, prefilled, finish, settings, timing, usage)

    def close(self) -> None:
        self.model.close()


# Hugging Face checkpoint --------------------------------------------------------------------------

class HFTeacher:
    """A Hugging Face causal LM (+ a PEFT adapter, merged) through engine.train.sampling.sample: several
    prompts' k samples in one KV-cache batch of at most `batch_rows` rows, prompts rendered and tokenized as
    training renders them (engine.train.sampling.encode_prompts, the tokenizer of engine.train.core).

    Randomness: with a seed, each prompt's k rows are sampled in a sample() call of their own with a torch
    generator seeded `prompt_seed(sampling.seed, prompt)` (the seed + a stable hash of the prompt text), so a
    prompt gets the same samples whatever else was in the run: a run interrupted and resumed writes what one
    run would have (the price: prompts are not batched together when a seed is set). Without a seed, several
    prompts share one batch and torch's global generator (the seed recorded per sample is Sampling.for_sample's,
    as for the other teachers)."""

    kind = "hf"

    def __init__(self, folder: str | Path, adapter: str | Path | None = None, device: str | None = None,
                 batch_rows: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from engine.train.core import check_model_folder, load_tokenizer, resolve_device
        from engine.train.sampling import eos_token_ids, pad_token_id

        self.folder = Path(folder).expanduser()
        self.adapter = Path(adapter).expanduser() if adapter is not None else None
        self.name = self.folder.name + (f"+{self.adapter.name}" if self.adapter is not None else "")
        if not (self.folder / "config.json").is_file():
            raise AhaError(f"{self.folder} is not a Hugging Face checkpoint folder (no config.json); "
                           "give the folder holding config.json, the weights and the tokenizer")
        check_model_folder(self.folder)
        if self.adapter is not None and not (self.adapter / "adapter_config.json").is_file():
            raise AhaError(f"{self.adapter} is not a PEFT adapter folder (no adapter_config.json); give hf:MODEL+ADAPTER "
                           "with the adapter a run saved (final/adapter)")
        self.device = str(resolve_device(device or "auto"))  # (cuda without CUDA: one line)
        on_cuda = self.device.startswith("cuda")
        self.batch_rows = batch_rows or (256 if on_cuda else 64)
        self.tokenizer = load_tokenizer(self.folder)
        if not getattr(self.tokenizer, "chat_template", None):
            raise AhaError(f"{self.name}'s tokenizer has no chat template; a teacher needs one to be prompted "
                           "as at inference")
        if not on_cuda:
            torch.set_flush_denormal(True)  # tiny models' denormals slow CPU math over ten times
        # Eager attention on CPU: sdpa had erratic 60× slow calls there at small sizes (2 threads).
        try:
            model = AutoModelForCausalLM.from_pretrained(
                self.folder, dtype=torch.bfloat16 if on_cuda else torch.float32,
                attn_implementation="sdpa" if on_cuda else "eager")
        except (OSError, ValueError) as error:
            raise AhaError(f"cannot load the model in {self.folder}: {str(error).splitlines()[0]}") from error
        if self.adapter is not None:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, self.adapter).merge_and_unload()  # one matmul per layer
            except (OSError, ValueError, RuntimeError, KeyError) as error:
                raise AhaError(f"cannot apply the adapter {self.adapter} to {self.folder}: "
                               f"{str(error).splitlines()[0]}; give the base model the adapter was trained on") from error
        self.model = model.to(self.device).eval()
        vocabulary = self.tokenizer.get_vocab()
        # The R1 turn markers end a reply too, as in the chat runtime (engine.chat.runtime stops on r1.STOPS).
        stops = {vocabulary[text] for text in r1.STOPS if text in vocabulary}
        self.eos_ids = sorted({*eos_token_ids(self.tokenizer, self.model), *stops})
        self.pad_id = pad_token_id(self.tokenizer)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.open_id, self.close_id = vocabulary.get(OPEN_TAG), vocabulary.get(CLOSE_TAG)

    def describe(self) -> dict:
        info = {"kind": self.kind, "name": self.name, "path": str(self.folder)}
        return {**info, "adapter": str(self.adapter)} if self.adapter is not None else info

    def _encode(self, prompts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids and prefilled flags of each prompt, as training encodes them, with the BOS the
        tokenizer asks for when the template did not write it (llama.cpp adds it the same way)."""
        from engine.train.sampling import encode_prompts

        ids, rendered, prefilled = encode_prompts(self.tokenizer, list(prompts))
        bos, bos_text = self.tokenizer.bos_token_id, self.tokenizer.bos_token
        if bos is not None and getattr(self.tokenizer, "add_bos_token", False):
            ids = [row if text.startswith(bos_text or "\0") else [bos, *row] for row, text in zip(ids, rendered, strict=True)]
        return ids, prefilled

    def generate(self, prompts: Sequence[str], k: int, sampling: Sampling,
                 cancel=None) -> Iterator[tuple[int, list[TeacherSample]]]:
        import torch

        per_batch = max(1, self.batch_rows // k) if sampling.seed is None else 1
        for start in range(0, len(prompts), per_batch):
            if is_cancelled(cancel):
                return
            ids, prefilled = self._encode(prompts[start:start + per_batch])
            generator = None
            if sampling.seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(prompt_seed(sampling.seed, prompts[start]))
            batch = self._batch(ids, prefilled, k, sampling, generator, cancel)
            if batch is None:
                return
            for offset, samples in enumerate(batch):
                yield start + offset, samples

    def _batch(self, ids: list[list[int]], prefilled: list[bool], k: int, sampling: Sampling, generator,
               cancel) -> list[list[TeacherSample]] | None:
        """k samples of each prompt in one sample() call: rows p·k … p·k + k − 1 are prompt p's. None when cancelled."""
        from engine.train.sampling import sample

        budget = sampling.max_tokens
        if self.max_positions:
            budget = min(budget, self.max_positions - max(len(row) for row in ids))
            if budget < 1:
                raise AhaError(f"a prompt of {max(len(row) for row in ids)} tokens leaves no room to answer in "
                               f"{self.name}'s {self.max_positions} positions; shorten the prompts")
        rows = [row for row in ids for _ in range(k)]
        rollout = sample(self.model, rows, max_new_tokens=budget, eos_ids=self.eos_ids, pad_id=self.pad_id,
                         temperature=sampling.temperature, top_p=sampling.top_p, generator=generator, cancel=cancel)
        if rollout.cancelled:
            return None
        stop = set(self.eos_ids)
        lengths, terminated = rollout.lengths.tolist(), rollout.terminated.tolist()
        timing = {"seconds": round(rollout.seconds, 6), "batch": len(rows)}
        found: list[list[TeacherSample]] = []
        for prompt_index, prompt_ids in enumerate(ids):
            samples = []
            for sample_index in range(k):
                row = prompt_index * k + sample_index
                kept = [token for token in rollout.completion_ids[row, :lengths[row]].tolist() if token not in stop]
                raw = self.tokenizer.decode(kept, skip_special_tokens=False)
                thinking, answer = split_thinking(raw, prefilled[prompt_index])
                usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(kept),
                         "thinking_tokens": thinking_token_count(kept, self.close_id, prefilled[prompt_index],
                                                                 self.open_id)}
                samples.append(TeacherSample(thinking.strip(), answer.strip(), raw, prefilled[prompt_index],
                                             "stop" if terminated[row] else "length",
                                             sampling.for_sample(sample_index), timing, usage))
            found.append(samples)
        return found

    def close(self) -> None:
        self.model = None


# OpenAI-compatible endpoint -----------------------------------------------------------------------

RETRIES = 2                                # extra tries after a 5xx, a 429, a timeout or a dropped connection
RETRY_BACKOFF_S = 0.5                      # wait before try n+1: RETRY_BACKOFF_S · 2ⁿ


class OpenAITeacher:
    """Any OpenAI-compatible `/chat/completions` endpoint, `concurrency` requests in flight.

    The base URL is the one OpenAI clients take (`http://host:port/v1`); a bare `http://host:port`
    gets `/v1` added. The API key, if any, comes from the environment variable the user names, and is
    sent as a Bearer token; it is never recorded. HTTP and retries are engine.openai_api's; any failure
    that survives them is the client's one-line AhaError, and it ends the run."""

    kind = "openai"

    def __init__(self, base_url: str, model: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 4, timeout_s: float = 600.0):
        self.client = OpenAIClient(base_url, api_key_env=api_key_env, timeout_s=timeout_s, retries=RETRIES,
                                   backoff_s=RETRY_BACKOFF_S, role="teacher", key_setting="--api-key-env",
                                   model_setting="--model")
        self.base_url = self.client.base_url
        self.concurrency = max(1, int(concurrency))
        self.timeout_s = timeout_s
        self.api_key_env = api_key_env
        self.requests = 0                  # chat requests sent (tests count them)
        self._lock = threading.Lock()
        self.name = model or self.client.only_model()

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
        response = self.client.chat(body)
        seconds = time.monotonic() - started
        try:
            choice = response["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise AhaError(f"the teacher at {self.base_url}/chat/completions returned no choices "
                           f"({json.dumps(response)[:120]}); is it an OpenAI-compatible endpoint?") from error
        reasoning = next((message[name] for name in REASONING_FIELDS if isinstance(message.get(name), str)
                          and message[name].strip()), "")
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        content = message.get("content") or ""
        if reasoning and finish == "length" and not content.strip():
            # The budget ran out inside the thought: the server's reasoning field holds all of it, and the
            # reply as written never closed it (so a verifier sees no answer, as in the inline case).
            thinking, answer, raw, prefilled = reasoning.strip(), "", f"{OPEN_TAG}\n{reasoning.strip()}", False
        else:
            thinking, answer, raw, prefilled = split_reply(content, reasoning)
        usage = {key: value for key, value in (response.get("usage") or {}).items()
                 if key in ("prompt_tokens", "completion_tokens")}
        details = (response.get("usage") or {}).get("completion_tokens_details") or {}
        if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
            usage["thinking_tokens"] = details["reasoning_tokens"]  # OpenAI's and vLLM's count of the thought
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
