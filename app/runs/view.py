"""The Runs pane: a table of every run in the store (kind, model, data, status, steps, start, duration, key metric,
folder), filtered by kind and status, with the selected run's dashboard and rollouts below it; and what is done to
a run: open, stop, resume, duplicate into the Train form, export, open its folder, compare, delete (with Undo).
A pipeline run (or one of its stage runs) shows its stages as a chain of cards above them (app.runs.pipeline_chain,
read from its pipeline.json by engine.stage_chain at each poll); a card opens its stage run.

The rows come from engine.run_index (read on a worker thread every POLL_MS, and at once when a job this window
follows reports a step); stop, resume, duplicate, export and delete are run_index's too. A run started elsewhere
(a terminal, another window) shows and updates the same way: the store and the run's files are the truth here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from app.qt import Qt, QtCore, QtGui, QtWidgets, Signal, Slot
from app.runs.dashboard import RunDashboard
from app.runs.pipeline_chain import PipelineChain
from app.runs.rollouts import RolloutBrowser
from app.theme import colors, status_color
from app.widgets import (
    KEY_ROLE,
    SORT_ROLE,
    ElidedLabel,
    ElideMiddleDelegate,
    RowsModel,
    Toast,
    bold,
    set_style_name,
)
from app.workers import TRAINING_GRACE_S, JobOutcome, ProcessJob, ThreadJob
from engine import run_index, stage_chain
from engine.errors import AhaError
from engine.eval.results import TRAINED_KINDS
from engine.run_index import RunRow, RunTable
from engine.store import Store

COLUMNS = ("ID", "Kind", "Model", "Dataset", "Status", "Steps", "Started", "Duration", "Key metric", "Folder")
ID, KIND, MODEL, DATASET, STATUS, STEPS, STARTED, DURATION, METRIC, FOLDER = range(len(COLUMNS))
NUMERIC_COLUMNS = (ID, STEPS, DURATION)
RUN_ID_ROLE = KEY_ROLE
KIND_CHOICES = ("grpo", "distill-sft", "distill-kd", "generate", "export", "eval", "demo", "pipeline")
STATUS_CHOICES = ("running", "complete", "cancelled", "crashed", "error")
RESUMABLE = ("cancelled", "crashed")
# A followed job's events that the dashboard and the rollout browser take (they read the rest from the files).
FORWARDED_EVENTS = ("metrics", "sample", "log", "progress", "done", "error")


def read_rows(path: Path, table: RunTable) -> list[RunRow]:
    """The table's rows from the database at `path`, on a connection of the calling (worker) thread."""
    with Store(path) as store:
        return table.rows(store)


def cell_text(row: RunRow, column: int) -> str:
    summary = row.summary
    if column == ID:
        return str(row.id)
    if column == KIND:
        parent = row.summary.parent_id
        return row.kind if parent is None else f"{row.kind} ⟵ pipeline {parent}"
    if column == MODEL:
        return run_index.short_name(summary.model)
    if column == DATASET:
        return run_index.short_name(summary.dataset)
    if column == STATUS:
        return "starting" if row.status == "created" else row.status
    if column == STEPS:
        return row.steps_text
    if column == STARTED:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.created_at))
    if column == DURATION:
        return run_index.duration_text(row.duration_s)
    if column == METRIC:
        return row.metric_text
    return summary.dir or "–"


def sort_key(row: RunRow, column: int) -> str | float:
    if column == ID:
        return float(row.id)
    if column == STEPS:
        return float(row.summary.step or 0)
    if column == STARTED:
        return row.summary.created_at
    if column == DURATION:
        return row.duration_s
    if column == METRIC:
        return row.metric_value if row.metric_value is not None else float("-inf")
    return cell_text(row, column).lower()


class RunsModel(RowsModel):
    """The rows of the table: one RunRow each. A poll that finds the same runs only repaints (the selection stays)."""

    COLUMNS, NUMERIC_COLUMNS = COLUMNS, NUMERIC_COLUMNS

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(cell_text, sort_key, parent)

    def set_rows(self, rows: list[RunRow]) -> None:
        if [row.id for row in rows] == [row.id for row in self._rows]:
            self._rows = list(rows)
            if rows:
                self.dataChanged.emit(self.index(0, 0), self.index(len(rows) - 1, len(COLUMNS) - 1))
            return
        super().set_rows(rows)

    def find(self, run_id: int) -> RunRow | None:
        return next((row for row in self._rows if row.id == run_id), None)

    def key(self, row: RunRow) -> int:
        return row.id

    def extra(self, row: RunRow, column: int, role: int):
        if role == Qt.ItemDataRole.ToolTipRole:
            stage_of = (f"A stage of pipeline run {row.summary.parent_id}: select it to see its chain"
                        if row.summary.parent_id is not None else None)
            return {KIND: stage_of, MODEL: row.summary.model, DATASET: row.summary.dataset,
                    FOLDER: row.summary.dir}.get(column)
        if role == Qt.ItemDataRole.ForegroundRole and column == STATUS:
            color = status_color(row.status, colors())
            return QtGui.QColor(color) if color else None
        return None


class RunsFilter(QtCore.QSortFilterProxyModel):
    """Keeps the rows of one kind and status (run_index.matches) that are not waiting to be deleted."""

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.kind: str | None = None
        self.status: str | None = None
        self.hidden: set[int] = set()
        self.setSortRole(SORT_ROLE)

    def set_filter(self, kind: str | None, status: str | None) -> None:
        self._refilter(lambda: setattr(self, "kind", kind) or setattr(self, "status", status))

    def set_hidden(self, hidden: set[int]) -> None:
        self._refilter(lambda: setattr(self, "hidden", set(hidden)))

    def _refilter(self, change) -> None:
        """Apply `change` to what is filtered and filter again (Qt 6.10 deprecated invalidateFilter for
        begin/endFilterChange; Qt 6.7–6.9 have only the former)."""
        if hasattr(QtCore.QSortFilterProxyModel, "Direction"):
            self.beginFilterChange()
            change()
            self.endFilterChange(QtCore.QSortFilterProxyModel.Direction.Rows)
        else:
            change()
            self.invalidateFilter()

    def filterAcceptsRow(self, source_row: int, source_parent: QtCore.QModelIndex) -> bool:  # noqa: N802 - Qt override
        row = self.sourceModel().row_at(source_row)
        return row.id not in self.hidden and run_index.matches(row, self.kind, self.status)


class RunsPane(QtWidgets.QWidget):
    """Every run: the table and its actions above, the selected run's dashboard and rollouts below.

    Signals: `duplicate_requested(kind, config)` (fill the Train form), `export_requested(folder, base)`
    (an adapter with its base model, or a checkpoint folder with ""), `evaluation_requested(run)` (a finished
    training run's store row: evaluate its base against it), `eval_opened(run)` (an eval run opened: its
    results belong in the Eval pane), `status_message(text)` (each action's one line, also shown in the pane's
    status line)."""

    POLL_MS = 2000
    UNDO_S = 6.0
    STOP_GRACE_S = TRAINING_GRACE_S

    duplicate_requested = Signal(str, dict)
    export_requested = Signal(str, str)
    evaluation_requested = Signal(dict)
    eval_opened = Signal(dict)
    status_message = Signal(str)

    def __init__(self, store: Store, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.undo_seconds = self.UNDO_S
        self._table = RunTable()
        self._poll: ThreadJob | None = None
        self._poll_again = False
        self._jobs: dict[int, ProcessJob] = {}     # jobs this window started, by run id, while they run
        self._stages: dict[ProcessJob, tuple[int, Callable | None]] = {}   # a job's events are this run's now
        self._select_after: int | None = None      # a run to select once the table has it
        self._shown: tuple[int, str] | None = None  # the run open below the table, and its status then
        self._pending_delete: int | None = None
        self.comparison = None
        self._build()
        self._connect()
        self.timer = QtCore.QTimer(self, interval=self.POLL_MS, timeout=self.refresh)
        self.timer.start()
        self.refresh()

    # layout
    def _build(self) -> None:
        self.title = QtWidgets.QLabel("Runs")
        bold(self.title, 6)
        self.count = QtWidgets.QLabel("Reading the runs…")
        self.count.setObjectName("Muted")
        self.kind_filter = QtWidgets.QComboBox()
        self.kind_filter.addItem("All kinds", None)
        self.status_filter = QtWidgets.QComboBox()
        self.status_filter.addItem("All statuses", None)
        for box, choices in ((self.kind_filter, KIND_CHOICES), (self.status_filter, STATUS_CHOICES)):
            for choice in choices:
                box.addItem(choice, choice)
        self.model = RunsModel(self)
        self.proxy = RunsFilter(self)
        self.proxy.setSourceModel(self.model)
        self.table = self._make_table()
        self.empty = QtWidgets.QLabel("No runs yet. Start one from the Train pane, or run `aha grpo` or "
                                      "`aha distill …` in a terminal: it shows here too.")
        self.empty.setObjectName("Muted")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.table_stack = QtWidgets.QStackedWidget()
        self.table_stack.addWidget(self.table)
        self.table_stack.addWidget(self.empty)
        self.dashboard = RunDashboard()
        self.rollouts = RolloutBrowser()
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(self.dashboard, "Dashboard")
        self.tabs.addTab(self.rollouts, "Rollouts")
        self.chain = PipelineChain()
        self.chain.hide()
        self.overview = QtWidgets.QPlainTextEdit(readOnly=True)
        self.overview.setLineWrapMode(QtWidgets.QPlainTextEdit.LineWrapMode.WidgetWidth)  # an eval's models
        # (base+adapter paths) make a line wider than the window: wrapped, not cut off at its right edge
        self.overview.setPlaceholderText("The pipeline's stages")
        self.below = QtWidgets.QStackedWidget()    # the run's dashboard and rollouts; a pipeline's overview
        self.below.addWidget(self.tabs)
        self.below.addWidget(self.overview)
        self.status = ElidedLabel()
        self.status.setObjectName("Muted")
        self._make_actions()
        self._arrange()
        self.toast = Toast(self)

    def _make_table(self) -> QtWidgets.QTableView:
        table = QtWidgets.QTableView()
        table.setModel(self.proxy)
        table.setSortingEnabled(True)
        table.sortByColumn(ID, Qt.SortOrder.DescendingOrder)
        table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.ExtendedSelection)
        table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        table.setAlternatingRowColors(True)
        table.setShowGrid(False)
        table.setWordWrap(False)
        table.setStyleSheet("QTableView::item { padding: 0 6px; } QHeaderView::section { padding: 2px 6px; }")
        table.setItemDelegateForColumn(FOLDER, ElideMiddleDelegate(table))
        table.verticalHeader().setVisible(False)
        table.verticalHeader().setDefaultSectionSize(28)
        header = table.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(FOLDER, QtWidgets.QHeaderView.ResizeMode.Stretch)
        return table

    def _make_actions(self) -> None:
        def action(text: str, keys: str | QtGui.QKeySequence.StandardKey | None, slot, tip: str) -> QtGui.QAction:
            made = QtGui.QAction(text, self)
            if keys is not None:
                made.setShortcut(QtGui.QKeySequence(keys))
                made.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            made.setToolTip(f"{tip} ({made.shortcut().toString(QtGui.QKeySequence.SequenceFormat.NativeText)})"
                            if keys is not None else tip)
            made.triggered.connect(slot)
            self.addAction(made)
            return made

        self.open_action = action("Open", "Return", self.open_selected, "Show the run's dashboard and rollouts")
        self.stop_action = action("Stop", "Ctrl+Shift+X", self.stop_selected,
                                  "Stop after the current step; the checkpoint is kept and the run can be resumed")
        self.resume_action = action("Resume", "Ctrl+R", self.resume_selected,
                                    "Continue a cancelled or crashed run from its last checkpoint")
        self.duplicate_action = action("Duplicate", "Ctrl+D", self.duplicate_selected,
                                       "Fill the Train form with this run's settings, for a new run")
        self.export_action = action("Export…", "Ctrl+E", self.export_selected,
                                    "Export the run's adapter (or checkpoint) to GGUF in the Export pane")
        self.evaluate_action = action("Evaluate base vs this run", None, self.evaluate_selected,
                                      "Compare this run's final checkpoint with its base model on its held-out data "
                                      "in the Eval pane (pass@1 over k samples)")
        self.evaluate_action.setIconText("Evaluate")     # the toolbar's button: short, the window stays narrow
        self.folder_action = action("Open folder", "Ctrl+Shift+O", self.open_folder_selected,
                                    "Show the run's directory in the file manager")
        self.compare_action = action("Compare", "Ctrl+Shift+C", self.compare_selected,
                                     "Overlay the selected runs' curves and show the settings that differ")
        self.delete_action = action("Delete…", QtGui.QKeySequence.StandardKey.Delete, self.delete_selected,
                                    "Delete the run's record and its directory (Undo is offered for a few seconds)")
        self.actions_in_order = (self.open_action, self.stop_action, self.resume_action, self.duplicate_action,
                                 self.export_action, self.evaluate_action, self.folder_action, self.compare_action,
                                 self.delete_action)
        self.buttons: dict[str, QtWidgets.QToolButton] = {}
        for made in self.actions_in_order:
            button = QtWidgets.QToolButton()
            button.setDefaultAction(made)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            self.buttons[made.text().rstrip("…")] = button

    def _arrange(self) -> None:
        heading = QtWidgets.QHBoxLayout()
        heading.addWidget(self.title)
        heading.addSpacing(8)
        heading.addWidget(self.count, 0, Qt.AlignmentFlag.AlignBottom)
        heading.addStretch()
        heading.addWidget(self.kind_filter)
        heading.addWidget(self.status_filter)
        toolbar = QtWidgets.QHBoxLayout()
        toolbar.setSpacing(2)
        for name, button in self.buttons.items():
            if name in ("Compare", "Delete"):
                toolbar.addSpacing(8)
            toolbar.addWidget(button)
        toolbar.addStretch()
        self.splitter = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(self.table_stack)
        lower = QtWidgets.QWidget()
        column = QtWidgets.QVBoxLayout(lower)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(6)
        column.addWidget(self.chain)
        column.addWidget(self.below, 1)
        self.splitter.addWidget(lower)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(16, 14, 16, 10)
        layout.setSpacing(8)
        layout.addLayout(heading)
        layout.addLayout(toolbar)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.status)

    def _connect(self) -> None:
        self.kind_filter.currentIndexChanged.connect(self._on_filter_changed)
        self.status_filter.currentIndexChanged.connect(self._on_filter_changed)
        self.table.selectionModel().selectionChanged.connect(self._on_selection_changed)
        self.table.doubleClicked.connect(self.open_selected)
        self.table.customContextMenuRequested.connect(self._on_context_menu)
        self.chain.stage_opened.connect(self.select_run)
        self.chain.pipeline_opened.connect(self.select_run)

    # public API
    def refresh(self) -> None:
        """Read the rows again (off the GUI thread); a refresh asked for while one runs follows it."""
        if self._poll is not None and self._poll.is_running():
            self._poll_again = True
            return
        self._poll_again = False
        path, table = self.store.path, self._table
        self._poll = ThreadJob(lambda emit, cancel: read_rows(path, table))   # no parent: may outlive the pane
        self._poll.finished.connect(self._on_rows_read)
        self._poll.failed.connect(self._on_rows_failed)
        self._poll.start()

    def follow_job(self, job: ProcessJob) -> None:
        """Show the job's run, selected and live, as soon as its start event names it; its steps update the
        table at once, its events go to the dashboard and the rollouts, its end is said in the status line."""
        job.event.connect(self._on_job_event)
        job.finished.connect(self._on_job_finished)
        if job.run_id is not None:             # already started
            self._adopt(job)

    def follow_stage(self, job: ProcessJob, run_id: int, unwrap: Callable[[dict], dict] | None = None) -> None:
        """Show `run_id`, a run the job works on now (a stage of `aha demo`: the job's own run is the demo's),
        selected and live: the job's events go to that run's dashboard and rollouts until the next
        follow_stage or the job's end, through `unwrap` (the event as the stage's own command emitted it,
        engine.pipeline.events.inner_event), and Stop on it cancels the job. The job is one `follow_job`
        follows."""
        self._stages[job] = (run_id, unwrap)
        self._jobs[run_id] = job
        self.select_run(run_id)
        self.refresh()

    def select_run(self, run_id: int) -> None:
        """Select the run (and show it below the table); a run the table does not have yet is selected when a
        poll brings it, one the filter hides shows with the filter reset."""
        index = self._proxy_index(run_id)
        if index is None and self.model.find(run_id) is not None and run_id not in self.proxy.hidden:
            self.kind_filter.setCurrentIndex(0)     # filtered out: show every run rather than hide this one
            self.status_filter.setCurrentIndex(0)
            index = self._proxy_index(run_id)
        if index is None:
            self._select_after = run_id
            self.refresh()
            return
        self._select_after = None
        self.table.selectionModel().select(index, QtCore.QItemSelectionModel.SelectionFlag.ClearAndSelect
                                           | QtCore.QItemSelectionModel.SelectionFlag.Rows)
        # Not table.setCurrentIndex: it reads the keyboard's modifiers, and a Ctrl still held (Ctrl+Return
        # started the run) would toggle the row out of the selection just made.
        self.table.selectionModel().setCurrentIndex(index, QtCore.QItemSelectionModel.SelectionFlag.NoUpdate)
        self.table.scrollTo(index)

    def selected_rows(self) -> list[RunRow]:
        """The selected runs, in the table's order."""
        indexes = sorted(self.table.selectionModel().selectedRows(), key=lambda index: index.row())
        return [self.model.row_at(self.proxy.mapToSource(index).row()) for index in indexes]

    def selected_row(self) -> RunRow | None:
        rows = self.selected_rows()
        return rows[0] if rows else None

    def job_for(self, run_id: int) -> ProcessJob | None:
        """The running job of this window that works on the run, if any."""
        job = self._jobs.get(run_id)
        return job if job is not None and job.is_running() else None

    def commit_pending_deletion(self) -> None:
        """Delete now the run whose Undo is still offered (the window is closing)."""
        self.toast.expire()

    # actions
    @Slot()
    def open_selected(self) -> None:
        row = self.selected_row()
        if row is not None:
            self._show_run(row.id, force=True)
            if row.kind == "eval":
                self.eval_opened.emit(self.store.get_run(row.id))

    @Slot()
    def stop_selected(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        job = self.job_for(row.id)
        if job is not None:
            job.cancel()
            self._say(f"Stopping run {row.id} after its current step; its checkpoint is kept.")
            return
        try:
            self._say(run_index.stop_elsewhere(self.store.get_run(row.id)))
        except AhaError as error:
            self._say(str(error), warning=True)
        self.refresh()

    @Slot()
    def resume_selected(self) -> None:
        """`aha runs resume ID` as a job of this window, followed like one started here."""
        row = self.selected_row()
        if row is None:
            return
        try:
            run_index.resume_plan(self.store, str(row.id))      # says at once why it cannot (running, complete…)
        except AhaError as error:
            self._say(str(error), warning=True)
            return
        job = ProcessJob(["runs", "resume", str(row.id)], grace_s=self.STOP_GRACE_S)
        self.follow_job(job)
        job.start()
        self._say(f"Resuming run {row.id}…")

    @Slot()
    def duplicate_selected(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        try:
            kind, config = run_index.duplicate_settings(self.store.get_run(row.id))
        except AhaError as error:
            self._say(str(error), warning=True)
            return
        self.duplicate_requested.emit(kind, config)

    @Slot()
    def export_selected(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        source = run_index.export_source(self.store, self.store.get_run(row.id))
        if source is None:
            self._say(f"Run {row.id} has no adapter or checkpoint yet; it writes one at its first checkpoint "
                      "(save_steps) and at its end.", warning=True)
            return
        self.export_requested.emit(*source)

    @Slot()
    def evaluate_selected(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        if row.kind not in TRAINED_KINDS or row.status != "complete":
            self._say(f"Run {row.id} is {'a' if row.kind[0] not in 'aeiou' else 'an'} {row.kind} run, {row.status}: "
                      "only a complete training run is evaluated against its base.", warning=True)
            return
        self.evaluation_requested.emit(self.store.get_run(row.id))

    @Slot()
    def open_folder_selected(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        folder = row.summary.dir
        if not folder or not Path(folder).is_dir():
            self._say(f"Run {row.id}'s directory {folder or ''} is gone.".replace("  ", " "), warning=True)
            return
        QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(folder))

    @Slot()
    def compare_selected(self) -> None:
        rows = self.selected_rows()
        if len(rows) < 2:
            self._say("Select two or more runs to compare (Ctrl+click or Shift+click).")
            return
        from app.runs.compare import RunComparison

        if self.comparison is not None:
            self.comparison.close()
        self.comparison = RunComparison(self.store, [row.id for row in rows], self)
        self.comparison.show()

    @Slot()
    def delete_selected(self) -> None:
        """Ask; then hide the run and offer Undo; its files and record go when the offer ends."""
        row = self.selected_row()
        if row is None:
            return
        try:
            question = run_index.deletion_question(self.store.get_run(row.id))
        except AhaError as error:
            self._say(str(error), warning=True)
            return
        answer = QtWidgets.QMessageBox.question(
            self, "Delete run?", question, QtWidgets.QMessageBox.StandardButton.Yes
            | QtWidgets.QMessageBox.StandardButton.Cancel, QtWidgets.QMessageBox.StandardButton.Cancel)
        if answer != QtWidgets.QMessageBox.StandardButton.Yes:
            return
        self.toast.expire()                      # an earlier deletion still offering Undo happens now
        run_id = self._pending_delete = row.id
        self.proxy.set_hidden({run_id})
        if self._shown is not None and self._shown[0] == run_id:
            self._clear_shown()
        self._show_count()

        def undo() -> None:
            self._pending_delete = None
            self.proxy.set_hidden(set())
            self._show_count()
            self.select_run(run_id)

        def delete() -> None:
            self._pending_delete = None
            try:
                self._say(run_index.delete_run(self.store, self.store.get_run(run_id)).capitalize() + ".")
            except AhaError as error:
                self._say(str(error), warning=True)
            self.proxy.set_hidden(set())
            self.refresh()

        self.toast.show_message(f"Deleted run {run_id}", "Undo", undo, seconds=self.undo_seconds, on_expire=delete)

    # jobs
    @Slot(object)
    def _on_job_event(self, event: dict) -> None:
        job = self.sender()
        kind = event.get("type")
        if kind == "start" and isinstance(job, ProcessJob) and event.get("run_id") is not None:
            self._adopt(job)
            return
        if job is None or job.run_id is None:
            return
        target, unwrap = self._stages.get(job, (job.run_id, None))
        if self._shown is not None and self._shown[0] == target and kind in FORWARDED_EVENTS:
            if unwrap is not None:
                event = unwrap(event)
            self.dashboard.add_event(event)
            self.rollouts.add_event(event)
        if kind in ("metrics", "artifact"):
            self.refresh()

    def _adopt(self, job: ProcessJob) -> None:
        self._jobs[job.run_id] = job
        self.select_run(job.run_id)
        self.refresh()

    @Slot(object)
    def _on_job_finished(self, outcome: JobOutcome) -> None:
        job = self.sender()
        if isinstance(job, ProcessJob):
            self._stages.pop(job, None)
            for run_id in [run_id for run_id, running in self._jobs.items() if running is job]:
                del self._jobs[run_id]
        self._say(str(outcome), warning=outcome.status not in ("complete", "cancelled"))
        self.refresh()

    # reading rows
    @Slot(object)
    def _on_rows_read(self, rows: list[RunRow]) -> None:
        if self.store.closed:  # a read that finished as the window closed its store: nothing left to show
            return
        selected = [row.id for row in self.selected_rows()]
        self.model.set_rows(rows)
        if self._select_after is not None and self.model.find(self._select_after) is not None:
            self.select_run(self._select_after)
        elif self.model.rowCount() and not self.table.selectionModel().hasSelection() and selected:
            for run_id in selected:
                index = self._proxy_index(run_id)
                if index is not None:
                    self.table.selectionModel().select(index, QtCore.QItemSelectionModel.SelectionFlag.Select
                                                       | QtCore.QItemSelectionModel.SelectionFlag.Rows)
        self._show_count()
        self._update_actions()
        if self._shown is not None:
            row = self.model.find(self._shown[0])
            if row is None:
                self._clear_shown()
            elif row.status != self._shown[1]:
                self._show_run(row.id, force=True)   # started again, or ended: the views follow (or stop)
            else:
                self._update_chain()                 # a pipeline's stages move on while it runs
        if self._poll_again:
            self.refresh()

    @Slot(str)
    def _on_rows_failed(self, message: str) -> None:
        self._say(message, warning=True)

    def _proxy_index(self, run_id: int) -> QtCore.QModelIndex | None:
        for source_row, row in enumerate(self.model.rows()):
            if row.id == run_id:
                index = self.proxy.mapFromSource(self.model.index(source_row, 0))
                return index if index.isValid() else None
        return None

    def _show_count(self) -> None:
        rows = [row for row in self.model.rows() if row.id != self._pending_delete]
        running = sum(row.running for row in rows)
        text = f"{len(rows)} {'run' if len(rows) == 1 else 'runs'}" + (f" · {running} running" if running else "")
        self.count.setText(text)
        self.table_stack.setCurrentWidget(self.table if rows else self.empty)

    # selection
    @Slot()
    def _on_selection_changed(self) -> None:
        self._update_actions()
        rows = self.selected_rows()
        if len(rows) == 1:
            self._show_run(rows[0].id)

    def _show_run(self, run_id: int, force: bool = False) -> None:
        if not force and self._shown is not None and self._shown[0] == run_id:
            return
        try:
            run = self.store.get_run(run_id)
        except AhaError as error:
            self._say(str(error), warning=True)
            return
        self._shown = (run_id, self.model.find(run_id).status if self.model.find(run_id) else run["status"])
        if stage_chain.is_pipeline(run):       # no curves of its own: its overview shows, its stages have theirs
            self.dashboard.clear()
            self.rollouts.clear()
        else:
            self.dashboard.open_run(run)
            self.rollouts.open_run(run)
        self._update_chain()

    def _clear_shown(self) -> None:
        self._shown = None
        self.dashboard.clear()
        self.rollouts.clear()
        self._update_chain()

    def _pipeline_of(self, run_id: int) -> int | None:
        """The pipeline run that `run_id` is, or is a stage of; None: neither."""
        row = self.model.find(run_id)
        if row is None:
            return None
        if row.kind in stage_chain.PIPELINE_KINDS:
            return row.id
        parent = self.model.find(row.summary.parent_id) if row.summary.parent_id is not None else None
        return parent.id if parent is not None and parent.kind in stage_chain.PIPELINE_KINDS else None

    def _update_chain(self) -> None:
        """The chain of the shown run's pipeline, read again (its pipeline.json, one small file), or none; the
        pipeline run itself shows its overview below it, a stage run its dashboard and rollouts."""
        shown = self._shown[0] if self._shown is not None else None
        pipeline = self._pipeline_of(shown) if shown is not None else None
        run = None
        if pipeline is not None:
            try:
                run = self.store.get_run(pipeline)
            except AhaError:
                run = None
        if run is None:
            self.chain.hide()
            self.below.setCurrentWidget(self.tabs)
            return
        chain = stage_chain.read_chain(self.store, run, {row.id: row for row in self.model.rows()})
        self.chain.set_chain(chain, shown)
        self.chain.show()
        if shown == pipeline:
            text = stage_chain.chain_text(chain) + "\n\nClick a stage above to open its run's dashboard and rollouts."
            if self.overview.toPlainText() != text:
                self.overview.setPlainText(text)
            self.below.setCurrentWidget(self.overview)
        else:
            self.below.setCurrentWidget(self.tabs)

    def _update_actions(self) -> None:
        rows = self.selected_rows()
        row = rows[0] if len(rows) == 1 else None
        training = row is not None and row.kind in run_index.RESUME_COMMANDS
        self.open_action.setEnabled(row is not None)
        self.stop_action.setEnabled(row is not None and row.running)
        self.resume_action.setEnabled(row is not None and row.status in RESUMABLE
                                      and (training or row.kind in run_index.GENERATE_KINDS
                                           or row.kind in run_index.EVAL_KINDS))
        self.duplicate_action.setEnabled(row is not None and row.kind in run_index.TRAIN_FORM_KINDS)
        self.export_action.setEnabled(training)
        self.evaluate_action.setEnabled(row is not None and row.kind in TRAINED_KINDS and row.status == "complete")
        self.folder_action.setEnabled(row is not None and bool(row.summary.dir))
        self.compare_action.setEnabled(len(rows) >= 2)
        self.delete_action.setEnabled(row is not None and not row.running)

    @Slot(QtCore.QPoint)
    def _on_context_menu(self, position: QtCore.QPoint) -> None:
        if not self.table.indexAt(position).isValid():
            return
        menu = QtWidgets.QMenu(self)
        for made in self.actions_in_order:
            if made is self.compare_action or made is self.delete_action:
                menu.addSeparator()
            menu.addAction(made)
        menu.popup(self.table.viewport().mapToGlobal(position))

    @Slot()
    def _on_filter_changed(self) -> None:
        self.proxy.set_filter(self.kind_filter.currentData(), self.status_filter.currentData())
        self._update_actions()

    def _say(self, text: str, warning: bool = False) -> None:
        set_style_name(self.status, "Warning" if warning else "Muted")
        self.status.set_full_text(text)
        self.status.setToolTip(text)
        self.status_message.emit(text)
