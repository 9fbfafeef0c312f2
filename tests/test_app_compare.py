"""Compare: the same prompt to two settings of the scripted model, both replies and the table; how each reply
ended in the one wording of the Chat view; model lists that follow the library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.chat.compare import ROWS, ComparePane
from engine.chat.conversation import stats_fields
from engine.chat.reasoning import DEFAULT_BUDGET_MESSAGE
from engine.chat.runtime import ChatModel
from engine.models import Library
from tests.support import ends_in_thought
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ends_model(tiny_dir, checkpoint):
    return ends_in_thought.ends_in_thought_gguf(tiny_dir, checkpoint("qwen2"))


def column(pane, name: str) -> dict[str, str]:
    return {label: pane.table.item(row, "AB".index(name)).text() for row, label in enumerate(ROWS)}


def test_compare_two_sampling_settings_side_by_side(qtbot, scripted_gguf, gguf_file):
    Library().add(scripted_gguf)
    Library().add(gguf_file("qwen2", "q8_0"))
    pane = ComparePane()
    qtbot.addWidget(pane)
    pane.show()
    a, b = pane.sides["A"], pane.sides["B"]
    a.model.setCurrentIndex(a.model.findData(str(scripted_gguf)))
    b.model.setCurrentIndex(b.model.findData(str(scripted_gguf)))
    a.sampling.setCurrentText("Greedy (0 · 1.0)")
    b.sampling.setCurrentText("Hot (1.0 · 0.95)")
    pane.max_tokens.setValue(200)
    pane.prompt.setPlainText(QUESTION)
    pane.run()
    qtbot.waitUntil(lambda: not pane.job.is_running())
    assert set(pane.results) == {"A", "B"}
    assert a.reply.think.text() == THOUGHT and a.reply.answer_text.strip() == ANSWER
    assert b.reply.think.text()
    assert pane.table.item(0, 0).text().startswith(f"{pane.results['A']['thinking_s']:.1f} s · ")
    assert "A thought" in pane.status.text()
    pane.close_models()


def test_compare_one_model_with_two_thinking_budgets(qtbot, scripted_gguf):
    """Same model, same sampling, budget 12 vs 30: each side's thought is cut at its own budget, and the
    table, the think headers, the reply labels and the summary say so."""
    Library().add(scripted_gguf)
    pane = ComparePane()
    qtbot.addWidget(pane)
    pane.show()
    for name, budget in (("A", 12), ("B", 30)):
        side = pane.sides[name]
        side.sampling.setCurrentText("Greedy (0 · 1.0)")
        assert not side.budget.isEnabled() and side.plan().thinking_budget is None
        side.budget_on.setChecked(True)
        side.budget.setValue(budget)
        assert side.budget.isEnabled() and side.plan().thinking_budget == budget
    pane.prompt.setPlainText(QUESTION)
    pane.run()
    qtbot.waitUntil(lambda: not pane.job.is_running())
    for name, budget in (("A", 12), ("B", 30)):
        stats, reply = pane.results[name], pane.sides[name].reply
        assert stats["budget_ended_thought"] and stats["thinking_tokens"] == budget
        assert reply.think.text().endswith(DEFAULT_BUDGET_MESSAGE + "\n")
        assert THOUGHT.startswith(reply.think.text().split(DEFAULT_BUDGET_MESSAGE)[0])
        assert reply.think.header.text().startswith(f"Ended by the thinking budget ({budget} tokens) · ")
        assert reply.author.text().endswith(f"Greedy (0 · 1.0) · budget {budget} tokens")
        assert column(pane, name)["How it ended"] == f"Finished after the thinking budget ({budget} tokens) ended the thought"
    a_thought, b_thought = (pane.sides[name].reply.think.text().split(DEFAULT_BUDGET_MESSAGE)[0] for name in "AB")
    assert b_thought.startswith(a_thought) and len(b_thought) > len(a_thought)
    assert pane.status.text().startswith("A thought 12 tokens (its budget ended it), B 30 (its budget ended it);")
    pane.sides["B"].budget_on.setChecked(False)                    # run again: B without a budget
    pane.run()
    qtbot.waitUntil(lambda: not pane.job.is_running())
    b = pane.sides["B"]
    assert b.holder_layout.count() == 2 and b.holder_layout.itemAt(0).widget() is b.reply  # the new reply only
    assert b.reply.think.text() == THOUGHT and not pane.results["B"]["budget_ended_thought"]
    assert b.reply.author.text().endswith("Greedy (0 · 1.0)")
    pane.close_models()


def test_compare_two_models_shows_each_ones_own_tokens_and_times(qtbot, scripted_gguf, gguf_file):
    """Two different models on one prompt: each side's table column holds that side's own measured stats
    (tokens with their seconds, first token, speed), and the two columns differ where the models do."""
    other = gguf_file("llama", "q8_0")
    Library().add(scripted_gguf)
    Library().add(other)
    pane = ComparePane()
    qtbot.addWidget(pane)
    pane.show()
    for name, path in (("A", scripted_gguf), ("B", other)):
        side = pane.sides[name]
        side.model.setCurrentIndex(side.model.findData(str(path)))
        side.sampling.setCurrentText("Greedy (0 · 1.0)")
    pane.max_tokens.setValue(24)
    pane.prompt.setPlainText(QUESTION)
    pane.run()
    qtbot.waitUntil(lambda: not pane.job.is_running())
    a, b = pane.results["A"], pane.results["B"]
    assert a["thinking_tokens"] + a["answer_tokens"] == 24 and b["thinking_tokens"] + b["answer_tokens"] == 24
    columns = {name: [pane.table.item(row, column).text() for row in range(pane.table.rowCount())]
               for column, name in enumerate("AB")}
    for name, stats in (("A", a), ("B", b)):
        thinking, answer, first_token, speed, ended = columns[name]
        assert thinking == f"{stats['thinking_s']:.1f} s · {stats['thinking_tokens']} tokens"
        assert answer == f"{stats['answer_s']:.1f} s · {stats['answer_tokens']} tokens"
        assert first_token == f"{stats['ttft_s'] * 1000:.0f} ms" and speed == f"{stats['tokens_per_s']:.1f} tok/s"
        assert stats["stop_reason"] == "max_tokens" and stats["thinking_unfinished"]
        assert ended == "Cut by the token budget while thinking"
    assert pane.sides["A"].reply.think.text() != pane.sides["B"].reply.think.text()
    for name in "AB":  # each reply says which model and setting wrote it
        side = pane.sides[name]
        assert side.reply.author.text() == f"{side.model.currentText()} · Greedy (0 · 1.0)"
    assert pane.sides["A"].reply.author.text() != pane.sides["B"].reply.author.text()
    pane.close_models()


def test_a_reply_that_ends_inside_its_thought_is_not_called_stopped(qtbot, ends_model):
    """EOS inside <think> on both sides: the think header and "How it ended" say the model ended it."""
    Library().add(ends_model)
    pane = ComparePane()
    qtbot.addWidget(pane)
    pane.show()
    for side in pane.sides.values():
        side.sampling.setCurrentText("Greedy (0 · 1.0)")
    pane.prompt.setPlainText(ends_in_thought.QUESTION)
    pane.run()
    qtbot.waitUntil(lambda: not pane.job.is_running())
    for name in "AB":
        stats, reply = pane.results[name], pane.sides[name].reply
        assert stats["stop_reason"] == "eos" and stats["thinking_unfinished"]
        assert column(pane, name)["How it ended"] == "The model ended inside its thought"
        assert reply.think.header.text() == (f"The model ended inside its thought · {stats['thinking_s']:.1f} s · "
                                             f"{stats['thinking_tokens']} tokens")
        assert "Stopped" not in reply.stats_label.text()
    pane.close_models()


def test_the_table_says_1_token(scripted_gguf):
    with ChatModel(scripted_gguf) as model:
        *_, done = model.stream([{"role": "user", "content": QUESTION}], temperature=0, max_tokens=1)
    stats = done.stats
    rows = stats_fields(stats)
    assert rows["Thinking"] == f"{stats['thinking_s']:.1f} s · 1 token"
    assert rows["Answer"] == "0.0 s · 0 tokens"
    assert rows["How it ended"] == "Cut by the token budget while thinking"


def test_models_added_from_the_command_line_appear_when_compare_is_shown_again(qtbot, scripted_gguf, gguf_file):
    """`aha models add` while the window is open: Compare lists the new model the next time it is shown, and
    each side keeps the model it had."""
    Library().add(scripted_gguf)
    pane = ComparePane()
    qtbot.addWidget(pane)
    pane.show()
    a, b = pane.sides["A"], pane.sides["B"]
    assert a.model.count() == b.model.count() == 1 and a.model.currentData() == str(scripted_gguf)
    pane.hide()                                            # another pane is in front
    other = gguf_file("llama", "q8_0")
    added = subprocess.run([sys.executable, "-m", "engine.cli", "models", "add", str(other)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    pane.show()
    for side in (a, b):
        assert [side.model.itemData(i) for i in range(side.model.count())] == [str(scripted_gguf), str(other)]
        assert side.model.currentData() == str(scripted_gguf)
