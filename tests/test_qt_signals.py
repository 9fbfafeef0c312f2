"""Guard against a PySide6 regression that crashes the app: in 6.12.0 every Signal.emit() dropped one
reference to `True`, so a few thousand streamed tokens ended in "Fatal Python error: bool_dealloc"."""

import sys

from app.qt import QtCore, Signal


class Emitter(QtCore.QObject):
    fired = Signal(object)


def test_signal_emit_keeps_refcounts(qapp):
    emitter, received = Emitter(), []
    emitter.fired.connect(received.append)
    before = sys.getrefcount(True)
    for index in range(2000):
        emitter.fired.emit(index)
    assert len(received) == 2000
    assert abs(sys.getrefcount(True) - before) < 10
