"""`aha runs`: the store's run rows joined with what each run directory holds (steps, last metrics, size),
as a table, a detail view or JSON; and the things done to a run as a whole: resume it with the command its
kind was started by, stop it (SIGINT, for a run started elsewhere), delete it. The Runs pane's rows (key
metric, duration), its settings diff and its duplicate/export sources are here too. Resume only builds the
argv (engine.cli runs it, so it speaks the same events); nothing here trains, generates or knows a run's
settings beyond a few names it shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import AhaError
from engine.run_report import step_line
from engine.store import ACTIVE_RUN_STATUSES, STALE_AFTER_S, Store, process_alive

# The command that continues a run, by kind (`--resume DIR` follows).
RESUME_COMMANDS = {"grpo": ("grpo",), "sft": ("distill", "sft"), "distill-sft": ("distill", "sft"),
                   "distill-kd": ("distill", "kd")}
# Trace generation resumes by being called again with the same output. Its kind is "generate"; stores
# written before the job contract call it "distill-generate".
GENERATE_KINDS = ("generate", "distill-generate")
# An evaluation resumes with `aha eval --resume DIR` (it skips the (model, problem) pairs done).
EVAL_KINDS = ("eval",)
# `aha demo` (engine.demo.pipeline): a run whose stages are runs of their own (in its directory, named in
# its demo.json); it is run again, not resumed, duplicated or exported as a whole.
DEMO_KINDS = ("demo",)
# `aha pipeline` (engine.pipeline): a run whose children (Store.child_runs) are its stage runs, in its directory;
# it resumes as a whole (`aha pipeline resume`), and is started again rather than duplicated.
PIPELINE_KINDS = ("pipeline",)
# Flags of the recorded `distill generate` argv left out when it is called again: --force would start over,
# --events is the resuming call's. Matched as argparse does, by any unambiguous prefix (e.g. --fo).
DROPPED_FLAGS = {"--force": False, "--events": True}  # flag → takes a value


@dataclass(frozen=True)
class RunSummary:
    """One run as `aha runs list` shows it (and `--json` writes it)."""

    id: int
    kind: str
    status: str
    model: str | None  # the trained checkpoint, or a trace generation's teacher
    dataset: str | None  # the training data: traces for SFT/KD, the prompts for GRPO and generation
    step: int | None  # the last step with metrics (prompts done, for a trace generation)
    max_steps: int | None
    dir: str | None
    created_at: float
    updated_at: float
    pid: int | None
    heartbeat_at: float | None
    config: dict
    parent_id: int | None = None  # the run this one is a stage of (a pipeline's), None: none

    def as_json(self) -> dict:
        return asdict(self)


def summarize(run: Mapping[str, Any], last_step: int | None = None) -> RunSummary:
    """A store row (`Store.get_run`) and its last metrics step (the store's; else metrics.jsonl's)."""
    config = run["config"]
    if last_step is None and run["dir"]:
        last_step = (last_metrics(run["dir"]) or {}).get("step")
    return RunSummary(run["id"], run["kind"], run["status"], _model(config), _dataset(config), last_step,
                      config.get("max_steps"), run["dir"], run["created_at"], run["updated_at"], run["pid"],
                      run["heartbeat_at"], config, run.get("parent_id"))


def _model(config: Mapping[str, Any]) -> str | None:
    if isinstance(config.get("models"), list) and config["models"]:  # an evaluation: its models, the first the baseline
        return " vs ".join(map(str, config["models"]))
    if config.get("model"):
        return str(config["model"])
    teacher = config.get("teacher")
    if isinstance(teacher, Mapping):
        return f"{teacher.get('kind')}:{teacher.get('name') or teacher.get('path') or teacher.get('url')}"
    return None


def _dataset(config: Mapping[str, Any]) -> str | None:
    argv = (config.get("command") or {}).get("argv") or []
    value = config.get("traces") or config.get("dataset") or _flag_value(argv, "--dataset")
    return str(value) if value else None


def _flag_value(argv: list[str], flag: str) -> str | None:
    for index, token in enumerate(argv):
        if token == flag and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(flag + "="):
            return token[len(flag) + 1:]
    return None


def summaries(store: Store, kind: str | None = None, status: str | None = None) -> list[RunSummary]:
    """Every run of the store (of `kind`, with `status`), newest first."""
    steps = store.last_steps()
    return [summarize(run, steps.get(run["id"])) for run in store.list_runs(kind=kind, status=status)]


def last_metrics(directory: str | Path) -> dict | None:
    """The last line of a run directory's metrics.jsonl, or None (no file, empty, unreadable)."""
    path = Path(directory) / "metrics.jsonl"
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(stream.tell() - 65536, 0))  # a metrics line is far shorter
            lines = stream.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written last line
        if isinstance(record, dict):
            return record
    return None


# Text ------------------------------------------------------------------------------------------------

def age(seconds: float) -> str:
    """'45s', '12m', '3h', '5d'."""
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _steps(summary: RunSummary) -> str:
    if summary.step is None and summary.max_steps is None:
        return "–"
    return f"{'–' if summary.step is None else summary.step}/{'–' if summary.max_steps is None else summary.max_steps}"


def short_name(value: str | None) -> str:
    """A local path's last part (a checkpoint folder, a data file); other names (a built-in task, a Hub
    dataset owner/name) as they are."""
    if not value:
        return "–"
    path = Path(value).expanduser()
    return path.name if path.is_absolute() or path.exists() else value


def table(rows: list[RunSummary], now: float | None = None) -> str:
    """The `aha runs list` table, columns sized to their content."""
    now = time.time() if now is None else now
    header = ("ID", "KIND", "STATUS", "MODEL", "DATASET", "STEPS", "AGE", "DIRECTORY")
    lines = [header] + [(str(row.id), row.kind, row.status, short_name(row.model), short_name(row.dataset), _steps(row),
                         age(now - row.created_at), row.dir or "–") for row in rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header) - 1)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(line, widths, strict=False)),
                                line[-1]]).rstrip() for line in lines)


def details(store: Store, run: Mapping[str, Any]) -> dict:
    """What `aha runs show` tells: the summary, the last metrics, the artifacts whose files exist
    (and how many recorded ones are gone, pruned checkpoints mostly), the latest checkpoint."""
    summary = summarize(run, store.last_steps().get(run["id"]))
    artifacts = store.run_artifacts(run["id"])
    present = [artifact for artifact in artifacts if Path(artifact["path"]).exists()]
    checkpoints = Path(run["dir"]) / "checkpoints" if run["dir"] else None
    found = sorted((path for path in checkpoints.glob("step-*") if path.name[5:].isdigit()),
                   key=lambda path: int(path.name[5:])) if checkpoints and checkpoints.is_dir() else []
    return {**summary.as_json(), "last_metrics": last_metrics(run["dir"]) if run["dir"] else None,
            "artifacts": present, "artifacts_removed": len(artifacts) - len(present),
            "checkpoint": str(found[-1]) if found else None}


def details_text(info: Mapping[str, Any], now: float | None = None) -> str:
    """`details` as labelled lines."""
    now = time.time() if now is None else now
    status = info["status"]
    if status in ACTIVE_RUN_STATUSES and info["pid"] is not None:
        status += f" (process {info['pid']})"
    metrics = info["last_metrics"]
    lines = [("run", f"{info['id']} · {info['kind']} · {status}"),
             ("model", info["model"] or "–"), ("dataset", info["dataset"] or "–"),
             ("steps", _steps(RunSummary(**{key: info[key] for key in RunSummary.__dataclass_fields__}))),
             ("checkpoint", info["checkpoint"] or "–"),
             ("last metrics", _metrics_text(metrics, info["max_steps"]) if metrics else "–"),
             ("created", f"{age(now - info['created_at'])} ago, updated {age(now - info['updated_at'])} ago")]
    artifacts = [f"{artifact['kind']}: {artifact['path']}" for artifact in info["artifacts"]]
    if info["artifacts_removed"]:
        artifacts.append(f"({info['artifacts_removed']} more recorded, since removed)")
    lines += [("artifacts" if index == 0 else "", text) for index, text in enumerate(artifacts or ["–"])]
    lines.append(("directory", info["dir"] or "–"))
    return "\n".join(f"{label:14s}{value}".rstrip() for label, value in lines)


def _metrics_text(metrics: Mapping[str, Any], max_steps: int | None) -> str:
    line = step_line(metrics, max_steps)
    if line is not None:
        return line
    return " · ".join(f"{key} {_number(value)}" for key, value in metrics.items() if key != "time")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, dict) else str(value)


# Finding a run ----------------------------------------------------------------------------------------

def find_run(store: Store, target: str) -> dict:
    """A run by id ("7") or by directory: the run its run.json names, else the newest row with that dir."""
    if target.isdigit():
        return store.get_run(int(target))
    directory = Path(target).expanduser().resolve()
    store_id = _run_json(directory).get("store_id")
    if isinstance(store_id, int):
        try:
            run = store.get_run(store_id)
        except AhaError:
            run = None
        if run is not None and run["dir"] and Path(run["dir"]).resolve() == directory:
            return run
    for run in store.list_runs():
        if run["dir"] and Path(run["dir"]).resolve() == directory:
            return run
    raise AhaError(f"no run in the store has the directory {directory}; list runs with `aha runs list`")


def _run_json(directory: Path) -> dict:
    try:
        info = json.loads((directory / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def refuse_if_running(run: Mapping[str, Any], doing: str) -> None:
    """A run still `created`/`running` after `Store.recover_runs` has a live (or just-started) process."""
    if run["status"] in ACTIVE_RUN_STATUSES and (run["pid"] is None or process_alive(run["pid"])):
        process = f" (process {run['pid']})" if run["pid"] is not None else ""
        raise AhaError(f"run {run['id']} is {run['status']}{process}; cancel it or wait for it before {doing} it")


# Resume ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResumePlan:
    argv: list[str]  # for engine.cli.main
    cwd: str | None  # the folder to call it from (a trace generation's relative paths), None: here


def resume_plan(store: Store, target: str, events: str = "auto", max_steps: int | None = None) -> ResumePlan:
    """The `aha` command that continues a run: `grpo --resume DIR`, `distill sft|kd --resume DIR`, or a trace
    generation's own command again (it skips the prompts done). Raises a one-line AhaError for a run that is
    running, complete (unless `max_steps` extends a training run) or of a kind that does not resume."""
    try:
        run = find_run(store, target)
    except AhaError:
        info = _run_json(Path(target).expanduser())
        if target.isdigit() or info.get("kind") not in (*RESUME_COMMANDS, *EVAL_KINDS):
            raise
        run = None  # a run directory the store does not index (copied from elsewhere): resuming indexes it
    if run is None and info["kind"] in EVAL_KINDS:
        return _eval_plan(info["kind"], str(Path(target).expanduser()), events, max_steps)
    if run is None:
        return ResumePlan(_training_argv(info["kind"], str(Path(target).expanduser()), events, max_steps), None)
    refuse_if_running(run, "resuming")
    kind, name = run["kind"], f"run {run['id']}"
    if kind in DEMO_KINDS:
        raise AhaError(f"{name} is a demo, which does not resume: rerun `aha demo` (a stage run of it that was "
                       "cancelled resumes on its own: `aha runs resume ID`)")
    if kind in PIPELINE_KINDS:
        if max_steps is not None:
            raise AhaError(f"--max-steps applies to training runs; {name} is a pipeline (set a stage's steps in its "
                           "file)")
        if run["status"] == "complete":
            raise AhaError(f"{name} is a complete pipeline; nothing to resume")
        return ResumePlan(["pipeline", "resume", run["dir"] or str(run["id"]), "--events", events], None)
    if run["status"] == "complete" and (max_steps is None or kind not in RESUME_COMMANDS):
        raise AhaError(f"{name} is complete; nothing to resume"
                       + (" (--max-steps N trains it further)" if kind in RESUME_COMMANDS else ""))
    if kind in RESUME_COMMANDS:
        if not run["dir"]:
            raise AhaError(f"{name} has no run directory to resume from")
        return ResumePlan(_training_argv(kind, run["dir"], events, max_steps), None)
    if kind in EVAL_KINDS:
        if not run["dir"]:
            raise AhaError(f"{name} has no run directory to resume from")
        return _eval_plan(name, run["dir"], events, max_steps)
    if kind in GENERATE_KINDS:
        if max_steps is not None:
            raise AhaError(f"--max-steps applies to training runs; {name} is a trace generation")
        return _generate_plan(run, events)
    raise AhaError(f"{name} ({kind}) cannot be resumed; run `aha {kind}` again")


def _training_argv(kind: str, directory: str, events: str, max_steps: int | None) -> list[str]:
    extend = ["--max-steps", str(max_steps)] if max_steps is not None else []
    return [*RESUME_COMMANDS[kind], "--resume", directory, *extend, "--events", events]


def _eval_plan(name: str, directory: str, events: str, max_steps: int | None) -> ResumePlan:
    if max_steps is not None:
        raise AhaError(f"--max-steps applies to training runs; {name} is an evaluation")
    return ResumePlan(["eval", "--resume", directory, "--events", events], None)


def _generate_plan(run: Mapping[str, Any], events: str) -> ResumePlan:
    command = run["config"].get("command") or {}
    argv, cwd = command.get("argv"), command.get("cwd")
    if not argv:
        output = run["config"].get("output", "the same output")
        raise AhaError(f"run {run['id']} did not record its command; run the same `aha distill generate` with "
                       f"-o {output} again (it skips the prompts done)")
    if cwd and not Path(cwd).is_dir():
        raise AhaError(f"run {run['id']} was started in {cwd}, which is gone; its relative paths cannot be found")
    return ResumePlan([*without_flags(argv, DROPPED_FLAGS), "--events", events], cwd)


def without_flags(argv: list[str], flags: Mapping[str, bool]) -> list[str]:
    """argv without the given long flags (each: whether it takes a value), written in full, abbreviated or
    as --flag=value.

    Example:
    >>> without_flags(["distill", "generate", "--fo", "--events=jsonl", "-o", "t.jsonl", "--ev", "none"],
    ...               {"--force": False, "--events": True})
    ['distill', 'generate', '-o', 't.jsonl']
    """
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name, has_value = token.split("=", 1)[0], "=" in token
        matched = [flag for flag in flags if len(name) > 2 and name.startswith("--") and flag.startswith(name)]
        if len(matched) == 1:
            skip = flags[matched[0]] and not has_value
            continue
        kept.append(token)
    return kept


# Delete ----------------------------------------------------------------------------------------------

def folder_size(path: Path) -> int:
    """Bytes of the files under `path` (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def owns_directory(run: Mapping[str, Any]) -> bool:
    """Whether the run's dir is its own run directory (its run.json names this run, or no run), which
    deleting the run removes. A trace generation's dir is the output's folder, which is never removed."""
    if not run["dir"] or run["kind"] in GENERATE_KINDS:
        return False
    info = _run_json(Path(run["dir"]))
    return bool(info) and info.get("store_id") in (None, run["id"])


def ask_on_terminal(question: str) -> bool:
    """y/N on the terminal; off a terminal there is nobody to ask, so the caller must have said --yes."""
    if not sys.stdin.isatty():
        raise AhaError("stdin is not a terminal, so there is no one to confirm the deletion; pass --yes")
    sys.stderr.write(question)  # beside the other messages, so a piped stdout still gets only the result
    sys.stderr.flush()
    try:
        return input().strip().lower() in ("y", "yes")
    except EOFError:
        return False


def deletion_question(run: Mapping[str, Any]) -> str:
    """What deleting the run removes, as the question to ask ("Delete run 7 (/…/grpo-7, 12.3 MB)?");
    raises a one-line AhaError for a run that is running."""
    refuse_if_running(run, "deleting")
    directory = Path(run["dir"]) if run["dir"] else None
    if owns_directory(run) and directory.is_dir():
        stages = " with the stage runs in it" if run["kind"] in (*DEMO_KINDS, *PIPELINE_KINDS) else ""
        return f"Delete run {run['id']}{stages} ({directory}, {folder_size(directory) / 1e6:.1f} MB)?"
    if directory is not None and directory.exists():
        return f"Delete run {run['id']}'s record (its files in {directory} stay)?"
    return f"Delete run {run['id']} (its directory {directory or 'was never made'} is gone)?"


def delete_run(store: Store, run: Mapping[str, Any]) -> str:
    """Delete a run that is not running: its run directory (when it is the run's own) and its row. Returns the
    line to show."""
    refuse_if_running(run, "deleting")
    directory = Path(run["dir"]) if run["dir"] else None
    owned = owns_directory(run) and directory.is_dir()
    stages = _stage_runs_inside(store, run) if owned else []
    for stage in stages:
        refuse_if_running(stage, "deleting")
    if owned:
        try:
            shutil.rmtree(directory)
        except OSError as error:
            raise AhaError(f"could not delete {directory} ({error}); run {run['id']} is kept") from error
    for stage in stages:  # their directories were inside the demo's
        store.delete_run(stage["id"])
    store.delete_run(run["id"])
    also = f" (and its stage runs {', '.join(str(stage['id']) for stage in stages)})" if stages else ""
    return f"deleted run {run['id']}" + (f" and {directory}" if owned else "") + also


def _stage_runs_inside(store: Store, run: Mapping[str, Any]) -> list[dict]:
    """The stage runs of a demo (named in its demo.json) or a pipeline (its child runs) whose files are inside its
    directory (an export run has none of its own); none for another kind."""
    if run["kind"] in DEMO_KINDS:
        stages = [demo_stage_run(store, run, name)
                  for name in ("cold-start", "eval-cold-start", "grpo", "eval-grpo", "export")]
    elif run["kind"] in PIPELINE_KINDS:
        stages = store.child_runs(run["id"])
    else:
        return []
    inside = Path(run["dir"]).resolve()
    return [stage for stage in stages
            if stage is not None and (not stage["dir"] or Path(stage["dir"]).resolve().is_relative_to(inside))]


def remove(store: Store, target: str, confirm: Callable[[str], bool]) -> str:
    """Delete a run that is not running (`delete_run`) once `confirm` said yes to `deletion_question`. Returns
    the line to print."""
    run = find_run(store, target)
    if not confirm(deletion_question(run) + " [y/N] "):
        return f"kept run {run['id']}"
    return delete_run(store, run)


# The Runs pane ----------------------------------------------------------------------------------------
# What the window's table, its actions and its comparison need, kept here so `aha runs` and the pane agree.

# The kinds the Train form starts, by run kind (older stores call SFT "sft" and trace generation
# "distill-generate").
TRAIN_FORM_KINDS = {"grpo": "grpo", "sft": "distill-sft", "distill-sft": "distill-sft", "distill-kd": "distill-kd",
                    "generate": "generate", "distill-generate": "generate"}
# A run's key metric, by kind: the first of these the run recorded, as (metric name, label).
KEY_METRICS = {"grpo": (("reward", "reward"), ("eval/accuracy", "held-out accuracy")),
               "distill-sft": (("loss", "loss"), ("eval/accuracy", "held-out accuracy")),
               "distill-kd": (("loss", "loss"), ("eval/accuracy", "held-out accuracy"))}
KEY_METRICS["sft"] = KEY_METRICS["distill-sft"]
KEY_METRICS["eval"] = (("pass@1", "pass@1"),)  # an eval run records one step per model: the last model's
PERCENT_METRICS = ("eval/accuracy", "accuracy", "eval/format", "pass@1")


@dataclass(frozen=True)
class RunRow:
    """One row of the Runs pane's table: the run's summary, how long it ran and its key metric."""

    summary: RunSummary
    duration_s: float  # from its creation to its last update, or to now while it runs (a resume's pause included)
    metric_name: str | None  # the key metric as recorded ("reward", "eval/accuracy", "loss"); None: none yet
    metric_label: str | None  # as the table names it ("reward", "held-out accuracy", "loss")
    metric_value: float | None

    @property
    def id(self) -> int:
        return self.summary.id

    @property
    def kind(self) -> str:
        return self.summary.kind

    @property
    def status(self) -> str:
        return self.summary.status

    @property
    def steps_text(self) -> str:
        return _steps(self.summary)

    @property
    def metric_text(self) -> str:
        """'reward 0.250', 'held-out accuracy 62.5%', 'loss 3.06', or '–'."""
        if self.metric_name is None or self.metric_value is None:
            return "–"
        return f"{self.metric_label} {metric_text(self.metric_name, self.metric_value)}"

    @property
    def running(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES


def metric_text(name: str, value: float | None) -> str:
    """A metric's value as the pane shows it: accuracies as percents, others with 3–4 significant digits."""
    if value is None:
        return "–"
    if name in PERCENT_METRICS:
        return f"{value * 100:.1f}%"
    return f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"


def duration_text(seconds: float) -> str:
    """'42 s', '12 min', '3 h 05 min', '2 d 4 h'."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


class RunTable:
    """The Runs pane's rows, read again at each poll. A run's key metric is looked up in the store again only
    when its last step or its status changed, so a poll of many finished runs is a few small queries."""

    def __init__(self) -> None:
        self._metrics: dict[int, tuple[tuple[int | None, str], tuple[str | None, str | None, float | None]]] = {}

    def rows(self, store: Store, now: float | None = None) -> list[RunRow]:
        """Every run, newest first. Runs whose process is gone are marked crashed first (`Store.recover_runs`,
        the rule `aha runs` applies), so a killed run never shows as running."""
        now = time.time() if now is None else now
        store.recover_runs()
        steps = store.last_steps()
        rows = []
        for run in store.list_runs():
            summary = summarize(run, steps.get(run["id"]))
            key = (summary.step, summary.status)
            cached = self._metrics.get(run["id"])
            if cached is None or cached[0] != key:
                cached = (key, key_metric(store, summary))
                self._metrics[run["id"]] = cached
            end = now if summary.status in ACTIVE_RUN_STATUSES else summary.updated_at
            rows.append(RunRow(summary, max(end - summary.created_at, 0.0), *cached[1]))
        return rows


def key_metric(store: Store, summary: RunSummary) -> tuple[str | None, str | None, float | None]:
    """The name, label and last value of the run's key metric (the first of KEY_METRICS it recorded), or Nones."""
    for name, label in KEY_METRICS.get(summary.kind, ()):
        series = [value for _, value in store.metric_series(summary.id, name) if value is not None]
        if series:
            return name, label, series[-1]
    return None, None, None


def matches(row: RunRow, kind: str | None = None, status: str | None = None) -> bool:
    """Whether a row is of `kind` (its older name too: sft, distill-generate) and has `status` ("running" takes
    a run just created too); None: any."""
    same_kind = kind is None or TRAIN_FORM_KINDS.get(row.kind, row.kind) == TRAIN_FORM_KINDS.get(kind, kind)
    same_status = status is None or row.status == status or (status == "running" and row.running)
    return same_kind and same_status


def filter_rows(rows: list[RunRow], kind: str | None = None, status: str | None = None) -> list[RunRow]:
    """The rows `matches` keeps."""
    return [row for row in rows if matches(row, kind, status)]


# Comparing runs' settings

_ABSENT = object()


def flat_settings(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A run's config with nested objects as dotted keys (teacher.kind, command.argv).

    Example:
    >>> flat_settings({"lr": 1e-3, "teacher": {"kind": "hf", "path": "t"}})
    {'lr': 0.001, 'teacher.kind': 'hf', 'teacher.path': 't'}
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings_diff(configs: list[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """The settings that differ between two or more runs' configs, sorted by name: (key, one text per run);
    a setting a run does not have is '–'.

    Example:
    >>> settings_diff([{"lr": 1e-3, "seed": 3}, {"lr": 1e-4, "seed": 3, "lmbda": 1.0}])
    [('lmbda', ['–', '1.0']), ('lr', ['0.001', '0.0001'])]
    """
    if len(configs) < 2:
        raise ValueError("settings_diff compares two or more configs")
    flats = [flat_settings(config) for config in configs]
    keys = sorted(set().union(*flats))
    diff = []
    for key in keys:
        values = [flat.get(key, _ABSENT) for flat in flats]
        if any(value != values[0] for value in values[1:]):
            diff.append((key, [setting_text(value) for value in values]))
    return diff


def setting_text(value: Any) -> str:
    if value is _ABSENT or value is None:
        return "–"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


# Actions on one run

def stop_elsewhere(run: Mapping[str, Any]) -> str:
    """Ask the process of a run started outside this program (a terminal, another window) to stop as Ctrl+C
    does: SIGINT, which the job honours like `cancel` (it stops after the current step, keeps its checkpoint
    and ends `cancelled`). Returns the line to show; raises a one-line AhaError when it cannot."""
    name, pid = f"run {run['id']}", run["pid"]
    if run["status"] not in ACTIVE_RUN_STATUSES:
        raise AhaError(f"{name} is {run['status']}; there is nothing to stop")
    seen_at = run["heartbeat_at"] if run["heartbeat_at"] is not None else run["updated_at"]
    if pid is None or not process_alive(pid) or time.time() - seen_at > STALE_AFTER_S:
        raise AhaError(f"{name} has no live process; it crashed (resume it to continue)")
    if sys.platform == "win32":
        raise AhaError(f"{name} runs in process {pid}, started outside this window, and Windows cannot send it "
                       "Ctrl+C; stop it where it runs (Ctrl+C in its terminal)")
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        raise AhaError(f"{name}'s process {pid} ended meanwhile") from None
    except PermissionError:
        raise AhaError(f"{name} runs in process {pid} of another user; stop it as that user") from None
    return f"Asked {name} (process {pid}) to stop after its current step; its checkpoint is kept."


def duplicate_settings(run: Mapping[str, Any]) -> tuple[str, dict]:
    """The Train form's kind and the settings to fill it with for a new run like this one: its config
    without the output folder (a new run gets its own). Raises AhaError for a kind the form does not start."""
    kind = TRAIN_FORM_KINDS.get(run["kind"])
    if run["kind"] in DEMO_KINDS:
        raise AhaError(f"run {run['id']} is a demo: rerun `aha demo` for another one (or duplicate one of its stage "
                       "runs to change its settings)")
    if run["kind"] in PIPELINE_KINDS:
        raise AhaError(f"run {run['id']} is a pipeline: start it again with `aha pipeline run` (or duplicate one of "
                       "its stage runs to change its settings)")
    if kind is None:
        raise AhaError(f"run {run['id']} is {'an' if run['kind'][0] in 'aeiou' else 'a'} {run['kind']}, which the "
                       "Train form does not start")
    config = {key: value for key, value in run["config"].items() if key not in ("command", "resumed")}
    if "output_dir" in config:
        config["output_dir"] = None
    return kind, config


def export_source(store: Store, run: Mapping[str, Any]) -> tuple[str, str] | None:
    """What to export from a training run: (its final adapter, or the newest checkpoint's adapter, with the
    base model it trained), or (its final or newest checkpoint's full model, ""); None when it has neither.
    A demo's is its GRPO stage's (the model it exported to GGUF already), a pipeline's its last training stage's."""
    if run["kind"] in DEMO_KINDS:
        stage = demo_stage_run(store, run, "grpo")
        return export_source(store, stage) if stage is not None else None
    if run["kind"] in PIPELINE_KINDS:  # its last training stage's model
        trained = [child for child in store.child_runs(run["id"]) if child["kind"] in RESUME_COMMANDS]
        return next((found for child in reversed(trained) if (found := export_source(store, child))), None)
    config = run["config"]
    base = str(config.get("model") or "")
    found: list[tuple[str, str]] = []
    for artifact in reversed(store.run_artifacts(run["id"])):
        path = Path(artifact["path"])
        if artifact["kind"] == "adapter":
            found.append((str(path), base))
        elif artifact["kind"] == "model":
            found.append((str(path), ""))
        elif artifact["kind"] == "checkpoint":
            found += [(str(path / "adapter"), base), (str(path / "model"), "")]
    return next(((path, base) for path, base in found if Path(path).is_dir()), None)


def demo_stage_run(store: Store, run: Mapping[str, Any], stage: str) -> dict | None:
    """The store row of a demo's stage run (`stage`: cold-start, eval-cold-start, grpo, eval-grpo, export),
    as its demo.json names it; None when the demo did not get there (or the row is gone)."""
    try:
        result = json.loads((Path(run["dir"]) / "demo.json").read_text(encoding="utf-8"))
        run_id = next(item["run_id"] for item in result["stages"] if item["name"] == stage)
        return store.get_run(run_id) if run_id is not None else None
    except (OSError, TypeError, ValueError, KeyError, StopIteration, AhaError):
        return None


# Comparing runs' curves

PREFERRED_CURVES = ("reward", "loss", "eval/accuracy", "accuracy")


def comparable_metrics(store: Store, run_ids: list[int]) -> tuple[list[str], str | None]:
    """The metric names any of the runs recorded (sorted) and the one to show first: the first of
    PREFERRED_CURVES that every run has, else a name every run has, else the first name."""
    per_run = [set(store.metric_names(run_id)) for run_id in run_ids]
    names = sorted(set().union(*per_run)) if per_run else []
    shared = set.intersection(*per_run) if per_run else set()
    first = next((name for name in PREFERRED_CURVES if name in shared), None)
    return names, first or (sorted(shared)[0] if shared else names[0] if names else None)
