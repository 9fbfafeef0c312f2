"""The Models pane's Serve toggle: a real `aha serve` child on a free loopback port over a library holding the tiny
Qwen2 f16 GGUF (or the scripted one), real HTTP requests to it (urllib), the request log fed by its events (tokens,
thinking, a stream cut by the thinking budget), Save chats into the store, stop (also before it listens) and window
close that leave no process behind, and a port already in use as one line with the toggle off. Plus
engine.request_log's words.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.request
from datetime import datetime

import pytest

from app.main import MainWindow
from app.models.serve import DURATION, MODEL, STATUS, TIME, TOKENS, ServeState
from app.models.view import ModelsPane
from app.qt import Qt, QtWidgets
from app.workers import JobStatus
from engine.models import Library
from engine.request_log import DEFAULT_PORT, RequestRecord, base_url, is_request, ready_url, served_models
from engine.serve import server
from engine.store import Store
from tests.support.llama_server import free_port
from tests.support.scripted_model import QUESTION

CHAT_EVENT = {"v": 1, "type": "log", "message": "POST /v1/chat/completions 200", "level": "info", "event": "request",
              "method": "POST", "path": "/v1/chat/completions", "model": "r1-1.5b", "status": 200, "stream": True,
              "prompt_tokens": 1024, "completion_tokens": 2048, "reasoning_tokens": 1900, "duration_s": 12.34}


def test_a_request_event_reads_as_its_log_cells():
    record = RequestRecord.from_event(CHAT_EVENT, datetime(2026, 12, 2, 9, 5, 3))
    assert is_request(CHAT_EVENT) and not record.failed
    assert (record.time_text(), record.request_text(), record.model, record.status_text(), record.tokens_text(),
            record.duration_text()) == ("09:05:03", "POST /v1/chat/completions", "r1-1.5b", "200 · stream",
                                        "1,024 → 2,048 · 1,900 thinking", "12 s")
    assert record.line == "POST /v1/chat/completions 200" and not record.cancelled
    listing = RequestRecord.from_event({"type": "log", "event": "request", "method": "GET", "path": "/v1/models",
                                        "status": 200, "stream": False, "duration_s": 0.004})
    assert (listing.model, listing.status_text(), listing.tokens_text(), listing.duration_text()) == \
        (None, "200", "—", "4 ms")
    no_thinking = RequestRecord.from_event({**CHAT_EVENT, "stream": False, "reasoning_tokens": 0, "status": 404})
    assert no_thinking.tokens_text() == "1,024 → 2,048" and no_thinking.status_text() == "404" and no_thinking.failed
    assert [RequestRecord.from_event({**CHAT_EVENT, "duration_s": seconds}).duration_text()
            for seconds in (0.0001, 0.47, 0.9996, 75)] == ["< 1 ms", "470 ms", "1.0 s", "1:15"]
    gone = RequestRecord.from_event({**CHAT_EVENT, "status": None, "completion_tokens": None})
    assert gone.failed and gone.status_text() == "— · stream" and gone.tokens_text() == "1,024 → ? · 1,900 thinking"
    budget = RequestRecord.from_event({**CHAT_EVENT, "reasoning_tokens": 256, "budget_ended_thought": True})
    assert budget.budget_ended and budget.tokens_text() == "1,024 → 2,048 · 256 thinking (budget)"
    left = RequestRecord.from_event({**CHAT_EVENT, "stop_reason": "cancelled"})
    assert left.failed and left.cancelled and left.status_text() == "200 · stream · cancelled"


def test_the_ready_event_gives_the_openai_base_url():
    ready = {"type": "log", "message": "listening", "event": "ready", "url": "http://127.0.0.1:11435"}
    assert ready_url(ready) == "http://127.0.0.1:11435/v1" == base_url("http://127.0.0.1:11435/v1/")
    assert ready_url({**ready, "event": "request"}) is None and ready_url({"type": "progress"}) is None
    assert not is_request(ready) and served_models({**ready, "models": ["a", "b"]}) == ["a", "b"]
    assert DEFAULT_PORT == server.DEFAULT_PORT == 11435      # the pane's default is aha serve's


# --- the real server ---------------------------------------------------------------------------------------------

@pytest.fixture
def library(gguf_file, tmp_path) -> Library:
    """The library of this test's data directory, holding a copy of the tiny Qwen2 f16 GGUF."""
    folder = tmp_path / "models"
    folder.mkdir()
    library = Library()
    library.add(shutil.copy(gguf_file("qwen2", "f16"), folder / "tiny-qwen2.gguf"))
    return library


@pytest.fixture
def pane(qtbot, library):
    widget = ModelsPane(library)
    qtbot.addWidget(widget, before_close_func=lambda w: w.shutdown())
    widget.resize(1200, 760)
    widget.show()
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.model.rowCount() == 1)
    return widget


def http(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def start_serving(qtbot, panel, port: int) -> int:
    """Toggle on, wait for the URL; returns the child's pid."""
    panel.port.setValue(port)
    panel.toggle.click()
    assert panel.toggle.isChecked() and panel.state == ServeState.STARTING and not panel.port.isEnabled()
    qtbot.waitUntil(lambda: panel.state != ServeState.STARTING, timeout=60_000)
    assert panel.state == ServeState.SERVING, panel.message.text()
    return panel.job.process.processId()


def test_serve_toggle_shows_the_url_logs_each_request_with_its_tokens_and_stops(qtbot, pane):
    panel, port = pane.serve, free_port()
    assert panel.isVisible() and panel.port.value() == DEFAULT_PORT and not panel.toggle.isChecked()
    pid = start_serving(qtbot, panel, port)
    url = f"http://127.0.0.1:{port}/v1"
    assert panel.url == url and panel.url_label.text() == url and panel.copy_button.isVisible()
    assert panel.toggle.text() == "Serving" and panel.message.text() == "Serving 1 model · chats not saved"
    panel.copy_button.click()
    assert QtWidgets.QApplication.clipboard().text() == url and panel.copy_button.text() == "Copied"
    qtbot.waitUntil(lambda: panel.copy_button.text() == "Copy URL")
    assert panel.message.text() == "Serving 1 model · chats not saved"

    model = http(f"{url}/models")["data"][0]["id"]
    reply = http(f"{url}/chat/completions", {"model": model, "max_tokens": 12,
                                              "messages": [{"role": "user", "content": "What is 2 + 3?"}]})
    qtbot.waitUntil(lambda: len(panel.records()) == 2)
    chat, listing = panel.records()                          # newest first
    usage = reply["usage"]
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    assert (listing.method, listing.path, listing.status, listing.tokens_text()) == ("GET", "/v1/models", 200, "—")
    assert (chat.method, chat.path, chat.model, chat.status, chat.stream) == \
        ("POST", "/v1/chat/completions", model, 200, False)
    assert (chat.prompt_tokens, chat.completion_tokens, chat.reasoning_tokens or 0) == \
        (usage["prompt_tokens"], usage["completion_tokens"], reasoning)
    assert chat.duration_s is not None and chat.duration_s > 0
    cells = [panel.log_model.index(0, column).data() for column in (TIME, MODEL, STATUS, TOKENS, DURATION)]
    assert cells == [chat.time_text(), model, "200", chat.tokens_text(), chat.duration_text()]
    assert cells[3].startswith(f"{usage['prompt_tokens']} → {usage['completion_tokens']}")
    assert panel.log.isVisible()

    panel.toggle.click()                                     # off: cancel, the child ends done{cancelled}
    assert panel.state == ServeState.STOPPING and not panel.toggle.isEnabled()
    qtbot.waitUntil(lambda: panel.state == ServeState.OFF, timeout=30_000)
    assert not panel.toggle.isChecked() and panel.toggle.text() == "Serve" and panel.port.isEnabled()
    assert panel.message.text() == "Stopped · 2 requests in the log." and panel.message.objectName() == "Muted"
    assert not panel.copy_button.isVisible() and len(panel.records()) == 2   # the log stays
    qtbot.waitUntil(lambda: not is_alive(pid))
    assert refuses_connections(port)
    assert panel.outcome.status == JobStatus.CANCELLED and not panel.outcome.forced
    assert panel.outcome.result == {"url": url, "requests": 2}


def test_a_port_in_use_is_one_line_and_the_toggle_goes_back_off(qtbot, pane):
    panel = pane.serve
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        panel.port.setValue(port)
        panel.toggle.click()
        qtbot.waitUntil(lambda: panel.state == ServeState.OFF, timeout=60_000)
    message = panel.message.text()
    assert str(port) in message and "\n" not in message and "Traceback" not in message, message
    assert panel.message.objectName() == "Warning" and not panel.toggle.isChecked() and panel.toggle.isEnabled()
    assert panel.outcome.status == JobStatus.ERROR and panel.outcome.exit_code == 2     # a user error, not a bug
    assert panel.url == "" and not panel.copy_button.isVisible() and panel.records() == []


def test_closing_the_window_stops_the_server(qtbot, library, monkeypatch):
    asked: list[str] = []

    def answer(parent, title, text, *args):
        asked.append(text)
        return QtWidgets.QMessageBox.StandardButton.Close
    monkeypatch.setattr(QtWidgets.QMessageBox, "question", answer)
    main = MainWindow()
    qtbot.addWidget(main)
    main.show()
    main.show_pane("models")
    qtbot.waitUntil(lambda: main.models.model.rowCount() == 1)
    port = free_port()
    pid = start_serving(qtbot, main.models.serve, port)
    main.close()
    assert len(asked) == 1 and "the server" in asked[0] and "The server stops" in asked[0]
    assert not is_alive(pid) and refuses_connections(port)     # stopped before the window was gone


def test_save_chats_passes_save_and_the_chat_lands_in_the_store(qtbot, pane):
    panel = pane.serve
    panel.save_box.setChecked(True)
    start_serving(qtbot, panel, free_port())
    assert "--save" in panel.job.argv and not panel.save_box.isEnabled()
    assert panel.message.text() == "Serving 1 model · chats saved in Aha"
    model = http(f"{panel.url}/models")["data"][0]["id"]
    http(f"{panel.url}/chat/completions", {"model": model, "max_tokens": 8,
                                            "messages": [{"role": "user", "content": "Is 7 prime?"}]})
    qtbot.waitUntil(lambda: len(panel.records()) == 2)
    with Store() as store:
        assert [conversation.title for conversation in store.list_conversations()] == ["Is 7 prime?"]
    assert "POST /v1/chat/completions" in panel.log_model.index(0, STATUS).data(Qt.ItemDataRole.ToolTipRole)
    panel.stop()
    qtbot.waitUntil(lambda: panel.state == ServeState.OFF, timeout=30_000)


def test_a_streamed_request_cut_by_the_thinking_budget_says_so_in_the_log(qtbot, scripted_gguf):
    library = Library()
    library.add(scripted_gguf)
    widget = ModelsPane(library)
    qtbot.addWidget(widget, before_close_func=lambda w: w.shutdown())
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.model.rowCount() == 1)
    panel = widget.serve
    start_serving(qtbot, panel, free_port())
    body = json.dumps({"model": "scripted", "stream": True, "temperature": 0, "thinking_budget_tokens": 12,
                       "messages": [{"role": "user", "content": QUESTION}]}).encode()
    request = urllib.request.Request(f"{panel.url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:       # server-sent events, to [DONE]
        assert response.read().decode().rstrip().endswith("data: [DONE]")
    qtbot.waitUntil(lambda: len(panel.records()) == 1)
    record = panel.records()[0]
    assert (record.model, record.stream, record.reasoning_tokens, record.budget_ended) == ("scripted", True, 12, True)
    assert panel.log_model.index(0, STATUS).data() == "200 · stream"
    assert panel.log_model.index(0, TOKENS).data().endswith("→ " + f"{record.completion_tokens:,} · 12 thinking (budget)")
    assert "the thinking budget ended the thought" in record.line
    panel.stop()
    qtbot.waitUntil(lambda: panel.state == ServeState.OFF, timeout=30_000)


def test_toggling_off_before_the_server_listens_stops_it(qtbot, pane):
    panel, port = pane.serve, free_port()
    panel.port.setValue(port)
    panel.toggle.click()
    qtbot.waitUntil(lambda: panel.job.process.processId() > 0)
    pid = panel.job.process.processId()
    panel.toggle.click()                                       # at once: the child is still starting
    assert panel.state == ServeState.STOPPING and panel.message.text() == "Stopping the server…"
    qtbot.waitUntil(lambda: panel.state == ServeState.OFF, timeout=30_000)
    assert panel.message.text() == "Stopped · 0 requests in the log." and not panel.toggle.isChecked()
    assert panel.url == "" and not panel.job.is_running() and not is_alive(pid) and refuses_connections(port)
    assert panel.outcome.status == JobStatus.CANCELLED and not panel.outcome.forced   # it answered cancel itself
