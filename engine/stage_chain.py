"""A pipeline run's stages as the Runs pane and `aha runs show` tell them: in order, each with its status, its
run, its key metric (or its summary) and how long it took. Read from the pipeline's `pipeline.json`
(engine.pipeline.state), else, for a pipeline that never wrote one, from the store's child runs
(`Store.child_runs`, oldest first). Nothing here runs a stage; it only reads.

A stage the file still calls `running` whose run the store has ended (the pipeline was killed mid-stage)
shows the run's status, and so does the pipeline: the store is the truth about a run, the file about the
pipeline's plan.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import AhaError
from engine.run_index import PIPELINE_KINDS, RunRow, duration_text, key_metric, summarize
from engine.store import ACTIVE_RUN_STATUSES, Store


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline, as shown: `status` is the file's (pending, running, complete, cancelled, error)
    or, for a stage read from the store, its run's (created, running, complete, cancelled, crashed, error)."""

    number: int  # 1-based, the stage's place in the chain
    name: str
    title: str
    kind: str  # the recipe's stage kind (sft, grpo, generate, kd, eval, export), or the run's kind
    status: str
    run_id: int | None
    run_kind: str | None
    metric: str | None  # 'held-out accuracy 62%': the stage's key metric, or its run's latest while it runs
    summary: str | None  # the stage's one line from the file ('held-out accuracy 62% after 230 steps')
    seconds: float | None
    inputs: tuple[tuple[str, str, str], ...] = ()  # (input, reference, the value it resolved to): the lineage
    steps: str | None = None  # 'step 12/40' while its run runs, from the run's last metrics step

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    @property
    def running(self) -> bool:
        return self.status in ("running", *ACTIVE_RUN_STATUSES)

    @property
    def detail(self) -> str:
        """What a stage card's second line says: the metric, else the summary, else '–'."""
        return self.metric or self.summary or "–"

    @property
    def duration(self) -> str:
        """'35 s', '12 min', or '–' (not started); 'step 12/40 · 5 s' while it runs."""
        text = duration_text(self.seconds) if self.seconds is not None else "–"
        return f"{self.steps} · {text}" if self.steps and self.running else text


@dataclass(frozen=True)
class Chain:
    """A pipeline run's stages in order; `source` says where they were read from."""

    run_id: int
    name: str | None  # the recipe's name (pipeline.json's), None when read from the store
    status: str  # the pipeline's, as the file says it (else the run's)
    stages: tuple[Stage, ...]
    source: str  # "pipeline.json" or "store"

    @property
    def done(self) -> int:
        return sum(stage.status == "complete" for stage in self.stages)


def is_pipeline(run: Mapping[str, Any]) -> bool:
    return run.get("kind") in PIPELINE_KINDS


def metric_of(stage: Mapping[str, Any]) -> str | None:
    """A stage's {"label", "value", "text"} metric as one phrase: 'held-out accuracy 62%' (label, then text; the
    value when there is no text); None when it has none."""
    metric = stage.get("metric")
    if not isinstance(metric, Mapping):
        return None
    text = metric.get("text")
    if text in (None, ""):
        value = metric.get("value")
        text = None if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
    label = metric.get("label")
    return " ".join(str(part) for part in (label, text) if part not in (None, "")) or None


def read_chain(store: Store, run: Mapping[str, Any], rows: Mapping[int, RunRow] | None = None,
               now: float | None = None) -> Chain:
    """The stages of the pipeline run `run` (a store row): from its pipeline.json when it has one, else from its
    child runs. `rows` (the Runs pane's, by run id) give a stage run's status, its live key metric while the
    file has none yet and its running time (a run not among them yet is left unknown: no query on the
    window's thread); without them the store is asked."""
    from engine.pipeline.state import read_state

    state = read_state(run["dir"]) if run.get("dir") else None
    if state is not None:
        stages = tuple(_from_state(number, stage, store, rows, now)
                       for number, stage in enumerate(state["stages"], 1) if isinstance(stage, Mapping))
        status = str(state.get("status") or run["status"])
        if status == "running" and run["status"] not in ACTIVE_RUN_STATUSES:
            status = run["status"]  # killed: the store's crashed (or how it ended) over the file's last word
        return Chain(run["id"], state.get("name"), status, stages, "pipeline.json")
    children = store.child_runs(run["id"])
    stages = tuple(_from_child(number, child, store, rows, now) for number, child in enumerate(children, 1))
    return Chain(run["id"], None, run["status"], stages, "store")


def _row(store: Store, run_id: int, rows: Mapping[int, RunRow] | None, now: float | None) -> RunRow | None:
    """The stage run's row: the pane's (`rows`; a run not in them yet is left unknown), else one read from the
    store (None: the run is gone)."""
    if rows is not None:
        return rows.get(run_id)
    try:
        run = store.get_run(run_id)
    except AhaError:
        return None
    summary = summarize(run, store.last_steps().get(run_id))
    end = (time.time() if now is None else now) if summary.status in ACTIVE_RUN_STATUSES else summary.updated_at
    return RunRow(summary, max(end - summary.created_at, 0.0), *key_metric(store, summary))


def _from_state(number: int, stage: Mapping[str, Any], store: Store, rows: Mapping[int, RunRow] | None,
                now: float | None) -> Stage:
    run_id = stage.get("run_id") if isinstance(stage.get("run_id"), int) else None
    status = str(stage.get("status") or "pending")
    metric, seconds = metric_of(stage), stage.get("seconds")
    row = _row(store, run_id, rows, now) if run_id is not None else None
    if row is not None:
        if status == "running" and not row.running:
            status = row.status  # the pipeline died mid-stage: the run says how it ended
        if metric is None and row.metric_value is not None:
            metric = row.metric_text
        if not isinstance(seconds, (int, float)) and (row.running or status != "pending"):
            seconds = row.duration_s
    name = str(stage.get("name") or f"stage {number}")
    inputs = stage.get("inputs") if isinstance(stage.get("inputs"), Mapping) else {}
    lineage = tuple((str(key), str(value.get("ref", "")), str(value.get("value", "")))
                    for key, value in inputs.items() if isinstance(value, Mapping))
    return Stage(number, name, str(stage.get("title") or name), str(stage.get("kind") or stage.get("run_kind") or "–"),
                 status, run_id, stage.get("run_kind") or (row.kind if row else None), metric,
                 stage.get("summary") or None, float(seconds) if isinstance(seconds, (int, float)) else None, lineage,
                 _steps(row))


def _from_child(number: int, child: Mapping[str, Any], store: Store, rows: Mapping[int, RunRow] | None,
                now: float | None) -> Stage:
    row = _row(store, child["id"], rows, now)
    if row is not None:
        seconds, metric = row.duration_s, row.metric_text if row.metric_value is not None else None
    else:
        end = (time.time() if now is None else now) if child["status"] in ACTIVE_RUN_STATUSES else child["updated_at"]
        seconds, metric = max(end - child["created_at"], 0.0), None
    name = Path(child["dir"]).name if child.get("dir") else child["kind"]
    return Stage(number, name, name, child["kind"], child["status"], child["id"], child["kind"], metric, None, seconds,
                 steps=_steps(row))


def _steps(row: RunRow | None) -> str | None:
    """'step 12/40' (or 'step 12') from the run's row; None before its first step."""
    if row is None or row.summary.step is None:
        return None
    total = f"/{row.summary.max_steps}" if row.summary.max_steps else ""
    return f"step {row.summary.step}{total}"


def stage_line(stage: Stage) -> str:
    """One stage in one line, as `aha runs show` of a pipeline would print it:
    '2. grpo (grpo, run 14): running · reward 0.250 · 12 min'."""
    run = f", run {stage.run_id}" if stage.run_id is not None else ""
    parts = [stage.status, *([stage.detail] if stage.detail != "–" else []),
             *([stage.duration] if stage.seconds is not None else [])]   # duration: 'step 12/40 · 5 s' while it runs
    return f"{stage.number}. {stage.title} ({stage.kind}{run}): {' · '.join(parts)}"


def heading(chain: Chain) -> str:
    """'pipeline r1-mini (run 12): running, 1 of 4 stages complete'."""
    name = f"pipeline {chain.name}" if chain.name else "pipeline"
    return f"{name} (run {chain.run_id}): {chain.status}, {chain.done} of {len(chain.stages)} stages complete"


def chain_text(chain: Chain) -> str:
    """The chain as lines: its `heading`, then each stage's `stage_line` with, indented, where its inputs came
    from ('   model ← @base = /…/base')."""
    lines = [heading(chain)]
    for stage in chain.stages:
        lines.append(stage_line(stage))
        lines += [f"   {key} ← {ref} = {value}" if ref and ref != value else f"   {key} = {value}"
                  for key, ref, value in stage.inputs]
    return "\n".join(lines)
