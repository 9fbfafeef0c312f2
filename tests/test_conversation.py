"""Chat turns into the store: branches, cancel keeps the partial thought, the CLI's JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from engine.chat.conversation import TurnSettings, regenerate, send, stats_fields, stats_line, title_from
from engine.chat.runtime import ChatModel
from engine.store import Store
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT

GREEDY = TurnSettings(temperature=0.0, max_tokens=400)


@pytest.fixture(scope="module")
def model(scripted_gguf):
    with ChatModel(scripted_gguf, n_ctx=1024) as chat_model:
        yield chat_model


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "aha.db") as opened:
        yield opened


def test_send_saves_thinking_and_answer_apart(store, model):
    conversation = store.create_conversation()
    events = list(send(store, model, conversation.id, QUESTION, settings=GREEDY))
    done = events[-1].stats
    saved = store.get_message(done["message_id"])
    assert saved.status == "complete" and saved.thinking == THOUGHT and saved.content == "\n\n" + ANSWER
    assert saved.stats["thinking_tokens"] == done["thinking_tokens"] and saved.sampling["temperature"] == 0.0
    assert store.get_conversation(conversation.id).title == QUESTION
    exported = store.export_json(conversation.id)
    assert any(m.get("thinking") == THOUGHT for m in exported["messages"])


def test_regenerate_makes_a_branch_and_keeps_the_old_reply(store, model):
    conversation = store.create_conversation()
    first = list(send(store, model, conversation.id, QUESTION, settings=GREEDY))[-1].stats["message_id"]
    second = list(regenerate(store, model, conversation.id, first,
                             settings=TurnSettings(temperature=0.9, seed=3, max_tokens=20)))[-1].stats["message_id"]
    assert [m.id for m in store.siblings(second)] == [first, second]
    assert store.get_message(first).content == "\n\n" + ANSWER
    assert store.get_conversation(conversation.id).leaf_id == second


def test_cancel_mid_thought_saves_stopped_with_thinking(store, model):
    conversation = store.create_conversation()
    cancel, started = threading.Event(), threading.Event()

    def press_stop():
        started.wait(5)
        cancel.set()

    stopper = threading.Thread(target=press_stop)
    stopper.start()
    events = []
    for event in send(store, model, conversation.id, QUESTION, settings=GREEDY, cancel=cancel):
        events.append(event)
        if sum(e.kind == "thinking" for e in events) == 3:
            started.set()
            stopper.join()
    done = events[-1].stats
    saved = store.get_message(done["message_id"])
    assert done["stop_reason"] == "cancelled" and saved.status == "stopped"
    assert saved.thinking and THOUGHT.startswith(saved.thinking) and saved.content == ""
    assert done["thinking_tokens"] <= 4


def test_abandoned_stream_is_saved_as_stopped(store, model):
    conversation = store.create_conversation()
    stream = send(store, model, conversation.id, QUESTION, settings=GREEDY)
    for _ in range(4):
        next(stream)
    stream.close()  # the consumer went away (window closed, exception…)
    leaf = store.get_message(store.get_conversation(conversation.id).leaf_id)
    assert leaf.role == "assistant" and leaf.status == "stopped" and leaf.thinking


def test_cli_chat_json_lines_and_continue(scripted_gguf, tmp_path):
    import os

    env = {**os.environ, "AHA_HOME": str(tmp_path / "home")}

    def chat(*extra):
        result = subprocess.run([sys.executable, "-m", "engine.cli", "chat", str(scripted_gguf), "-p", QUESTION,
                                 "--json", "--temperature", "0", *extra], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    lines = chat()
    assert {line["type"] for line in lines} == {"thinking", "answer", "done"}
    assert "".join(x["text"] for x in lines if x["type"] == "thinking") == THOUGHT
    done = lines[-1]
    assert done["type"] == "done" and done["stats"]["stop_reason"] == "eos"
    again = chat("--conversation", str(done["stats"]["conversation_id"]))
    with Store(tmp_path / "home" / "aha.db") as store:
        path = store.branch_path(again[-1]["stats"]["message_id"])
    assert [m.role for m in path] == ["user", "assistant", "user", "assistant"]


def test_cli_chat_text_view(scripted_gguf, tmp_path):
    import os

    env = {**os.environ, "AHA_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-m", "engine.cli", "chat", str(scripted_gguf), "-p", QUESTION,
                             "--temperature", "0"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Thinking…\nStep 1") and ANSWER in result.stdout
    assert "Thought for" in result.stdout and "\x1b[" not in result.stdout  # no colour codes off a terminal


def test_title_from_first_line():
    assert title_from("  What is\n the answer?") == "What is"
    assert title_from("word " * 30).endswith("…") and len(title_from("word " * 30)) <= 61


STATS = {"thinking_s": 3.14, "thinking_tokens": 120, "answer_s": 2.0, "answer_tokens": 1, "ttft_s": 0.012,
         "tokens_per_s": 45.3, "stop_reason": "max_tokens"}


def test_stats_read_the_same_in_the_table_and_in_both_stats_lines():
    """One wording for Compare's rows, the window's stats line (the thought's header above it) and `aha chat`'s
    (the thought's summary first); why the reply ended is said once."""
    assert stats_fields(STATS) == {"Thinking": "3.1 s · 120 tokens", "Answer": "2.0 s · 1 token",
                                   "First token": "12 ms", "Speed": "45.3 tok/s",
                                   "How it ended": "Cut by the token budget"}
    assert stats_line(STATS, thought_above=True) == ("thinking 3.1 s · 120 tokens · answer 2.0 s · 1 token · "
                                                     "first token 12 ms · 45.3 tok/s · Cut by the token budget")
    assert stats_line(STATS) == ("Thought for 3.1 s · 120 tokens · answer 2.0 s · 1 token · first token 12 ms · "
                                 "45.3 tok/s · Cut by the token budget")
    in_thought = {**STATS, "answer_tokens": 0, "thinking_unfinished": True}
    assert stats_line(in_thought) == ("Cut by the token budget while thinking · 3.1 s · 120 tokens · "
                                      "first token 12 ms · 45.3 tok/s")
    assert stats_line(in_thought, thought_above=True) == "thinking 3.1 s · 120 tokens · first token 12 ms · 45.3 tok/s"
    ended = {**STATS, "stop_reason": "eos"}
    assert stats_line(ended).endswith("45.3 tok/s") and stats_line({}) == ""


def test_a_thought_the_budget_ended_says_so_in_both_stats_lines():
    """Below the window's think header the line says the budget ended the thought; `aha chat`'s line starts with
    the header's wording; a thought the budget never reached reads as usual."""
    budget = {**STATS, "stop_reason": "eos", "thinking_tokens": 120, "thinking_budget": 120,
              "budget_ended_thought": True}
    assert stats_line(budget, thought_above=True).startswith(
        "thinking 3.1 s · 120 tokens, ended by the thinking budget · answer 2.0 s · 1 token")
    assert stats_line(budget).startswith("Ended by the thinking budget (120 tokens) · 3.1 s · 120 tokens · answer")
    untouched = {**budget, "budget_ended_thought": False, "thinking_budget": 4096}
    assert stats_line(untouched, thought_above=True).startswith("thinking 3.1 s · 120 tokens · answer")
