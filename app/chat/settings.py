"""Per-conversation settings: model, the R1 preset or custom sampling, max tokens, the thinking budget (its
tokens and the message that ends the thought), the thinking switch (enabled only for a template that has one,
else disabled with the reason), system prompt (with DeepSeek's warning), history policy with "Show the exact
prompt", context size and GPU layers; and one setting of the Chat view for every chat, "Collapse finished
thoughts" (kept in the window's ui.ini).

A form and nothing more: values go out as a plain dict (the conversation's `settings` in the store).
"""

from __future__ import annotations

from app.qt import Qt, QtCore, QtGui, QtWidgets, Signal
from engine import r1
from engine.chat.reasoning import DEFAULT_BUDGET_MESSAGE, ThinkingSwitch
from engine.paths import data_dir

PRESETS = {"DeepSeek R1 (0.6 · 0.95)": (r1.TEMPERATURE, r1.TOP_P), "Greedy (0 · 1.0)": (0.0, 1.0), "Custom": None}
COLLAPSE_KEY = "chat/collapse_thoughts"
DEFAULT_BUDGET_TOKENS = 1024  # what the budget's spin box offers when it is turned on


def _ui_settings() -> QtCore.QSettings:
    """The window's ui.ini (app.main.ui_settings; not imported from there, which imports this module)."""
    return QtCore.QSettings(str(data_dir() / "ui.ini"), QtCore.QSettings.Format.IniFormat)


def collapse_thoughts_setting() -> bool:
    """Whether finished thoughts in the history show their summary only (the default) or open."""
    return str(_ui_settings().value(COLLAPSE_KEY, "true")).lower() == "true"


class SettingsPanel(QtWidgets.QScrollArea):
    changed = Signal(dict)
    preview_requested = Signal()
    collapse_changed = Signal(bool)  # "Collapse finished thoughts" (every chat), already saved

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # never narrower than its form
        self._loading = False
        body = QtWidgets.QWidget()
        outer = QtWidgets.QVBoxLayout(body)
        form = QtWidgets.QFormLayout()
        outer.addLayout(form)
        outer.addStretch()
        form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.model = QtWidgets.QComboBox()
        self.model.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.preset = QtWidgets.QComboBox()
        self.preset.addItems(PRESETS)
        self.temperature = QtWidgets.QDoubleSpinBox(decimals=2, minimum=0.0, maximum=2.0, singleStep=0.05,
                                                    value=r1.TEMPERATURE)
        self.top_p = QtWidgets.QDoubleSpinBox(decimals=2, minimum=0.05, maximum=1.0, singleStep=0.05, value=r1.TOP_P)
        self.max_tokens = QtWidgets.QSpinBox(minimum=16, maximum=131072, singleStep=512, value=4096)
        self.budget_on = QtWidgets.QCheckBox()
        self.budget_on.setToolTip("End the thought when it reaches this many tokens: the budget message and "
                                  "</think> go into the model's context, and it answers from there")
        self.budget = QtWidgets.QSpinBox(minimum=0, maximum=131072, singleStep=256, value=DEFAULT_BUDGET_TOKENS,
                                         suffix=" tokens")
        self.budget.setToolTip(self.budget_on.toolTip())
        budget_row = QtWidgets.QHBoxLayout()
        budget_row.setContentsMargins(0, 0, 0, 0)
        budget_row.addWidget(self.budget_on)
        budget_row.addWidget(self.budget, 1)
        self.budget_message = QtWidgets.QPlainTextEdit(placeholderText=DEFAULT_BUDGET_MESSAGE)
        self.budget_message.setPlainText(DEFAULT_BUDGET_MESSAGE)
        self.budget_message.setFixedHeight(70)
        self.budget_message.setToolTip("What the model reads when the budget ends its thought (empty: llama.cpp's "
                                       "default sentence)")
        self.thinking = QtWidgets.QCheckBox("Think before answering", checked=True)
        self.thinking_note = QtWidgets.QLabel(objectName="Muted", wordWrap=True)
        self.switch: ThinkingSwitch | None = None   # the chosen model's, once read (set_thinking_switch)
        self._stored_thinking: bool | None = None   # the conversation's choice, kept until the switch is known
        self.set_thinking_switch(None)
        self.system_prompt = QtWidgets.QPlainTextEdit(placeholderText="(none — recommended for R1 models)")
        self.system_prompt.setFixedHeight(70)
        self.system_warning = QtWidgets.QLabel(r1.SYSTEM_PROMPT_WARNING, objectName="Warning", wordWrap=True)
        self.history = QtWidgets.QComboBox()
        self.history.addItem("Strip earlier reasoning", "strip")
        self.history.addItem("Keep earlier reasoning", "keep")
        preview = QtWidgets.QPushButton("Show the exact prompt…")
        preview.clicked.connect(self.preview_requested.emit)
        self.n_ctx = QtWidgets.QSpinBox(minimum=512, maximum=131072, singleStep=1024, value=4096)
        self.gpu_layers = QtWidgets.QSpinBox(minimum=-1, maximum=999, value=-1, specialValueText="all")
        form.addRow(QtWidgets.QLabel("Conversation settings", objectName="SectionTitle"))
        form.addRow("Model", self.model)
        form.addRow("Sampling", self.preset)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top p", self.top_p)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Thinking budget", budget_row)
        form.addRow("Budget message", self.budget_message)
        form.addRow("Thinking", self.thinking)
        form.addRow(self.thinking_note)
        form.addRow("System prompt", self.system_prompt)
        form.addRow(self.system_warning)
        form.addRow("History", self.history)
        form.addRow(preview)
        form.addRow("Context size", self.n_ctx)
        form.addRow("GPU layers", self.gpu_layers)
        self.collapse_thoughts = QtWidgets.QCheckBox("Collapse finished thoughts", checked=collapse_thoughts_setting())
        self.collapse_thoughts.setToolTip("A reply's thought shows its one-line summary once the answer starts; "
                                          "click it to open. Off: thoughts stay open. A thought that did not "
                                          "finish is always shown open.")
        self.collapse_thoughts.toggled.connect(self._on_collapse)
        form.addRow(QtWidgets.QLabel("Every chat", objectName="SectionTitle"))
        form.addRow(self.collapse_thoughts)
        self.setWidget(body)
        self.refresh_models()
        self.preset.currentTextChanged.connect(self._on_preset)
        for signal in (self.model.currentIndexChanged, self.temperature.valueChanged, self.top_p.valueChanged,
                       self.max_tokens.valueChanged, self.budget_on.toggled, self.budget.valueChanged,
                       self.budget_message.textChanged, self.thinking.toggled,
                       self.system_prompt.textChanged, self.history.currentIndexChanged,
                       self.n_ctx.valueChanged, self.gpu_layers.valueChanged):
            signal.connect(self._on_changed)
        self._on_changed()

    def minimumSizeHint(self) -> QtCore.QSize:  # noqa: N802 - Qt override
        """As wide as the form needs (with room for the vertical scroll bar): the splitter never cuts it off."""
        width = self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QtCore.QSize(max(width, 260), super().minimumSizeHint().height())

    def refresh_models(self) -> None:
        """Fill the model list from the library (keeps the current choice)."""
        from engine.models import Library

        current = self.model.currentData()
        self._loading = True
        self.model.clear()
        for entry in Library().entries():
            self.model.addItem(entry.name, str(entry.path))
        if current:
            self.set_model(current)
        self._loading = False

    def model_names(self) -> dict[str, str]:
        """File name → the name shown in the model list, for every model in it."""
        from pathlib import Path

        return {Path(self.model.itemData(index)).name: self.model.itemText(index)
                for index in range(self.model.count())}

    def set_model(self, path: str) -> None:
        index = self.model.findData(path)
        if index < 0:
            from pathlib import Path

            self.model.addItem(Path(path).stem, path)
            index = self.model.count() - 1
        self.model.setCurrentIndex(index)

    def values(self) -> dict:
        return {"model": self.model.currentData() or "", "preset": self.preset.currentText(),
                "temperature": round(self.temperature.value(), 3), "top_p": round(self.top_p.value(), 3),
                "max_tokens": self.max_tokens.value(), "system_prompt": self.system_prompt.toPlainText(),
                "history": self.history.currentData(), "n_ctx": self.n_ctx.value(),
                "gpu_layers": self.gpu_layers.value(),
                "thinking_budget": self.budget.value() if self.budget_on.isChecked() else None,
                "budget_message": self._budget_message(), "thinking": self._thinking_value()}

    def _budget_message(self) -> str:
        """The budget message as stored: "" for the default sentence (so it follows a later default)."""
        text = self.budget_message.toPlainText().strip()
        return "" if text == DEFAULT_BUDGET_MESSAGE else text

    def _thinking_value(self) -> bool | None:
        """The switch as stored: the box for a template that has a switch; None (the template decides) for one
        without; the conversation's own value while the chosen model's template is still being read."""
        if self.switch is None:
            return self._stored_thinking
        return self.thinking.isChecked() if self.switch.supported else None

    def set_thinking_switch(self, switch: ThinkingSwitch | None) -> None:
        """Show what the chosen model's template allows: the switch enabled, or disabled with the reason (an R1
        distill always thinks); None: not known yet (no model, or its template is still being read)."""
        self.switch = switch
        loading, self._loading = self._loading, True
        if switch is None:
            self.thinking.setEnabled(False)
            self.thinking.setChecked(self._stored_thinking is not False)
            self.thinking_note.setText("")
            self.thinking.setToolTip("")
        elif switch.supported:
            self.thinking.setEnabled(True)
            chosen = self._stored_thinking if self._stored_thinking is not None else switch.default
            self.thinking.setChecked(chosen is not False)
            self.thinking.setToolTip(f"This model's template turns thinking on and off ({switch.variable}); "
                                     "off: it answers at once")
            self.thinking_note.setText("")
        else:
            self.thinking.setEnabled(False)
            self.thinking.setChecked(True)
            reason = switch.reason[:1].upper() + switch.reason[1:]
            self.thinking.setToolTip(reason)
            self.thinking_note.setText(reason)
        self.thinking_note.setVisible(bool(self.thinking_note.text()))
        self._loading = loading

    def load(self, settings: dict) -> None:
        """Show a conversation's settings (missing keys keep the R1 defaults)."""
        self._loading = True
        if settings.get("model"):
            self.set_model(settings["model"])
        self.preset.setCurrentText(settings.get("preset", next(iter(PRESETS))))
        self.temperature.setValue(settings.get("temperature", r1.TEMPERATURE))
        self.top_p.setValue(settings.get("top_p", r1.TOP_P))
        self.max_tokens.setValue(settings.get("max_tokens", 4096))
        budget = settings.get("thinking_budget")
        self.budget_on.setChecked(budget is not None)
        self.budget.setValue(budget if budget is not None else DEFAULT_BUDGET_TOKENS)
        self.budget_message.setPlainText(settings.get("budget_message") or DEFAULT_BUDGET_MESSAGE)
        self._stored_thinking = settings.get("thinking")
        self.set_thinking_switch(self.switch)
        self.system_prompt.setPlainText(settings.get("system_prompt", ""))
        self.history.setCurrentIndex(max(self.history.findData(settings.get("history", "strip")), 0))
        self.n_ctx.setValue(settings.get("n_ctx", 4096))
        self.gpu_layers.setValue(settings.get("gpu_layers", -1))
        self._loading = False
        self._on_changed()

    def show_prompt(self, rendered, with_message: bool = True) -> None:
        """A dialog with the exact prompt of the next message, and its size in tokens; `with_message`: the
        composer's text is in it as the last user turn."""
        dialog = QtWidgets.QDialog(self, windowTitle="The prompt of your next message")
        about = ("The exact prompt the model gets when you send the message in the composer: the history, "
                 "your message as the last user turn, then the start of the reply." if with_message else
                 "The composer is empty, so this is the history and the start of the reply without your message; "
                 "type it first to see it in place.")
        text = QtWidgets.QPlainTextEdit(readOnly=True)
        text.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        text.setPlainText(rendered.text)
        notes = [f"{len(rendered.tokens)} tokens", f"history: {rendered.history}",
                 "ends inside <think> (pre-filled)" if rendered.prefilled else "not pre-filled", *rendered.warnings]
        layout = QtWidgets.QVBoxLayout(dialog)
        layout.addWidget(QtWidgets.QLabel(about, wordWrap=True))
        layout.addWidget(text)
        layout.addWidget(QtWidgets.QLabel(" · ".join(notes), objectName="Muted", wordWrap=True))
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(dialog.reject)
        layout.addWidget(buttons)
        dialog.resize(640, 420)
        if getattr(self, "prompt_dialog", None) is not None:  # one at a time: the last one asked for
            self.prompt_dialog.close()
            self.prompt_dialog.deleteLater()
        self.prompt_dialog = dialog
        dialog.show()
        dialog.activateWindow()  # Esc and the keyboard go to it, not to the window behind

    def _on_preset(self, name: str) -> None:
        values = PRESETS.get(name)
        custom = values is None
        self.temperature.setEnabled(custom)
        self.top_p.setEnabled(custom)
        if values:
            self.temperature.setValue(values[0])
            self.top_p.setValue(values[1])
        self._on_changed()

    def _on_collapse(self, collapse: bool) -> None:
        settings = _ui_settings()
        settings.setValue(COLLAPSE_KEY, "true" if collapse else "false")
        settings.sync()
        self.collapse_changed.emit(collapse)

    def _on_changed(self, *_) -> None:
        self.system_warning.setVisible(bool(self.system_prompt.toPlainText().strip()))
        custom = PRESETS.get(self.preset.currentText()) is None
        self.temperature.setEnabled(custom)
        self.top_p.setEnabled(custom)
        self.budget.setEnabled(self.budget_on.isChecked())
        self.budget_message.setEnabled(self.budget_on.isChecked())
        if self.switch is not None and self.switch.supported and not self._loading:
            self._stored_thinking = self.thinking.isChecked()   # the user's choice survives a model probe
        if not self._loading:
            self.changed.emit(self.values())
