"""The Chat pane: conversations (search, rename, delete with undo, export, remove thinking with undo), the
message view, the composer with Send/Stop, per-conversation settings, the model that answers and a context meter.

Everything it shows comes from engine.store and engine.chat.runtime through ChatSession signals; it decides
layout and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from app.chat.messages import AssistantMessageWidget, UserMessageWidget
from app.chat.session import DEFAULT_N_CTX, ChatSession
from app.chat.settings import SettingsPanel
from app.qt import Qt, QtCore, QtGui, QtWidgets, Signal
from app.widgets import ElidedLabel, Toast
from engine.chat.conversation import LEAF
from engine.chat.reasoning import ThinkingSwitch
from engine.errors import AhaError
from engine.fileio import atomic_write_text
from engine.store import Store, group_by_conversation

SEARCH_LIMIT = 200  # matching messages looked at; the list shows one row per conversation
REMOVE_THINKING_TIP = "Take the reasoning out of every reply in this chat (the answers stay); Undo brings it back"


def model_label(file_name: str | None, names: Mapping[str, str]) -> str:
    """Who wrote a reply: the model list's name for the file it was written with, else the file name without
    .gguf (a model since removed from the library), "Assistant" when no model was recorded."""
    if not file_name:
        return "Assistant"
    return names.get(file_name) or file_name.removesuffix(".gguf")


def matches_text(count: int) -> str:
    return f"{count} match" if count == 1 else f"{count} matches"


def replies_text(count: int) -> str:
    return f"{count} reply" if count == 1 else f"{count} replies"


def widgets_of(layout: QtWidgets.QLayout, kind: type) -> list:
    """The widgets of one kind in a message layout (its last item is the stretch)."""
    items = (layout.itemAt(index).widget() for index in range(layout.count()))
    return [widget for widget in items if isinstance(widget, kind)]


class Composer(QtWidgets.QPlainTextEdit):
    """Enter sends, Shift+Enter breaks the line."""

    submitted = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("Composer")
        self.setPlaceholderText("Ask a question…  (Enter sends, Shift+Enter for a new line)")
        self.setTabChangesFocus(True)
        self.setFixedHeight(84)

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class ContextMeter(QtWidgets.QWidget):
    """How full the context window is, and how much of it is the last reply's reasoning: a bar and its numbers
    ("Context 1,234 / 4,096")."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.used = self.reasoning = 0
        self.size_tokens = DEFAULT_N_CTX
        self.bar = _MeterBar(self)
        self.label = QtWidgets.QLabel(objectName="Muted")
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.bar)
        layout.addWidget(self.label)
        self.set_usage(0, 0, DEFAULT_N_CTX)

    def set_usage(self, used: int, reasoning: int, size: int) -> None:
        self.used, self.reasoning, self.size_tokens = used, reasoning, max(size, 1)
        self.label.setText(f"Context {used:,} / {size:,}")
        self.setToolTip(f"context: {used:,} of {size:,} tokens, {reasoning:,} of them reasoning")
        self.bar.update()


class _MeterBar(QtWidgets.QWidget):
    """The bar of a ContextMeter: used context in the accent colour, its reasoning part muted."""

    def __init__(self, meter: ContextMeter):
        super().__init__(meter)
        self.meter = meter
        self.setFixedSize(110, 18)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        from app.theme import colors

        c, meter = colors(), self.meter
        painter = QtGui.QPainter(self)
        painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        bar = QtCore.QRectF(0, 5, self.width() - 1, 8)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QtGui.QColor(c.border))
        painter.drawRoundedRect(bar, 4, 4)
        used = min(meter.used / meter.size_tokens, 1.0) * bar.width()
        reasoning = min(meter.reasoning / meter.size_tokens, 1.0) * bar.width()
        painter.setBrush(QtGui.QColor(c.accent))
        painter.drawRoundedRect(QtCore.QRectF(bar.left(), bar.top(), used, bar.height()), 4, 4)
        painter.setBrush(QtGui.QColor(c.muted))
        painter.drawRoundedRect(QtCore.QRectF(bar.left() + used - reasoning, bar.top(), reasoning, bar.height()), 4, 4)
        painter.end()


class _FitWidthDelegate(QtWidgets.QStyledItemDelegate):
    """Rows as wide as the list (a row is at least as wide as the view, and asks for no more): a long title
    elides ("…") instead of scrolling the list sideways."""

    def sizeHint(self, option, index) -> QtCore.QSize:  # noqa: N802 - Qt override
        size = super().sizeHint(option, index)
        size.setWidth(0)
        return size


class ConversationList(QtWidgets.QWidget):
    """Search box, "New chat" and the list of conversations (or search hits)."""

    opened = Signal(int, object)  # conversation id, message id to reveal (or None)
    new_requested = Signal()
    status_message = Signal(str)  # what an export did

    def __init__(self, store: Store, parent=None):
        super().__init__(parent)
        self.store = store
        self.model_names: Callable[[], Mapping[str, str]] = dict  # file name → shown name, for exports
        self.search = QtWidgets.QLineEdit(placeholderText="Search chats and thoughts…", clearButtonEnabled=True)
        self.search.textChanged.connect(self.refresh)
        new = QtWidgets.QPushButton("New chat", objectName="PrimaryButton")
        new.clicked.connect(self.new_requested.emit)
        self.list = QtWidgets.QListWidget(objectName="ConversationList")
        self.list.setItemDelegate(_FitWidthDelegate(self.list))
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._on_menu)
        self.list.itemActivated.connect(self._on_item)
        self.list.itemClicked.connect(self._on_item)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(new)
        layout.addWidget(self.search)
        layout.addWidget(self.list)

    def refresh(self) -> None:
        query = self.search.text().strip()
        self.list.clear()
        if query:  # one row per conversation: its title, how many messages match, the best match
            for group in group_by_conversation(self.store.search(query, limit=SEARCH_LIMIT)):
                best = group.hits[0]
                title = self.store.get_conversation(group.conversation_id).title
                snippet = " ".join(best.snippet.split())  # one line
                item = QtWidgets.QListWidgetItem(f"{title}\n{matches_text(len(group.hits))} · {snippet}")
                item.setData(Qt.ItemDataRole.UserRole, (group.conversation_id, best.message_id))
                item.setToolTip(title)
                self.list.addItem(item)
            return
        for conversation in self.store.list_conversations():
            item = QtWidgets.QListWidgetItem(conversation.title)
            item.setData(Qt.ItemDataRole.UserRole, (conversation.id, None))
            item.setToolTip(conversation.title)
            self.list.addItem(item)

    def select(self, conversation_id: int | None) -> None:
        for row in range(self.list.count()):
            if self.list.item(row).data(Qt.ItemDataRole.UserRole)[0] == conversation_id:
                self.list.setCurrentRow(row)
                return

    def _on_item(self, item: QtWidgets.QListWidgetItem) -> None:
        conversation_id, message_id = item.data(Qt.ItemDataRole.UserRole)
        self.opened.emit(conversation_id, message_id)

    def _on_menu(self, position: QtCore.QPoint) -> None:
        item = self.list.itemAt(position)
        if item is None:
            return
        conversation_id = item.data(Qt.ItemDataRole.UserRole)[0]
        menu = QtWidgets.QMenu(self)
        menu.addAction("Rename…", lambda: self.rename(conversation_id))
        menu.addAction("Export as Markdown…", lambda: self.export(conversation_id, "md"))
        menu.addAction("Export as JSON…", lambda: self.export(conversation_id, "json"))
        menu.addSeparator()
        pane = self.parent_pane()
        pane.add_thinking_actions(menu, conversation_id)
        menu.addSeparator()
        menu.addAction("Delete", lambda: pane.delete_conversation(conversation_id))
        menu.exec(self.list.viewport().mapToGlobal(position))

    def parent_pane(self) -> ChatPane:
        widget = self.parent()
        while not isinstance(widget, ChatPane):
            widget = widget.parent()
        return widget

    def rename(self, conversation_id: int) -> None:
        current = self.store.get_conversation(conversation_id).title
        title, ok = QtWidgets.QInputDialog.getText(self, "Rename chat", "Title:", text=current)
        if ok and title.strip():
            self.store.rename_conversation(conversation_id, title.strip())
            self.refresh()

    def export(self, conversation_id: int, kind: str) -> None:
        title = self.store.get_conversation(conversation_id).title
        safe = "".join(ch if ch.isalnum() or ch in " -_" else "_" for ch in title).strip() or "chat"
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export chat", f"{safe}.{kind}",
                                                        "Markdown (*.md)" if kind == "md" else "JSON (*.json)")
        if not path:
            return
        text = (self.store.export_markdown(conversation_id, names=self.model_names()) if kind == "md"
                else json.dumps(self.store.export_json(conversation_id), indent=2, ensure_ascii=False))
        try:
            atomic_write_text(Path(path), text)
        except OSError as error:
            self.status_message.emit(f"Could not save the chat to {path} ({error.strerror or error}); "
                                     "choose another folder.")
            return
        self.status_message.emit(f"Exported “{title}” to {path}")


class ChatPane(QtWidgets.QWidget):
    """Conversations on the left, the chat in the middle, its settings on the right."""

    status_message = Signal(str)

    def __init__(self, store: Store, session: ChatSession | None = None, parent=None):
        super().__init__(parent)
        self.store = store
        self.session = session or ChatSession(store, parent=self)
        self.conversation_id: int | None = None
        self.editing_parent: int | None = None      # set while editing an earlier question
        self.streaming: AssistantMessageWidget | None = None
        self.pending_settings: dict = {}
        self._build()
        self.session.delta.connect(self._on_delta)
        self.session.finished.connect(self._on_finished)
        self.session.failed.connect(self._on_failed)
        self.session.status.connect(self._on_status)
        self.session.busy_changed.connect(self._on_busy)
        self.session.prompt_ready.connect(self._on_prompt_ready)
        self.session.switch_ready.connect(self._on_switch_ready)
        self.conversations.refresh()

    # -- layout ------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.conversations = ConversationList(self.store)
        self.conversations.opened.connect(self.open_conversation)
        self.conversations.new_requested.connect(self.new_conversation)
        self.conversations.status_message.connect(self.status_message)
        self.settings = SettingsPanel()
        self.conversations.model_names = self.settings.model_names
        self.settings.changed.connect(self._on_settings_changed)
        self.settings.preview_requested.connect(self._on_preview)
        self.settings.model.currentTextChanged.connect(self._show_model)
        self.settings.model.currentIndexChanged.connect(self._read_switch)
        self.settings.collapse_changed.connect(self._on_collapse_changed)
        self.title = ElidedLabel()                      # a long title elides instead of widening the window
        self.title.setObjectName("EmptyTitle")
        self.model_name = ElidedLabel()                 # the model that writes the next reply
        self.model_name.setObjectName("Muted")
        self.meter = ContextMeter()
        details = QtWidgets.QHBoxLayout()               # under the title: who answers, how full the context is
        details.addWidget(self.model_name, 1)
        details.addWidget(self.meter)
        heading = QtWidgets.QVBoxLayout()
        heading.setSpacing(0)
        heading.addWidget(self.title)
        heading.addLayout(details)
        # The open chat's menu: export, remove or restore its thinking (one button: the column stays narrow)
        self.export_button = QtWidgets.QToolButton(text="Chat", autoRaise=True,
                                                   popupMode=QtWidgets.QToolButton.ToolButtonPopupMode.InstantPopup)
        chat_menu = QtWidgets.QMenu(self.export_button)
        chat_menu.addAction("Export as Markdown…", lambda: self._export("md"))
        chat_menu.addAction("Export as JSON…", lambda: self._export("json"))
        chat_menu.addSeparator()
        self.remove_thinking_action = chat_menu.addAction("Remove thinking from this conversation",
                                                          lambda: self.remove_thinking(self.conversation_id))
        self.remove_thinking_action.setToolTip(REMOVE_THINKING_TIP)
        self.restore_thinking_action = chat_menu.addAction("Restore thinking",
                                                           lambda: self.restore_thinking(self.conversation_id))
        chat_menu.aboutToShow.connect(self.update_thinking_actions)
        self.export_button.setMenu(chat_menu)
        self.settings_button = QtWidgets.QToolButton(text="Settings", checkable=True, autoRaise=True)
        self.settings_button.toggled.connect(self.settings.setVisible)
        top = QtWidgets.QHBoxLayout()
        top.addLayout(heading, 1)
        top.addWidget(self.export_button, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(self.settings_button, 0, Qt.AlignmentFlag.AlignTop)
        self.messages = QtWidgets.QWidget()
        self.message_layout = QtWidgets.QVBoxLayout(self.messages)
        self.message_layout.setContentsMargins(16, 8, 16, 8)
        self.message_layout.setSpacing(10)
        self.message_layout.addStretch()
        self.scroll = QtWidgets.QScrollArea(widgetResizable=True, frameShape=QtWidgets.QFrame.Shape.NoFrame)
        self.scroll.setWidget(self.messages)
        self.scroll.verticalScrollBar().rangeChanged.connect(self._on_scroll_range)
        self.composer = Composer()
        self.composer.submitted.connect(self.send)
        self.send_button = QtWidgets.QPushButton("Send", objectName="PrimaryButton")
        self.send_button.clicked.connect(self.send)
        self.stop_button = QtWidgets.QPushButton("Stop", objectName="StopButton")
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.hide()
        self.edit_label = QtWidgets.QLabel(objectName="Warning")
        self.thinking_bar = QtWidgets.QFrame(objectName="Banner")   # while a chat's thinking is removed: undo
        self.thinking_bar_label = QtWidgets.QLabel(wordWrap=True)
        self.thinking_bar_button = QtWidgets.QPushButton("Undo")
        self.thinking_bar_button.clicked.connect(lambda: self.restore_thinking(self.conversation_id))
        bar = QtWidgets.QHBoxLayout(self.thinking_bar)
        bar.setContentsMargins(10, 4, 6, 4)
        bar.addWidget(self.thinking_bar_label, 1)
        bar.addWidget(self.thinking_bar_button)
        self.thinking_bar.hide()
        self.status = QtWidgets.QLabel(objectName="Muted")
        buttons = QtWidgets.QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch()
        compose = QtWidgets.QHBoxLayout()
        compose.addWidget(self.composer, 1)
        compose.addLayout(buttons)
        center = QtWidgets.QWidget()
        column = QtWidgets.QVBoxLayout(center)
        column.setContentsMargins(8, 8, 8, 8)
        column.addLayout(top)
        column.addWidget(self.thinking_bar)
        column.addWidget(self.scroll, 1)
        column.addWidget(self.edit_label)
        column.addLayout(compose)
        column.addWidget(self.status)
        self.splitter = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.conversations)
        self.splitter.addWidget(center)
        self.splitter.addWidget(self.settings)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([240, 760, 300])
        self.settings.hide()
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)
        self.toast = Toast(self)
        self.edit_label.hide()
        # Esc stops the reply wherever the focus is in the window (a window shortcut, not a key handler of
        # this pane: the focus may be on the sidebar, or nowhere after the focused reply was replaced).
        QtGui.QShortcut(QtGui.QKeySequence(Qt.Key.Key_Escape), self, activated=self._on_escape)
        self._preview_with_message = False
        self._show_title()
        self._show_model()
        self._read_switch()

    # -- conversations -----------------------------------------------------------------------------
    def new_conversation(self) -> None:
        """Start a fresh chat (created in the store with the first message)."""
        if self.session.busy:
            self.status_message.emit("A reply is still being written; stop it (Esc) before starting a new chat.")
            return
        self.conversation_id = None
        self.pending_settings = {**self.settings.values()}
        self._clear_messages()
        self._show_title()
        self._show_thinking_bar()
        self.composer.setFocus()

    def open_conversation(self, conversation_id: int, reveal_message: int | None = None) -> None:
        if self.session.busy and conversation_id != self.conversation_id:
            self.status_message.emit("A reply is still being written; stop it before switching chats.")
            return
        self.conversation_id = conversation_id
        conversation = self.store.get_conversation(conversation_id)
        self.settings.load(conversation.settings)
        if reveal_message is not None:
            self.store.set_leaf(conversation_id, self.store.latest_leaf(reveal_message))
        self._show_branch()
        self._show_thinking_bar()
        self.conversations.select(conversation_id)
        if reveal_message is not None:
            self._reveal(reveal_message, self.conversations.search.text().strip())

    def delete_conversation(self, conversation_id: int) -> None:
        title = self.store.get_conversation(conversation_id).title
        self.store.delete_conversation(conversation_id)
        if conversation_id == self.conversation_id:
            self.new_conversation()
        self.conversations.refresh()
        self.conversations.select(self.conversation_id)  # the open chat stays highlighted

        def undo():
            self.store.restore_conversation(conversation_id)
            self.conversations.refresh()
            self.conversations.select(self.conversation_id)
        self.toast.show_message(f"Deleted “{title}”", "Undo", undo)

    def set_model(self, path: str) -> None:
        """Use this model for the current (or next) conversation."""
        self.settings.set_model(path)

    # -- removing thinking -------------------------------------------------------------------------
    def add_thinking_actions(self, menu: QtWidgets.QMenu, conversation_id: int) -> None:
        """A conversation's "Remove thinking from this conversation", and "Restore thinking" while some is kept
        aside (the conversation list's menu)."""
        remove = menu.addAction("Remove thinking from this conversation",
                                lambda: self.remove_thinking(conversation_id))
        remove.setToolTip(REMOVE_THINKING_TIP)
        restore = menu.addAction("Restore thinking", lambda: self.restore_thinking(conversation_id))
        self._show_thinking_actions(remove, restore, conversation_id)

    def update_thinking_actions(self) -> None:
        """The Chat menu's thinking actions for the open chat (when the menu opens)."""
        self._show_thinking_actions(self.remove_thinking_action, self.restore_thinking_action, self.conversation_id)

    def _show_thinking_actions(self, remove: QtGui.QAction, restore: QtGui.QAction, conversation_id: int | None) -> None:
        kept = self.store.removed_thinking_count(conversation_id) if conversation_id is not None else 0
        remove.setEnabled(conversation_id is not None)
        restore.setText(f"Restore thinking ({replies_text(kept)})" if kept else "Restore thinking")
        restore.setEnabled(kept > 0)

    def remove_thinking(self, conversation_id: int | None) -> int:
        """Take the thoughts out of a conversation's replies (kept aside in the store); the open chat shows the
        change and a bar with Undo. Returns how many replies lost theirs."""
        if conversation_id is None:
            return 0
        if self.session.busy and conversation_id == self.conversation_id:
            self.status_message.emit("A reply is still being written; stop it (Esc) before removing the thinking.")
            return 0
        count = self.store.remove_thinking(conversation_id)
        title = self.store.get_conversation(conversation_id).title
        if not count:
            self.status_message.emit(f"“{title}” has no thinking to remove.")
            return 0
        if conversation_id == self.conversation_id:
            self._show_branch()
            self._show_thinking_bar(just_removed=count)
        else:
            self.toast.show_message(f"Removed the thinking of {replies_text(count)} from “{title}”", "Undo",
                                    lambda: self.restore_thinking(conversation_id))
        self.status_message.emit(f"Removed the thinking of {replies_text(count)} from “{title}”.")
        return count

    def restore_thinking(self, conversation_id: int | None) -> int:
        """Put back the thoughts removed from a conversation; returns how many replies got theirs back."""
        if conversation_id is None:
            return 0
        if self.session.busy and conversation_id == self.conversation_id:
            self.status_message.emit("A reply is still being written; stop it (Esc) before restoring the thinking.")
            return 0
        count = self.store.restore_thinking(conversation_id)
        if conversation_id == self.conversation_id:
            self._show_branch()
            self._show_thinking_bar()
        if count:
            title = self.store.get_conversation(conversation_id).title
            self.status_message.emit(f"Restored the thinking of {replies_text(count)} in “{title}”.")
        return count

    def _show_thinking_bar(self, just_removed: int = 0) -> None:
        """The bar above the messages while the open chat has thinking kept aside: Undo right after the removal,
        "Restore thinking" when the chat is opened later."""
        kept = self.store.removed_thinking_count(self.conversation_id) if self.conversation_id is not None else 0
        if just_removed:
            self.thinking_bar_label.setText(f"Removed the thinking of {replies_text(just_removed)} from this chat; "
                                            "the answers stay.")
            self.thinking_bar_button.setText("Undo")
        elif kept:
            self.thinking_bar_label.setText(f"The thinking of {replies_text(kept)} was removed from this chat.")
            self.thinking_bar_button.setText("Restore thinking")
        self.thinking_bar.setVisible(kept > 0)

    def _on_collapse_changed(self, collapse: bool) -> None:
        for widget in widgets_of(self.message_layout, AssistantMessageWidget):
            widget.think.set_collapse_when_done(collapse)

    # -- messages ----------------------------------------------------------------------------------
    def _clear_messages(self) -> None:
        while self.message_layout.count() > 1:
            widget = self.message_layout.takeAt(0).widget()
            if widget is not None:
                widget.hide()            # gone now, even before the deferred delete runs
                widget.setParent(None)
                widget.deleteLater()
        self.streaming = None

    def _add_widget(self, widget: QtWidgets.QWidget) -> None:
        self.message_layout.insertWidget(self.message_layout.count() - 1, widget)

    def _show_branch(self) -> None:
        self._clear_messages()
        conversation = self.store.get_conversation(self.conversation_id)
        if conversation.leaf_id is None:
            self._show_title()
            return
        last_stats = {}
        names = self.settings.model_names()
        removed = self.store.removed_thinking_ids(self.conversation_id)
        for message in self.store.branch_path(conversation.leaf_id):
            siblings = [m.id for m in self.store.siblings(message.id)]
            if message.role == "user":
                widget = UserMessageWidget(message.id, message.content)
                widget.edit_requested.connect(self._on_edit)
            else:
                widget = self._saved_reply(message, names, message.id in removed)
                widget.regenerate_requested.connect(self.regenerate)
                last_stats = message.stats
            widget.branches.set_siblings(siblings, message.id)
            widget.branches.moved.connect(self._on_branch_moved)
            self._add_widget(widget)
        self._update_meter(last_stats)
        self._show_title()

    def _saved_reply(self, message, names: Mapping[str, str], thinking_removed: bool = False) -> AssistantMessageWidget:
        widget = AssistantMessageWidget(message.id)
        widget.think.collapse_when_done = self.settings.collapse_thoughts.isChecked()
        widget.author.setText(model_label(message.model, names))
        widget.show_saved(message.thinking, message.content, message.stats, message.status, thinking_removed)
        return widget

    def _reveal(self, message_id: int, query: str) -> None:
        """Scroll to a search hit; expand its thought and select the words when they are in it."""
        for index in range(self.message_layout.count() - 1):
            widget = self.message_layout.itemAt(index).widget()
            if getattr(widget, "message_id", None) != message_id:
                continue
            if isinstance(widget, AssistantMessageWidget) and query:
                word = query.split()[0]
                if word.lower() in widget.think.text().lower():
                    widget.think.set_expanded(True)
                    widget.think.body.find(word)
            QtCore.QTimer.singleShot(0, lambda w=widget: self.scroll.ensureWidgetVisible(w))

    def _on_branch_moved(self, message_id: int) -> None:
        self.store.set_leaf(self.conversation_id, self.store.latest_leaf(message_id))
        self._show_branch()

    # -- sending -----------------------------------------------------------------------------------
    def send(self) -> None:
        text = self.composer.toPlainText().strip()
        if not text or self.session.busy:
            return
        settings = self.settings.values()
        if not settings.get("model"):
            self.status_message.emit("Choose a model first (Models pane, or the model list in Settings).")
            self.settings_button.setChecked(True)
            return
        if self.conversation_id is None:
            self.conversation_id = self.store.create_conversation(settings=settings).id
        else:
            self.store.update_settings(self.conversation_id, settings)
        parent = self._send_parent()
        if self.editing_parent is not None:
            self._show_branch_until(self.editing_parent)
        self._add_widget(UserMessageWidget(0, text))
        self._start_stream()
        self.composer.clear()
        self._end_edit()
        try:
            self.session.send(self.conversation_id, text, parent_id=parent)
        except AhaError as error:
            self._on_failed(str(error))

    def _send_parent(self) -> int | str | None:
        """Where the composer's message goes: after the leaf, or beside the earlier question being edited."""
        if self.editing_parent is None:
            return LEAF
        return None if self.editing_parent == -1 else self.editing_parent

    def regenerate(self, assistant_message_id: int) -> None:
        if self.session.busy or not assistant_message_id:
            return
        message = self.store.get_message(assistant_message_id)
        self._show_branch_until(message.parent_id)
        self._start_stream()
        self.session.regenerate(self.conversation_id, assistant_message_id)

    def stop(self) -> None:
        self.session.stop()

    def _start_stream(self) -> None:
        self.streaming = AssistantMessageWidget()
        self.streaming.think.collapse_when_done = self.settings.collapse_thoughts.isChecked()
        self.streaming.author.setText(self.settings.model.currentText() or "Assistant")
        self.streaming.regenerate_requested.connect(self.regenerate)
        self._add_widget(self.streaming)
        self.streaming.start_stream()
        self._stick_to_bottom = True

    def _show_branch_until(self, message_id: int | None) -> None:
        """Show the current branch only up to (and including) message_id; -1 or None: nothing."""
        self._clear_messages()
        if message_id in (None, -1):
            return
        names = self.settings.model_names()
        removed = self.store.removed_thinking_ids(self.conversation_id)
        for message in self.store.branch_path(message_id):
            if message.role == "user":
                widget = UserMessageWidget(message.id, message.content)
            else:
                widget = self._saved_reply(message, names, message.id in removed)
            self._add_widget(widget)

    def _on_edit(self, message_id: int, text: str) -> None:
        """Edit an earlier question: the new version becomes a sibling branch of the old one."""
        if self.session.busy:
            return
        parent = self.store.get_message(message_id).parent_id
        self.editing_parent = parent if parent is not None else -1
        self.composer.setPlainText(text)
        self.composer.setFocus()
        self.edit_label.setText("Editing an earlier question: sending makes a new branch; the old one stays. "
                                "Esc cancels.")
        self.edit_label.show()

    def _end_edit(self) -> None:
        self.editing_parent = None
        self.edit_label.hide()

    def _on_escape(self) -> None:
        """Esc: stop the reply; else close the prompt dialog; else cancel editing an earlier question."""
        dialog = getattr(self.settings, "prompt_dialog", None)
        if self.session.busy:
            self.stop()
        elif dialog is not None and dialog.isVisible():
            dialog.close()
        elif self.editing_parent is not None:
            self._end_edit()
            self.composer.clear()

    # -- session signals ---------------------------------------------------------------------------
    def _on_delta(self, kind: str, text: str) -> None:
        if self.streaming is not None:
            self.streaming.add_delta(kind, text)

    def _on_finished(self, stats: dict) -> None:
        widget, self.streaming = self.streaming, None
        if widget is None:
            return
        widget.finish(stats)
        message_id = stats.get("message_id")
        if message_id:
            widget.branches.set_siblings([m.id for m in self.store.siblings(message_id)], message_id)
            widget.branches.moved.connect(self._on_branch_moved)
            self._update_user_widget(self.store.get_message(message_id).parent_id)
        self._update_meter(stats)
        self.conversations.refresh()
        self.conversations.select(self.conversation_id)
        self._show_title()

    def _update_user_widget(self, user_id: int | None) -> None:
        if user_id is None:
            return
        for index in range(self.message_layout.count() - 1):
            widget = self.message_layout.itemAt(index).widget()
            if isinstance(widget, UserMessageWidget) and widget.message_id in (0, user_id):
                widget.message_id = user_id
                widget.edit_requested.connect(self._on_edit)
                widget.branches.set_siblings([m.id for m in self.store.siblings(user_id)], user_id)
                widget.branches.moved.connect(self._on_branch_moved)

    def _on_failed(self, message: str) -> None:
        if self.streaming is not None:
            self.streaming.finish({"stop_reason": "error", "error": message})
            self.streaming = None
        self.status_message.emit(message)
        self.status.setText(message)

    def _on_status(self, text: str) -> None:
        self.status.setText(text)

    def _on_busy(self, busy: bool) -> None:
        self.send_button.setVisible(not busy)
        self.stop_button.setVisible(busy)
        if not busy:
            self.status.setText("")

    def _on_scroll_range(self, minimum: int, maximum: int) -> None:
        if self.streaming is not None and getattr(self, "_stick_to_bottom", False):
            self.scroll.verticalScrollBar().setValue(maximum)

    # -- settings ----------------------------------------------------------------------------------
    def _on_settings_changed(self, settings: dict) -> None:
        if self.conversation_id is not None and not self.session.busy:
            self.store.update_settings(self.conversation_id, settings)
        self.pending_settings = settings

    def _on_preview(self) -> None:
        """The prompt of the next message: the composer's text (as `send` would send it) in place."""
        text = self.composer.toPlainText().strip()
        self._preview_with_message = bool(text)
        self.session.preview_prompt(self.conversation_id, self.settings.values(), text, self._send_parent())

    def _read_switch(self, *_) -> None:
        """The chosen model's thinking switch, read on a worker thread (the settings show it when it comes)."""
        self.settings.set_thinking_switch(None)
        path = self.settings.model.currentData()
        if path:
            self.session.read_switch(path)

    def _on_switch_ready(self, path: str, switch) -> None:
        if path != self.settings.model.currentData():
            return                        # the model was changed again meanwhile: its own answer comes
        if isinstance(switch, str):       # the file could not be read: the switch stays off, saying why
            switch = ThinkingSwitch(False, reason=switch)
        self.settings.set_thinking_switch(switch)

    def _on_prompt_ready(self, rendered) -> None:
        self.settings.show_prompt(rendered, with_message=self._preview_with_message)

    def _update_meter(self, stats: dict) -> None:
        size = stats.get("context_size") or self.settings.values().get("n_ctx", DEFAULT_N_CTX)
        self.meter.set_usage(stats.get("context_used", 0), stats.get("thinking_tokens", 0), size)

    def _show_title(self) -> None:
        conversation_id = self.conversation_id
        title = "New chat" if conversation_id is None else self.store.get_conversation(conversation_id).title
        self.title.set_full_text(title)
        self.title.setToolTip(title)
        self.export_button.setEnabled(self.conversation_id is not None)

    def _show_model(self) -> None:
        name = self.settings.model.currentText()
        self.model_name.set_full_text(name or "No model chosen")
        self.model_name.setToolTip(self.settings.model.currentData() or "Choose a model in Settings")

    def _export(self, kind: str) -> None:
        if self.conversation_id is not None:
            self.conversations.export(self.conversation_id, kind)
