"""The message widgets on real replies: each way a reply ends has its own words in the think header and the
stats line (a reply that ends with EOS inside <think> was not stopped by anyone), counts say "1 token", the
think block is as tall as its lines, and its live timer starts at the first thinking token."""

from __future__ import annotations

import re
import threading
import time

import pytest

from app.chat.messages import AssistantMessageWidget
from app.qt import QtCore
from engine.chat.runtime import ChatModel
from tests import test_app_chat
from tests.support import ends_in_thought
from tests.support.scripted_model import QUESTION
from tests.test_app_chat import send, wait_idle, widgets
from tests.test_app_window import visible_lines

window = test_app_chat.window  # the shared fixture: a shown MainWindow using the scripted model, greedy
LOAD_S = 2.0                   # how long the slowed stream keeps the window waiting for its first token


@pytest.fixture(scope="session")
def ends_model(tiny_dir, checkpoint):
    return ends_in_thought.ends_in_thought_gguf(tiny_dir, checkpoint("qwen2"))


def stream_into(reply: AssistantMessageWidget, events) -> dict:
    """What the Chat pane does with a turn's events: start, the deltas, then the done stats."""
    reply.start_stream()
    stats: dict = {}
    for event in events:
        if event.kind == "done":
            stats = event.stats
        else:
            reply.add_delta(event.kind, event.text)
    reply.finish(stats)
    return stats


def body_content_height(reply: AssistantMessageWidget, lines: int) -> int:
    """The height `lines` lines of the think body's text take, with the document's margins."""
    body = reply.think.body
    return body.fontMetrics().lineSpacing() * lines + round(2 * body.document().documentMargin())


def test_a_reply_that_ends_inside_its_thought_says_the_model_ended_it(qtbot, window, ends_model):
    """EOS inside <think>: nobody stopped it, so neither the header nor the stats line says "Stopped"."""
    pane = window.chat
    pane.set_model(str(ends_model))
    send(qtbot, pane, ends_in_thought.QUESTION)
    reply = widgets(pane, AssistantMessageWidget)[-1]
    saved = window.store.get_message(reply.message_id)
    stats = saved.stats
    assert stats["stop_reason"] == "eos" and stats["thinking_unfinished"] and saved.thinking == ends_in_thought.THOUGHT
    assert reply.think.header.text() == (f"The model ended inside its thought · {stats['thinking_s']:.1f} s · "
                                         f"{stats['thinking_tokens']} tokens")
    assert reply.think.expanded and reply.think.text() == ends_in_thought.THOUGHT
    assert "Stopped" not in reply.stats_label.text() and "ended inside" not in reply.stats_label.text()


def test_a_one_token_thought_says_1_token_and_why_it_was_cut(qtbot, scripted_gguf):
    reply = AssistantMessageWidget()
    qtbot.addWidget(reply)
    with ChatModel(scripted_gguf) as model:
        stats = stream_into(reply, model.stream([{"role": "user", "content": QUESTION}], temperature=0, max_tokens=1))
    assert stats["thinking_tokens"] == 1 and stats["stop_reason"] == "max_tokens"
    assert reply.think.header.text() == f"Cut by the token budget while thinking · {stats['thinking_s']:.1f} s · 1 token"
    assert "Cut by" not in reply.stats_label.text()   # said once, in the header


def test_a_reply_stopped_by_you_says_so_once(qtbot, scripted_gguf):
    """Stopped at once (the stop is seen after the first token): the header says who stopped it, the stats
    line does not say it again."""
    reply = AssistantMessageWidget()
    qtbot.addWidget(reply)
    stop = threading.Event()
    stop.set()
    with ChatModel(scripted_gguf) as model:
        stats = stream_into(reply, model.stream([{"role": "user", "content": QUESTION}], cancel=stop))
    assert stats["stop_reason"] == "cancelled" and stats["thinking_tokens"] == 1
    assert reply.think.header.text() == f"Stopped by you while thinking · {stats['thinking_s']:.1f} s · 1 token"
    assert "Stopped" not in reply.stats_label.text()


def test_a_one_line_thought_gets_a_one_line_block_while_streaming_and_when_done(qtbot, ends_model):
    reply = AssistantMessageWidget()
    qtbot.addWidget(reply)
    reply.resize(700, 300)
    reply.show()
    reply.start_stream()
    qtbot.wait(50)
    think = reply.think
    assert not think.body.isVisible()                       # nothing thought yet: the header alone
    assert think.height() <= think.header.height() + 16
    with ChatModel(ends_model) as model:
        events = list(model.stream([{"role": "user", "content": ends_in_thought.QUESTION}], temperature=0))
    reply.add_delta("thinking", "".join(e.text for e in events if e.kind == "thinking"))
    qtbot.waitUntil(lambda: think.text() == ends_in_thought.THOUGHT)
    qtbot.wait(50)
    assert think.live and think.body.isVisible()
    assert abs(think.body.height() - body_content_height(reply, 1)) <= 2
    assert visible_lines(reply.think.body) == [ends_in_thought.THOUGHT.strip()]   # the line itself, not the empty one after it
    reply.finish(events[-1].stats)
    qtbot.wait(50)
    assert think.expanded and think.body.isVisible()         # an unfinished thought stays open
    assert abs(think.body.height() - body_content_height(reply, 1)) <= 2
    assert visible_lines(reply.think.body) == [ends_in_thought.THOUGHT.strip()]
    assert not think.body.verticalScrollBar().isVisible()
    assert think.height() <= think.header.height() + think.body.height() + 16


@pytest.fixture
def slow_first_token(monkeypatch):
    """The real ChatModel.stream, started LOAD_S late: the window waits as it would on a slow model load."""
    original = ChatModel.stream

    def stream(model, messages, **kwargs):
        time.sleep(LOAD_S)
        yield from original(model, messages, **kwargs)
    monkeypatch.setattr(ChatModel, "stream", stream)


def test_the_live_timer_starts_at_the_first_thinking_token(qtbot, window, slow_first_token):
    """While the model is not thinking yet the header reads "Thinking…" without a time; the first time it shows
    starts near zero, and the last live time is the final header's (the wait before the first token is in neither)."""
    pane, seen = window.chat, []

    def look() -> None:
        if pane.streaming is not None and pane.streaming.think.live:
            seen.append(pane.streaming.think.header.text())
    poll = QtCore.QTimer(interval=10, timeout=look)
    poll.start()
    pane.composer.setPlainText(QUESTION)
    pane.send()
    wait_idle(qtbot, pane)
    poll.stop()
    reply = widgets(pane, AssistantMessageWidget)[-1]
    stats = window.store.get_message(reply.message_id).stats
    timed = [float(m.group(1)) for m in (re.fullmatch(r"Thinking… (\d+\.\d) s", text) for text in seen) if m]
    waiting = [text for text in seen if text == "Thinking…"]
    assert len(waiting) >= 10 and set(seen) <= {"Thinking…", *(f"Thinking… {t:.1f} s" for t in timed)}
    assert timed and timed[0] < LOAD_S / 4
    assert abs(timed[-1] - stats["thinking_s"]) < LOAD_S / 4
    assert reply.think.header.text() == f"Thought for {stats['thinking_s']:.1f} s · {stats['thinking_tokens']} tokens"
