"""The Aha window: a sidebar of panes (Chat, Compare, Models, Train, Runs, Export, Eval), restored geometry,
keyboard shortcuts, and the wiring between the panes (a run started in Train opens in Runs; Runs duplicates
into Train, exports into Export and evaluates a run against its base in Eval, where eval runs open; an export
opens in Chat); the welcome screen's demo (app.demo) runs `aha demo` through Runs and Eval and ends in Chat.

`run()` creates the QApplication, styles it for the system's light/dark scheme and shows the window.
Window state lives in `ui.ini` in the data directory; everything else lives in the engine's store.
Closing asks first while child jobs run, then leaves them running (ProcessJob.detach); downloads and the server
stop.
"""

from __future__ import annotations

import sys
from pathlib import Path

from app import theme
from app.about import about_button
from app.chat.compare import ComparePane
from app.chat.view import ChatPane
from app.demo import DemoFlow, DemoStatus
from app.eval.view import EvalPane
from app.export.view import ExportPane
from app.models.empty_state import EmptyState
from app.models.view import ModelsPane
from app.qt import Qt, QtCore, QtGui, QtWidgets, check_qt_version
from app.runs.view import RunsPane
from app.train.view import TrainPane
from app.workers import ProcessJob, running_jobs
from engine.assets import asset_path
from engine.desktop import APP_ID
from engine.errors import AhaError
from engine.models import Library, read_gguf_info
from engine.paths import data_dir
from engine.store import Store

ICON = asset_path("aha.svg")


def ui_settings() -> QtCore.QSettings:
    return QtCore.QSettings(str(data_dir() / "ui.ini"), QtCore.QSettings.Format.IniFormat)


class MainWindow(QtWidgets.QMainWindow):
    def __init__(self, store: Store | None = None):
        super().__init__()
        self.setWindowTitle("Aha")
        self.setWindowIcon(QtGui.QIcon(str(ICON)))
        self.store = store or Store()
        self.store.recover()                       # replies a crash left half-written become `stopped`
        self.store.purge_deleted(older_than_s=7 * 86400)
        self.library = Library()
        self.chat = ChatPane(self.store)
        self.chat.status_message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.empty = EmptyState(self.library)
        self.empty.model_chosen.connect(self._on_model_opened)
        self.empty.folder_chosen.connect(self._on_folder_chosen)
        self.empty.download_requested.connect(self._on_download_requested)
        self.empty.demo_requested.connect(self._on_demo_requested)
        self.panes: dict[str, QtWidgets.QWidget] = {}
        self.sidebar = QtWidgets.QListWidget()
        self.stack = QtWidgets.QStackedWidget()
        self._add_pane("Chat", self._chat_or_empty(), "chat")
        self.compare = ComparePane()
        self._add_pane("Compare", self.compare, "compare")
        self.models = ModelsPane(self.library)
        self.models.chat_requested.connect(self._on_model_chosen)
        self.models.library_changed.connect(self._on_library_changed)
        self._add_pane("Models", self.models, "models")
        self.train = TrainPane(self.store)
        self._add_pane("Train", self.train, "train")
        self.runs = RunsPane(self.store)
        self._add_pane("Runs", self.runs, "runs")
        self.export = ExportPane(self.store, self.library)
        self._add_pane("Export", self.export, "export")
        self.eval_pane = EvalPane(self.store, self.library)
        self.eval_pane.status_message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self._add_pane("Eval", self.eval_pane, "eval")
        self.demo = DemoFlow(self.store, self.runs, self.eval_pane, self)
        self.demo_status = DemoStatus(self.demo, self)   # in the status bar from the first demo on
        self._connect_panes()
        self.sidebar.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.sidebar.currentRowChanged.connect(lambda _: self.statusBar().clearMessage())  # one pane's news only
        side = QtWidgets.QWidget(objectName="Sidebar")
        side.setFixedWidth(150)
        side_layout = QtWidgets.QVBoxLayout(side)
        side_layout.setContentsMargins(0, 12, 0, 12)
        logo = QtWidgets.QLabel()
        logo.setPixmap(QtGui.QIcon(str(ICON)).pixmap(40, 40))
        logo.setAlignment(Qt.AlignmentFlag.AlignCenter)
        side_layout.addWidget(logo)
        side_layout.addWidget(self.sidebar)
        side_layout.addWidget(about_button(self), 0, Qt.AlignmentFlag.AlignHCenter)  # and F1: app.about
        central = QtWidgets.QWidget()
        layout = QtWidgets.QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(side)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        self._shortcuts()
        self.restore_state()

    # -- panes -------------------------------------------------------------------------------------
    def _chat_or_empty(self) -> QtWidgets.QWidget:
        self.chat_stack = QtWidgets.QStackedWidget()
        self.chat_stack.addWidget(self.chat)
        self.chat_stack.addWidget(self.empty)
        self._update_empty_state()
        return self.chat_stack

    def _update_empty_state(self) -> None:
        first_run = not self.library.entries() and not self.store.list_conversations()
        self.chat_stack.setCurrentWidget(self.empty if first_run else self.chat)
        if first_run:
            self.empty.start_scan()

    def _add_pane(self, title: str, widget: QtWidgets.QWidget, key: str) -> None:
        self.panes[key] = widget
        self.stack.addWidget(widget)
        self.sidebar.addItem(title)

    def show_pane(self, key: str) -> None:
        self.sidebar.setCurrentRow(list(self.panes).index(key))

    def show_problem(self, text: str) -> None:
        """A failed action's one line: on the welcome screen while it shows, else in the status bar."""
        if self.chat_stack.currentWidget() is self.empty:
            self.empty.show_problem(text)
        else:
            self.statusBar().showMessage(text, 15000)

    def _on_model_opened(self, path: str) -> None:
        """A file opened (or a found model picked) on the welcome screen: check it, add it, chat with it."""
        try:
            info = read_gguf_info(path)
            if info.kind != "model":
                what = "a LoRA adapter" if info.kind == "adapter" else f"a {info.kind} file"
                raise AhaError(f"{path} is {what}, not a model; open the model's own GGUF file.")
            added = not any(str(entry.path) == path for entry in self.library.entries())
            if added:
                self.library.add(path)
        except AhaError as error:
            self.show_problem(str(error))
            return
        if added:                                   # the other panes list the new model too
            self._on_library_changed()
            self.models.refresh(select=path)
        self._on_model_chosen(path)

    def _on_model_chosen(self, path: str) -> None:
        if self.chat.session.busy:
            self.show_problem("A reply is still being written; stop it (Esc) before starting a chat with "
                              "another model.")
            return
        self.chat.settings.refresh_models()
        self.chat.new_conversation()
        self.chat.set_model(path)
        self.chat_stack.setCurrentWidget(self.chat)
        self.show_pane("chat")

    def _on_folder_chosen(self, folder: str) -> None:
        """Add every model in a folder; the Models pane shows what was added, or why nothing was."""
        self.show_pane("models")
        self.models.add_paths([folder])

    def _on_download_requested(self, repo: str, filename: str) -> None:
        self.show_pane("models")
        self.models.start_download(repo, filename)

    def _connect_panes(self) -> None:
        """The training panes hand work to each other (each shows its own one-line messages itself)."""
        self.train.run_started.connect(self._on_run_started)
        self.runs.duplicate_requested.connect(self._on_duplicate_requested)
        self.runs.export_requested.connect(self._on_export_requested)
        self.export.run_started.connect(self.runs.follow_job)     # the export is a run too: listed, live
        self.export.chat_requested.connect(self._on_model_opened)
        self.eval_pane.run_started.connect(self.runs.follow_job)  # an eval is a run too: listed, live
        self.runs.evaluation_requested.connect(self._on_evaluation_requested)
        self.runs.eval_opened.connect(self._on_eval_opened)
        self.demo.pane_requested.connect(self.show_pane)
        self.demo.running_changed.connect(self.empty.set_demo_running)
        self.demo.model_ready.connect(self._on_demo_model)

    def _on_demo_requested(self) -> None:
        """The welcome screen's "Train a tiny reasoning model here": `aha demo`, watched in Runs and Eval."""
        if self.demo.is_running():
            self.show_problem("The demo is already running: its stages show in the Runs pane.")
            return
        if self.demo_status.parent() is not self.statusBar():   # not before: even hidden it makes the bar taller
            self.statusBar().addPermanentWidget(self.demo_status, 1)   # the bar's width: the stage line is long
        self.demo.start()

    def _on_demo_model(self, gguf: str, result: dict) -> None:
        """The demo ended with its GGUF in the library: list it, open a new chat with it, ask it the demo's
        question there (its thought streams in), as the demo's last stage did in the child."""
        self._on_library_changed()                  # the pipeline added it to the library itself
        self.models.refresh(select=gguf)
        self._on_model_opened(gguf)
        settings = self.chat.settings
        question = (result.get("chat") or {}).get("question")
        if not question or settings.values().get("model") != gguf or self.chat.session.busy:
            return
        try:
            context = read_gguf_info(gguf).context_length
        except AhaError:
            context = None
        if context:   # the tiny model was trained on a short context: a reply that fits in it
            settings.load({**settings.values(), "max_tokens": min(settings.values()["max_tokens"], context // 2)})
        self.chat.composer.setPlainText(str(question))
        self.chat.send()

    def _on_evaluation_requested(self, run: dict) -> None:
        self.show_pane("eval")
        self.eval_pane.evaluate_run(run)

    def _on_eval_opened(self, run: dict) -> None:
        self.eval_pane.open_run(run)
        self.show_pane("eval")

    def _on_run_started(self, job: ProcessJob) -> None:
        self.show_pane("runs")
        self.runs.follow_job(job)

    def _on_duplicate_requested(self, kind: str, config: dict) -> None:
        self.train.load_settings(kind, config)
        self.show_pane("train")

    def _on_export_requested(self, path: str, base: str) -> None:
        self.export.set_source(path, base)
        self.show_pane("export")

    def _on_library_changed(self) -> None:
        self.chat.settings.refresh_models()
        self.compare.refresh_models()
        self._update_empty_state()

    # -- keyboard ----------------------------------------------------------------------------------
    def _shortcuts(self) -> None:
        def bind(keys, slot):
            QtGui.QShortcut(QtGui.QKeySequence(keys), self, activated=slot)

        bind("Ctrl+N", lambda: (self.show_pane("chat"), self.chat.new_conversation()))
        bind("Ctrl+F", lambda: (self.show_pane("chat"), self.chat.conversations.search.setFocus()))
        bind("Ctrl+L", lambda: (self.show_pane("chat"), self.chat.composer.setFocus()))
        bind("Ctrl+.", self._stop_current)
        bind("Ctrl+,", lambda: self.chat.settings_button.toggle())
        bind("Ctrl+Q", self.close)
        for index in range(len(self.panes)):
            bind(f"Ctrl+{index + 1}", lambda i=index: self.sidebar.setCurrentRow(i))
        for pane, slot in ((self.train, self.train.start), (self.export, self.export.start_export),
                           (self.eval_pane, self.eval_pane.start)):
            for keys in ("Ctrl+Return", "Ctrl+Enter"):   # Start / Export, while the focus is in that pane
                QtGui.QShortcut(QtGui.QKeySequence(keys), pane, activated=slot,
                                context=Qt.ShortcutContext.WidgetWithChildrenShortcut)

    def _stop_current(self) -> None:
        """Ctrl+. stops what the pane in front is doing: the reply, the selected run, the export, the eval."""
        current = self.stack.currentWidget()
        if current is self.runs:
            self.runs.stop_selected()
        elif current is self.export:
            self.export.cancel()
        elif current is self.eval_pane:
            self.eval_pane.cancel()
        else:
            self.chat.stop()

    # -- state -------------------------------------------------------------------------------------
    def restore_state(self) -> None:
        settings = ui_settings()
        geometry = settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1200, 780)
        splitter = settings.value("chat/splitter")
        if splitter is not None:
            self.chat.splitter.restoreState(splitter)
        self.sidebar.setCurrentRow(int(settings.value("window/pane", 0)))
        last = settings.value("chat/conversation")
        if last is not None:
            try:
                self.chat.open_conversation(int(last))
            except Exception:  # noqa: BLE001 - a deleted conversation: start fresh
                self.chat.new_conversation()

    def save_state(self) -> None:
        settings = ui_settings()
        settings.setValue("window/geometry", self.saveGeometry())
        settings.setValue("window/pane", self.sidebar.currentRow())
        settings.setValue("chat/splitter", self.chat.splitter.saveState())
        if self.chat.conversation_id is not None:
            settings.setValue("chat/conversation", self.chat.conversation_id)
        settings.sync()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 - Qt override
        jobs = running_jobs()
        if jobs and not self.confirm_close(jobs):
            event.ignore()
            return
        self.save_state()
        self.chat.session.close()
        if hasattr(self, "compare"):
            self.compare.close_models()
        if hasattr(self, "models"):
            self.models.shutdown()
        for pane in ("train", "export"):            # inspections, reward checks and a running export stop
            if hasattr(self, pane):
                getattr(self, pane).shutdown()
        if hasattr(self, "runs"):
            self.runs.commit_pending_deletion()     # a deletion waiting for its Undo toast is done now
        for job in running_jobs():
            job.detach()
        super().closeEvent(event)

    def confirm_close(self, jobs: list[ProcessJob]) -> bool:
        """Ask before closing while child jobs run. Downloads and the server stop (downloads resume); the others
        keep running."""
        downloads = [job for job in jobs if job.kind in ("download", "export")]
        others = [job for job in jobs if job.kind not in ("download", "export", "serve")]
        lines = [f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} still running: "
                 f"{', '.join(job.title for job in jobs)}."]
        if others:
            lines.append("Closing the window does not stop training or generation: it keeps running, and the "
                         "Runs pane picks it up again when Aha opens.")
        if any(job.kind == "demo" for job in others):
            lines.append("The demo keeps running too: its model joins the Models pane when it ends.")
        if downloads:
            lines.append("Downloads and exports stop: downloading the same file again continues where it "
                         "stopped; a stopped export leaves nothing behind.")
        if any(job.kind == "serve" for job in jobs):
            lines.append("The server stops: its clients can no longer reach the models.")
        answer = QtWidgets.QMessageBox.question(
            self, "Close Aha?", "\n\n".join([*lines, "Close anyway?"]),
            QtWidgets.QMessageBox.StandardButton.Close | QtWidgets.QMessageBox.StandardButton.Cancel,
            QtWidgets.QMessageBox.StandardButton.Cancel)
        return answer == QtWidgets.QMessageBox.StandardButton.Close


def application(argv: list[str] | None = None) -> QtWidgets.QApplication:
    """The QApplication, named, with its icon and styled for the system's light/dark scheme."""
    check_qt_version()
    QtGui.QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(argv or sys.argv)
    app.setApplicationName("Aha")
    app.setWindowIcon(QtGui.QIcon(str(ICON)))
    QtGui.QGuiApplication.setDesktopFileName(APP_ID)  # Wayland finds the window's menu entry and icon by it
    theme.apply(app)
    app.styleHints().colorSchemeChanged.connect(lambda _: theme.apply(app))
    return app


def run(argv: list[str] | None = None) -> int:
    """Open the window and run the event loop."""
    app = application(argv)
    try:
        window = MainWindow()
    except AhaError as error:                  # a library or database this Aha cannot read: say which, and why
        print(f"aha: error: {error}", file=sys.stderr)
        QtWidgets.QMessageBox.critical(None, "Aha cannot start", str(error))
        return 1
    window.show()
    return app.exec()


SMOKE_USAGE = 'usage: aha --smoke MODEL.gguf "QUESTION"'
SMOKE_TIMEOUT_S = 300
SMOKE_MAX_TOKENS = 512


def smoke(args: list[str]) -> int:
    """`aha --smoke MODEL.gguf QUESTION`: open the window, chat once with the model through the Chat pane (its
    ChatSession, the engine's chat, llama.cpp), print the thought and the answer, and exit 0: a check that an
    install (the standalone bundle above all) works end to end without anyone at the window.

    Greedy sampling (the reply is reproducible), at most SMOKE_MAX_TOKENS tokens. It runs in a throwaway data
    directory (AHA_HOME for the run), so the user's library and conversations are neither read nor changed.
    One line on stderr and exit 2 for bad arguments or a file that is not a model; exit 1 when the reply fails
    or has not ended after SMOKE_TIMEOUT_S seconds."""
    import os
    import tempfile

    from app.chat.settings import PRESETS

    if len(args) != 2 or not args[1].strip():
        print(f"aha: error: {SMOKE_USAGE}", file=sys.stderr)
        return 2
    model, question = args
    home = tempfile.TemporaryDirectory(prefix="aha-smoke-")
    saved_home = os.environ.get("AHA_HOME")
    os.environ["AHA_HOME"] = home.name
    try:
        return _smoke(str(Path(model).resolve()), question, next(k for k, v in PRESETS.items() if v == (0.0, 1.0)))
    finally:
        if saved_home is None:
            os.environ.pop("AHA_HOME", None)
        else:
            os.environ["AHA_HOME"] = saved_home
        home.cleanup()


def _smoke(model: str, question: str, greedy: str) -> int:
    try:
        info = read_gguf_info(model)
        if info.kind != "model":
            raise AhaError(f"{model} is a {info.kind} file, not a model; give the model's own GGUF file.")
        app = application(["aha"])
        Library().add(model)
        window = MainWindow()
    except AhaError as error:
        print(f"aha: error: {error}", file=sys.stderr)
        return 2
    window.show()
    app.processEvents()
    if not window.isVisible():
        print("aha: error: the window did not come up", file=sys.stderr)
        return 1
    print(f"window: {window.windowTitle()} {window.width()}x{window.height()} "
          f"(Qt {QtCore.qVersion()}, platform {QtGui.QGuiApplication.platformName()})", flush=True)
    window._on_model_chosen(model)
    pane = window.chat
    pane.settings.load({**pane.settings.values(), "preset": greedy, "temperature": 0.0, "top_p": 1.0,
                        "max_tokens": SMOKE_MAX_TOKENS})
    ended: dict = {}
    loop = QtCore.QEventLoop()
    pane.session.finished.connect(lambda stats: (ended.setdefault("stats", stats), loop.quit()))
    pane.session.failed.connect(lambda message: (ended.setdefault("error", message), loop.quit()))
    timer = QtCore.QTimer(window, singleShot=True, interval=SMOKE_TIMEOUT_S * 1000, timeout=loop.quit)
    timer.start()
    pane.composer.setPlainText(question)
    pane.send()
    if "error" not in ended and "stats" not in ended:
        loop.exec()
    timer.stop()
    app.processEvents()
    try:
        if "error" in ended:
            print(f"aha: error: the reply failed: {ended['error']}", file=sys.stderr)
            return 1
        if "stats" not in ended:
            print(f"aha: error: no reply after {SMOKE_TIMEOUT_S} s", file=sys.stderr)
            return 1
        reply = window.store.get_message(ended["stats"]["message_id"])
        print(f"model: {Path(model).name}")
        print(f"thinking: {reply.thinking.strip()}")
        print(f"answer: {reply.content.strip()}")
        stats = ended["stats"]
        print(f"ended: {stats.get('stop_reason')} ({stats.get('thinking_tokens') or 0} thinking tokens, "
              f"{stats.get('answer_tokens') or 0} answer tokens)", flush=True)
        window.show_pane("train")                   # what a user who opens the Train pane reads first
        app.processEvents()
        print(f"train: {window.train.training_missing or 'available (the train extra is installed)'}", flush=True)
        return 0
    finally:
        window.close()
