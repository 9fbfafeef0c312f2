"""engine.chat.runtime on real llama.cpp: think/answer routing, stop reasons, stats, cancel, history, security."""

from __future__ import annotations

import threading

import pytest

from engine.chat.runtime import ChatModel, complete, ends_inside_thinking, history_messages
from engine.errors import AhaError
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT

ASK = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def model(scripted_gguf):
    with ChatModel(scripted_gguf, n_ctx=1024) as chat_model:
        yield chat_model


def test_thinking_and_answer_are_routed_and_measured(model):
    events = list(model.stream(ASK, temperature=0.0, max_tokens=400))
    thinking = "".join(e.text for e in events if e.kind == "thinking")
    answer = "".join(e.text for e in events if e.kind == "answer")
    assert thinking == THOUGHT and answer == "\n\n" + ANSWER
    assert [e.kind for e in events].count("done") == 1 and events[-1].kind == "done"
    stats = events[-1].stats
    assert stats["stop_reason"] == "eos" and stats["prefilled"] and not stats["thinking_unfinished"]
    assert stats["thinking_tokens"] > stats["answer_tokens"] > 0
    assert stats["context_used"] == stats["prompt_tokens"] + stats["thinking_tokens"] + stats["answer_tokens"]
    assert 0 < stats["prompt_s"] <= stats["ttft_s"] <= stats["time_to_first_answer_token_s"]
    assert stats["thinking_s"] > 0 and stats["answer_s"] > 0 and stats["tokens_per_s"] > 0
    assert stats["context_size"] == 1024


def test_budget_cut_inside_the_thought_is_reported(model):
    result = complete(model, ASK, temperature=0.0, max_tokens=10)
    assert result.stats["stop_reason"] == "max_tokens" and result.stats["thinking_unfinished"]
    assert result.answer == "" and THOUGHT.startswith(result.thinking) and result.thinking


def test_full_context_is_a_stop_reason(gguf_file):
    long_question = [{"role": "user", "content": "12+35=47. " * 20}]  # ~200 of the 256 tokens
    with ChatModel(gguf_file("qwen2", "f16"), n_ctx=256) as small:  # llama.cpp's smallest context
        result = complete(small, long_question, temperature=0.0, max_tokens=1000)
        assert result.stats["stop_reason"] == "context_full" and result.stats["context_used"] == 256
        too_long = complete(small, [{"role": "user", "content": "12+35=47. " * 60}])
        assert too_long.stats["stop_reason"] == "context_full" and "does not fit" in too_long.stats["error"]


def test_cancel_from_another_thread_stops_within_one_token(model):
    cancel = threading.Event()
    seen_thinking = threading.Event()
    counts = {"at_cancel": None}

    def canceller():
        seen_thinking.wait(5)
        cancel.set()

    thread = threading.Thread(target=canceller)
    thread.start()
    thinking_events = 0
    for event in model.stream(ASK, temperature=0.0, max_tokens=400, cancel=cancel):
        if event.kind == "thinking":
            thinking_events += 1
            if thinking_events == 5:
                seen_thinking.set()
                thread.join()
                counts["at_cancel"] = thinking_events
        if event.kind == "done":
            stats = event.stats
    assert stats["stop_reason"] == "cancelled" and stats["thinking_unfinished"]
    assert stats["thinking_tokens"] <= counts["at_cancel"] + 1


def test_seeded_sampling_is_repeatable(model):
    first = complete(model, ASK, temperature=0.9, top_p=0.95, seed=7, max_tokens=30)
    second = complete(model, ASK, temperature=0.9, top_p=0.95, seed=7, max_tokens=30)
    assert (first.thinking, first.answer) == (second.thinking, second.answer)


def test_turn_two_prompt_has_none_of_turn_one_reasoning_under_strip(model):
    history = [*ASK, {"role": "assistant", "content": ANSWER, "thinking": THOUGHT},
               {"role": "user", "content": "And 3+3?"}]
    stripped = model.render(history, history="strip")
    assert "Step 1" not in stripped.text and ANSWER in stripped.text and stripped.prefilled
    inline = [*ASK, {"role": "assistant", "content": f"<think>\n{THOUGHT}</think>\n\n{ANSWER}"},
              {"role": "user", "content": "And 3+3?"}]
    assert "Step 1" not in model.render(inline, history="strip").text
    kept = model.render(history, history="keep")
    # The R1 template itself cuts reasoning at </think>: keep cannot override it, and says so.
    assert "Step 1" not in kept.text and any("drops earlier reasoning" in w for w in kept.warnings)


def test_keep_policy_reaches_a_template_that_does_not_strip(gguf_with_template):
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    with ChatModel(gguf_with_template("plain", template), n_ctx=256) as plain:
        history = [*ASK, {"role": "assistant", "content": "4", "thinking": "2+2=4"},
                   {"role": "user", "content": "And 3+3?"}]
        assert "<think>\n2+2=4\n</think>" in plain.render(history, history="keep").text
        assert "2+2=4" not in plain.render(history, history="strip").text
        assert not plain.render(history).prefilled  # decided from the rendered prompt, not the model name


def test_history_messages_rejects_unknown_policy():
    with pytest.raises(AhaError, match="history policy"):
        history_messages(ASK, "forget")


def test_system_prompt_warns(model):
    rendered = model.render([{"role": "system", "content": "Be terse."}, *ASK])
    assert rendered.text.startswith(model.bos_text + "Be terse.")
    assert any("no system prompt" in w for w in rendered.warnings)


def test_one_bos_only(model):
    rendered = model.render(ASK)
    assert rendered.text.startswith(model.bos_text)
    assert rendered.tokens.count(rendered.tokens[0]) == 1  # the template's BOS, not a second from add_bos


def test_missing_template_falls_back_to_r1_and_says_so(gguf_with_template, model):
    with ChatModel(gguf_with_template("none", None), n_ctx=256) as bare:
        rendered = bare.render(ASK)
        assert rendered.text == model.render(ASK).text
        assert any("no chat template" in w for w in rendered.warnings)


@pytest.mark.parametrize("name,template", [
    ("globals", "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}"),
    ("attr", "{{ (cycler|attr('__init__')|attr('__globals__'))['os'].popen('touch MARKER').read() }}"),
    ("include", "{% include '/etc/passwd' %}"),
    ("class", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
])
def test_escaping_templates_are_refused_and_nothing_runs(name, template, gguf_with_template, tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AhaError, match="escape its sandbox|unsafe"):
        ChatModel(gguf_with_template(f"evil-{name}", template.replace("MARKER", str(marker))), n_ctx=128)
    assert not marker.exists()


def test_sandbox_refuses_at_render_time_too():
    from engine.chat_template import ChatTemplate

    sneaky = ("{% for m in messages %}{% if m['content'] == 'x' %}{{ (m|attr('items')).__self__ }}{% endif %}"
              "{{ m['content'] }}{% endfor %}")
    with pytest.raises(AhaError):
        ChatTemplate(sneaky).render([{"role": "user", "content": "x"}])


def test_prefill_detection():
    assert ends_inside_thinking("<｜Assistant｜><think>\n")
    assert not ends_inside_thinking("<｜Assistant｜><think>\n\n</think>\n\n")
    assert not ends_inside_thinking("<｜Assistant｜>")
    assert not ends_inside_thinking("<think>x</think> then <think>thought already")


@pytest.mark.parametrize("content,reason", [(b"", "is empty (0 bytes)"),
                                            (b"PK\x03\x04zipzip", "is not a GGUF file (starts with b'PK\\x03\\x04')"),
                                            (b"GGU", "is truncated")])
def test_unreadable_files_give_one_line(tmp_path, content, reason):
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(AhaError) as raised:
        ChatModel(path)
    message = str(raised.value)
    assert "\n" not in message and f"{path} {reason}" in message, message


def test_deepseek_sampling_defaults_reach_llama_cpp(model, monkeypatch):
    """With no sampling given, ChatModel.stream (and a conversation turn with default settings) hands
    llama.cpp's generate DeepSeek's advice: temperature 0.6, top_p 0.95."""
    from engine.chat.conversation import send
    from engine.store import Store

    calls: list[dict] = []
    original = model._llm.generate

    def recording(tokens, **kwargs):
        calls.append(kwargs)
        return original(tokens, **kwargs)

    monkeypatch.setattr(model._llm, "generate", recording)
    complete(model, ASK, max_tokens=4)
    with Store() as store:
        conversation = store.create_conversation()
        for _ in send(store, model, conversation.id, QUESTION, settings=None):
            pass
        saved = store.get_message(store.get_conversation(conversation.id).leaf_id).sampling
    assert [(call["temp"], call["top_p"]) for call in calls] == [(0.6, 0.95), (0.6, 0.95)]
    assert (saved["temperature"], saved["top_p"]) == (0.6, 0.95)  # and the store records what was used


def test_a_runtime_failure_mid_stream_ends_with_error_and_keeps_the_text(scripted_gguf, monkeypatch):
    """llama.cpp's decode fails at the 6th generated token (llama_decode returns -1, which llama-cpp-python
    raises as RuntimeError): the stream does not raise, the five tokens' thinking is kept, and the done
    event says stop_reason "error" with the failure; a conversation turn saves it with status `error`."""
    import llama_cpp._internals

    from engine.chat.conversation import TurnSettings, send
    from engine.store import Store

    real_decode = llama_cpp._internals.llama_cpp.llama_decode
    decodes = {"count": 0, "fail_at": None}

    def failing_decode(ctx, batch):
        decodes["count"] += 1
        if decodes["fail_at"] is not None and decodes["count"] >= decodes["fail_at"]:
            return -1
        return real_decode(ctx, batch)

    monkeypatch.setattr(llama_cpp._internals.llama_cpp, "llama_decode", failing_decode)
    with ChatModel(scripted_gguf, n_ctx=1024) as chat_model:
        decodes.update(count=0, fail_at=6)  # decode 1: the prompt; decodes 2–5: tokens 1–4 fed back
        result = complete(chat_model, ASK, temperature=0.0, max_tokens=400)
        stats = result.stats
        assert stats["stop_reason"] == "error" and "llama_decode returned -1" in stats["error"]
        assert stats["thinking_tokens"] == 5 and stats["thinking_unfinished"] and result.answer == ""
        assert result.thinking and THOUGHT.startswith(result.thinking) and len(result.thinking) < len(THOUGHT)

        decodes.update(count=0, fail_at=6)
        with Store() as store:
            conversation = store.create_conversation()
            events = list(send(store, chat_model, conversation.id, QUESTION, settings=TurnSettings(temperature=0.0)))
            saved = store.get_message(events[-1].stats["message_id"])
        assert events[-1].stats["stop_reason"] == "error"
        assert (saved.status, saved.thinking, saved.content) == ("error", result.thinking, "")
        assert "llama_decode returned -1" in saved.stats["error"]
