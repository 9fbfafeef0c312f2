"""First run with no models: open a GGUF file, add a folder of them, use a model found on this machine,
download R1, or train a tiny reasoning model here (`aha demo`, run by the window's app.demo.DemoFlow).

The models found (Ollama, LM Studio, the Hugging Face cache) are discovered on a worker thread and offered
without being added; choosing one adds it to the library (the window does that, and hands back the one-line
reason when it cannot). With nothing found the list is hidden and a sentence says what to do instead.
"""

from __future__ import annotations

from app.qt import Qt, QtWidgets, Signal
from app.workers import ThreadJob
from engine.models import R1_DEFAULT, Library, discover

SCANNING = "Looking for models on this machine…"
NOTHING_FOUND = "No models found in Ollama, LM Studio or the Hugging Face cache."
WHAT_TO_DO = ("Open a GGUF file you already have, add a folder that holds some, or download DeepSeek-R1 "
              "above (this needs an internet connection). Or train a tiny reasoning model here: no download, "
              "no GPU.")
DEMO_TEXT = "Train a tiny reasoning model here — about 2 minutes, no download"
DEMO_RUNNING_TEXT = "The tiny model is training: follow it in the Runs pane"
DEMO_TIP = ("Runs the DeepSeek-R1 recipe on a Qwen2 of 124K parameters, on this computer's CPU: "
            "cold-start SFT on reasoning traces of 3-digit addition, an evaluation, GRPO with accuracy and format rewards, the "
            "evaluation again, export to GGUF, then a chat with it. Each stage is a real run you can watch in "
            "the Runs and Eval panes (`aha demo` in a terminal does the same).")


class EmptyState(QtWidgets.QWidget):
    model_chosen = Signal(str)              # a GGUF path to chat with
    folder_chosen = Signal(str)             # a folder to add every model of
    download_requested = Signal(str, str)   # repo, file
    demo_requested = Signal()               # train a tiny reasoning model here (`aha demo`)

    def __init__(self, library: Library, parent=None):
        super().__init__(parent)
        self.library = library
        title = QtWidgets.QLabel("Welcome to Aha", objectName="EmptyTitle", alignment=Qt.AlignmentFlag.AlignCenter)
        subtitle = QtWidgets.QLabel("Chat with reasoning models and watch them think. Pick a model to begin, "
                                    "or train a tiny one.",
                                    objectName="Muted", alignment=Qt.AlignmentFlag.AlignCenter, wordWrap=True)
        self.open_button = QtWidgets.QPushButton("Open a GGUF file…", objectName="PrimaryButton")
        self.open_button.clicked.connect(self._on_open)
        self.folder_button = QtWidgets.QPushButton("Add a folder of models…")
        self.folder_button.clicked.connect(self._on_add_folder)
        repo, filename = R1_DEFAULT
        self.download_button = QtWidgets.QPushButton("Download DeepSeek-R1-Distill-Qwen-1.5B (Q4_K_M, 1.1 GB)")
        self.download_button.clicked.connect(lambda: self.download_requested.emit(repo, filename))
        self.demo_button = QtWidgets.QPushButton(DEMO_TEXT, toolTip=DEMO_TIP)
        self.demo_button.clicked.connect(self._on_demo)
        self.problem = self._paragraph("Warning")       # why the last choice could not be opened
        self.found_label = QtWidgets.QLabel(SCANNING, objectName="Muted", wordWrap=True)
        self.found = QtWidgets.QListWidget()
        self.found.setMaximumHeight(180)
        self.found.itemActivated.connect(self._on_found)
        self.found.itemDoubleClicked.connect(self._on_found)
        self.found.currentItemChanged.connect(lambda item, _previous: self.use_button.setEnabled(item is not None))
        self.use_button = QtWidgets.QPushButton("Use the selected model")
        self.use_button.clicked.connect(lambda: self.found.currentItem() and self._on_found(self.found.currentItem()))
        self.hint = self._paragraph("Muted")           # what to do when nothing was found
        self.found.setVisible(False)                   # until the scan has found something
        self.use_button.setVisible(False)
        card = QtWidgets.QFrame(objectName="MessageCard")
        card.setMaximumWidth(560)
        layout = QtWidgets.QVBoxLayout(card)
        layout.setContentsMargins(28, 24, 28, 24)
        layout.setSpacing(12)
        for widget in (title, subtitle, self.open_button, self.folder_button, self.download_button,
                       self.demo_button, self.problem,
                       self.found_label, self.found, self.use_button, self.hint):
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

    @staticmethod
    def _paragraph(style: str) -> QtWidgets.QLabel:
        label = QtWidgets.QLabel(objectName=style, wordWrap=True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        label.setVisible(False)
        return label

    def show_problem(self, text: str) -> None:
        """Show why the file or model just chosen cannot be used (one line, wrapped to the card)."""
        self.problem.setText(text)
        self.problem.setVisible(bool(text))

    def set_demo_running(self, running: bool) -> None:
        """While the demo runs its button says where to watch it, and cannot start a second one."""
        self.demo_button.setEnabled(not running)
        self.demo_button.setText(DEMO_RUNNING_TEXT if running else DEMO_TEXT)

    def start_scan(self) -> None:
        if self._job is not None and self._job.is_running():
            return
        self._job = ThreadJob(lambda emit, cancel: discover().found, self)
        self._job.finished.connect(self._on_found_models)
        self._job.failed.connect(self._on_scan_failed)
        self._job.start()

    def _show_result(self, label: str, any_found: bool) -> None:
        """The list and its button only when there is something to pick; else a sentence saying what to do."""
        self.found_label.setText(label)
        self.found.setVisible(any_found)
        self.use_button.setVisible(any_found)
        self.use_button.setEnabled(self.found.currentItem() is not None)
        self.hint.setText(WHAT_TO_DO)
        self.hint.setVisible(not any_found)

    def _on_found_models(self, found: list) -> None:
        self.found.clear()
        for item in found:
            row = QtWidgets.QListWidgetItem(f"{item.name}    ·  {item.source}")
            row.setData(Qt.ItemDataRole.UserRole, str(item.path))
            row.setToolTip(str(item.path))
            self.found.addItem(row)
        self.found.setCurrentRow(0 if found else -1)
        self._show_result(f"Found on this machine ({len(found)}):" if found else NOTHING_FOUND, bool(found))

    def _on_scan_failed(self, message: str) -> None:
        self._show_result(f"Could not look for models: {message}", False)

    def _on_found(self, item: QtWidgets.QListWidgetItem) -> None:
        self.show_problem("")
        self.model_chosen.emit(item.data(Qt.ItemDataRole.UserRole))

    def _on_open(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open a GGUF model", "", "GGUF models (*.gguf)")
        if path:
            self.show_problem("")
            self.model_chosen.emit(path)

    def _on_demo(self) -> None:
        self.show_problem("")
        self.demo_requested.emit()

    def _on_add_folder(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Add every model in a folder")
        if folder:
            self.show_problem("")
            self.folder_chosen.emit(folder)
