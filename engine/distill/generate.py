"""Distillation: teacher traces with verification (rejection sampling), resumable, as a JSONL dataset.

`generate_traces` asks a teacher (engine.distill.teachers) for k replies per prompt, scores them with the GRPO
rewards (engine.train.rewards), keeps the ones that pass (all, the shortest or the first, duplicates dropped)
and appends them line by line, fsynced, beside a progress file that makes a rerun skip finished prompts;
`GenerateConfig` holds the settings of `aha distill generate`.
The logit-distillation loss lives in engine.distill.kd and is re-exported here as `kd_loss`.

`train_sft_on_traces` fine-tunes a student on such traces, or on a built-in task's programmatic teacher
traces (`aha distill sft --dataset addition`): the student's chat template renders the prompt exactly as
at inference, the assistant turn is `<think>\n{thinking}\n</think>\n\n{answer}` (after whatever the
template already pre-filled), the loss covers it only, and held-out loss and greedy pass@1 are measured
along the way. Model setup, checkpoints, resume and cancel are engine.train.core's, the
step and batches engine.train.sft's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine import r1
from engine.distill.kd import KD_KINDS as KD_KINDS
from engine.distill.kd import kd_loss as kd_loss
from engine.distill.teachers import Sampling, Teacher, TeacherSample, is_cancelled
from engine.errors import AhaError
from engine.fileio import atomic_write_text
from engine.jobs import CancelToken, OnEvent, Progress, ignore, make_event
from engine.train.config import setting
from engine.train.data import TASK_ROWS, TASKS, TaskSource, is_task, open_dataset, prompt_id
from engine.train.sft import SFTConfig, SFTStep

KEEP_RULES = ("all", "shortest", "first")
DEFAULT_REWARDS = ("accuracy", "format")


# Datasets -----------------------------------------------------------------------------------------

# Verification and keep rules ----------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """One sample's fate: accepted, or the reason it was rejected."""

    sample: TeacherSample
    index: int                             # sample number within its prompt (0 … k−1)
    rewards: dict[str, float | None]
    reward: float | None                   # weighted total; None where a reward could not score
    rejected: str | None                   # None, "truncated", "unscored" or the first failed reward's name


# Row keys that are not passed on to rewards as extra columns (they are arguments of their own, or the id).
_NOT_REWARD_COLUMNS = ("prompt", "answer", "id", "prefilled", "prompts", "completions")


def verify(reward_set, prompt: str, row: dict, samples: Sequence[TeacherSample],
           pass_threshold: float = 1.0) -> tuple[list[Verdict], list[str]]:
    """Score a prompt's samples. A sample passes when it finished on its own (not cut by the token
    budget) and every reward gives it at least `pass_threshold` (accuracy and format give 1.0 for a
    pass). Returns the verdicts and the reward errors seen for the first time (one line each)."""
    count = len(samples)
    columns = {key: [value] * count for key, value in row.items() if key not in _NOT_REWARD_COLUMNS}
    scores = reward_set.score([prompt] * count, [sample.raw for sample in samples],
                              answer=[row.get("answer")] * count,
                              prefilled=[sample.prefilled for sample in samples], **columns)
    verdicts = []
    for index, sample in enumerate(samples):
        values = {name: scores.per_reward[name][index] for name in reward_set.names}
        total = scores.totals[index]
        reason = None
        if sample.finish_reason != "stop":
            reason = "truncated" if sample.finish_reason == "length" else sample.finish_reason
        elif any(value is None for value in values.values()):
            reason = "unscored"
        else:
            reason = next((name for name, value in values.items() if value < pass_threshold), None)
        verdicts.append(Verdict(sample, index, values, None if math.isnan(total) else total, reason))
    return verdicts, scores.errors


def select_kept(verdicts: Sequence[Verdict], rule: str = "all") -> tuple[list[Verdict], int]:
    """(kept, duplicates dropped) of the accepted samples: "all", the "shortest" (fewest characters of
    thinking + answer; the first on a tie) or the "first". Duplicates share both thinking and answer."""
    if rule not in KEEP_RULES:
        raise AhaError(f"unknown keep rule {rule!r}; use one of {', '.join(KEEP_RULES)}")
    unique, seen = [], set()
    for verdict in verdicts:
        if verdict.rejected is None:
            key = (verdict.sample.thinking, verdict.sample.answer)
            if key not in seen:
                seen.add(key)
                unique.append(verdict)
    accepted = sum(verdict.rejected is None for verdict in verdicts)
    duplicates = accepted - len(unique)
    if rule == "first" or not unique:
        return unique[:1], duplicates
    if rule == "shortest":
        return [min(unique, key=lambda v: len(v.sample.thinking) + len(v.sample.answer))], duplicates
    return unique, duplicates


# Resumable output ---------------------------------------------------------------------------------

def progress_path(out_path: Path) -> Path:
    """The sidecar of finished prompt ids: traces.jsonl → traces.progress.jsonl."""
    return out_path.with_name(out_path.name.removesuffix(".jsonl") + ".progress.jsonl")


def _append_line(stream, record: dict) -> None:
    """One JSON line, flushed and fsynced: a crash loses at most the line being written."""
    stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    stream.flush()
    os.fsync(stream.fileno())


def _complete_lines(path: Path) -> tuple[list[tuple[str, dict]], bool]:
    """(text, object) of each whole JSON line of a file, and whether anything after them was cut off
    (a last line without its newline or not valid JSON: what a crash mid-write leaves)."""
    lines, damaged = [], False
    if not path.exists():
        return lines, damaged
    with open(path, encoding="utf-8", errors="replace") as stream:
        for text in stream:
            if not text.endswith("\n"):
                damaged = True
                break
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError:
                damaged = True
                continue
            if isinstance(record, dict):
                lines.append((text, record))
    return lines, damaged


def _rewrite(path: Path, lines: Sequence[str]) -> None:
    """Replace a file by these lines atomically (temp file beside it, fsync, rename)."""
    atomic_write_text(path, "".join(lines))


def _resume(out_path: Path, config: dict, force: bool, on_event: OnEvent) -> dict[str, dict]:
    """Prepare the output for appending; returns the progress records of prompts finished before.
    Trace lines of prompts that never finished (a crash between their lines and their progress record)
    and a cut-off last line in either file are removed."""
    sidecar = progress_path(out_path)
    if force:
        for path in (out_path, sidecar):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if sidecar.exists() and not out_path.exists():
        sidecar.unlink()  # the traces were deleted: their progress means nothing any more
    if not sidecar.exists():
        if out_path.exists() and out_path.stat().st_size > 0:
            raise AhaError(f"{out_path} exists but has no {sidecar.name} beside it, so it was not written by "
                           "`aha distill generate`; pass --force to overwrite it or choose another output")
        _rewrite(sidecar, [json.dumps({"config": config}, ensure_ascii=False) + "\n"])
        return {}
    progress_lines, progress_damaged = _complete_lines(sidecar)
    header = next((record["config"] for _, record in progress_lines if "config" in record), None)
    done = {record["prompt_id"]: record for _, record in progress_lines if "prompt_id" in record}
    trace_lines, traces_damaged = _complete_lines(out_path)
    kept = [text for text, record in trace_lines if record.get("prompt_id") in done]
    if progress_damaged:
        _rewrite(sidecar, [text for text, _ in progress_lines])
    if traces_damaged or len(kept) != len(trace_lines):
        _rewrite(out_path, kept)
        dropped = len(trace_lines) - len(kept) + traces_damaged
        on_event(make_event("log", level="warning", message=f"removed {dropped} line(s) of unfinished prompts or "
                                                            f"cut off by a crash from {out_path.name}"))
    if header is not None:
        changed = sorted(key for key in set(header) | set(config) if key not in ("resumed", "output")
                         and header.get(key) != config.get(key))
        if changed:
            on_event(make_event("log", level="warning",
                                message=f"resuming {out_path.name} with different settings ({', '.join(changed)}); "
                                        "use --force or another output to start over"))
    return done


# Trace generation ---------------------------------------------------------------------------------

@dataclass
class GenerateStats:
    """What a trace-generation run did (this run only; `skipped` prompts were done before)."""

    output: str
    prompts: int = 0                       # distinct prompts in the dataset (a repeated row counts once)
    skipped: int = 0                       # finished by an earlier run
    prompts_done: int = 0                  # finished by this run
    samples: int = 0                       # replies generated
    accepted: int = 0                      # replies that passed verification
    duplicates: int = 0                    # accepted replies equal to an earlier one of the same prompt
    kept: int = 0                          # lines written
    rejected: dict[str, int] = field(default_factory=dict)  # reason → count
    seconds: float = 0.0
    status: str = "running"                # "complete" | "cancelled" | "incomplete"
    run_id: int | None = None

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.samples if self.samples else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": round(self.acceptance_rate, 6),
                "samples_per_s": round(self.samples_per_s, 6)}

    def metrics(self) -> dict[str, float]:
        return {"samples": self.samples, "accepted": self.accepted, "kept": self.kept,
                "acceptance_rate": self.acceptance_rate, "samples_per_s": self.samples_per_s}


@dataclass(frozen=True)
class GenerateConfig:
    """`aha distill generate` settings: the teacher, the prompts, the sampling and verification of
    generate_traces, and the output file."""

    teacher: str = setting("", "the teacher: gguf:PATH (llama.cpp in-process), hf:FOLDER (transformers) or "
                               "openai:BASE_URL (Ollama, llama.cpp server, vLLM, LM Studio; e.g. "
                               "openai:http://localhost:11434/v1)", "Model", metavar="KIND:TARGET")
    model: str | None = setting(None, "model name on an openai: endpoint (unset: the one it serves)", "Model")
    api_key_env: str | None = setting(None, "environment variable holding the endpoint's API key", "Model",
                                      metavar="VAR")
    concurrency: int = setting(4, "requests in flight to an endpoint", "Model")
    timeout: float = setting(600.0, "seconds to wait for one endpoint reply", "Model")
    n_ctx: int = setting(4096, "context size of a gguf: teacher", "Model")
    dataset: str = setting("", f"the prompts: a built-in task ({', '.join(TASKS)}), a .jsonl/.csv/.parquet file with "
                               "a prompt and an answer column, or a Hugging Face dataset owner/name[:split]", "Data")
    prompt_column: str = setting("prompt", "column holding the prompt", "Data")
    answer_column: str | None = setting(None, "column holding the ground truth (unset: answer, when the accuracy "
                                              "reward needs it)", "Data")
    limit: int | None = setting(None, f"use only the first N rows (unset: all of a file; a built-in task: "
                                      f"{TASK_ROWS} problems)", "Data")
    k: int = setting(4, "samples per prompt", "Rollouts")
    keep: str = setting("all", "which accepted samples of a prompt to write, duplicates dropped: all, the shortest "
                               "or the first", "Rollouts", choices=KEEP_RULES)
    reward: tuple[str, ...] = setting(DEFAULT_REWARDS, "verifier: accuracy, format, length, repetition or "
                                                       "path.py:function; repeat the flag for several", "Rollouts",
                                      metavar="NAME", repeat=True)
    temperature: float = setting(r1.TEMPERATURE, "the teacher's sampling temperature; DeepSeek advises 0.6 for R1 "
                                                 "models", "Rollouts")
    top_p: float = setting(r1.TOP_P, "nucleus sampling: the smallest token set with this much probability",
                           "Rollouts")
    max_tokens: int = setting(4096, "reply budget in tokens (thinking + answer)", "Rollouts")
    seed: int | None = setting(None, "sampling seed (sample i of a prompt uses seed + i; unset: the teacher's own "
                                     "randomness)", "Rollouts")
    output: str = setting("", "the traces .jsonl to write (resumed when it exists)", "Logging", short="-o",
                          metavar="FILE")
    force: bool = setting(False, "start over: delete an existing output first", "Logging")


def generate_traces(teacher: Teacher, rows: Iterable[dict], *, k: int, out_path: str | Path,
                    rewards: Sequence = DEFAULT_REWARDS, reward_weights: Sequence[float] | None = None,
                    keep: str = "all", sampling: Sampling | None = None, pass_threshold: float = 1.0,
                    on_event: OnEvent = ignore, cancel=None, store=None, force: bool = False,
                    command: Mapping | None = None) -> GenerateStats:
    """Sample k replies per prompt from `teacher`, verify them with `rewards` (engine.train.rewards specs:
    built-in names or path.py:function), apply the `keep` rule, and append one JSON object per kept
    reply to `out_path`:

        {prompt_id, prompt, gold, thinking, answer, rewards{name: value}, reward, sample,
         teacher{kind, name, …}, sampling{temperature, top_p, max_tokens, seed}, timing{…}, usage{…}}

    Resumable: prompts listed in the progress file beside the output (finished ones, including those
    whose replies were all rejected) are skipped. Emits progress/metrics/sample/log events; with a
    `store`, records a "generate" run with per-prompt metrics, and `command` ({argv, cwd}: how the
    CLI was called) in its config so `aha runs resume` can call it again. Returns this run's stats."""
    from engine.train.rewards import RewardSet

    if k < 1:
        raise AhaError(f"k must be at least 1 (samples per prompt), got {k}")
    if keep not in KEEP_RULES:
        raise AhaError(f"unknown keep rule {keep!r}; use one of {', '.join(KEEP_RULES)}")
    reward_set = RewardSet(list(rewards), reward_weights)
    rows = _checked_rows(rows, needs_answer="accuracy" in reward_set.names)
    sampling = sampling or Sampling()
    out_path = Path(out_path).expanduser()
    config = {"teacher": teacher.describe(), "k": k, "keep": keep, "rewards": list(reward_set.names),
              "reward_weights": reward_set.weights, "pass_threshold": pass_threshold,
              "sampling": asdict(sampling), "output": str(out_path)}
    done = _resume(out_path, config, force, on_event)
    ids = [prompt_id(row) for row in rows]
    first: dict[str, int] = {}
    for index, identity in enumerate(ids):
        first.setdefault(identity, index)  # a repeated row is one prompt
    pending = [index for identity, index in first.items() if identity not in done]
    stats = GenerateStats(output=str(out_path), prompts=len(first), skipped=len(first) - len(pending))
    if stats.skipped:
        on_event(make_event("log", message=f"resuming {out_path.name}: {stats.skipped} of {stats.prompts} prompts "
                                           "done already"))
    run_id = None
    if store is not None:
        run_id = store.create_run("generate", config={**config, "resumed": stats.skipped,
                                                              **({"command": dict(command)} if command else {})},
                                  dir=out_path.parent, status="running", pid=os.getpid())
        stats.run_id = run_id
        on_event(make_event("start", kind="generate", pid=os.getpid(), stages=[], run_id=run_id, run_dir=None))
    progress = Progress(on_event, "generate", total=stats.prompts, unit="prompts")
    progress.update(stats.skipped, force=True)
    started = time.monotonic()
    teacher_info = teacher.describe()
    try:
        with open(out_path, "a", encoding="utf-8", newline="\n") as traces, \
                open(progress_path(out_path), "a", encoding="utf-8", newline="\n") as sidecar:
            prompts = [rows[index]["prompt"] for index in pending]
            for position, samples in teacher.generate(prompts, k, sampling, cancel):
                row = rows[pending[position]]
                identity = ids[pending[position]]
                verdicts, errors = verify(reward_set, row["prompt"], row, samples, pass_threshold)
                for line in errors:
                    on_event(make_event("log", level="warning", message=line))
                kept, duplicates = select_kept(verdicts, keep)
                for verdict in kept:
                    _append_line(traces, _trace_record(identity, row, verdict, teacher_info))
                rejected: dict[str, int] = {}
                for verdict in verdicts:
                    if verdict.rejected is not None:
                        rejected[verdict.rejected] = rejected.get(verdict.rejected, 0) + 1
                accepted = len(verdicts) - sum(rejected.values())
                _append_line(sidecar, {"prompt_id": identity, "samples": len(verdicts), "accepted": accepted,
                                       "duplicates": duplicates, "kept": len(kept), "rejected": rejected})
                stats.prompts_done += 1
                stats.samples += len(verdicts)
                stats.accepted += accepted
                stats.duplicates += duplicates
                stats.kept += len(kept)
                for reason, count in rejected.items():
                    stats.rejected[reason] = stats.rejected.get(reason, 0) + count
                stats.seconds = time.monotonic() - started
                _report(on_event, store, run_id, stats, identity, row, verdicts, kept, progress)
        stats.seconds = time.monotonic() - started
        finished = stats.skipped + stats.prompts_done == stats.prompts
        stats.status = "complete" if finished else "cancelled" if is_cancelled(cancel) else "incomplete"
        if not finished:  # a finished run's last update was shown (done = total always is)
            progress.update(stats.skipped + stats.prompts_done, force=True)
    except BaseException:
        if store is not None:
            store.update_run_status(run_id, "error")
        raise
    if store is not None:
        store.update_run_status(run_id, stats.status)
        store.add_artifact("traces", out_path, run_id=run_id, meta={"kept": stats.kept, "samples": stats.samples})
    on_event(make_event("artifact", kind="traces", path=str(out_path)))
    return stats


def _completion(verdict: Verdict, kept: bool) -> dict:
    """A teacher reply in the `sample` event's shape (engine.events.Completion)."""
    sample = verdict.sample
    length = sample.usage.get("completion_tokens")
    return {"text": sample.raw, "thinking": sample.thinking, "answer_text": sample.answer, "rewards": verdict.rewards,
            "reward": verdict.reward, "accepted": kept, "length": int(length) if length is not None else None,
            "truncated": sample.finish_reason == "length"}


def _text(value) -> str | None:
    return None if value is None else str(value)


def _checked_rows(rows: Iterable[dict], needs_answer: bool) -> list[dict]:
    rows = list(rows)
    if not rows:
        raise AhaError("the dataset has no rows; give at least one prompt")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise AhaError(f"dataset row {number} has no 'prompt' text; each row needs a prompt")
        if needs_answer and row.get("answer") is None:
            raise AhaError(f"dataset row {number} has no 'answer' (the ground truth the accuracy reward checks); "
                           "add one or leave out the accuracy reward")
    return rows


def _trace_record(identity: str, row: dict, verdict: Verdict, teacher_info: dict) -> dict:
    sample = verdict.sample
    return {"prompt_id": identity, "prompt": row["prompt"], "gold": row.get("answer"),
            "thinking": sample.thinking, "answer": sample.answer, "rewards": verdict.rewards,
            "reward": verdict.reward, "sample": verdict.index, "teacher": teacher_info,
            "sampling": sample.sampling, "timing": sample.timing, "usage": sample.usage}


def _report(on_event: OnEvent, store, run_id: int | None, stats: GenerateStats, identity: str, row: dict,
            verdicts: list[Verdict], kept: list[Verdict], progress: Progress) -> None:
    """One prompt done: its `sample` (every reply, `accepted` = kept in the output), the run's acceptance
    counts as `metrics`, progress."""
    step = stats.skipped + stats.prompts_done
    kept_ids = {id(verdict) for verdict in kept}
    on_event(make_event("sample", step=step, prompt_id=identity, prompt=row["prompt"], answer=_text(row.get("answer")),
                        completions=[_completion(verdict, id(verdict) in kept_ids) for verdict in verdicts]))
    on_event(make_event("metrics", step=step, **{name: round(value, 6) for name, value in stats.metrics().items()},
                        rejected=dict(stats.rejected)))
    progress.update(step, samples_per_s=round(stats.samples_per_s, 3),
                    acceptance_rate=round(stats.acceptance_rate, 4))
    if store is not None:
        store.add_metrics(run_id, step, stats.metrics())



# SFT on traces ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TraceSFTConfig(SFTConfig):
    """`aha distill sft` settings: SFTConfig's (TRL names), with the traces file as the training data and
    `dataset` as the held-out source (a built-in task, or a file with prompt and ground-truth answer). A
    built-in task without a traces file is both: its programmatic teacher's traces are the training data."""

    traces: str = setting("", "the training traces: JSONL from `aha distill generate` (prompt, thinking, answer "
                              "columns); unset with a built-in --dataset: the task's own teacher traces", "Data")
    dataset: str = setting("", "held-out prompts: a built-in task (addition, arithmetic: also its traces when no "
                               "--traces) or a prompt/answer file", "Data")
    thinking_column: str = setting("thinking", "the traces' column holding the teacher's reasoning", "Data")
    answer_column: str = setting("answer", "the traces' column holding the teacher's final answer", "Data")
    gold_column: str = setting("answer", "the held-out dataset file's column holding the ground truth", "Data")
    min_reward: float | None = setting(None, "drop traces whose `reward` is below this (or missing); unset keeps all",
                                       "Data")

    def validate(self) -> None:
        super(SFTConfig, self).validate()
        if not self.traces and not is_task(self.dataset):
            raise AhaError("no traces given: pass --traces traces.jsonl (written by `aha distill generate`), or "
                           f"--dataset {' or '.join(TASKS)} to learn a built-in task's own teacher traces")
        if self.per_device_train_batch_size % self.gradient_accumulation_steps:
            raise AhaError(f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) must divide "
                           f"per_device_train_batch_size ({self.per_device_train_batch_size})")
        if self.eval_steps and not (self.dataset or self.eval_dataset):
            raise AhaError("eval_steps needs held-out prompts: pass --dataset (a built-in task or a prompt/answer file)")
        if self.stop_at_accuracy is not None and not self.eval_steps:
            raise AhaError("stop_at_accuracy needs eval_steps (how often to measure held-out accuracy)")


def trace_completion(thinking: str, answer: str) -> str:
    """The assistant turn a student learns: `<think>\n{thinking}\n</think>\n\n{answer}`."""
    return f"<think>\n{thinking.strip()}\n</think>\n\n{answer.strip()}"


def completion_after_prefill(rendered_prompt: str, completion: str) -> str:
    """The part of `completion` the model generates: a template that pre-fills `<think>\n` (R1 templates
    since Feb 2025) already holds the opening, so the loss starts after it."""
    from engine.think import OPEN_TAG
    from engine.train.sampling import is_prefilled

    if not is_prefilled(rendered_prompt):
        return completion
    prefill = rendered_prompt[rendered_prompt.rfind(OPEN_TAG):]
    if completion.startswith(prefill):
        return completion[len(prefill):]
    return completion[len(OPEN_TAG):].lstrip("\n") if completion.startswith(OPEN_TAG) else completion


def task_trace(row: dict, tokenizer, system_prompt: str | None = None) -> dict:
    """A built-in task's row with its programmatic teacher's completion (`<think>\n6+0=6\n</think>\n6`) in
    the student's format: trace_completion's, after what the student's template pre-fills."""
    from engine.train.sampling import render_prompt

    thinking, _, answer = row["completion"].removeprefix("<think>\n").partition("</think>\n")
    rendered = render_prompt(tokenizer, row["prompt"], system_prompt)
    return {**row, "completion": completion_after_prefill(rendered, trace_completion(thinking, answer))}


class TaskTraces:
    """A built-in task's endless stream of teacher traces in the student's format (PromptStream reads
    row(index)): the training data of `aha distill sft --dataset addition` without a traces file."""

    def __init__(self, task: TaskSource, tokenizer, system_prompt: str | None = None):
        self.task, self.tokenizer, self.system_prompt = task, tokenizer, system_prompt

    def row(self, index: int) -> dict:
        return task_trace(self.task.row(index), self.tokenizer, self.system_prompt)


def training_rows(config: TraceSFTConfig, tokenizer) -> list[dict] | TaskTraces:
    """What the student learns: the traces file's rows (load_traces), or without one the built-in task's
    teacher traces (config.dataset, drawn with config.seed)."""
    if config.traces:
        return load_traces(config, tokenizer)
    return TaskTraces(TaskSource(config.dataset, config.seed), tokenizer, config.system_prompt)


def load_traces(config: TraceSFTConfig, tokenizer) -> list[dict]:
    """Rows {prompt, answer (gold when present), completion} of the traces file: missing columns are an
    AhaError with the line; rows with an empty answer, below min_reward or repeated are dropped; none
    left is an AhaError."""
    from engine.train.data import load_rows
    from engine.train.sampling import render_prompt

    rows = load_rows(config.traces, config.prompt_column, None, required=(config.thinking_column, config.answer_column))
    kept, seen, rendered = [], set(), {}
    for row in rows:
        thinking, answer = str(row[config.thinking_column]), str(row[config.answer_column])
        if not answer.strip() or not str(row["prompt"]).strip():
            continue
        if config.min_reward is not None and not (isinstance(row.get("reward"), int | float)
                                                  and row["reward"] >= config.min_reward):
            continue
        key = (row["prompt"], thinking, answer)
        if key in seen:
            continue
        seen.add(key)
        if row["prompt"] not in rendered:
            rendered[row["prompt"]] = render_prompt(tokenizer, row["prompt"], config.system_prompt)
        completion = completion_after_prefill(rendered[row["prompt"]], trace_completion(thinking, answer))
        kept.append({"prompt": row["prompt"], "answer": row.get("gold"), "completion": completion})
    if not kept:
        reward = f", min_reward {config.min_reward}" if config.min_reward is not None else ""
        raise AhaError(f"no traces left in {config.traces} after filtering ({len(rows)} rows; empty answers, "
                       f"duplicates{reward} dropped)")
    return kept


def heldout_rows(config: TraceSFTConfig, tokenizer) -> list[dict]:
    """Held-out rows {prompt, answer, completion?}: a built-in task's fixed sample (with its teacher's
    trace, for the held-out loss) or a dataset's first eval_samples rows."""
    spec = config.eval_dataset or config.dataset
    if not config.eval_steps or not spec:
        return []
    source = open_dataset(spec, config.seed, config.prompt_column, config.gold_column)
    if isinstance(source, TaskSource):
        return [task_trace(row, tokenizer, config.system_prompt) for row in source.heldout(config.eval_samples)]
    return source[:config.eval_samples]


class TraceSFTStep(SFTStep):
    """SFTStep with the held-out loss beside held-out accuracy."""

    def evaluate(self) -> dict[str, float]:
        import torch

        from engine.train.sft import build_batch, sft_loss

        metrics = super().evaluate()
        rows = [row for row in self.heldout if row.get("completion")]
        if rows:
            trainer, total, tokens = self.trainer, 0.0, 0.0
            with torch.no_grad():
                for start in range(0, len(rows), 64):
                    batch = build_batch(trainer.tokenizer, rows[start:start + 64], system_prompt=self.config.system_prompt,
                                        max_length=self.config.max_length, device=trainer.device)
                    _, details = sft_loss(trainer.model, batch)
                    total += details["loss"] * details["tokens"]
                    tokens += details["tokens"]
            metrics["eval/loss"] = total / max(tokens, 1.0)
        return metrics


def load_trace_sft_config(path: str | Path | None = None, overrides: dict | None = None) -> TraceSFTConfig:
    """Defaults, then the TOML file, then flags; validated."""
    from engine.train.config import load_config

    config = load_config(TraceSFTConfig, path, overrides)
    config.validate()
    return config


def train_sft_on_traces(config: TraceSFTConfig | None = None, *, resume: str | Path | None = None,
                        overrides: dict | None = None, on_event: OnEvent = ignore,
                        cancel: CancelToken | None = None) -> dict:
    """SFT of config.model (the student) on config.traces, a new run or the run in `resume` (its saved
    settings; `overrides` may change max_steps, save_steps, logging_steps, eval_steps). Returns {"status",
    "run_dir", "step", "adapter"/"model", "eval_accuracy"}; the caller emits `done`."""
    from engine.train.config import run_config
    from engine.train.core import check_model_folder, load_tokenizer
    from engine.train.sft import run_sft

    config = run_config(TraceSFTConfig, config, resume, overrides)
    tokenizer = load_tokenizer(check_model_folder(config.model))
    rows = training_rows(config, tokenizer)
    heldout = heldout_rows(config, tokenizer)
    return run_sft(config, rows, heldout, resume=resume, on_event=on_event, cancel=cancel, kind="distill-sft",
                   make_step=TraceSFTStep)


# Logit distillation on traces ---------------------------------------------------------------------

@dataclass(frozen=True)
class KDConfig(TraceSFTConfig):
    """`aha distill kd` settings: TraceSFTConfig's, plus the teacher and kd_loss's settings (GKD's names)."""

    teacher: str = setting("", "the teacher: a Hugging Face checkpoint folder sharing the student's tokenizer",
                           "Model")
    kd_kind: str = setting("forward_kl", "the divergence to the teacher's next-token distribution: forward_kl, "
                                         "reverse_kl or jsd (GKD's generalized JSD)", "Loss", choices=KD_KINDS)
    beta: float = setting(0.5, "GKD's β: the JSD interpolation between the two distributions (kd_kind = jsd)",
                          "Loss")
    temperature: float = setting(1.0, "softens both distributions in the loss, and samples the student's "
                                      "on-policy sequences (as in TRL's GKD)", "Loss")
    lmbda: float = setting(0.0, "share of steps on the student's own samples of the prompts instead of the traces "
                                "(GKD's on-policy fraction λ, 0 to 1)", "Loss")

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise AhaError("no teacher given: pass --teacher HF_FOLDER (a model sharing the student's tokenizer)")
        if self.kd_kind not in KD_KINDS:
            raise AhaError(f"kd_kind must be one of {', '.join(KD_KINDS)}, got {self.kd_kind!r}")
        if not 0.0 <= self.lmbda <= 1.0:
            raise AhaError(f"lmbda is the fraction of on-policy steps, between 0 and 1; got {self.lmbda}")
        if self.temperature <= 0:
            raise AhaError(f"temperature must be > 0, got {self.temperature}")


def check_same_tokenizer(student, teacher, student_name: str = "student", teacher_name: str = "teacher") -> None:
    """Refuse a teacher whose tokenizer differs from the student's, saying how (vocabulary or special ids)."""
    student_vocab, teacher_vocab = student.get_vocab(), teacher.get_vocab()
    if student_vocab != teacher_vocab:
        only = sorted(set(student_vocab) ^ set(teacher_vocab))
        what = (f"{len(student_vocab)} vs {len(teacher_vocab)} tokens" if only
                else "the same tokens with different ids")
        example = f", e.g. {only[0]!r}" if only else ""
        raise AhaError(f"the {teacher_name}'s tokenizer differs from the {student_name}'s ({what}{example}); logit "
                       "distillation needs a teacher with the same tokenizer")
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(student, name) != getattr(teacher, name):
            raise AhaError(f"the {teacher_name}'s {name} ({getattr(teacher, name)}) differs from the {student_name}'s "
                           f"({getattr(student, name)}); logit distillation needs the same tokenizer")


class KDStep(TraceSFTStep):
    """One logit-distillation step: kd_loss between the student and the frozen teacher on assistant
    tokens (teacher logits under no_grad). With probability lmbda the step's sequences are the student's
    own samples of the prompts (on-policy, GKD) instead of the traces' completions."""

    def __init__(self, config: KDConfig, trainer, stream, heldout: list[dict]):
        import dataclasses

        from engine.train.core import load_model

        super().__init__(config, trainer, stream, heldout)
        # Frozen, in the student's precision (fp32 on CPU, bf16 on CUDA; NF4 when the student is QLoRA).
        self.teacher, _ = load_model(dataclasses.replace(config, model=config.teacher), trainer.device, trainable=False)
        self.vocabulary = shared_vocabulary(trainer.tokenizer, trainer.model, self.teacher)
        self.on_policy = False

    def batches(self, rows: list[dict], micro: int):
        import random

        self.on_policy = self.config.lmbda > 0 and random.random() < self.config.lmbda
        if not self.on_policy:
            return super().batches(rows, micro)
        return [self._student_batch(rows[start:start + micro]) for start in range(0, len(rows), micro)]

    def _student_batch(self, rows: list[dict]):
        """The student's samples of the rows' prompts (temperature, max_completion_length), the loss on
        every sampled token up to and including EOS."""
        from engine.train.core import StepAbandoned
        from engine.train.sampling import encode_prompts, eos_token_ids, pad_token_id, sample
        from engine.train.sft import pad_batch

        config, trainer = self.config, self.trainer
        prompts, _, _ = encode_prompts(trainer.tokenizer, [row["prompt"] for row in rows], config.system_prompt)
        pad = pad_token_id(trainer.tokenizer)
        with trainer.sampling():
            rollout = sample(trainer.model, prompts, max_new_tokens=config.max_completion_length,
                             eos_ids=eos_token_ids(trainer.tokenizer, trainer.model), pad_id=pad,
                             temperature=config.temperature, cancel=trainer.step_cancel)
        if rollout.cancelled:
            raise StepAbandoned
        sequences, targets = [], []
        for prompt, completion, length in zip(prompts, rollout.completion_ids.tolist(), rollout.lengths.tolist(),
                                              strict=True):
            sequence = (prompt + completion[:length])[:config.max_length] if config.max_length else prompt + completion[:length]
            sequences.append(sequence)
            targets.append([0] * len(prompt) + [1] * (len(sequence) - len(prompt)))
        return pad_batch(sequences, targets, pad, trainer.device)

    def loss(self, batch):
        """kd_loss on the batch's assistant tokens; from the two models' hidden states, chunk by chunk
        (fused_head_kd: no (B, L, V) logits), where both output layers allow it."""
        import torch

        from engine.train.fused_head import fused_head_kd, head_outputs_hidden
        from engine.train.sft import model_logits

        config, student = self.config, self.trainer.training_model
        mask = batch.loss_mask[:, 1:].float()  # (B, L−1)
        settings = dict(kind=config.kd_kind, beta=config.beta, temperature=config.temperature)
        with torch.no_grad(), head_outputs_hidden(self.teacher) as teacher_head:
            teacher_out = model_logits(self.teacher, batch)  # (B, L−1, Ht) or (B, L−1, V)
        with head_outputs_hidden(student) as student_head:
            student_out = model_logits(student, batch)  # (B, L−1, Hs) or (B, L−1, V)
        if teacher_head is not None and student_head is not None:
            loss = fused_head_kd(student_out, student_head, teacher_out, teacher_head, mask,
                                 vocabulary=self.vocabulary, **settings)
        else:
            with torch.no_grad():
                teacher_logits = _logits(teacher_out, teacher_head)[..., :self.vocabulary]  # (B, L−1, V)
            student_logits = _logits(student_out, student_head)[..., :self.vocabulary]  # (B, L−1, V)
            loss = kd_loss(student_logits.float(), teacher_logits.float(), mask, **settings)
        value = float(loss.detach())
        return loss, {"loss": value, "kd_loss": value, "on_policy": float(self.on_policy), "tokens": float(mask.sum())}


def _logits(output, head):
    """Logits from a forward's output: the output itself, or the head applied to the hidden states it is
    when head_outputs_hidden swapped that head out."""
    return output if head is None else head(output)


def shared_vocabulary(tokenizer, student, teacher) -> int:
    """The logit columns kd_loss compares: the tokenizer's tokens. Output layers are often padded past
    them (Qwen2.5-1.5B has 151,936 rows, -7B 152,064, for one 151,665-token tokenizer); those rows are
    never real tokens and are cut. A layer smaller than the tokenizer is refused."""
    size = len(tokenizer)
    for name, model in (("student", student), ("teacher", teacher)):
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < size:
            raise AhaError(f"the {name}'s output layer has {rows} rows but the tokenizer has {size} tokens; "
                           "logit distillation needs a model that covers the whole tokenizer")
    return size


def train_kd_on_traces(config: KDConfig | None = None, *, resume: str | Path | None = None,
                       overrides: dict | None = None, on_event: OnEvent = ignore,
                       cancel: CancelToken | None = None) -> dict:
    """Logit distillation of config.model from config.teacher on config.traces (`aha distill kd`); the same
    run, resume and result as train_sft_on_traces."""
    from engine.train.config import run_config
    from engine.train.core import check_model_folder, load_tokenizer
    from engine.train.sft import run_sft

    config = run_config(KDConfig, config, resume, overrides)
    tokenizer = load_tokenizer(check_model_folder(config.model))
    check_same_tokenizer(tokenizer, load_tokenizer(check_model_folder(config.teacher)))
    rows = training_rows(config, tokenizer)
    heldout = heldout_rows(config, tokenizer)
    return run_sft(config, rows, heldout, resume=resume, on_event=on_event, cancel=cancel, kind="distill-kd",
                   make_step=KDStep)
