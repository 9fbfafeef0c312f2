"""The rewards part of the Train form: the built-in rewards and custom reward files (`file.py:function`),
each with a check box and a weight, and "Check rewards": `aha rewards check` run as a ProcessJob on a few
sampled completions (or the completions typed below it), its report shown as a table (completion, think,
answer, each reward, total) with the rewards that never fire highlighted and explained in one line each.

Values in and out as settings: rewards and reward_weights (GRPO), or reward (trace generation's verifier,
no weights)."""

from __future__ import annotations

from typing import Any

from app import theme
from app.qt import Qt, QtGui, QtWidgets, Signal
from engine.train.rewards import BUILTIN_REWARDS

CHECK_COLUMNS = ("completion", "think", "answer")


class RewardsSection(QtWidgets.QGroupBox):
    changed = Signal()
    check_requested = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__("Rewards", parent)
        self.weighted = True
        layout = QtWidgets.QVBoxLayout(self)
        self.table = QtWidgets.QTableWidget(0, 2, objectName="rewards")
        self.table.setHorizontalHeaderLabels(["reward", "weight"])
        self.table.horizontalHeader().setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setToolTip("rewards (TRL's reward_funcs), summed with reward_weights into each completion's reward")
        self.table.itemChanged.connect(lambda _item: self.changed.emit())
        self.table.setMinimumHeight(150)
        layout.addWidget(self.table)
        buttons = QtWidgets.QHBoxLayout()
        add = QtWidgets.QPushButton("Add reward file…")
        add.clicked.connect(self._on_add_file)
        remove = QtWidgets.QPushButton("Remove")
        remove.clicked.connect(self._on_remove)
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch()
        self.check_button = QtWidgets.QPushButton("Check rewards", objectName="check_rewards")
        self.check_button.setToolTip("sample a few completions from the model (or score the completions typed below) "
                                     "and show each reward's score: catches a reward that never fires before a run")
        self.check_button.clicked.connect(self.check_requested)
        buttons.addWidget(self.check_button)
        layout.addLayout(buttons)
        self.typed = QtWidgets.QPlainTextEdit(objectName="typed_completions")
        self.typed.setPlaceholderText("optional: completions to score instead of sampling, separated by a line "
                                      "with --- (scored against the dataset's first prompt)")
        self.typed.setFixedHeight(60)
        layout.addWidget(self.typed)
        self.check_status = QtWidgets.QLabel(objectName="Muted", wordWrap=True)
        layout.addWidget(self.check_status)
        self.warnings = QtWidgets.QLabel(objectName="Warning", wordWrap=True)
        self.warnings.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.warnings.hide()
        layout.addWidget(self.warnings)
        self.results = QtWidgets.QTableWidget(objectName="reward_check")
        self.results.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.results.verticalHeader().setVisible(False)
        self.results.hide()
        layout.addWidget(self.results)
        self.set_rewards(("accuracy", "format"), None)

    # -- the reward list ---------------------------------------------------------------------------
    def set_weighted(self, weighted: bool) -> None:
        """GRPO weighs its rewards; trace generation's verifier does not."""
        self.weighted = weighted
        self.table.setColumnHidden(1, not weighted)

    def set_rewards(self, names: tuple[str, ...] | list[str], weights: tuple[float, ...] | list[float] | None) -> None:
        """Every built-in (checked when named) and each custom reward, with its weight."""
        names = list(names or ())
        weights = list(weights) if weights else [1.0] * len(names)
        chosen = dict(zip(names, weights, strict=False))
        self.table.blockSignals(True)
        self.table.setRowCount(0)
        ordered = names + [name for name in BUILTIN_REWARDS if name not in chosen]
        for name in ordered:
            self._add_row(name, chosen.get(name, 1.0), name in chosen)
        self.table.blockSignals(False)
        self.changed.emit()

    def add_reward(self, spec: str, weight: float = 1.0) -> None:
        """A custom reward `path/to/file.py:function`, checked."""
        self._add_row(spec, weight, True)
        self.changed.emit()

    def chosen(self) -> tuple[list[str], list[float]]:
        names, weights = [], []
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            if item.checkState() == Qt.CheckState.Checked:
                names.append(item.text())
                weights.append(self.table.cellWidget(row, 1).value())
        return names, weights

    def values(self, kind: str) -> dict[str, Any]:
        names, weights = self.chosen()
        if kind == "generate":
            return {"reward": tuple(names)}
        return {"rewards": tuple(names), "reward_weights": None if all(weight == 1.0 for weight in weights) else tuple(weights)}

    def set_values(self, kind: str, values: dict[str, Any]) -> None:
        if kind == "generate" and "reward" in values:
            self.set_rewards(tuple(values["reward"]), None)
        elif "rewards" in values or "reward_weights" in values:
            self.set_rewards(tuple(values.get("rewards") or ()), values.get("reward_weights"))

    def typed_completions(self) -> list[str]:
        text = self.typed.toPlainText()
        parts = [part.strip("\n") for part in text.split("\n---\n")]
        return [part for part in parts if part.strip()]

    def _add_row(self, name: str, weight: float, checked: bool) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        item = QtWidgets.QTableWidgetItem(name)
        item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsSelectable)
        item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        item.setToolTip("built-in reward" if name in BUILTIN_REWARDS else f"custom reward {name}")
        self.table.setItem(row, 0, item)
        spin = QtWidgets.QDoubleSpinBox(decimals=3, minimum=-100.0, maximum=100.0, singleStep=0.1, value=weight)
        spin.valueChanged.connect(lambda _value: self.changed.emit())
        self.table.setCellWidget(row, 1, spin)

    def _on_add_file(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Reward file", "", "Python (*.py)")
        if not path:
            return
        function, ok = QtWidgets.QInputDialog.getText(self, "Reward function", f"function in {path} to use as a reward:")
        if ok and function.strip():
            self.add_reward(f"{path}:{function.strip()}")

    def _on_remove(self) -> None:
        row = self.table.currentRow()
        if row >= 0 and self.table.item(row, 0).text() not in BUILTIN_REWARDS:
            self.table.removeRow(row)
            self.changed.emit()

    # -- the check's report ------------------------------------------------------------------------
    def show_check_running(self, text: str) -> None:
        self.check_button.setEnabled(False)
        self.check_status.setText(text)

    def show_check_failed(self, message: str) -> None:
        self.check_button.setEnabled(True)
        self.check_status.setText(message)

    def show_report(self, report: dict) -> None:
        """The report of `aha rewards check`: one row per completion, one column per reward; a reward that
        never fired (or scored nothing, or is constant) has its column highlighted and a line saying why."""
        self.check_button.setEnabled(True)
        names = report["rewards"]
        self.results.clear()
        self.results.setColumnCount(len(CHECK_COLUMNS) + len(names) + 1)
        self.results.setHorizontalHeaderLabels([*CHECK_COLUMNS, *names, "total"])
        self.results.setRowCount(len(report["completions"]))
        flagged = {name for name, verdict in report["verdicts"].items() if verdict["state"] != "ok"}
        highlight = QtGui.QColor(theme.colors().warning)
        highlight.setAlpha(60)
        for row, item in enumerate(report["completions"]):
            cells = [item["text"], item["thinking"], item["answer_text"],
                     *[_score(item["rewards"][name]) for name in names], _score(item["total"])]
            for column, text in enumerate(cells):
                cell = QtWidgets.QTableWidgetItem(" ".join(text.split())[:120])
                cell.setToolTip(text[:2000])
                reward = names[column - len(CHECK_COLUMNS)] if len(CHECK_COLUMNS) <= column < len(CHECK_COLUMNS) + len(names) else None
                if reward in flagged:
                    cell.setBackground(highlight)
                self.results.setItem(row, column, cell)
        for column, name in enumerate(names, len(CHECK_COLUMNS)):
            if name in flagged:
                header = QtWidgets.QTableWidgetItem(f"⚠ {name}")
                header.setToolTip(report["verdicts"][name]["message"])
                self.results.setHorizontalHeaderItem(column, header)
        self.results.resizeColumnsToContents()
        self.results.show()
        messages = [report["verdicts"][name]["message"] for name in names if name in flagged]
        self.warnings.setText("\n".join(messages))
        self.warnings.setVisible(bool(messages))
        count = len(report["completions"])
        self.check_status.setText(f"{count} completion{'s' if count != 1 else ''} scored; "
                                  + (f"{len(flagged)} reward{'s' if len(flagged) != 1 else ''} to look at"
                                     if flagged else "every reward fired and varied"))

    def flagged_rewards(self) -> list[str]:
        """The rewards the last report highlighted (for tests and the status line)."""
        names = []
        for column in range(len(CHECK_COLUMNS), self.results.columnCount() - 1):
            header = self.results.horizontalHeaderItem(column)
            if header is not None and header.text().startswith("⚠ "):
                names.append(header.text().removeprefix("⚠ "))
        return names


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"
