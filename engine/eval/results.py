"""An eval run's results as the Eval pane reads them: eval.json (the summary per model and the comparisons) and
samples.jsonl (one record per model and problem), or the same records arriving as a job's `sample` events.

Pure reading and arithmetic on those records, no Qt, beside the runner (engine.eval.runner) that writes the
files. It does not score anything: right/wrong, the extracted answer and the majority are the runner's, read
as written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from engine.train.follow import read_jsonl

EVAL_JSON = "eval.json"
SAMPLES = "samples.jsonl"


@dataclass
class Problem:
    """One problem of the eval: its prompt and reference answer, and each model's record (model index → the
    samples.jsonl record: `completions`, `majority`)."""

    prompt_id: str
    prompt: str
    answer: str | None
    by_model: dict[int, dict] = field(default_factory=dict)
    place: int | None = None        # its place in the dataset (the record's `problem`), None in an older run

    def right_total(self, model: int) -> tuple[int, int]:
        """(samples scored right, samples) of one model on this problem; (0, 0) when it has none yet."""
        completions = (self.by_model.get(model) or {}).get("completions") or []
        return sum(bool(is_right(completion)) for completion in completions), len(completions)


def is_right(completion: dict) -> bool:
    """A sample's verdict: `accepted` as the runner wrote it, else its `correct` reward (1.0 = right)."""
    if completion.get("accepted") is not None:
        return bool(completion["accepted"])
    return (completion.get("rewards") or {}).get("correct") == 1.0


class EvalResults:
    """What the pane shows of one eval: `summary` (eval.json's content), the models' labels by index, and the
    problems in the dataset's order (the records' `problem`; samples arrive in the order they finish), else in the
    order their first record came. `add_sample` takes a record (or a `sample` event)."""

    def __init__(self) -> None:
        self.summary: dict = {}
        self.labels: dict[int, str] = {}
        self.problems: dict[str, Problem] = {}

    @classmethod
    def read(cls, directory: str | Path) -> EvalResults:
        """An eval run directory's eval.json and samples.jsonl (either may be missing while the run starts)."""
        results = cls()
        directory = Path(directory)
        results.set_summary(read_summary(directory))
        for record in read_jsonl(directory / SAMPLES):
            results.add_sample(record)
        return results

    def set_summary(self, summary: dict | None) -> None:
        self.summary = dict(summary or {})
        for model in self.summary.get("models") or []:
            if isinstance(model.get("index"), int):
                self.labels[model["index"]] = str(model.get("label") or f"model {model['index'] + 1}")

    def add_sample(self, record: dict) -> bool:
        """One (model, problem) record in; False for one without a model index or a prompt id. A record that
        comes again (the job's event, then the file's line) replaces the first."""
        model, prompt_id = record.get("step"), record.get("prompt_id")
        if not isinstance(model, int) or prompt_id is None:
            return False
        prompt_id = str(prompt_id)
        problem = self.problems.get(prompt_id)
        if problem is None:
            problem = self.problems[prompt_id] = Problem(prompt_id, str(record.get("prompt") or ""),
                                                         None if record.get("answer") is None else str(record["answer"]))
        if isinstance(record.get("problem"), int):
            problem.place = record["problem"]
        problem.by_model[model] = {"completions": list(record.get("completions") or []),
                                   "majority": record.get("majority")}
        if record.get("model") and model not in self.labels:
            self.labels[model] = str(record["model"])
        return True

    @property
    def models(self) -> list[dict]:
        """eval.json's model entries, by index."""
        return sorted(self.summary.get("models") or [], key=lambda model: model.get("index", 0))

    @property
    def k(self) -> int | None:
        return self.summary.get("k")

    def model_indexes(self) -> list[int]:
        """Every model the summary or a record names, in index order."""
        return sorted(set(self.labels))

    def label(self, model: int) -> str:
        return self.labels.get(model, f"model {model + 1}")

    def comparison(self, model: int) -> dict | None:
        """The comparison of `model` against the first (eval.json's `comparisons`), if there is one."""
        return next((item for item in self.summary.get("comparisons") or [] if item.get("b") == model), None)

    def problem_list(self) -> list[Problem]:
        """The problems in the dataset's order; any without a place (an older run's) after, as they came."""
        return sorted(self.problems.values(), key=lambda problem: (problem.place is None, problem.place or 0))


def read_summary(directory: str | Path) -> dict:
    """eval.json of a run directory ({} when it is not written yet or is being replaced)."""
    path = Path(directory) / EVAL_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def percent(value) -> str:
    """0.625 → '62.5%'; None or NaN → '–'."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "–"
    return f"{value * 100:.1f}%"


def tokens(value) -> str:
    """A mean token count: 312.4 → '312'; None → '–'."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "–"
    return f"{value:,.0f}"


def pass_at_k_key(model: dict, k: int | None) -> str | None:
    """The largest pass@n the model's summary has (pass@k itself when there), as its key in `pass@k`."""
    found = model.get("pass@k") or {}
    if k is not None and str(k) in found:
        return str(k)
    numbers = [int(key) for key in found if str(key).isdigit()]
    return str(max(numbers)) if numbers else None


def difference_text(comparison: dict | None) -> str:
    """The comparison's short cell: '+12.0 pts' with a mark when significant, '+1.5 (noise)' when within noise."""
    if not comparison or not isinstance(comparison.get("difference"), (int, float)):
        return "–"
    points = comparison["difference"] * 100
    return f"{points:+.1f} pts" + (" ✓" if comparison.get("significant") else " (noise)")


def thinking_curve(model: dict) -> tuple[list[float], list[float], list[int]]:
    """(x: the middle of each thinking-length bucket, y: its accuracy, samples per bucket) of a model's
    `by_thinking_length`, buckets without samples left out."""
    xs, ys, counts = [], [], []
    for bucket in model.get("by_thinking_length") or []:
        if not bucket.get("samples") or bucket.get("accuracy") is None:
            continue
        xs.append((float(bucket["low"]) + float(bucket["high"])) / 2)
        ys.append(float(bucket["accuracy"]))
        counts.append(int(bucket["samples"]))
    return xs, ys, counts


# What to evaluate --------------------------------------------------------------------------------------------

TRAINED_KINDS = ("grpo", "sft", "distill-sft", "distill-kd")


def base_vs_run(run: dict) -> tuple[list[str], str]:
    """The models and dataset of "Evaluate base vs this run" for a training run (a store row): [the base model
    it trained, `run:ID`] and its held-out data (`eval_dataset`, else `dataset`: a built-in task evaluates on its
    held-out problems). Raises ValueError for a run that is not a finished training run.

    Example: a GRPO run 7 of /m/qwen on addition → (["hf:/m/qwen", "run:7"], "addition").
    """
    if run.get("kind") not in TRAINED_KINDS:
        raise ValueError(f"run {run.get('id')} is a {run.get('kind')} run, not a training run")
    config = run.get("config") or {}
    base = str(config.get("model") or "")
    if not base:
        raise ValueError(f"run {run.get('id')} records no base model")
    dataset = str(config.get("eval_dataset") or config.get("dataset") or "")
    return [f"hf:{base}", f"run:{run['id']}"], dataset


def spec_text(spec: str, endpoint_model: str | None = None) -> str:
    """How the models list names a spec: 'qwen-q4.gguf (GGUF)', 'run 7', 'http://host:8080/v1 · name'."""
    kind, _, value = spec.partition(":")
    if kind == "gguf":
        return f"{Path(value).name} (GGUF)"
    if kind == "hf":
        return f"{Path(value.split('+')[0]).name or value} (HF)"
    if kind == "run":
        return f"run {value} (its final checkpoint)"
    if kind == "openai":
        return f"{value} · {endpoint_model}" if endpoint_model else value
    return spec
