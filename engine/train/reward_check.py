"""The reward check behind `aha rewards check`: before GPU time is spent, score a few completions (sampled
from the model for a few of the dataset's prompts, or typed by the user) with the run's rewards, and say
which rewards never fire or never change — the check that catches "the regex lacked DOTALL, reward always 0"
(unsloth #1761).

Scoring is engine.train.rewards' RewardSet, the think/answer split engine.think's, sampling
engine.train.sampling's: nothing here scores, renders or samples on its own. `verdicts` is pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import AhaError
from engine.jobs import CancelToken, OnEvent, ignore, make_event

STAGES = ["load", "sample", "score"]


@dataclass(frozen=True)
class CheckSettings:
    """What `aha rewards check` samples and scores (tiny by default: a check, not a run)."""

    rewards: tuple[str, ...] = ("accuracy", "format")
    reward_weights: tuple[float, ...] | None = None
    model: str | None = None           # needed to sample; optional when completions are given
    dataset: str | None = None         # prompts (and answers) to sample for, or to pair typed completions with
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    system_prompt: str | None = None
    prompts: int = 2                   # dataset rows sampled for
    samples: int = 2                   # completions per prompt
    max_completion_length: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    device: str = "auto"
    prefilled: bool | None = None      # typed completions without a model: did the prompt open <think>?

    def validate(self) -> None:
        for name in ("prompts", "samples", "max_completion_length"):
            if getattr(self, name) < 1:
                raise AhaError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.temperature >= 0:
            raise AhaError(f"temperature must be 0 (greedy) or more, got {self.temperature}")


def check_rewards(settings: CheckSettings, completions: Sequence[dict] | None = None, *, on_event: OnEvent = ignore,
                  cancel: CancelToken | None = None) -> dict[str, Any]:
    """Score `completions` (dicts with "completion" and optionally "prompt" and "answer"; a completion without
    a prompt takes the dataset's first row) or, when None, `samples` completions sampled from the model for
    each of the dataset's first `prompts` rows. Returns the report: {"rewards", "weights", "completions": [{
    "prompt", "answer", "text", "thinking", "answer_text", "rewards": {name: score | None}, "total", "length"}],
    "verdicts": {name: {"state", "message"}}, "errors": {name: message}, "warnings": [one line per problem]}."""
    from engine.train.rewards import RewardSet

    settings.validate()
    reward_set = RewardSet(list(settings.rewards), settings.reward_weights)  # loads files; bad specs are one line
    rows = _dataset_rows(settings)
    tokenizer = None
    if completions is None:
        if not settings.model:
            raise AhaError("the reward check samples from a model: give --model HF_FOLDER, or type completions "
                           "with --completion TEXT (or --completions FILE.jsonl)")
        if not rows:
            raise AhaError("the reward check samples for the dataset's prompts: give --dataset (a built-in task "
                           "such as addition, or a file)")
        items, tokenizer = _sampled(settings, rows, on_event, cancel)
    else:
        if not completions:
            raise AhaError("no completions to score: give --completion TEXT (repeat it) or a JSONL file")
        if settings.model:
            from engine.train.core import check_model_folder, load_tokenizer

            on_event(make_event("progress", stage="load", done=0, total=1, label="loading the tokenizer"))
            tokenizer = load_tokenizer(check_model_folder(settings.model))
        items = _typed(settings, completions, rows, tokenizer)
    on_event(make_event("progress", stage="score", done=0, total=len(items), label="scoring"))
    scores, errors = score_each(reward_set.names, settings.rewards, items)
    report_items = []
    for index, item in enumerate(items):
        from engine.think import split_thinking

        thinking, answer_text = split_thinking(item["text"], item["prefilled"])
        values = {name: scores[name][index] for name in reward_set.names}
        total = (None if any(value is None for value in values.values())
                 else sum(weight * values[name] for name, weight in zip(reward_set.names, reward_set.weights, strict=True)))
        report_items.append({"prompt": item["prompt"], "answer": item["answer"], "text": item["text"],
                             "thinking": thinking, "answer_text": answer_text, "rewards": values, "total": total,
                             "length": len(item["ids"]) if item["ids"] is not None else None,
                             "prefilled": item["prefilled"]})
    on_event(make_event("progress", stage="score", done=len(items), total=len(items), label="scoring"))
    found = verdicts(scores, errors)
    warnings = [verdict["message"] for verdict in found.values() if verdict["message"]]
    for line in warnings:
        on_event(make_event("log", level="warning", message=line))
    return {"rewards": reward_set.names, "weights": reward_set.weights, "completions": report_items,
            "verdicts": found, "errors": errors, "warnings": warnings}


def score_each(names: Sequence[str], specs: Sequence[str], items: list[dict]) -> tuple[dict[str, list[float | None]], dict[str, str]]:
    """({reward: score per item}, {reward: its first error}): each reward (`specs`, RewardSet's `names`)
    scored on its own as a RewardSet of one, so one that fails for every completion does not hide the others."""
    from engine.train.rewards import RewardSet

    prompts = [item["prompt"] for item in items]
    texts = [item["text"] for item in items]
    columns: dict[str, Any] = {"prefilled": [item["prefilled"] for item in items]}
    if any(item["answer"] is not None for item in items):
        columns["answer"] = [item["answer"] for item in items]
    if all(item["ids"] is not None for item in items):
        columns["completion_ids"] = [item["ids"] for item in items]
    for key in dict.fromkeys(key for item in items for key in item["columns"]):
        columns.setdefault(key, [item["columns"].get(key) for item in items])
    scores, errors = {}, {}
    for name, spec in zip(names, specs, strict=True):
        try:
            result = RewardSet([spec]).score(prompts, texts, **columns)
        except AhaError as error:
            scores[name], errors[name] = [None] * len(items), str(error)
            continue
        scores[name] = result.per_reward[name]
        if result.errors:
            errors[name] = result.errors[0]
    return scores, errors


def verdicts(scores: dict[str, list[float | None]], errors: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per reward: {"state": "error" | "never_fired" | "constant" | "ok", "value", "message"}. A reward that
    gave 0 or nothing to every completion never fired (a pattern that never matches: a regex over several
    lines without re.DOTALL, a wrong column); one that gave every completion the same non-zero value is
    constant: neither gives GRPO a signal, as advantages are differences within a group.

    Example: verdicts({"think": [0.0, 0.0], "format": [1.0, 0.0]})["think"]["state"] → "never_fired"
    """
    errors = errors or {}
    found = {}
    for name, values in scores.items():
        present = [value for value in values if value is not None and not math.isnan(value)]
        count = len(values)
        if name in errors and not present:
            found[name] = {"state": "error", "value": None,
                           "message": f"reward {name} scored no completion: {errors[name]}"}
        elif all(value == 0 for value in present):
            found[name] = {"state": "never_fired", "value": 0.0,
                           "message": f"reward {name} never fired: 0 (or nothing) for all {count} completions; "
                                      "if some deserve it, check its pattern (a regex spanning lines needs "
                                      "re.DOTALL) and the columns it reads"}
        elif count > 1 and len(set(present)) == 1 and len(present) == count:
            found[name] = {"state": "constant", "value": present[0],
                           "message": f"reward {name} gave {present[0]:g} to every completion: it cannot tell them "
                                      "apart, so it adds no learning signal"}
        else:
            found[name] = {"state": "ok", "value": None, "message": errors.get(name)}
    return found


def _dataset_rows(settings: CheckSettings) -> list[dict]:
    if not settings.dataset:
        return []
    from engine.train.data import first_rows, open_dataset

    source = open_dataset(settings.dataset, settings.seed, settings.prompt_column, settings.answer_column or None)
    return first_rows(source, settings.prompts)


def _typed(settings: CheckSettings, completions: Sequence[dict], rows: list[dict], tokenizer) -> list[dict]:
    """Items of typed completions: each with its own prompt/answer, else the dataset's first row's."""
    from engine.train.sampling import render_prompt

    first = rows[0] if rows else {}
    items = []
    for entry in completions:
        if not isinstance(entry, dict) or not isinstance(entry.get("completion"), str):
            raise AhaError("each completion to score needs a \"completion\" string (and may give \"prompt\" and \"answer\")")
        row = {"prompt": entry["prompt"], "answer": entry.get("answer")} if "prompt" in entry else first
        prompt = row.get("prompt", "")
        prefilled = bool(settings.prefilled)
        ids = None
        if tokenizer is not None:
            from engine.train.sampling import is_prefilled

            rendered = render_prompt(tokenizer, prompt, settings.system_prompt)
            prefilled = is_prefilled(rendered) if settings.prefilled is None else settings.prefilled
            ids = tokenizer(entry["completion"], add_special_tokens=False).input_ids
        items.append(_item(row, entry["completion"], prefilled, ids))
    return items


def _sampled(settings: CheckSettings, rows: list[dict], on_event: OnEvent, cancel: CancelToken | None):
    """Items of `samples` completions per row from the model, as GRPO samples them."""
    from engine.errors import Cancelled
    from engine.train.core import load_model, resolve_device, seed_everything
    from engine.train.grpo import GRPOConfig
    from engine.train.sampling import decode, encode_prompts, eos_token_ids, pad_token_id, sample

    on_event(make_event("progress", stage="load", done=0, total=1, label="loading the model"))
    device = resolve_device(settings.device)
    config = GRPOConfig(model=settings.model, device=settings.device, dataset=settings.dataset or "")
    model, tokenizer = load_model(config, device, trainable=False)
    seed_everything(settings.seed)
    on_event(make_event("progress", stage="load", done=1, total=1, label="loading the model"))
    ids, _, prefilled = encode_prompts(tokenizer, [row["prompt"] for row in rows], settings.system_prompt)
    repeated = [sequence for sequence in ids for _ in range(settings.samples)]
    on_event(make_event("progress", stage="sample", done=0, total=len(repeated), label="sampling completions"))
    eos = eos_token_ids(tokenizer, model)
    rollout = sample(model, repeated, max_new_tokens=settings.max_completion_length, eos_ids=eos,
                     pad_id=pad_token_id(tokenizer), temperature=settings.temperature, top_p=settings.top_p,
                     cancel=cancel)
    if rollout.cancelled:
        raise Cancelled("reward check cancelled while sampling")
    on_event(make_event("progress", stage="sample", done=len(repeated), total=len(repeated), label="sampling completions"))
    texts = decode(tokenizer, rollout.completion_ids, rollout.mask, eos)
    lengths = rollout.lengths.tolist()
    items = []
    for index, text in enumerate(texts):
        row_index = index // settings.samples
        completion_ids = rollout.completion_ids[index, :lengths[index]].tolist()
        items.append(_item(rows[row_index], text, prefilled[row_index], completion_ids))
    return items, tokenizer


def _item(row: dict, text: str, prefilled: bool, ids: list[int] | None) -> dict:
    answer = row.get("answer")
    return {"prompt": row.get("prompt", ""), "answer": None if answer is None else str(answer), "text": text,
            "prefilled": prefilled, "ids": ids,
            "columns": {key: value for key, value in row.items() if key not in ("prompt", "answer", "completion")}}


def report_text(report: dict[str, Any]) -> str:
    """The report for a terminal: one line per completion (its scores and total), then the verdicts."""
    lines = []
    for index, item in enumerate(report["completions"]):
        scores = "  ".join(f"{name}={_score(item['rewards'][name])}" for name in report["rewards"])
        answer = " ".join(item["answer_text"].split())[:40]
        lines.append(f"{index + 1}. {scores}  total={_score(item['total'])}  answer: {answer!r}")
    for name, verdict in report["verdicts"].items():
        lines.append(verdict["message"] or f"reward {name}: ok")
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def read_completions(texts: Sequence[str] | None, path: str | None) -> list[dict] | None:
    """Typed completions: each --completion TEXT, then each line of a JSONL file ({"completion", and
    optionally "prompt", "answer"}); None when neither is given (then the check samples)."""
    import json
    from pathlib import Path

    completions = [{"completion": text} for text in texts or []]
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise AhaError(f"completions file {file} not found: give a JSONL file with one {{\"completion\": …}} per line")
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise AhaError(f"{file} line {number} is not valid JSON: {error.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get("completion"), str):
                raise AhaError(f"{file} line {number} has no \"completion\" string")
            completions.append(record)
    return completions if texts or path else None
