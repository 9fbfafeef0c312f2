"""The per-problem drill-down: the problems with each model's right/total, and a chosen problem's samples of one
model: each sample's thought (folded, as in Chat), its answer, the answer the verifier extracted, a ✓/✗ mark,
and the sample whose answer won the majority vote marked as such. Marks and the majority are the runner's.
"""

from __future__ import annotations

from app.chat.messages import AutoHeightText
from app.qt import Qt, QtCore, QtGui, QtWidgets
from app.runs.rollouts import RolloutThought
from app.theme import colors
from app.widgets import KEY_ROLE, SORT_ROLE, RowsModel
from engine.eval.results import EvalResults, Problem, is_right

RIGHT, WRONG = "✓", "✗"
GOOD = "#16a34a"
MODEL_COLUMN_WIDTH = 96  # at most; a longer label is elided in the middle, whole in the tooltip
SIDE_BY_SIDE = 820      # the drill-down's width from which the problems and the samples sit side by side


def short(text: str, length: int = 90) -> str:
    line = " ".join(text.split())
    return line if len(line) <= length else line[:length - 1] + "…"


class ProblemsModel(RowsModel):
    """One row per problem: its number, its text (one line), the reference answer, then `right/total` per model."""

    NUMERIC_COLUMNS = ()

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(self._text, self._sort_key, parent)
        self.models: list[int] = []
        self.labels: list[str] = []
        self.COLUMNS = ("#", "Problem", "Answer")

    def set_results(self, results: EvalResults) -> None:
        self.beginResetModel()
        self.models = results.model_indexes()
        self.labels = [results.label(index) for index in self.models]
        self.COLUMNS = ("#", "Problem", "Answer", *short_labels(self.labels))
        self.NUMERIC_COLUMNS = (0, *range(3, 3 + len(self.models)))
        self._rows = list(enumerate(results.problem_list(), start=1))
        self.endResetModel()

    def _text(self, row: tuple[int, Problem], column: int) -> str:
        number, problem = row
        if column == 0:
            return str(number)
        if column == 1:
            return short(problem.prompt)
        if column == 2:
            return short(problem.answer or "–", 24)
        right, total = problem.right_total(self.models[column - 3])
        return f"{right}/{total}" if total else "–"

    def _sort_key(self, row: tuple[int, Problem], column: int):
        number, problem = row
        if column == 0:
            return float(number)
        if column >= 3:
            right, total = problem.right_total(self.models[column - 3])
            return right / total if total else -1.0
        return self._text(row, column).lower()

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole and section >= 3:
            return f"{self.labels[section - 3]}: samples right / samples"
        return super().headerData(section, orientation, role)

    def key(self, row: tuple[int, Problem]) -> str:
        return row[1].prompt_id

    def extra(self, row: tuple[int, Problem], column: int, role: int):
        if role == Qt.ItemDataRole.ToolTipRole and column in (1, 2):
            return row[1].prompt if column == 1 else row[1].answer
        if role == Qt.ItemDataRole.ForegroundRole and column >= 3:
            right, total = row[1].right_total(self.models[column - 3])
            if total:
                return QtGui.QColor(GOOD if right == total else colors().danger if right == 0 else colors().warning)
        return None


def short_labels(labels: list[str]) -> list[str]:
    """The models' labels without the start they share, cut at a '-', '_' or '.' (column headers of a narrow table).

    Example: ["tiny-careful-f16", "tiny-hasty-f16"] → ["careful-f16", "hasty-f16"]; a single label stays whole.
    """
    if len(labels) < 2:
        return list(labels)
    shared = 0
    for position, characters in enumerate(zip(*labels, strict=False)):
        if len(set(characters)) > 1:
            break
        if characters[0] in "-_.":
            shared = position + 1
    return [label[shared:] or label for label in labels]


def majority_line(record: dict) -> str:
    """'Majority answer: 42 (8 of 8 samples agree) ✓' for one model's record of a problem."""
    completions = record.get("completions") or []
    index = record.get("majority")
    if index is None or not 0 <= index < len(completions):
        return "Majority answer: none (no sample gave an answer)"
    winner = completions[index]
    answer = winner.get("extracted")
    votes = sum(1 for completion in completions if completion.get("extracted") == answer)
    mark = RIGHT if is_right(winner) else WRONG
    return (f"Majority answer: {answer} ({votes} of {len(completions)} samples, e.g. #{index + 1}) {mark} — "
            f"cons@{len(completions)} {'right' if is_right(winner) else 'wrong'}")


def sample_header(index: int, completion: dict, majority: bool) -> str:
    """'✓ #3 · 412 thinking tokens · 38 answer tokens · majority' (· 'thought cut by the budget')."""
    parts = [f"{RIGHT if is_right(completion) else WRONG} #{index + 1}"]
    if completion.get("thinking_length") is not None:
        parts.append(f"{completion['thinking_length']} thinking tokens")
    if completion.get("length") is not None and completion.get("thinking_length") is not None:
        parts.append(f"{max(completion['length'] - completion['thinking_length'], 0)} answer tokens")
    elif completion.get("length") is not None:
        parts.append(f"{completion['length']} tokens")
    if completion.get("truncated"):
        parts.append("thought cut by the budget")
    if majority:
        parts.append("majority")
    return " · ".join(parts)


class SampleCard(QtWidgets.QFrame):
    """One sample: the mark and lengths, the extracted answer, the folded thought, the answer text."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("MessageCard")
        self.completion: dict = {}
        self.majority = False
        self.header = QtWidgets.QLabel(wordWrap=True)
        font = self.header.font()
        font.setBold(True)
        self.header.setFont(font)
        self.extracted = QtWidgets.QLabel(wordWrap=True, objectName="Muted")
        self.extracted.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.think = RolloutThought()
        self.answer = AutoHeightText()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.setSpacing(4)
        for widget in (self.header, self.extracted, self.think, self.answer):
            layout.addWidget(widget)

    def show_sample(self, index: int, completion: dict, majority: bool) -> None:
        self.completion, self.majority = completion, majority
        right = is_right(completion)
        self.header.setText(sample_header(index, completion, majority))
        self.header.setStyleSheet(f"color: {GOOD if right else colors().danger};")
        extracted = completion.get("extracted")
        self.extracted.setText(f"Extracted answer: {extracted}" if extracted is not None else
                               "Extracted answer: none (scored wrong)")
        answer_text = str(completion.get("answer_text") or "")
        self.think.show_thought(str(completion.get("thinking") or ""),
                                bool(completion.get("truncated")) and not answer_text.strip())
        self.answer.setPlainText(answer_text.strip() or "(no answer)")
        self.setStyleSheet(f"#MessageCard {{ border: 2px solid {colors().accent}; border-radius: 10px; }}"
                           if majority else "")


class ProblemsFilter(QtCore.QSortFilterProxyModel):
    """The problems whose text holds the search (case-insensitive), and with `only_disagreeing` those the models
    do not all get the same share of right."""

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.text = ""
        self.only_disagreeing = False
        self.setSortRole(SORT_ROLE)

    def set_filter(self, text: str | None = None, only_disagreeing: bool | None = None) -> None:
        self.text = self.text if text is None else text.lower()
        self.only_disagreeing = self.only_disagreeing if only_disagreeing is None else only_disagreeing
        self.invalidate()

    def filterAcceptsRow(self, source_row: int, source_parent: QtCore.QModelIndex) -> bool:  # noqa: N802
        model = self.sourceModel()
        _, problem = model.row_at(source_row)
        if self.text and self.text not in problem.prompt.lower():
            return False
        if not self.only_disagreeing:
            return True
        shares = {round(right / total, 6) for right, total in
                  (problem.right_total(index) for index in model.models) if total}
        return len(shares) > 1


class ProblemDrilldown(QtWidgets.QWidget):
    """The problems table left, the chosen problem's samples right (a model picker above them).

    `show_results(results)` fills it (keeping the chosen problem), `select_problem(prompt_id)`, `set_model(i)`;
    `cards` are the samples in view."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.results = EvalResults()
        self.model = ProblemsModel(self)
        self.proxy = ProblemsFilter(self)
        self.proxy.setSourceModel(self.model)
        self.search = QtWidgets.QLineEdit(placeholderText="Filter the problems", clearButtonEnabled=True)
        self.only_disagreeing = QtWidgets.QCheckBox("Where the models differ")
        self.only_disagreeing.setToolTip("Only the problems the models do not all get equally right")
        self.table = QtWidgets.QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.setStyleSheet("QTableView::item { padding: 0 4px; } QHeaderView::section { padding: 2px 4px; }")
        header = self.table.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setMinimumSectionSize(28)
        header.setStretchLastSection(False)
        header.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.prompt_view = QtWidgets.QLabel(wordWrap=True)
        self.prompt_view.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.model_box = QtWidgets.QComboBox()
        self.model_box.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_box.setMinimumContentsLength(14)
        self.majority_view = QtWidgets.QLabel(wordWrap=True)
        self.cards_host = QtWidgets.QWidget()
        self.cards_layout = QtWidgets.QVBoxLayout(self.cards_host)
        self.cards_layout.setContentsMargins(0, 0, 4, 0)
        self.cards_layout.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.cards_scroll = QtWidgets.QScrollArea(widgetResizable=True, frameShape=QtWidgets.QFrame.Shape.NoFrame)
        self.cards_scroll.setWidget(self.cards_host)
        self.cards: list[SampleCard] = []
        self._pool: list[SampleCard] = []
        self._shown: str | None = None
        self._arrange()
        self.search.textChanged.connect(lambda text: self.proxy.set_filter(text=text))
        self.only_disagreeing.toggled.connect(lambda on: self.proxy.set_filter(only_disagreeing=on))
        self.table.selectionModel().currentRowChanged.connect(lambda *_: self._show_current())
        self.model_box.currentIndexChanged.connect(lambda _: self._show_samples())

    def _arrange(self) -> None:
        left = QtWidgets.QWidget()
        left_layout = QtWidgets.QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        filters = QtWidgets.QHBoxLayout()
        filters.addWidget(self.search, 1)
        filters.addWidget(self.only_disagreeing)
        left_layout.addLayout(filters)
        left_layout.addWidget(self.table, 1)
        right = QtWidgets.QWidget()
        right_layout = QtWidgets.QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        picker = QtWidgets.QHBoxLayout()
        picker.addWidget(QtWidgets.QLabel("Samples of"))
        picker.addWidget(self.model_box, 1)
        right_layout.addWidget(self.prompt_view)
        right_layout.addLayout(picker)
        right_layout.addWidget(self.majority_view)
        right_layout.addWidget(self.cards_scroll, 1)
        self.split = QtWidgets.QSplitter()
        self.split.addWidget(left)
        self.split.addWidget(right)
        self.split.setChildrenCollapsible(False)
        self.split.setStretchFactor(0, 1)
        self.split.setStretchFactor(1, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.split, 1)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Problems beside the samples when there is room, above them in a narrow window."""
        super().resizeEvent(event)
        orientation = Qt.Orientation.Horizontal if event.size().width() >= SIDE_BY_SIDE else Qt.Orientation.Vertical
        if orientation != self.split.orientation():
            self.split.setOrientation(orientation)

    # the interface

    def show_results(self, results: EvalResults) -> None:
        self.results = results
        shown, model = self._shown, self.model_box.currentData()
        self.model.set_results(results)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(1, QtWidgets.QHeaderView.ResizeMode.Stretch)
        for column in range(3, self.model.columnCount()):   # a model's right/total: narrow, its label elided
            header.setSectionResizeMode(column, QtWidgets.QHeaderView.ResizeMode.Fixed)
            header.resizeSection(column, min(max(header.sectionSizeHint(column), 48), MODEL_COLUMN_WIDTH))
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for index in results.model_indexes():
            self.model_box.addItem(results.label(index), index)
        found = self.model_box.findData(model)
        self.model_box.setCurrentIndex(found if found >= 0 else 0)
        self.model_box.blockSignals(False)
        if shown is not None and shown in results.problems:
            self.select_problem(shown)
        elif self.proxy.rowCount():
            self.table.selectRow(0)
            self._show_current()
        else:
            self._shown = None
            self._show_samples()

    def select_problem(self, prompt_id: str) -> None:
        for row in range(self.proxy.rowCount()):
            if self.proxy.index(row, 0).data(KEY_ROLE) == prompt_id:
                self.table.selectRow(row)
                self._show_current()
                return

    def set_model(self, model: int) -> None:
        index = self.model_box.findData(model)
        if index >= 0:
            self.model_box.setCurrentIndex(index)

    def problem_texts(self) -> list[list[str]]:
        """The problems table's cells as shown (for tests)."""
        return [[self.proxy.index(row, column).data() for column in range(self.proxy.columnCount())]
                for row in range(self.proxy.rowCount())]

    # showing

    def _show_current(self) -> None:
        index = self.table.selectionModel().currentIndex()
        if not index.isValid():
            return
        self._shown = index.siblingAtColumn(0).data(KEY_ROLE)
        self._show_samples()

    def _show_samples(self) -> None:
        problem = self.results.problems.get(self._shown) if self._shown is not None else None
        if problem is None:
            self.prompt_view.setText("Choose a problem to see its samples." if self.results.problems else "")
            self.majority_view.setText("")
            self._set_cards([])
            return
        answer = problem.answer if problem.answer is not None else "–"
        self.prompt_view.setText(f"<b>{_escape(short(problem.prompt, 600))}</b><br>"
                                 f"<span style='color:{colors().muted}'>Reference answer: {_escape(answer)}</span>")
        record = problem.by_model.get(self.model_box.currentData()) or {}
        completions = record.get("completions") or []
        self.majority_view.setText(majority_line(record) if completions else "No samples of this model yet.")
        majority = record.get("majority")
        self._set_cards([(index, completion, index == majority) for index, completion in enumerate(completions)])

    def _set_cards(self, samples: list[tuple[int, dict, bool]]) -> None:
        while len(self.cards) > len(samples):
            card = self.cards.pop()
            card.hide()
            self.cards_layout.removeWidget(card)
            self._pool.append(card)
        while len(self.cards) < len(samples):
            card = self._pool.pop() if self._pool else SampleCard()
            self.cards_layout.addWidget(card)
            card.show()
            self.cards.append(card)
        for card, (index, completion, majority) in zip(self.cards, samples, strict=True):
            card.show_sample(index, completion, majority)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")
