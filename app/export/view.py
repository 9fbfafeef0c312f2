"""The Export pane: a form over `aha export`, its stages as they run, and the check of what it wrote.

Source (a run's adapter on its base, an adapter folder, or an HF checkpoint folder), type with the expected
file size, merge or adapter-only, output path, context size, the Modelfile as engine.export.ollama writes
it, "Register with Ollama" with a connection check; Export runs `aha export … --check --events jsonl` as a
ProcessJob, Cancel asks it to stop (the engine removes what it had started). What a source is, the sizes,
the command line and the check are the engine's (engine.export.plan, .sizes, .check); the pane only shows them.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from app.qt import Qt, QtCore, QtGui, QtWidgets, Signal, Slot
from app.theme import colors
from app.widgets import bold, set_style_name
from app.workers import JobOutcome, JobStatus, ProcessJob, ThreadJob
from engine.export import plan
from engine.export.ollama import DEFAULT_HOST, DEFAULT_PORT, connection_status, modelfile_text
from engine.export.pipeline import stages as export_stages
from engine.export.sizes import export_types
from engine.jobs import format_bar, format_bytes
from engine.models import Library
from engine.paths import data_dir

DIRECT = ("f32", "f16", "bf16", "q8_0")       # what an adapter-only GGUF can be written as
STATUS_MARKS = {"pass": "✓", "fail": "✗", "note": "•"}
HOST_KEY = "export/ollama_host"


def _settings() -> QtCore.QSettings:
    return QtCore.QSettings(str(data_dir() / "ui.ini"), QtCore.QSettings.Format.IniFormat)


def _folder_row(edit: QtWidgets.QLineEdit, button: QtWidgets.QPushButton) -> QtWidgets.QHBoxLayout:
    row = QtWidgets.QHBoxLayout()
    row.setSpacing(6)
    row.addWidget(edit, 1)
    row.addWidget(button)
    return row


class ExportPane(QtWidgets.QWidget):
    """The export form and its job. `set_source(path, base)` fills the source (the Runs pane's "Export");
    `chat_requested(path)` asks the window to add the GGUF to the library and chat with it; `run_started(job)`
    gives the started ProcessJob (its start event names the export's run) to whoever follows runs."""

    chat_requested = Signal(str)
    run_started = Signal(object)

    def __init__(self, store, library: Library | None = None, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.store, self.library = store, library
        self.source: plan.Source | None = None
        self.job: ProcessJob | None = None
        self.result: dict | None = None             # the done event's result of the last export
        self.stages: list[str] = []
        self._stage_index = -1                      # the stage running (len(stages): all done; -1: none yet)
        self._output_chosen = False                 # the user typed or picked the output: keep it
        self._name_chosen = False
        self._describe_generation = 0
        self._threads: set[ThreadJob] = set()
        self._build()
        self._connect()
        self.refresh_runs()
        self._update_form()

    # -- layout ------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.title = QtWidgets.QLabel("Export")
        bold(self.title, 6)
        self.subtitle = QtWidgets.QLabel("GGUF for llama.cpp and Ollama, checked against the model it came from")
        self.subtitle.setObjectName("Muted")
        self.runs_combo = QtWidgets.QComboBox()
        self.runs_combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.runs_combo.setMinimumContentsLength(40)
        self.runs_combo.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
        self.source_edit = QtWidgets.QLineEdit(placeholderText="adapter folder or Hugging Face checkpoint folder")
        self.source_button = QtWidgets.QPushButton("Folder…")
        self.base_edit = QtWidgets.QLineEdit(placeholderText="base checkpoint folder (for an adapter)")
        self.base_button = QtWidgets.QPushButton("Folder…")
        self.source_line = QtWidgets.QLabel(objectName="Muted", wordWrap=True)
        self.source_line.setMinimumWidth(360)   # a wrapping label in a form row otherwise wraps at a few words
        self.type_combo = QtWidgets.QComboBox()
        self.type_combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.type_combo.setMinimumContentsLength(18)
        self.merge_radio = QtWidgets.QRadioButton("Merge the adapter into the model")
        self.adapter_only_radio = QtWidgets.QRadioButton("Adapter only (GGUF LoRA, applied to the base's GGUF)")
        self.merge_radio.setChecked(True)
        self.output_edit = QtWidgets.QLineEdit()
        self.output_button = QtWidgets.QPushButton("Save as…")
        self.overwrite_box = QtWidgets.QCheckBox("Overwrite an existing file")
        self.ctx_spin = QtWidgets.QSpinBox(minimum=0, maximum=1 << 20, singleStep=1024)
        self.ctx_spin.setSpecialValueText("model's (at most 8192)")
        self.ctx_spin.setToolTip("num_ctx in the Modelfile: the context Ollama gives the model")
        self.register_box = QtWidgets.QCheckBox("Register with Ollama as")
        self.name_edit = QtWidgets.QLineEdit()
        self.host_edit = QtWidgets.QLineEdit(placeholderText=f"{DEFAULT_HOST}:{DEFAULT_PORT}")
        self.host_edit.setText(str(_settings().value(HOST_KEY, "") or os.environ.get("OLLAMA_HOST", "")))
        self.host_edit.setToolTip("as OLLAMA_HOST: host, host:port or http(s)://host:port")
        self.connection_button = QtWidgets.QPushButton("Check connection")
        self.connection_line = QtWidgets.QLabel(objectName="Muted", wordWrap=True, visible=False)
        self.connection_line.setMinimumWidth(360)
        self.check_box = QtWidgets.QCheckBox("Check the export")
        self.check_box.setToolTip("after writing: the template opens <think>, Ollama would report `thinking`, and "
                                  "greedy tokens of three prompts agree with the HF model")
        self.check_box.setChecked(True)
        self.modelfile_view = QtWidgets.QPlainTextEdit(readOnly=True)
        self.modelfile_view.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        self.modelfile_view.setLineWrapMode(QtWidgets.QPlainTextEdit.LineWrapMode.NoWrap)
        self.command_line = QtWidgets.QLineEdit(readOnly=True)
        self.command_line.setObjectName("Muted")
        self.export_button = QtWidgets.QPushButton("Export")
        self.export_button.setObjectName("PrimaryButton")
        self.cancel_button = QtWidgets.QPushButton("Cancel", visible=False)
        self.stage_line = QtWidgets.QLabel(textFormat=Qt.TextFormat.RichText)
        self.bar = QtWidgets.QProgressBar(minimum=0, maximum=1000, value=0)
        self.detail = QtWidgets.QLabel(objectName="Muted", wordWrap=True)
        self.outcome_line = QtWidgets.QLabel(wordWrap=True)
        self.outcome_line.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.check_list = QtWidgets.QListWidget()
        self.check_list.setWordWrap(True)
        self.check_list.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.chat_button = QtWidgets.QPushButton("Chat with it", enabled=False)
        self._arrange()

    def _arrange(self) -> None:
        form = QtWidgets.QFormLayout()
        form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        form.addRow("Run's adapter", self.runs_combo)
        form.addRow("Source", _folder_row(self.source_edit, self.source_button))
        form.addRow("Base", _folder_row(self.base_edit, self.base_button))
        form.addRow("", self.source_line)
        form.addRow("", self.merge_radio)
        form.addRow("", self.adapter_only_radio)
        form.addRow("Type", self.type_combo)
        form.addRow("Output", _folder_row(self.output_edit, self.output_button))
        form.addRow("", self.overwrite_box)
        form.addRow("Context size", self.ctx_spin)
        ollama = QtWidgets.QHBoxLayout()
        ollama.addWidget(self.register_box)
        ollama.addWidget(self.name_edit, 1)
        form.addRow("Ollama", ollama)
        form.addRow("Host", _folder_row(self.host_edit, self.connection_button))
        form.addRow("", self.connection_line)
        form.addRow("", self.check_box)
        left = QtWidgets.QWidget()
        left.setLayout(form)
        preview = QtWidgets.QVBoxLayout()
        preview.setContentsMargins(0, 0, 0, 0)
        heading = QtWidgets.QLabel("Modelfile")
        heading.setObjectName("SectionTitle")
        preview.addWidget(heading)
        preview.addWidget(self.modelfile_view, 1)
        right = QtWidgets.QWidget()
        right.setLayout(preview)
        split = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)
        actions = QtWidgets.QHBoxLayout()
        actions.addWidget(self.stage_line)
        actions.addWidget(self.bar, 1)
        actions.addWidget(self.export_button)
        actions.addWidget(self.cancel_button)
        result = QtWidgets.QHBoxLayout()
        result.addWidget(self.outcome_line, 1)
        result.addWidget(self.chat_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(16, 14, 16, 10)
        layout.setSpacing(8)
        layout.addWidget(self.title)
        layout.addWidget(self.subtitle)
        layout.addWidget(split, 1)
        layout.addWidget(self.command_line)
        layout.addLayout(actions)
        layout.addWidget(self.detail)
        layout.addLayout(result)
        layout.addWidget(self.check_list)
        self.check_list.setMaximumHeight(150)

    def _connect(self) -> None:
        self.runs_combo.activated.connect(self._on_run_chosen)
        self.source_edit.editingFinished.connect(self._on_source_edited)
        self.base_edit.editingFinished.connect(self._on_source_edited)
        self.source_button.clicked.connect(lambda: self._pick_folder(self.source_edit, "Adapter or checkpoint folder"))
        self.base_button.clicked.connect(lambda: self._pick_folder(self.base_edit, "Base checkpoint folder"))
        self.type_combo.currentIndexChanged.connect(self._on_type_changed)
        self.merge_radio.toggled.connect(self._on_mode_changed)
        self.output_edit.textEdited.connect(self._on_output_edited)
        self.output_button.clicked.connect(self._on_output_clicked)
        self.ctx_spin.valueChanged.connect(self._update_form)
        self.register_box.toggled.connect(self._update_form)
        self.name_edit.textEdited.connect(self._on_name_edited)
        self.host_edit.editingFinished.connect(self._on_host_edited)
        self.connection_button.clicked.connect(self.check_connection)
        self.check_box.toggled.connect(self._update_form)
        self.export_button.clicked.connect(self.start_export)
        self.cancel_button.clicked.connect(self.cancel)
        self.chat_button.clicked.connect(self._on_chat_clicked)

    # -- the public face -----------------------------------------------------------------------------
    def set_source(self, path: str, base: str = "") -> None:
        """An adapter folder (with `base`, its base checkpoint) or an HF checkpoint folder."""
        self.source_edit.setText(path)
        self.base_edit.setText(base)
        self._show_chosen_run()
        self._describe()

    def refresh_runs(self) -> None:
        """List the adapters the store's runs saved."""
        self.runs_combo.clear()
        found = plan.run_adapters(self.store)
        self.runs_combo.addItem("— none chosen —" if found else "no run has saved an adapter yet", None)
        for item in found:
            self.runs_combo.addItem(item.label, item)
        self._show_chosen_run()

    def _show_chosen_run(self) -> None:
        """The runs combo names the run whose adapter is the source (one sent from the Runs pane, too)."""
        path = self.source_edit.text().strip()
        self.runs_combo.setCurrentIndex(next(
            (index for index in range(1, self.runs_combo.count()) if path
             and Path(self.runs_combo.itemData(index).adapter) == Path(path)), 0))

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        self.refresh_runs()                         # a run may have finished since the pane was last shown

    def is_busy(self) -> bool:
        return self.job is not None and self.job.is_running()

    def shutdown(self) -> None:
        """The window is closing: stop a running export (the engine removes what it had started)."""
        if self.is_busy():
            self.job.terminate()
            self.job.process.waitForFinished(10_000)
        for thread in self._threads:
            thread.wait(3.0)

    @property
    def out_type(self) -> str:
        return self.type_combo.currentData() or "f16"

    @property
    def adapter_only(self) -> bool:
        return self.source is not None and self.source.adapter is not None and self.adapter_only_radio.isChecked()

    def export_args(self) -> list[str]:
        """The `aha export` arguments the form says (what Export runs, without --events)."""
        register = self.register_box.isChecked() and not self.adapter_only
        return plan.export_args(self.source, self.output_edit.text().strip(), self.out_type,
                                adapter_only=self.adapter_only, num_ctx=self.ctx_spin.value() or None,
                                ollama=self.name_edit.text().strip() if register else None,
                                check=self.check_box.isChecked() and not self.adapter_only,
                                force=self.overwrite_box.isChecked())

    # -- source --------------------------------------------------------------------------------------
    def _pick_folder(self, edit: QtWidgets.QLineEdit, caption: str) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, caption, edit.text() or str(Path.home()))
        if folder:
            edit.setText(folder)
            self._describe()

    @Slot(int)
    def _on_run_chosen(self, index: int) -> None:
        item = self.runs_combo.itemData(index)
        if item is not None:
            self.set_source(item.adapter, item.base)

    @Slot()
    def _on_source_edited(self) -> None:
        if self.source is None or self.source_edit.text().strip() != (self.source.adapter or self.source.checkpoint) \
                or (self.source.adapter and self.base_edit.text().strip() != self.source.checkpoint):
            self._describe()

    def _describe(self) -> None:
        """Read the source on a thread (transformers' AutoConfig takes seconds to import the first time)."""
        path, base = self.source_edit.text().strip(), self.base_edit.text().strip()
        self._describe_generation += 1
        generation = self._describe_generation
        self.source = None
        self.source_line.setText("Reading the source…")
        set_style_name(self.source_line, "Muted")
        self._update_form()
        job = ThreadJob(lambda emit, cancel: plan.describe_source(path, base))
        job.finished.connect(lambda source: self._on_described(generation, source))
        job.failed.connect(lambda message: self._on_describe_failed(generation, message))
        self._start_thread(job)

    def _on_described(self, generation: int, source: plan.Source) -> None:
        if generation != self._describe_generation:
            return
        self.source = source
        if source.adapter is not None and not self.base_edit.text().strip():
            self.base_edit.setText(source.checkpoint)
        self.source_line.setText(source.summary)
        self._fill_types()
        self._update_form()

    def _on_describe_failed(self, generation: int, message: str) -> None:
        if generation != self._describe_generation:
            return
        self.source_line.setText(message)
        set_style_name(self.source_line, "Warning")
        self._update_form()

    def _fill_types(self) -> None:
        """Each type with its expected file size (an adapter-only export: the adapter's own size)."""
        keep = self.out_type
        self.type_combo.blockSignals(True)
        self.type_combo.clear()
        types = DIRECT if self.adapter_only else export_types()
        for key in types:
            size = (plan.adapter_size(self.source.adapter_bytes, key) if self.adapter_only
                    else self.source.sizes.get(key, 0)) if self.source else 0
            self.type_combo.addItem(f"{key}  ·  ≈ {format_bytes(size)}" if size else key, key)
        index = self.type_combo.findData(keep)
        self.type_combo.setCurrentIndex(index if index >= 0 else self.type_combo.findData("f16"))
        self.type_combo.blockSignals(False)

    # -- the rest of the form ---------------------------------------------------------------------------
    @Slot()
    def _on_type_changed(self) -> None:
        self._update_form()

    @Slot(bool)
    def _on_mode_changed(self, _checked: bool) -> None:
        self._fill_types()
        self._update_form()

    @Slot(str)
    def _on_output_edited(self, _text: str) -> None:
        self._output_chosen = True
        self._update_form()

    @Slot()
    def _on_output_clicked(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export to", self.output_edit.text(),
                                                        "GGUF (*.gguf)")
        if path:
            self.output_edit.setText(path if path.endswith(".gguf") else f"{path}.gguf")
            self._output_chosen = True
            self._update_form()

    @Slot(str)
    def _on_name_edited(self, _text: str) -> None:
        self._name_chosen = True
        self._update_form()

    @Slot()
    def _on_host_edited(self) -> None:
        _settings().setValue(HOST_KEY, self.host_edit.text().strip())

    def _update_form(self) -> None:
        """Defaults that follow the choices, the Modelfile preview, the command, what is enabled."""
        source, running = self.source, self.is_busy()
        adapter = source is not None and source.adapter is not None
        self.merge_radio.setVisible(adapter)         # a checkpoint has nothing to merge
        self.adapter_only_radio.setVisible(adapter)
        if source is not None and not self._output_chosen:
            self.output_edit.setText(str(plan.default_output(source, self.out_type, self.adapter_only)))
        output = self.output_edit.text().strip()
        if output and not self._name_chosen:
            self.name_edit.setText(plan.ollama_name(output))
        whole_model = not self.adapter_only
        for widget in (self.register_box, self.check_box, self.ctx_spin):
            widget.setEnabled(whole_model)
        self.name_edit.setEnabled(whole_model and self.register_box.isChecked())
        num_ctx = self.ctx_spin.value() or plan.default_num_ctx(source)
        self.modelfile_view.setPlainText(
            modelfile_text(Path(output).name or "model.gguf", num_ctx=num_ctx) if whole_model
            else "An adapter-only GGUF has no Modelfile: Ollama takes it as ADAPTER beside its base model's FROM.")
        named = not self._registering() or bool(self.name_edit.text().strip())
        ready = source is not None and bool(output) and named and not running
        self.export_button.setEnabled(ready)
        self.command_line.setText("aha " + shlex.join(self.export_args()) if source else "")
        self.command_line.setCursorPosition(0)  # "aha export SOURCE …" in view, not the line's tail
        if not running:
            self.stages = export_stages(self.out_type, adapter=source.adapter if source else None,
                                        adapter_only=self.adapter_only, ollama="x" if self._registering() else None,
                                        check=self._checking())
            self._show_stages(-1)

    def _registering(self) -> bool:
        return self.register_box.isChecked() and not self.adapter_only

    def _checking(self) -> bool:
        return self.check_box.isChecked() and not self.adapter_only

    # -- Ollama ----------------------------------------------------------------------------------------
    @Slot()
    def check_connection(self) -> None:
        """GET /api/version on the host, on a thread; the answer is one line under the field."""
        host = self.host_edit.text().strip() or None
        self.connection_line.setText("Connecting…")
        self.connection_line.setVisible(True)
        set_style_name(self.connection_line, "Muted")
        self.connection_button.setEnabled(False)
        job = ThreadJob(lambda emit, cancel: connection_status(host))
        job.finished.connect(lambda line: self._on_connection(line, ok=True))
        job.failed.connect(lambda line: self._on_connection(line, ok=False))
        self._start_thread(job)

    def _on_connection(self, line: str, ok: bool) -> None:
        self.connection_button.setEnabled(True)
        self.connection_line.setText(("✓ " if ok else "✗ ") + line)
        self.connection_line.setVisible(True)
        set_style_name(self.connection_line, "Muted" if ok else "Warning")

    def _start_thread(self, job: ThreadJob) -> None:
        self._threads = {j for j in self._threads if j.is_running()} | {job}
        job.start()

    # -- the export job ----------------------------------------------------------------------------------
    @Slot()
    def start_export(self) -> ProcessJob | None:
        if self.source is None or self.is_busy():
            return None
        self._update_form()
        self.result = None
        self.check_list.clear()
        self.chat_button.setEnabled(False)
        self.outcome_line.clear()
        self.bar.setValue(0)
        self.detail.setText("Starting…")
        job = ProcessJob(self.export_args(), kind="export")   # no parent: shutdown() ends it with the window
        if self._registering() and self.host_edit.text().strip():
            environment = QtCore.QProcessEnvironment.systemEnvironment()
            environment.insert("OLLAMA_HOST", self.host_edit.text().strip())
            job.process.setProcessEnvironment(environment)
        job.event.connect(self._on_event)
        job.finished.connect(self._on_finished)
        self.job = job
        job.start()
        self.export_button.setVisible(False)
        self.cancel_button.setVisible(True)
        self.cancel_button.setEnabled(True)
        self._update_form()
        self.run_started.emit(job)
        return job

    @Slot()
    def cancel(self) -> None:
        if self.is_busy():
            self.cancel_button.setEnabled(False)
            self.detail.setText("Cancelling… (what was written so far is removed)")
            self.job.cancel()

    @Slot(object)
    def _on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "start" and event.get("stages"):
            self.stages = list(event["stages"])
            self._show_stages(0)
        elif kind == "progress":
            self._show_progress(event)
        elif kind == "log" and event.get("level") == "warning":
            self.detail.setText(f"⚠ {event.get('message', '')}")

    def _show_progress(self, event: dict) -> None:
        stage = event.get("stage", "")
        index = self.stages.index(stage) if stage in self.stages else -1
        self._show_stages(index)
        done, total = float(event.get("done", 0)), float(event.get("total", 0))
        overall = (index + (min(done / total, 1.0) if total else 0)) / max(len(self.stages), 1) if index >= 0 else 0
        self.bar.setValue(int(1000 * overall))
        line = format_bar(done, total, float(event.get("elapsed_s", 0.0)), event.get("unit", ""), width=0)
        self.detail.setText(f"{event.get('label') or stage} · " + " · ".join(line.split(" · ")[1:]))

    def _show_stages(self, current: int) -> None:
        """merge → write → quantize → register → check, the running one in the accent color, done ones ✓."""
        self._stage_index = current
        c = colors()
        parts = []
        for index, name in enumerate(self.stages):
            if index < current:
                parts.append(f"<span style='color:{c.muted}'>✓ {name}</span>")
            elif index == current:
                parts.append(f"<b style='color:{c.accent}'>{name}</b>")
            else:
                parts.append(f"<span style='color:{c.muted}'>{name}</span>")
        self.stage_line.setText(" → ".join(parts))

    @Slot(object)
    def _on_finished(self, outcome: JobOutcome) -> None:
        self.export_button.setVisible(True)
        self.cancel_button.setVisible(False)
        reached = self._stage_index
        self._update_form()                          # enabled again; the stages line then shows where it ended
        self._show_stages(reached)
        output = self.output_edit.text().strip()
        if outcome.status == JobStatus.COMPLETE:
            self.result = outcome.result or {}
            self._show_stages(len(self.stages))
            self.bar.setValue(self.bar.maximum())
            gguf = self.result.get("gguf", output)
            size = Path(gguf).stat().st_size if Path(gguf).is_file() else 0
            self.outcome_line.setText(f"Exported {Path(gguf).name} ({format_bytes(size)}) to {Path(gguf).parent}")
            set_style_name(self.outcome_line, "")
            self.detail.setText("")
            self._show_check(self.result.get("check"))
            self.chat_button.setEnabled(not self.adapter_only and Path(gguf).is_file())
        elif outcome.status == JobStatus.CANCELLED:
            left = plan.leftovers(output)
            self.bar.setValue(0)
            self.detail.setText("")
            self.outcome_line.setText("Export cancelled; nothing was left behind." if not left else
                                      f"Export cancelled; {', '.join(path.name for path in left)} remain in "
                                      f"{Path(output).parent} (the parts that were complete).")
            set_style_name(self.outcome_line, "Muted")
        else:
            self.detail.setText("")
            self.outcome_line.setText(outcome.error or str(outcome))
            set_style_name(self.outcome_line, "Warning")

    def _show_check(self, check: dict | None) -> None:
        self.check_list.clear()
        if not check:
            return
        c = colors()
        failed = sum(item["status"] == "fail" for item in check["items"])
        header = QtWidgets.QListWidgetItem(
            "Check passed" + (" (notes below)" if any(i["status"] == "note" for i in check["items"]) else "")
            if check["passed"] else f"Check failed: {failed} of {len(check['items'])} checks")
        font = header.font()
        font.setBold(True)
        header.setFont(font)
        header.setForeground(QtGui.QColor(c.text if check["passed"] else c.danger))
        self.check_list.addItem(header)
        for item in check["items"]:
            row = QtWidgets.QListWidgetItem(f"{STATUS_MARKS[item['status']]} {item['name']}: {item['message']}")
            row.setData(Qt.ItemDataRole.UserRole, item["status"])
            row.setForeground(QtGui.QColor(c.danger if item["status"] == "fail" else
                                           c.muted if item["status"] == "note" else c.text))
            self.check_list.addItem(row)

    def check_lines(self) -> list[tuple[str, str]]:
        """(status, text) of each line the check list shows, below its header (for tests and screenshots)."""
        items = [self.check_list.item(index) for index in range(1, self.check_list.count())]
        return [(item.data(Qt.ItemDataRole.UserRole), item.text()) for item in items]

    @Slot()
    def _on_chat_clicked(self) -> None:
        gguf = (self.result or {}).get("gguf")
        if gguf:
            self.chat_requested.emit(str(gguf))

