"""The real window, driven offscreen with a real tiny GGUF: send, stop, regenerate, edit, search,
export, switch models, delete with undo, restart."""

from __future__ import annotations

import json

import pytest

from app.chat.messages import AssistantMessageWidget, UserMessageWidget
from app.main import MainWindow
from app.qt import Qt, QtWidgets
from engine.models import Library
from engine.store import Store
from tests.support import platforms
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT
from tests.support.window import chat_window

CTRL = Qt.KeyboardModifier.ControlModifier


@pytest.fixture
def window(qtbot, scripted_gguf):
    with chat_window(qtbot, scripted_gguf) as main:
        yield main


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
    assert reply.think.header.text().startswith("Stopped by you while thinking")
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
    shown_name = pane.settings.model.currentText()
    assert f"## Assistant · {shown_name}\n" in (tmp_path / "chat.md").read_text()  # the model list's name
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


def test_deleting_another_chat_keeps_the_open_one_highlighted(qtbot, window):
    pane = window.chat
    send(qtbot, pane, "first")
    other = pane.conversation_id
    pane.new_conversation()
    send(qtbot, pane)
    opened = pane.conversation_id

    def highlighted():
        item = pane.conversations.list.currentItem()
        return item is not None and item.isSelected() and item.data(Qt.ItemDataRole.UserRole)[0]

    assert highlighted() == opened
    pane.delete_conversation(other)
    assert pane.conversations.list.count() == 1 and highlighted() == opened
    pane.toast.button.click()
    assert pane.conversations.list.count() == 2 and highlighted() == opened


def test_new_chat_while_a_reply_streams_says_why_it_waits(qtbot, window):
    pane = window.chat
    said = []
    pane.status_message.connect(said.append)
    pane.composer.setPlainText(QUESTION)
    pane.send()
    conversation_id = pane.conversation_id
    pane.new_conversation()
    assert said == ["A reply is still being written; stop it (Esc) before starting a new chat."]
    pane.stop()
    wait_idle(qtbot, pane)
    assert pane.conversation_id == conversation_id


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


# -- issue 11: what a new user hit -------------------------------------------------------------------

LONG_TITLE = ("A very long title " * 12)[:199] + "."  # 200 characters, one line


def saved_chat(store, title=QUESTION, replies=1, model="scripted.gguf"):
    """A conversation in the store: QUESTION and `replies` sibling replies (regenerated) with THOUGHT."""
    conversation = store.create_conversation(title)
    user = store.add_message(conversation.id, None, "user", QUESTION)
    for _ in range(replies):
        store.add_message(conversation.id, user.id, "assistant", ANSWER, thinking=THOUGHT, model=model)
    return conversation


def list_titles(pane):
    listing = pane.conversations.list
    return [listing.item(row).text() for row in range(listing.count())]


def click_row(qtbot, pane, row):
    listing = pane.conversations.list
    qtbot.mouseClick(listing.viewport(), Qt.MouseButton.LeftButton, pos=listing.visualItemRect(listing.item(row)).center())


def activate(qtbot, window):
    """Window shortcuts only fire in the active window."""
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow)


def press(qtbot, window, key, modifier=Qt.KeyboardModifier.NoModifier):
    """A key press where the user's focus is (the window when nothing has focus)."""
    qtbot.keyClick(QtWidgets.QApplication.focusWidget() or window, key, modifier)


def test_a_long_title_elides_and_opening_settings_keeps_the_window_width(qtbot, window):
    pane = window.chat
    conversation = saved_chat(window.store, LONG_TITLE)
    pane.conversations.refresh()
    pane.open_conversation(conversation.id)
    window.resize(1200, 780)
    qtbot.wait(50)
    width = window.width()
    assert width == 1200
    pane.settings_button.setChecked(True)
    qtbot.wait(50)
    assert window.width() == width and pane.settings.isVisible()
    assert pane.title.full_text() == LONG_TITLE and pane.title.text().endswith("…")
    assert pane.title.toolTip() == LONG_TITLE
    panel = pane.settings
    for window_width in (width, window.minimumSizeHint().width()):  # nothing in it cut off, even at the narrowest
        window.resize(window_width, 780)
        qtbot.wait(50)
        assert window.width() == window_width and not panel.horizontalScrollBar().isVisible()
        assert panel.viewport().width() >= panel.widget().minimumSizeHint().width()
        assert pane.splitter.sizes()[0] >= pane.conversations.minimumSizeHint().width()


def test_long_titles_elide_in_the_conversation_list(qtbot, window):
    pane = window.chat
    saved_chat(window.store, LONG_TITLE)
    pane.conversations.refresh()
    qtbot.wait(50)
    listing = pane.conversations.list
    item = listing.item(0)
    assert item.text() == LONG_TITLE and item.toolTip() == LONG_TITLE
    assert listing.visualItemRect(item).width() <= listing.viewport().width()  # the view elides it to fit
    assert not listing.horizontalScrollBar().isVisible()


def ink(image, rect, background):
    """The largest difference (0-255, any channel) between a pixel inside rect and the background colour."""
    from app.qt import QtGui

    largest = 0
    for x in range(rect.left(), rect.right() + 1):
        for y in range(rect.top(), rect.bottom() + 1):
            pixel = QtGui.QColor(image.pixel(x, y))
            largest = max(largest, abs(pixel.red() - background.red()), abs(pixel.green() - background.green()),
                          abs(pixel.blue() - background.blue()))
    return largest


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_undo_toast_shows_its_text_in_both_themes(qtbot, window, restyled, monkeypatch, scheme):
    from app import theme
    from app.qt import QtGui

    monkeypatch.setenv("AHA_THEME", scheme)
    colors = theme.apply(restyled)
    pane = window.chat
    conversation = saved_chat(window.store)
    pane.conversations.refresh()
    pane.delete_conversation(conversation.id)
    toast = pane.toast
    assert toast.isVisible() and toast.label.text() == f"Deleted “{QUESTION}”" and toast.button.text() == "Undo"
    image = toast.grab().toImage()
    background = QtGui.QColor(image.pixel(4, toast.height() // 2))
    assert background.name() == colors.text  # the toast is the inverse of the window
    assert ink(image, toast.label.geometry(), background) > 100
    assert ink(image, toast.button.geometry(), background) > 100


def test_opening_a_conversation_keeps_its_place_in_the_list(qtbot, window):
    store, pane = window.store, window.chat
    older = saved_chat(store, "Older")
    newer = saved_chat(store, "Newer")
    pane.conversations.refresh()
    before = {c.id: c.updated_at for c in store.list_conversations()}
    assert list_titles(pane) == ["Newer", "Older"]
    click_row(qtbot, pane, 1)                       # open the older one
    assert pane.conversation_id == older.id and widgets(pane, AssistantMessageWidget)
    pane.conversations.search.setText("Step")      # and a search hit in it, which shows its branch
    row = next(r for r in range(pane.conversations.list.count())
               if pane.conversations.list.item(r).text().startswith("Older"))
    click_row(qtbot, pane, row)
    pane.conversations.search.clear()
    assert {c.id: c.updated_at for c in store.list_conversations()} == before
    assert list_titles(pane) == ["Newer", "Older"] and pane.conversation_id == older.id != newer.id


def test_search_shows_one_row_per_conversation_with_its_number_of_matches(qtbot, window):
    store, pane = window.store, window.chat
    three = saved_chat(store, "Three replies", replies=3)   # regenerated twice: the same thought three times
    one = saved_chat(store, "One reply")
    pane.conversations.refresh()
    pane.conversations.search.setText("Step")
    rows = list_titles(pane)
    assert len(rows) == 2 and all(row.count("\n") == 1 for row in rows)  # a title and one line of its matches
    assert sorted(row.split("\n")[0] for row in rows) == ["One reply", "Three replies"]
    counts = {row.split("\n")[0]: row.split("\n")[1].split(" · ")[0] for row in rows}
    assert counts == {"Three replies": "3 matches", "One reply": "1 match"}
    assert all("[Step]" in row.split("\n")[1] for row in rows)  # the best match, the word marked
    row = rows.index(next(r for r in rows if r.startswith("Three")))
    click_row(qtbot, pane, row)
    assert pane.conversation_id == three.id != one.id


def test_replies_and_the_header_name_the_model_and_the_meter_shows_its_numbers(qtbot, window, gguf_file):
    pane = window.chat
    send(qtbot, pane)
    first = widgets(pane, AssistantMessageWidget)[-1]
    assert first.author.text() == "scripted" and pane.model_name.full_text() == "scripted"
    assert pane.meter.label.isVisible()
    assert pane.meter.label.text() == f"Context {pane.meter.used:,} / {pane.meter.size_tokens:,}"
    assert pane.meter.used > 0
    other = gguf_file("qwen3", "q8_0")
    Library().add(other)
    pane.settings.refresh_models()
    pane.set_model(str(other))
    assert pane.model_name.full_text() == "qwen3-q8_0"
    pane.settings.max_tokens.setValue(16)
    send(qtbot, pane, "Hello")
    pane.open_conversation(pane.conversation_id)    # shown again from the store
    assert [reply.author.text() for reply in widgets(pane, AssistantMessageWidget)] == ["scripted", "qwen3-q8_0"]


def test_model_label_falls_back_to_the_file_name_or_assistant():
    from app.chat.view import model_label

    names = {"scripted.gguf": "scripted", "sha256-abc": "deepseek-r1:7b"}
    assert model_label("sha256-abc", names) == "deepseek-r1:7b"     # an Ollama blob: its tag
    assert model_label("gone-q4_k_m.gguf", names) == "gone-q4_k_m"   # no longer in the library
    assert model_label(None, names) == "Assistant"                   # nothing recorded


def test_export_from_the_header_says_where_it_saved(qtbot, window, tmp_path, monkeypatch):
    pane = window.chat
    assert pane.export_button.isVisible() and not pane.export_button.isEnabled()  # nothing to export yet
    send(qtbot, pane)
    assert pane.export_button.isEnabled()
    actions = {action.text(): action for action in pane.export_button.menu().actions()}
    assert set(actions) == {"Export as Markdown…", "Export as JSON…", "", "Remove thinking from this conversation",
                            "Restore thinking"}  # "": the separator before the thinking actions
    target = tmp_path / "chat.md"
    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    actions["Export as Markdown…"].trigger()
    assert ANSWER in target.read_text()
    assert window.statusBar().currentMessage() == f"Exported “{QUESTION}” to {target}"
    missing = tmp_path / "no-such-folder" / "chat.json"
    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", lambda *a, **k: (str(missing), ""))
    actions["Export as JSON…"].trigger()
    message = window.statusBar().currentMessage()
    assert message.startswith(f"Could not save the chat to {missing}") and message.endswith("choose another folder.")


def focus_sidebar(pane, window):
    window.sidebar.setFocus()


def focus_nothing(pane, window):
    if QtWidgets.QApplication.focusWidget() is not None:
        QtWidgets.QApplication.focusWidget().clearFocus()


def focus_think_body(pane, window):
    widgets(pane, AssistantMessageWidget)[-1].think.body.setFocus()


def focus_search(pane, window):
    pane.conversations.search.setFocus()


def focus_settings(pane, window):
    pane.settings_button.setChecked(True)
    pane.settings.max_tokens.setFocus()


FOCUS = {"sidebar": focus_sidebar, "nothing": focus_nothing, "think text": focus_think_body,
         "search box": focus_search, "settings": focus_settings,
         "composer": lambda pane, window: pane.composer.setFocus()}


@pytest.mark.parametrize("focus", FOCUS)
def test_esc_stops_a_reply_wherever_the_focus_is(qtbot, window, focus):
    pane = window.chat
    send(qtbot, pane)
    activate(qtbot, window)
    reply = widgets(pane, AssistantMessageWidget)[-1]
    first_id = reply.message_id
    qtbot.mouseClick(reply.think.header, Qt.MouseButton.LeftButton)    # what the user did before it failed
    qtbot.mouseClick(reply.regenerate_button, Qt.MouseButton.LeftButton)
    assert pane.session.busy
    FOCUS[focus](pane, window)
    press(qtbot, window, Qt.Key.Key_Escape)
    wait_idle(qtbot, pane)
    saved = window.store.get_message(widgets(pane, AssistantMessageWidget)[-1].message_id)
    assert saved.id != first_id and saved.stats["stop_reason"] == "cancelled"


@pytest.mark.parametrize("focus", FOCUS)
def test_shortcuts_work_wherever_the_focus_is(qtbot, window, focus):
    pane = window.chat
    send(qtbot, pane)
    activate(qtbot, window)
    FOCUS[focus](pane, window)
    press(qtbot, window, Qt.Key.Key_F, CTRL)
    assert pane.conversations.search.hasFocus()
    FOCUS[focus](pane, window)
    press(qtbot, window, Qt.Key.Key_L, CTRL)
    assert pane.composer.hasFocus()
    FOCUS[focus](pane, window)
    shown = pane.settings.isVisible()
    press(qtbot, window, Qt.Key.Key_Comma, CTRL)
    assert pane.settings.isVisible() != shown
    FOCUS[focus](pane, window)
    press(qtbot, window, Qt.Key.Key_N, CTRL)
    assert pane.conversation_id is None and pane.composer.hasFocus()


def open_prompt_dialog(qtbot, pane):
    pane.settings_button.setChecked(True)
    button = next(b for b in pane.settings.findChildren(QtWidgets.QPushButton) if b.text() == "Show the exact prompt…")
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: getattr(pane.settings, "prompt_dialog", None) is not None
                    and pane.settings.prompt_dialog.isVisible())
    return pane.settings.prompt_dialog


def test_esc_closes_the_exact_prompt_dialog(qtbot, window):
    pane = window.chat
    dialog = open_prompt_dialog(qtbot, pane)
    qtbot.keyClick(dialog.findChild(QtWidgets.QPlainTextEdit), Qt.Key.Key_Escape)   # the keyboard in the dialog
    assert not dialog.isVisible()
    dialog = open_prompt_dialog(qtbot, pane)
    activate(qtbot, window)       # the keyboard on the window behind it (no window manager gave it the focus)
    press(qtbot, window, Qt.Key.Key_Escape)
    assert not dialog.isVisible()


def test_the_exact_prompt_is_the_next_messages_with_the_composer_text_in_place(qtbot, window):
    from engine.chat.conversation import messages_for
    from engine.chat.runtime import ChatModel

    pane = window.chat
    send(qtbot, pane)
    dialog = open_prompt_dialog(qtbot, pane)       # an empty composer: said so
    assert "next message" in dialog.windowTitle()
    notes = " ".join(label.text() for label in dialog.findChildren(QtWidgets.QLabel))
    assert "The composer is empty" in notes
    dialog.close()
    user = widgets(pane, UserMessageWidget)[0]
    user.edit_requested.emit(user.message_id, QUESTION)   # edit the first question: no history before it
    pane.composer.setPlainText("What is 5+5?")
    dialog = open_prompt_dialog(qtbot, pane)
    shown = dialog.findChild(QtWidgets.QPlainTextEdit).toPlainText()
    notes = " ".join(label.text() for label in dialog.findChildren(QtWidgets.QLabel))
    dialog.close()
    assert "your message as the last user turn" in notes
    assert "What is 5+5?" in shown and ANSWER not in shown and QUESTION not in shown
    with ChatModel(pane.settings.values()["model"]) as model:
        expected = model.render([{"role": "user", "content": "What is 5+5?"}], "strip").text
    assert shown == expected
    pane.send()
    wait_idle(qtbot, pane)
    saved = window.store.get_message(widgets(pane, AssistantMessageWidget)[-1].message_id)
    assert messages_for(window.store, saved.parent_id) == [{"role": "user", "content": "What is 5+5?", "thinking": ""}]
