"""First run with no models: open a GGUF file, use a model found on this machine, or download R1.

The models found (Ollama, LM Studio, the Hugging Face cache) are discovered on a worker thread and
offered without being added; choosing one adds it to the library.
"""

from __future__ import annotations

from app.qt import Qt, QtWidgets, Signal
from app.workers import ThreadJob
from engine.models import DISCOVERERS, R1_DEFAULT, Library, default_roots


def discover_all() -> list:
    """Everything the discovery sources find under their default roots (nothing is added)."""
    found = []
    for source, roots in default_roots().items():
        for root in roots:
            if root.exists():
                found.extend(DISCOVERERS[source](root).found)
    return found


class EmptyState(QtWidgets.QWidget):
    model_chosen = Signal(str)              # a GGUF path to chat with
    download_requested = Signal(str, str)   # repo, file

    def __init__(self, library: Library, parent=None):
        super().__init__(parent)
        self.library = library
        title = QtWidgets.QLabel("Welcome to Aha", objectName="EmptyTitle", alignment=Qt.AlignmentFlag.AlignCenter)
        subtitle = QtWidgets.QLabel("Chat with reasoning models and watch them think. Pick a model to begin.",
                                    objectName="Muted", alignment=Qt.AlignmentFlag.AlignCenter, wordWrap=True)
        self.open_button = QtWidgets.QPushButton("Open a GGUF file…", objectName="PrimaryButton")
        self.open_button.clicked.connect(self._on_open)
        repo, filename = R1_DEFAULT
        self.download_button = QtWidgets.QPushButton("Download DeepSeek-R1-Distill-Qwen-1.5B (Q4_K_M, 1.1 GB)")
        self.download_button.clicked.connect(lambda: self.download_requested.emit(repo, filename))
        self.found_label = QtWidgets.QLabel("Looking for models on this machine…", objectName="Muted")
        self.found = QtWidgets.QListWidget()
        self.found.setMaximumHeight(180)
        self.found.itemActivated.connect(self._on_found)
        self.found.itemDoubleClicked.connect(self._on_found)
        self.use_button = QtWidgets.QPushButton("Use the selected model")
        self.use_button.clicked.connect(lambda: self.found.currentItem() and self._on_found(self.found.currentItem()))
        card = QtWidgets.QFrame(objectName="MessageCard")
        card.setMaximumWidth(560)
        layout = QtWidgets.QVBoxLayout(card)
        layout.setContentsMargins(28, 24, 28, 24)
        layout.setSpacing(12)
        for widget in (title, subtitle, self.open_button, self.download_button, self.found_label, self.found,
                       self.use_button):
            layout.addWidget(widget)
        outer = QtWidgets.QVBoxLayout(self)
        outer.addStretch()
        row = QtWidgets.QHBoxLayout()
        row.addStretch()
        row.addWidget(card, 1)
        row.addStretch()
        outer.addLayout(row)
        outer.addStretch()
        self._job: ThreadJob | None = None

    def start_scan(self) -> None:
        if self._job is not None and self._job.is_running():
            return
        self._job = ThreadJob(lambda emit, cancel: discover_all(), self)
        self._job.finished.connect(self._on_found_models)
        self._job.failed.connect(lambda message: self.found_label.setText(f"Could not look for models: {message}"))
        self._job.start()

    def _on_found_models(self, found: list) -> None:
        self.found.clear()
        for item in found:
            row = QtWidgets.QListWidgetItem(f"{item.name}    ·  {item.source}")
            row.setData(Qt.ItemDataRole.UserRole, str(item.path))
            row.setToolTip(str(item.path))
            self.found.addItem(row)
        self.found_label.setText(f"Found on this machine ({len(found)}):" if found
                                 else "No models found in Ollama, LM Studio or the Hugging Face cache.")

    def _on_found(self, item: QtWidgets.QListWidgetItem) -> None:
        self.model_chosen.emit(item.data(Qt.ItemDataRole.UserRole))

    def _on_open(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open a GGUF model", "", "GGUF models (*.gguf)")
        if path:
            self.model_chosen.emit(path)
