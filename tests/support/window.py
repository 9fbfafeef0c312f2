"""The main window as the app tests that run real child jobs open it, and a teardown that leaves nothing
behind: no child process, and no modal question (pytest-qt closes the window before fixture teardown, and
closing it with a job running asks first: a failed test would hang on that question)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from app import workers
from app.main import MainWindow
from app.qt import QtWidgets
from engine.store import Store


def stop_children() -> None:
    """Kill every job this process started and wait for each to end."""
    for job in workers.running_jobs():
        job.terminate(kill=True)
        job.process.waitForFinished(10_000)


@contextlib.contextmanager
def open_window(qtbot, monkeypatch) -> Iterator[MainWindow]:
    """A shown 1280×800 MainWindow on its own store; on the way out its jobs stopped, its chat idle, its
    panes' threads shut down and the store closed."""
    def close_anyway(*args):   # the close question of a failed test's window: stop the children, close
        stop_children()
        return QtWidgets.QMessageBox.StandardButton.Close

    monkeypatch.setattr(QtWidgets.QMessageBox, "question", close_anyway)
    store = Store()
    main = MainWindow(store)
    qtbot.addWidget(main)
    main.resize(1280, 800)
    main.show()
    yield main
    stop_children()           # a failed test's child: never left behind
    qtbot.waitUntil(lambda: not workers.running_jobs(), timeout=10_000)   # else closing the window would ask
    qtbot.waitUntil(lambda: not main.chat.session.busy, timeout=30_000)
    main.train.shutdown()
    main.export.shutdown()
    store.close()


@contextlib.contextmanager
def chat_window(qtbot, model) -> Iterator[MainWindow]:
    """A shown 1100×760 MainWindow whose Chat pane has `model` (added to the library) with greedy sampling."""
    from engine.models import Library

    Library().add(model)
    main = MainWindow()
    qtbot.addWidget(main)
    main.resize(1100, 760)
    main.show()
    main.chat.set_model(str(model))
    main.chat.settings.preset.setCurrentText("Greedy (0 · 1.0)")
    yield main
    main.close()
