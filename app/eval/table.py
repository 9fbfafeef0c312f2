"""The Eval pane's side-by-side table: one row per model (pass@1, cons@k, pass@k, mean thinking and answer
tokens, the share of thoughts cut by the budget, the difference against the first model with its noise mark),
and the line of comparison notes under it. The numbers are eval.json's as the runner wrote them; a model still
being evaluated shows its running pass@1 from the job's progress events.
"""

from __future__ import annotations

from app.qt import Qt, QtCore, QtGui, QtWidgets
from app.theme import colors
from app.widgets import SORT_ROLE, RowsModel
from engine.eval.results import EvalResults, difference_text, pass_at_k_key, percent, tokens

COLUMNS = ("Model", "pass@1", "cons@k", "pass@k", "Thinking", "Answer", "Cut", "vs first")
MODEL, PASS1, CONS, PASSK, THINKING, ANSWER, CUT, VERSUS = range(len(COLUMNS))
TIPS = {
    PASS1: "pass@1: the share of right samples, averaged over the k samples of each problem (the R1 paper's)",
    CONS: "cons@k: the majority answer of the k samples is right (ties broken as lighteval does)",
    PASSK: "pass@k: at least one of k samples is right (the unbiased estimator of Chen et al. 2021)",
    THINKING: "mean thinking tokens per sample (up to and including </think>)",
    ANSWER: "mean answer tokens per sample (after </think>)",
    CUT: "share of samples whose thought the token budget cut (no </think>): counted wrong",
    VERSUS: "pass@1 difference against the first model, paired by problem; ✓ significant (p < 0.05), "
            "(noise) within noise",
}


def cell_text(row: dict, column: int, k: int | None = None) -> str:
    if column == MODEL:
        partial = row.get("status") not in (None, "complete")
        return row.get("label", "?") + (" (running)" if row.get("status") == "running" else
                                        " (partial)" if partial else "")
    if column == PASS1:
        return percent(row.get("pass@1"))
    if column == CONS:
        return percent(row.get("cons@k"))
    if column == PASSK:
        key = pass_at_k_key(row, k)
        return percent((row.get("pass@k") or {}).get(key)) if key else "–"
    if column == THINKING:
        return tokens(row.get("thinking_tokens_mean"))
    if column == ANSWER:
        return tokens(row.get("answer_tokens_mean"))
    if column == CUT:
        return percent(row.get("cut_share"))
    return "" if row.get("index") == 0 else difference_text(row.get("comparison"))


class ResultsModel(RowsModel):
    """The table's rows: eval.json's model entries, each with its `comparison` against the first."""

    COLUMNS = COLUMNS
    NUMERIC_COLUMNS = (PASS1, CONS, PASSK, THINKING, ANSWER, CUT, VERSUS)

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(lambda row, column: cell_text(row, column, self.k), self._sort_key, parent)
        self.k: int | None = None

    def _sort_key(self, row: dict, column: int):
        value = {PASS1: row.get("pass@1"), CONS: row.get("cons@k"), THINKING: row.get("thinking_tokens_mean"),
                 ANSWER: row.get("answer_tokens_mean"), CUT: row.get("cut_share"),
                 VERSUS: (row.get("comparison") or {}).get("difference")}.get(column)
        if column == MODEL:
            return float(row.get("index", 0))
        if column == PASSK:
            value = (row.get("pass@k") or {}).get(pass_at_k_key(row, self.k) or "")
        return float(value) if isinstance(value, (int, float)) else float("-inf")

    def key(self, row: dict) -> int:
        return row.get("index", 0)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole and self.k:
            return COLUMNS[section].replace("@k", f"@{self.k}")
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole:
            return TIPS.get(section)
        return super().headerData(section, orientation, role)

    def extra(self, row: dict, column: int, role: int):
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == MODEL:
                return "\n".join(filter(None, (row.get("spec"), describe_text(row.get("describe")))))
            if column == PASS1 and isinstance(row.get("pass@1_stderr"), (int, float)):
                return f"± {row['pass@1_stderr'] * 100:.1f} points (standard error over problems)"
            if column == VERSUS:
                return (row.get("comparison") or {}).get("note")
        if role == Qt.ItemDataRole.ForegroundRole and column == VERSUS and row.get("comparison"):
            comparison = row["comparison"]
            if not comparison.get("significant"):
                return QtGui.QColor(colors().muted)
            return QtGui.QColor("#16a34a" if comparison.get("difference", 0) > 0 else colors().danger)
        if role == Qt.ItemDataRole.FontRole and column == MODEL and row.get("index") == 0:
            font = QtGui.QFont()
            font.setBold(True)
            return font
        return None


def describe_text(describe) -> str:
    """A teacher's describe() as one line: 'kind gguf · name q4 · batched True'."""
    if isinstance(describe, dict):
        return " · ".join(f"{key} {value}" for key, value in describe.items() if value not in (None, ""))
    return str(describe or "")


def table_rows(results: EvalResults, live: dict[int, dict] | None = None) -> list[dict]:
    """One row per model: eval.json's entry with its comparison; a model with records but no entry yet (being
    evaluated) shows its label and the running numbers in `live` (model index → {"pass@1": …})."""
    rows = {model["index"]: {**model, "comparison": results.comparison(model["index"])}
            for model in results.models if isinstance(model.get("index"), int)}
    for index in results.model_indexes():
        if index not in rows:
            rows[index] = {"index": index, "label": results.label(index), "status": "running",
                           **((live or {}).get(index) or {})}
    for index, values in (live or {}).items():
        if index not in rows:
            rows[index] = {"index": index, "label": values.get("label", f"model {index + 1}"), "status": "running",
                           **values}
    return [rows[index] for index in sorted(rows)]


def comparison_notes(results: EvalResults) -> str:
    """'grpo vs base: +12.0 points, p = 0.003 · q4 vs base: within noise (…)' (eval.json's notes)."""
    notes = []
    for item in results.summary.get("comparisons") or []:
        if item.get("note"):
            notes.append(f"{results.label(item.get('b', 0))} vs {results.label(item.get('a', 0))}: {item['note']}")
    return "\n".join(notes)


def make_table(model: ResultsModel) -> QtWidgets.QTableView:
    proxy = QtCore.QSortFilterProxyModel(model)
    proxy.setSourceModel(model)
    proxy.setSortRole(SORT_ROLE)
    table = QtWidgets.QTableView()
    table.setModel(proxy)
    # not sortable: a few rows in the order the models were given (the first is the baseline), and a header
    # without sort arrows keeps the numeric columns narrow enough for a 790 px window
    table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setAlternatingRowColors(True)
    table.setShowGrid(False)
    table.setWordWrap(False)
    table.setStyleSheet("QTableView::item { padding: 0 6px; } QHeaderView::section { padding: 2px 6px; }")
    table.verticalHeader().setVisible(False)
    table.verticalHeader().setDefaultSectionSize(26)
    header = table.horizontalHeader()
    header.setHighlightSections(False)
    header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(MODEL, QtWidgets.QHeaderView.ResizeMode.Stretch)
    table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
    return table

