"""The "aha" curve: accuracy by thinking length, one line per model (pyqtgraph). Each point is one of the
runner's quantile buckets of thinking tokens (`by_thinking_length` in eval.json), drawn at the bucket's middle;
its tooltip gives the bucket's range and sample count. Does thinking longer help this model?
"""

from __future__ import annotations

import pyqtgraph

from app.qt import QtCore, QtWidgets
from app.runs.compare import CURVE_COLORS
from app.theme import colors
from engine.eval.results import EvalResults, thinking_curve


class ThinkingLengthPlot(QtWidgets.QWidget):
    """`show_results(results)` draws every model that has buckets; `curves` (model index → its line) and
    `legend_names()` are for tests and screenshots."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.curves: dict[int, pyqtgraph.PlotDataItem] = {}
        self.plot = pyqtgraph.PlotWidget()
        self.plot.setMinimumHeight(160)
        self.empty = QtWidgets.QLabel("The curve shows once a model's samples are scored.", objectName="Muted")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.empty)
        self.legend = self.plot.addLegend(offset=(-10, 10), labelTextSize="9pt")
        self._style()

    def _style(self) -> None:
        palette = colors()
        self.plot.setBackground(palette.surface)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        for axis in ("bottom", "left"):
            self.plot.getAxis(axis).enableAutoSIPrefix(False)
            self.plot.getAxis(axis).setPen(palette.border)      # also colours the axis label: the text pen next
            self.plot.getAxis(axis).setTextPen(palette.text)
        self.plot.setLabel("bottom", "thinking tokens (the middle of each quantile bucket)", color=palette.text)
        self.plot.setLabel("left", "accuracy", color=palette.text)
        self.legend.setLabelTextColor(palette.text)
        self.legend.setBrush(pyqtgraph.mkBrush(palette.surface + "d0"))
        self.legend.setPen(pyqtgraph.mkPen(palette.border))

    def changeEvent(self, event: QtCore.QEvent) -> None:  # noqa: N802 - Qt override
        super().changeEvent(event)
        if event.type() in (QtCore.QEvent.Type.PaletteChange, QtCore.QEvent.Type.StyleChange):
            self._style()

    def show_results(self, results: EvalResults) -> None:
        self.plot.clear()                        # the legend's entries go with their curves
        self.curves = {}
        models = results.models
        for position, model in enumerate(models):
            xs, ys, counts = thinking_curve(model)
            if not xs:
                continue
            color = CURVE_COLORS[position % len(CURVE_COLORS)]
            # Each later line is drawn thinner on top of the earlier ones, so two models with the same curve
            # (an f16 and its q8_0 that answer alike) both show: the earlier as a rim around the later.
            wider = len(models) - 1 - position
            curve = self.plot.plot(xs, ys, pen=pyqtgraph.mkPen(color, width=1.5 + 1.3 * wider),
                                   name=str(model.get("label")), symbol="o", symbolSize=6 + 3 * wider,
                                   symbolBrush=color, symbolPen=color)
            curve.setToolTip("\n".join(f"{x:.0f} tokens: {y * 100:.0f}% of {n}" for x, y, n in zip(xs, ys, counts,
                                                                                                  strict=True)))
            self.curves[model.get("index", position)] = curve
        self.plot.setYRange(-0.03, 1.03, padding=0)   # a line at 0 or 1 stays clear of the frame
        self.plot.enableAutoRange(axis="x")
        self.empty.setVisible(not self.curves)

    def legend_names(self) -> list[str]:
        return [label.text for _, label in self.legend.items]
