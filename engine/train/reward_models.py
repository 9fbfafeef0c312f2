"""Model-based rewards for GRPO: a sequence-classification reward model and a generative judge.

Both score the prompt and the completion's ANSWER only: the thinking is cut off first (see
`answer_of`), as DeepSeek-R1 scored only the summary for helpfulness. Both have TRL's reward shape
`fn(prompts, completions, **columns) -> list[float | None]`; None means "could not score this sample"
(an unanswered judge call, a reply without a rating), never a silent 0.

- `make_reward_model_reward`: a Hugging Face `AutoModelForSequenceClassification` with one output
  (the Skywork-Reward and ArmoRM families), loaded on the first call; score = logits[:, 0] (ArmoRM's
  `.score` output when it has one).
- `make_judge_reward`: any OpenAI-compatible `/chat/completions` endpoint as a judge (R1 used
  DeepSeek-V3), prompted with MT-Bench's single-answer grading template; a 1–10 rating n is
  returned as (n − 1) / 9 ∈ [0, 1].
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.errors import AhaError
from engine.openai_api import NoReply, OpenAIClient
from engine.think import split_thinking

RewardFn = Callable[..., list[float | None]]


# Shared ---------------------------------------------------------------------------------------------

def answer_of(completion: str, prefilled: bool = False) -> str:
    """The completion's answer, thinking excluded (engine.think.split_thinking), outer whitespace stripped.
    `prefilled`: the prompt opened the thought, so the completion starts inside it."""
    return split_thinking(completion, bool(prefilled))[1].strip()


def _answers(completions: Sequence[str], prefilled: Any) -> list[str]:
    """Each completion's answer; `prefilled` is one flag per sample or one for all."""
    if isinstance(prefilled, list | tuple):
        if len(prefilled) != len(completions):
            raise ValueError(f"column 'prefilled' has {len(prefilled)} values for {len(completions)} completions")
        flags = list(prefilled)
    else:
        flags = [prefilled] * len(completions)
    return [answer_of(completion, bool(flag)) for completion, flag in zip(completions, flags, strict=True)]


# Reward model ---------------------------------------------------------------------------------------

def render_pair(tokenizer, prompt: str, answer: str) -> tuple[str, bool]:
    """(text, templated): the user/assistant pair through the tokenizer's chat template when it has one
    (the template writes its own special tokens, so the text is tokenized without adding more), else
    `prompt + "\\n\\n" + answer`."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return tokenizer.apply_chat_template(messages, tokenize=False), True
    return f"{prompt}\n\n{answer}", False


def make_reward_model_reward(model: str, *, device: str | None = None, load_in_4bit: bool = False,
                             batch_size: int = 8) -> RewardFn:
    """A reward from a sequence-classification reward model in the folder `model`, loaded on the first
    call (eval mode, no grad). Each (prompt, answer) pair is rendered by `render_pair`, batched
    `batch_size` at a time with right padding and an attention mask, and scored r = logits[:, 0] (or the
    model's `.score` output, as ArmoRM's); padding changes no score. `device` unset: cuda when available,
    else cpu. `load_in_4bit`: bitsandbytes NF4 weights. A folder whose config.json names custom code
    (`auto_map`, as ArmoRM's) is loaded with trust_remote_code: that code runs."""
    if batch_size < 1:
        raise ValueError(f"reward model batch_size must be at least 1, got {batch_size}")
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def reward_model(prompts: list[str], completions: list[str], prefilled: Any = False,
                     **columns: Any) -> list[float | None]:
        with lock:
            if not state:
                state.update(_load_reward_model(model, device, load_in_4bit))
        answers = _answers(completions, prefilled)
        scores: list[float | None] = []
        for start in range(0, len(completions), batch_size):
            scores.extend(_score_batch(state, prompts[start:start + batch_size], answers[start:start + batch_size]))
        return scores

    reward_model.__name__ = f"reward_model:{Path(model).name}"
    return reward_model


def _load_reward_model(model: str, device: str | None, load_in_4bit: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification

    from engine.train.core import check_model_folder, load_tokenizer, resolve_device
    from engine.train.sampling import pad_token_id

    folder = check_model_folder(model)
    target = resolve_device(device or "auto")
    on_cuda = target.type == "cuda"
    try:
        custom = "auto_map" in json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except ValueError as error:
        raise AhaError(f"the config.json in {folder} is not valid JSON ({error}); re-download the reward model") from error
    tokenizer = load_tokenizer(folder)
    options: dict[str, Any] = {"dtype": torch.bfloat16 if on_cuda else torch.float32, "trust_remote_code": custom}
    if load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401 - only to fail early with one line
            from transformers import BitsAndBytesConfig
        except ImportError as error:
            raise AhaError("load_in_4bit needs bitsandbytes: pip install bitsandbytes, or set load_in_4bit = false") from error
        options.update(quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=options["dtype"]),
            device_map={"": str(target)})
    try:
        network = AutoModelForSequenceClassification.from_pretrained(folder, **options)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise AhaError(f"cannot load the reward model in {folder}: {reason}; re-download it, or give a "
                       "sequence-classification reward model folder") from error
    if not load_in_4bit:
        network = network.to(target)
    network.eval()
    pad = pad_token_id(tokenizer)
    if pad is None:
        raise AhaError(f"the tokenizer in {folder} has neither a pad nor an eos token; set pad_token in its "
                       "tokenizer_config.json")
    if network.config.pad_token_id is None:
        network.config.pad_token_id = pad  # the model finds each row's last token by it
    return {"tokenizer": tokenizer, "model": network, "pad": pad, "device": target}


def _score_batch(state: dict[str, Any], prompts: Sequence[str], answers: Sequence[str]) -> list[float | None]:
    """One forward pass over right-padded rows; r = `.score` when the output has it, else logits[:, 0]."""
    import torch

    tokenizer = state["tokenizer"]
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        text, templated = render_pair(tokenizer, prompt, answer)
        rows.append(tokenizer(text, add_special_tokens=not templated)["input_ids"])
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [state["pad"]] * (width - len(row)) for row in rows], device=state["device"])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=state["device"])
    with torch.no_grad():
        output = state["model"](input_ids=ids, attention_mask=mask)
    score = getattr(output, "score", None)
    values = score if isinstance(score, torch.Tensor) else output.logits
    values = values.reshape(len(rows), -1)[:, 0].float().cpu()
    return [float(value) for value in values]


# Judge ----------------------------------------------------------------------------------------------

# MT-Bench's single-answer grading prompt ("single-v1", Zheng et al. 2023, arXiv 2306.05685), verbatim.
JUDGE_SYSTEM = "You are a helpful assistant."
JUDGE_TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
    "you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for "
    "example: \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]")
JUDGE_BACKOFF_S = 0.25                     # wait before retry n+1: JUDGE_BACKOFF_S · 2ⁿ
_BRACKETED = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_PLAIN = re.compile(r"Rating:\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_rating(reply: str) -> float | None:
    """The judge's rating n: the number in the last `[[n]]`, else in the last `Rating: n`; None when
    there is none or it lies outside 1…10."""
    found = _BRACKETED.findall(reply) or _PLAIN.findall(reply)
    if not found:
        return None
    rating = float(found[-1])
    return rating if 1 <= rating <= 10 else None


def rating_score(rating: float) -> float:
    """A 1–10 rating as a reward in [0, 1]: r = (n − 1) / 9."""
    return (rating - 1) / 9


def fill_template(template: str, question: str, answer: str) -> str:
    """The template with {question} and {answer} replaced (plain replacement: other braces stay)."""
    return template.replace("{question}", question).replace("{answer}", answer)


def load_judge_template(path: str | Path | None) -> str:
    """MT-Bench's template, or the one in the file at `path` (it must hold {question} and {answer})."""
    if path is None:
        return JUDGE_TEMPLATE
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AhaError(f"cannot read the judge template {file} ({type(error).__name__}); give a UTF-8 text file "
                       "with {question} and {answer}") from error
    missing = [name for name in ("{question}", "{answer}") if name not in text]
    if missing:
        raise AhaError(f"the judge template {file} lacks {' and '.join(missing)}; put the placeholders where the "
                       "question and the answer go")
    return text


class _Judge:
    """The judge's HTTP side (engine.openai_api's client and retry policy) and its model, found once."""

    def __init__(self, base_url: str, model: str | None, api_key_env: str | None, timeout_s: float, retries: int):
        self.client = OpenAIClient(base_url, api_key_env=api_key_env, timeout_s=timeout_s, retries=retries,
                                   backoff_s=JUDGE_BACKOFF_S, role="judge", key_setting="judge_api_key_env",
                                   model_setting="judge_model")
        self.base_url = self.client.base_url
        self.model = model
        self._lock = threading.Lock()

    def model_name(self) -> str:
        """The model named, else the only one the server serves (GET /models), found once."""
        with self._lock:
            if self.model is None:
                self.model = self.client.only_model()
            return self.model

    def reply(self, prompt: str) -> str:
        body = {"model": self.model_name(), "temperature": 0, "stream": False,
                "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]}
        response = self.client.chat(body)
        try:
            content = response["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return ""
        return content if isinstance(content, str) else ""


def make_judge_reward(base_url: str, *, model: str | None = None, template: str | None = None,
                      api_key_env: str | None = None, concurrency: int = 4, timeout_s: float = 60.0,
                      retries: int = 2) -> RewardFn:
    """A reward from a generative judge at an OpenAI-compatible endpoint (`base_url` as OpenAI clients
    take it; a bare host:port gets /v1). Each (question, answer) fills `template` (a file with
    {question} and {answer}; MT-Bench's single-v1 by default), is sent at temperature 0 with
    `concurrency` requests in flight, each given `timeout_s` and `retries` more tries (backoff
    JUDGE_BACKOFF_S · 2ⁿ) after a timeout, a broken connection, a 5xx or a 429 (engine.openai_api's
    policy). The reply's rating n (`parse_rating`) gives r = (n − 1) / 9; an unanswered call (every try
    failed, an unreachable server, a reply that is not JSON) or a reply without a rating gives None. A
    refusal (401, 404, …) is the configuration's fault: it raises AhaError. `model` unset: the only model
    the server serves."""
    text = load_judge_template(template)
    judge = _Judge(base_url, model, api_key_env, timeout_s, retries)
    workers = max(1, int(concurrency))

    def score(question: str, answer: str) -> float | None:
        try:
            rating = parse_rating(judge.reply(fill_template(text, question, answer)))
        except NoReply:  # unreachable, not JSON, or every try failed: this sample stays unscored
            return None
        return None if rating is None else rating_score(rating)

    def judge_reward(prompts: list[str], completions: list[str], prefilled: Any = False,
                     **columns: Any) -> list[float | None]:
        answers = _answers(completions, prefilled)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool:
            return list(pool.map(score, prompts, answers))

    judge_reward.__name__ = f"judge:{judge.base_url}"
    return judge_reward
