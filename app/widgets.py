"""Small widgets the panes share."""

from __future__ import annotations

from app.qt import Qt, QtGui, QtWidgets


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
