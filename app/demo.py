"""The demo in the window: `aha demo --events jsonl` as one ProcessJob, each of its stages shown in its pane.

DemoFlow reads the job's `log` events that name a stage (engine/demo/pipeline.py): `stage_run` says a stage's
own run began (cold start and GRPO open live in the Runs pane, their metrics and rollouts routed to that run;
the other stages' runs are selected there), `stage_done` says a stage ended (an evaluation's table opens in
the Eval pane: after stage 5 it is the before/after table). The final `done` names the exported GGUF, which
the window opens in a new chat (`model_ready`). DemoStatus is the status-bar line that says which stage runs,
with Stop. This module knows the demo's event shapes and which pane shows which stage, not how panes draw.
"""

from __future__ import annotations

from app.qt import Qt, QtCore, QtWidgets, Signal, Slot
from app.widgets import ElidedLabel
from app.workers import TRAINING_GRACE_S, JobOutcome, JobStatus, ProcessJob
from engine.errors import AhaError
from engine.eval.results import percent
from engine.jobs import count, format_bytes, format_seconds
from engine.pipeline.events import inner_event

# What the status line calls each stage of engine.demo.pipeline.STAGES (a stage not named here shows as itself).
STAGE_TITLES = {"model": "building the model", "cold-start": "cold start (SFT on reasoning traces)",
                "eval-cold-start": "evaluating the cold start", "grpo": "GRPO",
                "eval-grpo": "evaluating GRPO against the cold start", "export": "exporting to GGUF",
                "chat": "asking the exported model"}
LIVE_STAGES = ("cold-start", "grpo")             # the user watches these in the Runs pane, curves and rollouts
EVAL_STAGES = ("eval-cold-start", "eval-grpo")   # their table opens in the Eval pane when they end


class DemoFlow(QtCore.QObject):
    """Runs `aha demo` and drives the panes from its events. `start()`, `cancel()`, `is_running()`.

    Signals: `pane_requested(key)` (bring "runs" or "eval" to the front), `status_changed(text)` (the stage
    in progress in one line, then how the demo ended), `running_changed(bool)`, `stage_finished(text)` (a
    stage's summary line, as the terminal prints it), `model_ready(gguf, result)` (the demo is complete: its
    GGUF, in the library, and its result). The job is also followed by the Runs pane, which lists the demo run
    and its stage runs; Stop there on a stage run, or `cancel()`, stops the whole demo (its current stage run
    ends cancelled; the runs done are kept)."""

    FLAGS: tuple[str, ...] = ()   # extra `aha demo` flags; the window's test sets ("--smoke",)

    pane_requested = Signal(str)
    status_changed = Signal(str)
    running_changed = Signal(bool)
    stage_finished = Signal(str)
    model_ready = Signal(str, dict)

    def __init__(self, store, runs, eval_pane, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.store, self.runs, self.eval_pane = store, runs, eval_pane
        self.job: ProcessJob | None = None
        self.stages: list[str] = []                # from the start event
        self.stage: str | None = None              # the stage in progress
        self.stage_runs: dict[str, int] = {}       # stage → its own run's id
        self.stage_lines: list[str] = []           # each finished stage's summary line
        self.result: dict | None = None            # the done event's result, once complete
        self.status = ""

    def is_running(self) -> bool:
        return self.job is not None and self.job.is_running()

    def start(self) -> ProcessJob | None:
        """Start the demo (None while one runs): the Runs pane follows it at once."""
        if self.is_running():
            return None
        job = ProcessJob(["demo", *self.FLAGS], kind="demo", grace_s=TRAINING_GRACE_S)   # no parent: may be detached
        job.event.connect(self._on_event)
        job.finished.connect(self._on_finished)
        self.job, self.stages, self.stage, self.stage_runs, self.stage_lines, self.result = job, [], None, {}, [], None
        self.runs.follow_job(job)
        job.start()
        self.running_changed.emit(True)
        self._say("Demo: starting (loading the libraries)…")
        self.pane_requested.emit("runs")
        return job

    @Slot()
    def cancel(self) -> None:
        if self.is_running():
            self.job.cancel()
            self._say(f"Demo: stopping {self._title(self.stage)} after its current step; the runs done are kept."
                      if self.stage else "Demo: stopping…")

    # the job's events
    @Slot(object)
    def _on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "start":
            self.stages = [str(stage) for stage in event.get("stages") or []]
        elif kind == "log" and event.get("stage"):
            stage = str(event["stage"])
            if isinstance(event.get("stage_run"), dict):
                self._on_stage_run(stage, event["stage_run"])
            if isinstance(event.get("stage_done"), dict):
                self._on_stage_done(stage, str(event.get("message") or ""))
        elif kind == "progress" and event.get("stage") in self.stages:
            self._on_progress(event)

    def _on_stage_run(self, stage: str, stage_run: dict) -> None:
        self.stage = stage
        run_id = stage_run.get("run_id")
        if not isinstance(run_id, int) or self.job is None:
            self._say(self._heading(stage))
            return
        self.stage_runs[stage] = run_id
        self.runs.follow_stage(self.job, run_id, inner_event)
        if stage in LIVE_STAGES:
            self.pane_requested.emit("runs")
        self._say(f"{self._heading(stage)} · {stage_run.get('kind') or 'run'} run {run_id}")

    def _on_stage_done(self, stage: str, message: str) -> None:
        if message:
            self.stage_lines.append(message)
            self.stage_finished.emit(message)
        run_id = self.stage_runs.get(stage)
        if stage in EVAL_STAGES and run_id is not None:
            try:
                self.eval_pane.open_run(self.store.get_run(run_id))
            except AhaError as error:
                self._say(f"Demo: cannot show eval run {run_id}: {error}")
                return
            self.pane_requested.emit("eval")
        following = self._next_stage(stage)
        if following is not None:
            self.stage = following
            self._say(self._heading(following))

    def _on_progress(self, event: dict) -> None:
        stage = str(event["stage"])
        self.stage = stage
        self._say(" · ".join([self._heading(stage), *progress_parts(event)]))

    @Slot(object)
    def _on_finished(self, outcome: JobOutcome) -> None:
        if self.sender() is not self.job:
            return
        self.running_changed.emit(False)
        result = outcome.result or {}
        if outcome.status == JobStatus.COMPLETE and result.get("gguf"):
            self.result = result
            self._say(self.summary(result))
            self.model_ready.emit(str(result["gguf"]), result)
        elif outcome.status == JobStatus.CANCELLED:
            where = f" during {self._title(self.stage)}" if self.stage else ""
            self._say(f"Demo cancelled{where}; the runs it finished are kept in the Runs pane.")
        else:
            self._say(f"Demo: {outcome}")

    # the lines
    @staticmethod
    def summary(result: dict) -> str:
        """'Demo complete in 1:52 · pass@1 23.8 % → 44.5 % (+20.7 points)' from the demo's result."""
        parts = ["Demo complete" + (f" in {format_seconds(float(result['seconds']))}"
                                    if isinstance(result.get("seconds"), (int, float)) else "")]
        table = result.get("table") or {}
        before, after = (table.get(key) or {} for key in ("cold_start", "grpo"))
        if before.get("pass@1") is not None and after.get("pass@1") is not None:
            gain = result.get("gain_points")
            parts.append(f"pass@1 {percent(before['pass@1'])} → {percent(after['pass@1'])}"
                         + (f" ({gain:+.1f} points)" if isinstance(gain, (int, float)) else ""))
        return " · ".join(parts)

    def _heading(self, stage: str) -> str:
        if stage in self.stages:
            return f"Demo {self.stages.index(stage) + 1}/{len(self.stages)} · {self._title(stage)}"
        return f"Demo · {self._title(stage)}"

    @staticmethod
    def _title(stage: str | None) -> str:
        return STAGE_TITLES.get(stage or "", stage or "")

    def _next_stage(self, stage: str) -> str | None:
        if stage in self.stages and self.stages.index(stage) + 1 < len(self.stages):
            return self.stages[self.stages.index(stage) + 1]
        return None

    def _say(self, text: str) -> None:
        self.status = text
        self.status_changed.emit(text)


def progress_parts(event: dict) -> list[str]:
    """What a stage's progress event adds to the status line: 'step 37 of 100', '0:42 left'; a stage's
    loading, writing or checking by its label ('writing model.gguf', '45%')."""
    done, total, unit = event.get("done"), event.get("total"), str(event.get("unit") or "")
    label = str(event.get("label") or "")
    parts = []
    if not isinstance(done, (int, float)) or not isinstance(total, (int, float)) or total <= 0:
        return [label] if label else []
    if unit == "steps":
        parts.append(f"step {int(done)} of {int(total)}")
    elif unit == "B":
        parts += [label, f"{format_bytes(done)} of {format_bytes(total)}"]
    else:
        parts += [label, f"{int(done)} of {count(total, unit)}" if total > 1 else ""]
    eta_s = event.get("eta_s")
    if isinstance(eta_s, (int, float)) and eta_s >= 1 and done < total:
        parts.append(f"{format_seconds(float(eta_s))} left")
    return [part for part in parts if part]


class DemoStatus(QtWidgets.QWidget):
    """The demo's line in the window's status bar: the stage in progress and Stop while it runs; then how it
    ended, until dismissed. Its tooltip lists the stages done, one summary line each. Hidden until a demo
    starts."""

    def __init__(self, flow: DemoFlow, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.flow = flow
        self.label = ElidedLabel()
        self.label.setObjectName("Muted")
        self.label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.stop_button = QtWidgets.QToolButton(text="Stop demo", toolTip="Stop the demo after the current "
                                                 "step of its current stage; the runs done are kept")
        self.stop_button.clicked.connect(flow.cancel)
        self.stop_button.clicked.connect(lambda: self.stop_button.setEnabled(False))   # one Stop is enough
        self.dismiss_button = QtWidgets.QToolButton(text="×", toolTip="Hide this line")
        self.dismiss_button.clicked.connect(self.hide)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 6, 0)
        layout.setSpacing(6)
        layout.addWidget(self.label)
        layout.addWidget(self.stop_button)
        layout.addWidget(self.dismiss_button)
        flow.status_changed.connect(self._on_status)
        flow.running_changed.connect(self._on_running)
        flow.stage_finished.connect(lambda _line: self._show_stage_lines())
        self.setVisible(False)

    def text(self) -> str:
        """The whole line (the label elides it when the window is narrow)."""
        return self.label.full_text()

    @Slot(str)
    def _on_status(self, text: str) -> None:
        self.label.set_full_text(text)

    @Slot(bool)
    def _on_running(self, running: bool) -> None:
        self.stop_button.setVisible(running)
        self.stop_button.setEnabled(running)
        self.dismiss_button.setVisible(not running)
        self._show_stage_lines()
        if running:
            self.setVisible(True)

    def _show_stage_lines(self) -> None:
        self.setToolTip("\n".join(self.flow.stage_lines))
