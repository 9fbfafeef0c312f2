"""The models pane: the library from engine.models as a sortable table, the chosen model's metadata and chat
template, and adding, scanning, removing and downloading models.

Header reads, adds and scans run on a ThreadJob; a download is `aha models pull` in a child process (ProcessJob),
and the server at the bottom (app.models.serve) is `aha serve` in another.
It knows nothing of GGUF or of the library's file beyond what engine.models returns, and never deletes a model.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from app.models.serve import ServePanel
from app.qt import Qt, QtCore, QtGui, QtWidgets, Signal, Slot
from app.theme import colors
from app.widgets import KEY_ROLE, SORT_ROLE, ElidedLabel, ElideMiddleDelegate, RowsModel, bold, set_style_name
from app.workers import JobOutcome, JobStatus, ProcessJob, ThreadJob
from engine.errors import AhaError
from engine.jobs import format_bar, format_bytes
from engine.models import (
    R1_DEFAULT,
    GGUFArray,
    GGUFInfo,
    Library,
    LibraryEntry,
    describe,
    format_count,
    read_gguf_info,
)
from engine.models.discovery import export_command, is_hf_checkpoint

COLUMNS = ("Name", "Architecture", "Parameters", "Quantization", "Context", "Size", "Source")
NAME, ARCHITECTURE, PARAMETERS, QUANTIZATION, CONTEXT, SIZE, SOURCE = range(len(COLUMNS))
NUMERIC_COLUMNS = (PARAMETERS, CONTEXT, SIZE)
PATH_ROLE = KEY_ROLE
SOURCE_LABELS = {"file": "File", "folder": "Folder", "ollama": "Ollama", "lmstudio": "LM Studio",
                 "hf-cache": "HF cache"}
GGUF_FILTER = "GGUF models (*.gguf);;All files (*)"   # Ollama and HF-cache blobs have no .gguf suffix
UNREADABLE = "unreadable"


# --- What the table shows (plain Python: built on a worker thread) ----------------------------------------------

@dataclass(frozen=True)
class ModelRow:
    """One library entry as the pane shows it: its header, or the one-line reason it cannot be read."""

    entry: LibraryEntry
    info: GGUFInfo | None
    problem: str | None = None

    @property
    def path(self) -> str:
        return str(self.entry.path)


CacheKey = tuple[str, int, int]   # path, mtime_ns, size: a header is read again only when the file changed


def _row_key(entry: LibraryEntry) -> tuple[str, str | None]:
    """A row's identity: its file and, for Ollama, its name (one blob can carry several tags)."""
    return str(entry.path), entry.ollama_name


def _cache_key(path: Path) -> CacheKey | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_mtime_ns, stat.st_size


def _read_row(entry: LibraryEntry, cache: Mapping[CacheKey, GGUFInfo]) -> tuple[ModelRow, CacheKey | None]:
    key = _cache_key(entry.path)
    try:
        info = cache.get(key) if key else None
        return ModelRow(entry, info or read_gguf_info(entry.path)), key
    except AhaError as error:
        return ModelRow(entry, None, str(error)), None
    except Exception as error:  # noqa: BLE001 - a reader bug on one odd file must not hide the others
        return ModelRow(entry, None, f"cannot read {entry.path}: {type(error).__name__}: {error}"), None


def read_rows(library: Library, cache: Mapping[CacheKey, GGUFInfo]) -> tuple[list[ModelRow], dict]:
    """Every library entry with its header; unchanged files come from `cache`. Runs on a worker thread."""
    rows, fresh = [], {}
    for entry in library.entries():
        row, key = _read_row(entry, cache)
        rows.append(row)
        if key is not None and row.info is not None:
            fresh[key] = row.info
    return rows, fresh


def add_to_library(library: Library, paths: Iterable[str]) -> tuple[list[LibraryEntry], list[str], list[str]]:
    """Add files and folders; a file that cannot be added becomes a skipped line instead of an error.
    Returns (added, skipped, the Hugging Face checkpoint folders among the paths, which need `aha export`)."""
    added, skipped, checkpoints = [], [], []
    for path in paths:
        try:
            changes = library.add(path)
        except AhaError as error:
            skipped.append(str(error))
            if Path(path).is_dir() and is_hf_checkpoint(Path(path)):
                checkpoints.append(str(path))
            continue
        added += changes.added
        skipped += changes.skipped
    return added, skipped, checkpoints


def _home_relative(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if text == home or text.startswith(home + os.sep) else text


def source_text(entry: LibraryEntry) -> str:
    """Where a model was found: "Hugging Face · org/repo", "Ollama", "Folder · ~/models", …"""
    label = SOURCE_LABELS.get(entry.source, entry.source)
    if entry.origin and "@" in entry.origin:                       # a pull: org/repo/file@commit
        return "Hugging Face · " + "/".join(entry.origin.split("@")[0].split("/")[:2])
    if entry.source == "ollama":
        return label
    if entry.origin:
        return f"{label} · {entry.origin}"
    return f"{label} · {_home_relative(entry.path.parent)}"


def source_label(entry: LibraryEntry) -> str:
    """The Source column: the app or hub a model came from, else the folder it lies in ("~/Models")."""
    if entry.origin and "@" in entry.origin:
        return "Hugging Face"
    if entry.source in ("file", "folder"):
        return _home_relative(entry.path.parent)
    return SOURCE_LABELS.get(entry.source, entry.source)


def summary(added: int, skipped: int) -> str:
    """What adding files and folders did: "3 added · 1 skipped", or "No new models" when nothing was added."""
    parts = [f"{count} {what}" for count, what in ((added, "added"), (skipped, "skipped")) if count]
    return " · ".join(parts) if added else " · ".join(["No new models", *parts])


def scan_summary(found: int, removed: int, skipped: int) -> str:
    """What a rescan changed in the table: "Found 2 new models · 1 removed · 1 skipped", or "No new models"."""
    head = f"Found {found} new {'model' if found == 1 else 'models'}" if found else "No new models"
    tail = [f"{count} {what}" for count, what in ((removed, "removed"), (skipped, "skipped")) if count]
    return " · ".join([head, *tail])


def _metadata_value(value: object) -> str:
    if isinstance(value, GGUFArray):
        return f"[{value.count:,} × {value.item_type}]"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 160 else text[:159] + "…"


def metadata_text(info: GGUFInfo) -> str:
    """Every metadata key of the header, one per line, long values shortened."""
    return "\n".join(f"{key} = {_metadata_value(value)}" for key, value in info.metadata.items())


# --- Small widgets -----------------------------------------------------------------------------------------------

class LibraryModel(RowsModel):
    """The rows of the table: one ModelRow each. SORT_ROLE gives numbers for numeric columns."""

    COLUMNS, NUMERIC_COLUMNS = COLUMNS, NUMERIC_COLUMNS

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(cell_text, sort_key, parent)

    def row_of(self, path: str) -> int | None:
        wanted = os.path.realpath(path)
        return next((i for i, row in enumerate(self._rows) if os.path.realpath(row.path) == wanted), None)

    def key(self, row: ModelRow) -> str:
        return row.path

    def extra(self, row: ModelRow, column: int, role: int):
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.problem or _tooltip(row, column)
        if role == Qt.ItemDataRole.ForegroundRole:
            return _foreground(row, column)
        if role == Qt.ItemDataRole.DecorationRole and column == NAME and row.problem:
            return QtWidgets.QApplication.style().standardIcon(QtWidgets.QStyle.StandardPixmap.SP_MessageBoxWarning)
        return None


def cell_text(row: ModelRow, column: int) -> str:
    if column == NAME:
        return row.entry.name
    if column == SOURCE:
        return source_label(row.entry)
    info = row.info
    if info is None:
        return UNREADABLE if column == ARCHITECTURE else "—"
    return {ARCHITECTURE: info.architecture or "unknown",
            PARAMETERS: format_count(info.parameter_count),
            QUANTIZATION: info.quantization,
            CONTEXT: f"{info.context_length:,}" if info.context_length else "—",
            SIZE: format_bytes(info.file_size)}[column]


def sort_key(row: ModelRow, column: int) -> str | float:
    """Numbers for numeric columns (unreadable rows sort first), lower-case text for the others."""
    if column not in NUMERIC_COLUMNS:
        return cell_text(row, column).lower()
    if row.info is None:
        return -1.0
    value = {PARAMETERS: row.info.parameter_count, CONTEXT: row.info.context_length or 0,
             SIZE: row.info.file_size}[column]
    return float(value)


def _tooltip(row: ModelRow, column: int) -> str | None:
    if column == SOURCE:
        return f"{source_text(row.entry)}\n{row.path}"
    return row.path if column == NAME else None


def _foreground(row: ModelRow, column: int) -> QtGui.QColor | None:
    if row.problem and column == ARCHITECTURE:
        return QtGui.QColor(colors().warning)
    if column == SOURCE or (row.problem and column != NAME):
        return QtGui.QColor(colors().muted)
    return None


class DetailsPanel(QtWidgets.QWidget):
    """The selected model: title, its reason when unreadable, actions, describe() rows, chat template, metadata."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setMinimumHeight(200)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Preferred, QtWidgets.QSizePolicy.Policy.Preferred)
        self.title = ElidedLabel()
        bold(self.title, 3)
        self.subtitle = ElidedLabel()
        self.subtitle.setObjectName("Muted")
        self.problem = QtWidgets.QLabel()
        self.problem.setObjectName("Warning")
        self.problem.setWordWrap(True)
        self.problem.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.chat_button = QtWidgets.QPushButton("Chat with this")
        self.chat_button.setObjectName("PrimaryButton")
        self.folder_button = QtWidgets.QPushButton("Show in folder")
        self.remove_button = QtWidgets.QPushButton("Remove from library")
        self.grid = QtWidgets.QGridLayout()          # label, value, label, value: the describe() rows
        self.grid.setHorizontalSpacing(12)
        self.grid.setVerticalSpacing(5)
        self.grid.setColumnStretch(1, 1)
        self.grid.setColumnStretch(3, 1)
        self._fields: dict[str, str] = {}
        self.template = self._code_view("This file has no chat template.")
        self.metadata = self._code_view("")
        self.placeholder = QtWidgets.QLabel("Select a model to see its metadata and chat template.")
        self.placeholder.setObjectName("Muted")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.stack = QtWidgets.QStackedLayout(self)
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(self._content())

    def sizeHint(self) -> QtCore.QSize:
        return QtCore.QSize(super().sizeHint().width(), 300)

    @staticmethod
    def _code_view(placeholder: str) -> QtWidgets.QPlainTextEdit:
        view = QtWidgets.QPlainTextEdit()
        view.setReadOnly(True)
        view.setPlaceholderText(placeholder)
        view.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        return view

    def _content(self) -> QtWidgets.QWidget:
        buttons = QtWidgets.QHBoxLayout()
        buttons.setSpacing(6)
        for button in (self.chat_button, self.folder_button, self.remove_button):
            buttons.addWidget(button)
        buttons.addStretch()
        left = QtWidgets.QWidget()
        column = QtWidgets.QVBoxLayout(left)
        column.setContentsMargins(0, 0, 8, 0)
        column.setSpacing(4)
        for widget in (self.title, self.subtitle, self.problem):
            column.addWidget(widget)
        column.addSpacing(6)
        column.addLayout(buttons)
        column.addSpacing(10)
        column.addLayout(self.grid)
        column.addStretch()
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setWidget(left)
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.template, "Chat template")
        self.tabs.addTab(self.metadata, "Metadata")
        content = QtWidgets.QWidget()
        layout = QtWidgets.QHBoxLayout(content)
        layout.setContentsMargins(0, 10, 0, 0)
        layout.setSpacing(16)
        layout.addWidget(scroll, 5)
        layout.addWidget(self.tabs, 6)
        return content

    def show_row(self, row: ModelRow | None) -> None:
        self.stack.setCurrentIndex(0 if row is None else 1)
        if row is None:
            return
        info = row.info
        self.title.set_full_text(row.entry.name)
        self.title.setToolTip(row.entry.name)
        self.subtitle.set_full_text(self._subtitle(info) if info else source_text(row.entry))
        self.problem.setText(row.problem or "")
        self.problem.setVisible(bool(row.problem))
        self.chat_button.setEnabled(info is not None and info.kind == "model")
        self.chat_button.setToolTip("" if info is None or info.kind == "model" else
                                    f"A {info.kind}, not a model: load it on top of its base model.")
        self.folder_button.setEnabled(row.entry.path.parent.is_dir())
        self._fill_grid(self._form_rows(row))
        self.template.setPlaceholderText("This file has no chat template." if info else "")
        self.template.setPlainText((info.chat_template or "") if info else "")
        self.metadata.setPlainText(metadata_text(info) if info else "")
        self.tabs.setEnabled(info is not None)

    def fields(self) -> dict[str, str]:
        """The label → value rows shown for the selected model."""
        return dict(self._fields)

    @staticmethod
    def _subtitle(info: GGUFInfo) -> str:
        parts = [info.architecture or "unknown architecture", f"{format_count(info.parameter_count)} parameters",
                 info.quantization]
        if info.is_reasoning:
            parts.append("reasons in <think>")
        return " · ".join(parts)

    @staticmethod
    def _form_rows(row: ModelRow) -> list[tuple[str, str]]:
        """describe()'s rows, the source after the path."""
        if row.info is None:
            return [("path", row.path), ("source", source_text(row.entry))]
        rows = describe(row.info)
        return rows[:1] + [("source", source_text(row.entry))] + rows[1:]

    def _fill_grid(self, rows: list[tuple[str, str]]) -> None:
        """Path and source across the full width, then the other rows in two label/value columns."""
        while self.grid.count():
            widget = self.grid.takeAt(0).widget()
            widget.hide()
            widget.deleteLater()
        self._fields = dict(rows)
        wide = [row for row in rows if row[0] in ("path", "source")]
        rest = [row for row in rows if row[0] not in ("path", "source")]
        for line, (label, value) in enumerate(wide):
            self.grid.addWidget(self._form_label(label), line, 0)
            self.grid.addWidget(self._form_value(label, value), line, 1, 1, 3)
        half = (len(rest) + 1) // 2
        for i, (label, value) in enumerate(rest):
            line, column = len(wide) + i % half, 2 * (i // half)
            self.grid.addWidget(self._form_label(label), line, column)
            self.grid.addWidget(self._form_value(label, value), line, column + 1)

    @staticmethod
    def _form_label(label: str) -> QtWidgets.QLabel:
        widget = QtWidgets.QLabel(label[:1].upper() + label[1:])
        widget.setObjectName("Muted")
        widget.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return widget

    @staticmethod
    def _form_value(label: str, value: str) -> QtWidgets.QLabel:
        if label in ("path", "source"):
            widget = ElidedLabel(value, Qt.TextElideMode.ElideMiddle)
            widget.setToolTip(value)
        else:
            widget = QtWidgets.QLabel(value)
            widget.setWordWrap(True)
        widget.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return widget


class EmptyState(QtWidgets.QWidget):
    """What an empty library shows instead of a blank table: a sentence and the three ways to get a model."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        title = QtWidgets.QLabel("No models yet")
        title.setObjectName("EmptyTitle")
        text = QtWidgets.QLabel("Download DeepSeek-R1-Distill-Qwen-1.5B (about 1.1 GB) to start chatting, add a "
                                ".gguf file you already have, or let Aha find the models Ollama, LM Studio and "
                                "the Hugging Face cache keep on this computer.")
        text.setObjectName("Muted")
        text.setWordWrap(True)
        text.setFixedWidth(480)                      # a fixed width gives the wrapped text its full height
        text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.download_button = QtWidgets.QPushButton("Download DeepSeek-R1 1.5B…")
        self.download_button.setObjectName("PrimaryButton")
        self.add_button = QtWidgets.QPushButton("Add file…")
        self.scan_button = QtWidgets.QPushButton("Find models on this computer")
        buttons = QtWidgets.QHBoxLayout()
        buttons.addStretch()
        for button in (self.download_button, self.add_button, self.scan_button):
            buttons.addWidget(button)
        buttons.addStretch()
        layout = QtWidgets.QVBoxLayout(self)
        layout.addStretch()
        layout.addWidget(title, 0, Qt.AlignmentFlag.AlignHCenter)
        centered = QtWidgets.QHBoxLayout()          # an alignment flag would drop the label's height-for-width
        centered.addStretch()
        centered.addWidget(text)
        centered.addStretch()
        layout.addLayout(centered)
        layout.addSpacing(12)
        layout.addLayout(buttons)
        layout.addStretch()


class DownloadDialog(QtWidgets.QDialog):
    """Which file to download: a Hugging Face repository and a .gguf file in it (R1_DEFAULT to start with)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None, repo: str = R1_DEFAULT[0],
                 filename: str = R1_DEFAULT[1]):
        super().__init__(parent)
        self.setWindowTitle("Download a model")
        self.repo = QtWidgets.QLineEdit(repo)
        self.repo.setPlaceholderText("org/repository")
        self.filename = QtWidgets.QLineEdit(filename)
        self.filename.setPlaceholderText("model-Q4_K_M.gguf")
        for edit in (self.repo, self.filename):
            edit.setMinimumWidth(420)
            edit.textChanged.connect(self._on_text_changed)
        note = QtWidgets.QLabel("From the Hugging Face Hub into Aha's models folder, checked against the Hub's "
                                "sha256. A cancelled download continues where it stopped.")
        note.setObjectName("Muted")
        note.setWordWrap(True)
        self.buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Ok
                                                  | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok).setText("Download")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form = QtWidgets.QFormLayout(self)
        form.addRow("Repository", self.repo)
        form.addRow("File", self.filename)
        form.addRow(note)
        form.addRow(self.buttons)

    def values(self) -> tuple[str, str]:
        return self.repo.text().strip(), self.filename.text().strip()

    @Slot(str)
    def _on_text_changed(self, _text: str) -> None:
        ok = self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(all(self.values()))


class DownloadState(enum.Enum):
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DownloadRow(QtWidgets.QFrame):
    """One `aha models pull` child process: a bytes bar, speed and ETA, Cancel; then its outcome and Dismiss."""

    downloaded = Signal(str)     # path of the new model

    def __init__(self, repo: str, filename: str, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.repo, self.filename = repo, filename
        self.state = DownloadState.RUNNING
        self.path = ""                              # of the downloaded model, from the job's artifact event
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.title = ElidedLabel(f"{filename}  ·  {repo}", Qt.TextElideMode.ElideMiddle)
        self.title.setToolTip(f"{repo}/{filename}")
        self.bar = QtWidgets.QProgressBar()
        self.bar.setRange(0, 1000)                 # per mille: byte counts overflow a 32-bit int
        self.bar.setValue(0)
        self.bar.setFixedWidth(220)
        self.detail = ElidedLabel("Connecting to the Hub…")
        self.detail.setObjectName("Muted")
        self.problem = QtWidgets.QLabel(objectName="Warning", wordWrap=True, visible=False)  # a failure, in full
        self.problem.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.dismiss_button = QtWidgets.QPushButton("Dismiss")
        self.dismiss_button.setVisible(False)
        self.dismiss_button.clicked.connect(self._on_dismiss_clicked)
        self._layout()
        self.job = ProcessJob(["models", "pull", repo, filename], kind="download")   # no parent: it may outlive us
        self.job.event.connect(self._on_event)
        self.job.finished.connect(self._on_finished)

    def _layout(self) -> None:
        text = QtWidgets.QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(self.title)
        text.addWidget(self.detail)
        text.addWidget(self.problem)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.addLayout(text, 1)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        layout.addWidget(self.dismiss_button)

    def start(self) -> DownloadRow:
        self.job.start()
        return self

    def is_running(self) -> bool:
        return self.state in (DownloadState.RUNNING, DownloadState.CANCELLING)

    @Slot()
    def cancel(self) -> None:
        if self.state == DownloadState.RUNNING:
            self.state = DownloadState.CANCELLING
            self.cancel_button.setEnabled(False)
            self.detail.set_full_text("Cancelling…")
            self.job.terminate()   # SIGTERM at once: a download has no safe point to reach, and it resumes

    def kill(self, timeout_ms: int = 3000) -> None:
        """Stop the child now and wait for it (the app is closing)."""
        if self.is_running():
            self.state = DownloadState.CANCELLING
            self.job.terminate(kill=True)
            self.job.process.waitForFinished(timeout_ms)

    @Slot(object)
    def _on_event(self, event: dict) -> None:
        if event.get("type") == "progress" and self.state == DownloadState.RUNNING:
            self._show_progress(event)
        elif event.get("type") == "artifact":
            self.path = event.get("path", "")

    def _show_progress(self, event: dict) -> None:
        done, total = float(event.get("done", 0)), float(event.get("total", 0))
        self.bar.setValue(int(1000 * min(done / total, 1.0)) if total else 0)
        verifying = event.get("stage") == "verify"
        self.bar.setFormat("checking %p%" if verifying else "%p%")
        # format_bar: "label [###...] 45% · 12.3 MB/27.0 MB · 3.2 MB/s · ETA 0:05"; the bar itself is ours
        parts = format_bar(done, total, float(event.get("elapsed_s", 0.0)), event.get("unit", ""), width=0)
        line = " · ".join(parts.split(" · ")[1:])
        self.detail.set_full_text(("Checking sha256 · " if verifying else "") + line)

    @Slot(object)
    def _on_finished(self, outcome: JobOutcome) -> None:
        if outcome.status != JobStatus.COMPLETE:
            self._on_failed(outcome.error or str(outcome))
            return
        self.state = DownloadState.DONE
        self.bar.setValue(self.bar.maximum())
        self.bar.setFormat("done")
        self.detail.set_full_text(f"Downloaded to {self.path}" if self.path else "Downloaded")
        self.detail.setToolTip(self.path)
        self._ended()
        if self.path:
            self.downloaded.emit(self.path)

    def _on_failed(self, message: str) -> None:
        if self.state == DownloadState.CANCELLING:
            self.state = DownloadState.CANCELLED
            self.bar.setFormat("cancelled")
            self.detail.set_full_text("Cancelled · the part already downloaded is kept; downloading the same "
                                      "file again continues from there.")
        else:
            self.state = DownloadState.FAILED
            self.bar.setFormat("failed")
            set_style_name(self.detail, "Warning")
            self.detail.set_full_text(message)
            self.detail.hide()                       # one elided line would hide what to do: wrap it instead
            self.problem.setText(message)
            self.problem.show()
        self._ended()

    def _ended(self) -> None:
        self.cancel_button.setVisible(False)
        self.dismiss_button.setVisible(True)

    @Slot()
    def _on_dismiss_clicked(self) -> None:
        self.hide()
        self.deleteLater()


# --- The pane ----------------------------------------------------------------------------------------------------

class ModelsPane(QtWidgets.QWidget):
    """The model library: table, details, add/scan/remove/download. Emits chat_requested(path) to start a chat."""

    chat_requested = Signal(str)
    library_changed = Signal()

    def __init__(self, library: Library | None = None, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.library = library if library is not None else Library()
        self._cache: dict[CacheKey, GGUFInfo] = {}
        self._generation = 0
        self._rows_read = False  # whether the table has shown the library once
        self._jobs: set[ThreadJob] = set()
        self._select_after_refresh: str | None = None
        self._shown_once = False
        self.export_offer: QtWidgets.QMessageBox | None = None   # the last "convert this checkpoint" offer
        self._build()
        self._connect()
        self.refresh()

    # layout
    def _build(self) -> None:
        self.title = QtWidgets.QLabel("Models")
        bold(self.title, 6)
        self.count = QtWidgets.QLabel("Reading the library…")
        self.count.setObjectName("Muted")
        self.add_file_button = QtWidgets.QPushButton("Add file…")
        self.add_folder_button = QtWidgets.QPushButton("Add folder…")
        self.rescan_button = QtWidgets.QPushButton("Rescan")
        self.rescan_button.setToolTip("Look for models in Ollama, LM Studio and the Hugging Face cache, and "
                                      "read every file's header again.")
        self.download_button = QtWidgets.QPushButton("Download…")
        self.download_button.setObjectName("PrimaryButton")
        self.filter = QtWidgets.QLineEdit()
        self.filter.setPlaceholderText("Filter by name, architecture, quantization…")
        self.filter.setClearButtonEnabled(True)
        self.filter.setMaximumWidth(320)
        self.model = LibraryModel(self)
        self.proxy = QtCore.QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.table = self._table()
        self.empty = EmptyState()
        self.table_stack = QtWidgets.QStackedWidget()
        self.table_stack.addWidget(self.table)
        self.table_stack.addWidget(self.empty)
        self.details = DetailsPanel()
        self.downloads = QtWidgets.QVBoxLayout()
        self.downloads.setSpacing(6)
        self.serve = ServePanel()
        self.status = ElidedLabel()
        self.status.setObjectName("Muted")
        self._arrange()

    def _table(self) -> QtWidgets.QTableView:
        table = QtWidgets.QTableView()
        table.setModel(self.proxy)
        table.setSortingEnabled(True)
        table.sortByColumn(NAME, Qt.SortOrder.AscendingOrder)
        table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setAlternatingRowColors(True)
        table.setShowGrid(False)
        table.setWordWrap(False)
        table.setTextElideMode(Qt.TextElideMode.ElideRight)     # the start of a name or source says most
        # room between a right-aligned number and the next column's text; headers line up with their cells
        table.setStyleSheet("QTableView::item { padding: 0 6px; } QHeaderView::section { padding: 2px 6px; }")
        table.setItemDelegateForColumn(SOURCE, ElideMiddleDelegate(table))
        table.verticalHeader().setVisible(False)
        table.verticalHeader().setDefaultSectionSize(30)
        header = table.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(NAME, QtWidgets.QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(SOURCE, QtWidgets.QHeaderView.ResizeMode.Stretch)
        header.resizeSection(NAME, 250)
        remove = QtGui.QAction("Remove from library", table)
        remove.setShortcut(QtGui.QKeySequence(QtGui.QKeySequence.StandardKey.Delete))
        remove.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        remove.triggered.connect(self._on_remove_clicked)
        table.addAction(remove)
        return table

    def _arrange(self) -> None:
        heading = QtWidgets.QHBoxLayout()
        heading.addWidget(self.title)
        heading.addSpacing(8)
        heading.addWidget(self.count, 0, Qt.AlignmentFlag.AlignBottom)
        heading.addStretch()
        toolbar = QtWidgets.QHBoxLayout()
        toolbar.setSpacing(6)
        for button in (self.add_file_button, self.add_folder_button, self.rescan_button):
            toolbar.addWidget(button)
        toolbar.addSpacing(12)
        toolbar.addWidget(self.filter, 1)
        toolbar.addStretch()
        toolbar.addWidget(self.download_button)
        self.splitter = QtWidgets.QSplitter(Qt.Orientation.Vertical)   # the table gets the full width
        self.splitter.addWidget(self.table_stack)
        self.splitter.addWidget(self.details)
        self.splitter.setStretchFactor(0, 1)        # a taller window lengthens the table; details keep their height
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setChildrenCollapsible(False)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(16, 14, 16, 10)
        layout.setSpacing(10)
        layout.addLayout(heading)
        layout.addLayout(toolbar)
        layout.addLayout(self.downloads)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.serve)
        layout.addWidget(self.status)

    def _connect(self) -> None:
        self.add_file_button.clicked.connect(self._on_add_file_clicked)
        self.empty.add_button.clicked.connect(self._on_add_file_clicked)
        self.add_folder_button.clicked.connect(self._on_add_folder_clicked)
        self.rescan_button.clicked.connect(self._on_rescan_clicked)
        self.empty.scan_button.clicked.connect(self._on_rescan_clicked)
        self.download_button.clicked.connect(self._on_download_clicked)
        self.empty.download_button.clicked.connect(self._on_download_clicked)
        self.filter.textChanged.connect(self._on_filter_changed)
        self.table.selectionModel().selectionChanged.connect(self._on_selection_changed)
        self.table.doubleClicked.connect(self._on_row_double_clicked)
        self.details.chat_button.clicked.connect(self._on_chat_clicked)
        self.details.folder_button.clicked.connect(self._on_show_in_folder_clicked)
        self.details.remove_button.clicked.connect(self._on_remove_clicked)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if not self._shown_once:                   # the table's width is known only now
            self._shown_once = True
            self._fit_name_column()

    # public API
    def refresh(self, select: str | None = None) -> None:
        """Read the library and every model's header again (off the GUI thread); then select `select`."""
        self._generation += 1
        generation, library, cache = self._generation, self.library, self._cache
        self._select_after_refresh = select or self._select_after_refresh
        self._start_job(lambda emit, cancel: (generation, *read_rows(library, cache)),
                        self._on_rows_read, self._on_refresh_failed)

    def add_paths(self, paths: Iterable[str | Path]) -> None:
        """Add .gguf files and folders to the library (headers are checked off the GUI thread)."""
        paths, library = [str(path) for path in paths], self.library
        if paths:
            self._show_status(f"Adding {len(paths)} {'item' if len(paths) == 1 else 'items'}…")
            self._start_job(lambda emit, cancel: add_to_library(library, paths), self._on_paths_added)

    def rescan(self) -> None:
        """Look for models in Ollama, LM Studio and the HF cache (Library.scan) off the GUI thread, then say what
        is new to the table: models another program (`aha models add`, a scan) put in the library count too."""
        library, shown = self.library, {_row_key(row.entry) for row in self.model.rows()}
        listed = self._rows_read  # before the table's first read, "new" is measured against the library itself

        def scan(emit, cancel):
            before = shown if listed else {_row_key(entry) for entry in library.entries()}
            return before, library.scan(), library.entries()

        self.rescan_button.setEnabled(False)
        self.empty.scan_button.setEnabled(False)
        self._show_status("Looking for models in Ollama, LM Studio and the Hugging Face cache…")
        self._start_job(scan, self._on_scanned, self._on_scan_failed)

    def offer_export(self, folder: str) -> QtWidgets.QMessageBox:
        """A Hugging Face checkpoint was picked: say so and offer its `aha export` command (Copy command)."""
        command = export_command(Path(folder))
        box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Information, "A Hugging Face checkpoint",
                                    f"{Path(folder).name} is a Hugging Face checkpoint (config.json and safetensors "
                                    "weights), not a GGUF model. Convert it to GGUF, then add the .gguf file:",
                                    QtWidgets.QMessageBox.StandardButton.Close, self)
        box.setInformativeText(command)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        copy = box.addButton("Copy command", QtWidgets.QMessageBox.ButtonRole.AcceptRole)   # copies, then closes
        copy.clicked.connect(lambda: QtWidgets.QApplication.clipboard().setText(command))
        box.open()
        self.export_offer = box
        return box

    def start_download(self, repo: str, filename: str) -> DownloadRow:
        """Download repo/filename in a child process (`aha models pull`); the new model is selected when done."""
        row = DownloadRow(repo, filename, self)
        row.downloaded.connect(self._on_downloaded)
        self.downloads.addWidget(row)
        return row.start()

    def select(self, path: str | Path) -> bool:
        """Select the model at `path`; False when it is not in the table (or filtered out)."""
        source_row = self.model.row_of(str(path))
        if source_row is None:
            return False
        index = self.proxy.mapFromSource(self.model.index(source_row, 0))
        if not index.isValid():
            return False
        self.table.selectRow(index.row())
        self.table.scrollTo(index)
        return True

    def selected_row(self) -> ModelRow | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.row_at(self.proxy.mapToSource(rows[0]).row()) if rows else None

    def download_rows(self) -> list[DownloadRow]:
        return self.findChildren(DownloadRow)

    def is_busy(self) -> bool:
        """A header read, add, scan or download is still running."""
        return any(job.is_running() for job in self._jobs) or any(r.is_running() for r in self.download_rows())

    def shutdown(self) -> None:
        """Stop the server and running downloads, and wait for worker threads (before the window closes)."""
        self.serve.shutdown()
        for row in self.download_rows():
            row.kill()
        for job in self._jobs:
            job.stop()
            job.wait(5.0)

    # jobs
    def _start_job(self, work, on_finished, on_failed=None) -> None:
        job = ThreadJob(work)          # no parent: it must outlive the pane if the window closes mid-read
        job.finished.connect(on_finished)
        job.failed.connect(on_failed or self._on_job_failed)
        self._jobs = {j for j in self._jobs if j.is_running()} | {job}
        job.start()

    @Slot(object)
    def _on_rows_read(self, result: tuple[int, list[ModelRow], dict]) -> None:
        generation, rows, cache = result
        if generation != self._generation:
            return                                  # a newer refresh is on its way
        selected = self._select_after_refresh or getattr(self.selected_row(), "path", None)
        self._select_after_refresh = None
        self._cache = cache
        self.model.set_rows(rows)
        self._rows_read = True
        self._fit_name_column()
        if selected:
            self.select(selected)
        self._show_selected()
        self._show_count(rows)

    def _fit_name_column(self) -> None:
        """Names as wide as the longest one, within 160 px and 40% of the table, so Source keeps room."""
        wanted = self.table.sizeHintForColumn(NAME) + 12
        self.table.horizontalHeader().resizeSection(NAME, max(160, min(wanted, self.table.viewport().width() * 2 // 5)))

    def _show_count(self, rows: list[ModelRow]) -> None:
        unreadable = sum(row.problem is not None for row in rows)
        text = f"{len(rows)} {'model' if len(rows) == 1 else 'models'}"
        self.count.setText(text + (f" · {unreadable} unreadable" if unreadable else ""))
        self.table_stack.setCurrentWidget(self.empty if not rows else self.table)
        self.details.setVisible(bool(rows))
        self.serve.setVisible(bool(rows) or self.serve.is_running())   # nothing to serve in an empty library

    @Slot(str)
    def _on_refresh_failed(self, message: str) -> None:
        self.model.set_rows([])
        self._show_selected()
        self.count.setText("")
        self.table_stack.setCurrentWidget(self.table)
        self._show_status(message, warning=True)

    @Slot(str)
    def _on_job_failed(self, message: str) -> None:
        self._show_status(message, warning=True)

    @Slot(object)
    def _on_paths_added(self, result: tuple[list[LibraryEntry], list[str], list[str]]) -> None:
        added, skipped, checkpoints = result
        if checkpoints and not added:
            self.offer_export(checkpoints[0])
        if not added and not skipped:
            self._show_status("Already in the library.")
        elif len(skipped) == 1 and not added:
            self._show_status(f"Not added: {skipped[0]}", warning=True, details=skipped)
        else:
            self._show_status(summary(len(added), len(skipped)), warning=bool(skipped), details=skipped)
        if added:
            self.library_changed.emit()
            self.refresh(select=str(added[0].path))

    @Slot(object)
    def _on_scanned(self, result) -> None:
        shown, changes, entries = result
        self._scan_ended()
        now = {_row_key(entry) for entry in entries}
        found, gone = len(now - shown), len(shown - now)
        self._show_status(scan_summary(found, gone, len(changes.skipped)), warning=bool(changes.skipped),
                          details=changes.skipped)
        if found or gone or changes.added or changes.removed:
            self.library_changed.emit()
        self.refresh()

    @Slot(str)
    def _on_scan_failed(self, message: str) -> None:
        self._scan_ended()
        self._show_status(message, warning=True)

    def _scan_ended(self) -> None:
        self.rescan_button.setEnabled(True)
        self.empty.scan_button.setEnabled(True)

    @Slot(str)
    def _on_downloaded(self, path: str) -> None:
        self.library_changed.emit()
        self.refresh(select=path)

    def _show_status(self, text: str, warning: bool = False, details: Iterable[str] = ()) -> None:
        details = list(details)
        set_style_name(self.status, "Warning" if warning else "Muted")
        self.status.set_full_text(text + ("  (hover for why)" if len(details) > 1 else ""))
        self.status.setToolTip("\n".join(details) or text)

    # selection and actions
    @Slot()
    def _on_selection_changed(self) -> None:
        self._show_selected()

    def _show_selected(self) -> None:
        self.details.show_row(self.selected_row())

    @Slot(str)
    def _on_filter_changed(self, text: str) -> None:
        self.proxy.setFilterFixedString(text)

    @Slot(QtCore.QModelIndex)
    def _on_row_double_clicked(self, _index: QtCore.QModelIndex) -> None:
        if self.details.chat_button.isEnabled():
            self._on_chat_clicked()

    @Slot()
    def _on_chat_clicked(self) -> None:
        row = self.selected_row()
        if row is not None and row.info is not None:
            self.chat_requested.emit(row.path)

    @Slot()
    def _on_show_in_folder_clicked(self) -> None:
        row = self.selected_row()
        if row is not None:
            QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(row.entry.path.parent)))

    @Slot()
    def _on_remove_clicked(self) -> None:
        row = self.selected_row()
        if row is None or not self._confirm_remove(row):
            return
        try:
            self.library.remove(row.entry.path)
        except AhaError as error:
            self._show_status(str(error), warning=True)
            return
        self._show_status(f"Removed {row.entry.name} from the library; the file is still at {row.path}.")
        self.library_changed.emit()
        self.refresh()

    def _confirm_remove(self, row: ModelRow) -> bool:
        answer = QtWidgets.QMessageBox.question(
            self, "Remove from library",
            f"Remove {row.entry.name} from the library?\n\nThe file stays on disk:\n{row.path}",
            QtWidgets.QMessageBox.StandardButton.Yes | QtWidgets.QMessageBox.StandardButton.No,
            QtWidgets.QMessageBox.StandardButton.No)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    @Slot()
    def _on_add_file_clicked(self) -> None:
        paths, _ = QtWidgets.QFileDialog.getOpenFileNames(self, "Add GGUF models", str(Path.home()), GGUF_FILTER)
        self.add_paths(paths)

    @Slot()
    def _on_add_folder_clicked(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Add every model in a folder", str(Path.home()))
        if folder:
            self.add_paths([folder])

    @Slot()
    def _on_rescan_clicked(self) -> None:
        self.rescan()

    @Slot()
    def _on_download_clicked(self) -> None:
        dialog = DownloadDialog(self)
        if dialog.exec() == QtWidgets.QDialog.DialogCode.Accepted:
            self.start_download(*dialog.values())
