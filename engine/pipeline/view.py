"""A pipeline for people: its file as the stages it will run (`aha pipeline show`), its state at the end (the
stages with status, time and key metric, the last evaluation's table, where everything is), and the terminal
view while it runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from engine.jobs import format_seconds
from engine.pipeline.events import StageTerminalView
from engine.pipeline.spec import PipelineSpec, references

MARKS = {"complete": "✓", "running": "…", "cancelled": "■", "error": "✗", "pending": "·"}


def spec_text(spec: PipelineSpec) -> str:
    """The stages a pipeline file runs, in order, with their settings (references shown as written).

    r1-mini: base model demo, seed 0
      1. cold_start (sft) ← @base
           model = "@base"
           …
    """
    lines = [f"{spec.name}: base model {spec.model}, seed {spec.seed}"]
    if spec.description:
        lines.append(f"  {spec.description}")
    for index, stage in enumerate(spec.stages, 1):
        sources = sorted({str(reference) for value in stage.settings.values() for reference in references(value)})
        lines.append(f"  {index}. {stage.name} ({stage.kind})" + (f" ← {', '.join(sources)}" if sources else ""))
        lines += [f"       {key} = {json.dumps(value, ensure_ascii=False)}" for key, value in stage.settings.items()]
    return "\n".join(lines)


def state_text(state: Mapping[str, Any]) -> str:
    """The end of a pipeline on a terminal.

      ✓ cold_start    sft       0:35  held-out accuracy 62.0%   …/cold_start
      ✓ reasoning_rl  grpo      0:21  reward 1.02               …/reasoning_rl
      ■ rejection     generate  0:04  cancelled
    then the last evaluation's table and the status line.
    """
    from engine.eval.runner import table_text

    rows = []
    for stage in state.get("stages", []):
        seconds = stage.get("seconds")
        metric = stage.get("metric") or {}
        shown = f"{metric['label']} {metric['text']}" if metric.get("text") else (stage.get("summary") or "")
        if stage["status"] not in ("complete",):
            shown = stage["status"] if stage["status"] != "complete" else shown
        rows.append((f"{MARKS.get(stage['status'], '?')} {stage['name']}", stage["kind"],
                     format_seconds(seconds) if seconds is not None else "", shown, stage.get("run_dir") or ""))
    widths = [max((len(row[column]) for row in rows), default=0) for column in range(4)]
    lines = ["  " + "  ".join(cell.rjust(widths[column]) if column == 2 else cell.ljust(widths[column])
                              for column, cell in enumerate(row[:4])) + f"  {row[4]}" for row in rows]
    report = state.get("report")
    if report and report.get("models"):
        lines += ["", f"evaluation ({report.get('stage')}):", table_text(report)]
    lines.append("")
    lines.append(f"pipeline {state.get('name')} {state.get('status')}"
                 + (f" in {format_seconds(state['seconds'])}" if state.get("seconds") is not None else "")
                 + f" · {state.get('run_dir')}")
    if state.get("status") in ("cancelled", "error") and state.get("run_dir"):
        lines.append(f"continue it with: aha pipeline resume {state['run_dir']}")
    return "\n".join(lines)


class TerminalView(StageTerminalView):
    """A pipeline on a terminal: StageTerminalView with the file's stage titles."""

    def __init__(self, spec: PipelineSpec, stream: TextIO | None = None):
        super().__init__(stream or sys.stderr, {stage.name: stage.title for stage in spec.stages})
