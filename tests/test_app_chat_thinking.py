"""The Chat pane's reasoning controls on the real window and real tiny GGUFs: the thinking budget set in the
settings cuts the thought and the reply says so; the thinking switch (disabled with the reason on the R1
fixture, working on a Qwen3-style template); remove a conversation's thinking and bring it back (Undo,
Restore); the "Collapse finished thoughts" setting."""

from __future__ import annotations

import pytest

from app.chat.messages import AssistantMessageWidget
from app.chat.settings import collapse_thoughts_setting
from app.chat.view import widgets_of
from app.main import MainWindow
from engine.chat.reasoning import ALWAYS_THINKS, DEFAULT_BUDGET_MESSAGE
from engine.models import Library
from engine.store import Store
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT
from tests.support.templates import QWEN3_TEMPLATE
from tests.support.window import chat_window
from tests.test_app_chat import send


@pytest.fixture
def window(qtbot, scripted_gguf):
    with chat_window(qtbot, scripted_gguf) as main:
        yield main


def replies(pane) -> list[AssistantMessageWidget]:
    return widgets_of(pane.message_layout, AssistantMessageWidget)


def menu_actions(pane) -> dict:
    pane.update_thinking_actions()                                    # what opening the header's Chat menu does
    return {action.text(): action for action in pane.export_button.menu().actions()}


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
    replies(pane)[0].think.header.click()                             # nothing to open
    assert not replies(pane)[0].think.expanded and replies(pane)[0].think.body.isHidden()
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
    """Each time thinking text is shown, the block is open with its body in view; when the reply is done, it is
    collapsed (the tiny model writes fast: what the block showed is seen as each batch of text is shown)."""
    pane = window.chat
    pane.composer.setPlainText(QUESTION)
    pane.send()
    think = pane.streaming.think
    shown = []
    append = think.append

    def append_and_look(text):
        append(text)
        shown.append((think.live, think.expanded, think.body.isHidden()))
    think.append = append_and_look
    qtbot.waitUntil(lambda: not pane.session.busy and pane.streaming is None)
    assert shown and all(look == (True, True, False) for look in shown)
    assert not think.expanded and think.text() == THOUGHT


# --- thinking budget and switch ---------------------------------------------------------------------------


def wait_switch(qtbot, pane):
    qtbot.waitUntil(lambda: pane.settings.switch is not None)
    return pane.settings.switch


def test_the_budget_set_in_the_pane_cuts_the_thought_and_the_reply_says_so(qtbot, window):
    pane = window.chat
    settings = pane.settings
    assert not settings.budget_on.isChecked() and not settings.budget.isEnabled()
    assert settings.values()["thinking_budget"] is None
    assert settings.budget_message.toPlainText() == DEFAULT_BUDGET_MESSAGE
    assert settings.values()["budget_message"] == ""                      # "" stands for the default sentence
    settings.budget_on.setChecked(True)
    settings.budget.setValue(12)
    assert settings.budget.isEnabled() and settings.values()["thinking_budget"] == 12
    send(qtbot, pane)
    reply = replies(pane)[-1]
    assert reply.think.header.text().startswith("Ended by the thinking budget (12 tokens) · ")
    assert reply.think.text().endswith(DEFAULT_BUDGET_MESSAGE + "\n")
    assert THOUGHT.startswith(reply.think.text().split(DEFAULT_BUDGET_MESSAGE)[0])
    assert reply.answer_text.strip()
    assert "12 tokens, ended by the thinking budget" in reply.stats_label.text()
    saved = window.store.get_message(reply.message_id)
    assert saved.stats["budget_ended_thought"] and saved.stats["thinking_tokens"] == 12
    assert saved.sampling["thinking_budget"] == 12 and saved.thinking == reply.think.text()
    assert window.store.get_conversation(pane.conversation_id).settings["thinking_budget"] == 12

    settings.budget_message.setPlainText("Time is up.")                   # a message of the user's own
    pane.regenerate(reply.message_id)
    qtbot.waitUntil(lambda: not pane.session.busy and pane.streaming is None)
    again = replies(pane)[-1]
    assert again.think.text().endswith("Time is up.\n") and DEFAULT_BUDGET_MESSAGE not in again.think.text()
    conversation = window.store.get_conversation(pane.conversation_id)
    assert conversation.settings["budget_message"] == "Time is up."

    pane.new_conversation()                                               # a conversation keeps its own
    pane.open_conversation(conversation.id)
    assert settings.budget_on.isChecked() and settings.budget.value() == 12
    assert settings.budget_message.toPlainText() == "Time is up."
    settings.budget_on.setChecked(False)                                  # off again: the whole thought
    send(qtbot, pane)
    assert replies(pane)[-1].think.header.text().startswith("Thought for ")


def test_the_thinking_switch_is_disabled_with_the_reason_on_an_r1_distill(qtbot, window):
    pane = window.chat
    switch = wait_switch(qtbot, pane)
    assert not switch.supported and switch.reason == ALWAYS_THINKS
    box = pane.settings.thinking
    assert not box.isEnabled() and box.isChecked()
    reason = ALWAYS_THINKS[0].upper() + ALWAYS_THINKS[1:]
    assert box.toolTip() == reason and pane.settings.thinking_note.text() == reason
    assert not pane.settings.thinking_note.isHidden()
    assert pane.settings.values()["thinking"] is None                     # the template decides: it thinks


def test_the_thinking_switch_works_on_a_qwen3_style_template(qtbot, window, gguf_with_template):
    qwen3 = gguf_with_template("qwen3-switch", QWEN3_TEMPLATE, "qwen3")
    Library().add(qwen3)
    pane = window.chat
    pane.settings.refresh_models()
    wait_switch(qtbot, pane)
    pane.set_model(str(qwen3))
    qtbot.waitUntil(lambda: pane.settings.switch is not None and pane.settings.switch.supported)
    box = pane.settings.thinking
    assert box.isEnabled() and box.isChecked() and pane.settings.thinking_note.isHidden()
    assert "enable_thinking" in box.toolTip()
    box.setChecked(False)
    assert pane.settings.values()["thinking"] is False
    pane.settings.max_tokens.setValue(16)
    send(qtbot, pane, "Hello")
    saved = window.store.get_message(replies(pane)[-1].message_id)
    assert saved.stats["thinking"] is False and saved.stats["thinking_tokens"] == 0
    assert saved.sampling["thinking"] is False and not saved.thinking
    conversation_id = pane.conversation_id

    prompts = []                                                          # the exact prompt says so too
    pane.session.prompt_ready.connect(prompts.append)
    pane.session.preview_prompt(conversation_id, pane.settings.values(), "Again")
    qtbot.waitUntil(lambda: bool(prompts))
    assert prompts[0].text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")

    pane.new_conversation()                                               # the choice is the conversation's
    pane.open_conversation(conversation_id)
    qtbot.waitUntil(lambda: pane.settings.switch is not None)
    assert box.isEnabled() and not box.isChecked()
    pane.set_model(pane.settings.model.itemData(pane.settings.model.findText("scripted")))
    qtbot.waitUntil(lambda: pane.settings.switch is not None and not pane.settings.switch.supported)
    assert not box.isEnabled() and pane.settings.values()["thinking"] is None


def test_a_model_file_that_cannot_be_read_leaves_the_switch_off_with_the_reason(qtbot, window, tmp_path):
    pane = window.chat
    wait_switch(qtbot, pane)
    missing = tmp_path / "gone.gguf"
    pane.set_model(str(missing))
    qtbot.waitUntil(lambda: pane.settings.switch is not None and pane.settings.thinking_note.text() != "")
    box = pane.settings.thinking
    assert not box.isEnabled() and "gone.gguf" in pane.settings.thinking_note.text()
    assert "\n" not in pane.settings.thinking_note.text() and "Traceback" not in box.toolTip()
