"""Small widgets and helpers the panes share: a label that elides, a delegate that elides in the middle, a
theme object-name switch, bold text and a toast with one action ("Deleted · Undo")."""

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


class Toast(QtWidgets.QFrame):
    """A transient message with one action ("Conversation deleted · Undo").

    `on_expire` runs when the message goes without its action being taken: its time ran out, or another message
    replaced it (a deletion that only happens once Undo is no longer offered)."""

    def __init__(self, parent: QtWidgets.QWidget):
        super().__init__(parent)
        self.setObjectName("Toast")
        self.label = QtWidgets.QLabel()
        self.button = QtWidgets.QPushButton(flat=True)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 6, 6)
        layout.addWidget(self.label)
        layout.addWidget(self.button)
        self.timer = QtCore.QTimer(self, singleShot=True, timeout=self.expire)
        self._action = None
        self._on_expire = None
        self.button.clicked.connect(self._on_action)
        self.hide()

    def show_message(self, text: str, action_text: str, action, seconds: float = 6.0, on_expire=None) -> None:
        self.expire()                     # a message still shown is over: its expiry runs first
        self.label.setText(text)
        self.button.setText(action_text)
        self._action, self._on_expire = action, on_expire
        self.adjustSize()
        parent = self.parentWidget()
        self.move((parent.width() - self.width()) // 2, parent.height() - self.height() - 110)
        self.show()
        self.raise_()
        self.timer.start(int(seconds * 1000))

    def expire(self) -> None:
        """End the message now without its action (its `on_expire` runs)."""
        self.timer.stop()
        self.hide()
        on_expire, self._on_expire, self._action = self._on_expire, None, None
        if on_expire:
            on_expire()

    def _on_action(self) -> None:
        self.timer.stop()
        self.hide()
        action, self._action, self._on_expire = self._action, None, None
        if action:
            action()
