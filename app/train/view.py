"""The Train pane: set up a GRPO or distillation job, check it, and start it as a child process.

Method, model (discovered checkpoints, LoRA / QLoRA / full, device), dataset (preview, column mapping, the
rendered first prompt), rewards (weights, custom files, "Check rewards"), and every other setting in a form
generated from the config's metadata; presets, Save/Load TOML, "Show command" (the exact `aha …` line) and
Start, which launches that same command as an `app.workers.ProcessJob` and emits `run_started(job)`.

The pane holds no domain logic: settings ↔ command ↔ TOML is engine.train.commands, presets are
engine.train.presets, and devices, checkpoints, dataset previews and the reward check are `aha` children.

Without the train extra (the chat-only install, and the standalone bundle, which leaves it out) the pane
says so at its top with the command that adds training (training_note), and Start is off for the methods
that need torch; trace generation from a GGUF or OpenAI teacher still runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from app.qt import Qt, QtGui, QtWidgets, Signal
from app.train.dataset import DatasetSection
from app.train.form import SettingsForm
from app.train.inspector import Inspector
from app.train.model import ModelSection
from app.train.rewards import RewardsSection
from app.widgets import set_style_name
from app.workers import TRAINING_GRACE_S, JobStatus, ProcessJob
from engine import doctor
from engine.errors import AhaError
from engine.store import Store
from engine.train import commands
from engine.train.presets import PRESETS, preset

MODEL_SETTINGS = ("model", "use_peft", "load_in_4bit", "device")
DATASET_SETTINGS = ("dataset", "prompt_column", "answer_column", "system_prompt")
REWARD_SETTINGS = ("rewards", "reward_weights", "reward")
PRESET_PROMPT = "Apply a preset…"
WITHOUT_TORCH = ("generate",)  # the methods that run without the train extra (a GGUF or OpenAI teacher)


def training_note(torch_found: bool, install: str, python: str = sys.executable) -> str | None:
    """None when torch is there; else what the Train pane says: training needs the train extra, and the
    command that adds it for this kind of install (engine.doctor.train_command: "bundle" and "pipx" install
    the pipx package with the extra, "pip" installs the extra beside)."""
    if torch_found:
        return None
    command = doctor.train_command({"install": install, "python": {"executable": python}})
    if install == "bundle":
        return ("Training is not part of the standalone app (it needs torch, transformers, peft and bitsandbytes, "
                f"the train extra). Install Aha's pip package with it instead and run `aha` from there: {command}. "
                "Trace generation from a GGUF or OpenAI teacher works here.")
    return ("Training needs the train extra (torch, transformers, peft, bitsandbytes), which this install does "
            f"not have. Add it, then restart Aha: {command}. Trace generation from a GGUF or OpenAI teacher "
            "works without it.")


def detected_training_note() -> str | None:
    """training_note for this process: is torch importable, and how was Aha installed (sys.frozen: the bundle)."""
    return training_note(importlib.util.find_spec("torch") is not None,
                         doctor.install_kind(sys.prefix, bool(getattr(sys, "frozen", False))))


def section_settings(kind: str) -> set[str]:
    """The settings of `kind` that the model, dataset and rewards sections edit (the form shows the rest)."""
    names = {info.name for info in commands.settable(kind)}
    owned = set(DATASET_SETTINGS) | set(REWARD_SETTINGS)
    if kind != "generate":
        owned |= set(MODEL_SETTINGS)
    if kind in ("distill-sft", "distill-kd"):  # their prompt/answer columns are the traces' (in the form)
        owned -= {"prompt_column", "answer_column"}
    return names & owned


def defaults(kind: str) -> dict[str, Any]:
    """{name: default} of every setting `kind`'s command takes."""
    return {info.name: info.default for info in commands.settable(kind)}


class TrainPane(QtWidgets.QWidget):
    run_started = Signal(object)     # the started ProcessJob
    status_message = Signal(str)

    def __init__(self, store: Store, parent: QtWidgets.QWidget | None = None, *,
                 note: str | None | bool = True):
        """`note`: the missing-training note to show (None: training is there); True detects it here."""
        super().__init__(parent)
        self.store = store
        self.training_missing = detected_training_note() if note is True else note or None
        self.jobs: list[ProcessJob] = []
        self.check_job: ProcessJob | None = None
        self.inspector = Inspector(self)
        self.forms: dict[str, SettingsForm] = {}
        self._kind = "grpo"

        self.method = QtWidgets.QComboBox(objectName="method")
        for kind, job in commands.KINDS.items():
            self.method.addItem(job.label, kind)
        self.method.currentIndexChanged.connect(self._on_method)
        self.presets = QtWidgets.QComboBox(objectName="presets")
        self.presets.addItem(PRESET_PROMPT)
        for item in PRESETS:
            self.presets.addItem(item.name)
            self.presets.setItemData(self.presets.count() - 1, item.description, Qt.ItemDataRole.ToolTipRole)
        self.presets.activated.connect(self._on_preset)
        for combo, letters in ((self.method, 10), (self.presets, 10)):   # the pane fits a narrow window
            combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(letters)
        load = QtWidgets.QPushButton("Load…")
        load.setToolTip("load settings from a TOML file")
        load.clicked.connect(self._on_load)
        save = QtWidgets.QPushButton("Save…")
        save.setToolTip("save these settings as a TOML file (`aha … --config FILE` reads it)")
        save.clicked.connect(self._on_save)
        show = QtWidgets.QPushButton("Show command", objectName="show_command")
        show.clicked.connect(self.show_command)
        self.start_button = QtWidgets.QPushButton("Start", objectName="PrimaryButton")
        self.start_button.clicked.connect(self.start)
        bar = QtWidgets.QHBoxLayout()
        title = QtWidgets.QLabel("Train", objectName="SectionTitle")
        bar.addWidget(title)
        bar.addWidget(QtWidgets.QLabel("Method"))
        bar.addWidget(self.method)
        bar.addWidget(self.presets)
        bar.addStretch()
        for button in (load, save, self.start_button):
            bar.addWidget(button)

        self.model = ModelSection()
        self.model.changed.connect(self._on_model_changed)
        self.dataset = DatasetSection()
        self.dataset.preview_requested.connect(self._on_preview_requested)
        self.rewards = RewardsSection()
        self.rewards.check_requested.connect(self.check_rewards)
        left_body = QtWidgets.QWidget()
        left = QtWidgets.QVBoxLayout(left_body)
        for section in (self.model, self.dataset, self.rewards):
            left.addWidget(section)
        left.addStretch()
        self.form_stack = QtWidgets.QStackedWidget()
        splitter = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(_scrolled(left_body))
        splitter.addWidget(_scrolled(self.form_stack))
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.widget(1).setMinimumWidth(360)
        splitter.setSizes([700, 500])

        self.command_line = QtWidgets.QLineEdit(objectName="command_line", readOnly=True)
        self.command_line.setPlaceholderText("Show command: the `aha …` line Start runs, to repeat it in a terminal")
        copy = QtWidgets.QPushButton("Copy")
        copy.clicked.connect(lambda: QtGui.QGuiApplication.clipboard().setText(self.command_line.text()))
        command_row = QtWidgets.QHBoxLayout()
        command_row.addWidget(self.command_line, 1)
        command_row.addWidget(show)
        command_row.addWidget(copy)
        self.status = QtWidgets.QLabel(objectName="Muted", wordWrap=True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.note = QtWidgets.QLabel(self.training_missing or "", objectName="Warning", wordWrap=True)
        self.note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # the command, to copy
        self.note.setVisible(self.training_missing is not None)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.note)
        layout.addWidget(splitter, 1)
        layout.addLayout(command_row)
        layout.addWidget(self.status)
        self._show_kind("grpo")
        self._shown = False          # discovery and previews wait for the pane to be shown (a chat-only
        self._pending_preview: list[str] | None = None  # session never starts those children)

    # -- public API --------------------------------------------------------------------------------
    def kind(self) -> str:
        return self._kind

    def set_kind(self, kind: str) -> None:
        if kind not in commands.KINDS:
            raise AhaError(f"unknown run kind {kind!r}: use one of {', '.join(commands.KINDS)}")
        self.method.setCurrentIndex(self.method.findData(kind))

    def values(self) -> dict[str, Any]:
        """The settings as the form holds them (those that parse), for the current method."""
        kind = self._kind
        values = self.forms[kind].values()
        owned = section_settings(kind)
        sections = {**self.model.values(), **self.dataset.values(), **self.rewards.values(kind)}
        values.update({name: value for name, value in sections.items() if name in owned})
        return values

    def set_values(self, values: dict[str, Any]) -> None:
        kind = self._kind
        owned = section_settings(kind)
        self.forms[kind].set_values({name: value for name, value in values.items() if name not in owned})
        mine = {name: value for name, value in values.items() if name in owned}
        self.model.set_values(mine)
        self.dataset.set_values(mine)
        self.rewards.set_values(kind, mine)
        self.dataset.set_model(self.model.model_path())

    def load_settings(self, kind: str, config: dict) -> None:
        """Fill the form from a run's saved config ("duplicate"): its settings, without its run directory."""
        try:
            values = commands.saved_values(kind, config)
        except AhaError as error:
            self._say(f"cannot duplicate that run: {error}", warning=True)
            return
        self.set_kind(kind)
        self.set_values({**defaults(kind), **values})
        self._say(f"settings of a {commands.KINDS[kind].label} run loaded; Start runs them again")

    def command_args(self) -> list[str]:
        """The `aha` args Start launches (without --events); AhaError for a value that does not parse or fit."""
        errors = self.forms[self._kind].errors()
        if errors:
            raise AhaError(next(iter(errors.values())))
        return commands.command_args(self._kind, self.values())

    def show_command(self) -> str | None:
        try:
            line = commands.shell_line(self.command_args())
        except AhaError as error:
            self._say(str(error), warning=True)
            return None
        self.command_line.setText(line)
        self.command_line.setCursorPosition(0)  # "aha grpo --model …" in view, not the line's tail
        self._say("the command Start runs; Copy puts it on the clipboard")
        return line

    def start(self) -> ProcessJob | None:
        """Validate the settings and launch the job; one line in the status when they cannot run."""
        if not self.can_start():
            self._say(self.training_missing, warning=True)
            return None
        try:
            args = self.command_args()
            commands.make_config(self._kind, self.values()).validate()
        except AhaError as error:
            self._say(str(error), warning=True)
            return None
        self.command_line.setText(commands.shell_line(args))
        self.command_line.setCursorPosition(0)
        job = ProcessJob(args, self, grace_s=TRAINING_GRACE_S)   # Stop waits for the step and its checkpoint
        job.finished.connect(lambda outcome, job=job: self._on_job_finished(job, outcome))
        self.jobs.append(job)
        job.start()
        self._say(f"started: {commands.shell_line(args)}")
        self.run_started.emit(job)
        return job

    def save_toml(self, path: str | Path) -> None:
        self.command_args()  # refuses a value that does not parse, before anything is written
        Path(path).write_text(commands.to_toml(self._kind, self.values()), encoding="utf-8")
        self._say(f"settings saved to {path}")

    def load_toml(self, path: str | Path) -> None:
        path = Path(path)
        try:
            kind, values = commands.from_toml(path.read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError) as error:
            self._say(f"cannot read {path}: {error}", warning=True)
            return
        except AhaError as error:
            self._say(str(error), warning=True)
            return
        self.set_kind(kind)
        self.set_values({**defaults(kind), **values})  # from the defaults, as `aha … --config FILE` starts
        self._say(f"settings loaded from {path}")

    def apply_preset(self, name: str) -> None:
        item = preset(name)
        values = item.values(self._kind)
        if not values:
            self._say(f"the preset {name} has no settings for {commands.KINDS[self._kind].label}", warning=True)
            return
        self.set_values(values)
        self._say(f"preset applied: {item.description}")

    def check_rewards(self) -> ProcessJob | None:
        """`aha rewards check` on the current model, dataset and rewards, as a ProcessJob."""
        try:
            args = self.reward_check_args()
        except AhaError as error:
            self.rewards.show_check_failed(str(error))
            return None
        if self.check_job is not None and self.check_job.is_running():
            self.check_job.cancel()
        job = self.check_job = ProcessJob(args, self)
        job.finished.connect(lambda outcome, job=job: self._on_check_finished(job, outcome))
        self.rewards.show_check_running("scoring…" if "--completion" in args else "sampling and scoring…")
        job.start()
        return job

    def reward_check_args(self) -> list[str]:
        """The `aha rewards check` args for the form's model, dataset and rewards: the typed completions, or
        sampling with the run's device, completion length, temperature and top_p."""
        values = self.values()
        names, weights = self.rewards.chosen()
        if not names:
            raise AhaError("tick at least one reward to check")
        args = ["rewards", "check", "--rewards", *names]
        if self.rewards.weighted:
            args += ["--reward-weights", *map(repr, weights)]
        if values.get("dataset"):
            args += ["--dataset", values["dataset"]]
        for name in ("prompt_column", "answer_column", "system_prompt"):
            if values.get(name):
                args += [f"--{name.replace('_', '-')}", values[name]]
        typed = self.rewards.typed_completions()
        model = self.model.model_path() if self._kind != "generate" else ""
        if model:
            args += ["--model", model]
        for text in typed:
            args += ["--completion", text]
        if not typed:
            if not model:
                raise AhaError("pick a model to sample from, or type completions to score")
            form = self.forms[self._kind].values()
            args += ["--device", values.get("device") or "auto"]
            for name in ("max_completion_length", "temperature", "top_p"):  # generate's are its teacher's
                if self._kind == "grpo" and form.get(name) is not None:
                    args += [f"--{name.replace('_', '-')}", repr(form[name]) if isinstance(form[name], float) else str(form[name])]
        return args

    def can_start(self) -> bool:
        """Start can run this method here: the train extra is installed, or the method needs no torch."""
        return self.training_missing is None or self._kind in WITHOUT_TORCH

    def refresh_discovery(self) -> None:
        """Ask `aha inspect devices` and `aha inspect checkpoints` again (children; the window never waits).
        Without torch there are no training devices to ask about: the device line says so."""
        if self.training_missing is None:
            self.inspector.request("devices", ["devices"], self.model.set_devices, self.model.set_devices_failed)
        else:
            self.model.set_devices_failed("torch is not installed (the train extra)")
        self.inspector.request("checkpoints", ["checkpoints"], self.model.set_checkpoints,
                               self.model.set_checkpoints_failed)

    def idle(self) -> bool:
        """No inspection, reward check or job of this pane is running."""
        return (self.inspector.idle() and not (self.check_job and self.check_job.is_running())
                and not any(job.is_running() for job in self.jobs))

    def shutdown(self) -> None:
        """Stop the inspections and the reward check (training jobs are the window's to keep or stop)."""
        self.inspector.stop()
        if self.check_job is not None and self.check_job.is_running():
            self.check_job.terminate(kill=True)

    # -- slots -------------------------------------------------------------------------------------
    def _on_method(self, _index: int) -> None:
        """Another method: the model, dataset and rewards sections keep what they hold (the same settings in
        every kind); each kind has its own form, so a setting of the same name but another meaning (GRPO's
        sampling temperature, KD's softening one) is never carried over."""
        kind = self.method.currentData()
        if kind != self._kind:
            self._show_kind(kind)

    def _show_kind(self, kind: str) -> None:
        self._kind = kind
        if kind not in self.forms:
            owned = section_settings(kind)
            self.forms[kind] = SettingsForm([info for info in commands.settable(kind) if info.name not in owned])
            self.form_stack.addWidget(self.forms[kind])
        self.form_stack.setCurrentWidget(self.forms[kind])
        self.start_button.setEnabled(self.can_start())
        self.model.setVisible(kind != "generate")
        self.rewards.setVisible(kind in ("grpo", "generate"))
        self.rewards.set_weighted(kind == "grpo")
        owned = section_settings(kind)
        for name, widget in (("prompt_column", self.dataset.prompt_column), ("answer_column", self.dataset.answer_column),
                             ("system_prompt", self.dataset.system_prompt)):
            widget.setEnabled(name in owned)
        # Trace generation's answer column is unset by default (then "answer" when the accuracy reward needs it).
        answer = self.dataset.answer_column
        if kind == "generate" and answer.currentText() == "answer":
            self.dataset.set_values({"answer_column": ""})
        elif kind != "generate" and not answer.currentText():
            self.dataset.set_values({"answer_column": "answer"})
        sft = kind in ("distill-sft", "distill-kd")
        self.dataset.setTitle("Held-out dataset (and a built-in task's traces)" if sft else "Dataset")


    def _on_preset(self, index: int) -> None:
        if index > 0:
            self.apply_preset(self.presets.itemText(index))
        self.presets.setCurrentIndex(0)

    def _on_model_changed(self) -> None:
        self.dataset.set_model(self.model.model_path())

    def _on_preview_requested(self, args: list[str]) -> None:
        if not self._shown:
            self._pending_preview = args
            return
        self.inspector.request("dataset", args, self.dataset.show_preview, self.dataset.show_failure)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if not self._shown:
            self._shown = True
            self.refresh_discovery()
            if self._pending_preview is not None:
                self._on_preview_requested(self._pending_preview)
            else:
                self.dataset.request_preview()

    def _on_load(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Load settings", "", "TOML (*.toml);;All files (*)")
        if path:
            self.load_toml(path)

    def _on_save(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save settings", f"{self._kind}.toml", "TOML (*.toml)")
        if not path:
            return
        try:
            self.save_toml(path)
        except (AhaError, OSError) as error:
            self._say(f"cannot save {path}: {error}", warning=True)

    def _on_job_finished(self, job: ProcessJob, outcome) -> None:
        self._say(str(outcome), warning=outcome.status in (JobStatus.ERROR, JobStatus.CRASHED))

    def _on_check_finished(self, job: ProcessJob, outcome) -> None:
        if job is not self.check_job:
            return
        if outcome.status == JobStatus.COMPLETE and outcome.result:
            self.rewards.show_report(outcome.result)
        else:
            self.rewards.show_check_failed(f"reward check: {outcome.error or outcome}")

    def _say(self, text: str, warning: bool = False) -> None:
        self.status.setText(text)
        set_style_name(self.status, "Warning" if warning else "Muted")
        self.status_message.emit(text)


def _scrolled(widget: QtWidgets.QWidget) -> QtWidgets.QScrollArea:
    area = QtWidgets.QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
    area.setWidget(widget)
    return area
