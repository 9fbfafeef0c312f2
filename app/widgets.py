"""Small widgets and helpers the panes share: a label that elides, a delegate that elides in the middle, a
theme object-name switch, bold text, a toast with one action ("Deleted · Undo") and the table model of a
pane's rows (Models, Runs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


SORT_ROLE = Qt.ItemDataRole.UserRole + 1   # what a column sorts by: numbers for numeric columns
KEY_ROLE = Qt.ItemDataRole.UserRole + 2    # the row's identity (a model's path, a run's id)


class RowsModel(QtCore.QAbstractTableModel):
    """A table of one row object per line, for a QSortFilterProxyModel sorting on SORT_ROLE. It is made with the
    pane's `text(row, column)` and, optionally, `sort_key(row, column)` (default: the text, lower-cased); a
    subclass names its COLUMNS and NUMERIC_COLUMNS (right-aligned) and may give a row's `key` and `extra`
    for any other role (tooltip, colour, icon)."""

    COLUMNS: tuple[str, ...] = ()
    NUMERIC_COLUMNS: tuple[int, ...] = ()

    def __init__(self, text: Callable[[Any, int], str], sort_key: Callable[[Any, int], Any] | None = None,
                 parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self._rows: list = []
        self._text = text
        self._sort_key = sort_key or (lambda row, column: text(row, column).lower())

    def set_rows(self, rows) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def rows(self) -> list:
        return list(self._rows)

    def row_at(self, row: int):
        return self._rows[row]

    def key(self, row):
        return None

    def extra(self, row, column: int, role: int):
        return None

    def alignment(self, column: int) -> Qt.AlignmentFlag:
        horizontal = Qt.AlignmentFlag.AlignRight if column in self.NUMERIC_COLUMNS else Qt.AlignmentFlag.AlignLeft
        return horizontal | Qt.AlignmentFlag.AlignVCenter

    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return self.alignment(section)
        return None

    def data(self, index: QtCore.QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row, column = self._rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(row, column)
        if role == SORT_ROLE:
            return self._sort_key(row, column)
        if role == KEY_ROLE:
            return self.key(row)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return self.alignment(column)
        return self.extra(row, column, role)
