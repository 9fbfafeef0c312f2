"""A 300 tokens/s stream into the Chat pane: the text is shown as it streams, in batches (≤ 30 document
updates a second, not one per token), the event loop keeps running, and the final text comes right after
`done`. Times here are loose bounds that end a hang on a loaded machine; the measured lateness, and the
comparison with a widget that takes every token as it comes, are bench/ui_stream.py's."""

from __future__ import annotations

import time

from app.chat.messages import FLUSH_MS
from app.chat.view import ChatPane
from app.qt import Qt, QtCore
from app.workers import ThreadJob
from engine.store import Store
from tests.support.synthetic_stream import synthetic_stream

RATE, SECONDS = 300, 4.0


def test_a_300_tokens_per_second_stream_is_shown_in_batches_as_it_streams(qtbot, tmp_path):
    pane = ChatPane(Store(tmp_path / "aha.db"))
    qtbot.addWidget(pane)
    pane.resize(1100, 760)
    pane.show()
    pane._start_stream()
    widget = pane.streaming
    updates = []  # (time, kind) of every change to the thought's or the answer's document
    for kind, owner, name in (("thinking", widget.think, "append"), ("answer", widget.answer, "append_plain")):
        original = getattr(owner, name)

        def counted(text, original=original, kind=kind):
            updates.append((time.perf_counter(), kind))
            return original(text)
        setattr(owner, name, counted)

    ticks: list[float] = []
    timer = QtCore.QTimer(interval=10, timerType=Qt.TimerType.PreciseTimer, timeout=lambda: ticks.append(time.perf_counter()))
    marks: dict = {}
    shown: dict = {}

    def on_finished(stats):
        shown["at"] = time.perf_counter()
        shown["text"] = widget.answer.toPlainText()

    job = ThreadJob(lambda emit, cancel: synthetic_stream(emit, cancel, marks, RATE, SECONDS), pane)
    job.event.connect(pane.session._on_event)
    pane.session.finished.connect(on_finished)  # after the pane's own slot: sees what the pane shows
    started = time.perf_counter()
    timer.start()
    job.start()
    qtbot.waitUntil(lambda: "at" in shown)
    timer.stop()

    assert len(updates) <= (SECONDS + 1) * 1000 / FLUSH_MS, len(updates)  # batched: not one per token (1200)
    thinking_times = [at for at, kind in updates if kind == "thinking"]
    assert thinking_times[0] - started < SECONDS / 2 and len(thinking_times) > 10  # live, not all at the end
    assert {kind for _, kind in updates} == {"thinking", "answer"}
    gaps = sorted(later - earlier for earlier, later in zip(ticks, ticks[1:], strict=False))
    assert gaps[int(len(gaps) * 0.99)] < 0.5  # the event loop never stalled for half a second
    assert shown["at"] - marks["done_at"] < 1.0
    assert "final answer is" in shown["text"] and "print(1275)" in shown["text"]
    assert widget.think.header.text().startswith("Thought for")
