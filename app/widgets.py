"""Small widgets and helpers the panes share: a label that elides, a delegate that elides in the middle, a
theme object-name switch and bold text."""

from __future__ import annotations

from app.qt import Qt, QtCore, QtGui, QtWidgets


class ElidedLabel(QtWidgets.QLabel):
    """A one-line label that elides its text instead of widening the window; `full_text()` is what was set."""

    def __init__(self, text: str = "", mode: Qt.TextElideMode = Qt.TextElideMode.ElideRight,
                 parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self._full, self._mode = text, mode
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(40)
        self._elide()

    def set_full_text(self, text: str) -> None:
        self._full = text
        self._elide()

    def full_text(self) -> str:
        return self._full

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        self.setText(self.fontMetrics().elidedText(self._full, self._mode, max(self.width(), 40)))


def set_style_name(widget: QtWidgets.QWidget, name: str) -> None:
    """Switch a widget to another theme object name ("Muted", "Warning") and restyle it."""
    if widget.objectName() != name:
        widget.setObjectName(name)
        widget.style().unpolish(widget)
        widget.style().polish(widget)


def bold(widget: QtWidgets.QWidget, point_delta: int = 0) -> None:
    """Make a widget's font bold, `point_delta` points larger."""
    font = widget.font()
    font.setBold(True)
    font.setPointSizeF(font.pointSizeF() + point_delta)
    widget.setFont(font)


class ElideMiddleDelegate(QtWidgets.QStyledItemDelegate):
    """Elides a column's text in the middle, keeping both ends of a path ("File · ~/mod…/bartowski")."""

    def initStyleOption(self, option: QtWidgets.QStyleOptionViewItem, index: QtCore.QModelIndex) -> None:
        super().initStyleOption(option, index)
        option.textElideMode = Qt.TextElideMode.ElideMiddle
