"""The Models pane's server: a Serve toggle that runs `aha serve --events jsonl` in a child process (ProcessJob)
over the whole library, its port and "Save chats" (--save), the OpenAI base URL to copy once it listens, and a
compact log of the requests it answered, newest first.

The words come from engine.request_log; this module only reads the child's events and never speaks HTTP.
"""

from __future__ import annotations

import enum

from app.qt import Qt, QtCore, QtGui, QtWidgets, Signal, Slot
from app.theme import colors
from app.widgets import RowsModel, set_style_name
from app.workers import JobOutcome, JobStatus, ProcessJob
from engine.request_log import DEFAULT_PORT, RequestRecord, is_request, ready_url, served_models

LOG_COLUMNS = ("Time", "Model", "Status", "Tokens", "Duration", "Request")
TIME, MODEL, STATUS, TOKENS, DURATION, REQUEST = range(len(LOG_COLUMNS))
LOG_ROWS = 500            # the log keeps the newest requests; older ones are dropped
SERVE_TIP = ("Serve the library's models through an OpenAI-compatible API on this computer (aha serve): other "
             "tools then chat with them, the reasoning in its own field (reasoning_content).")
IDLE_TEXT = "An OpenAI-compatible API over the library, for other tools on this computer."
STOP_WAIT_MS = 5000       # how long closing the window waits for the server to stop after cancel


class ServeState(enum.Enum):
    """OFF → STARTING (the child runs, not listening yet) → SERVING (ready) → STOPPING (cancel sent) → OFF."""

    OFF = "off"
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"


def _cell(record: RequestRecord, column: int) -> str:
    return {TIME: record.time_text, REQUEST: record.request_text, MODEL: lambda: record.model or "—",
            STATUS: record.status_text, TOKENS: record.tokens_text, DURATION: record.duration_text}[column]()


class RequestLogModel(RowsModel):
    """The log's rows: one RequestRecord each, newest first."""

    COLUMNS, NUMERIC_COLUMNS = LOG_COLUMNS, (TOKENS, DURATION)

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(_cell, parent=parent)

    def prepend(self, record: RequestRecord) -> None:
        self.beginInsertRows(QtCore.QModelIndex(), 0, 0)
        self._rows.insert(0, record)
        self.endInsertRows()
        if len(self._rows) > LOG_ROWS:
            self.beginRemoveRows(QtCore.QModelIndex(), LOG_ROWS, len(self._rows) - 1)
            del self._rows[LOG_ROWS:]
            self.endRemoveRows()

    def extra(self, record: RequestRecord, column: int, role: int):
        if role == Qt.ItemDataRole.ForegroundRole and column == STATUS and record.failed:
            return QtGui.QColor(colors().warning)
        if role == Qt.ItemDataRole.ToolTipRole:
            return record.line or None
        return None


class ServePanel(QtWidgets.QFrame):
    """The toggle, its settings, the URL with Copy, the server's one-line outcome and the request log."""

    state_changed = Signal(object)    # ServeState
    request_logged = Signal(object)   # RequestRecord

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.state = ServeState.OFF
        self.job: ProcessJob | None = None          # the running server's, else the last one's
        self.url = ""                               # the base URL while serving
        self.outcome: JobOutcome | None = None      # how the last server ended
        self.toggle = QtWidgets.QPushButton("Serve", checkable=True)
        self.toggle.setMinimumWidth(96)             # the same width for Serve, Starting…, Serving, Stopping…
        self.port = QtWidgets.QSpinBox(minimum=1, maximum=65535, value=DEFAULT_PORT)
        self.port.setToolTip("The port to listen on, on 127.0.0.1 only: other computers cannot reach it.")
        self.save_box = QtWidgets.QCheckBox("Save chats")
        self.save_box.setToolTip("Keep the chats clients have through the API in Aha's chat history (--save). "
                                 "Off: they are not written anywhere.")
        self.url_label = QtWidgets.QLabel()              # in the text's colour: what the user came for
        self.url_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.copy_button = QtWidgets.QPushButton("Copy URL", visible=False)
        self.copy_button.setToolTip("Copy the OpenAI base URL: give it to a client as its base_url.")
        self.message = QtWidgets.QLabel(objectName="Muted", wordWrap=True)   # starting, stopped, or the error
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.log_model = RequestLogModel(self)
        self.log = self._log_view()
        self._arrange()
        self.toggle.toggled.connect(self._on_toggled)
        self.copy_button.clicked.connect(self.copy_url)
        self.message.setText(IDLE_TEXT)
        self._show_state()

    def _log_view(self) -> QtWidgets.QTableView:
        view = QtWidgets.QTableView(visible=False)
        view.setModel(self.log_model)
        view.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        view.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        view.setShowGrid(False)
        view.setWordWrap(False)
        view.setAlternatingRowColors(True)
        view.setStyleSheet("QTableView::item { padding: 0 6px; } QHeaderView::section { padding: 1px 6px; }")
        view.verticalHeader().setVisible(False)
        view.verticalHeader().setDefaultSectionSize(22)
        header = view.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(REQUEST, QtWidgets.QHeaderView.ResizeMode.Stretch)   # the least needed
        view.setFixedHeight(header.sizeHint().height() + 4 * 22 + 4)   # four rows: compact, it scrolls
        return view

    def _arrange(self) -> None:
        controls = QtWidgets.QHBoxLayout()
        controls.setSpacing(8)
        controls.addWidget(self.toggle)
        port_label = QtWidgets.QLabel("Port")
        port_label.setObjectName("Muted")
        controls.addWidget(port_label)
        controls.addWidget(self.port)
        controls.addWidget(self.save_box)
        controls.addSpacing(12)
        controls.addWidget(self.url_label)
        controls.addWidget(self.copy_button)
        controls.addWidget(self.message, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.setSpacing(6)
        layout.addLayout(controls)
        layout.addWidget(self.log)

    # public API
    def start(self) -> None:
        """Start `aha serve` on the chosen port (the toggle's on)."""
        if self.state != ServeState.OFF:
            return
        args = ["serve", "--port", str(self.port.value())] + (["--save"] if self.save_box.isChecked() else [])
        self.job = ProcessJob(args, kind="serve")   # no parent: the pane stops it at close (shutdown)
        self.job.event.connect(self._on_event)
        self.job.finished.connect(self._on_finished)
        self.url = ""
        self._set_state(ServeState.STARTING)
        self.message.setText(f"Starting the server on port {self.port.value()}…")
        set_style_name(self.message, "Muted")
        self.job.start()

    def stop(self) -> None:
        """Cancel the server (the toggle's off): it stops listening and ends with done{cancelled}."""
        if self.state in (ServeState.STARTING, ServeState.SERVING) and self.job is not None:
            self._set_state(ServeState.STOPPING)
            self.message.setText("Stopping the server…")
            self.job.cancel()

    def shutdown(self, timeout_ms: int = STOP_WAIT_MS) -> None:
        """Stop the server and wait for it (the window is closing): cancel, then kill if it does not end."""
        job = self.job
        if job is None or not job.is_running():
            return
        self.stop()
        if not job.process.waitForFinished(timeout_ms):
            job.terminate(kill=True)
            job.process.waitForFinished(timeout_ms)

    def is_running(self) -> bool:
        return self.state != ServeState.OFF

    def records(self) -> list[RequestRecord]:
        """The logged requests, newest first."""
        return self.log_model.rows()

    def copy_url(self) -> None:
        if self.url:
            QtWidgets.QApplication.clipboard().setText(self.url)
            self.copy_button.setText("Copied")          # for a moment; the server's line stays
            QtCore.QTimer.singleShot(1500, self, lambda: self.copy_button.setText("Copy URL"))

    # events
    @Slot(bool)
    def _on_toggled(self, checked: bool) -> None:
        if checked:
            self.start()
        else:
            self.stop()

    @Slot(object)
    def _on_event(self, event: dict) -> None:
        url = ready_url(event)
        if url is not None and self.state == ServeState.STARTING:
            self.url = url
            self._set_state(ServeState.SERVING)
            models = served_models(event)
            count = f"{len(models)} {'model' if len(models) == 1 else 'models'}" if models else "the library"
            saved = "chats saved in Aha" if self.save_box.isChecked() else "chats not saved"
            self.message.setText(f"Serving {count} · {saved}")
            self.message.setToolTip("\n".join([str(event.get("message") or ""), *models]).strip())
        elif is_request(event):
            record = RequestRecord.from_event(event)
            self.log_model.prepend(record)
            self.log.setVisible(True)
            for column in range(REQUEST):           # a wider cell than the rows before (a stream, 4-digit counts)
                self.log.resizeColumnToContents(column)
            self.request_logged.emit(record)

    @Slot(object)
    def _on_finished(self, outcome: JobOutcome) -> None:
        stopping = self.state == ServeState.STOPPING
        self.outcome = outcome
        self.url = ""                               # self.job is kept: it is the sender, deleting it here would crash
        self._set_state(ServeState.OFF)
        served = len(self.log_model.rows())
        if outcome.status == JobStatus.CANCELLED or (stopping and outcome.status != JobStatus.ERROR):
            self.message.setText(f"Stopped · {served} {'request' if served == 1 else 'requests'} in the log.")
            set_style_name(self.message, "Muted")
        else:
            self.message.setText(outcome.error if outcome.status == JobStatus.ERROR and outcome.error
                                 else str(outcome))
            set_style_name(self.message, "Warning")

    def _set_state(self, state: ServeState) -> None:
        self.state = state
        self._show_state()
        self.state_changed.emit(state)

    def _show_state(self) -> None:
        state = self.state
        self.toggle.blockSignals(True)             # the state follows the child, not only the click
        self.toggle.setChecked(state in (ServeState.STARTING, ServeState.SERVING))
        self.toggle.blockSignals(False)
        self.toggle.setText({ServeState.OFF: "Serve", ServeState.STARTING: "Starting…",
                             ServeState.SERVING: "Serving", ServeState.STOPPING: "Stopping…"}[state])
        self.toggle.setEnabled(state != ServeState.STOPPING)
        self.toggle.setToolTip(SERVE_TIP if state == ServeState.OFF else "Stop the server.")
        self.toggle.setObjectName("PrimaryButton" if state == ServeState.SERVING else "")
        self.toggle.style().unpolish(self.toggle)
        self.toggle.style().polish(self.toggle)
        self.port.setEnabled(state == ServeState.OFF)
        self.save_box.setEnabled(state == ServeState.OFF)
        self.url_label.setText(self.url)
        self.url_label.setVisible(bool(self.url))
        self.copy_button.setVisible(bool(self.url))
