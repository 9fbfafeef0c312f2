"""SFT of a student on teacher traces (`aha distill sft`): the traces of `aha distill generate`, or a built-in
task's programmatic teacher traces (`--dataset addition`). The student's chat template renders the prompt
exactly as at inference, the assistant turn is `<think>\n{thinking}\n</think>\n\n{answer}` (after whatever
the template already pre-filled), the loss covers it only, and held-out loss and pass@1 (greedy, or over
num_generations_eval samples) are measured along the way. The loop is engine.train.session's, the step and batches engine.train.sft's.
"""


from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import AhaError
from engine.jobs import CancelToken, OnEvent, ignore
from engine.train.config import setting
from engine.train.data import TASKS, TaskSource, is_task, open_dataset
from engine.train.sft import SFTConfig, SFTStep, check_batch_settings

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
        check_batch_settings(self)
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


def training_rows(config: TraceSFTConfig, tokenizer, traces: list[dict] | None = None) -> list[dict] | TaskTraces:
    """What the student learns: the traces file's rows (load_traces; `traces` when read_traces already read
    them), or without one the built-in task's teacher traces (config.dataset, drawn with config.seed)."""
    if config.traces:
        return format_traces(config, traces if traces is not None else read_traces(config), tokenizer)
    return TaskTraces(TaskSource(config.dataset, config.seed), tokenizer, config.system_prompt)


def load_traces(config: TraceSFTConfig, tokenizer) -> list[dict]:
    """Rows {prompt, answer (gold when present), completion} of the traces file: missing columns are an
    AhaError with the line; rows with an empty answer, below min_reward or repeated are dropped; none
    left is an AhaError."""
    return format_traces(config, read_traces(config), tokenizer)


def read_traces(config: TraceSFTConfig) -> list[dict]:
    """The traces file's rows that are kept (load_traces' filtering), without a tokenizer: a trainer reads
    them first, so a problem with the file is said before the student is loaded."""
    from engine.train.data import load_rows

    rows = load_rows(config.traces, config.prompt_column, None, required=(config.thinking_column, config.answer_column))
    kept, seen = [], set()
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
        kept.append(row)
    if not kept:
        reward = f", min_reward {config.min_reward}" if config.min_reward is not None else ""
        raise AhaError(f"no traces left in {config.traces} after filtering ({len(rows)} rows; empty answers, "
                       f"duplicates{reward} dropped)")
    return kept


def format_traces(config: TraceSFTConfig, rows: list[dict], tokenizer) -> list[dict]:
    """read_traces' rows as {prompt, answer (gold), completion}: the completion after what the student's
    template pre-fills."""
    from engine.train.sampling import render_prompt

    rendered: dict[str, str] = {}
    formatted = []
    for row in rows:
        thinking, answer = str(row[config.thinking_column]), str(row[config.answer_column])
        if row["prompt"] not in rendered:
            rendered[row["prompt"]] = render_prompt(tokenizer, row["prompt"], config.system_prompt)
        completion = completion_after_prefill(rendered[row["prompt"]], trace_completion(thinking, answer))
        formatted.append({"prompt": row["prompt"], "answer": row.get("gold"), "completion": completion})
    return formatted


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
    folder = check_model_folder(config.model)
    traces = read_traces(config) if config.traces else None  # the file's problems first: transformers loads slowly
    tokenizer = load_tokenizer(folder)
    rows = training_rows(config, tokenizer, traces)
    heldout = heldout_rows(config, tokenizer)
    return run_sft(config, rows, heldout, resume=resume, on_event=on_event, cancel=cancel, kind="distill-sft",
                   make_step=TraceSFTStep)
