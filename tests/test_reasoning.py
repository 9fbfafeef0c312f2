"""Reasoning controls: the thinking budget (scripted model and a random tiny GGUF through real llama.cpp,
`aha chat --thinking-budget`) and the thinking switch read from the template (Qwen3-style vs R1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine import r1
from engine.chat.conversation import (
    BUDGET_ENDED,
    TurnSettings,
    send,
    stats_line,
    stop_wording,
    thought_summary,
)
from engine.chat.reasoning import (
    ALWAYS_THINKS,
    DEFAULT_BUDGET_MESSAGE,
    NO_SWITCH,
    budget_text,
    check_budget,
    effort_budget,
    thinking_switch,
)
from engine.chat.runtime import ChatModel, complete
from engine.chat_template import ChatTemplate
from engine.errors import AhaError
from engine.store import Store
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT
from tests.support.templates import PLAIN_TEMPLATE, QWEN3_TEMPLATE

ASK = [{"role": "user", "content": QUESTION}]
GREEDY = {"temperature": 0.0, "seed": 0}


def test_effort_and_budget_values():
    assert [effort_budget(e) for e in ("low", "medium", "high")] == [1024, 4096, 16384]
    with pytest.raises(AhaError, match="reasoning_effort 'max' is not one of low, medium, high"):
        effort_budget("max")
    assert check_budget(None) is None and check_budget(0) == 0 and check_budget(256) == 256
    for bad in (-1, 2.5, "256", True):
        with pytest.raises(AhaError, match="whole number of tokens"):
            check_budget(bad)
    assert budget_text() == DEFAULT_BUDGET_MESSAGE + "\n</think>\n\n"
    assert budget_text("Time is up.", " </think>") == "Time is up. </think>"


def test_thinking_switch_is_read_from_the_template_rendered_both_ways():
    qwen3 = thinking_switch(ChatTemplate(QWEN3_TEMPLATE))
    assert (qwen3.supported, qwen3.variable, qwen3.default) == (True, "enable_thinking", True)
    r1_switch = thinking_switch(ChatTemplate(r1.CHAT_TEMPLATE, "<bos>"))
    assert not r1_switch.supported and r1_switch.reason == ALWAYS_THINKS
    plain = thinking_switch(ChatTemplate(PLAIN_TEMPLATE))
    assert not plain.supported and plain.reason == NO_SWITCH
    # A template whose default is off (thinks only when asked) is told apart from Qwen3's default-on.
    opt_in = ChatTemplate("{{ messages[0].content }}{% if thinking is defined and thinking %}<think>\n{% endif %}")
    assert thinking_switch(opt_in) == type(qwen3)(True, "thinking", default=False)


@pytest.fixture(scope="module")
def scripted(scripted_gguf):
    with ChatModel(scripted_gguf, n_ctx=512, n_threads=2) as model:
        yield model


def test_without_a_budget_nothing_changes(scripted):
    result = complete(scripted, ASK, **GREEDY)
    assert (result.thinking.strip(), result.answer.strip()) == (THOUGHT.strip(), ANSWER)
    stats = result.stats
    assert (stats["thinking_budget"], stats["budget_ended_thought"], stats["budget_tokens"]) == (None, False, 0)
    assert thought_summary(stats).startswith("Thought for ")


def test_budget_cuts_the_thought_at_n_tokens_and_the_model_answers_after_the_closing_text(scripted):
    full = complete(scripted, ASK, **GREEDY)
    result = complete(scripted, ASK, thinking_budget=12, **GREEDY)
    stats = result.stats
    assert stats["thinking_tokens"] == 12 < full.stats["thinking_tokens"]
    assert stats["budget_ended_thought"] and stats["thinking_budget"] == 12 and stats["budget_tokens"] > 0
    # The thought is the model's first 12 tokens of its full thought, then the budget's sentence.
    written, said = result.thinking.split(DEFAULT_BUDGET_MESSAGE)
    assert full.thinking.startswith(written) and len(written) < len(full.thinking)
    assert said == "\n" and not stats["thinking_unfinished"]
    assert result.answer.strip() and stats["answer_tokens"] > 0 and stats["stop_reason"] == "eos"
    # What the model continued from: the prompt, its 12 thinking tokens, the budget's text, then its answer.
    seen = scripted._llm.detokenize(list(scripted._llm._input_ids), special=True).decode("utf-8", "replace")
    prompt = scripted.render(ASK).text
    assert seen.startswith(prompt)
    assert seen[len(prompt):].startswith(written + budget_text())
    assert stats["context_used"] == stats["prompt_tokens"] + 12 + stats["budget_tokens"] + stats["answer_tokens"]
    assert thought_summary(stats).startswith(f"{BUDGET_ENDED} (12 tokens) · ")
    assert stop_wording(stats) == "Finished after the thinking budget (12 tokens) ended the thought"
    assert BUDGET_ENDED in stats_line(stats)


def test_a_budget_of_zero_closes_a_prefilled_thought_before_the_first_token(scripted):
    result = complete(scripted, ASK, thinking_budget=0, budget_message="No time.", **GREEDY)
    assert result.thinking == "No time.\n" and result.stats["thinking_tokens"] == 0
    assert result.stats["budget_ended_thought"] and result.answer.strip()


def test_a_thought_shorter_than_the_budget_is_left_alone(scripted):
    result = complete(scripted, ASK, thinking_budget=10_000, **GREEDY)
    assert result.thinking.strip() == THOUGHT.strip() and not result.stats["budget_ended_thought"]


def test_max_tokens_still_bounds_thinking_and_answer_together(scripted):
    result = complete(scripted, ASK, thinking_budget=12, max_tokens=14, **GREEDY)
    stats = result.stats
    assert stats["budget_ended_thought"] and stats["stop_reason"] == "max_tokens"
    assert stats["thinking_tokens"] + stats["answer_tokens"] == 14


def test_budget_on_a_random_tiny_model_through_llama_cpp(gguf_file):
    with ChatModel(gguf_file("qwen2", "f16"), n_ctx=512, n_threads=2) as model:
        result = complete(model, ASK, thinking_budget=20, max_tokens=60, temperature=1.0, seed=3)
    stats = result.stats
    # A random model rarely writes </think>: the budget ends its thought at 20 tokens, unless it did first.
    if stats["budget_ended_thought"]:
        assert stats["thinking_tokens"] == 20 and DEFAULT_BUDGET_MESSAGE in result.thinking
        assert stats["answer_tokens"] > 0 or stats["stop_reason"] == "eos"
    else:
        assert stats["thinking_tokens"] < 20


def test_the_budget_is_kept_with_the_stored_reply(scripted, tmp_path):
    with Store(tmp_path / "aha.db") as store:
        conversation = store.create_conversation(settings={"thinking_budget": 12})
        settings = TurnSettings.from_conversation(conversation.settings, temperature=0.0, seed=0)
        assert settings.thinking_budget == 12
        events = list(send(store, scripted, conversation.id, QUESTION, settings=settings))
        reply = store.get_message(events[-1].stats["message_id"])
        assert reply.status == "complete" and reply.stats["budget_ended_thought"]
        assert reply.sampling["thinking_budget"] == 12 and reply.thinking.endswith(DEFAULT_BUDGET_MESSAGE + "\n")


def test_thinking_switch_on_a_qwen3_template_and_disabled_on_r1(gguf_with_template, scripted):
    with ChatModel(gguf_with_template("qwen3-switch", QWEN3_TEMPLATE, "qwen3"), n_ctx=256, n_threads=2) as model:
        assert model.thinking_switch.supported and model.thinking_switch.variable == "enable_thinking"
        off, on = model.render(ASK, thinking=False), model.render(ASK, thinking=True)
        assert off.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and not off.prefilled
        assert on.text.endswith("<|im_start|>assistant\n") and on.text == model.render(ASK).text
        assert not off.warnings
        stats = complete(model, ASK, thinking=False, max_tokens=8, **GREEDY).stats
        assert stats["thinking"] is False and stats["thinking_tokens"] == 0 and not stats["prefilled"]
    assert not scripted.thinking_switch.supported and scripted.thinking_switch.reason == ALWAYS_THINKS
    # Asking an R1 distill not to think changes nothing and says why.
    off = scripted.render(ASK, thinking=False)
    assert off.prefilled and off.text == scripted.render(ASK).text
    assert off.warnings == [f"thinking cannot be turned off: {ALWAYS_THINKS}"]


def _aha_chat(model, *flags):
    command = [sys.executable, "-m", "engine.cli", "chat", str(model), "-p", QUESTION, "--temperature", "0",
               "--seed", "0", "--n-ctx", "512", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_aha_chat_thinking_budget(scripted_gguf):
    done = _aha_chat(scripted_gguf, "--json", "--thinking-budget", "12")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    stats = records[-1]["stats"]
    assert stats["budget_ended_thought"] and stats["thinking_tokens"] == 12
    thinking = "".join(r["text"] for r in records if r["type"] == "thinking")
    assert thinking.endswith(DEFAULT_BUDGET_MESSAGE + "\n")
    text = _aha_chat(scripted_gguf, "--thinking-budget", "12", "--budget-message", "Enough thinking.")
    assert text.returncode == 0, text.stderr
    assert "Enough thinking." in text.stdout and f"{BUDGET_ENDED} (12 tokens)" in text.stdout
    bad = _aha_chat(scripted_gguf, "--thinking-budget", "-3")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "the thinking budget must be a whole number of tokens, 0 or more (got -3)" in bad.stderr
