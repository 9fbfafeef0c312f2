"""A pipeline run's state file, `pipeline.json` in its directory: the pipeline's status and, for each stage in
order, its status, its run (id, kind, directory), the inputs it was given (each reference with the value it
resolved to: the lineage of every model), its outputs and its key metric. Written atomically after every
change, so a window, `aha runs show` or a person sees how far the pipeline got; `aha pipeline resume` reads it
to skip what is finished.

    {"format": "aha-pipeline", "version": 1, "name": "r1-mini", "status": "running", "run_id": 12,
     "run_dir": "/…/pipeline-12", "base_model": "/…/base", "file": "/…/pipeline-12/pipeline.toml",
     "stages": [{"name": "cold_start", "kind": "sft", "title": "cold start", "status": "complete",
                 "run_id": 13, "run_kind": "distill-sft", "run_dir": "/…/pipeline-12/cold_start",
                 "inputs": {"model": {"ref": "@base", "value": "/…/base"}},
                 "outputs": {"model": "/…/cold_start/final/model", "run_dir": "/…/cold_start"},
                 "metric": {"label": "held-out accuracy", "value": 0.62, "text": "62%"},
                 "summary": "held-out accuracy 62% after 230 steps", "seconds": 35.2}, …],
     "report": {…the last eval stage's comparison, or null…}}

A stage's status is one of STAGE_STATUSES; `pending` until it starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE_FILE = "pipeline.json"
FORMAT = "aha-pipeline"
STAGE_STATUSES = ("pending", "running", "complete", "cancelled", "error")


def new_stage(name: str, kind: str, title: str) -> dict[str, Any]:
    """A stage's entry before it starts."""
    return {"name": name, "kind": kind, "title": title, "status": "pending", "run_id": None, "run_kind": None,
            "run_dir": None, "inputs": {}, "outputs": {}, "metric": None, "summary": None, "seconds": None}


def write_state(directory: str | Path, state: dict[str, Any]) -> None:
    """pipeline.json, atomically (a reader never sees half a file)."""
    from engine.fileio import atomic_write_text

    atomic_write_text(Path(directory) / STATE_FILE, json.dumps(state, indent=2, ensure_ascii=False, default=str) + "\n")


def read_state(directory: str | Path) -> dict[str, Any] | None:
    """The state of the pipeline run in `directory`, or None when it has none (not a pipeline, or the file is
    unreadable: a pipeline killed before it wrote one)."""
    path = Path(directory) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("stages"), list):
        return None
    return state
