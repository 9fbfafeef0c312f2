"""Compare pane: one prompt to two models (or one model with two sampling settings or two thinking budgets),
side by side — both think traces, their lengths and times, and the two final answers next to each other.

Widgets only: engine.chat.compare runs the two sides (one after the other, on one worker thread here, each with
its own loaded model) and sums them up. The model lists are read again whenever the pane is shown (models
added from `aha models …` or a rescan appear).
"""

from __future__ import annotations

from app.chat.messages import AssistantMessageWidget
from app.chat.session import ModelHost
from app.chat.settings import DEFAULT_BUDGET_TOKENS
from app.qt import Qt, QtWidgets
from app.workers import ThreadJob
from engine.chat import compare
from engine.chat.conversation import stats_fields
from engine.errors import AhaError

ROWS = tuple(stats_fields({}))  # the table's rows: "Thinking", "Answer", …, "How it ended"


class Side(QtWidgets.QFrame):
    """One column: model, sampling and thinking budget pickers above a reply."""

    def __init__(self, label: str, parent=None):
        super().__init__(parent)
        self.model = QtWidgets.QComboBox()
        self.sampling = QtWidgets.QComboBox()
        self.sampling.addItems(compare.SAMPLINGS)
        self.budget_on = QtWidgets.QCheckBox("Budget")
        self.budget_on.setToolTip("End this side's thought at this many tokens (the Chat pane's thinking budget)")
        self.budget = QtWidgets.QSpinBox(minimum=0, maximum=131072, singleStep=256, value=DEFAULT_BUDGET_TOKENS,
                                         suffix=" tokens", enabled=False)
        self.budget.setToolTip(self.budget_on.toolTip())
        self.budget_on.toggled.connect(self.budget.setEnabled)
        pickers = QtWidgets.QHBoxLayout()
        pickers.addWidget(self.model, 1)
        pickers.addWidget(self.sampling)
        budget = QtWidgets.QHBoxLayout()            # its own line: the two columns fit a narrow window
        budget.addWidget(self.budget_on)
        budget.addWidget(self.budget)
        budget.addStretch()
        choices = QtWidgets.QVBoxLayout()
        choices.addLayout(pickers)
        choices.addLayout(budget)
        header = QtWidgets.QHBoxLayout()
        header.addWidget(QtWidgets.QLabel(label, objectName="EmptyTitle"), 0, Qt.AlignmentFlag.AlignTop)
        header.addLayout(choices, 1)
        scroll = QtWidgets.QScrollArea(widgetResizable=True, frameShape=QtWidgets.QFrame.Shape.NoFrame)
        holder = QtWidgets.QWidget()
        self.holder_layout = QtWidgets.QVBoxLayout(holder)
        self.holder_layout.addStretch()
        scroll.setWidget(holder)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(scroll, 1)
        self.reply: AssistantMessageWidget | None = None

    def new_reply(self) -> AssistantMessageWidget:
        """Replace the previous reply with a fresh, streaming one."""
        if self.reply is not None:
            self.reply.hide()             # gone now, even before the deferred delete runs
            self.reply.setParent(None)
            self.reply.deleteLater()
        self.reply = AssistantMessageWidget()
        budget = self.thinking_budget()
        self.reply.author.setText(f"{self.model.currentText() or 'Assistant'} · {self.sampling.currentText()}"
                                  + (f" · budget {budget} tokens" if budget is not None else ""))
        self.reply.regenerate_button.hide()
        self.holder_layout.insertWidget(0, self.reply)
        self.reply.start_stream()
        return self.reply

    def thinking_budget(self) -> int | None:
        return self.budget.value() if self.budget_on.isChecked() else None

    def plan(self) -> compare.Plan:
        return compare.Plan(self.model.currentData() or "", **compare.SAMPLINGS[self.sampling.currentText()],
                            thinking_budget=self.thinking_budget())


class ComparePane(QtWidgets.QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.prompt = QtWidgets.QPlainTextEdit(placeholderText="One prompt, two models, two sampling settings or "
                                                               "two thinking budgets…")
        self.prompt.setFixedHeight(70)
        self.max_tokens = QtWidgets.QSpinBox(minimum=16, maximum=131072, singleStep=512, value=4096, prefix="max ")
        self.run_button = QtWidgets.QPushButton("Compare", objectName="PrimaryButton")
        self.run_button.clicked.connect(self.run)
        self.stop_button = QtWidgets.QPushButton("Stop", objectName="StopButton")
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.hide()
        self.sides = {"A": Side("A"), "B": Side("B")}
        self.table = QtWidgets.QTableWidget(len(ROWS), 2)
        self.table.setHorizontalHeaderLabels(["A", "B"])
        self.table.setVerticalHeaderLabels(ROWS)
        self.table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMaximumHeight(self.table.verticalHeader().length() + self.table.horizontalHeader().height() + 4)
        self.status = QtWidgets.QLabel(objectName="Muted")
        top = QtWidgets.QHBoxLayout()
        top.addWidget(self.prompt, 1)
        buttons = QtWidgets.QVBoxLayout()
        for widget in (self.run_button, self.stop_button, self.max_tokens):
            buttons.addWidget(widget)
        top.addLayout(buttons)
        columns = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        for side in self.sides.values():
            columns.addWidget(side)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(QtWidgets.QLabel("Compare reasoning side by side", objectName="EmptyTitle"))
        layout.addLayout(top)
        layout.addWidget(columns, 1)
        layout.addWidget(self.table)
        layout.addWidget(self.status)
        self.hosts = {"A": ModelHost(), "B": ModelHost()}
        self.job: ThreadJob | None = None
        self.results: dict[str, dict] = {}
        self.refresh_models()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.refresh_models()

    def refresh_models(self) -> None:
        """The library's models in both lists again, each side keeping its choice while that model is listed."""
        from engine.models import Library

        try:
            items = [(entry.name, str(entry.path)) for entry in Library().entries()]
        except AhaError as error:
            self.status.setText(str(error))
            return
        for index, side in enumerate(self.sides.values()):
            if items == [(side.model.itemText(i), side.model.itemData(i)) for i in range(side.model.count())]:
                continue
            current = side.model.currentData()
            side.model.clear()
            for name, path in items:
                side.model.addItem(name, path)
            if current and side.model.findData(current) >= 0:
                side.model.setCurrentIndex(side.model.findData(current))
            elif side.model.count() > index:
                side.model.setCurrentIndex(index)

    def run(self) -> None:
        text = self.prompt.toPlainText().strip()
        if not text or (self.job is not None and self.job.is_running()):
            return
        plans = {name: side.plan() for name, side in self.sides.items()}
        if not all(plan.model for plan in plans.values()):
            self.status.setText("Pick a model for both sides (add models in the Models pane).")
            return
        self.results = {}
        for side in self.sides.values():
            side.new_reply()
        max_tokens = self.max_tokens.value()

        def work(emit, cancel):
            for event in compare.stream(text, plans, lambda side, path: self.hosts[side].get(path), max_tokens,
                                        cancel):
                emit(event)
        self.job = ThreadJob(work, self)
        self.job.event.connect(self._on_event)
        self.job.finished.connect(lambda _: self._on_end(""))
        self.job.failed.connect(self._on_end)
        self.run_button.hide()
        self.stop_button.show()
        self.job.start()

    def stop(self) -> None:
        if self.job is not None:
            self.job.stop()

    def _on_event(self, event: compare.SideEvent) -> None:
        reply = self.sides[event.side].reply
        if event.kind == "start":
            self.status.setText(f"Running {event.side}…")
        elif event.kind == "done":
            reply.finish(event.stats)
            self.results[event.side] = event.stats
            for row, text in enumerate(stats_fields(event.stats).values()):
                self.table.setItem(row, "AB".index(event.side), QtWidgets.QTableWidgetItem(text))
        else:
            reply.add_delta(event.kind, event.text)

    def _on_end(self, error: str) -> None:
        self.run_button.show()
        self.stop_button.hide()
        for name, side in self.sides.items():
            if name not in self.results and side.reply is not None and side.reply.status == "streaming":
                stats = {"stop_reason": "error" if error else "cancelled", "thinking_unfinished": side.reply.think.in_thought}
                side.reply.finish({**stats, "error": error} if error else stats)
        self.status.setText(error or compare.summary(self.results))

    def close_models(self) -> None:
        self.stop()
        if self.job is not None:
            self.job.wait(5)
        for host in self.hosts.values():
            host.close()
