"""How a training run reads as text: one line per logged step, one per held-out evaluation and a summary
table at the end, built from the run's `progress`, `metrics` and `done` events alone (the events the GUI
reads too). Knows the metric names engine.train.grpo and engine.train.sft record, nothing of how they are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.jobs import format_rate, format_seconds

KIND_NAMES = {"grpo": "GRPO", "sft": "SFT", "kd": "Distillation"}


def run_kind(metrics: Mapping[str, Any]) -> str | None:
    """"grpo" for a GRPO step's metrics, "kd" for logit distillation's, "sft" for SFT's, None for any
    other `metrics` event (a trace generation's, say)."""
    if "reward" in metrics and "frac_reward_zero_std" in metrics:
        return "grpo"
    if "loss" in metrics and "learning_rate" in metrics:
        return "kd" if "kd_loss" in metrics else "sft"
    return None


# Numbers -------------------------------------------------------------------------------------------

def _value(function: Callable[[float], str]) -> Callable[[float | None], str]:
    """An unmeasured value (None: NaN in the run, or not recorded) shows as a dash."""
    return lambda value: "–" if value is None else function(value)


number = _value(lambda value: f"{value:.3f}")
percent = _value(lambda value: f"{value * 100:.0f}%")
percent1 = _value(lambda value: f"{value * 100:.1f}%")
small = _value(lambda value: f"{value:.2g}")
seconds = _value(format_seconds)
tokens_rate = _value(lambda value: format_rate(value, "tokens"))
length = _value(lambda value: f"{value:.0f}")


def reward_names(metrics: Mapping[str, Any]) -> list[str]:
    """The reward functions of a GRPO step (keys rewards/<name>/mean), in the run's order, without
    accuracy (shown on its own)."""
    names = [key[len("rewards/"):-len("/mean")] for key in metrics
             if key.startswith("rewards/") and key.endswith("/mean")]
    return [name for name in names if name != "accuracy"]


# One line per step ----------------------------------------------------------------------------------

def step_line(metrics: Mapping[str, Any], max_steps: int | None = None) -> str | None:
    """'step  3/10 · reward 0.412 (format 0.800) · accuracy 25% · …' for a training step's metrics event;
    None for metrics that are not a training step's."""
    kind = run_kind(metrics)
    if kind is None:
        return None
    step = metrics["step"]
    head = f"step {step:>{len(str(max_steps))}}/{max_steps}" if max_steps else f"step {step}"
    fields = _grpo_fields(metrics) if kind == "grpo" else _sft_fields(metrics)
    return " · ".join([head, *fields])


def _grpo_fields(metrics: Mapping[str, Any]) -> list[str]:
    get = metrics.get
    per_reward = ", ".join(f"{name} {number(get(f'rewards/{name}/mean'))}" for name in reward_names(metrics))
    fields = [f"reward {number(get('reward'))}" + (f" ({per_reward})" if per_reward else "")]
    if "accuracy" in metrics:
        fields.append(f"accuracy {percent(get('accuracy'))}")
    fields.append(f"zero-std groups {percent(get('frac_reward_zero_std'))}")
    if get("unscored"):
        fields.append(f"unscored {percent(get('unscored'))}")
    fields.append(f"length {length(get('completions/mean_length'))} tokens "
                  f"({percent(get('completions/clipped_ratio'))} clipped)")
    if "kl" in metrics:
        fields.append(f"KL {small(get('kl'))}")
    generation, training = get("generation_s"), get("training_s")
    if generation is not None and training is not None:
        fields.append(f"{seconds(generation + training)} (generation {seconds(generation)}, "
                      f"training {seconds(training)})")
    return fields


def _sft_fields(metrics: Mapping[str, Any]) -> list[str]:
    get = metrics.get
    fields = [f"loss {number(get('loss'))}"]
    if "token_accuracy" in metrics:
        fields.append(f"token accuracy {percent1(get('token_accuracy'))}")
    if get("on_policy"):
        fields.append("on the student's samples")
    fields.append(f"grad norm {small(get('grad_norm'))}")
    fields.append(f"lr {get('learning_rate'):.1e}" if get("learning_rate") is not None else "lr –")
    if "tokens_per_s" in metrics:
        fields.append(tokens_rate(get("tokens_per_s")))
    if "training_s" in metrics:
        fields.append(seconds(get("training_s")))
    return fields


def heldout_line(metrics: Mapping[str, Any]) -> str | None:
    """'held-out at step 20: loss 0.912 · accuracy 31.5% · format 98.0% · 4.2 s' when the step evaluated
    greedily; with k samples per prompt, 'pass@1 31.5% · cons@k 40.0%' in place of the accuracy."""
    get = metrics.get
    fields = []
    if "eval/loss" in metrics:
        fields.append(f"loss {number(get('eval/loss'))}")
    if "eval/pass@1" in metrics:
        fields.append(f"pass@1 {percent1(get('eval/pass@1'))}")
        if "eval/cons@k" in metrics:
            fields.append(f"cons@k {percent1(get('eval/cons@k'))}")
    elif "eval/accuracy" in metrics:
        fields.append(f"accuracy {percent1(get('eval/accuracy'))}")
    if "eval/format" in metrics:
        fields.append(f"format {percent1(get('eval/format'))}")
    if not fields:
        return None
    if "eval/seconds" in metrics:
        fields.append(seconds(get("eval/seconds")))
    return f"held-out at step {metrics['step']}: " + " · ".join(fields)


# The summary ---------------------------------------------------------------------------------------

def summary_rows(kind: str, history: list[Mapping[str, Any]]) -> list[tuple[str, str, Callable]]:
    """(label, metric key, format) of the summary table's rows for a run of `kind`."""
    if kind == "grpo":
        rows = [("reward", "reward", number)]
        rows += [(f"  {name}", f"rewards/{name}/mean", number) for name in reward_names(history[-1])]
        rows += [("accuracy", "accuracy", percent), ("zero-std groups", "frac_reward_zero_std", percent),
                 ("unscored", "unscored", percent), ("completion length", "completions/mean_length", length),
                 ("clipped", "completions/clipped_ratio", percent), ("KL", "kl", small),
                 ("generation", "generation_s", seconds), ("training", "training_s", seconds)]
    else:
        rows = [("loss", "loss", number), ("token accuracy", "token_accuracy", percent1),
                ("tokens/s", "tokens_per_s", _value(lambda value: f"{value:,.0f}")),
                ("step time", "training_s", seconds)]
    rows += [("held-out loss", "eval/loss", number), ("held-out accuracy", "eval/accuracy", percent1),
             ("held-out format", "eval/format", percent1)]
    if all(not record.get("unscored") for record in history):
        rows = [row for row in rows if row[1] != "unscored"]
    return rows


def summary_table(kind: str, history: list[Mapping[str, Any]]) -> list[str]:
    """first / last / mean over the logged steps of each measured value (rows no step recorded are left out)."""
    table = []
    for label, key, show in summary_rows(kind, history):
        values = [record[key] for record in history if record.get(key) is not None]
        if values:
            table.append((label, [show(values[0]), show(values[-1]), show(sum(values) / len(values))]))
    width = max([len(label) for label, _ in table] + [1])
    lines = [f"  {'':{width}}  {'first':>9}{'last':>9}{'mean':>9}"]
    lines += [f"  {label:{width}}  " + "".join(f"{cell:>9}" for cell in cells) for label, cells in table]
    return lines


class RunReport:
    """The text of a training run as its events arrive: `metrics(event)` → its step and held-out lines,
    `summary(done)` → the closing lines. Events of other jobs give no lines."""

    def __init__(self) -> None:
        self.history: list[dict] = []  # the training steps' metrics events
        self.max_steps: int | None = None
        self.last_progress: dict | None = None

    def progress(self, event: Mapping[str, Any]) -> None:
        if "max_steps" in event:
            self.max_steps = event["max_steps"]
            self.last_progress = dict(event)

    def metrics(self, event: Mapping[str, Any]) -> list[str]:
        line = step_line(event, self.max_steps)
        if line is None:
            return []
        self.history.append(dict(event))
        heldout = heldout_line(event)
        return [line] if heldout is None else [line, heldout]

    def summary(self, done: Mapping[str, Any]) -> list[str]:
        """'GRPO complete: 10 steps in 2:40 (16 s/step)', the table, the best held-out accuracy and the run
        directory; nothing when no training step was reported."""
        if not self.history:
            return []
        kind = run_kind(self.history[-1]) or "sft"
        result = done.get("result", {})
        step, status = result.get("step", self.history[-1]["step"]), done.get("status", "complete")
        progress = self.last_progress or {}
        ran, elapsed = progress.get("done", 0), progress.get("elapsed_s", 0.0)
        timing = f" in {format_seconds(elapsed)}" if elapsed else ""
        if ran and elapsed:
            timing += f" ({format_rate(ran / elapsed, 'steps')})"
        steps = f"{ran} step{'s' if ran != 1 else ''}"
        if status == "complete":
            head = f"{KIND_NAMES[kind]} complete at step {step}: {steps}{timing}"
        else:
            of = f" of {self.max_steps}" if self.max_steps else ""
            head = f"{KIND_NAMES[kind]} {status} at step {step}{of} after {steps}{timing}"
        lines = [head, *summary_table(kind, self.history)]
        evaluated = [record for record in self.history if record.get("eval/accuracy") is not None]
        best = max(evaluated, key=lambda record: record["eval/accuracy"], default=None)
        if best is not None and best is not evaluated[-1] and best["eval/accuracy"] > evaluated[-1]["eval/accuracy"]:
            lines.append(f"best held-out accuracy {percent1(best['eval/accuracy'])} at step {best['step']}")
        if result.get("run_dir"):
            lines.append(f"run directory: {result['run_dir']}")
            if status == "cancelled":
                lines.append(f"continue it with --resume {result['run_dir']}")
        return lines
