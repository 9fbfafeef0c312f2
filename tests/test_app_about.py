"""The About dialog, offscreen: the version and the data directory at once, then the facts and checks of the real
`aha doctor --json` child (this machine: CPU-only llama.cpp, no Ollama at a closed loopback port), the Open button,
Copy report, and F1 / the sidebar link in the main window."""

from __future__ import annotations

import pytest

from app.about import CHECKING, AboutDialog
from app.main import MainWindow
from app.qt import QtCore, QtGui, QtWidgets
from engine import __version__
from engine.paths import data_dir
from tests.support.llama_server import free_port
from tests.test_app_chat import activate, press


@pytest.fixture
def no_ollama(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")   # the child inherits it


def test_about_shows_the_version_and_data_dir_then_the_checks(qtbot, no_ollama, monkeypatch, tmp_path):
    import llama_cpp

    dialog = AboutDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.values["Version"].text() == f"Aha {__version__}"
    assert dialog.values["Data directory"].text() == str(data_dir())
    assert dialog.values["llama.cpp"].text() == CHECKING and not dialog.copy.isEnabled()
    with qtbot.waitSignal(dialog.checked, timeout=60_000) as blocker:
        pass
    facts = blocker.args[0]["facts"]
    assert dialog.values["llama.cpp"].text() == f"llama-cpp-python {llama_cpp.__version__} (CPU)"
    assert dialog.values["GPU backend"].text() == "no (CPU only)"
    assert dialog.values["torch"].text().startswith(facts["torch"]["version"])
    assert dialog.form.isRowVisible(dialog.values["torch"])
    text = dialog.checks.toPlainText()
    assert "llama.cpp GPU" in text and "CMAKE_ARGS=\"-DGGML_CUDA=on\"" in text
    assert "start Ollama (ollama serve) or set OLLAMA_HOST" in text     # `ollama serve` set as code
    dialog.copy.click()
    copied = QtWidgets.QApplication.clipboard().text()
    assert copied.startswith("ok      Aha") and "fix: start Ollama" in copied
    opened = []
    monkeypatch.setattr(QtGui.QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    dialog.open_folder.click()
    assert opened == [QtCore.QUrl.fromLocalFile(str(data_dir()))]
    dialog.grab().save(str(tmp_path / "about.png"))
    dialog.close()


def test_f1_and_the_sidebar_link_open_it(qtbot, no_ollama):
    main = MainWindow()
    qtbot.addWidget(main)
    main.show()
    link = next(button for button in main.findChildren(QtWidgets.QToolButton) if button.text() == "About Aha")
    link.click()
    dialog = main.findChild(AboutDialog)
    assert dialog is not None and dialog.isVisible() and dialog.isModal()
    dialog.close()                                   # stops its child, and is deleted
    qtbot.waitUntil(lambda: main.findChild(AboutDialog) is None)
    activate(qtbot, main)
    press(qtbot, main, QtCore.Qt.Key.Key_F1)
    assert main.findChild(AboutDialog) is not None
    main.findChild(AboutDialog).close()
