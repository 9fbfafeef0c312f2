"""Comparing two or more runs: one metric's curves overlaid on the same axes (a picker for the metric, a legend
naming each run) and a table of the settings that differ. The curves are the store's metrics
(Store.metric_series), read again every few seconds while a compared run is still running; the diff is
engine.run_index.settings_diff.
"""

from __future__ import annotations

import pyqtgraph

from app.qt import Qt, QtCore, QtWidgets, Slot
from app.theme import colors
from engine import run_index
from engine.store import ACTIVE_RUN_STATUSES, Store

# Curves' colors, told apart in both themes (Okabe–Ito, without black and yellow).
CURVE_COLORS = ("#7c5cff", "#e69f00", "#009e73", "#d55e00", "#56b4e9", "#cc79a7", "#0072b2")


def run_label(run: dict) -> str:
    """'run 7 · grpo' (the legend's and the diff's name of a run)."""
    return f"run {run['id']} · {run['kind']}"


class RunComparison(QtWidgets.QDialog):
    """The runs `run_ids` side by side: `metric_box` picks the curve, `plot` overlays them (one `curves[id]`
    per run, named in the legend), `diff_table` lists the differing settings, one column per run."""

    REFRESH_MS = 2000

    def __init__(self, store: Store, run_ids: list[int], parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        if len(run_ids) < 2:
            raise ValueError("RunComparison compares two or more runs")
        self.store = store
        self.runs = [store.get_run(run_id) for run_id in run_ids]
        self.setWindowTitle("Compare " + ", ".join(f"run {run['id']}" for run in self.runs))
        self.resize(980, 640)
        self.curves: dict[int, pyqtgraph.PlotDataItem] = {}
        self.metric_box = QtWidgets.QComboBox()
        self.metric_box.setMinimumWidth(220)
        self.empty = QtWidgets.QLabel()
        self.empty.setObjectName("Muted")
        self.plot = self._make_plot()
        self.diff_table = QtWidgets.QTableWidget()
        self._arrange()
        names, first = run_index.comparable_metrics(store, run_ids)
        self.metric_box.addItems(names)
        if first is not None:
            self.metric_box.setCurrentText(first)
        self.metric_box.currentTextChanged.connect(self._on_metric_changed)
        self.show_metric(self.metric_box.currentText())
        self._fill_diff()
        self.timer = QtCore.QTimer(self, interval=self.REFRESH_MS, timeout=self._on_timer)
        if any(run["status"] in ACTIVE_RUN_STATUSES for run in self.runs):
            self.timer.start()

    def _make_plot(self) -> pyqtgraph.PlotWidget:
        palette = colors()
        plot = pyqtgraph.PlotWidget(background=palette.surface)
        plot.showGrid(x=True, y=True, alpha=0.2)
        plot.setLabel("bottom", "step", color=palette.text)
        for axis in ("bottom", "left"):
            plot.getAxis(axis).enableAutoSIPrefix(False)  # a flat 0 reward read "reward (x0.001)" from -400 to 400
            plot.getAxis(axis).setTextPen(palette.text)
            plot.getAxis(axis).setPen(palette.border)
        self.legend = plot.addLegend(offset=(10, 10), labelTextColor=palette.text)
        return plot

    def _arrange(self) -> None:
        picker = QtWidgets.QHBoxLayout()
        picker.addWidget(QtWidgets.QLabel("Metric"))
        picker.addWidget(self.metric_box)
        picker.addWidget(self.empty)
        picker.addStretch()
        self.diff_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.diff_table.verticalHeader().setVisible(False)
        self.diff_table.setAlternatingRowColors(True)
        self.diff_table.setWordWrap(False)
        self.diff_label = QtWidgets.QLabel()
        self.diff_label.setObjectName("Muted")
        below = QtWidgets.QWidget()
        below_layout = QtWidgets.QVBoxLayout(below)
        below_layout.setContentsMargins(0, 0, 0, 0)
        below_layout.addWidget(self.diff_label)
        below_layout.addWidget(self.diff_table)
        splitter = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.plot)
        splitter.addWidget(below)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(picker)
        layout.addWidget(splitter, 1)

    def show_metric(self, name: str) -> None:
        """Draw `name`'s curve of every run (a run without it has no curve, and the line above says so)."""
        self.plot.clear()                      # the legend's entries go with their curves
        self.curves = {}
        missing = []
        for index, run in enumerate(self.runs):
            points = [(step, value) for step, value in self.store.metric_series(run["id"], name) if value is not None]
            if not points:
                missing.append(f"run {run['id']}")
                continue
            steps, values = zip(*points, strict=True)
            pen = pyqtgraph.mkPen(CURVE_COLORS[index % len(CURVE_COLORS)], width=2)
            self.curves[run["id"]] = self.plot.plot(list(steps), list(values), pen=pen, name=run_label(run),
                                                    symbol="o" if len(points) < 30 else None, symbolSize=5,
                                                    symbolBrush=CURVE_COLORS[index % len(CURVE_COLORS)])
        self.plot.setLabel("left", name, color=colors().text)
        self.empty.setText(f"No {name} in {', '.join(missing)}" if name and missing else
                           "" if name else "These runs recorded no metrics yet.")

    def legend_names(self) -> list[str]:
        return [label.text for _, label in self.legend.items]

    def _fill_diff(self) -> None:
        diff = run_index.settings_diff([run["config"] for run in self.runs])
        self.diff_label.setText(f"{len(diff)} setting{'s differ' if len(diff) != 1 else ' differs'}"
                                + ("" if diff else "; these runs were started with the same settings"))
        self.diff_table.setColumnCount(1 + len(self.runs))
        self.diff_table.setHorizontalHeaderLabels(["Setting", *(run_label(run) for run in self.runs)])
        self.diff_table.setRowCount(len(diff))
        for row, (key, values) in enumerate(diff):
            for column, text in enumerate([key, *values]):
                item = QtWidgets.QTableWidgetItem(text)
                item.setToolTip(text)
                self.diff_table.setItem(row, column, item)
        header = self.diff_table.horizontalHeader()
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)

    def diff(self) -> dict[str, list[str]]:
        """The diff table's content: setting → one text per run."""
        return {self.diff_table.item(row, 0).text(): [self.diff_table.item(row, column).text()
                                                      for column in range(1, self.diff_table.columnCount())]
                for row in range(self.diff_table.rowCount())}

    @Slot(str)
    def _on_metric_changed(self, name: str) -> None:
        self.show_metric(name)

    @Slot()
    def _on_timer(self) -> None:
        self.runs = [self.store.get_run(run["id"]) for run in self.runs]
        self.show_metric(self.metric_box.currentText())
        if not any(run["status"] in ACTIVE_RUN_STATUSES for run in self.runs):
            self.timer.stop()
