"""Message widgets: a user bubble, and an assistant reply with its think block, answer and stats.

The think block reads "Thinking… 3.2 s" (timed from the first thinking token) with the last lines of the
trace while streaming, as tall as its lines; it collapses to "Thought for 12.3 s · 842 tokens" when the
answer starts (unless `collapse_when_done` is off: the Chat pane's "Collapse finished thoughts" setting), and
says why (engine.chat.conversation's wording) when a thought did not finish. Streamed text
is buffered and flushed at most 30 times a second, appended at the end of the documents (no re-layout of
what is already shown); the answer's Markdown and math are rendered when it is done.
"""

from __future__ import annotations

from app.chat.rich_text import render_markdown
from app.qt import Qt, QtCore, QtGui, QtWidgets, Signal
from engine.chat.conversation import stats_fields, stats_line, status_for, thought_summary

FLUSH_MS = 33              # ≤ 30 repaints a second while streaming
LIVE_MARKDOWN_MS = 750     # the answer's Markdown is re-rendered this often while it streams
THINK_LINES_LIVE = 4       # lines of the trace shown while thinking
THINK_LINES_DONE = 24      # at most this many lines of a finished trace before it scrolls


class AutoHeightText(QtWidgets.QTextBrowser):
    """A read-only rich text view as tall as its content (the scroll area around it scrolls)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setOpenExternalLinks(True)
        self.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Minimum)
        self.document().setDocumentMargin(2)
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self.viewport().setAutoFillBackground(False)

    def _fit(self, size: QtCore.QSizeF) -> None:
        height = int(size.height()) + 6
        if height != self.height():
            self.setFixedHeight(height)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self.document().setTextWidth(self.viewport().width())

    def append_plain(self, text: str) -> None:
        """Append at the end without touching the rest of the document (incremental layout)."""
        cursor = QtGui.QTextCursor(self.document())
        cursor.movePosition(QtGui.QTextCursor.MoveOperation.End)
        cursor.insertText(text)


class ThinkBlock(QtWidgets.QFrame):
    """The collapsible think trace. Live: a timer from the first thinking token and the last lines; done: a
    one-line summary. The body is as tall as its lines (none while nothing has come)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("ThinkBlock")
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Preferred, QtWidgets.QSizePolicy.Policy.Fixed)  # never taller
        self.header = QtWidgets.QToolButton(objectName="ThinkHeader")
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        # Ignored: a long header ("The model ended inside its thought · …") never widens a narrow column
        self.header.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.header.clicked.connect(self.toggle)
        self.body = QtWidgets.QPlainTextEdit(objectName="ThinkBody", readOnly=True)
        self.body.setContextMenuPolicy(Qt.ContextMenuPolicy.DefaultContextMenu)
        self.body.document().documentLayout().documentSizeChanged.connect(lambda _: self._fit_body())  # rewrapped
        self.body.verticalScrollBar().rangeChanged.connect(self._show_last_lines)  # ranges settle after layout
        self.body.installEventFilter(self)  # a new width rewraps the lines: the body's height follows
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 6)
        layout.setSpacing(2)
        layout.addWidget(self.header)
        layout.addWidget(self.body)
        self.live = False
        self.expanded = True
        self.collapse_when_done = True  # a finished thought shows its summary only (a click opens it)
        self.removed = False  # the thought was taken out of the conversation ("Remove thinking"; undo restores)
        self.stats: dict = {}
        self._clock = QtCore.QElapsedTimer()
        self._ticker = QtCore.QTimer(self, interval=100, timeout=self._tick)

    # -- state -------------------------------------------------------------------------------------
    def start_live(self) -> None:
        """The reply was asked for: "Thinking…" until the first thinking token starts the timer."""
        self.live = True
        self._clock.invalidate()
        self.set_expanded(True)

    def thinking_started(self) -> None:
        """The first thinking token came: the timer starts now (model load and prompt time are not thought)."""
        if self.live and not self._clock.isValid():
            self._clock.start()
            self._ticker.start()
            self._tick()

    def append(self, text: str) -> None:
        cursor = QtGui.QTextCursor(self.body.document())
        cursor.movePosition(QtGui.QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        self._fit_body()

    def answer_started(self) -> None:
        """The answer began: the thought is over; collapse to the summary (timer stops)."""
        if self.live:
            self._ticker.stop()
            self.live = False
            seconds = self._clock.elapsed() / 1000 if self._clock.isValid() else 0.0
            self.stats = {"thinking_s": seconds, "thinking_tokens": self.stats.get("thinking_tokens", 0)}
            self.set_expanded(not self.collapse_when_done)

    def finish(self, stats: dict) -> None:
        self._ticker.stop()
        self.live = False
        self.stats = stats
        self.setVisible(bool(self.text()) or bool(stats.get("thinking_tokens")) or self.removed)
        self.set_expanded(self.opens_when_done())
        self._update_header()

    def opens_when_done(self) -> bool:
        """Whether the finished thought is shown open: when it did not finish (so the reader sees where it
        stopped), or when finished thoughts are not collapsed; never when there is no text to show."""
        return bool(self.text()) and (bool(self.stats.get("thinking_unfinished")) or not self.collapse_when_done)

    def set_collapse_when_done(self, collapse: bool) -> None:
        """Follow the collapse setting; a finished thought opens or closes to match it."""
        self.collapse_when_done = collapse
        if not self.live:
            self.set_expanded(self.opens_when_done())

    def text(self) -> str:
        return self.body.toPlainText()

    @property
    def in_thought(self) -> bool:
        """A thought is under way: thinking tokens came (the timer runs) and no answer yet."""
        return self.live and self._clock.isValid()

    # -- view --------------------------------------------------------------------------------------
    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt override
        if (watched is self.body and event.type() == QtCore.QEvent.Type.Resize
                and event.size().width() != event.oldSize().width() and not self.live):
            QtCore.QTimer.singleShot(0, self, self._fit_body)  # after the body's own resize has rewrapped it
        return super().eventFilter(watched, event)

    def toggle(self) -> None:
        self.set_expanded(not self.expanded)

    def set_expanded(self, expanded: bool) -> None:
        self.expanded = expanded and not self.removed   # a removed thought has nothing to open
        self.header.setArrowType(Qt.ArrowType.DownArrow if self.expanded else Qt.ArrowType.RightArrow)
        self._fit_body(from_top=not self.live)
        self._update_header()

    def _fit_body(self, from_top: bool = False) -> None:
        """The body as tall as the trace's lines, at most THINK_LINES_LIVE while live (the last ones, no
        scroll bar) and THINK_LINES_DONE when done (then it scrolls); hidden while empty or collapsed. The
        empty line after a trailing line break counts for nothing: it stays just below the view."""
        limit = THINK_LINES_LIVE if self.live else THINK_LINES_DONE
        document, lines = self.body.document(), self._text_lines() if self.live else self._wrapped_lines(limit + 1)
        self.body.setVisible(self.expanded and document.characterCount() > 1)
        policy = (Qt.ScrollBarPolicy.ScrollBarAlwaysOff if self.live or lines <= limit
                  else Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        if self.body.verticalScrollBarPolicy() != policy:
            self.body.setVerticalScrollBarPolicy(policy)
        margins = self.body.contentsMargins()
        height = (self.body.fontMetrics().lineSpacing() * min(lines, limit) + 2 * document.documentMargin()
                  + margins.top() + margins.bottom())
        self.body.setFixedHeight(round(height))
        if self.live:
            self._show_last_lines()
        elif from_top:
            self.body.verticalScrollBar().setValue(0)

    def _text_lines(self) -> int:
        """The trace's (wrapped) lines, not counting the empty one after a trailing line break."""
        document = self.body.document()
        trailing = 1 if document.blockCount() > 1 and not document.lastBlock().text() else 0
        return max(int(document.size().height()) - trailing, 1)  # a plain-text document's height is in lines

    def _wrapped_lines(self, enough: int) -> int:
        """The trace's lines as wrapped at the body's width now, counted up to `enough`, not counting the empty
        one after a trailing line break. QPlainTextEdit lays out only the blocks in view, so after a resize a
        block below the view still counts one line in the document's size however it now wraps: each block is
        laid out here (blockBoundingRect does it), the first few only."""
        document = self.body.document()
        layout, block, lines = document.documentLayout(), document.begin(), 0
        while block.isValid() and lines < enough:
            if block == document.lastBlock() and block.blockNumber() > 0 and not block.text():
                break  # the empty line after a trailing line break
            layout.blockBoundingRect(block)
            lines += max(block.layout().lineCount(), 1)
            block = block.next()
        return max(lines, 1)

    def _show_last_lines(self) -> None:
        """While live, the last lines of the trace are in view (a plain-text view scrolls by lines)."""
        if self.live:
            lines = self._text_lines()
            self.body.verticalScrollBar().setValue(lines - min(lines, THINK_LINES_LIVE))

    def _tick(self) -> None:
        self._update_header()

    def _update_header(self) -> None:
        if self.live:
            timed = f" {self._clock.elapsed() / 1000:.1f} s" if self._clock.isValid() else ""
            self.header.setText(f"Thinking…{timed}")
        elif self.removed:
            self.header.setText(f"Thinking removed · {stats_fields(self.stats)['Thinking']}")
        else:
            self.header.setText(thought_summary(self.stats))
        self.header.setToolTip(self.header.text())


class BranchNavigator(QtWidgets.QWidget):
    """‹ 2/3 › between sibling messages (regenerated replies, edited questions)."""

    moved = Signal(int)  # the sibling message id to show

    def __init__(self, parent=None):
        super().__init__(parent)
        self.previous = QtWidgets.QToolButton(text="‹", autoRaise=True)
        self.next = QtWidgets.QToolButton(text="›", autoRaise=True)
        self.label = QtWidgets.QLabel(objectName="Muted")
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        for widget in (self.previous, self.label, self.next):
            layout.addWidget(widget)
        self.previous.clicked.connect(lambda: self._go(-1))
        self.next.clicked.connect(lambda: self._go(+1))
        self._ids: list[int] = []
        self._index = 0
        self.setVisible(False)  # until there are siblings to move between

    def set_siblings(self, ids: list[int], current: int) -> None:
        self._ids, self._index = ids, ids.index(current) if current in ids else 0
        self.setVisible(len(ids) > 1)
        self.label.setText(f"{self._index + 1}/{len(ids)}")
        self.previous.setEnabled(self._index > 0)
        self.next.setEnabled(self._index < len(ids) - 1)

    def _go(self, step: int) -> None:
        index = self._index + step
        if 0 <= index < len(self._ids):
            self.moved.emit(self._ids[index])


class UserMessageWidget(QtWidgets.QFrame):
    """The user's message, with Edit (a new branch) and sibling navigation."""

    edit_requested = Signal(int, str)

    def __init__(self, message_id: int, text: str, parent=None):
        super().__init__(parent)
        self.setObjectName("UserCard")
        self.message_id = message_id
        self.text_view = AutoHeightText()
        self.text_view.setPlainText(text)
        self.branches = BranchNavigator()
        edit = QtWidgets.QToolButton(text="Edit", autoRaise=True, objectName="LinkButton")
        edit.clicked.connect(lambda: self.edit_requested.emit(self.message_id, self.text_view.toPlainText()))
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("You", objectName="Muted"))
        row.addStretch()
        row.addWidget(self.branches)
        row.addWidget(edit)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.addLayout(row)
        layout.addWidget(self.text_view)


class AssistantMessageWidget(QtWidgets.QFrame):
    """One reply: think block, answer (Markdown + math), stats line, actions and sibling navigation."""

    regenerate_requested = Signal(int)

    def __init__(self, message_id: int | None = None, parent=None):
        super().__init__(parent)
        self.setObjectName("MessageCard")
        self.message_id = message_id
        self.think = ThinkBlock()
        self.answer = AutoHeightText()
        self.stats_label = QtWidgets.QLabel(objectName="Stats", wordWrap=True)
        self.stats_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.branches = BranchNavigator()
        self.copy_button = QtWidgets.QToolButton(text="Copy", autoRaise=True, objectName="LinkButton")
        self.copy_button.clicked.connect(self.copy_answer)
        self.regenerate_button = QtWidgets.QToolButton(text="Regenerate", autoRaise=True, objectName="LinkButton")
        self.regenerate_button.clicked.connect(lambda: self.regenerate_requested.emit(self.message_id or 0))
        actions = QtWidgets.QHBoxLayout()
        actions.addWidget(self.stats_label, 1)
        actions.addWidget(self.branches)
        actions.addWidget(self.copy_button)
        actions.addWidget(self.regenerate_button)
        self.author = QtWidgets.QLabel("Assistant", objectName="Muted")  # the chat view names the model
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.setSpacing(6)
        layout.addWidget(self.author)
        layout.addWidget(self.think)
        layout.addWidget(self.answer)
        layout.addLayout(actions)
        self.answer_text = ""
        self.status = "streaming"
        self._pending = {"thinking": [], "answer": []}
        self._flush_timer = QtCore.QTimer(self, interval=FLUSH_MS, timeout=self.flush)
        self._markdown_timer = QtCore.QTimer(self, interval=LIVE_MARKDOWN_MS, timeout=self._render_answer)
        self._answer_dirty = False

    # -- streaming ---------------------------------------------------------------------------------
    def start_stream(self) -> None:
        self.status = "streaming"
        self.think.start_live()
        self.answer.hide()
        self.regenerate_button.setEnabled(False)
        self.stats_label.setText("")
        self._flush_timer.start()
        self._markdown_timer.start()

    def add_delta(self, kind: str, text: str) -> None:
        """Buffer a thinking/answer delta; the flush timer shows it (≤ 30 times a second)."""
        if kind == "thinking":
            self.think.thinking_started()
        self._pending[kind].append(text)

    def flush(self) -> None:
        thinking, answer = "".join(self._pending["thinking"]), "".join(self._pending["answer"])
        self._pending = {"thinking": [], "answer": []}
        if thinking:
            self.think.append(thinking)
            self.think.stats["thinking_tokens"] = self.think.stats.get("thinking_tokens", 0)
        if answer:
            if not self.answer_text.strip() and not answer.strip():
                self.answer_text += answer  # blank lines after </think>: not worth showing alone
                return
            if self.think.live:
                self.think.answer_started()
            self.answer.show()
            self.answer_text += answer
            self.answer.append_plain(answer.lstrip("\n") if not self.answer.toPlainText() else answer)
            self._answer_dirty = True

    def finish(self, stats: dict, status: str | None = None) -> None:
        """The done event: final texts, Markdown render, summary header and stats line."""
        self.flush()
        self._flush_timer.stop()
        self._markdown_timer.stop()
        self.status = status or status_for(stats.get("stop_reason"))
        self.message_id = stats.get("message_id", self.message_id)
        self.think.finish(stats)
        self._answer_dirty = True
        self._render_answer()
        self.answer.setVisible(bool(self.answer_text.strip()))
        self.stats_label.setText(stats_line(stats, thought_above=not self.think.isHidden(), separator="  ·  "))
        self.regenerate_button.setEnabled(True)

    def _render_answer(self) -> None:
        if not self._answer_dirty:
            return
        self._answer_dirty = False
        render_answer(self.answer.document(), self.answer_text.strip(), self.palette().color(QtGui.QPalette.ColorRole.Text))

    # -- saved messages ----------------------------------------------------------------------------
    def show_saved(self, thinking: str, answer: str, stats: dict, status: str, thinking_removed: bool = False) -> None:
        """A reply from the store; `thinking_removed`: its thought is kept aside (the header says so)."""
        self.think.removed = thinking_removed
        self.think.body.setPlainText(thinking)
        self.answer_text = answer
        self.finish({**stats, "thinking_unfinished": stats.get("thinking_unfinished", False)}, status)

    def copy_answer(self) -> None:
        QtWidgets.QApplication.clipboard().setText(self.answer_text.strip())


def render_answer(document: QtGui.QTextDocument, text: str, color: QtGui.QColor) -> None:
    """The answer's Markdown with its LaTeX math rendered."""
    render_markdown(document, text, color=color)
