"""Rewards for GRPO: the rule-based ones (accuracy, format, length, repetition) and user reward files.

Every reward has TRL's shape `fn(prompts, completions, **columns) -> list[float | None]`, where None
means "could not score this sample". `RewardSet` sums weighted rewards, isolates the samples a reward
fails on and reports each distinct error once, and applies a reward only to the rows of its tasks (the
`task` column, as R1's stage 4 mixes math rows with general ones); it never logs (the training loop does).
`build_reward_set` makes the set a GRPO config names, with the configured rewards (the language target,
the reward model and the judge of `engine.train.reward_models`). Strings in, numbers out: nothing here
knows models, tokenizers or torch.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from engine.errors import AhaError
from engine.think import CLOSE_TAG, OPEN_TAG, ThinkParser, split_thinking
from engine.train.answers import (
    _strip_stop_tokens,
    answers_match,
    extract_final_answer,
    gold_answer,
)

RewardFn = Callable[..., list[float | None]]

# Distinct errors reported per reward over a RewardSet's life; after that, one line says more were cut.
MAX_REPORTED_ERRORS = 5


# Built-in rewards ---------------------------------------------------------------------------------

def accuracy_reward(prompts: list[str], completions: list[str], answer: Any = None, prefilled: Any = False,
                    **columns: Any) -> list[float | None]:
    """1.0 when the final answer (see `extract_final_answer`) matches the `answer` column, 0.0 when it
    is wrong or missing; None where the ground truth is missing. `prefilled`: the prompt opened the thought."""
    if answer is None:
        raise ValueError("the accuracy reward needs an 'answer' column (the ground truth)")
    golds = _per_sample(answer, len(completions), "answer")
    flags = _per_sample(prefilled, len(completions), "prefilled")
    scores: list[float | None] = []
    for completion, gold, flag in zip(completions, golds, flags, strict=True):
        truth = gold_answer(gold)
        prediction = extract_final_answer(completion, bool(flag))
        scores.append(None if truth is None else float(prediction is not None and answers_match(prediction, truth)))
    return scores


def format_reward(prompts: list[str], completions: list[str], prefilled: Any = False,
                  **columns: Any) -> list[float | None]:
    """1.0 for a well-formed completion (see `is_well_formed`), else 0.0."""
    flags = _per_sample(prefilled, len(completions), "prefilled")
    return [float(is_well_formed(completion, bool(flag))) for completion, flag in zip(completions, flags, strict=True)]


def is_well_formed(completion: str, prefilled: bool = False) -> bool:
    """Exactly one closed think block, then a non-empty answer: `<think>…</think>answer`. Only
    whitespace may precede `<think>`; when the prompt was prefilled with `<think>` the completion
    starts inside the thought and must not open another. An empty thought is allowed (R1 writes one
    for trivial prompts); a nested `<think>` or a second `</think>` is not. Trailing stop tokens are ignored."""
    text = _strip_stop_tokens(completion)
    parser = ThinkParser(prefilled=prefilled)
    segments = parser.feed(text) + parser.finish()
    summary = parser.summary()
    thinking = "".join(segment.text for segment in segments if segment.kind == "thinking")
    answer = "".join(segment.text for segment in segments if segment.kind == "answer")
    return (summary.blocks_opened == 1 and summary.blocks_closed == 1
            and (prefilled or text.lstrip().startswith(OPEN_TAG))
            and OPEN_TAG not in thinking and CLOSE_TAG not in answer
            and bool(answer.strip()))


def cosine_length_reward(max_len: int = 1000, *, correct: tuple[float, float] = (1.0, 0.5),
                         wrong: tuple[float, float] = (-1.0, -0.5), exceed: float | None = None) -> RewardFn:
    """Cosine-scaled length reward (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning in
    LLMs", arXiv 2502.03373), values as open-r1's defaults. With L the completion's token count:

        r(L) = r_max + (r_0 − r_max) · (1 + cos(π · min(L, L_max) / L_max)) / 2

    where (r_0, r_max) = `correct` for a correct answer (short correct answers earn most) and `wrong`
    otherwise (short wrong answers lose most, so the model thinks longer when unsure). `exceed`, when
    set, replaces r for L ≥ max_len (a completion cut by the generation limit). Needs the `answer` and
    `completion_ids` columns; None where accuracy is None."""
    def cosine_length(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        lengths = _completion_lengths(columns, len(completions))
        scores: list[float | None] = []
        for length, accurate in zip(lengths, accuracy_reward(prompts, completions, **columns), strict=True):
            if accurate is None:
                scores.append(None)
            elif exceed is not None and length >= max_len:
                scores.append(exceed)
            else:
                at_zero, at_max = correct if accurate == 1.0 else wrong
                progress = min(length, max_len) / max_len
                scores.append(at_max + (at_zero - at_max) * (1 + math.cos(math.pi * progress)) / 2)
        return scores
    return cosine_length


def soft_overlong_punishment(max_len: int = 4096, cache_len: int = 1024) -> RewardFn:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), as TRL's `get_soft_overlong_punishment`.
    With L the completion's token count, L_max = max_len and L_cache = cache_len:

        r = 0                                  if L ≤ L_max − L_cache
        r = ((L_max − L_cache) − L) / L_cache  if L_max − L_cache < L ≤ L_max
        r = −1                                 if L > L_max

    Needs the `completion_ids` column."""
    if not 0 < cache_len <= max_len:
        raise ValueError(f"soft_overlong_punishment: need 0 < cache_len <= max_len, got {cache_len} and {max_len}")

    def soft_overlong(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        scores: list[float | None] = []
        for length in _completion_lengths(columns, len(completions)):
            if length <= max_len - cache_len:
                scores.append(0.0)
            elif length <= max_len:
                scores.append((max_len - cache_len - length) / cache_len)
            else:
                scores.append(-1.0)
        return scores
    return soft_overlong


LENGTH_REWARDS = {"cosine": cosine_length_reward, "overlong": soft_overlong_punishment}


def make_length_reward(kind: str = "cosine", **parameters: Any) -> RewardFn:
    """A length reward: "cosine" (`cosine_length_reward`) or "overlong" (`soft_overlong_punishment`),
    with that function's parameters."""
    if kind not in LENGTH_REWARDS:
        raise ValueError(f"unknown length reward {kind!r}; expected one of {', '.join(LENGTH_REWARDS)}")
    return LENGTH_REWARDS[kind](**parameters)


def repetition_fraction(text: str, ngram_size: int = 3) -> float:
    """1 − unique n-grams / all n-grams over the lowercased whitespace-separated words; 0.0 for a text
    shorter than one n-gram."""
    words = text.lower().split()
    ngrams = [tuple(words[start:start + ngram_size]) for start in range(len(words) - ngram_size + 1)]
    return 1 - len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def make_repetition_reward(ngram_size: int = 3, max_penalty: float = 1.0) -> RewardFn:
    """n-gram repetition penalty, after open-r1's `get_repetition_penalty_reward`:
    r = −max_penalty · (1 − unique n-grams / all n-grams), over the whole completion (thought included:
    a looping thought is the failure this catches). 0 for no repetition, −max_penalty at the limit."""
    if max_penalty < 0:
        raise ValueError(f"max_penalty is a size, give it positive: got {max_penalty}")

    def repetition(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        return [0.0 - max_penalty * repetition_fraction(completion, ngram_size) for completion in completions]
    return repetition


def language_reward(prompts: list[str], completions: list[str], language: Any = None, prefilled: Any = False,
                    **columns: Any) -> list[float | None]:
    """DeepSeek-R1's language-consistency reward (arXiv 2501.12948, §2.3.2): the proportion of the
    thought's words in the target language (`engine.train.language.language_share`),

        r = words of the thinking in the target language / words of the thinking   (1.0 with no words)

    The target is the `language` column (or setting; an ISO 639-1 code such as "en", "zh"), else the
    language of the prompt; a prompt with no words (only digits and signs) sets the thought's own majority
    language as the target, so the reward still measures mixing. The answer is not scored, as in R1."""
    from engine.train.language import detect_language, language_share

    targets = _per_sample(language, len(completions), "language")
    flags = _per_sample(prefilled, len(completions), "prefilled")
    scores: list[float | None] = []
    for prompt, completion, target, flag in zip(prompts, completions, targets, flags, strict=True):
        thinking, _ = split_thinking(_strip_stop_tokens(completion), bool(flag))
        goal = target or detect_language(prompt) or detect_language(thinking)
        scores.append(1.0 if goal is None else language_share(thinking, goal))
    return scores


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "length": make_length_reward("cosine"),
    "repetition": make_repetition_reward(),
    "language": language_reward,
}
# Rewards that need settings of their own (a model folder, an endpoint): made by `build_reward_set`.
CONFIGURED_REWARDS = {"reward_model": "reward_model (a Hugging Face sequence-classification model folder)",
                      "judge": "judge_url (an OpenAI-compatible endpoint)"}


# Loading and combining ----------------------------------------------------------------------------

def load_reward(spec: str) -> RewardFn:
    """A built-in reward by name, or `path/to/file.py:function` from a user file (imported by path)."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if spec in CONFIGURED_REWARDS:
        raise AhaError(f"the {spec} reward needs the setting {CONFIGURED_REWARDS[spec]}: set it in the config "
                       f"or pass --{spec.replace('_', '-')}{'-url' if spec == 'judge' else ''}")
    if ":" not in spec:
        raise AhaError(f"unknown reward {spec!r}: use one of {', '.join([*BUILTIN_REWARDS, *CONFIGURED_REWARDS])} "
                       "or path/to/file.py:function")
    file, name = spec.rsplit(":", 1)
    path = Path(file).expanduser()
    if not path.is_file():
        raise AhaError(f"reward file {file} not found: give path/to/file.py:function")
    module = _import_file(path)
    function = getattr(module, name, None)
    if not callable(function):
        defined = [key for key, value in vars(module).items()
                   if callable(value) and not key.startswith("_") and getattr(value, "__module__", None) == module.__name__]
        raise AhaError(f"reward file {file} has no function {name!r} (it defines: {', '.join(defined) or 'none'})")
    return function


class RewardScores(NamedTuple):
    totals: list[float]  # weighted sum per sample; NaN where a reward left the sample unscored
    per_reward: dict[str, list[float | None]]  # each reward's values, None where unscored
    errors: list[str]  # errors first seen in this call, one line each, for the loop to log


def parse_reward_tasks(entries: Sequence[str] | None, names: Sequence[str]) -> dict[str, frozenset[str]]:
    """`reward=task1|task2` entries → {reward: tasks}; a reward not named applies to every row.

    Example: parse_reward_tasks(["accuracy=math", "reward_model=general|chat"], ["accuracy", "reward_model"])
    → {"accuracy": frozenset({"math"}), "reward_model": frozenset({"general", "chat"})}"""
    tasks: dict[str, frozenset[str]] = {}
    for entry in entries or ():
        name, _, listed = entry.partition("=")
        chosen = frozenset(task.strip() for task in listed.split("|") if task.strip())
        if not name.strip() or not chosen:
            raise AhaError(f"reward_tasks entry {entry!r} should be reward=task or reward=task1|task2, "
                           "e.g. accuracy=math")
        if name.strip() not in names:
            raise AhaError(f"reward_tasks names {name.strip()!r}, which is not one of the rewards "
                           f"({', '.join(names)}); add it to rewards or fix the entry")
        if name.strip() in tasks:
            raise AhaError(f"reward_tasks names {name.strip()} twice: list its tasks in one entry, a|b")
        tasks[name.strip()] = chosen
    return tasks


class RewardSet:
    """Weighted rewards scored together. A reward that raises for a batch is called again sample by
    sample to find the samples it fails on; a sample a reward raises on or returns None (or NaN) for is
    unscored: its total is NaN and `group_advantages` leaves it out of its group's baseline. Each
    distinct error is reported once over the set's life (so `score` keeps that memory); a reward that
    scores no sample of a batch stops the run with an AhaError.

    Columns that are lists of len(completions) are per sample (sliced when isolating); others pass as is.
    `tasks` ({reward: tasks}, see `parse_reward_tasks`) limits a reward to the rows whose `task` column is
    one of its tasks: it is not called for the other rows, holds None there and leaves their total to the
    other rewards (which is not "unscored"). `functions` gives the function of a spec by name (the
    configured rewards, reward_model and judge).
    """

    def __init__(self, specs: Sequence[str | RewardFn], weights: Sequence[float] | None = None,
                 tasks: Mapping[str, frozenset[str]] | None = None, functions: Mapping[str, RewardFn] | None = None):
        if not specs:
            raise AhaError("no reward given: name at least one (accuracy, format, length, repetition or a file)")
        weights = [1.0] * len(specs) if weights is None else [float(weight) for weight in weights]
        if len(weights) != len(specs):
            raise AhaError(f"{len(specs)} rewards but {len(weights)} weights: give one weight per reward")
        self.names = [_reward_name(spec) for spec in specs]
        duplicates = sorted({name for name in self.names if self.names.count(name) > 1})
        if duplicates:
            raise AhaError(f"two rewards are named {duplicates[0]}: give each reward once, or rename a function")
        functions = functions or {}
        self.functions = [functions[spec] if isinstance(spec, str) and spec in functions
                          else load_reward(spec) if isinstance(spec, str) else spec for spec in specs]
        self.tasks = dict(tasks or {})
        self.weights = weights
        self._builtin = [isinstance(spec, str) and spec in BUILTIN_REWARDS for spec in specs]
        self._reported: dict[str, set[str]] = {name: set() for name in self.names}

    def score(self, prompts: list[str], completions: list[str], **columns: Any) -> RewardScores:
        count = len(completions)
        per_reward: dict[str, list[float | None]] = {}
        errors: list[str] = []
        applies = {name: self._rows_of(name, columns, count) for name in self.names}
        for name, function, builtin in zip(self.names, self.functions, self._builtin, strict=True):
            rows = applies[name]
            values: list[float | None] = [None] * count
            if rows:
                subset = [prompts[index] for index in rows], [completions[index] for index in rows]
                part, failures = _run_reward(function, *subset, _rows_of_columns(columns, rows, count))
                if all(value is None for value in part):
                    _, message = failures[0]
                    advice = ("check the dataset's columns" if builtin else f"check the {name} settings"
                              if name in CONFIGURED_REWARDS else "fix the reward file")
                    raise AhaError(f"reward {name} failed for every sample: {message}; {advice}")
                for index, value in zip(rows, part, strict=True):
                    values[index] = value
                errors += self._new_errors(name, [(rows[index], message) for index, message in failures], completions)
            per_reward[name] = values
        scored_rows = {name: set(rows) for name, rows in applies.items()}
        totals = []
        for index in range(count):
            terms = [(weight, per_reward[name][index]) for name, weight in zip(self.names, self.weights, strict=True)
                     if index in scored_rows[name]]
            totals.append(math.nan if any(value is None for _, value in terms)
                          else sum(weight * value for weight, value in terms))
        return RewardScores(totals, per_reward, errors)

    def _rows_of(self, name: str, columns: Mapping[str, Any], count: int) -> list[int]:
        """The rows reward `name` scores: all, or those whose `task` is one of its tasks."""
        if name not in self.tasks:
            return list(range(count))
        if "task" not in columns:
            raise AhaError(f"reward_tasks limits {name} to tasks, but the data has no 'task' column: add one "
                           "(e.g. math, general) or drop reward_tasks")
        tasks = _per_sample(columns["task"], count, "task")
        return [index for index, task in enumerate(tasks) if str(task) in self.tasks[name]]

    def _new_errors(self, name: str, failures: list[tuple[int, str]], completions: list[str]) -> list[str]:
        """One line per error message not reported before for this reward, naming its first sample."""
        reported, lines = self._reported[name], []
        for index, message in failures:
            if message in reported or len(reported) > MAX_REPORTED_ERRORS:
                continue
            if len(reported) == MAX_REPORTED_ERRORS:
                reported.add("")  # marks the cut: later messages stop at the test above
                lines.append(f"reward {name}: further distinct errors are not reported")
                continue
            reported.add(message)
            completion = completions[index]
            preview = repr(completion[:60]) + ("…" if len(completion) > 60 else "")
            lines.append(f"reward {name} failed on sample {index} (completion {preview}): {message}")
        return lines


def _run_reward(function: RewardFn, prompts: list[str], completions: list[str],
                columns: dict[str, Any]) -> tuple[list[float | None], list[tuple[int, str]]]:
    """(values, failures): the batch call, or sample by sample when it raises or returns a wrong-sized list."""
    count = len(completions)
    try:
        returned = list(function(prompts, completions, **columns))
        if len(returned) != count:
            raise ValueError(f"returned {len(returned)} values for {count} completions")
    except Exception:  # a reward file's bug: isolate the samples below
        returned = None
    if returned is not None:
        values, failures = [], []
        for index, value in enumerate(returned):
            number, failure = _as_score(value)
            values.append(number)
            if failure:
                failures.append((index, failure))
        return values, failures

    values, failures = [], []
    for index in range(count):
        sample_columns = {key: value[index:index + 1] if _is_per_sample(value, count) else value
                          for key, value in columns.items()}
        try:
            returned = list(function(prompts[index:index + 1], completions[index:index + 1], **sample_columns))
            if len(returned) != 1:
                raise ValueError(f"returned {len(returned)} values for 1 completion")
            number, failure = _as_score(returned[0])
        except Exception as error:  # the reward's own error, reported with the sample
            number, failure = None, _describe(error)
        values.append(number)
        if failure:
            failures.append((index, failure))
    return values, failures


def _as_score(value: Any) -> tuple[float | None, str | None]:
    """(score, failure): None and NaN are unscored; anything not a real number is an error."""
    if value is None:
        return None, "returned None"
    if not hasattr(value, "__float__"):
        return None, f"returned {value!r} ({type(value).__name__}), not a number"
    number = float(value)
    return (number, None) if math.isfinite(number) else (None, f"returned {number}")


def _describe(error: BaseException) -> str:
    """`Type: message (file.py:line)` with the innermost frame outside this module and importlib."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith("<") and frame.filename != __file__]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return " ".join(f"{type(error).__name__}: {error}{where}".split())


def _reward_name(spec: str | RewardFn) -> str:
    if not isinstance(spec, str):
        return getattr(spec, "__name__", type(spec).__name__)
    return spec if spec in BUILTIN_REWARDS or ":" not in spec else spec.rsplit(":", 1)[1]


def _import_file(path: Path):
    """Import a Python file by path as its own module; any failure becomes a one-line AhaError."""
    module_name = f"aha_reward_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{abs(hash(str(path.resolve()))):x}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(module_name, None)
        raise AhaError(f"cannot import reward file {path}: {_describe(error)}") from error
    return module


def _rows_of_columns(columns: Mapping[str, Any], rows: list[int], count: int) -> dict[str, Any]:
    """The columns for a subset of the samples: per-sample lists cut to `rows`, the rest as they are."""
    if len(rows) == count:
        return dict(columns)
    return {key: [value[index] for index in rows] if _is_per_sample(value, count) else value
            for key, value in columns.items()}


def build_reward_set(config: Any) -> RewardSet:
    """The RewardSet a GRPO config names: its rewards and weights, `reward_tasks`, the `language` target
    for the language reward, and the configured rewards — reward_model (`make_reward_model_reward` on
    reward_model, reward_model_device, reward_model_4bit, reward_model_batch_size) and judge
    (`make_judge_reward` on judge_url, judge_model, judge_template, judge_api_key_env, judge_concurrency,
    judge_timeout, judge_retries). The models load on their first call, not here."""
    names = list(config.rewards)
    functions: dict[str, RewardFn] = {}
    target = getattr(config, "language", None)
    if "language" in names and target:
        def language(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
            columns.setdefault("language", target)
            return language_reward(prompts, completions, **columns)
        functions["language"] = language
    if "reward_model" in names and getattr(config, "reward_model", None):
        from engine.train.reward_models import make_reward_model_reward

        functions["reward_model"] = make_reward_model_reward(
            config.reward_model, device=config.reward_model_device, load_in_4bit=config.reward_model_4bit,
            batch_size=config.reward_model_batch_size)
    if "judge" in names and getattr(config, "judge_url", None):
        from engine.train.reward_models import make_judge_reward

        functions["judge"] = make_judge_reward(
            config.judge_url, model=config.judge_model, template=config.judge_template,
            api_key_env=config.judge_api_key_env, concurrency=config.judge_concurrency,
            timeout_s=config.judge_timeout, retries=config.judge_retries)
    weights = list(config.reward_weights) if config.reward_weights else None
    return RewardSet(names, weights, parse_reward_tasks(getattr(config, "reward_tasks", None), names), functions)


def _per_sample(value: Any, count: int, column: str) -> list[Any]:
    """A column as one value per sample: a list of len(completions), or one value for all."""
    if isinstance(value, list | tuple):
        if len(value) != count:
            raise ValueError(f"column {column!r} has {len(value)} values for {count} completions")
        return list(value)
    return [value] * count


def _is_per_sample(value: Any, count: int) -> bool:
    return isinstance(value, list | tuple) and len(value) == count


def _completion_lengths(columns: dict[str, Any], count: int) -> list[int]:
    ids = columns.get("completion_ids")
    if ids is None:
        raise ValueError("length rewards need the 'completion_ids' column (token ids; the training loop passes it)")
    return [len(row) for row in _per_sample(ids, count, "completion_ids")]
