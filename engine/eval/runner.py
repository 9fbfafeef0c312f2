"""`aha eval`: models × problems × k samples, scored as the R1 paper reports them, as a resumable run.

`evaluate(config)` opens each model in turn (engine.eval.models), asks it for k samples of every problem
(engine.eval.datasets), scores each sample with the verifier (the `accuracy` reward: math-verify on the
answer part; a thought the token budget cut is wrong, and counted apart), and writes the run directory
(engine.train.runs, kind "eval"): samples.jsonl (one line per model and problem), metrics.jsonl and the
store's metrics (one step per model), and eval.json, the summaries (engine.eval.metrics.summarize) and each
model's paired comparison with the first. A rerun of the same settings into the same directory skips the
(model, problem) lines already written. The metrics are metrics.py's; the models are the teachers'.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine import r1
from engine.distill.teachers import Sampling, TeacherSample, is_cancelled
from engine.errors import AhaError
from engine.jobs import OnEvent, Progress, format_rate, ignore, make_event
from engine.think import CLOSE_TAG, OPEN_TAG
from engine.train.config import setting

# Settings that must match for a rerun to continue a run directory (output_dir and the transport aside).
SAME_FOR_RESUME = ("models", "model", "dataset", "prompt_column", "answer_column", "template", "limit", "k",
                   "temperature", "top_p", "max_tokens", "seed", "verifier")
CORRECT = "correct"  # the one reward name samples.jsonl records


@dataclass(frozen=True)
class EvalConfig:
    """`aha eval` settings: the models, the problems, the sampling (the R1 paper's: temperature 0.6, top-p
    0.95), the verifier and the run directory."""

    models: tuple[str, ...] = setting((), "the models to compare, the first the baseline: gguf:PATH, a library name, "
                                          "hf:FOLDER[+ADAPTER], openai:URL or run:ID", "Model", metavar="SPEC")
    model: tuple[str, ...] = setting((), "served model name on openai: endpoints: one for all, or one per openai: "
                                         "model in order (unset: the one it serves)", "Model", metavar="NAME",
                                     repeat=True)
    api_key_env: str | None = setting(None, "environment variable holding the endpoints' API key", "Model",
                                      metavar="VAR")
    concurrency: int = setting(4, "requests in flight to an endpoint", "Model")
    timeout: float = setting(600.0, "seconds to wait for one endpoint reply", "Model")
    n_ctx: int | None = setting(None, "context size of a GGUF model (unset: max_tokens + 1024)", "Model")
    device: str = setting("auto", "where an hf: model runs: auto (CUDA when there is one), cpu, cuda or cuda:N",
                          "Model")
    dataset: str = setting("", "the problems: a built-in task (its held-out split), or a .jsonl/.csv/.parquet file "
                               "(MATH-500, AIME: problem/answer; GSM8K: question/answer with #### N)", "Data")
    prompt_column: str | None = setting(None, "column holding the problem (unset: prompt, problem or question)",
                                        "Data")
    answer_column: str | None = setting(None, "column holding the reference answer (unset: answer)", "Data")
    template: str | None = setting(None, "prompt template with {problem} (unset: the data's prompt, else DeepSeek's "
                                         "math prompt)", "Data")
    limit: int | None = setting(None, "use only the first N problems (a built-in task: 100 without it)", "Data")
    k: int = setting(8, "samples per problem (pass@1 is their mean; cons@k their majority vote)", "Rollouts")
    temperature: float = setting(r1.TEMPERATURE, "sampling temperature (the paper: 0.6; 0 is greedy)", "Rollouts")
    top_p: float = setting(r1.TOP_P, "nucleus sampling (the paper: 0.95)", "Rollouts")
    max_tokens: int = setting(4096, "reply budget in tokens (thinking + answer); a thought cut by it is wrong",
                              "Rollouts")
    seed: int = setting(0, "sampling seed: sample i of a problem uses seed + i", "Rollouts")
    verifier: str = setting("accuracy", "what decides a sample is right: accuracy (math-verify on the final answer) "
                                        "or path.py:function (a reward; 1.0 is right)", "Loss", metavar="NAME")
    output_dir: str | None = setting(None, "the run directory (unset: runs/eval-<id>); an eval run there with the "
                                           "same settings is continued", "Logging", metavar="DIR")

    def validate(self) -> None:
        """Every setting a user can get wrong, one line each, before a model is loaded or reached."""
        from engine.eval.models import parse_model
        from engine.train.rewards import RewardSet

        if not self.models:
            raise AhaError("give at least one MODEL to evaluate (gguf:PATH, hf:FOLDER, openai:URL, run:ID or a "
                           "library name)")
        if not self.dataset:
            raise AhaError("give the problems with --dataset (a built-in task or a .jsonl/.csv/.parquet file)")
        for name in ("k", "max_tokens", "concurrency", "limit", "n_ctx"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AhaError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.temperature >= 0:
            raise AhaError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise AhaError(f"top_p must be above 0 and at most 1, got {self.top_p}")
        if not self.timeout > 0:
            raise AhaError(f"timeout must be above 0 seconds, got {self.timeout}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise AhaError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")
        specs = [parse_model(spec) for spec in self.models]
        endpoints = sum(spec.kind == "openai" for spec in specs)
        if len(self.model) > 1 and len(self.model) != endpoints:
            raise AhaError(f"{len(self.model)} --model names for {endpoints} openai: model(s); give one name for "
                           "all or one per openai: model")
        RewardSet([self.verifier])

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.max_tokens, self.seed)

    def served_names(self, specs: Sequence) -> list[str | None]:
        """The --model name of each spec (None for the non-endpoint ones)."""
        names, endpoint = [], 0
        for spec in specs:
            if spec.kind != "openai":
                names.append(None)
                continue
            names.append(self.model[0] if len(self.model) == 1 else self.model[endpoint] if self.model else None)
            endpoint += 1
        return names


# Scoring one problem --------------------------------------------------------------------------------

def thought_unclosed(sample: TeacherSample) -> bool:
    """The reply opened a thought (or its prompt did) and never closed it."""
    return CLOSE_TAG not in sample.raw and (sample.prefilled or OPEN_TAG in sample.raw)


def token_counts(sample: TeacherSample) -> tuple[int, int]:
    """(thinking tokens, answer tokens) of a sample: the counts the model gave (usage's completion_tokens and
    thinking_tokens); an endpoint that gives only the total gets it split in proportion to the characters
    before and after `</think>`, and one that gives none an estimate of 4 characters a token."""
    completion = sample.usage.get("completion_tokens")
    thinking = sample.usage.get("thinking_tokens")
    end = sample.raw.find(CLOSE_TAG)
    thought_chars = len(sample.raw) if end == -1 and thought_unclosed(sample) else max(end + len(CLOSE_TAG), 0)
    if completion is None:
        completion = round(len(sample.raw) / 4)
        thinking = round(thought_chars / 4) if thinking is None else thinking
    elif thinking is None:
        thinking = round(completion * thought_chars / len(sample.raw)) if sample.raw else 0
    thinking = min(int(thinking), int(completion))
    return thinking, int(completion) - thinking


def score_problem(row: Mapping[str, Any], samples: Sequence[TeacherSample], reward_set) -> tuple[Any, dict]:
    """(ProblemResult, the samples.jsonl record less step and model) of one problem's k samples. A sample
    is right when the verifier gives it 1.0 and its thought was closed (a thought with no `</think>` is
    scored on nothing, as lighteval's --remove-reasoning-tags does)."""
    from engine.eval.metrics import ProblemResult, majority
    from engine.train.answers import extract_final_answer

    count = len(samples)
    scores = reward_set.score([row["prompt"]] * count, [sample.raw for sample in samples],
                              answer=[row["answer"]] * count, prefilled=[sample.prefilled for sample in samples])
    values = scores.per_reward[reward_set.names[0]]
    correct, extracted, thinking, answer, cut, completions = [], [], [], [], [], []
    for sample, value in zip(samples, values, strict=True):
        unclosed = thought_unclosed(sample)
        right = value is not None and value >= 1.0 and not unclosed
        found = None if unclosed else extract_final_answer(sample.raw, sample.prefilled)
        was_cut = unclosed and sample.finish_reason == "length"
        thought_tokens, answer_tokens = token_counts(sample)
        correct.append(right)
        extracted.append(found)
        thinking.append(thought_tokens)
        answer.append(answer_tokens)
        cut.append(was_cut)
        completions.append({"text": sample.raw, "thinking": sample.thinking, "answer_text": sample.answer,
                            "extracted": found, "rewards": {CORRECT: float(right)}, "reward": float(right),
                            "accepted": right, "length": thought_tokens + answer_tokens,
                            "thinking_length": thought_tokens, "truncated": was_cut,
                            "finish_reason": sample.finish_reason, "seed": sample.sampling.get("seed")})
    winner = majority(extracted)
    result = ProblemResult(row["prompt_id"], tuple(correct), tuple(extracted), tuple(thinking), tuple(answer),
                           tuple(cut), winner)
    record = {"prompt_id": row["prompt_id"], "prompt": row["prompt"], "answer": _text(row["answer"]),
              "problem": row.get("problem"), "majority": winner, "completions": completions}
    return result, record


def result_from_record(record: Mapping[str, Any]):
    """The ProblemResult a samples.jsonl line was written from (for a resumed run)."""
    from engine.eval.metrics import ProblemResult

    completions = record["completions"]
    thinking = tuple(int(item.get("thinking_length") or 0) for item in completions)
    return ProblemResult(str(record["prompt_id"]), tuple(bool(item["accepted"]) for item in completions),
                         tuple(item.get("extracted") for item in completions), thinking,
                         tuple(int(item.get("length") or 0) - used for item, used in zip(completions, thinking, strict=True)),
                         tuple(bool(item.get("truncated")) for item in completions), record.get("majority"))


def _text(value) -> str | None:
    return None if value is None else str(value)


# The run --------------------------------------------------------------------------------------------

def evaluate(config: EvalConfig | None = None, on_event: OnEvent = ignore, cancel=None, *,
             resume: str | Path | None = None) -> dict:
    """Run the evaluation `config` describes (or continue the run directory `resume` with its saved settings)
    and return {"status": complete | cancelled, "run_id", "run_dir", "eval": eval.json's content}.

    Events: the run's `start`, a `log` per model, a `sample` per (model, problem) (step = the model's
    index), `progress` (stage "eval", unit "samples" over all models, with the model's label, its running
    pass@1 `accuracy` and samples_per_s), a `metrics` per model. Cancel stops after the problems in flight:
    what is written stays, and a rerun continues it."""
    from engine.eval.datasets import eval_rows
    from engine.eval.metrics import compare, summarize
    from engine.eval.models import model_labels, open_model, parse_model
    from engine.train.config import load_config
    from engine.train.rewards import RewardSet
    from engine.train.runs import Run, saved_config

    directory = Path(resume).expanduser() if resume is not None else None
    if directory is not None:
        _check_eval_directory(directory)
        config = load_config(EvalConfig, None, saved_config(directory))
    elif config is None:
        raise ValueError("evaluate needs a config (or the run directory to resume)")
    config.validate()
    specs = [parse_model(spec) for spec in config.models]
    labels = model_labels(specs, config.served_names(specs))
    rows = eval_rows(config.dataset, limit=config.limit, prompt_column=config.prompt_column,
                     answer_column=config.answer_column, template=config.template, seed=0)
    if not rows:
        raise AhaError(f"{config.dataset} has no problems to evaluate")
    rows = [{**row, "problem": place} for place, row in enumerate(rows)]  # the place the pane numbers it by
    reward_set = RewardSet([config.verifier])
    if directory is None and config.output_dir:
        directory = Path(config.output_dir).expanduser()
    if directory is not None and (directory / "run.json").exists():
        _check_eval_directory(directory, config)
        run = Run.open(directory, on_event)
    else:
        run = Run.create("eval", config, on_event)
    run.set_status("running")
    done = _written_records(run.dir / "samples.jsonl", labels, {row["prompt_id"] for row in rows})
    if done:
        run.log(f"continuing {run.dir.name}: {sum(map(len, done.values()))} of {len(rows) * len(specs)} "
                "(model, problem) pairs done already")
    previous = _previous_models(run.dir / "eval.json")
    sampling = config.sampling()
    total = len(specs) * len(rows) * config.k
    progress = Progress(run.emit, "eval", total=total, unit="samples")
    report = {"dataset": config.dataset, "k": config.k,
              "sampling": {key: value for key, value in asdict(sampling).items()}, "problems": len(rows),
              "models": [], "comparisons": []}
    results_by_model: list[list] = []
    finished_samples = sum(len(records) for records in done.values()) * config.k
    status, shown = "complete", {"model": labels[0], "accuracy": None, "samples_per_s": None}
    try:
        for index, (spec, label) in enumerate(zip(specs, labels, strict=True)):
            records = done.get(index, {})
            results = {prompt_id: result_from_record(record) for prompt_id, record in records.items()}
            pending = [row for row in rows if row["prompt_id"] not in results]
            entry_before = previous.get(index, {})
            seconds, generated, describe = 0.0, 0, entry_before.get("describe") or {"kind": spec.kind}
            if pending and not is_cancelled(cancel):
                run.log(f"model {index + 1} of {len(specs)}: {label} ({spec.spec}), {len(pending)} problems × "
                        f"{config.k} samples")
                teacher = open_model(spec, model=config.served_names(specs)[index], api_key_env=config.api_key_env,
                                     concurrency=config.concurrency, n_ctx=config.n_ctx or config.max_tokens + 1024,
                                     timeout_s=config.timeout, device=None if config.device == "auto" else config.device)
                describe = teacher.describe()
                started = time.monotonic()
                try:
                    with open(run.dir / "samples.jsonl", "a", encoding="utf-8", newline="\n") as stream:
                        for position, samples in teacher.generate([row["prompt"] for row in pending], config.k,
                                                                  sampling, cancel):
                            row = pending[position]
                            result, record = score_problem(row, samples, reward_set)
                            results[row["prompt_id"]] = result
                            line = {"step": index, "model": label, **record}
                            _append_line(stream, line)
                            run.emit(make_event("sample", step=index, prompt_id=record["prompt_id"],
                                                prompt=record["prompt"], answer=record["answer"], problem=record["problem"],
                                                completions=[_event_completion(item) for item in record["completions"]]))
                            generated += len(samples)
                            finished_samples += len(samples)
                            seconds = time.monotonic() - started
                            shown = {"model": label, "accuracy": round(_running_pass1(results), 4),
                                     "samples_per_s": round(generated / seconds, 3) if seconds > 0 else None}
                            progress.update(finished_samples, **shown)
                finally:
                    teacher.close()
                seconds = time.monotonic() - started
            elif not pending:
                seconds, generated = entry_before.get("seconds", 0.0), None
            ordered = [results[row["prompt_id"]] for row in rows if row["prompt_id"] in results]
            results_by_model.append(ordered)
            complete = len(ordered) == len(rows)
            rate = (generated / seconds if generated and seconds > 0 else
                    entry_before.get("samples_per_s", 0.0) if generated is None else 0.0)
            summary = summarize(ordered, config.k) if ordered else None
            entry = {"index": index, "label": label, "spec": spec.spec, "describe": describe, **(summary or {}),
                     "samples_per_s": round(rate, 6), "seconds": round(seconds, 3),
                     "status": "complete" if complete else "partial"}
            report["models"].append(entry)
            if summary is not None:
                run.log_metrics(index, _flat_metrics(summary, rate))
            report["comparisons"] = [{"a": 0, "b": other, **compare(results_by_model[0], results_by_model[other])}
                                     for other in range(1, len(results_by_model))
                                     if results_by_model[0] and results_by_model[other]]
            _write_json(run.dir / "eval.json", report)
            if not complete:
                status = "cancelled" if is_cancelled(cancel) else "incomplete"
                for later in range(index + 1, len(specs)):  # say what was not reached, so the file is whole
                    report["models"].append({"index": later, "label": labels[later], "spec": specs[later].spec,
                                             "status": "partial", "problems": 0})
                _write_json(run.dir / "eval.json", report)
                break
    except BaseException as error:  # a second cancel (KeyboardInterrupt) stops at once: what is written stays
        with contextlib.suppress(Exception):
            run.set_status("cancelled" if isinstance(error, KeyboardInterrupt) else "error")
        raise
    finally:
        run.close()
    if status == "incomplete":
        run.set_status("error")
        raise AhaError(f"the evaluation stopped before every problem was answered; `aha runs resume {run.store_id}` "
                       "continues it")
    run.set_status(status)
    if progress.done != finished_samples or shown["accuracy"] is None:  # the last update was not shown yet
        progress.update(finished_samples, force=True, **shown)
    run.artifact("eval", run.dir / "eval.json")
    return {"status": status, "run_id": run.store_id, "run_dir": str(run.dir), "eval": report}


def _check_eval_directory(directory: Path, config: EvalConfig | None = None) -> None:
    """A run directory an evaluation may continue: an eval run's, with the same settings as `config`."""
    from engine.train.runs import saved_config

    saved = saved_config(directory)
    info = json.loads((directory / "run.json").read_text(encoding="utf-8"))
    if info.get("kind") != "eval":
        raise AhaError(f"{directory} holds a {info.get('kind')} run, not an evaluation; choose another --output-dir")
    if config is None:
        return
    current = asdict(config)
    changed = [key for key in SAME_FOR_RESUME if _normal(saved.get(key)) != _normal(current.get(key))]
    if changed:
        details = ", ".join(f"{key} {saved.get(key)!r} → {current.get(key)!r}" for key in changed[:3])
        raise AhaError(f"{directory} holds an evaluation with other settings ({details}); run it with the same "
                       "settings to continue it, or choose another --output-dir")


def _normal(value):
    return list(value) if isinstance(value, tuple | list) else value


def _written_records(path: Path, labels: Sequence[str], prompt_ids: set[str]) -> dict[int, dict[str, dict]]:
    """{model index: {prompt_id: record}} of the whole lines of samples.jsonl whose model label still matches;
    a line cut off by a crash (and anything after it) is removed from the file."""
    if not path.exists():
        return {}
    kept, found, damaged = [], {}, False
    with open(path, encoding="utf-8", errors="replace") as stream:
        for text in stream:
            try:
                record = json.loads(text) if text.endswith("\n") else None
            except ValueError:
                record = None
            if not isinstance(record, dict):
                damaged = True
                break
            step = record.get("step")
            if isinstance(step, int) and step < len(labels) and record.get("model") == labels[step] \
                    and record.get("prompt_id") in prompt_ids:
                found.setdefault(step, {})[record["prompt_id"]] = record
            kept.append(text)
    if damaged:
        from engine.fileio import atomic_write_text

        atomic_write_text(path, "".join(kept))
    return found


def _previous_models(path: Path) -> dict[int, dict]:
    """eval.json's model entries of an earlier run of this directory, by index (their speed and description)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        return {entry["index"]: entry for entry in report.get("models", []) if "index" in entry}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def _running_pass1(results: Mapping[str, Any]) -> float:
    values = [sum(result.correct) / len(result.correct) for result in results.values() if result.correct]
    return sum(values) / len(values) if values else 0.0


def _flat_metrics(summary: Mapping[str, Any], samples_per_s: float) -> dict[str, float]:
    """One model's store metrics: pass@1, cons@k, pass@k/<n>, token means, cut share, speed."""
    flat = {name: float(summary[name]) for name in ("pass@1", "cons@k", "thinking_tokens_mean",
                                                     "answer_tokens_mean", "cut_share") if name in summary}
    flat.update({f"pass@k/{n}": float(value) for n, value in (summary.get("pass@k") or {}).items()})
    flat["samples_per_s"] = float(samples_per_s)
    return flat


# Fields of a samples.jsonl completion that the `sample` event (engine.events.Completion) carries.
_EVENT_FIELDS = ("text", "thinking", "answer_text", "rewards", "reward", "length", "truncated", "accepted",
                 "extracted", "thinking_length")


def _event_completion(item: Mapping[str, Any]) -> dict:
    return {name: item[name] for name in _EVENT_FIELDS}


def _append_line(stream, record: dict) -> None:
    """One JSON line, flushed and fsynced: a crash loses at most the line being written."""
    stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    stream.flush()
    os.fsync(stream.fileno())


def _write_json(path: Path, data: Any) -> None:
    from engine.train.runs import write_json

    write_json(path, data)


# The terminal's view -------------------------------------------------------------------------------

def table_text(report: Mapping[str, Any]) -> str:
    """The side-by-side table of eval.json and the comparison notes under it.

    MODEL      pass@1  cons@8  pass@8  think  answer  cut   Δ pass@1
    base        41.2%   52.0%   78.0%    812      64  3.0%
    grpo        55.9%   63.0%   84.0%    904      58  2.5%  +14.7
    """
    k = report.get("k")
    header = ("MODEL", "pass@1", f"cons@{k}", f"pass@{k}", "think", "answer", "cut", "Δ pass@1")
    differences = {item["b"]: item for item in report.get("comparisons", [])}
    lines = [header]
    for entry in report.get("models", []):
        if "pass@1" not in entry:
            lines.append((entry["label"], "–", "–", "–", "–", "–", "–", "not run"))
            continue
        difference = differences.get(entry["index"])
        lines.append((entry["label"] + ("" if entry.get("status") == "complete" else " (partial)"),
                      _percent(entry["pass@1"]), _percent(entry["cons@k"]),
                      _percent((entry.get("pass@k") or {}).get(str(k), float("nan"))),
                      f"{entry['thinking_tokens_mean']:.0f}", f"{entry['answer_tokens_mean']:.0f}",
                      _percent(entry["cut_share"]),
                      f"{difference['difference'] * 100:+.1f}" if difference else ""))
    widths = [max(len(str(line[column])) for line in lines) for column in range(len(header))]
    text = ["  ".join(str(value).ljust(widths[column]) if column == 0 else str(value).rjust(widths[column])
                      for column, value in enumerate(line)).rstrip() for line in lines]
    labels = {entry["index"]: entry["label"] for entry in report.get("models", [])}
    for item in report.get("comparisons", []):
        text.append(f"{labels.get(item['b'])} vs {labels.get(item['a'])}: {item.get('note', '')}")
    speeds = [f"{entry['label']} {format_rate(entry['samples_per_s'], 'samples')}"
              for entry in report.get("models", []) if entry.get("samples_per_s")]
    text.append(f"{report.get('problems')} problems × {k} samples" + (f"; {', '.join(speeds)}" if speeds else ""))
    return "\n".join(text)


def _percent(value: float) -> str:
    return "–" if value != value else f"{value * 100:.1f}%"
