"""The real window, driven offscreen with a real tiny GGUF: send, stop, regenerate, edit, search,
export, switch models, delete with undo, restart."""

from __future__ import annotations

import json

import pytest

from app.main import MainWindow
from app.message_view import AssistantMessageWidget, UserMessageWidget
from engine.models import Library
from engine.store import Store
from tests.support import platforms
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT


@pytest.fixture
def window(qtbot, scripted_gguf):
    Library().add(scripted_gguf)
    main = MainWindow()
    qtbot.addWidget(main)
    main.resize(1100, 760)
    main.show()
    main.chat.set_model(str(scripted_gguf))
    main.chat.settings.preset.setCurrentText("Greedy (0 · 1.0)")
    yield main
    main.close()


def send(qtbot, pane, text=QUESTION):
    pane.composer.setPlainText(text)
    pane.send()
    wait_idle(qtbot, pane)


def wait_idle(qtbot, pane):
    qtbot.waitUntil(lambda: not pane.session.busy and pane.streaming is None)
    qtbot.wait(50)


def widgets(pane, kind):
    layout = pane.message_layout
    return [layout.itemAt(i).widget() for i in range(layout.count() - 1)
            if isinstance(layout.itemAt(i).widget(), kind)]


def test_send_shows_thinking_and_answer_in_their_blocks(qtbot, window):
    pane = window.chat
    send(qtbot, pane)
    reply = widgets(pane, AssistantMessageWidget)[-1]
    assert reply.think.text() == THOUGHT and reply.answer_text.strip() == ANSWER
    assert reply.think.header.text().startswith("Thought for") and not reply.think.expanded
    assert "first token" in reply.stats_label.text() and "tok/s" in reply.stats_label.text()
    assert pane.meter.used > pane.meter.reasoning > 0
    assert pane.title.text() == QUESTION and pane.conversations.list.count() == 1


def test_stop_mid_thought_says_so_and_keeps_the_thought(qtbot, window):
    pane = window.chat
    pane.composer.setPlainText(QUESTION)
    pane.send()
    pane.stop()                      # before the first token: the model is still loading
    wait_idle(qtbot, pane)
    reply = widgets(pane, AssistantMessageWidget)[-1]
    assert reply.think.header.text().startswith("Stopped while thinking")
    assert reply.think.expanded and reply.think.text() and THOUGHT.startswith(reply.think.text())
    saved = window.store.get_message(reply.message_id)
    assert saved.status == "stopped" and saved.thinking == reply.think.text()


def test_regenerate_makes_a_branch_with_navigation(qtbot, window):
    pane = window.chat
    send(qtbot, pane)
    first = widgets(pane, AssistantMessageWidget)[-1]
    first_id = first.message_id
    pane.regenerate(first_id)
    wait_idle(qtbot, pane)
    second = widgets(pane, AssistantMessageWidget)[-1]
    assert second.message_id != first_id and second.branches.label.text() == "2/2"
    second.branches.previous.click()
    assert widgets(pane, AssistantMessageWidget)[-1].message_id == first_id
    assert widgets(pane, AssistantMessageWidget)[-1].branches.label.text() == "1/2"


def test_edit_question_makes_a_branch(qtbot, window):
    pane = window.chat
    send(qtbot, pane)
    user = widgets(pane, UserMessageWidget)[0]
    user.edit_requested.emit(user.message_id, QUESTION)
    assert pane.edit_label.isVisible()
    send(qtbot, pane, QUESTION)
    users = widgets(pane, UserMessageWidget)
    assert len(users) == 1 and users[0].branches.label.text() == "2/2"


def test_search_finds_words_in_thoughts_and_reveals_them(qtbot, window):
    pane = window.chat
    send(qtbot, pane)
    pane.new_conversation()
    pane.conversations.search.setText("Step")
    assert pane.conversations.list.count() >= 1
    item = pane.conversations.list.item(0)
    pane.conversations.list.itemClicked.emit(item)
    reply = widgets(pane, AssistantMessageWidget)[-1]
    assert reply.think.expanded and reply.think.body.textCursor().selectedText() == "Step"


def test_export_markdown_and_json(qtbot, window, tmp_path, monkeypatch):
    from app.qt import QtWidgets

    pane = window.chat
    send(qtbot, pane)
    for kind in ("md", "json"):
        target = tmp_path / f"chat.{kind}"
        monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", lambda *a, t=target, **k: (str(t), ""))
        pane.conversations.export(pane.conversation_id, kind)
    assert "Step 1" in (tmp_path / "chat.md").read_text() and ANSWER in (tmp_path / "chat.md").read_text()
    exported = json.loads((tmp_path / "chat.json").read_text())
    assert any(m.get("thinking") == THOUGHT for m in exported["messages"])


def test_switch_models(qtbot, window, gguf_file):
    pane = window.chat
    other = gguf_file("qwen3", "q8_0")
    Library().add(other)
    pane.settings.refresh_models()
    pane.set_model(str(other))
    pane.settings.max_tokens.setValue(16)
    send(qtbot, pane, "Hello")
    saved = window.store.get_message(widgets(pane, AssistantMessageWidget)[-1].message_id)
    assert saved.model == other.name and saved.status in ("complete", "stopped")


def test_delete_with_undo(qtbot, window):
    pane = window.chat
    send(qtbot, pane)
    conversation_id = pane.conversation_id
    pane.delete_conversation(conversation_id)
    assert pane.conversations.list.count() == 0 and pane.toast.isVisible()
    pane.toast.button.click()
    assert pane.conversations.list.count() == 1
    assert window.store.get_conversation(conversation_id).deleted_at is None


def test_restart_finds_the_conversation_again(qtbot, window, scripted_gguf):
    pane = window.chat
    send(qtbot, pane)
    conversation_id = pane.conversation_id
    window.close()
    again = MainWindow(Store())
    qtbot.addWidget(again)
    assert again.chat.conversation_id == conversation_id
    reply = widgets(again.chat, AssistantMessageWidget)[-1]
    assert reply.think.text() == THOUGHT and reply.answer_text.strip() == ANSWER
    again.close()


@pytest.fixture
def first_run(qtbot, tmp_path, monkeypatch):
    """A window on a machine with no library, no conversations and nothing in Ollama, LM Studio or the HF cache."""
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def open_window() -> MainWindow:
        main = MainWindow()
        qtbot.addWidget(main)
        main.show()
        assert main.chat_stack.currentWidget() is main.empty
        return main
    return open_window


def test_first_run_with_nothing_found_says_so_and_opens_a_file(qtbot, first_run, scripted_gguf, monkeypatch):
    from app.qt import QtWidgets

    main = first_run()
    qtbot.waitUntil(lambda: main.empty.found_label.text() != "Looking for models on this machine…")
    assert main.empty.found_label.text() == "No models found in Ollama, LM Studio or the Hugging Face cache."
    assert main.empty.found.count() == 0
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName", lambda *a, **k: (str(scripted_gguf), ""))
    main.empty.open_button.click()
    assert main.chat_stack.currentWidget() is main.chat
    assert main.chat.settings.model.currentData() == str(scripted_gguf)
    assert [str(entry.path) for entry in main.library.entries()] == [str(scripted_gguf)]
    main.close()


@platforms.symlinks
def test_first_run_uses_a_model_found_in_the_hf_cache(qtbot, first_run, scripted_gguf, tmp_path):
    snapshot = tmp_path / "hf" / "models--someone--tiny-r1-GGUF" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "tiny-r1.gguf").symlink_to(scripted_gguf)  # the cache links snapshots to blobs
    main = first_run()
    qtbot.waitUntil(lambda: main.empty.found.count() == 1)
    assert main.empty.found_label.text() == "Found on this machine (1):"
    assert "hf-cache" in main.empty.found.item(0).text()
    assert not main.library.entries()  # offered, not added
    main.empty.found.setCurrentRow(0)
    main.empty.use_button.click()
    assert main.chat_stack.currentWidget() is main.chat
    assert main.chat.settings.model.currentData() == str(scripted_gguf.resolve())
    assert [entry.path for entry in main.library.entries()] == [scripted_gguf.resolve()]
    main.close()


def test_first_run_download_starts_the_r1_download_in_the_models_pane(qtbot, first_run, monkeypatch):
    from engine.models import R1_DEFAULT

    main = first_run()
    started = []
    monkeypatch.setattr(main.models, "start_download", lambda repo, filename: started.append((repo, filename)))
    main.empty.download_button.click()
    assert started == [R1_DEFAULT]
    assert main.stack.currentWidget() is main.models
    main.close()
