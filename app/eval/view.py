"""The Eval pane: a form over `aha eval` (models: library GGUFs, runs' checkpoints as `run:ID`, an
OpenAI-compatible endpoint; a dataset; k, max tokens, temperature, top-p, limit), the job as it runs (samples
done, samples/s, the running pass@1 of the model being evaluated), and its results: the side-by-side table
with the differences against the first model, the accuracy-by-thinking-length plot and the per-problem
drill-down.

Run starts `aha eval … --events jsonl` as a ProcessJob (as the Export pane does), Stop cancels it. A past eval
run opens from the Runs pane (`open_run`), read from its eval.json and samples.jsonl. Every number shown is the
runner's; the pane scores nothing.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from app.eval.drilldown import ProblemDrilldown
from app.eval.plot import ThinkingLengthPlot
from app.eval.table import ResultsModel, comparison_notes, make_table, table_rows
from app.qt import Qt, QtCore, QtWidgets, Signal, Slot
from app.widgets import ElidedLabel, bold, set_style_name
from app.workers import JobOutcome, JobStatus, ProcessJob
from engine import run_index
from engine.eval.results import TRAINED_KINDS, EvalResults, base_vs_run, percent, spec_text
from engine.jobs import format_bar, format_seconds
from engine.models import Library
from engine.train.data import TASKS

SPEC_ROLE = Qt.ItemDataRole.UserRole
ENDPOINT_ROLE = Qt.ItemDataRole.UserRole + 1
DEFAULTS = {"k": 8, "max_tokens": 4096, "temperature": 0.6, "top_p": 0.95, "limit": 0}
MAX_TABLE_ROWS = 8
CANCEL_GRACE_S = 120.0     # a cancelled eval ends its current batch of samples first


def _spin(minimum: int, maximum: int, value: int, step: int = 1) -> QtWidgets.QSpinBox:
    spin = QtWidgets.QSpinBox(minimum=minimum, maximum=maximum, singleStep=step)
    spin.setValue(value)
    return spin


def _double(minimum: float, maximum: float, value: float, step: float) -> QtWidgets.QDoubleSpinBox:
    spin = QtWidgets.QDoubleSpinBox(minimum=minimum, maximum=maximum, singleStep=step, decimals=2)
    spin.setValue(value)
    return spin


class FoldingForm(QtWidgets.QWidget):
    """Two parts of a form side by side, or one above the other when the pane is too narrow for both (a 790 px
    window): the pane's minimum width is that of the wider part, not of both."""

    GAP = 18

    def __init__(self, left: QtWidgets.QLayout, right: QtWidgets.QLayout, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.parts = (left, right)
        self.box = QtWidgets.QBoxLayout(QtWidgets.QBoxLayout.Direction.LeftToRight, self)
        self.box.setContentsMargins(0, 0, 0, 0)
        self.box.setSpacing(self.GAP)
        self.box.addLayout(left, 3)
        self.box.addLayout(right, 2)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(max(part.minimumSize().width() for part in self.parts))

    def side_by_side(self) -> bool:
        return self.box.direction() == QtWidgets.QBoxLayout.Direction.LeftToRight

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        needed = sum(part.minimumSize().width() for part in self.parts) + self.GAP
        direction = (QtWidgets.QBoxLayout.Direction.LeftToRight if event.size().width() >= needed
                     else QtWidgets.QBoxLayout.Direction.TopToBottom)
        if direction != self.box.direction():
            self.box.setDirection(direction)
            self.updateGeometry()


class EvalPane(QtWidgets.QWidget):
    """The eval form, its job and its results. `set_models(specs)`, `set_dataset(spec)`, `start()`, `cancel()`,
    `open_run(run)` (a store row of an eval run), `evaluate_run(run)` (a training run: its base against it,
    started at once). `run_started(job)` gives the started ProcessJob to whoever follows runs."""

    run_started = Signal(object)
    status_message = Signal(str)

    def __init__(self, store, library: Library | None = None, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.store, self.library = store, library
        self.job: ProcessJob | None = None
        self.results = EvalResults()
        self.run_dir: Path | None = None
        self.run_id: int | None = None
        self.live: dict[str, dict] = {}             # model label → the running numbers of its progress events
        self._current_model: int | None = None      # the model index of the last sample event
        self._dirty = False
        self._build()
        self._connect()
        self._redraw = QtCore.QTimer(self, interval=400, timeout=self._on_redraw)
        self.refresh_choices()
        self._update_form()
        self.show_results()

    # -- layout ------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.title = QtWidgets.QLabel("Eval")
        bold(self.title, 6)
        self.subtitle = QtWidgets.QLabel("pass@1 over k samples, cons@k and pass@k, as in the R1 paper; the "
                                         "first model is the baseline")
        self.subtitle.setObjectName("Muted")
        self.subtitle.setWordWrap(True)
        self.models_list = QtWidgets.QListWidget()
        self.models_list.setFixedHeight(72)
        self.models_list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.remove_button = QtWidgets.QPushButton("Remove")
        self.first_button = QtWidgets.QPushButton("Make baseline")
        self.first_button.setToolTip("Move the selected model first: every other model is compared with it")
        self.choice_box = QtWidgets.QComboBox()
        self.choice_box.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.choice_box.setMinimumContentsLength(16)
        self.choice_box.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
        self.add_button = QtWidgets.QPushButton("Add")
        self.endpoint_edit = QtWidgets.QLineEdit(placeholderText="http://localhost:11434/v1")
        self.endpoint_edit.setToolTip("An OpenAI-compatible server: Ollama, llama.cpp's server, vLLM")
        self.endpoint_model_edit = QtWidgets.QLineEdit(placeholderText="model name")
        self.endpoint_model_edit.setMaximumWidth(130)
        self.endpoint_button = QtWidgets.QPushButton("Add")
        self.dataset_box = QtWidgets.QComboBox(editable=True)
        self.dataset_box.addItems(list(TASKS))
        self.dataset_box.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.dataset_box.setMinimumContentsLength(12)
        self.dataset_box.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
        self.dataset_box.setToolTip("A built-in task (its held-out problems), or a JSONL/CSV/Parquet file: MATH-500 "
                                    "and AIME (problem/answer), GSM8K (question/answer with #### N)")
        self.dataset_button = QtWidgets.QPushButton("File…")
        self.k_spin = _spin(1, 1024, DEFAULTS["k"])
        self.k_spin.setToolTip("samples per problem (the paper: 64 for AIME)")
        self.tokens_spin = _spin(16, 1 << 17, DEFAULTS["max_tokens"], 256)
        self.tokens_spin.setToolTip("the token budget of a sample, thought included: a thought it cuts is wrong")
        self.temperature_spin = _double(0.0, 2.0, DEFAULTS["temperature"], 0.05)
        self.top_p_spin = _double(0.05, 1.0, DEFAULTS["top_p"], 0.05)
        self.limit_spin = _spin(0, 1 << 20, DEFAULTS["limit"], 10)
        self.limit_spin.setSpecialValueText("all")
        self.limit_spin.setToolTip("evaluate the first N problems only")
        self.seed_spin = _spin(0, 2 ** 31 - 1, 0)
        self.seed_spin.setToolTip("sample i of a problem is drawn with seed + i: the same seed, the same samples")
        self.setup_button = QtWidgets.QToolButton(checkable=True, checked=True, text="Setup")
        self.setup_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.setup_button.setArrowType(Qt.ArrowType.DownArrow)
        self.setup_button.setToolTip("Show or hide the models, the dataset and the sampling settings")
        self.command_line = QtWidgets.QLineEdit(readOnly=True)
        self.command_line.setObjectName("Muted")
        self.run_button = QtWidgets.QPushButton("Run")
        self.run_button.setObjectName("PrimaryButton")
        self.stop_button = QtWidgets.QPushButton("Stop", visible=False)
        self.stop_button.setObjectName("StopButton")
        self.bar = QtWidgets.QProgressBar(minimum=0, maximum=1000, value=0, visible=False)
        self.bar.setTextVisible(False)
        self.bar.setMaximumHeight(8)
        self.detail = ElidedLabel()
        self.detail.setObjectName("Muted")
        self.summary_line = QtWidgets.QLabel()   # no word wrap here: a height-for-width would make the body scroll
        self.results_model = ResultsModel(self)
        self.table = make_table(self.results_model)
        self.notes = QtWidgets.QLabel()          # one line per comparison
        self.notes.setObjectName("Muted")
        for label in (self.summary_line, self.notes):   # a long line is cut at the pane's edge, never widens it
            label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.notes.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plot = ThinkingLengthPlot()
        self.drilldown = ProblemDrilldown()
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(self.plot, "Accuracy by thinking length")
        self.tabs.addTab(self.drilldown, "Problems")
        self._arrange()

    def _arrange(self) -> None:
        models = QtWidgets.QGridLayout()
        models.setContentsMargins(0, 0, 0, 0)
        models.setHorizontalSpacing(6)
        models.setVerticalSpacing(4)
        models.addWidget(QtWidgets.QLabel("Models"), 0, 0, Qt.AlignmentFlag.AlignTop)
        models.addWidget(self.models_list, 0, 1, 1, 3)
        buttons = QtWidgets.QVBoxLayout()
        buttons.addWidget(self.first_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch()
        models.addLayout(buttons, 0, 4)
        models.addWidget(QtWidgets.QLabel("Add"), 1, 0)
        models.addWidget(self.choice_box, 1, 1, 1, 3)
        models.addWidget(self.add_button, 1, 4)
        models.addWidget(QtWidgets.QLabel("Endpoint"), 2, 0)
        models.addWidget(self.endpoint_edit, 2, 1, 1, 2)
        models.addWidget(self.endpoint_model_edit, 2, 3)
        models.addWidget(self.endpoint_button, 2, 4)
        models.setColumnStretch(2, 1)
        data = QtWidgets.QGridLayout()
        data.setContentsMargins(0, 0, 0, 0)
        data.setHorizontalSpacing(6)
        data.setVerticalSpacing(4)
        data.addWidget(QtWidgets.QLabel("Dataset"), 0, 0)
        dataset_row = QtWidgets.QHBoxLayout()
        dataset_row.addWidget(self.dataset_box, 1)
        dataset_row.addWidget(self.dataset_button)
        data.addLayout(dataset_row, 0, 1, 1, 3)
        for row, column, label, widget in ((1, 0, "Samples (k)", self.k_spin), (1, 2, "Max tokens", self.tokens_spin),
                                           (2, 0, "Temperature", self.temperature_spin), (2, 2, "Top-p", self.top_p_spin),
                                           (3, 0, "Problems", self.limit_spin), (3, 2, "Seed", self.seed_spin)):
            data.addWidget(QtWidgets.QLabel(label), row, column)
            data.addWidget(widget, row, column + 1)
        data.setColumnStretch(1, 1)
        data.setColumnStretch(3, 1)
        self.form = FoldingForm(models, data)
        actions = QtWidgets.QHBoxLayout()
        actions.addWidget(self.setup_button)
        actions.addWidget(self.command_line, 1)
        actions.addWidget(self.run_button)
        actions.addWidget(self.stop_button)
        above = QtWidgets.QWidget()
        above_layout = QtWidgets.QVBoxLayout(above)
        above_layout.setContentsMargins(0, 0, 0, 0)
        above_layout.setSpacing(4)
        above_layout.addWidget(self.summary_line)
        above_layout.addWidget(self.table)
        above_layout.addWidget(self.notes)
        body = QtWidgets.QWidget()
        body_layout = QtWidgets.QVBoxLayout(body)
        body_layout.setContentsMargins(0, 0, 0, 0)
        body_layout.setSpacing(6)
        body_layout.addWidget(self.form)
        body_layout.addLayout(actions)
        body_layout.addWidget(self.bar)
        body_layout.addWidget(self.detail)
        body_layout.addWidget(above)
        body_layout.addWidget(self.tabs, 1)
        # A window shorter than the form and the results scrolls them: the pane never sets the window's height
        self.scroll = QtWidgets.QScrollArea(widgetResizable=True, frameShape=QtWidgets.QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(body)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(16, 14, 16, 10)
        layout.setSpacing(6)
        layout.addWidget(self.title)
        layout.addWidget(self.subtitle)
        layout.addWidget(self.scroll, 1)

    def _connect(self) -> None:
        self.add_button.clicked.connect(self._on_add_clicked)
        self.endpoint_button.clicked.connect(self._on_endpoint_clicked)
        self.endpoint_edit.returnPressed.connect(self._on_endpoint_clicked)
        self.remove_button.clicked.connect(self._on_remove_clicked)
        self.first_button.clicked.connect(self._on_first_clicked)
        self.models_list.currentRowChanged.connect(lambda _: self._update_form())
        self.choice_box.currentIndexChanged.connect(lambda _: self._update_form())
        self.dataset_button.clicked.connect(self._on_dataset_file)
        self.dataset_box.currentTextChanged.connect(lambda _: self._update_form())
        for spin in (self.k_spin, self.tokens_spin, self.temperature_spin, self.top_p_spin, self.limit_spin,
                     self.seed_spin):
            spin.valueChanged.connect(lambda _: self._update_form())
        self.setup_button.toggled.connect(self.show_setup)
        self.run_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.cancel)

    # -- the form ------------------------------------------------------------------------------------
    @Slot(bool)
    def show_setup(self, shown: bool) -> None:
        """Show the form, or fold it away (the command line still says what runs) to give the results room."""
        self.setup_button.blockSignals(True)
        self.setup_button.setChecked(shown)
        self.setup_button.blockSignals(False)
        self.setup_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        self.form.setVisible(shown)

    def refresh_choices(self) -> None:
        """The models that can be added: the library's GGUFs and the training runs' final checkpoints."""
        self.choice_box.clear()
        if self.library is not None:
            try:
                entries = self.library.entries()
            except Exception:  # noqa: BLE001 - an unreadable library: the Models pane says why
                entries = []
            for entry in entries:
                self.choice_box.addItem(f"{entry.name} (GGUF)", f"gguf:{entry.path}")
        try:
            runs = [run for run in self.store.list_runs() if run["kind"] in TRAINED_KINDS
                    and run["status"] in ("complete", "cancelled")]
        except Exception:  # noqa: BLE001 - a store being migrated: no runs offered this time
            runs = []
        for run in runs:
            model = run_index.short_name((run.get("config") or {}).get("model"))
            self.choice_box.addItem(f"run {run['id']} · {run['kind']} of {model}", f"run:{run['id']}")
        if not self.choice_box.count():
            self.choice_box.addItem("no GGUF in the library and no finished training run", None)
        self._update_form()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.refresh_choices()               # a model may have been added, a run finished, since

    def models(self) -> list[str]:
        """The chosen model specs, in order (the first is the baseline)."""
        return [self.models_list.item(row).data(SPEC_ROLE) for row in range(self.models_list.count())]

    def endpoint_models(self) -> list[str]:
        """The served model name of each chosen endpoint, in order (one `--model NAME` each)."""
        names = [self.models_list.item(row).data(ENDPOINT_ROLE) for row in range(self.models_list.count())]
        return [name for name in names if name]

    def set_models(self, specs: list[str], endpoint_models: list[str] | None = None) -> None:
        """The models to evaluate; `endpoint_models`: the served name of each openai: spec, in order."""
        self.models_list.clear()
        names = iter(endpoint_models or [])
        for spec in specs:
            self._add_model(spec, next(names, None) if spec.startswith("openai:") else None)
        self._update_form()

    def _add_model(self, spec: str, endpoint_model: str | None = None) -> None:
        same = [row for row in range(self.models_list.count()) if self.models_list.item(row).data(SPEC_ROLE) == spec
                and self.models_list.item(row).data(ENDPOINT_ROLE) == endpoint_model]
        if same:
            self._say(f"{spec_text(spec, endpoint_model)} is already in the list.")
            return
        item = QtWidgets.QListWidgetItem(spec_text(spec, endpoint_model))
        item.setToolTip(spec)
        item.setData(SPEC_ROLE, spec)
        item.setData(ENDPOINT_ROLE, endpoint_model)
        self.models_list.addItem(item)

    def set_dataset(self, spec: str) -> None:
        self.dataset_box.setCurrentText(spec)

    def dataset(self) -> str:
        return self.dataset_box.currentText().strip()

    def eval_args(self) -> list[str]:
        """The `aha eval` arguments the form says (what Run runs, without --events)."""
        args = ["eval", *self.models(), "--dataset", self.dataset(), "-k", str(self.k_spin.value()),
                "--max-tokens", str(self.tokens_spin.value()),
                "--temperature", f"{self.temperature_spin.value():g}", "--top-p", f"{self.top_p_spin.value():g}"]
        if self.limit_spin.value():
            args += ["--limit", str(self.limit_spin.value())]
        if self.seed_spin.value():
            args += ["--seed", str(self.seed_spin.value())]
        for name in self.endpoint_models():
            args += ["--model", name]
        return args

    def problem(self) -> str | None:
        """Why Run cannot start now, in one line; None when it can."""
        if not self.models():
            return "Add a model to evaluate (two or more to compare them)."
        if not self.dataset():
            return "Choose a dataset: a built-in task or a file."
        return None

    def _update_form(self) -> None:
        running = self.is_busy()
        problem = self.problem()
        self.run_button.setEnabled(problem is None and not running)
        self.run_button.setToolTip(problem or "Run the evaluation (Ctrl+Return)")
        self.command_line.setText("aha " + shlex.join(self.eval_args()) if self.models() else "")
        self.command_line.setCursorPosition(0)
        selected = self.models_list.currentRow()
        self.remove_button.setEnabled(selected >= 0 and not running)
        self.first_button.setEnabled(selected > 0 and not running)
        for widget in (self.add_button, self.endpoint_button, self.models_list, self.dataset_box, self.dataset_button,
                       self.k_spin, self.tokens_spin, self.temperature_spin, self.top_p_spin, self.limit_spin,
                       self.seed_spin):
            widget.setEnabled(not running)
        self.add_button.setEnabled(not running and self.choice_box.currentData() is not None)

    @Slot()
    def _on_add_clicked(self) -> None:
        spec = self.choice_box.currentData()
        if spec:
            self._add_model(spec)
            self._update_form()

    @Slot()
    def _on_endpoint_clicked(self) -> None:
        url, name = self.endpoint_edit.text().strip(), self.endpoint_model_edit.text().strip()
        if not url.startswith(("http://", "https://")):
            self._say("An endpoint is a URL: http://host:port/v1 (Ollama: http://localhost:11434/v1).", warning=True)
            return
        if not name:
            self._say("Name the endpoint's model (as the server calls it, e.g. deepseek-r1:7b).", warning=True)
            return
        self._add_model(f"openai:{url}", name)
        self._update_form()

    @Slot()
    def _on_remove_clicked(self) -> None:
        row = self.models_list.currentRow()
        if row >= 0:
            self.models_list.takeItem(row)
            self._update_form()

    @Slot()
    def _on_first_clicked(self) -> None:
        row = self.models_list.currentRow()
        if row > 0:
            self.models_list.insertItem(0, self.models_list.takeItem(row))
            self.models_list.setCurrentRow(0)
            self._update_form()

    @Slot()
    def _on_dataset_file(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Evaluation data", str(Path.home()),
                                                        "Data (*.jsonl *.json *.csv *.parquet)")
        if path:
            self.set_dataset(path)

    # -- the job -------------------------------------------------------------------------------------
    def is_busy(self) -> bool:
        return self.job is not None and self.job.is_running()

    @Slot()
    def start(self) -> ProcessJob | None:
        problem = self.problem()
        if problem is not None or self.is_busy():
            if problem:
                self._say(problem, warning=True)
            return None
        self.results, self.live, self.run_dir, self.run_id = EvalResults(), {}, None, None
        self._current_model = None
        self.show_setup(False)
        self.show_results()
        self.bar.setValue(0)
        self._say("Starting… (loading the first model)")
        job = ProcessJob(self.eval_args(), kind="eval", grace_s=CANCEL_GRACE_S)  # no parent: shutdown() ends it
        job.event.connect(self._on_event)
        job.finished.connect(self._on_finished)
        self.job = job
        job.start()
        self.run_button.setVisible(False)
        self.bar.setVisible(True)
        self.stop_button.setVisible(True)
        self.stop_button.setEnabled(True)
        self._update_form()
        self._redraw.start()
        self.run_started.emit(job)
        return job

    @Slot()
    def cancel(self) -> None:
        if self.is_busy():
            self.stop_button.setEnabled(False)
            self._say("Stopping after the problems in flight; the samples done stay in the run.")
            self.job.cancel()

    @Slot(object)
    def _on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "start":
            self.run_id = event.get("run_id")
            if event.get("run_dir"):
                self.run_dir = Path(event["run_dir"])
                self.results = EvalResults.read(self.run_dir)    # a resumed eval: what it had done
                self._dirty = True
        elif kind == "progress":
            self._show_progress(event)
        elif kind == "sample":
            self._dirty |= self.results.add_sample(event)
            if isinstance(event.get("step"), int):
                self._current_model = event["step"]     # the progress event that follows names its label
        elif kind == "metrics" and self.run_dir is not None:
            # a model is done: eval.json is rewritten, and its records in the file carry the majority
            self.results = EvalResults.read(self.run_dir)
            self._dirty = True
        elif kind == "log" and event.get("level") == "warning":
            self._say(f"⚠ {event.get('message', '')}", warning=True)

    def _show_progress(self, event: dict) -> None:
        done, total = float(event.get("done", 0)), float(event.get("total", 0))
        self.bar.setValue(int(1000 * min(done / total, 1.0)) if total else 0)
        label = str(event.get("model") or "")
        if label and self._current_model is not None:
            self.results.labels.setdefault(self._current_model, label)
        if label:
            self.live[label] = {"pass@1": event.get("accuracy"), "label": label}
            self._dirty = True
        line = format_bar(done, total, float(event.get("elapsed_s", 0.0)), event.get("unit", "samples"), width=0)
        parts = [label] if label else []
        parts.append(" · ".join(line.split(" · ")[1:2]))
        if event.get("accuracy") is not None:
            parts.append(f"pass@1 so far {percent(event['accuracy'])}")
        if event.get("samples_per_s"):
            parts.append(f"{float(event['samples_per_s']):.1f} samples/s")
        if event.get("eta_s"):
            parts.append(f"{format_seconds(float(event['eta_s']))} left")
        self._say(" · ".join(part for part in parts if part))

    @Slot(object)
    def _on_finished(self, outcome: JobOutcome) -> None:
        self._redraw.stop()
        self.bar.setVisible(False)
        self.run_button.setVisible(True)
        self.stop_button.setVisible(False)
        result = outcome.result or {}
        if result.get("run_dir") and self.run_dir is None:
            self.run_dir = Path(result["run_dir"])
        if self.run_dir is not None and self.run_dir.is_dir():
            self.results = EvalResults.read(self.run_dir)     # the file's records replace the events'
        if isinstance(result.get("eval"), dict):
            self.results.set_summary(result["eval"])
        self.live = {}
        self._update_form()
        self.show_results()
        if outcome.status == JobStatus.COMPLETE:
            self._say(f"Eval run {self.run_id} complete." if self.run_id is not None else "Eval complete.")
        elif outcome.status == JobStatus.CANCELLED:
            self._say(f"{outcome} The samples done are kept: Resume in the Runs pane (or `aha runs resume "
                      f"{self.run_id}`) continues it.")
        else:
            self._say(outcome.error or str(outcome), warning=True)

    @Slot()
    def _on_redraw(self) -> None:
        if self._dirty:
            self.show_results()

    # -- results ----------------------------------------------------------------------------------------
    def show_results(self) -> None:
        """The table, the notes, the plot and the drill-down from `results` (and the running numbers)."""
        self._dirty = False
        results = self.results
        live = {index: self.live[label] for index, label in results.labels.items() if label in self.live}
        unknown = [label for label in self.live if label not in results.labels.values()]
        for offset, label in enumerate(unknown):     # a model whose first sample has not come yet
            live[max([*results.labels, *live, -1]) + 1 + offset] = self.live[label]
        self.results_model.k = results.k
        self.results_model.set_rows(table_rows(results, live))
        self._fit_table()
        self.notes.setText(comparison_notes(results))
        self.notes.setVisible(bool(self.notes.text()))
        self.summary_line.setText(self._summary_text())
        self.plot.show_results(results)
        self.drilldown.show_results(results)

    def _fit_table(self) -> None:
        """The table as tall as its rows (2 to MAX_TABLE_ROWS; more scroll): the plot and drill-down get the rest."""
        rows = min(max(self.results_model.rowCount(), 2), MAX_TABLE_ROWS)
        header = self.table.horizontalHeader().sizeHint().height()
        self.table.setFixedHeight(header + rows * self.table.verticalHeader().defaultSectionSize()
                                  + 2 * self.table.frameWidth() + 2)

    def _summary_text(self) -> str:
        summary = self.results.summary
        if not summary and not self.results.problems:
            return "No results yet: add models, choose a dataset and Run; past evals open from the Runs pane."
        sampling = summary.get("sampling") or {}
        parts = [f"<b>{run_index.short_name(summary.get('dataset') or self.dataset())}</b>"]
        if summary.get("problems") is not None:
            parts.append(f"{summary['problems']} problems")
        if summary.get("k") is not None:
            parts.append(f"k = {summary['k']} samples each")
        if sampling:
            parts.append(f"temperature {sampling.get('temperature')}, top-p {sampling.get('top_p')}, "
                         f"{sampling.get('max_tokens')} tokens")
        if self.run_id is not None:
            parts.append(f"run {self.run_id}")
        return " · ".join(parts)

    def open_run(self, run: dict) -> None:
        """Show a past (or running elsewhere) eval run from its files; the form takes its settings."""
        self.run_dir = Path(run["dir"]) if run.get("dir") else None
        self.run_id = run.get("id")
        self.results = EvalResults.read(self.run_dir) if self.run_dir else EvalResults()
        self.live = {}
        summary = self.results.summary
        if not self.is_busy():
            self._fill_form(summary, run.get("config") or {})
        self.show_setup(False)
        self.show_results()
        status = run.get("status", "")
        self._say(f"Eval run {self.run_id} · {status}" + ("" if self.results.problems else
                                                          " · no samples written yet"))

    def _fill_form(self, summary: dict, config: dict) -> None:
        specs = [model.get("spec") for model in summary.get("models") or [] if model.get("spec")]
        specs = specs or [str(spec) for spec in config.get("models") or []]
        served = config.get("model") or []
        served = [served] if isinstance(served, str) else list(served)
        if specs:   # one served name for every endpoint, or one each
            self.set_models(specs, served * len(specs) if len(served) == 1 else served)
        if summary.get("dataset") or config.get("dataset"):
            self.set_dataset(str(summary.get("dataset") or config.get("dataset")))
        sampling = summary.get("sampling") or {}
        for spin, value in ((self.k_spin, summary.get("k")), (self.tokens_spin, sampling.get("max_tokens")),
                            (self.temperature_spin, sampling.get("temperature")),
                            (self.top_p_spin, sampling.get("top_p")), (self.seed_spin, sampling.get("seed"))):
            if isinstance(value, (int, float)):
                spin.setValue(value)
        self._update_form()

    def evaluate_run(self, run: dict) -> ProcessJob | None:
        """"Evaluate base vs this run": the form takes [its base, run:ID] and its dataset, and Run starts."""
        try:
            specs, dataset = base_vs_run(run)
        except ValueError as error:
            self._say(str(error), warning=True)
            return None
        if self.is_busy():
            self._say("An evaluation is running; stop it first.", warning=True)
            return None
        self.set_models(specs)
        if dataset:
            self.set_dataset(dataset)
        return self.start()

    def _say(self, text: str, warning: bool = False) -> None:
        set_style_name(self.detail, "Warning" if warning else "Muted")
        self.detail.set_full_text(text)
        self.detail.setToolTip(text)
        if warning:
            self.status_message.emit(text)
