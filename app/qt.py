"""The one place the app takes its PySide6 names from: a version check and the shared imports.

App modules, tests and benchmarks write `from app.qt import QtCore, QtGui, QtWidgets, Signal, Slot`; ruff's
banned-api rule (TID251 in pyproject.toml) refuses a PySide6 import anywhere else. Nothing here knows about
Aha itself.
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt, Signal, Slot

MINIMUM_QT = (6, 5)  # colorScheme() for the system light/dark palette; xcb needs libxcb-cursor0 on Linux


def check_qt_version() -> None:
    """Raise a one-line error on a Qt too old for the app."""
    version = tuple(int(part) for part in QtCore.qVersion().split(".")[:2])
    if version < MINIMUM_QT:
        raise RuntimeError(f"Aha needs Qt {'.'.join(map(str, MINIMUM_QT))} or newer, found {QtCore.qVersion()}; "
                           "upgrade PySide6.")


__all__ = ["QtCore", "QtGui", "QtWidgets", "Qt", "Signal", "Slot", "check_qt_version"]
