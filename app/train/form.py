"""The settings form, generated from a run kind's config metadata (engine.train.config.describe_settings):
one row per setting under its group's heading, labelled with its TRL name, its help (and default) as the
tooltip. Values go in and out as a plain dict of TOML types; a value that does not parse is one line beside
its field, and `values()` leaves it out and `errors()` names it.

A field is a check box (a boolean), a combo box (fixed choices) or a line edit (numbers, text, lists as
space-separated words, empty = unset): what the user typed round-trips exactly.
"""

from __future__ import annotations

import math
from typing import Any

from app.qt import Qt, QtWidgets, Signal
from engine.train.config import GROUPS, SettingInfo, flag_help


class SettingField(QtWidgets.QWidget):
    """One setting's editor and the one-line error shown beside it."""

    changed = Signal()

    def __init__(self, info: SettingInfo, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.info = info
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        if info.type is bool and not info.many:
            self.editor: QtWidgets.QWidget = QtWidgets.QCheckBox()
            self.editor.toggled.connect(self._on_edited)
        elif info.choices and not info.many:
            self.editor = QtWidgets.QComboBox()
            if info.optional:
                self.editor.addItem("(unset)", None)
            for choice in info.choices:
                self.editor.addItem(str(choice), choice)
            self.editor.currentIndexChanged.connect(self._on_edited)
        else:
            self.editor = QtWidgets.QLineEdit()
            placeholder = "(unset)" if info.optional else ("space-separated" if info.many else "")
            self.editor.setPlaceholderText(placeholder)
            self.editor.textEdited.connect(self._on_edited)
        self.editor.setObjectName(f"setting_{info.name}")
        self.editor.setToolTip(f"{info.name}: {flag_help(info)}")
        self.error_label = QtWidgets.QLabel(objectName="Warning")
        self.error_label.hide()
        layout.addWidget(self.editor, 1)
        layout.addWidget(self.error_label)
        self.set_value(info.default)

    def set_value(self, value: Any) -> None:
        editor = self.editor
        if isinstance(editor, QtWidgets.QCheckBox):
            editor.setChecked(bool(value))
        elif isinstance(editor, QtWidgets.QComboBox):
            index = editor.findData(value)
            if index < 0 and value is not None:  # a value outside the choices (a saved config): keep it visible
                editor.addItem(str(value), value)
                index = editor.count() - 1
            editor.setCurrentIndex(max(index, 0))
        else:
            editor.setText(format_value(value, self.info))
        self._show_error(None)

    def value(self) -> Any:
        """The parsed value; raises ValueError with the one line shown beside the field."""
        editor = self.editor
        if isinstance(editor, QtWidgets.QCheckBox):
            return editor.isChecked()
        if isinstance(editor, QtWidgets.QComboBox):
            return editor.currentData()
        return parse_value(editor.text(), self.info)

    def error(self) -> str | None:
        try:
            self.value()
        except ValueError as error:
            return str(error)
        return None

    def _on_edited(self, *_: Any) -> None:
        self._show_error(self.error())
        self.changed.emit()

    def _show_error(self, message: str | None) -> None:
        self.error_label.setText(message or "")
        self.error_label.setVisible(bool(message))


def format_value(value: Any, info: SettingInfo) -> str:
    if value is None:
        return ""
    if info.many:
        return " ".join(_scalar_text(item) for item in value)
    return _scalar_text(value)


def _scalar_text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def parse_value(text: str, info: SettingInfo) -> Any:
    """A line edit's text as the setting's value: "" = unset (None) when the setting may be unset, else its
    default for a list (an empty list) or an error."""
    text = text.strip()
    if info.many:
        items = text.split()
        return tuple(_parse_scalar(item, info) for item in items) if items or not info.optional else None
    if not text:
        if info.optional:
            return None
        if info.type is str:
            return ""
        raise ValueError(f"{info.name} needs a value")
    return _parse_scalar(text, info)


def _parse_scalar(text: str, info: SettingInfo) -> Any:
    if info.type is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{info.name} must be a whole number, got {text!r}") from None
    if info.type is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{info.name} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{info.name} must be a finite number, got {text!r}")
        return value
    if info.type is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{info.name} takes true or false, got {text!r}")
        return text.lower() == "true"
    if info.choices and text not in info.choices:
        raise ValueError(f"{info.name} takes {', '.join(map(str, info.choices))}, got {text!r}")
    return text


class SettingsForm(QtWidgets.QWidget):
    """The fields of `settings` (SettingInfos) in GROUPS order, one titled section per group."""

    changed = Signal()

    def __init__(self, settings: list[SettingInfo], parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.fields: dict[str, SettingField] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        order = [*GROUPS, *sorted({info.group for info in settings} - set(GROUPS))]
        self.sections: dict[str, QtWidgets.QGroupBox] = {}
        for group in order:
            members = [info for info in settings if info.group == group]
            if not members:
                continue
            box = QtWidgets.QGroupBox(group or "Other")
            form = QtWidgets.QFormLayout(box)
            form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            for info in members:
                field = SettingField(info)
                field.changed.connect(self.changed)
                label = QtWidgets.QLabel(info.name)
                label.setToolTip(field.editor.toolTip())
                label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
                form.addRow(label, field)
                self.fields[info.name] = field
            self.sections[group] = box
            layout.addWidget(box)

    def values(self) -> dict[str, Any]:
        """{name: value} of every field that parses."""
        values = {}
        for name, field in self.fields.items():
            try:
                values[name] = field.value()
            except ValueError:
                continue
        return values

    def errors(self) -> dict[str, str]:
        """{name: one line} of the fields that do not parse."""
        return {name: message for name, field in self.fields.items() if (message := field.error())}

    def set_values(self, values: dict[str, Any]) -> None:
        """Set the fields named in `values` (others are left as they are)."""
        for name, value in values.items():
            if name in self.fields:
                self.fields[name].set_value(value)
