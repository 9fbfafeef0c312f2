"""The model part of the Train form: the checkpoint (the discovered ones, with architecture, parameters and
size, or a folder picked with Browse…), LoRA / QLoRA / full fine-tuning (QLoRA disabled, with the reason,
where `aha inspect devices` found no CUDA or no bitsandbytes) and the device with what was detected.

Values in and out as settings: model, use_peft, load_in_4bit, device. Discovery results come from the pane
(InspectCommand), as dicts of engine.train.inspect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.qt import QtWidgets, Signal
from engine.jobs import format_bytes
from engine.train.inspect import parameters_text

MODES = {"LoRA": (True, False), "QLoRA (4-bit)": (True, True), "Full fine-tuning": (False, False)}


def checkpoint_label(info: dict) -> str:
    """ "tiny-org/tiny-r1 — Qwen2ForCausalLM · 1.5B · 3.1 GB" """
    return (f"{info['name']} — {info['architecture']} · {parameters_text(info['parameters'])} parameters · "
            f"{format_bytes(info['size_bytes'])}")


class ModelSection(QtWidgets.QGroupBox):
    changed = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__("Model", parent)
        self._infos: dict[str, dict] = {}
        form = QtWidgets.QFormLayout(self)
        form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.checkpoint = QtWidgets.QComboBox(objectName="checkpoint")
        self.checkpoint.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.checkpoint.setPlaceholderText("pick a Hugging Face checkpoint folder")
        self.checkpoint.setToolTip("model: the Hugging Face checkpoint folder to train (config.json, *.safetensors, "
                                   "tokenizer); the HF cache's and the runs' are listed")
        self.checkpoint.currentIndexChanged.connect(self._on_checkpoint)
        browse = QtWidgets.QPushButton("Browse…")
        browse.clicked.connect(self._on_browse)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.checkpoint, 1)
        row.addWidget(browse)
        self.checkpoint_info = QtWidgets.QLabel("looking for checkpoints…", objectName="Muted", wordWrap=True)
        self.mode = QtWidgets.QComboBox(objectName="mode")
        self.mode.addItems(MODES)
        self.mode.currentIndexChanged.connect(self.changed)
        self.mode_note = QtWidgets.QLabel(objectName="Muted", wordWrap=True)
        self.mode_note.hide()
        self.device = QtWidgets.QComboBox(objectName="device")
        self.device.addItem("auto", "auto")
        self.device.addItem("CPU", "cpu")
        self.device.setToolTip("device: auto (CUDA when present, else CPU), CPU or one CUDA GPU")
        self.device.currentIndexChanged.connect(self.changed)
        self.detected = QtWidgets.QLabel("detecting devices…", objectName="Muted", wordWrap=True)
        form.addRow("Checkpoint", row)
        form.addRow("", self.checkpoint_info)
        form.addRow("Training", self.mode)
        form.addRow("", self.mode_note)
        form.addRow("Device", self.device)
        form.addRow("", self.detected)

    # -- what discovery found ----------------------------------------------------------------------
    def set_devices(self, info: dict) -> None:
        for gpu in info["cuda"]:
            if self.device.findData(f"cuda:{gpu['index']}") < 0:
                self.device.addItem(f"CUDA {gpu['index']}: {gpu['name']}", f"cuda:{gpu['index']}")
        self.detected.setText(f"detected: {info['summary']}")
        qlora = self.mode.model().item(list(MODES).index("QLoRA (4-bit)"))
        qlora.setEnabled(info["qlora"]["available"])
        if not info["qlora"]["available"]:
            qlora.setToolTip(info["qlora"]["reason"])
            self.mode_note.setText(f"QLoRA unavailable: {info['qlora']['reason']}")
            self.mode_note.show()
        else:
            self.mode_note.hide()

    def set_devices_failed(self, message: str) -> None:
        self.detected.setText(f"could not detect devices: {message}")

    def set_checkpoints(self, infos: list[dict]) -> None:
        current = self.model_path()
        self._infos = {info["path"]: info for info in infos}
        self.checkpoint.blockSignals(True)
        self.checkpoint.clear()
        for info in infos:
            self.checkpoint.addItem(checkpoint_label(info), info["path"])
        self.checkpoint.blockSignals(False)
        if current:
            self.set_model(current)
        elif infos:
            self.checkpoint.setCurrentIndex(-1)
        self._describe()
        if not infos and not current:
            self.checkpoint_info.setText("no checkpoints in the HF cache or the runs: Browse… for a folder")

    def set_checkpoints_failed(self, message: str) -> None:
        self.checkpoint_info.setText(f"could not list checkpoints: {message}")

    # -- values ------------------------------------------------------------------------------------
    def model_path(self) -> str:
        return self.checkpoint.currentData() or ""

    def set_model(self, path: str) -> None:
        index = self.checkpoint.findData(path)
        if index < 0 and path:
            self.checkpoint.addItem(path, path)
            index = self.checkpoint.count() - 1
        self.checkpoint.setCurrentIndex(index)

    def values(self) -> dict[str, Any]:
        use_peft, load_in_4bit = MODES[self.mode.currentText()]
        return {"model": self.model_path(), "use_peft": use_peft, "load_in_4bit": load_in_4bit,
                "device": self.device.currentData()}

    def set_values(self, values: dict[str, Any]) -> None:
        if "model" in values:
            self.set_model(values["model"] or "")
        if "use_peft" in values or "load_in_4bit" in values:
            use_peft = values.get("use_peft", True)
            four_bit = values.get("load_in_4bit", False)
            mode = "Full fine-tuning" if not use_peft else "QLoRA (4-bit)" if four_bit else "LoRA"
            self.mode.setCurrentText(mode)
        if "device" in values:
            device = values["device"] or "auto"
            if self.device.findData(device) < 0:
                self.device.addItem(device, device)
            self.device.setCurrentIndex(self.device.findData(device))

    def _on_browse(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Hugging Face checkpoint folder")
        if folder:
            self.set_model(folder)

    def _on_checkpoint(self, _index: int) -> None:
        self._describe()
        self.changed.emit()

    def _describe(self) -> None:
        path = self.model_path()
        info = self._infos.get(path)
        if info is not None:
            self.checkpoint_info.setText(f"{info['architecture']} · {parameters_text(info['parameters'])} parameters · "
                                         f"{format_bytes(info['size_bytes'])} · {info['path']}")
        elif path:
            self.checkpoint_info.setText(f"folder {Path(path).name} (not in the HF cache or the runs)")
        else:
            self.checkpoint_info.setText("")
