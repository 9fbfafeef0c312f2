"""`aha serve`: the official `openai` client against a real server on loopback, over tiny real GGUFs.

Most tests run the server in-process on a thread (engine.serve.server.AhaServer, uvicorn on a socket bound
to a free port); one runs `aha serve` as a child process and reads its job events. The scripted model thinks
"Step 1..8" then answers \\boxed{4} for QUESTION; the random Qwen2 writes long nonsense (the disconnect test).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from engine.chat.runtime import ChatModel, complete
from engine.cli import main
from engine.errors import AhaError
from engine.serve.protocol import StopMatcher, parse_chat_request
from engine.serve.server import AhaServer, ServeOptions, check_bind, is_loopback
from engine.store import Store
from tests.support.children import reap
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT

KEY = "sk-serve-test"
GREEDY = {"temperature": 0.0, "seed": 0, "max_tokens": 300}


@contextlib.contextmanager
def running(options: ServeOptions, events: list | None = None):
    """An AhaServer on a thread until the block ends; its events appended to `events`."""
    events = events if events is not None else []
    server = AhaServer(options, on_event=events.append)
    thread = threading.Thread(target=server.run, name="test-serve", daemon=True)
    thread.start()
    assert server.ready.wait(30), "the server did not start"
    try:
        yield server
    finally:
        server.stop()
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


def client(server: AhaServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=60)


def settled(server: AhaServer) -> int:
    """How many requests the server has logged, once none is in flight (a reply reaches its client a moment
    before its log record is made)."""
    deadline = time.monotonic() + 30
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(requests_of(server.events, 0, timeout_s=0))


def requests_of(events: list, count: int, timeout_s: float = 30) -> list[dict]:
    """The first `count` request log events, waiting for them (a stream's record comes after its last byte)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [event for event in events if event["type"] == "log" and event.get("event") == "request"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def http(method: str, url: str, body: bytes | None = None, key: str | None = None):
    """A plain HTTP request (urllib): the response, or the HTTPError (which is one) for a refusal."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, data=body, method=method, headers=headers),
                                      timeout=60)
    except urllib.error.HTTPError as refused:
        return refused


def ask(server_client: openai.OpenAI, model: str = "scripted", **fields):
    return server_client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                                 **{**GREEDY, **fields})


@pytest.fixture
def slow_tokens(monkeypatch):
    """Each token of a reply takes 20 ms more (the engine's per-token cancel check sleeps first, as
    tests/support/slowed_cli does): the scripted reply (~120 tokens) then decodes for ~2.5 s, long enough to
    go away in the middle of it. Only the timing changes."""
    from engine.chat import runtime
    from tests.support.slowed_cli import slowed

    monkeypatch.setattr(runtime, "_is_cancelled", slowed(runtime._is_cancelled, 0.02))


@pytest.fixture(scope="module")
def served(scripted_gguf, gguf_file):
    """One server for the module: the scripted model and the random Qwen2, no key, nothing saved."""
    events: list[dict] = []
    with running(ServeOptions(port=0, models=(str(scripted_gguf), str(gguf_file("qwen2", "f16")))), events) as server:
        server.events = events
        yield server


@pytest.fixture(scope="module")
def engine_stats(scripted_gguf):
    """What the engine itself says of the greedy reply: its thinking and answer tokens."""
    with ChatModel(scripted_gguf, n_ctx=4096) as model:
        return complete(model, [{"role": "user", "content": QUESTION}], **GREEDY)


# The API through the official client ---------------------------------------------------------------

def test_models_are_listed_by_their_library_names(served):
    assert [model.id for model in client(served).models.list()] == ["scripted", "qwen2-f16"]


def test_whole_reply_keeps_the_thought_in_reasoning_content(served, engine_stats):
    reply = ask(client(served))
    message = reply.choices[0].message
    assert message.reasoning_content.strip() == THOUGHT.strip() == engine_stats.thinking.strip()
    assert message.content.strip() == ANSWER
    assert "Step 1" not in message.content and "</think>" not in message.content + message.reasoning_content
    assert reply.choices[0].finish_reason == "stop" and reply.model == "scripted"
    usage = reply.usage
    assert usage.completion_tokens_details.reasoning_tokens == engine_stats.stats["thinking_tokens"] > 0
    assert usage.completion_tokens == engine_stats.stats["thinking_tokens"] + engine_stats.stats["answer_tokens"]
    assert usage.prompt_tokens == engine_stats.stats["prompt_tokens"] > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_reply_sends_thought_and_answer_as_separate_deltas_then_usage(served, engine_stats):
    chunks = list(ask(client(served), stream=True, stream_options={"include_usage": True}))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    thinking = "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas)
    answer = "".join(delta.content or "" for delta in deltas)
    assert thinking.strip() == THOUGHT.strip() and answer.strip() == ANSWER
    assert deltas[0].role == "assistant"
    assert not any(getattr(delta, "reasoning_content", None) and delta.content for delta in deltas)
    first_answer = next(i for i, delta in enumerate(deltas) if delta.content)
    assert not any(getattr(delta, "reasoning_content", None) for delta in deltas[first_answer:])
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens_details.reasoning_tokens == \
        engine_stats.stats["thinking_tokens"]
    settled(served)
    record = requests_of(served.events, 0, timeout_s=0)[-1]
    assert record["stream"] is True and record["status"] == 200 and record["model"] == "scripted"
    assert record["reasoning_tokens"] == engine_stats.stats["thinking_tokens"]


def test_thinking_budget_cuts_the_thought_as_the_engine_does_and_the_answer_follows(served, engine_stats,
                                                                                     scripted_gguf):
    from engine.chat.reasoning import DEFAULT_BUDGET_MESSAGE

    reply = ask(client(served), extra_body={"thinking_budget_tokens": 12})
    message = reply.choices[0].message
    written, said = message.reasoning_content.split(DEFAULT_BUDGET_MESSAGE)
    assert engine_stats.thinking.startswith(written) and len(written) < len(engine_stats.thinking) and said == "\n"
    assert message.content.strip() and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens_details.reasoning_tokens == 12  # the model's own; the budget's text not
    settled(served)
    record = requests_of(served.events, 0, timeout_s=0)[-1]
    assert record["budget_ended_thought"] is True and record["thinking_budget"] == 12
    assert "the thinking budget ended the thought" in record["message"]
    # The same reply as the engine's own with that budget (what `aha chat --thinking-budget 12` shows).
    with ChatModel(scripted_gguf, n_ctx=4096) as model:
        same = complete(model, [{"role": "user", "content": QUESTION}], thinking_budget=12, **GREEDY)
    assert (message.reasoning_content, message.content) == (same.thinking, same.answer)


def test_the_thinking_switch_is_passed_to_a_template_that_has_one(gguf_with_template, tmp_path):
    from tests.support.templates import QWEN3_TEMPLATE

    qwen3 = gguf_with_template("qwen3-switch", QWEN3_TEMPLATE, "qwen3")
    with running(ServeOptions(port=0, models=(str(qwen3),))) as server:
        prompts = {switch: ask(client(server), "qwen3-switch", max_tokens=1,
                               extra_body={"chat_template_kwargs": {"enable_thinking": switch}}).usage.prompt_tokens
                   for switch in (True, False)}
    assert prompts[False] > prompts[True]  # off: the template writes an empty thought into the prompt


def test_reasoning_effort_is_a_budget_and_a_bad_one_is_refused(served):
    from engine.chat.reasoning import REASONING_EFFORT_BUDGETS

    reply = ask(client(served), reasoning_effort="low")
    assert reply.choices[0].message.reasoning_content.strip() == THOUGHT.strip()  # 1024 tokens: far above it
    settled(served)
    record = requests_of(served.events, 0, timeout_s=0)[-1]
    assert record["thinking_budget"] == REASONING_EFFORT_BUDGETS["low"] and not record["budget_ended_thought"]
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client(served), extra_body={"reasoning_effort": "extreme"})
    error = refused.value.body
    assert refused.value.status_code == 400 and error["param"] == "reasoning_effort" and "\n" not in error["message"]


def test_stop_strings_cut_the_answer(served):
    reply = ask(client(served), stop=["boxed"])
    assert reply.choices[0].message.content.strip() == "The answer is \\"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.reasoning_content.strip() == THOUGHT.strip()  # stop strings are the answer's


def test_max_tokens_inside_the_thought_is_length(served):
    reply = ask(client(served), max_completion_tokens=10)
    assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.content == ""
    assert reply.usage.completion_tokens == 10 == reply.usage.completion_tokens_details.reasoning_tokens


def test_default_sampling_is_r1s(served):
    reply = client(served).chat.completions.create(model="scripted", max_tokens=5,
                                                   messages=[{"role": "user", "content": QUESTION}])
    assert reply.choices[0].finish_reason == "length"
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert (request.temperature, request.top_p, request.max_tokens) == (0.6, 0.95, None)


def test_a_client_that_goes_away_mid_stream_cancels_its_decoding(served, engine_stats, slow_tokens):
    before = settled(served)
    body = {"model": "scripted", "messages": [{"role": "user", "content": QUESTION}], "stream": True, **GREEDY}
    response = http("POST", f"{served.url}/chat/completions", json.dumps(body).encode())
    received = [response.readline() for _ in range(8)]  # the role chunk and the first few tokens
    response.close()  # the connection goes with it
    assert response.status == 200 and all(line.startswith(b"data: ") or line == b"\n" for line in received)
    reply = ask(client(served))  # served as soon as the cancelled decoding gave its turn up
    assert reply.choices[0].message.content.strip() == ANSWER
    gone, after = requests_of(served.events, before + 2)[before:]
    full = engine_stats.stats["thinking_tokens"] + engine_stats.stats["answer_tokens"]
    assert gone["stop_reason"] == "cancelled" and gone["client_gone"] is True  # the engine stopped on the cancel
    assert 0 < gone["completion_tokens"] < full / 2 and "cancelled: the client went away" in gone["message"]
    assert after["stop_reason"] == "eos" and after["completion_tokens"] == full
    assert after["queued_s"] < 1.0  # no wait for the rest of the cancelled reply (~2 s)


def _long_reply_then(served, then) -> None:
    """Stream one slowed scripted reply on a thread; once it streams, call `then()`; wait for the reply."""
    streaming = threading.Event()

    def long_reply() -> None:
        for chunk in ask(client(served), stream=True):
            if chunk.choices and getattr(chunk.choices[0].delta, "reasoning_content", None):
                streaming.set()

    first = threading.Thread(target=long_reply)
    first.start()
    assert streaming.wait(30)
    then()
    first.join(60)


def test_two_clients_at_once_are_both_answered_one_after_the_other(served, slow_tokens):
    before = settled(served)
    answers = []
    # The second request comes while the first decodes: it waits its turn, then is answered in full.
    _long_reply_then(served, lambda: answers.append(ask(client(served)).choices[0].message.content))
    assert answers[0].strip() == ANSWER
    first, second = requests_of(served.events, before + 2)[before:]  # in the order they were answered
    assert first["status"] == second["status"] == 200 and first["stop_reason"] == second["stop_reason"] == "eos"
    assert first["queued_s"] == 0 and second["queued_s"] > 1.0  # most of the first one's ~2.5 s decoding
    assert second["duration_s"] > second["queued_s"] + 1.0  # then its own decoding, as slow


def test_a_client_that_goes_away_while_waiting_leaves_the_queue(served, slow_tokens):
    before = settled(served)
    body = json.dumps({"model": "scripted", "messages": [{"role": "user", "content": QUESTION}]}).encode()
    host, port = served.url.removeprefix("http://").removesuffix("/v1").split(":")

    def ask_and_hang_up() -> None:
        with socket.create_connection((host, int(port)), timeout=30) as waiting:
            waiting.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.3)

    _long_reply_then(served, ask_and_hang_up)
    gone, first = requests_of(served.events, before + 2)[before:]  # it left before the first one ended
    assert gone["stop_reason"] == "cancelled" and gone["client_gone"] is True
    assert gone["completion_tokens"] == 0 and gone["prompt_tokens"] == 0  # it never decoded
    assert first["stop_reason"] == "eos"


def test_a_model_file_gone_after_startup_is_a_one_line_500(gguf_file, tmp_path):
    copy = tmp_path / "vanishing.gguf"
    shutil.copyfile(gguf_file("qwen2", "f16"), copy)
    with running(ServeOptions(port=0, models=(str(copy),))) as server:
        copy.unlink()
        with pytest.raises(openai.InternalServerError) as failed:
            ask(client(server), "vanishing")
    message = failed.value.body["message"]
    assert failed.value.status_code == 500 and "cannot load vanishing" in message and "\n" not in message


def test_models_are_swapped_on_request_and_an_unknown_one_is_404(served):
    api = client(served)
    ask(api, "qwen2-f16", max_tokens=3)
    assert served.host.loaded_id == "qwen2-f16"
    assert ask(api, "scripted").choices[0].message.content.strip() == ANSWER
    assert served.host.loaded_id == "scripted"
    with pytest.raises(openai.NotFoundError) as missing:
        ask(api, "gpt-5")
    assert missing.value.body["code"] == "model_not_found" and "scripted" in missing.value.body["message"]


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{not json", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"model": "scripted"}).encode(), 400, "messages"),
    (json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(),
     400, "temperature"),
    (json.dumps({"model": "scripted", "messages": [{"role": "tool", "content": "x"}]}).encode(), 400, "tool"),
    (json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "n": 2}).encode(), 400, "n must be 1"),
    (json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "hi"}],
                 "thinking_budget_tokens": 1.5}).encode(), 400, "thinking_budget_tokens"),
])
def test_bad_requests_get_openai_shaped_one_line_errors(served, body, status, words):
    response = http("POST", f"{served.url}/chat/completions", body)
    error = json.loads(response.read())["error"]
    assert response.status == status and words in error["message"] and "\n" not in error["message"]
    assert error["type"] == "invalid_request_error"


def test_a_body_over_the_limit_is_refused_413(served):
    from engine.serve.app import MAX_BODY_BYTES

    message = json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]})
    response = http("POST", f"{served.url}/chat/completions", message.encode())
    error = json.loads(response.read())["error"]
    assert response.status == 413 and error["code"] == "request_too_large" and "16 MiB" in error["message"]
    assert ask(client(served)).choices[0].message.content.strip() == ANSWER   # the server goes on serving


def test_unknown_paths_are_openai_shaped_404s(served):
    response = http("GET", f"{served.url}/embeddings")
    assert response.status == 404 and "/v1/chat/completions" in json.loads(response.read())["error"]["message"]


# Binding, keys, saving ---------------------------------------------------------------------------------

def test_a_key_is_required_when_set(scripted_gguf):
    events: list[dict] = []
    with running(ServeOptions(port=0, models=(str(scripted_gguf),), api_key=KEY), events) as server:
        with pytest.raises(openai.AuthenticationError) as refused:
            client(server, "sk-wrong").models.list()
        assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
        assert http("GET", f"{server.url}/models").status == 401
        assert [model.id for model in client(server, KEY).models.list()] == ["scripted"]
    statuses = [record["status"] for record in requests_of(events, 3)]
    assert statuses == [401, 401, 200]
    ready = next(event for event in events if event.get("event") == "ready")
    assert ready["api_key"] is True and KEY not in json.dumps(events)


def test_a_non_loopback_address_is_refused_without_a_key(scripted_gguf, capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(AhaError, match="refusing to serve on 0.0.0.0 without an API key"):
        AhaServer(ServeOptions(host="0.0.0.0", port=0, models=(str(scripted_gguf),)))
    check_bind("0.0.0.0", KEY)  # with a key it may
    assert main(["serve", "--host", "0.0.0.0", "--models", str(scripted_gguf)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--api-key" in err[0] and "0.0.0.0" in err[0]


def test_the_library_is_served_by_default_and_an_empty_one_is_refused(scripted_gguf):
    from engine.models import Library

    with pytest.raises(AhaError, match="no model to serve"):
        AhaServer(ServeOptions(port=0))
    Library().add(scripted_gguf)
    with running(ServeOptions(port=0)) as server:
        assert [model.id for model in client(server).models.list()] == ["scripted"]
    with running(ServeOptions(port=0, models=("scripted",))) as server:  # a library name, as `aha chat` takes it
        assert ask(client(server)).choices[0].message.content.strip() == ANSWER
    with pytest.raises(AhaError, match="no model called 'nothing'"):
        AhaServer(ServeOptions(port=0, models=("nothing",)))


def test_a_port_in_use_or_out_of_range_is_one_line(scripted_gguf):
    for port in (70000, -1):
        with pytest.raises(AhaError, match=f"port {port} is not a TCP port"):
            AhaServer(ServeOptions(port=port, models=(str(scripted_gguf),)))
    with running(ServeOptions(port=0, models=(str(scripted_gguf),))) as server:
        port = int(server.url.rsplit(":", 1)[1].removesuffix("/v1"))
        with pytest.raises(AhaError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            AhaServer(ServeOptions(port=port, models=(str(scripted_gguf),)))


def test_chats_are_saved_only_with_save(scripted_gguf):
    with running(ServeOptions(port=0, models=(str(scripted_gguf),))) as server:
        ask(client(server))
    with Store() as store:
        assert store.list_conversations() == []
    events: list[dict] = []
    with running(ServeOptions(port=0, models=(str(scripted_gguf),), save=True), events) as server:
        reply = client(server).chat.completions.create(
            model="scripted", messages=[{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": QUESTION}], **GREEDY)
        cut = ask(client(server), stop=["boxed"])           # what the client got is what is kept
    assert "saved" in next(event for event in events if event.get("event") == "ready")["message"]
    with Store() as store:
        second, first = store.list_conversations()
        user, assistant = store.branch_path(first.leaf_id)
        assert (user.role, user.content) == ("user", QUESTION)
        assert assistant.thinking.strip() == reply.choices[0].message.reasoning_content.strip()
        assert assistant.content.strip() == ANSWER and assistant.status == "complete"
        assert assistant.sampling["temperature"] == GREEDY["temperature"]
        assert first.settings["system_prompt"] == "Be brief." and first.title == QUESTION
        _, stopped = store.branch_path(second.leaf_id)
        assert stopped.content == cut.choices[0].message.content and "boxed" not in stopped.content
        assert (stopped.status, stopped.stats["stop_reason"]) == ("complete", "stop_string")
    assert [record["conversation_id"] for record in requests_of(events, 2)] == [first.id, second.id]


def test_stop_matcher_holds_back_a_possible_stop_string():
    matcher = StopMatcher(("</answer>",))
    assert matcher.feed("four </an") == ("four ", False)
    assert matcher.feed("d more") == ("</and more", False)
    assert matcher.feed(" </answer> tail") == (" ", True)
    assert StopMatcher(()).feed("x") == ("x", False)


# Aha's own clients pointed at it -------------------------------------------------------------------------

def test_aha_distill_generate_with_the_served_teacher(served, tmp_path, capsys):
    dataset = tmp_path / "data.jsonl"
    dataset.write_text(json.dumps({"prompt": QUESTION, "answer": "4"}) + "\n", encoding="utf-8")
    out = tmp_path / "traces.jsonl"
    assert main(["distill", "generate", "--teacher", f"openai:{served.url}", "--model", "scripted",
                 "--dataset", str(dataset), "-k", "2", "--reward", "accuracy", "--reward", "format",
                 "--temperature", "0", "--max-tokens", "300", "-o", str(out), "--events", "jsonl"]) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert done["status"] == "complete" and done["result"]["accepted"] == 2 and done["result"]["kept"] == 1
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["thinking"] == THOUGHT.strip() and record["answer"] == ANSWER
    assert record["usage"]["thinking_tokens"] > 0  # from completion_tokens_details.reasoning_tokens


def test_aha_eval_against_the_server(served, tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"prompt": QUESTION, "answer": "4"}) + "\n", encoding="utf-8")
    assert main(["eval", f"openai:{served.url}", "--model", "scripted", "--dataset", str(problems), "-k", "2",
                 "--max-tokens", "300", "--output-dir", str(tmp_path / "eval"), "--json", "--events", "none"]) == 0
    report = json.loads(capsys.readouterr().out)
    [entry] = report["models"]
    assert entry["pass@1"] == 1.0 and entry["samples"] == 2 and entry["thinking_tokens_mean"] > 0


# The real command ------------------------------------------------------------------------------------------

def test_aha_serve_child_process_speaks_the_job_contract(scripted_gguf, tmp_path):
    env = {**os.environ, "AHA_HOME": str(tmp_path / "home"), "AHA_API_KEY": KEY}
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--models", str(scripted_gguf),
                              "--port", "0", "--events", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        start = json.loads(child.stdout.readline())
        ready = json.loads(child.stdout.readline())
        assert (start["type"], start["kind"], start["pid"]) == ("start", "serve", child.pid)
        assert ready["type"] == "log" and ready["event"] == "ready" and ready["url"].startswith("http://127.0.0.1:")
        assert "not saved" in ready["message"] and "one request" in ready["message"]
        api = openai.OpenAI(base_url=ready["url"], api_key=KEY, max_retries=0, timeout=60)
        reply = ask(api, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in reply if chunk.choices).strip() == ANSWER
        request = json.loads(child.stdout.readline())
        assert request["type"] == "log" and request["event"] == "request"
        assert {key: request[key] for key in ("method", "path", "model", "status", "stream")} == {
            "method": "POST", "path": "/v1/chat/completions", "model": "scripted", "status": 200, "stream": True}
        assert request["reasoning_tokens"] > 0 and request["completion_tokens"] > request["reasoning_tokens"]
        assert request["prompt_tokens"] > 0 and request["duration_s"] > 0
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 130
        done = json.loads(child.stdout.readline())
        assert done["type"] == "done" and done["status"] == "cancelled" and done["result"]["requests"] == 1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()


def test_cancel_on_stdin_stops_the_server_and_cuts_a_reply_in_flight(scripted_gguf, tmp_path):
    env = {**os.environ, "AHA_HOME": str(tmp_path / "home")}
    # The per-token cancel check slowed (tests/support/slowed_cli): a reply takes seconds, the cancel comes within it.
    child = subprocess.Popen([sys.executable, "-m", "tests.support.slowed_cli", "engine.chat.runtime:_is_cancelled",
                              "0.05", "serve", "--models", str(scripted_gguf), "--port", "0", "--events", "jsonl"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True, env=env)
    try:
        events = [json.loads(child.stdout.readline()) for _ in range(2)]
        api = openai.OpenAI(base_url=events[1]["url"], api_key="unused", max_retries=0, timeout=60)
        chunks = ask(api, stream=True)
        for chunk in chunks:
            if chunk.choices and getattr(chunk.choices[0].delta, "reasoning_content", None):
                break
        started = time.monotonic()
        child.stdin.write("cancel\n")
        child.stdin.flush()
        with pytest.raises(openai.APIError, match="the server stopped before the reply was finished"):
            list(chunks)  # the stream ends with an error event, not a finish_reason
        assert child.wait(30) == 130 and time.monotonic() - started < 10  # not the reply's ~6 s, then more
        events += [json.loads(line) for line in child.stdout.read().splitlines()]
        request, done = events[-2:]
        assert request["event"] == "request" and request["stop_reason"] == "cancelled"
        assert request["client_gone"] is False and "server stopped" in request["error"]
        assert done["type"] == "done" and done["status"] == "cancelled"
    finally:
        reap(child)
