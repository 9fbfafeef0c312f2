"""The events of a job made of stages, each stage a run of its own (`aha demo`, `aha pipeline`): `StageEvents`
turns a stage run's events into the job's, `inner_event` undoes it for a view of the stage run,
`StageHeartbeat` keeps the working stage run's heartbeat, and `StageTerminalView` draws the job on a terminal.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Mapping
from typing import Any, TextIO

from engine.jobs import HEARTBEAT_S, OnEvent, TerminalSink, make_event

# The events of one stage ---------------------------------------------------------------------------

class StageEvents:
    """on_event for the engine call of one stage. The inner run's `start` becomes
    `log(message="cold start: distill-sft run 12 (DIR)", stage=NAME, stage_run={"kind", "run_id", "run_dir"})`
    (a job has one `start`: the demo run's); `progress` keeps its fields with `stage=NAME`, the inner
    stage in `phase` and the inner phase, when it had one, in `inner_phase` (`inner_event` undoes this);
    metrics, sample, artifact and log events pass unchanged. Remembers the stage run and its last metrics."""

    def __init__(self, name: str, emit: OnEvent, heartbeat: StageHeartbeat | None = None, title: str | None = None):
        self.name, self.emit, self.heartbeat, self.title = name, emit, heartbeat, title or name
        self.run: dict[str, Any] | None = None
        self.last_metrics: dict[str, Any] = {}

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "start":
            self.started(event["kind"], event.get("run_id"), event.get("run_dir"))
            return
        if kind == "progress":
            inner = {key: value for key, value in event.items()
                     if key not in ("v", "type", "stage", "phase", "stage_index", "stage_count")}
            if event.get("phase") is not None:
                inner["inner_phase"] = event["phase"]
            event = make_event("progress", **inner, stage=self.name, phase=event["stage"])
        elif kind == "metrics":
            self.last_metrics = {**self.last_metrics, **event}
        self.emit(event)

    def started(self, kind: str, run_id: int | None, run_dir: str | None) -> None:
        """Say which run this stage is (an export has a run row but no run directory)."""
        self.run = {"kind": kind, "run_id": run_id, "run_dir": run_dir}
        if self.heartbeat is not None and run_id is not None:
            self.heartbeat.follow(run_id)
        where = f" ({run_dir})" if run_dir else ""
        self.emit(make_event("log", message=f"{self.title}: {kind} run {run_id}{where}", stage=self.name,
                             stage_run=self.run))


def inner_event(event: Mapping[str, Any]) -> dict:
    """A demo `progress` event as the stage's own command emitted it (stage, phase restored), for a view
    that shows the stage run as it shows any run of its kind; other events are returned as they are.

    Example:
    >>> inner_event({"v": 1, "type": "progress", "stage": "grpo", "phase": "train", "inner_phase": "rollout",
    ...              "stage_index": 3, "stage_count": 7, "done": 2, "total": 100})["stage"]
    'train'
    """
    if event.get("type") != "progress" or "phase" not in event:
        return dict(event)
    inner = {key: value for key, value in event.items() if key not in ("inner_phase", "stage_index", "stage_count")}
    return {**inner, "stage": event["phase"], "phase": event.get("inner_phase")}


class StageHeartbeat:
    """Refreshes the heartbeat of the stage run now working (run_job keeps the demo run's), so a long stage
    is not taken for a crashed run by `Store.recover_runs` in another process."""

    def __init__(self, interval_s: float = HEARTBEAT_S):
        self.run_id: int | None = None
        self._stop = threading.Event()
        self._interval_s = interval_s
        self._thread: threading.Thread | None = None

    def follow(self, run_id: int) -> None:
        self.run_id = run_id
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="aha-demo-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        from engine.store import Store

        with Store() as store:
            while not self._stop.wait(self._interval_s):
                if self.run_id is not None:
                    with contextlib.suppress(Exception):  # a locked database skips a beat, no more
                        store.heartbeat(self.run_id)

    def close(self) -> None:
        self._stop.set()



class StageTerminalView(TerminalSink):
    """A job of stages (the demo, a pipeline) on a terminal: the stage lines (a stage's run, then its `[i/n] …`
    line when it ends), the GRPO steps and the SFT's held-out evaluations as they come, warnings, and a progress
    bar; the stage runs' other logs stay in their run.log. `titles` names the stages as a person reads them."""

    def __init__(self, stream: TextIO | None = None, titles: Mapping[str, str] | None = None):
        super().__init__(stream or sys.stderr)
        self.titles = titles or {}

    def __call__(self, event: dict) -> None:
        from engine.run_report import RunReport, heldout_line, run_kind

        kind = event["type"]
        if kind == "log":
            if "stage_run" in event:
                self.report = RunReport()
            if "stage_run" in event or "stage_done" in event or event.get("level") == "warning":
                super().__call__(event)
            return
        if kind == "progress":
            title = self.titles.get(event["stage"], event["stage"])
            inner = event.get("label") or event.get("phase") or ""
            super().__call__({**event, "label": f"{title}: {inner}" if inner and inner != title else title})
            return
        if kind == "metrics":
            if run_kind(event) == "grpo":
                super().__call__(event)
            elif run_kind(event) == "sft" and heldout_line(event):
                self._print(heldout_line(event))
            return
        if kind in ("start", "error"):
            super().__call__(event)
        # sample, artifact and done: the table and the paths say it at the end
