"""`aha inspect … --json` as an asynchronous child (QProcess): the pane asks for devices, checkpoints or a
dataset's preview and gets `finished(object)` (the JSON document) or `failed(str)` (the command's one-line
error), so the window never blocks and never imports torch. A newer request of the same name replaces an
older one still running."""

from __future__ import annotations

import json
import sys

from app.qt import QtCore, Signal
from app.workers import aha_command


class InspectCommand(QtCore.QObject):
    """One `aha inspect ARGS --json` child; ends in exactly one of `finished(object)` or `failed(str)`."""

    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, args: list[str], parent: QtCore.QObject | None = None, command: str = "inspect"):
        super().__init__(parent)
        self.args = [command, *args, "--json"]  # command: any `aha` command with --json (the About dialog's doctor)
        self.process = QtCore.QProcess(self)
        program, *prefix = aha_command()       # `python -m engine.cli`, or the bundle's own executable
        self.process.setProgram(program)
        self.process.setArguments([*prefix, *self.args])
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)
        self._ended = False

    def start(self) -> InspectCommand:
        self.process.start()
        return self

    def is_running(self) -> bool:
        return not self._ended

    def stop(self) -> None:
        """Kill the child and wait for it (no signal is emitted after this)."""
        self._ended = True
        if self.process.state() != QtCore.QProcess.ProcessState.NotRunning:
            self.process.kill()
            self.process.waitForFinished(3000)

    def _on_finished(self, exit_code: int, exit_status: QtCore.QProcess.ExitStatus) -> None:
        if self._ended:
            return
        self._ended = True
        out = bytes(self.process.readAllStandardOutput()).decode("utf-8", errors="replace")
        err = bytes(self.process.readAllStandardError()).decode("utf-8", errors="replace")
        if exit_status == QtCore.QProcess.ExitStatus.NormalExit and exit_code == 0:
            try:
                self.finished.emit(json.loads(out))
                return
            except ValueError:
                pass
        lines = [line for line in err.splitlines() if line.strip()]
        message = lines[-1].removeprefix("aha: error: ") if lines else f"`aha {' '.join(self.args)}` failed (exit {exit_code})"
        self.failed.emit(message)

    def _on_error(self, error: QtCore.QProcess.ProcessError) -> None:
        if error == QtCore.QProcess.ProcessError.FailedToStart and not self._ended:
            self._ended = True
            self.failed.emit(f"could not start {sys.executable}: {self.process.errorString()}")


class Inspector(QtCore.QObject):
    """Named inspections ("devices", "checkpoints", "dataset"): `request(name, args, on_done, on_failed)`
    starts one, stopping the previous of that name; `idle()` says none runs; `stop()` ends them all."""

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self._running: dict[str, InspectCommand] = {}
        app = QtCore.QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.stop)

    def request(self, name: str, args: list[str], on_done, on_failed) -> InspectCommand:
        old = self._running.pop(name, None)
        if old is not None:
            old.stop()
            old.deleteLater()
        command = InspectCommand(args, self)
        command.finished.connect(lambda result: self._ended(name, command, on_done, result))
        command.failed.connect(lambda message: self._ended(name, command, on_failed, message))
        self._running[name] = command
        return command.start()

    def idle(self) -> bool:
        return not self._running

    def stop(self) -> None:
        for command in self._running.values():
            command.stop()
        self._running.clear()

    def _ended(self, name: str, command: InspectCommand, callback, payload) -> None:
        if self._running.get(name) is command:
            del self._running[name]
        command.deleteLater()
        callback(payload)
