"""Compare: the same prompt to two settings of the scripted model, both replies and the table."""

from __future__ import annotations

from app.compare_view import ComparePane
from engine.models import Library
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT


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
    assert pane.table.item(0, 0).text().startswith(f"{pane.results['A']['thinking_tokens']} tokens")
    assert "A thought" in pane.status.text()
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
        thinking, answer, first_token, speed, stopped = columns[name]
        assert thinking == f"{stats['thinking_tokens']} tokens · {stats['thinking_s']:.1f} s"
        assert answer == f"{stats['answer_tokens']} tokens · {stats['answer_s']:.1f} s"
        assert first_token == f"{stats['ttft_s'] * 1000:.0f} ms" and speed == f"{stats['tokens_per_s']:.1f} tok/s"
        assert stopped == "max_tokens"
    assert pane.sides["A"].reply.think.text() != pane.sides["B"].reply.think.text()
    pane.close_models()
