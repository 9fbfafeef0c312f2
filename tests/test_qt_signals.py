"""Guard against a PySide6 regression that crashes the app: in 6.12.0 every Signal.emit() dropped one
reference to `True`, so a few thousand streamed tokens ended in "Fatal Python error: bool_dealloc".

On Python ≥ 3.12 `True` is immortal (PEP 683): its reference count never changes, so a dropped reference
can neither crash the app nor show in `sys.getrefcount(True)`. There the first test is skipped with that
reason; the second one (references to the emitted objects themselves) runs everywhere.
"""

import gc
import sys

import pytest

from app.qt import QtCore, Signal


class Emitter(QtCore.QObject):
    fired = Signal(object)


@pytest.mark.skipif(sys.version_info >= (3, 12),
                    reason="True is immortal on Python >= 3.12 (PEP 683): a lost reference cannot crash or be seen")
def test_signal_emit_keeps_the_refcount_of_true(qapp):
    emitter, received = Emitter(), []
    emitter.fired.connect(received.append)
    before = sys.getrefcount(True)
    for index in range(2000):
        emitter.fired.emit(index)
    assert len(received) == 2000
    assert abs(sys.getrefcount(True) - before) < 10


def test_signal_emit_neither_leaks_nor_drops_the_emitted_object(qapp):
    """A streamed event object passes through emit 2000 times: once the receiver lets go, its reference count
    is what it was (a leak would grow it by ~2000, a dropped reference would shrink it and free it early)."""
    emitter, received = Emitter(), []
    emitter.fired.connect(received.append)
    payload = object()
    before = sys.getrefcount(payload)
    for _ in range(2000):
        emitter.fired.emit(payload)
    assert len(received) == 2000 and all(item is payload for item in received)
    received.clear()
    gc.collect()
    assert sys.getrefcount(payload) == before
