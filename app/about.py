"""The About dialog: Aha's version, llama.cpp's build and whether it has a GPU backend, torch and CUDA when the
train extra is installed, the data directory (a button opens it), and the doctor's checks with their fixes.

The version and the data directory show at once; the rest comes from `aha doctor --json` run as a child
(app.train.inspector's InspectCommand), so the window never imports torch and never waits for Ollama. The words
are engine.doctor's (`about` for the rows, `lines` for the checks); this module only lays them out.
"""

from __future__ import annotations

import html
import re

from app import theme
from app.qt import Qt, QtCore, QtGui, QtWidgets, Signal
from app.train.inspector import InspectCommand
from engine import __version__, doctor
from engine.paths import data_dir

CHECKING = "checking…"
MARKS = {doctor.OK: "✓", doctor.WARNING: "!", doctor.MISSING: "✗"}
OK_GREEN = "#16a34a"


def _with_code(text: str) -> str:
    """Escaped text whose `backticked` parts are set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def checks_html(found: list[doctor.Line], colors: theme.Colors) -> str:
    """The doctor's lines as a table: a coloured mark, what, the detail, and under it the fix."""
    tint = {doctor.OK: OK_GREEN, doctor.WARNING: colors.warning, doctor.MISSING: colors.danger}
    rows = []
    for line in found:
        rows.append(f"<tr><td style='color:{tint[line.mark]}; font-weight:700; padding-right:6px'>{MARKS[line.mark]}"
                    f"</td><td style='font-weight:600; padding-right:10px; white-space:nowrap'>{html.escape(line.what)}"
                    f"</td><td>{_with_code(line.detail)}</td></tr>")
        if line.fix:
            command = f"<br><code style='color:{colors.text}'>{html.escape(line.command)}</code>" if line.command else ""
            rows.append(f"<tr><td></td><td></td><td style='color:{colors.muted}; padding-bottom:6px'>"
                        f"Fix: {_with_code(line.fix)}{':' if line.command else ''}{command}</td></tr>")
    return f"<table cellspacing='0' cellpadding='2'>{''.join(rows)}</table><p>{html.escape(doctor.summary(found))}</p>"


class AboutDialog(QtWidgets.QDialog):
    """Version, build facts and the data directory on top; the doctor's checks below, run on opening and again
    with "Run checks again". `checked(report)` is emitted when a report is shown."""

    checked = Signal(object)

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent, windowTitle="About Aha")
        self.resize(760, 700)
        self.report: dict | None = None
        self.command: InspectCommand | None = None
        self.values: dict[str, QtWidgets.QLabel] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(self._header())
        self.form = QtWidgets.QFormLayout()
        self.form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        for label, value in (("Version", f"Aha {__version__}"), ("llama.cpp", CHECKING), ("GPU backend", CHECKING),
                             ("torch", CHECKING)):
            self.values[label] = self._value_label(value)
            self.form.addRow(f"{label}:", self.values[label])
        self.values["Data directory"] = self._value_label(str(data_dir()))
        self.values["Data directory"].setWordWrap(False)   # a path breaks anywhere: one line, beside its button
        self.open_folder = QtWidgets.QPushButton("Open", toolTip="Open the data directory in the file manager")
        self.open_folder.clicked.connect(self.open_data_dir)
        folder = QtWidgets.QHBoxLayout()
        folder.addWidget(self.values["Data directory"])
        folder.addWidget(self.open_folder)
        folder.addStretch(1)
        self.form.addRow("Data directory:", folder)
        layout.addLayout(self.form)
        title = QtWidgets.QLabel("What this machine can do", objectName="SectionTitle")
        layout.addWidget(title)
        self.checks = QtWidgets.QTextBrowser(openLinks=False)
        layout.addWidget(self.checks, 1)
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        self.rerun = buttons.addButton("Run checks again", QtWidgets.QDialogButtonBox.ButtonRole.ActionRole)
        self.copy = buttons.addButton("Copy report", QtWidgets.QDialogButtonBox.ButtonRole.ActionRole)
        self.rerun.clicked.connect(self.run_checks)
        self.copy.clicked.connect(self.copy_report)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        app = QtCore.QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._stop)
        self.run_checks()

    def _header(self) -> QtWidgets.QHBoxLayout:
        header = QtWidgets.QHBoxLayout()
        icon = QtWidgets.QLabel()
        icon.setPixmap(QtWidgets.QApplication.windowIcon().pixmap(56, 56))
        header.addWidget(icon, 0, Qt.AlignmentFlag.AlignTop)
        words = QtWidgets.QVBoxLayout()
        words.addWidget(QtWidgets.QLabel("Aha", objectName="EmptyTitle"))
        words.addWidget(QtWidgets.QLabel("A workbench for DeepSeek-R1-style reasoning models: chat, GRPO, "
                                         "distillation and GGUF export.", wordWrap=True))
        header.addLayout(words, 1)
        return header

    @staticmethod
    def _value_label(text: str) -> QtWidgets.QLabel:
        label = QtWidgets.QLabel(text, wordWrap=True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    # -- the doctor --------------------------------------------------------------------------------
    def run_checks(self) -> None:
        """Start `aha doctor --json` (a child); the rows and the checks fill in when it answers."""
        self._stop()
        self.rerun.setEnabled(False)
        self.copy.setEnabled(False)
        self.checks.setHtml("<p>Checking this machine: GPU, llama.cpp, torch, QLoRA, Ollama, disk…</p>")
        self.command = InspectCommand([], self, command="doctor")
        self.command.finished.connect(self._on_report)
        self.command.failed.connect(self._on_failed)
        self.command.start()

    def _on_report(self, report: dict) -> None:
        self.command = None
        self.report = report
        for label, value in doctor.about(report["facts"]):
            if label in self.values and label != "Data directory":
                self.values[label].setText(value)
        self.form.setRowVisible(self.values["torch"], report["facts"]["torch"].get("installed", False))
        self.checks.setHtml(checks_html(self.lines(), theme.colors()))
        self.rerun.setEnabled(True)
        self.copy.setEnabled(True)
        self.checked.emit(report)

    def _on_failed(self, message: str) -> None:
        self.command = None
        for label in ("llama.cpp", "GPU backend", "torch"):
            if self.values[label].text() == CHECKING:
                self.values[label].setText("unknown")
        self.checks.setHtml(f"<p style='color:{theme.colors().danger}'>The checks failed: {html.escape(message)}</p>")
        self.rerun.setEnabled(True)

    def lines(self) -> list[doctor.Line]:
        return [doctor.Line(**line) for line in (self.report or {}).get("lines", [])]

    def copy_report(self) -> None:
        """The checks as `aha doctor` prints them, on the clipboard (for a bug report)."""
        if self.report:
            QtWidgets.QApplication.clipboard().setText(doctor.report_text(self.lines()))

    def open_data_dir(self) -> None:
        QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(self.values["Data directory"].text()))

    def _stop(self) -> None:
        if self.command is not None:
            self.command.stop()
            self.command.deleteLater()
            self.command = None

    def done(self, result: int) -> None:  # noqa: D401 - Qt override: a closed dialog leaves no child behind
        self._stop()
        super().done(result)


def show_about(parent: QtWidgets.QWidget | None = None) -> AboutDialog:
    """Open the About dialog (window-modal), deleted when closed."""
    dialog = AboutDialog(parent)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.open()
    return dialog


def about_button(window: QtWidgets.QWidget) -> QtWidgets.QToolButton:
    """The sidebar's "About Aha" link; F1 anywhere in the window opens the same dialog."""
    button = QtWidgets.QToolButton(text="About Aha", objectName="LinkButton",
                                   toolTip="Version, llama.cpp and torch builds, the data directory, and what this "
                                           "machine can do (F1)")
    button.setCursor(Qt.CursorShape.PointingHandCursor)
    button.clicked.connect(lambda: show_about(window))
    QtGui.QShortcut(QtGui.QKeySequence("F1"), window, activated=lambda: show_about(window))
    return button
