"""A pipeline run in the Runs pane: its stages as a chain of cards, left to right with arrows between them, each
with the stage's title (in two lines when it needs them), kind, status (the table's status colours), key metric
(or summary) and duration; a pending stage is dimmed, the running one outlined in the accent, the one whose
dashboard is open tinted and framed in the accent.
Clicking a card that has a run asks for that run (`stage_opened(run_id)`); the heading's link asks for the
pipeline run itself. What the cards say is engine.stage_chain's (the CLI prints the same), read by the pane.
"""

from __future__ import annotations

from app.qt import Qt, QtGui, QtWidgets, Signal
from app.theme import Colors, colors, status_color
from app.widgets import ElidedLabel, bold
from engine.stage_chain import Chain, Stage, heading

CARD_WIDTH = (128, 240)   # a card's narrowest and widest: R1's seven stages fit beside each other in a 1280 px window
ARROW = "→"


def _rgba(color: str, alpha: int) -> str:
    rgb = QtGui.QColor(color)
    return f"rgba({rgb.red()}, {rgb.green()}, {rgb.blue()}, {alpha})"


def card_style(stage: Stage, selected: bool, c: Colors) -> str:
    """The card's stylesheet: its frame by state (running: the accent, 2 px; the one shown: the accent, 1 px;
    pending: dashed), its tint when its run is the one shown, and its labels' colours (a pending stage's all
    muted)."""
    border = f"2px solid {c.accent}" if stage.running else f"1px solid {c.accent}" if selected \
        else f"1px dashed {_rgba(c.muted, 110)}" if stage.pending else f"1px solid {c.border}"
    background = _rgba(c.accent, 34) if selected else c.surface_alt if stage.pending else c.surface
    text = c.muted if stage.pending else c.text
    status = status_color(stage.status, c) or (c.muted if stage.pending else c.text)
    return (f"#StageCard {{ background: {background}; border: {border}; border-radius: 8px; }}"
            f"#StageCard QLabel {{ background: transparent; border: none; color: {text}; }}"
            f"#StageCard QLabel#StageMuted {{ color: {c.muted}; font-size: 11px; }}"
            f"#StageCard QLabel#StageStatus {{ color: {status}; font-weight: 600; }}")


def title_lines(text: str, metrics: QtGui.QFontMetrics, width: int) -> str:
    """`text` in at most two lines of `width` px: the words that fit on the first (at least one, elided if it
    alone is too wide), the rest on the second, elided at its end. 'SFT on the kept samples' at 116 px:
    'SFT on the kept\nsamples'."""
    if metrics.horizontalAdvance(text) <= width:
        return text
    words = text.split()
    count = 1
    while count < len(words) and metrics.horizontalAdvance(" ".join(words[:count + 1])) <= width:
        count += 1
    first, rest = " ".join(words[:count]), " ".join(words[count:])
    if metrics.horizontalAdvance(first) > width:   # one word, too wide alone
        first = metrics.elidedText(first, Qt.TextElideMode.ElideRight, width)
    if rest and metrics.horizontalAdvance(rest) > width:
        rest = metrics.elidedText(rest, Qt.TextElideMode.ElideRight, width)
    return f"{first}\n{rest}" if rest else first


class StageTitle(ElidedLabel):
    """A card's title, always two lines tall (so the cards of a chain line up): one line when it fits, else
    wrapped at a word (`title_lines`)."""

    def _elide(self) -> None:
        self.setText(title_lines(self.full_text(), self.fontMetrics(), max(self.width(), 40)))


def status_text(stage: Stage) -> str:
    return "starting" if stage.status == "created" else stage.status


class StageCard(QtWidgets.QFrame):
    """One stage: title, 'kind · run N', status, metric or summary, duration (its number is in the tooltip: the
    arrows say the order). Click (or Return/Space when
    focused) emits `clicked(run_id)` for a stage that has a run."""

    clicked = Signal(int)

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("StageCard")
        self.setMinimumWidth(CARD_WIDTH[0])
        self.setMaximumWidth(CARD_WIDTH[1])
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
        self.stage: Stage | None = None
        self._style: str | None = None
        self.title = StageTitle()
        bold(self.title)
        self.title.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.title.setFixedHeight(2 * self.title.fontMetrics().lineSpacing())
        self.kind = ElidedLabel()
        self.kind.setObjectName("StageMuted")
        self.status = QtWidgets.QLabel()
        self.status.setObjectName("StageStatus")
        self.detail = ElidedLabel()
        self.duration = QtWidgets.QLabel()
        self.duration.setObjectName("StageMuted")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(9, 7, 9, 7)
        layout.setSpacing(2)
        for label in (self.title, self.kind, self.status, self.detail):
            layout.addWidget(label)
        footer = QtWidgets.QHBoxLayout()
        footer.addWidget(self.duration)
        footer.addStretch()
        layout.addLayout(footer)

    def set_stage(self, stage: Stage, selected: bool) -> None:
        self.stage = stage
        self.title.set_full_text(stage.title)
        run = f" · run {stage.run_id}" if stage.run_id is not None else ""
        self.kind.set_full_text(f"{stage.kind}{run}")
        self.status.setText(status_text(stage))
        self.detail.set_full_text("not started" if stage.pending and stage.detail == "–" else stage.detail)
        self.duration.setText(stage.duration if stage.seconds is not None or stage.steps else "")
        lines = [f"Stage {stage.number}: {stage.title}" + (f" ({stage.name})" if stage.name != stage.title else ""),
                 *([stage.summary] if stage.summary else []), *([stage.metric] if stage.metric else [])]
        lines += [f"{key} ← {ref}" if ref else f"{key} = {value}" for key, ref, value in stage.inputs]
        lines.append(f"Click to open run {stage.run_id}'s dashboard" if stage.run_id is not None
                     else "Not started yet")
        self.setToolTip("\n".join(lines))
        clickable = stage.run_id is not None
        self.setCursor(Qt.CursorShape.PointingHandCursor if clickable else Qt.CursorShape.ArrowCursor)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus if clickable else Qt.FocusPolicy.NoFocus)
        style = card_style(stage, selected, colors())
        if style != self._style:    # a restyle repolishes every label: only when the look changes
            self._style = style
            self.setStyleSheet(style)

    def mouseReleaseEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt override
        if event.button() == Qt.MouseButton.LeftButton and self.rect().contains(event.position().toPoint()):
            self._click()
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space):
            self._click()
            return
        super().keyPressEvent(event)

    def _click(self) -> None:
        if self.stage is not None and self.stage.run_id is not None:
            self.clicked.emit(self.stage.run_id)


class PipelineChain(QtWidgets.QWidget):
    """The heading ('pipeline r1-mini (run 12): running, 1 of 4 stages complete' and a link to the pipeline
    run) over the cards, which scroll sideways when they do not fit. Signals: `stage_opened(run_id)`,
    `pipeline_opened(run_id)`."""

    stage_opened = Signal(int)
    pipeline_opened = Signal(int)

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.chain: Chain | None = None
        self.cards: list[StageCard] = []
        self.arrows: list[QtWidgets.QLabel] = []
        self.heading = ElidedLabel()
        bold(self.heading)
        self.open_pipeline = QtWidgets.QToolButton(text="Pipeline overview")
        self.open_pipeline.setObjectName("LinkButton")
        self.open_pipeline.setToolTip("Show the pipeline run itself: every stage's line and where its inputs came from")
        self.open_pipeline.setCursor(Qt.CursorShape.PointingHandCursor)
        self.open_pipeline.clicked.connect(lambda: self.chain and self.pipeline_opened.emit(self.chain.run_id))
        keep = self.open_pipeline.sizePolicy()
        keep.setRetainSizeWhenHidden(True)   # hidden on the overview: the heading keeps its height, the cards stay put
        self.open_pipeline.setSizePolicy(keep)
        self.empty = QtWidgets.QLabel("No stages yet: the pipeline has not started its first one.")
        self.empty.setObjectName("Muted")
        self.row = QtWidgets.QHBoxLayout()
        self.row.setContentsMargins(0, 0, 0, 0)
        self.row.setSpacing(4)
        self.row.addWidget(self.empty)
        self.row.addStretch()
        strip = QtWidgets.QWidget()
        strip.setLayout(self.row)
        self.scroll = QtWidgets.QScrollArea()
        self.scroll.setWidget(strip)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        self.scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.viewport().setAutoFillBackground(False)
        strip.setAutoFillBackground(False)
        top = QtWidgets.QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.heading, 1)
        top.addWidget(self.open_pipeline)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 4)
        layout.setSpacing(4)
        layout.addLayout(top)
        layout.addWidget(self.scroll)

    def set_chain(self, chain: Chain, shown_run_id: int | None = None) -> None:
        """Show `chain`; the card of the stage run `shown_run_id` (the one open below) is tinted."""
        self.chain = chain
        self.heading.set_full_text(heading(chain)[0].upper() + heading(chain)[1:])
        self.open_pipeline.setVisible(shown_run_id != chain.run_id)   # the overview is open: no link to it
        while len(self.cards) < len(chain.stages):
            if self.cards:
                arrow = QtWidgets.QLabel(ARROW)
                arrow.setObjectName("Muted")
                arrow.setStyleSheet("font-size: 18px;")
                self.row.insertWidget(self.row.count() - 1, arrow)
                arrow.show()   # at once, not when the layout gets to it: a hidden widget has no width to measure
                self.arrows.append(arrow)
            card = StageCard()
            card.clicked.connect(self.stage_opened)
            self.row.insertWidget(self.row.count() - 1, card, 1)   # the cards share the width (up to their widest)
            card.show()
            self.cards.append(card)
        while len(self.cards) > len(chain.stages):
            for gone in (self.cards.pop(), *([self.arrows.pop()] if self.arrows else [])):
                self.row.removeWidget(gone)       # out of the layout now: the height below is measured on it
                gone.deleteLater()
        for card, stage in zip(self.cards, chain.stages, strict=True):
            card.set_stage(stage, stage.run_id is not None and stage.run_id == shown_run_id)
        self.empty.setVisible(not chain.stages)
        self._fit_height()

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._fit_height()

    def _fit_height(self) -> None:
        """As tall as a card, and the scroll bar's height more only when the cards do not fit side by side."""
        height = max((card.sizeHint().height() for card in self.cards), default=self.empty.sizeHint().height())
        overflow = self.row.minimumSize().width() > self.scroll.width()
        scrollbar = self.scroll.horizontalScrollBar().sizeHint().height() if overflow else 0
        self.scroll.setFixedHeight(height + scrollbar + 2)

    def card_for(self, run_id: int) -> StageCard | None:
        return next((card for card in self.cards if card.stage and card.stage.run_id == run_id), None)
