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
