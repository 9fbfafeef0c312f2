"""README's "The window", checked on the real window driven offscreen with the scripted tiny GGUF: the
think block live and done, cut thoughts, Markdown tables, the stats line, per-conversation settings and
the exact-prompt dialog, keyboard shortcuts, forced light/dark, restored geometry, the welcome screen (what it
says when a file is broken, nothing is found or the Hub is unreachable), and `aha` itself.
A held stream (the real model's, paused mid-thought) makes "while it streams" deterministic."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from app import theme
from app.chat.messages import THINK_LINES_LIVE, AssistantMessageWidget, UserMessageWidget
from app.main import MainWindow
from app.qt import Qt, QtCore, QtGui, QtWidgets
from engine import r1
from engine.chat.conversation import messages_for
from engine.chat.runtime import ChatModel
from engine.store import Store
from tests import test_app_chat
from tests.conftest import QT_WAIT_MS
from tests.support import platforms
from tests.support.llama_server import free_port
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT
from tests.test_app_chat import activate, press, send, wait_idle, widgets

window = test_app_chat.window  # the shared fixture: a shown MainWindow using the scripted model, greedy
first_run = test_app_chat.first_run  # a shown MainWindow on a machine with no models anywhere: the welcome screen
CTRL = Qt.KeyboardModifier.ControlModifier
R1_PRESET, GREEDY_PRESET = "DeepSeek R1 (0.6 · 0.95)", "Greedy (0 · 1.0)"
ROOT = Path(__file__).resolve().parents[1]


class StreamSpy:
    """The real ChatModel.stream, wrapped: records each call (sampling, and the prompt the engine renders
    for its messages) and, with `hold_at_line` set, pauses the worker once the thought has that many lines
    (the window has been sent them) until `release()`."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.hold_at_line: int | None = None
        self.held = threading.Event()
        self._go = threading.Event()

    def release(self) -> None:
        self._go.set()

    def wrap(self, original):
        def stream(model, messages, **kwargs):
            prompt = model.render(messages, kwargs.get("history", "strip"))
            self.calls.append({**kwargs, "prompt": prompt})
            thought = ""
            for event in original(model, messages, **kwargs):
                yield event
                if event.kind == "thinking" and self.hold_at_line and not self.held.is_set():
                    thought += event.text
                    if thought.count("\n") >= self.hold_at_line:
                        self.held.set()
                        self._go.wait(QT_WAIT_MS / 1000)
        return stream


@pytest.fixture
def spy(monkeypatch):
    watcher = StreamSpy()
    monkeypatch.setattr(ChatModel, "stream", watcher.wrap(ChatModel.stream))
    yield watcher
    watcher.release()  # never leave a worker paused


def hold_mid_thought(qtbot, pane, spy: StreamSpy, lines: int) -> AssistantMessageWidget:
    """Send QUESTION and wait until the window shows `lines` lines of the thought, the stream paused."""
    spy.hold_at_line = lines
    pane.composer.setPlainText(QUESTION)
    pane.send()
    qtbot.waitUntil(spy.held.is_set)
    reply = pane.streaming
    qtbot.waitUntil(lambda: reply.think.text().count("\n") >= lines)
    return reply


def last_reply(window) -> tuple[AssistantMessageWidget, object]:
    """The last reply's widget and its message as saved in the store."""
    reply = widgets(window.chat, AssistantMessageWidget)[-1]
    return reply, window.store.get_message(reply.message_id)


def click_conversation(qtbot, pane, conversation_id: int) -> None:
    listing = pane.conversations.list
    for row in range(listing.count()):
        item = listing.item(row)
        if item.data(Qt.ItemDataRole.UserRole)[0] == conversation_id:
            qtbot.mouseClick(listing.viewport(), Qt.MouseButton.LeftButton, pos=listing.visualItemRect(item).center())
            assert pane.conversation_id == conversation_id
            return
    raise AssertionError(f"conversation {conversation_id} is not in the list")


def visible_lines(view: QtWidgets.QPlainTextEdit) -> list[str]:
    """The non-empty lines shown in a plain-text view's viewport, top to bottom."""
    step = view.fontMetrics().lineSpacing()
    lines: list[str] = []
    for y in range(step // 2, view.viewport().height(), step):
        text = view.cursorForPosition(QtCore.QPoint(4, y)).block().text()
        if text and text not in lines:
            lines.append(text)
    return lines


# -- the think block ---------------------------------------------------------------------------------

def test_think_block_streams_a_timer_and_the_last_lines_then_sums_up_with_the_real_token_count(qtbot, window, spy):
    pane = window.chat
    reply = hold_mid_thought(qtbot, pane, spy, lines=6)
    header = reply.think.header
    live = re.fullmatch(r"Thinking… (\d+\.\d) s", header.text())
    assert live and reply.think.expanded and reply.think.body.isVisible()
    qtbot.waitUntil(lambda: header.text() != live.group(0))  # the timer runs while it thinks
    assert float(re.fullmatch(r"Thinking… (\d+\.\d) s", header.text()).group(1)) > float(live.group(1))
    thought_lines = reply.think.text().splitlines()
    shown = visible_lines(reply.think.body)
    assert 0 < len(shown) <= THINK_LINES_LIVE and shown == thought_lines[-len(shown):]  # the last lines
    assert thought_lines[0] not in shown
    spy.release()
    wait_idle(qtbot, pane)
    reply, saved = last_reply(window)
    stats = saved.stats
    assert stats["thinking_tokens"] > 0 and not stats["thinking_unfinished"]
    assert header.text() == f"Thought for {stats['thinking_s']:.1f} s · {stats['thinking_tokens']} tokens"
    assert not reply.think.expanded and not reply.think.body.isVisible()


def test_think_block_header_expands_and_collapses_and_the_thought_can_be_selected_and_copied(qtbot, window):
    send(qtbot, window.chat)
    reply, _ = last_reply(window)
    think = reply.think
    assert not think.body.isVisible()
    qtbot.mouseClick(think.header, Qt.MouseButton.LeftButton)
    assert think.expanded and think.body.isVisible()
    clipboard = QtWidgets.QApplication.clipboard()
    clipboard.clear()
    think.body.setFocus()
    qtbot.keyClick(think.body, Qt.Key.Key_A, CTRL)
    assert think.body.textCursor().selectedText().replace("\u2029", "\n") == THOUGHT
    qtbot.keyClick(think.body, Qt.Key.Key_C, CTRL)
    assert clipboard.text() == THOUGHT
    qtbot.mouseClick(think.header, Qt.MouseButton.LeftButton)
    assert not think.expanded and not think.body.isVisible()


def test_a_thought_cut_by_the_token_budget_says_so(qtbot, window):
    pane = window.chat
    pane.settings.max_tokens.setValue(16)  # the form's least budget: the scripted thought is ~110 tokens
    send(qtbot, pane)
    reply, saved = last_reply(window)
    stats = saved.stats
    assert stats["stop_reason"] == "max_tokens" and stats["thinking_unfinished"] and saved.status == "stopped"
    assert reply.think.header.text() == (f"Cut by the token budget while thinking · {stats['thinking_s']:.1f} s · "
                                         "16 tokens")
    assert reply.think.expanded and reply.think.text() == saved.thinking and THOUGHT.startswith(saved.thinking)
    assert len(saved.thinking) < len(THOUGHT)


def test_a_thought_cut_by_a_full_context_says_so(qtbot, window, scripted_gguf):
    """An earlier exchange fills the 512-token context (the form's least) but for a few tokens."""
    n_ctx, room, story = 512, 12, "Tell me a story."

    def prompt_tokens(model, words: int) -> int:
        return len(model.render([{"role": "user", "content": story}, {"role": "assistant", "content": "word " * words},
                                 {"role": "user", "content": QUESTION}]).tokens)
    with ChatModel(scripted_gguf, n_ctx=n_ctx) as model:
        words = next(n for n in range(n_ctx) if prompt_tokens(model, n) >= n_ctx - room)
    store, pane = window.store, window.chat
    conversation = store.create_conversation("A long story", settings=pane.settings.values())
    user = store.add_message(conversation.id, None, "user", story)
    store.add_message(conversation.id, user.id, "assistant", "word " * words)
    pane.conversations.refresh()
    click_conversation(qtbot, pane, conversation.id)
    pane.settings.n_ctx.setValue(n_ctx)
    send(qtbot, pane)
    reply, saved = last_reply(window)
    stats = saved.stats
    assert n_ctx - room <= stats["prompt_tokens"] < n_ctx - 1
    assert stats["stop_reason"] == "context_full" and stats["context_used"] == stats["context_size"] == n_ctx
    assert stats["thinking_unfinished"] and saved.thinking and reply.think.expanded
    assert reply.think.header.text() == (f"Cut: the context is full while thinking · {stats['thinking_s']:.1f} s · "
                                         f"{stats['thinking_tokens']} tokens")


# -- answers -----------------------------------------------------------------------------------------

def test_answers_render_markdown_tables(qtbot, window):
    store, pane = window.store, window.chat
    conversation = store.create_conversation("Squares")
    user = store.add_message(conversation.id, None, "user", "Squares of 2 and 3?")
    store.add_message(conversation.id, user.id, "assistant", "Here:\n\n| n | square |\n|---|---|\n| 2 | 4 |\n| 3 | 9 |\n",
                      thinking="Multiply each by itself.")
    pane.conversations.refresh()
    click_conversation(qtbot, pane, conversation.id)
    reply, _ = last_reply(window)
    tables = [frame for frame in reply.answer.document().rootFrame().childFrames()
              if isinstance(frame, QtGui.QTextTable)]
    assert len(tables) == 1
    table = tables[0]
    cells = [[table.cellAt(row, column).firstCursorPosition().block().text() for column in range(table.columns())]
             for row in range(table.rows())]
    assert cells == [["n", "square"], ["2", "4"], ["3", "9"]]


def test_stats_line_shows_first_token_thinking_answer_and_speed_from_the_saved_stats(qtbot, window):
    send(qtbot, window.chat)
    reply, saved = last_reply(window)
    line, stats = reply.stats_label.text(), saved.stats
    assert re.search(r"first token (\d+) ms", line).group(1) == f"{stats['ttft_s'] * 1000:.0f}"
    assert re.search(r"thinking (\d+\.\d) s · (\d+) tok", line).groups() == (f"{stats['thinking_s']:.1f}",
                                                                               str(stats["thinking_tokens"]))
    assert re.search(r"answer (\d+\.\d) s · (\d+) tok", line).groups() == (f"{stats['answer_s']:.1f}",
                                                                           str(stats["answer_tokens"]))
    assert re.search(r"(\d+\.\d) tok/s$", line).group(1) == f"{stats['tokens_per_s']:.1f}"
    assert stats["thinking_tokens"] > stats["answer_tokens"] > 0
    assert stats["thinking_tokens"] + stats["answer_tokens"] == stats["context_used"] - stats["prompt_tokens"]


# -- settings ----------------------------------------------------------------------------------------

def test_presets_and_history_policy_set_what_the_model_is_run_with(qtbot, window, spy):
    pane = window.chat
    form = pane.settings
    form.max_tokens.setValue(16)
    choices = [(R1_PRESET, None, "keep", 0.6, 0.95), (GREEDY_PRESET, None, "strip", 0.0, 1.0),
               ("Custom", 0.3, "strip", 0.3, 1.0)]
    for preset, temperature, history, sent_temperature, sent_top_p in choices:
        form.preset.setCurrentText(preset)
        assert form.temperature.isEnabled() == form.top_p.isEnabled() == (preset == "Custom")
        if temperature is not None:
            form.temperature.setValue(temperature)
        form.history.setCurrentIndex(form.history.findData(history))
        assert {k: form.values()[k] for k in ("temperature", "top_p", "history")} == {
            "temperature": sent_temperature, "top_p": sent_top_p, "history": history}
        send(qtbot, pane)
        call = spy.calls[-1]
        assert (call["temperature"], call["top_p"], call["history"], call["max_tokens"]) == (
            sent_temperature, sent_top_p, history, 16)
        assert window.store.get_conversation(pane.conversation_id).settings["preset"] == preset
    assert len(spy.calls) == 3


def test_a_system_prompt_shows_deepseeks_warning(qtbot, window):
    form = window.chat.settings
    window.chat.settings_button.setChecked(True)
    assert form.isVisible() and not form.system_warning.isVisible()
    qtbot.keyClicks(form.system_prompt, "Answer briefly.")
    assert form.system_warning.isVisible() and form.system_warning.text() == r1.SYSTEM_PROMPT_WARNING
    assert form.system_warning.text().startswith("DeepSeek advises no system prompt")
    assert form.values()["system_prompt"] == "Answer briefly."
    form.system_prompt.clear()
    assert not form.system_warning.isVisible()


def test_show_the_exact_prompt_is_the_prompt_the_model_is_then_given(qtbot, window, spy):
    pane = window.chat
    send(qtbot, pane)  # an earlier exchange with a thought: the history policy has something to strip
    pane.settings_button.setChecked(True)
    pane.settings.system_prompt.setPlainText("Answer briefly.")
    pane.settings.max_tokens.setValue(16)
    pane.composer.setPlainText("And 3+3?")
    button = next(b for b in pane.settings.findChildren(QtWidgets.QPushButton) if b.text() == "Show the exact prompt…")
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: getattr(pane.settings, "prompt_dialog", None) is not None
                    and pane.settings.prompt_dialog.isVisible())
    dialog = pane.settings.prompt_dialog
    shown = dialog.findChild(QtWidgets.QPlainTextEdit).toPlainText()
    notes = " ".join(label.text() for label in dialog.findChildren(QtWidgets.QLabel))
    dialog.close()
    assert "Answer briefly." in shown and ANSWER in shown and "And 3+3?" in shown
    assert "Step 1" not in shown  # history: strip
    pane.send()
    wait_idle(qtbot, pane)
    given = spy.calls[-1]["prompt"]
    assert shown == given.text
    _, saved = last_reply(window)
    assert saved.stats["prompt_tokens"] == len(given.tokens)
    assert f"{len(given.tokens)} tokens" in notes and "history: strip" in notes and r1.SYSTEM_PROMPT_WARNING in notes
    with ChatModel(pane.settings.values()["model"]) as model:  # the engine's rendering of the same branch
        assert model.render(messages_for(window.store, saved.parent_id, "Answer briefly."), "strip").text == shown


def test_settings_are_per_conversation(qtbot, window):
    store, pane = window.store, window.chat
    form = pane.settings
    first, second = store.create_conversation("First"), store.create_conversation("Second")
    pane.conversations.refresh()
    click_conversation(qtbot, pane, first.id)
    form.preset.setCurrentText("Custom")
    form.temperature.setValue(0.3)
    form.top_p.setValue(0.8)
    form.max_tokens.setValue(1024)
    form.system_prompt.setPlainText("Answer in French.")
    form.history.setCurrentIndex(form.history.findData("keep"))
    form.n_ctx.setValue(2048)
    form.budget_on.setChecked(True)
    form.budget.setValue(512)
    form.budget_message.setPlainText("Time is up.")
    chosen = form.values()
    click_conversation(qtbot, pane, second.id)
    assert {k: form.values()[k] for k in chosen if k != "model"} == {
        "preset": R1_PRESET, "temperature": 0.6, "top_p": 0.95, "max_tokens": 4096, "system_prompt": "",
        "history": "strip", "n_ctx": 4096, "gpu_layers": -1, "thinking_budget": None, "budget_message": "",
        "thinking": None}
    click_conversation(qtbot, pane, first.id)
    assert form.values() == chosen and store.get_conversation(first.id).settings == chosen


# -- keyboard ----------------------------------------------------------------------------------------

def test_enter_sends_and_shift_enter_breaks_the_line(qtbot, window):
    pane = window.chat
    pane.composer.setFocus()
    qtbot.keyClicks(pane.composer, "What is")
    qtbot.keyClick(pane.composer, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(pane.composer, "2+2?")
    assert pane.composer.toPlainText() == "What is\n2+2?"
    assert not pane.session.busy and pane.streaming is None and pane.conversation_id is None
    pane.composer.clear()
    qtbot.keyClicks(pane.composer, QUESTION)
    qtbot.keyClick(pane.composer, Qt.Key.Key_Return)
    assert pane.session.busy and pane.composer.toPlainText() == ""
    wait_idle(qtbot, pane)
    assert [user.text_view.toPlainText() for user in widgets(pane, UserMessageWidget)] == [QUESTION]
    reply, saved = last_reply(window)
    assert reply.answer_text.strip() == ANSWER and saved.status == "complete"


@pytest.mark.parametrize(("key", "modifier"), [(Qt.Key.Key_Escape, Qt.KeyboardModifier.NoModifier),
                                               (Qt.Key.Key_Period, CTRL)], ids=["Esc", "Ctrl+."])
def test_esc_and_ctrl_period_stop_a_streaming_reply(qtbot, window, spy, key, modifier):
    pane = window.chat
    activate(qtbot, window)
    pane.composer.setFocus()
    hold_mid_thought(qtbot, pane, spy, lines=3)
    press(qtbot, window, key, modifier)
    spy.release()
    wait_idle(qtbot, pane)
    reply, saved = last_reply(window)
    assert saved.status == "stopped" and saved.stats["stop_reason"] == "cancelled"
    assert reply.think.header.text().startswith("Stopped by you while thinking · ")
    assert saved.thinking.count("\n") >= 3 and THOUGHT.startswith(saved.thinking) and len(saved.thinking) < len(THOUGHT)


def test_shortcuts_for_panes_search_composer_settings_and_new_chat(qtbot, window):
    store, pane = window.store, window.chat
    conversation = store.create_conversation("Earlier")
    user = store.add_message(conversation.id, None, "user", QUESTION)
    store.add_message(conversation.id, user.id, "assistant", ANSWER, thinking=THOUGHT)
    pane.conversations.refresh()
    click_conversation(qtbot, pane, conversation.id)
    activate(qtbot, window)
    pane.composer.setFocus()
    for key, shown in ((Qt.Key.Key_2, window.compare), (Qt.Key.Key_3, window.models), (Qt.Key.Key_1, window.chat_stack)):
        press(qtbot, window, key, CTRL)
        assert window.stack.currentWidget() is shown
    press(qtbot, window, Qt.Key.Key_3, CTRL)
    press(qtbot, window, Qt.Key.Key_F, CTRL)  # from another pane: back to Chat, into the search box
    assert window.stack.currentWidget() is window.chat_stack and pane.conversations.search.hasFocus()
    press(qtbot, window, Qt.Key.Key_L, CTRL)
    assert pane.composer.hasFocus()
    press(qtbot, window, Qt.Key.Key_Comma, CTRL)
    assert pane.settings.isVisible()
    press(qtbot, window, Qt.Key.Key_Comma, CTRL)
    assert not pane.settings.isVisible()
    assert pane.conversation_id == conversation.id and widgets(pane, AssistantMessageWidget)
    press(qtbot, window, Qt.Key.Key_3, CTRL)
    press(qtbot, window, Qt.Key.Key_N, CTRL)
    assert window.stack.currentWidget() is window.chat_stack and pane.conversation_id is None
    assert pane.title.text() == "New chat" and not widgets(pane, AssistantMessageWidget) and pane.composer.hasFocus()


# -- look and state ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("forced", "system", "expected"), [
    ("dark", Qt.ColorScheme.Light, theme.DARK), ("light", Qt.ColorScheme.Dark, theme.LIGHT),
    (None, Qt.ColorScheme.Dark, theme.DARK), (None, Qt.ColorScheme.Light, theme.LIGHT)],
    ids=["AHA_THEME=dark", "AHA_THEME=light", "system-dark", "system-light"])
def test_light_dark_follows_the_system_unless_aha_theme_forces_one(restyled, monkeypatch, forced, system, expected):
    monkeypatch.setattr(QtGui.QStyleHints, "colorScheme", lambda hints: system)
    if forced:
        monkeypatch.setenv("AHA_THEME", forced)
    else:
        monkeypatch.delenv("AHA_THEME", raising=False)
    assert theme.apply(restyled) == expected
    role = QtGui.QPalette.ColorRole
    palette = restyled.palette()
    assert [palette.color(r).name() for r in (role.Window, role.Base, role.Text, role.Highlight)] == [
        expected.window, expected.surface, expected.text, expected.accent]
    stats = QtWidgets.QLabel("first token 12 ms", objectName="Stats")  # styled by the sheet: muted text
    stats.ensurePolished()
    assert stats.palette().color(role.WindowText).name() == expected.muted


def test_window_size_and_chat_splitter_come_back_on_the_next_start(qtbot, window):
    window.resize(790, 600)                      # fits the offscreen screen (800 × 800), unlike the default
    window.chat.splitter.setSizes([200, 400, 0])
    qtbot.wait(50)
    size, sizes = window.size(), window.chat.splitter.sizes()
    assert size.height() == 600 and size.width() < 800 and sizes[0] == 200  # not the defaults
    window.close()
    again = MainWindow(Store())
    qtbot.addWidget(again)
    again.show()
    qtbot.wait(50)
    assert again.size() == size and again.chat.splitter.sizes() == sizes
    again.close()


# Runs `aha`'s function as the console script does (no arguments) in a child process: the window's run()
# must create the QApplication itself. Its event loop runs; a timer in it looks at what is shown, closes it.
AHA_PROBE = r"""
import json
from app.launch import main
from app.main import MainWindow
from app.qt import QtCore, QtGui, QtWidgets
seen = {}
real_exec = QtWidgets.QApplication.exec

def probe():
    app = QtWidgets.QApplication.instance()
    shown = [w for w in app.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
    seen.update(windows=[w.windowTitle() for w in shown], sheet=app.styleSheet(),
                window=app.palette().color(QtGui.QPalette.ColorRole.Window).name())
    for w in shown:
        w.close()

def exec_with_probe(*args):
    QtCore.QTimer.singleShot(0, probe)
    return real_exec()

QtWidgets.QApplication.exec = exec_with_probe
code = main()
print(json.dumps({"code": code, **seen}))
"""


def test_aha_without_arguments_opens_the_window(tmp_path):
    (script,) = entry_points(group="console_scripts", name="aha")
    assert script.value == "app.launch:main"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "AHA_THEME": "dark", "HOME": str(tmp_path / "home"),
           "OLLAMA_MODELS": str(tmp_path / "no-ollama"), "HF_HUB_CACHE": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", AHA_PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=QT_WAIT_MS / 1000)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"code": 0, "windows": ["Aha"], "window": theme.DARK.window, "sheet": theme.stylesheet(theme.DARK)}


# -- the welcome screen ------------------------------------------------------------------------------
# pytest-qt fails a test when an exception escapes a slot: each failure here must arrive as a visible line.

def open_from_welcome(monkeypatch, main, path) -> None:
    """The user clicks "Open a GGUF file…" and picks `path` in the file dialog."""
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    main.empty.open_button.click()


def write_adapter(path: Path) -> Path:
    """A small GGUF whose general.type says it is a LoRA adapter, written with gguf-py."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type("adapter")
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.ones((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("make", "expected"), [
    (lambda path, model: path.write_bytes(model.read_bytes()[:3000]), "is truncated"),
    (lambda path, model: path.write_text("not a model\n"), "is not a GGUF file"),
    (lambda path, model: write_adapter(path), "is a LoRA adapter, not a model"),
], ids=["truncated", "not-gguf", "lora-adapter"])
def test_opening_a_broken_file_on_the_welcome_screen_says_why_in_the_window(qtbot, first_run, monkeypatch, tmp_path,
                                                                             scripted_gguf, make, expected):
    main = first_run()
    broken = tmp_path / "broken.gguf"
    make(broken, scripted_gguf)
    open_from_welcome(monkeypatch, main, broken)
    problem = main.empty.problem
    assert problem.isVisible() and expected in problem.text() and str(broken) in problem.text()
    assert "\n" not in problem.text() and problem.objectName() == "Warning"
    assert main.chat_stack.currentWidget() is main.empty and main.library.entries() == []
    open_from_welcome(monkeypatch, main, scripted_gguf)  # then a good file: the line goes, the chat opens
    assert main.chat_stack.currentWidget() is main.chat and not main.empty.problem.isVisibleTo(main)
    assert main.chat.settings.model.currentData() == str(scripted_gguf)
    main.close()


def test_welcome_screen_with_nothing_found_hides_the_empty_list_and_says_what_to_do(qtbot, first_run):
    main = first_run()
    empty = main.empty
    qtbot.waitUntil(lambda: empty.hint.isVisible())
    assert not empty.found.isVisible() and not empty.use_button.isVisible()
    assert empty.hint.text().startswith("Open a GGUF file you already have, add a folder that holds some, or "
                                        "download DeepSeek-R1")
    assert all(button.isVisible() and button.isEnabled()
               for button in (empty.open_button, empty.folder_button, empty.download_button))
    main.close()


@platforms.symlinks
def test_welcome_screen_with_models_found_selects_the_first_so_use_works_at_once(qtbot, first_run, scripted_gguf,
                                                                                 tmp_path):
    snapshot = tmp_path / "hf" / "models--someone--tiny-r1-GGUF" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "tiny-r1.gguf").symlink_to(scripted_gguf)
    main = first_run()
    empty = main.empty
    qtbot.waitUntil(lambda: empty.found.isVisible())
    assert empty.use_button.isVisible() and empty.use_button.isEnabled() and not empty.hint.isVisible()
    qtbot.mouseClick(empty.use_button, Qt.MouseButton.LeftButton)
    assert main.chat_stack.currentWidget() is main.chat
    assert main.chat.settings.model.currentData() == str(scripted_gguf.resolve())
    qtbot.waitUntil(lambda: main.models.model.rowCount() == 1)   # the Models pane lists it too
    main.close()


def test_adding_a_folder_with_no_models_from_the_welcome_screen_says_so_in_the_models_pane(qtbot, first_run,
                                                                                           monkeypatch, tmp_path):
    main = first_run()
    folder = tmp_path / "nothing-here"
    folder.mkdir()
    monkeypatch.setattr(QtWidgets.QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))
    main.empty.folder_button.click()
    assert main.stack.currentWidget() is main.models
    status = main.models.status
    qtbot.waitUntil(lambda: "holds no .gguf model files" in status.full_text())
    assert status.isVisible() and status.objectName() == "Warning" and str(folder) in status.full_text()
    main.close()


def test_an_offline_download_from_the_welcome_screen_says_in_full_what_to_do(qtbot, first_run, monkeypatch, tmp_path):
    """The real `aha models pull` child, with the Hub unreachable (nothing listens on HF_ENDPOINT's port)."""
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    main = first_run()
    main.empty.download_button.click()
    assert main.stack.currentWidget() is main.models
    (row,) = main.models.download_rows()
    qtbot.waitUntil(lambda: not row.is_running())
    qtbot.wait(50)                                         # the wrapped label's new height is laid out
    problem = row.problem
    assert problem.isVisible() and not row.detail.isVisible() and problem.objectName() == "Warning"
    assert "cannot reach http://127.0.0.1:" in problem.text()
    assert "Offline, open a GGUF file you already have or add a folder of models" in problem.text()
    assert problem.wordWrap() and problem.height() >= problem.heightForWidth(problem.width())  # not cut short
    main.close()


def test_choosing_a_model_while_a_reply_streams_says_to_stop_it_first(qtbot, window, spy, scripted_gguf):
    pane = window.chat
    hold_mid_thought(qtbot, pane, spy, lines=2)
    conversation, model = pane.conversation_id, pane.settings.values()["model"]
    window.models.chat_requested.emit(str(scripted_gguf))
    assert "A reply is still being written" in window.statusBar().currentMessage()
    assert pane.conversation_id == conversation and pane.settings.values()["model"] == model
    spy.release()
    wait_idle(qtbot, pane)


# `aha` as the console script runs it, on a library file it cannot read; the message box records instead of waiting.
UNREADABLE_PROBE = r"""
import json
from app.launch import main
from app.qt import QtWidgets
shown = []
QtWidgets.QMessageBox.critical = lambda parent, title, text: shown.append([title, text])
code = main()
print(json.dumps({"code": code, "shown": shown}))
"""


@pytest.mark.parametrize("damaged, said", [
    ("library.json", "cannot read the model library {path}"),
    ("aha.db", "the conversation store {path} is damaged"),
])
def test_a_file_aha_cannot_read_stops_the_start_with_its_one_line(tmp_path, damaged, said):
    home = tmp_path / "aha-home"
    home.mkdir(exist_ok=True)
    path = home / damaged
    path.write_text("{ not json, not a database" * 200)
    before = path.read_bytes()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "AHA_HOME": str(home), "HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", UNREADABLE_PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=QT_WAIT_MS / 1000)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    ((title, text),) = seen["shown"]
    assert seen["code"] == 1 and title == "Aha cannot start"
    assert text.startswith(said.format(path=path)) and "\n" not in text
    assert done.stderr == f"aha: error: {text}\n"
    assert path.read_bytes() == before  # what the user had is left as it was
