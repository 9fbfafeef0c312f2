"""The Chat pane's reasoning controls on the real window and a real tiny GGUF: remove a conversation's thinking
and bring it back (Undo, Restore), and the "Collapse finished thoughts" setting."""

from __future__ import annotations

import pytest

from app.chat.messages import AssistantMessageWidget
from app.chat.settings import collapse_thoughts_setting
from app.chat.view import widgets_of
from app.main import MainWindow
from engine.models import Library
from engine.store import Store
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
    qtbot.waitUntil(lambda: not pane.session.busy and pane.streaming is None)
    qtbot.wait(50)


def replies(pane) -> list[AssistantMessageWidget]:
    return widgets_of(pane.message_layout, AssistantMessageWidget)


def menu_actions(pane) -> dict:
    pane._fill_thinking_menu()
    return {action.text(): action for action in pane.thinking_menu.actions()}


def test_remove_thinking_then_undo_in_the_pane(qtbot, window):
    pane = window.chat
    send(qtbot, pane)
    send(qtbot, pane)
    conversation_id = pane.conversation_id
    thoughts = [reply.think.text() for reply in replies(pane)]      # the second turn's prompt is new to the model
    answers = [reply.answer_text.strip() for reply in replies(pane)]
    assert thoughts[0] == THOUGHT and thoughts[1] and answers[0] == ANSWER
    actions = menu_actions(pane)
    assert actions["Remove thinking from this conversation"].isEnabled()
    assert not actions["Restore thinking"].isEnabled()                # nothing kept aside yet

    actions["Remove thinking from this conversation"].trigger()
    assert [reply.think.text() for reply in replies(pane)] == ["", ""]
    assert all(reply.think.header.text().startswith("Thinking removed · ") for reply in replies(pane))
    assert all(reply.think.body.isHidden() for reply in replies(pane))
    assert [reply.answer_text.strip() for reply in replies(pane)] == answers
    assert all(not message.thinking for message in window.store.branch_path(
        window.store.get_conversation(conversation_id).leaf_id))
    assert pane.thinking_bar.isVisible()
    assert pane.thinking_bar_label.text() == "Removed the thinking of 2 replies from this chat; the answers stay."
    assert pane.thinking_bar_button.text() == "Undo"
    assert menu_actions(pane)["Restore thinking (2 replies)"].isEnabled()

    pane.thinking_bar_button.click()                                  # Undo
    assert [reply.think.text() for reply in replies(pane)] == thoughts
    assert all(reply.think.header.text().startswith("Thought for ") for reply in replies(pane))
    assert not pane.thinking_bar.isVisible()
    assert window.store.removed_thinking_count(conversation_id) == 0
    assert not menu_actions(pane)["Restore thinking"].isEnabled()


def test_a_chat_opened_later_offers_to_restore_its_thinking(qtbot, window):
    pane = window.chat
    send(qtbot, pane)
    conversation_id = pane.conversation_id
    pane.remove_thinking(conversation_id)
    window.close()
    again = MainWindow(Store())
    qtbot.addWidget(again)
    again.show()
    chat = again.chat
    assert chat.conversation_id == conversation_id
    assert chat.thinking_bar.isVisible() and chat.thinking_bar_button.text() == "Restore thinking"
    assert chat.thinking_bar_label.text() == "The thinking of 1 reply was removed from this chat."
    assert replies(chat)[0].think.header.text().startswith("Thinking removed")
    menu_actions(chat)["Restore thinking (1 reply)"].trigger()
    assert replies(chat)[0].think.text() == THOUGHT and not chat.thinking_bar.isVisible()
    chat.new_conversation()
    assert not chat.thinking_bar.isVisible()
    assert not menu_actions(chat)["Remove thinking from this conversation"].isEnabled()  # no chat yet
    again.close()


def test_removing_another_chats_thinking_from_the_list_offers_undo_in_a_toast(qtbot, window):
    pane = window.chat
    send(qtbot, pane)
    other = pane.conversation_id
    pane.new_conversation()
    send(qtbot, pane, "Another question")
    said = []
    pane.status_message.connect(said.append)
    assert pane.remove_thinking(other) == 1
    assert said == [f"Removed the thinking of 1 reply from “{QUESTION}”."]
    assert not pane.thinking_bar.isVisible() and pane.toast.isVisible()   # the open chat keeps its thoughts
    assert replies(pane)[0].think.text()
    pane.toast.button.click()
    assert window.store.removed_thinking_count(other) == 0
    assert pane.remove_thinking(pane.conversation_id) == 1
    assert pane.remove_thinking(pane.conversation_id) == 0
    assert said[-1] == "“Another question” has no thinking to remove."


def test_thinking_cannot_be_removed_while_a_reply_streams(qtbot, window):
    pane = window.chat
    send(qtbot, pane)
    said = []
    pane.status_message.connect(said.append)
    pane.composer.setPlainText(QUESTION)
    pane.send()
    assert pane.remove_thinking(pane.conversation_id) == 0
    assert said == ["A reply is still being written; stop it (Esc) before removing the thinking."]
    pane.stop()
    qtbot.waitUntil(lambda: not pane.session.busy and pane.streaming is None)
    assert window.store.removed_thinking_count(pane.conversation_id) == 0


def test_finished_thoughts_collapse_by_default_and_the_setting_opens_them(qtbot, window):
    pane = window.chat
    assert pane.settings.collapse_thoughts.isChecked() and collapse_thoughts_setting()
    send(qtbot, pane)
    send(qtbot, pane)
    assert [reply.think.expanded for reply in replies(pane)] == [False, False]
    assert all(reply.think.body.isHidden() for reply in replies(pane))

    pane.settings.collapse_thoughts.setChecked(False)                 # every finished thought opens at once
    assert [reply.think.expanded for reply in replies(pane)] == [True, True]
    assert not collapse_thoughts_setting()                            # kept for the next start
    pane.composer.setPlainText(QUESTION)                              # the new reply's thought stays open
    pane.send()
    streaming = pane.streaming
    qtbot.waitUntil(lambda: bool(streaming.answer_text.strip()))
    assert streaming.think.expanded and not streaming.think.body.isHidden()
    qtbot.waitUntil(lambda: not pane.session.busy and pane.streaming is None)
    assert streaming.think.expanded

    window.close()                                                    # the setting survives a restart
    again = MainWindow(Store())
    qtbot.addWidget(again)
    again.show()
    assert not again.chat.settings.collapse_thoughts.isChecked()
    assert [reply.think.expanded for reply in replies(again.chat)] == [True, True, True]
    again.chat.settings.collapse_thoughts.setChecked(True)
    assert [reply.think.expanded for reply in replies(again.chat)] == [False, False, False]
    again.close()


def test_a_streaming_thought_is_shown_while_it_streams_then_collapses(qtbot, window):
    pane = window.chat
    pane.composer.setPlainText(QUESTION)
    pane.send()
    streaming = pane.streaming
    qtbot.waitUntil(lambda: bool(streaming.think.text()))
    assert streaming.think.expanded and not streaming.think.body.isHidden()
    qtbot.waitUntil(lambda: not pane.session.busy and pane.streaming is None)
    assert not streaming.think.expanded and streaming.think.text() == THOUGHT
