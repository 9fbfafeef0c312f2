"""The dataset part of the Train form: a built-in task or a file (JSONL/CSV/Parquet), its first rows in a
table, the column mapping as drop-downs filled from the file's columns, and the first prompt rendered exactly
as the model will see it (its chat template, the generation prompt, a prefilled `<think>`), all from
`aha inspect dataset … --json` (engine.train.inspect.preview_dataset) run as a child.

Values in and out as settings: dataset, prompt_column, answer_column, system_prompt."""

from __future__ import annotations

import json
from typing import Any

from app.qt import QtCore, QtGui, QtWidgets, Signal
from engine.train.data import TASKS

PREVIEW_DELAY_MS = 300  # typing pauses this long before the preview is asked for


class DatasetSection(QtWidgets.QGroupBox):
    changed = Signal()
    preview_requested = Signal(list)   # the `aha inspect dataset` args the pane runs
    previewed = Signal(dict)           # a preview arrived and is shown

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__("Dataset", parent)
        self.model_path = ""
        self.preview: dict | None = None
        layout = QtWidgets.QVBoxLayout(self)
        form = QtWidgets.QFormLayout()
        form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.source = QtWidgets.QComboBox(objectName="dataset", editable=True)
        self.source.addItems(list(TASKS))
        self.source.lineEdit().setPlaceholderText("a built-in task or a .jsonl/.csv/.parquet file")
        self.source.setToolTip("dataset: a built-in task (addition, arithmetic), a .jsonl/.csv/.parquet file or a "
                               "Hugging Face dataset owner/name[:split]")
        self.source.currentTextChanged.connect(self._on_source)
        browse = QtWidgets.QPushButton("Browse…")
        browse.clicked.connect(self._on_browse)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.source, 1)
        row.addWidget(browse)
        self.prompt_column = QtWidgets.QComboBox(objectName="prompt_column", editable=True)
        self.answer_column = QtWidgets.QComboBox(objectName="answer_column", editable=True)
        for combo, default, name in ((self.prompt_column, "prompt", "prompt_column"),
                                     (self.answer_column, "answer", "answer_column")):
            combo.addItem(default)
            combo.setToolTip(f"{name}: the dataset's column holding the {default}")
            combo.currentTextChanged.connect(self._on_mapping)
        self.system_prompt = QtWidgets.QLineEdit(objectName="system_prompt", placeholderText="(none — recommended for R1 models)")
        self.system_prompt.setToolTip("system_prompt: a system message before each prompt; none by default, as DeepSeek "
                                      "advises instructions in the user turn")
        self.system_prompt.textEdited.connect(self._on_mapping)
        form.addRow("Source", row)
        form.addRow("Prompt column", self.prompt_column)
        form.addRow("Answer column", self.answer_column)
        form.addRow("System prompt", self.system_prompt)
        layout.addLayout(form)
        self.status = QtWidgets.QLabel(objectName="Muted", wordWrap=True)
        layout.addWidget(self.status)
        self.table = QtWidgets.QTableWidget(objectName="dataset_preview")
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(120)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        layout.addWidget(self.table)
        layout.addWidget(QtWidgets.QLabel("First prompt as the model sees it", objectName="Muted"))
        self.rendered = QtWidgets.QPlainTextEdit(objectName="rendered_prompt", readOnly=True)
        self.rendered.setFixedHeight(70)
        self.rendered.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        layout.addWidget(self.rendered)
        self._timer = QtCore.QTimer(self, singleShot=True, interval=PREVIEW_DELAY_MS, timeout=self.request_preview)

    # -- values ------------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        return {"dataset": self.source.currentText().strip(), "prompt_column": self.prompt_column.currentText().strip(),
                "answer_column": self.answer_column.currentText().strip() or None,
                "system_prompt": self.system_prompt.text() or None}

    def set_values(self, values: dict[str, Any]) -> None:
        if "dataset" in values:
            self.source.setCurrentText(values["dataset"] or "")
        for name, combo in (("prompt_column", self.prompt_column), ("answer_column", self.answer_column)):
            if name in values:
                text = values[name] or ""
                if combo.findText(text) < 0:
                    combo.addItem(text)
                combo.setCurrentText(text)
        if "system_prompt" in values:
            self.system_prompt.setText(values["system_prompt"] or "")
        self._schedule()

    def set_model(self, path: str) -> None:
        """The checkpoint whose template renders the first prompt."""
        if path != self.model_path:
            self.model_path = path
            self._schedule()

    # -- the preview -------------------------------------------------------------------------------
    def preview_args(self) -> list[str]:
        values = self.values()
        args = ["dataset", values["dataset"], "--prompt-column", values["prompt_column"] or "prompt",
                "--answer-column", values["answer_column"] or ""]
        if self.model_path:
            args += ["--model", self.model_path]
        if values["system_prompt"]:
            args += ["--system-prompt", values["system_prompt"]]
        return args

    def request_preview(self) -> None:
        if not self.values()["dataset"]:
            self.status.setText("give a built-in task or a dataset file")
            return
        self.status.setText("reading the dataset…")
        self.preview_requested.emit(self.preview_args())

    def show_preview(self, preview: dict) -> None:
        self.preview = preview
        columns = preview["columns"]
        for combo in (self.prompt_column, self.answer_column):
            text = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(columns)
            if text not in columns:
                combo.addItem(text)
            combo.setCurrentText(text)
            combo.blockSignals(False)
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setRowCount(len(preview["rows"]))
        for row, record in enumerate(preview["rows"]):
            for column, name in enumerate(columns):
                value = record.get(name)
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                item = QtWidgets.QTableWidgetItem(" ".join(str(text).split())[:200])
                item.setToolTip(str(text)[:2000])
                self.table.setItem(row, column, item)
        kind = {"task": "built-in task", "file": "file", "hub": "Hugging Face dataset"}[preview["kind"]]
        if preview["mapping_error"]:
            self.status.setText(f"column mapping: {preview['mapping_error']}")
        else:
            self.status.setText(f"{kind}: columns {', '.join(columns)} (first {len(preview['rows'])} rows)")
        if preview["rendered_prompt"] is not None:
            self.rendered.setPlainText(preview["rendered_prompt"])
        elif not self.model_path:
            self.rendered.setPlainText("(pick a model to see the prompt with its chat template)")
        else:
            self.rendered.setPlainText("")
        self.previewed.emit(preview)

    def show_failure(self, message: str) -> None:
        self.preview = None
        self.status.setText(message)
        self.table.clear()
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self.rendered.setPlainText("")

    def _on_browse(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Dataset file", "",
                                                        "Datasets (*.jsonl *.json *.csv *.parquet);;All files (*)")
        if path:
            self.source.setCurrentText(path)

    def _on_source(self, _text: str) -> None:
        self._schedule()
        self.changed.emit()

    def _on_mapping(self, _text: str) -> None:
        self._schedule()
        self.changed.emit()

    def _schedule(self) -> None:
        self._timer.start()
