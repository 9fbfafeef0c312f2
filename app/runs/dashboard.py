"""The Runs pane's live dashboard: a run's curves (pyqtgraph), its ETA split into generation and training, and
the learning-signal warnings as a banner.

It reads the run directory's metrics.jsonl (a trace-generation run: its progress file) and keeps polling it,
so a run started in a terminal or another window is followed the same way; `add_event` is the fast path for
a job this window started. Incoming data only marks the view dirty: a timer redraws at most REDRAW_MS apart,
never once per event. Only the plots whose metrics the run logs are shown. What the numbers mean (the rules
of the warnings, the ETA) is engine.train.signals' and engine.train.follow's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg

from app import theme
from app.qt import Qt, QtCore, QtWidgets
from engine.jobs import format_seconds
from engine.train.follow import JsonlFollower, eta, trace_progress_history
from engine.train.signals import LearningWarning, SignalWatch

POLL_MS = 500          # the files are read this often (≥ 1 update a second while a run is written)
REDRAW_MS = 500        # at most this often the curves are redrawn, however fast events come
PLOT_HEIGHT = 190      # pixels per row of plots
COLUMNS = 2
FILL_MS = 20           # one plot gets its new curves this often during a redraw (each repainted alone)
WATCH_CHUNK = 250      # steps given to the signal watch per turn of the event loop
LIVE_PROGRESS_S = 30   # a job's progress event is trusted over the files' ETA for this long
# Curve colors that read on the light and the dark surface alike; the first is the theme's accent.
CURVE_COLORS = (theme.ACCENT, "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#ec4899", "#64748b", "#84cc16")


@dataclass(frozen=True)
class PlotSpec:
    """One plot: its title and the metrics it draws (a `*` stands for any reward name). `right` metrics go
    on a second axis at the right (a ratio beside a length). `not_with` hides it when that metric exists;
    `instead` draws a better measure of the same thing in place of a metric (pass@1 over k, not its copy)."""

    title: str
    metrics: tuple[str, ...]
    right: tuple[str, ...] = ()
    not_with: str | None = None
    instead: tuple[tuple[str, str], ...] = ()  # (metric, replacement): the metric is left out when the other is there


PLOTS = (
    PlotSpec("Reward", ("reward", "rewards/*/mean")),
    # With num_generations_eval > 1 the held-out curve is eval/pass@1 (eval/accuracy is the same number).
    PlotSpec("Accuracy", ("accuracy", "token_accuracy", "eval/pass@1", "eval/accuracy", "eval/cons@k", "eval/pass@k",
                          "eval/format"), instead=(("eval/accuracy", "eval/pass@1"),)),
    PlotSpec("Groups with equal rewards (frac_reward_zero_std)", ("frac_reward_zero_std",)),
    PlotSpec("Completion length (tokens) · clipped ratio (right)",
             ("completions/mean_length", "completions/min_length", "completions/max_length"),
             right=("completions/clipped_ratio",)),
    PlotSpec("Loss", ("loss", "kd_loss", "eval/loss"), not_with="reward"),  # GRPO's loss ≈ 0: no progress
    PlotSpec("KL", ("kl",)),
    PlotSpec("Clip ratios", ("clip_ratio/low", "clip_ratio/high", "clip_ratio/region")),
    PlotSpec("Entropy", ("entropy",)),
    PlotSpec("Grad norm", ("grad_norm",)),
    PlotSpec("Learning rate", ("learning_rate",)),
    PlotSpec("Time per step (s)", ("generation_s", "training_s")),
    PlotSpec("Tokens per second", ("tokens_per_s",)),
    PlotSpec("Trace acceptance rate", ("acceptance_rate",)),
    PlotSpec("Rejected replies by reason", ("rejected/*",)),
)


def _matches(pattern: str, name: str) -> bool:
    if "*" not in pattern:
        return pattern == name
    head, tail = pattern.split("*", 1)
    return name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail)


def series_for(spec: PlotSpec, names: list[str]) -> tuple[list[str], list[str]]:
    """(left, right) metric names of `spec` among the run's metric `names`, in the spec's order."""
    dropped = {metric for metric, replacement in spec.instead if replacement in names}

    def pick(patterns):
        return [name for pattern in patterns for name in names if _matches(pattern, name) and name not in dropped]
    return pick(spec.metrics), pick(spec.right)


def heldout_labels(config: dict) -> dict[str, str]:
    """The legend names of the held-out sampling metrics, with the run's k (num_generations_eval):
    {"eval/pass@1": "held-out pass@1 (k=4)", "eval/cons@k": "held-out cons@4", "eval/pass@k": "held-out pass@4"}."""
    k = config.get("num_generations_eval")
    if not isinstance(k, int) or isinstance(k, bool):
        return {"eval/pass@1": "held-out pass@1", "eval/cons@k": "held-out cons@k", "eval/pass@k": "held-out pass@k"}
    return {"eval/pass@1": f"held-out pass@1 (k={k})", "eval/cons@k": f"held-out cons@{k}",
            "eval/pass@k": f"held-out pass@{k}"}


def _label(metric: str) -> str:
    """'rewards/accuracy/mean' → 'accuracy', 'completions/mean_length' → 'mean', 'clip_ratio/low' → 'low'."""
    if metric.startswith("rewards/") and metric.endswith("/mean"):
        return metric[len("rewards/"):-len("/mean")]
    if metric.startswith("completions/"):
        return metric[len("completions/"):].removesuffix("_length").replace("_", " ")
    if metric.startswith(("clip_ratio/", "rejected/")):
        return metric.split("/", 1)[1]
    return metric.replace("_", " ")


def metrics_file(run: dict) -> tuple[Path | None, bool]:
    """(the file the run's curves are in, whether it is a trace-generation progress file)."""
    config = run.get("config") or {}
    if run.get("kind") == "generate" and config.get("output"):
        from engine.distill.generate import progress_path

        return progress_path(Path(config["output"]).expanduser()), True
    return (Path(run["dir"]) / "metrics.jsonl" if run.get("dir") else None), False


class NumberAxis(pg.AxisItem):
    """Tick labels in three significant digits, so that a learning rate of 1e-05 shows as 1e-05 (the default
    axis writes its decimals out and shows nothing that small)."""

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph's name
        return [f"{value * scale:.3g}" for value in values]


def new_curve() -> pg.PlotDataItem:
    curve = pg.PlotDataItem([], [], connect="finite")
    curve.setDownsampling(auto=True, method="peak")  # thousands of steps: about one point per pixel
    curve.setClipToView(True)
    return curve


class _Plot:
    """One PlotItem (kept from run to run: making one is the slow part) with the curves of a run's metrics on
    its left axis and, when the spec asks, a second ViewBox on the right axis."""

    def __init__(self, item: pg.PlotItem, spec: PlotSpec, left: list[str], right: list[str],
                 labels: dict[str, str] | None = None):
        self.item, self.spec, self.left, self.right = item, spec, left, right
        labels = labels or {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        pool = list(getattr(item, "aha_curves", []))  # the curves of a previous run: reused, not made again
        item.aha_curves = []
        item.clear()
        if item.legend is not None:
            item.legend.clear()
        legend = item.legend
        if legend is None and len(left) + len(right) > 1:
            legend = item.addLegend(offset=(6, 4), labelTextSize="8pt")
        self.right_view = getattr(item, "aha_right_view", None)
        if right and self.right_view is None:
            view = self.right_view = item.aha_right_view = pg.ViewBox()
            item.showAxis("right")
            item.scene().addItem(view)
            item.getAxis("right").linkToView(view)
            view.setXLink(item)
            item.vb.sigResized.connect(lambda: view.setGeometry(item.vb.sceneBoundingRect()))
        if self.right_view is not None:
            self.right_view.clear()
        for index, name in enumerate([*left, *right]):
            curve = pool.pop() if pool else new_curve()
            item.aha_curves.append(curve)
            dashed = Qt.PenStyle.DashLine if name in right else Qt.PenStyle.SolidLine
            curve.setPen(pg.mkPen(CURVE_COLORS[index % len(CURVE_COLORS)], width=1, style=dashed))
            curve.opts["name"] = labels.get(name) or _label(name)
            curve.setData([], [])
            if name in right:
                self.right_view.addItem(curve)
                if legend is not None:
                    legend.addItem(curve, curve.opts["name"])
            else:
                item.addItem(curve)  # and to the legend, under its name
            self.curves[name] = curve

    def set_data(self, steps: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        for name, curve in self.curves.items():
            curve.setData(steps, columns[name])
        if self.right_view is not None:
            self.right_view.enableAutoRange()

    def points(self, metric: str) -> int:
        """How many finite points the curve of `metric` has (before downsampling for the screen)."""
        y = self.curves[metric].yData
        return 0 if y is None else int(np.isfinite(y).sum())


def _as_number(value) -> float | None:
    """A metric's value as a float (None logged for NaN becomes NaN), or None for what is not a number."""
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    return math.nan if value is None else None


class _Columns:
    """A run's metrics by column: one list per metric, a row per step, so that thousands of steps become
    arrays without a pass over dicts. A step that comes again (a job's event, then the file's line) fills
    the same row; steps out of order are sorted when the arrays are made."""

    def __init__(self):
        self.steps: list[int] = []
        self.rows: dict[int, int] = {}              # step → row
        self.columns: dict[str, list[float]] = {}   # metric → a value per row (NaN: not logged at that step)
        self.names: list[str] = []                  # the metrics in the order they first came
        self.sorted = True

    def add(self, record: dict) -> bool:
        """Put one record in; False when it has no integer step."""
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            return False
        row = self.rows.get(step)
        if row is None:
            row = self.rows[step] = len(self.steps)
            if self.steps and step < self.steps[-1]:
                self.sorted = False
            self.steps.append(step)
        size = len(self.steps)
        for key, value in record.items():
            kind = type(value)
            if key == "step" or (kind is not float and kind is not int and value is not None):
                continue  # text, dicts (a trace run's `rejected`), booleans
            column = self.columns.get(key)
            if column is None:
                column = self.columns[key] = []
                self.names.append(key)
            if len(column) < size:
                column.extend([math.nan] * (size - len(column)))
            column[row] = math.nan if value is None else float(value)
        return True

    def extend(self, records: list[dict]) -> list[dict]:
        """Put records in; returns those that had an integer step. New steps past the last one (a file read
        from the start, or its next lines) go in a column at a time; the rest one by one (`add`)."""
        kept = [record for record in records if type(record.get("step")) is int]
        steps = [record["step"] for record in kept]
        last = self.steps[-1] if self.steps else -math.inf
        if not kept or steps[0] <= last or any(a >= b for a, b in zip(steps, steps[1:], strict=False)):
            for record in kept:
                self.add(record)
            return kept
        size, start = len(self.steps), len(self.steps)
        self.steps.extend(steps)
        self.rows.update({step: start + index for index, step in enumerate(steps)})
        every = set().union(*kept) - {"step"}
        first = [key for key in kept[0] if key in every]  # the order they are logged in, then any others
        for key in first + sorted(every - set(first)):
            values = [_as_number(record.get(key)) for record in kept]
            column = self.columns.get(key)
            if column is None:
                if all(value is None for value in values):
                    continue  # text or dicts only
                column = self.columns[key] = []
                self.names.append(key)
            if len(column) < size:
                column.extend([math.nan] * (size - len(column)))
            column.extend(math.nan if value is None else value for value in values)
        return kept

    def arrays(self, names) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(steps, {name: values}) as float arrays in step order."""
        size = len(self.steps)
        x = np.asarray(self.steps, dtype=float)
        columns = {}
        for name in names:
            column = self.columns.get(name, [])
            values = np.full(size, np.nan)
            values[:len(column)] = column
            values[~np.isfinite(values)] = np.nan
            columns[name] = values
        if not self.sorted:
            order = np.argsort(x, kind="stable")
            x = x[order]
            columns = {name: values[order] for name, values in columns.items()}
        return x, columns

    def last_step(self) -> int:
        return max(self.steps) if self.steps else 0

    def timing_history(self) -> list[dict]:
        """The step times as engine.train.follow.eta reads them."""
        names = [name for name in ("generation_s", "training_s", "time") if name in self.columns]
        x, columns = self.arrays(names)
        return [{"step": int(step), **{name: float(columns[name][index]) for name in names}}
                for index, step in enumerate(x)]


class RunDashboard(QtWidgets.QWidget):
    """The selected run's curves, ETA and learning-signal warnings, following the run while it is written.
    `open_run(run)` (a store row), `add_event(event)` (a job's events, the fast path), `clear()`."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.title = QtWidgets.QLabel(objectName="SectionTitle")
        self.eta_label = QtWidgets.QLabel(objectName="Muted")
        self.eta_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner = QtWidgets.QFrame(objectName="WarningBanner")
        self.banner_layout = QtWidgets.QVBoxLayout(self.banner)
        self.banner_layout.setContentsMargins(10, 6, 10, 6)
        self.banner_layout.setSpacing(3)
        self.banner.hide()
        self.empty = QtWidgets.QLabel("No metrics yet: the curves appear with the run's first logged step.",
                                      objectName="Muted", alignment=Qt.AlignmentFlag.AlignCenter)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.ci.setSpacing(6)
        self.scroll = QtWidgets.QScrollArea(widgetResizable=True, frameShape=QtWidgets.QFrame.Shape.NoFrame)
        self.scroll.setWidget(self.graphics)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.title)
        layout.addWidget(self.eta_label)
        layout.addWidget(self.banner)
        layout.addWidget(self.empty, 1)
        layout.addWidget(self.scroll, 1)
        self.plots: dict[str, _Plot] = {}   # title → plot, in PLOTS order
        self.warnings: list[LearningWarning] = []
        self.run: dict | None = None
        self._poll = QtCore.QTimer(self, interval=POLL_MS, timeout=self._on_poll)
        self._redraw = QtCore.QTimer(self, interval=REDRAW_MS, singleShot=True, timeout=self._draw)
        self._items: dict[str, pg.PlotItem] = {}  # title → its PlotItem, made once (~30 ms each)
        self._warm = QtCore.QTimer(self, interval=0, timeout=self._make_one_item)  # while the window idles
        self._watching = QtCore.QTimer(self, interval=0, timeout=self._watch_some)
        self._filling = QtCore.QTimer(self, interval=FILL_MS, timeout=self._fill_one)
        self._to_fill: list[tuple] = []
        self.clear()
        self._apply_theme()
        self._warm.start()

    # the interface

    def open_run(self, run: dict) -> None:
        """Show `run` (a Store row: id, kind, status, dir, config) from its files, then keep following them."""
        self.clear()
        self.run = run
        config = run.get("config") or {}
        self.title.setText(f"{run.get('kind', 'run')} run {run.get('id', '')} · {run.get('status', '')}".strip())
        self._max_steps = config.get("max_steps")
        path, self._trace_progress = metrics_file(run)
        self._follower = JsonlFollower(path) if path is not None else None
        self._read_files()
        self._draw(at_once=True)
        self._poll.start()

    def add_event(self, event: dict) -> None:
        """A job's event: `metrics` adds its step (the same step read later from the file replaces it, so
        nothing counts twice), `progress` updates the ETA. Redrawn by the timer, not here."""
        if self.run is None:
            return
        kind = event.get("type")
        if kind == "metrics" and isinstance(event.get("step"), int):
            record = {key: value for key, value in event.items() if key not in ("v", "type")}
            self._add_records([record])
        elif kind == "progress" and event.get("stage") == "train":
            self._progress = (time.monotonic(), event)
            self.eta_label.setText(self.eta_text())
        elif kind == "done" or kind == "error":
            self._progress = None
            self.eta_label.setText(self.eta_text())

    def clear(self) -> None:
        self._poll.stop()
        self._redraw.stop()
        self._filling.stop()
        self._to_fill = []
        self.run = None
        self._follower: JsonlFollower | None = None
        self._trace_progress = False
        self._last_trace_record: dict | None = None
        self._max_steps = None
        self._data = _Columns()
        self._dirty = False               # the columns have changed since the curves were last set
        self._watch = SignalWatch()
        self._to_watch: list[dict] = []   # records the watch has still to see, in step order
        self._queued_step = 0
        self._watching.stop()
        self._progress: tuple[float, dict] | None = None
        self._layout_names: tuple = ()
        self.warnings = []
        self.title.setText("")
        self.eta_label.setText("")
        self._show_warnings()
        self.graphics.clear()
        self.plots = {}
        self.empty.show()
        self.scroll.hide()

    # reading

    def _read_files(self) -> bool:
        if self._follower is None:
            return False
        batch = self._follower.read()
        if batch.restarted:  # a resume rewrote the file: what was shown after its checkpoint is gone
            self._data, self._watch, self._to_watch, self._queued_step = _Columns(), SignalWatch(self._config()), [], 0
            self._dirty = True
            self._last_trace_record, self.warnings = None, []
            self._show_warnings()
        records = batch.records
        if self._trace_progress:
            records = trace_progress_history(records, self._last_trace_record)
            self._last_trace_record = records[-1] if records else self._last_trace_record
        self._add_records(records, draw=False)
        return bool(records) or batch.restarted

    def _add_records(self, records: list[dict], draw: bool = True) -> None:
        """Records into the columns; each step after the last one watched is queued for the signal watch
        (engine.train.signals), which `_watch_some` feeds a chunk at a time, so the warnings are computed
        once per step and a long run's history never holds up the first drawing of its curves."""
        for record in self._data.extend(records):
            if record["step"] > self._queued_step:
                self._to_watch.append(record)
                self._queued_step = record["step"]
        if self._to_watch and not self._watching.isActive():
            self._watching.start()
        if records:
            self._dirty = True
        if draw:
            self._schedule()

    def _watch_some(self) -> None:
        watch = self._watch
        if not watch.config and self.run is not None:
            watch.config = self._config()
        chunk, self._to_watch = self._to_watch[:WATCH_CHUNK], self._to_watch[WATCH_CHUNK:]
        for record in chunk:
            watch.update(record["step"], record)
        if not self._to_watch:
            self._watching.stop()
        if len(self.warnings) != len(watch.warnings):
            self.warnings = watch.warnings
            self._show_warnings()

    def _config(self) -> dict:
        return dict((self.run or {}).get("config") or {})

    def _on_poll(self) -> None:
        if self.run is not None and self.isVisible() and self._read_files():
            self._schedule()
        elif self._progress is not None:
            self.eta_label.setText(self.eta_text())  # the live ETA counts down; the curves are as they were

    def _schedule(self) -> None:
        if not self._redraw.isActive():
            self._redraw.start()

    # drawing

    def _draw(self, at_once: bool = False) -> None:
        """The curves from the columns: every plot now (`at_once`, when a run opens), else one plot per turn
        of the event loop, so that a redraw is ten small repaints with the loop running between them."""
        if self.run is None:
            return
        self.eta_label.setText(self.eta_text())
        if not self._dirty:
            return
        self._dirty = False
        if not self._data.steps:  # a resume rewrote the file to nothing yet
            for plot in self.plots.values():
                plot.set_data(np.zeros(0), {name: np.zeros(0) for name in plot.curves})
            return
        self._ensure_layout()
        names = list(dict.fromkeys(name for plot in self.plots.values() for name in plot.curves))
        x, columns = self._data.arrays(names)
        self._to_fill = [(plot, x, columns) for plot in self.plots.values()]
        if at_once:
            while self._to_fill:
                self._fill_one()
        else:
            self._filling.start()

    def _fill_one(self) -> None:
        if not self._to_fill:
            self._filling.stop()
            return
        plot, x, columns = self._to_fill.pop(0)
        plot.set_data(x, columns)

    def _ensure_layout(self) -> None:
        """The plots for the metrics the run has: laid out again only when a plot appears."""
        chosen = []
        names = self._data.names
        for spec in PLOTS:
            if spec.not_with and spec.not_with in self._data.columns:
                continue
            left, right = series_for(spec, names)
            if left or right:
                chosen.append((spec, left, right))
        key = tuple((spec.title, tuple(left), tuple(right)) for spec, left, right in chosen)
        if key == self._layout_names:
            return
        self._layout_names = key
        self.graphics.clear()
        self.plots = {}
        for index, (spec, left, right) in enumerate(chosen):
            item = self._item(spec.title)
            self.graphics.addItem(item, row=index // COLUMNS, col=index % COLUMNS)
            self.plots[spec.title] = _Plot(item, spec, left, right, heldout_labels(self._config()))
        rows = math.ceil(len(chosen) / COLUMNS)
        self.graphics.setMinimumHeight(rows * PLOT_HEIGHT)
        self.empty.setVisible(not chosen)
        self.scroll.setVisible(bool(chosen))

    def _item(self, title: str) -> pg.PlotItem:
        item = self._items.get(title)
        if item is None:
            item = self._items[title] = pg.PlotItem(axisItems={"left": NumberAxis("left"),
                                                                "right": NumberAxis("right")})
            # No grid: its lines were three quarters of a repaint's time (45 ms of 60 for ten plots)
            item.setMenuEnabled(False)
            item.getViewBox().setMouseEnabled(x=True, y=False)
            item.getAxis("left").enableAutoSIPrefix(False)  # a learning rate of 1e-5 keeps its tick labels
            item.getAxis("left").setWidth(52)  # room for "7.5e-06" from the first paint on
            item.hideAxis("right")  # given as an axis item, it shows; _Plot shows it for a plot with right metrics
            self._style_item(title, item)
        return item

    def _style_item(self, title: str, item: pg.PlotItem) -> None:
        colors = theme.colors()
        item.setTitle(title, color=colors.text, size="9pt")
        for axis in ("left", "bottom", "right"):
            item.getAxis(axis).setPen(colors.border)
            item.getAxis(axis).setTextPen(colors.muted)

    def _make_one_item(self) -> None:
        """One plot more made ahead of time, with curves for it (a timer while the window idles), so opening a
        run only fills them."""
        missing = [spec.title for spec in PLOTS if spec.title not in self._items]
        if not missing:
            self._warm.stop()
            return
        item = self._item(missing[0])
        item.aha_curves = [new_curve() for _ in range(3)]

    def _show_warnings(self) -> None:
        while self.banner_layout.count():
            self.banner_layout.takeAt(0).widget().deleteLater()
        for warning in self.warnings:
            label = QtWidgets.QLabel(f"⚠ step {warning.step}: {warning.message}", wordWrap=True,
                                     objectName="BannerText")
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.banner_layout.addWidget(label)
        self.banner.setVisible(bool(self.warnings))

    def eta_text(self) -> str:
        """'step 12 of 100 · 1:40 left: generation 1:15, training 25 s' from the job's last progress (while
        fresh) or the logged steps' times."""
        steps = self._data.steps
        last = self._data.last_step()
        max_steps = self._max_steps
        if self._progress is not None and time.monotonic() - self._progress[0] < LIVE_PROGRESS_S:
            at, event = self._progress
            last = max(last, int(event.get("step") or 0))
            max_steps = event.get("max_steps") or max_steps
            left = max_steps - last if max_steps else 0
            total = event.get("eta_s")
            phase = f" · now: {event['phase']}" if event.get("phase") else ""
            if total is not None:
                total = max(total - (time.monotonic() - at), 0.0)
                parts = [(name, event.get(f"{name}_s")) for name in ("generation", "training")]
                split = [f"{name} {format_seconds(value * left)}" for name, value in parts if value is not None]
                return self._eta_line(last, max_steps, total, split) + phase
            return (f"step {last} of {max_steps}" if max_steps else f"step {last}") + phase
        if self._trace_progress:
            return f"{last} prompts done" if steps else ""
        left = eta(self._data.timing_history(), max_steps)
        if left is None:
            return f"step {last} of {max_steps}" if max_steps and steps else ""
        split = [f"{name} {format_seconds(value)}" for name, value in (("generation", left.generation),
                                                                         ("training", left.training))
                 if value is not None]
        return self._eta_line(last, max_steps, left.total, split)

    @staticmethod
    def _eta_line(last: int, max_steps, total: float, split: list[str]) -> str:
        line = f"step {last} of {max_steps} · {format_seconds(total)} left"
        return f"{line}: {', '.join(split)}" if split else line

    # the theme

    def changeEvent(self, event: QtCore.QEvent) -> None:  # noqa: N802 - Qt override
        super().changeEvent(event)
        if event.type() in (QtCore.QEvent.Type.PaletteChange, QtCore.QEvent.Type.StyleChange):
            self._apply_theme()

    def _apply_theme(self) -> None:
        colors = theme.colors()
        self.graphics.setBackground(colors.surface)
        for title, item in self._items.items():
            self._style_item(title, item)
        self.banner.setStyleSheet(f"#WarningBanner {{ border: 1px solid {colors.warning}; border-radius: 8px; }}"
                                  f"#BannerText {{ color: {colors.warning}; }}")
