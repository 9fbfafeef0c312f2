"""`aha distill generate`: teacher traces verified with the rewards, resumable JSONL, three teacher kinds.

The endpoint teacher talks to a real OpenAI-compatible server on loopback: llama-cpp-python's own
`llama_cpp.server` serving the scripted GGUF (one server per module, with an API key). The GGUF and HF
teachers run the same scripted model in-process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.cli import main
from engine.distill import teachers
from engine.distill.generate import (
    Verdict,
    generate_traces,
    progress_path,
    prompt_id,
    rejected_path,
    select_kept,
)
from engine.distill.teachers import (
    GGUFTeacher,
    HFTeacher,
    OpenAITeacher,
    Sampling,
    TeacherSample,
    split_reply,
)
from engine.errors import AhaError
from engine.jobs import CancelToken
from engine.store import Store
from engine.train.data import TASK_ROWS, TaskSource
from engine.train.follow import read_jsonl, trace_records
from tests.support.list_teacher import ListTeacher
from tests.support.llama_server import free_port, serve_gguf
from tests.support.scripted_model import ANSWER, QUESTION, REPLY, THOUGHT

KEY_ENV = "AHA_TEST_TEACHER_KEY"
KEY = "sk-loopback-test"
GREEDY = Sampling(temperature=0.0, max_tokens=200, seed=0)
# The scripted model answers QUESTION with "…\boxed{4}": right for "4" and for "2+2" (checked
# symbolically), wrong for "5". The third row repeats the question under its own id.
ROWS = [{"prompt": QUESTION, "answer": "4"},
        {"prompt": QUESTION, "answer": "5"},
        {"id": "again", "prompt": QUESTION, "answer": "2+2"}]


@pytest.fixture(scope="module")
def server(scripted_gguf, tmp_path_factory):
    """llama_cpp.server on a free loopback port, serving the scripted model behind an API key."""
    with serve_gguf(scripted_gguf, tmp_path_factory.mktemp("server") / "server.log", KEY) as running:
        yield running


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# The endpoint teacher against llama_cpp.server ---------------------------------------------------

def test_endpoint_traces_are_verified_written_and_resumed(server, tmp_path):
    out = tmp_path / "traces.jsonl"
    events: list[dict] = []
    requests_before = server.chat_requests()
    teacher = OpenAITeacher(server.url, api_key_env=KEY_ENV, concurrency=2)
    with Store(tmp_path / "aha.db") as store:
        stats = generate_traces(teacher, ROWS, k=2, out_path=out, sampling=GREEDY, on_event=events.append,
                                store=store)
        run = store.get_run(stats.run_id)
        assert run["kind"] == "generate" and run["status"] == "complete"
        assert run["config"]["teacher"] == {"kind": "openai", "name": teacher.name, "url": server.url}
        assert store.metric_series(stats.run_id, "acceptance_rate")[-1] == (3, pytest.approx(4 / 6))

    # Greedy replies: both samples of a prompt agree, so each accepted prompt keeps one (the other is a duplicate).
    assert (stats.prompts, stats.prompts_done, stats.skipped, stats.status) == (3, 3, 0, "complete")
    assert (stats.samples, stats.accepted, stats.duplicates, stats.kept) == (6, 4, 2, 2)
    assert stats.rejected == {"accuracy": 2} and stats.acceptance_rate == pytest.approx(4 / 6)
    assert stats.samples_per_s > 0 and teacher.requests == 6
    assert server.chat_requests() - requests_before == 6

    records = {record["prompt_id"]: record for record in _lines(out)}  # prompts finish in any order
    first, again = records[prompt_id(ROWS[0])], records["again"]
    assert len(records) == 2
    assert first["prompt"] == QUESTION and first["gold"] == "4" and again["gold"] == "2+2"
    # llama_cpp.server renders the GGUF's R1 template (ending in `<think>\n`): the content holds only `</think>`.
    assert first["thinking"] == THOUGHT.strip() and first["answer"] == ANSWER
    assert first["rewards"] == {"accuracy": 1.0, "format": 1.0} and first["reward"] == 2.0
    assert first["teacher"] == {"kind": "openai", "name": teacher.name, "url": server.url}
    assert first["sampling"] == {"temperature": 0.0, "top_p": 0.95, "max_tokens": 200, "seed": 0}
    assert first["sample"] == 0 and first["timing"]["seconds"] > 0
    assert first["usage"]["completion_tokens"] > 0 and first["usage"]["prompt_tokens"] > 0
    assert KEY not in out.read_text() and KEY not in progress_path(out).read_text()

    # Every prompt is in the progress file, the fully rejected one included.
    header, *progress = _lines(progress_path(out))
    assert header["config"]["k"] == 2
    by_id = {record["prompt_id"]: record for record in progress}
    assert {identity: record["kept"] for identity, record in by_id.items()} == {
        prompt_id(ROWS[0]): 1, prompt_id(ROWS[1]): 0, "again": 1}
    assert by_id[prompt_id(ROWS[1])]["rejected"] == {"accuracy": 2}

    # Every reply not kept is beside them with the verifier's reason: the wrong prompt's two, one duplicate each.
    not_kept = _lines(rejected_path(out))
    assert rejected_path(out).name == "traces.rejected.jsonl" and KEY not in rejected_path(out).read_text()
    assert sorted((r["prompt_id"], r["sample"], r["reason"], r["dropped"]) for r in not_kept) == sorted([
        (prompt_id(ROWS[1]), 0, "accuracy", None), (prompt_id(ROWS[1]), 1, "accuracy", None),
        (prompt_id(ROWS[0]), 1, None, "duplicate"), ("again", 1, None, "duplicate")])
    wrong = next(r for r in not_kept if r["prompt_id"] == prompt_id(ROWS[1]))
    assert (wrong["prompt"], wrong["gold"], wrong["answer"], wrong["thinking"]) == (QUESTION, "5", ANSWER,
                                                                                  THOUGHT.strip())
    assert wrong["rewards"] == {"accuracy": 0.0, "format": 1.0} and wrong["reward"] == 1.0
    assert (wrong["finish_reason"], wrong["truncated"]) == ("stop", False) and ANSWER in wrong["text"]
    assert wrong["usage"]["completion_tokens"] > 0 and wrong["sampling"]["max_tokens"] == 200

    kinds = [event["type"] for event in events]
    assert {"progress", "metrics", "sample", "artifact"} <= set(kinds)
    final = [event for event in events if event["type"] == "progress"][-1]
    assert final["done"] == final["total"] == 3 and final["unit"] == "prompts"
    metrics = [event for event in events if event["type"] == "metrics"]
    assert [event["step"] for event in metrics] == [1, 2, 3] and metrics[-1]["acceptance_rate"] == pytest.approx(4 / 6, abs=1e-5)

    # A rerun asks the teacher nothing and leaves the file as it was.
    before, rejected_before = out.read_bytes(), rejected_path(out).read_bytes()
    rerun_teacher = OpenAITeacher(server.url, model=teacher.name, api_key_env=KEY_ENV)
    rerun = generate_traces(rerun_teacher, ROWS, k=2, out_path=out, sampling=GREEDY)
    assert (rerun.skipped, rerun.prompts_done, rerun.samples, rerun.status) == (3, 0, 0, "complete")
    assert rerun_teacher.requests == 0 and server.chat_requests() - requests_before == 6
    assert out.read_bytes() == before and rejected_path(out).read_bytes() == rejected_before


def test_a_crash_mid_write_is_cleaned_on_resume(server, tmp_path):
    out = tmp_path / "traces.jsonl"
    teacher = OpenAITeacher(server.url, api_key_env=KEY_ENV)
    generate_traces(teacher, ROWS[:1], k=1, out_path=out, sampling=GREEDY)
    done_line = out.read_text()
    # A crash while writing the third prompt: one whole line (its progress record never came) and half a line.
    orphan = {**json.loads(done_line), "prompt_id": "again"}
    with open(out, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(orphan) + "\n" + '{"prompt_id": "again", "thinking": "Step 1: 2+')
    with open(rejected_path(out), "a", encoding="utf-8") as stream:  # (a reply of the prompt cut short, and half)
        stream.write(json.dumps({**orphan, "reason": "accuracy"}) + "\n" + '{"prompt_id": "again", "rea')
    with open(progress_path(out), "a", encoding="utf-8") as stream:
        stream.write('{"prompt_id": "aga')
    events: list[dict] = []
    stats = generate_traces(teacher, ROWS, k=1, out_path=out, sampling=GREEDY, on_event=events.append)
    assert (stats.skipped, stats.prompts_done, stats.kept) == (1, 2, 1)
    removed = [event["message"] for event in events if "removed 2 line(s)" in event.get("message", "")]
    assert [message.split()[-1] for message in removed] == ["traces.jsonl", "traces.rejected.jsonl"]
    # The rejected file holds the second prompt's reply (rejected by accuracy) once, the orphan gone.
    assert [(r["prompt_id"], r["reason"]) for r in _lines(rejected_path(out))] == [(prompt_id(ROWS[1]), "accuracy")]
    records = _lines(out)  # every line parses again
    assert [record["prompt_id"] for record in records] == [prompt_id(ROWS[0]), "again"]
    assert out.read_text().startswith(done_line)
    progress = [record.get("prompt_id") for record in _lines(progress_path(out))[1:]]
    assert progress[0] == prompt_id(ROWS[0]) and sorted(progress[1:]) == sorted([prompt_id(ROWS[1]), "again"])


def test_keep_first_over_sampled_replies(server, tmp_path):
    """k = 3 replies sampled from llama_cpp.server at temperature 0.8 (seeds 7, 8, 9): the scripted model is
    so sure of its one reply that all three agree, so all are accepted and two are dropped as duplicates;
    "first" keeps sample 0 with its own seed. (The rules choosing among distinct replies:
    test_keep_rules_choose_among_distinct_replies.)"""
    teacher = OpenAITeacher(server.url, api_key_env=KEY_ENV, concurrency=3)
    sampled = Sampling(temperature=0.8, top_p=0.95, max_tokens=200, seed=7)
    stats = generate_traces(teacher, ROWS[:1], k=3, out_path=tmp_path / "first.jsonl", keep="first", sampling=sampled)
    assert (stats.samples, stats.accepted, stats.duplicates, stats.kept) == (3, 3, 2, 1)
    [record] = _lines(tmp_path / "first.jsonl")
    assert (record["sample"], record["sampling"]["seed"]) == (0, 7)
    assert record["thinking"] == THOUGHT.strip() and record["answer"] == ANSWER


def test_a_wrong_or_missing_api_key_is_one_line_naming_the_url(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong")
    with pytest.raises(AhaError) as refused:
        OpenAITeacher(server.url, api_key_env=KEY_ENV)
    message = str(refused.value)
    assert f"{server.url}/models" in message and "HTTP 401" in message and KEY_ENV in message and "\n" not in message
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(AhaError, match=f"environment variable {KEY_ENV} holds no API key"):
        OpenAITeacher(server.url, api_key_env=KEY_ENV)


def test_cli_generate_with_jsonl_events(server, tmp_path):
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps({"question": row["prompt"], "solution": row["answer"]}) + "\n"
                               for row in ROWS[:2]), encoding="utf-8")
    out = tmp_path / "traces.jsonl"
    command = [sys.executable, "-m", "engine.cli", "distill", "generate", "--teacher", f"openai:{server.url}",
               "--api-key-env", KEY_ENV, "--dataset", str(dataset), "--prompt-column", "question",
               "--answer-column", "solution", "-k", "2", "--keep", "shortest", "--reward", "accuracy",
               "--reward", "format", "--temperature", "0", "--max-tokens", "200", "--concurrency", "2",
               "-o", str(out), "--events", "jsonl"]
    env = {**os.environ, "AHA_HOME": str(tmp_path / "home")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {"progress", "metrics", "sample", "artifact", "done"} <= {event["type"] for event in events}
    done = events[-1]
    assert done["type"] == "done" and done["status"] == "complete"
    assert (done["result"]["samples"], done["result"]["accepted"], done["result"]["kept"],
            done["result"]["rejected"]) == (4, 2, 1, {"accuracy": 2})
    assert _lines(out)[0]["answer"] == ANSWER
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[-1])["result"]["skipped"] == 2


def test_cli_reports_a_dataset_without_the_column_with_its_line(tmp_path, capsys):
    dataset = tmp_path / "data.jsonl"
    dataset.write_text('{"prompt": "1+1?", "answer": "2"}\n\n{"prompt": "2+2?"}\n', encoding="utf-8")
    code = main(["distill", "generate", "--teacher", "openai:http://127.0.0.1:9/v1", "--model", "m",
                 "--dataset", str(dataset), "-o", str(tmp_path / "out.jsonl"), "--events", "jsonl"])
    captured = capsys.readouterr()
    assert code == 2
    error = json.loads(captured.out.splitlines()[-1])
    assert error["type"] == "error" and "line 3" in error["message"] and "'answer'" in error["message"]
    assert "--answer-column" in captured.err and not (tmp_path / "out.jsonl").exists()


# Errors that name what to fix ---------------------------------------------------------------------

def test_an_unreachable_teacher_is_one_line_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(AhaError) as unreachable:
        OpenAITeacher(url)  # asks the server which model it serves
    assert f"cannot reach the teacher at {url}/models" in str(unreachable.value)
    teacher = OpenAITeacher(url, model="deepseek-r1")
    with Store(tmp_path / "aha.db") as store:
        with pytest.raises(AhaError) as failed:
            generate_traces(teacher, ROWS[:1], k=2, out_path=tmp_path / "out.jsonl", sampling=GREEDY, store=store)
        assert store.get_run(1)["status"] == "error"
    message = str(failed.value)
    assert f"cannot reach the teacher at {url}/chat/completions" in message and "\n" not in message
    assert (tmp_path / "out.jsonl").read_text() == ""  # nothing half-written


def test_an_existing_foreign_output_is_not_overwritten(tmp_path):
    out = tmp_path / "notes.jsonl"
    out.write_text('{"mine": true}\n', encoding="utf-8")
    teacher = OpenAITeacher("http://127.0.0.1:9/v1", model="m")
    with pytest.raises(AhaError, match="pass --force"):
        generate_traces(teacher, ROWS[:1], k=1, out_path=out)
    assert out.read_text() == '{"mine": true}\n'


# The other two teachers, in-process -------------------------------------------------------------

def test_gguf_teacher_generates_cancels_and_resumes(scripted_gguf, tmp_path):
    out = tmp_path / "traces.jsonl"
    teacher = GGUFTeacher(scripted_gguf, n_ctx=1024)
    try:
        cancel = CancelToken()

        def on_event(event: dict) -> None:
            if event["type"] == "sample":
                cancel.cancel()  # stop after the first prompt

        stats = generate_traces(teacher, ROWS, k=2, out_path=out, sampling=GREEDY, on_event=on_event, cancel=cancel)
        assert (stats.status, stats.prompts_done, stats.kept) == ("cancelled", 1, 1)
        record = _lines(out)[0]
        assert record["thinking"] == THOUGHT.strip() and record["answer"] == ANSWER
        assert record["teacher"]["kind"] == "gguf" and record["timing"]["thinking_s"] > 0
        rest = generate_traces(teacher, ROWS, k=2, out_path=out, sampling=GREEDY)
        assert (rest.status, rest.skipped, rest.prompts_done, rest.kept) == ("complete", 1, 2, 1)
        # A reply cut by the token budget is never kept.
        short = generate_traces(teacher, ROWS[:1], k=1, out_path=tmp_path / "short.jsonl",
                                sampling=Sampling(temperature=0.0, max_tokens=10))
        assert short.rejected == {"truncated": 1} and short.kept == 0
        [cut] = _lines(rejected_path(tmp_path / "short.jsonl"))
        assert (cut["reason"], cut["finish_reason"], cut["truncated"], cut["answer"]) == ("truncated", "length",
                                                                                          True, "")
        [(_, [sample])] = list(teacher.generate([QUESTION], 1, GREEDY))
        assert sample.raw == REPLY and sample.prefilled and sample.finish_reason == "stop"
    finally:
        teacher.close()


def test_hf_teacher_generates_traces(scripted_gguf, tiny_dir, tmp_path):
    teacher = HFTeacher(tiny_dir / "scripted")  # the checkpoint the scripted GGUF was exported from
    out = tmp_path / "traces.jsonl"
    stats = generate_traces(teacher, ROWS[:2], k=2, out_path=out, sampling=GREEDY)
    assert (stats.samples, stats.accepted, stats.duplicates, stats.kept) == (4, 2, 1, 1)
    record = _lines(out)[0]
    assert record["thinking"] == THOUGHT.strip() and record["answer"] == ANSWER
    assert record["teacher"] == {"kind": "hf", "name": "scripted", "path": str(tiny_dir / "scripted")}
    [(_, samples)] = list(teacher.generate([QUESTION], 2, Sampling(temperature=0.7, max_tokens=8, seed=3)))
    assert [sample.finish_reason for sample in samples] == ["length", "length"]
    assert all(sample.prefilled and sample.usage["completion_tokens"] == 8 for sample in samples)


# Reply shapes, keep rules and a fake endpoint with a reasoning field ----------------------------

def test_split_reply_shapes():
    # Inline tags, as a template that does not open the thought makes a model write them.
    assert split_reply("<think>\nhmm\n</think>\n\n42") == ("hmm", "42", "<think>\nhmm\n</think>\n\n42", False)
    # Only the closing tag: the prompt opened the thought (R1 templates since Feb 2025).
    assert split_reply("hmm\n</think>\n\n42") == ("hmm", "42", "hmm\n</think>\n\n42", True)
    # A separate reasoning field (vLLM, DeepSeek's API, Ollama): put back inline for the verifier.
    assert split_reply("42", reasoning="hmm") == ("hmm", "42", "<think>\nhmm\n</think>\n\n42", False)
    # No thought at all: all answer, and the format reward will say so.
    assert split_reply("42") == ("", "42", "42", False)


def _sample(thinking: str, answer: str) -> TeacherSample:
    return TeacherSample(thinking, answer, f"{thinking}</think>{answer}", True, "stop", {})


def test_select_kept_rules_and_duplicates():
    verdicts = [Verdict(_sample("long thought", "4"), 0, {}, 2.0, None),
                Verdict(_sample("short", "4"), 1, {}, 2.0, None),
                Verdict(_sample("wrong", "5"), 2, {}, 1.0, "accuracy"),
                Verdict(_sample("short", "4"), 3, {}, 2.0, None)]
    assert [v.index for v in select_kept(verdicts, "all")[0]] == [0, 1] and select_kept(verdicts, "all")[1] == 1
    assert [v.index for v in select_kept(verdicts, "first")[0]] == [0]
    assert [v.index for v in select_kept(verdicts, "shortest")[0]] == [1]
    assert select_kept(verdicts[2:3], "shortest") == ([], 0)
    with pytest.raises(AhaError, match="unknown keep rule"):
        select_kept(verdicts, "best")


class _FakeEndpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that returns reasoning apart from the answer, in the message field
    `reasoning_field` (`reasoning_content`: DeepSeek's API, vLLM, llama.cpp's server; `reasoning`: Ollama's /v1,
    newer vLLM; `thinking`: others), and fails the first chat request with HTTP 503. Its state is per class:
    `reset` it for each case."""

    bodies: list[dict] = []
    headers_seen: list[str] = []
    failures_left = 1
    reasoning_field = "reasoning_content"

    @classmethod
    def reset(cls, reasoning_field: str) -> None:
        cls.bodies, cls.headers_seen, cls.failures_left, cls.reasoning_field = [], [], 1, reasoning_field

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).headers_seen.append(self.headers.get("Authorization", ""))
        if type(self).failures_left:
            type(self).failures_left -= 1
            self._send(503, {"error": {"message": "warming up"}})
            return
        type(self).bodies.append(body)
        self._send(200, {"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "The answer is \\boxed{4}.", type(self).reasoning_field: "2 and 2 make 4."}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 12}})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "thinking"])
def test_reasoning_field_endpoint_with_a_retried_failure(tmp_path, monkeypatch, field):
    """The reply's reasoning in any of the fields servers use is the trace's thinking, the content its answer;
    a 503 is retried; each sample has its own seed; the API key is sent with every request."""
    monkeypatch.setattr(teachers, "RETRY_BACKOFF_S", 0.0)
    _FakeEndpoint.reset(field)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeEndpoint)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        teacher = OpenAITeacher(f"http://127.0.0.1:{httpd.server_address[1]}", model="r1-fake", api_key_env=KEY_ENV,
                                concurrency=1)
        assert teacher.base_url.endswith("/v1")  # a bare host:port gets the OpenAI path
        out = tmp_path / "traces.jsonl"
        stats = generate_traces(teacher, ROWS[:1], k=2, out_path=out, keep="all",
                                sampling=Sampling(temperature=0.6, top_p=0.9, max_tokens=64, seed=5))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (stats.samples, stats.accepted, stats.kept, stats.duplicates) == (2, 2, 1, 1)
    record = _lines(out)[0]
    assert record["thinking"] == "2 and 2 make 4." and record["answer"] == "The answer is \\boxed{4}."
    assert record["usage"] == {"prompt_tokens": 9, "completion_tokens": 12}
    bodies = sorted(_FakeEndpoint.bodies, key=lambda body: body["seed"])
    assert [body["seed"] for body in bodies] == [5, 6]
    assert bodies[0]["model"] == "r1-fake" and bodies[0]["messages"] == [{"role": "user", "content": QUESTION}]
    assert (bodies[0]["temperature"], bodies[0]["top_p"], bodies[0]["max_tokens"]) == (0.6, 0.9, 64)
    assert set(_FakeEndpoint.headers_seen) == {f"Bearer {KEY}"} and len(_FakeEndpoint.headers_seen) == 3


class _AddingEndpoint(_FakeEndpoint):
    """An OpenAI-compatible endpoint that adds: "123+456=" gets a thought and "\\boxed{579}"."""

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        a, b = map(int, re.fullmatch(r"(\d+)\+(\d+)=", body["messages"][-1]["content"]).groups())
        self._send(200, {"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": f"\\boxed{{{a + b}}}", "reasoning_content": f"{a} plus {b}"}}]})


def test_cli_generate_from_the_built_in_task(tmp_path):
    """`aha distill generate --dataset addition` asks the teacher the task's training problems (the first
    TASK_ROWS without --limit, as `aha grpo --dataset addition` would draw them) and checks the replies
    against the task's sums."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _AddingEndpoint)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    out = tmp_path / "traces.jsonl"
    command = [sys.executable, "-m", "engine.cli", "distill", "generate", "--teacher",
               f"openai:http://127.0.0.1:{httpd.server_address[1]}/v1", "--model", "adder", "--dataset", "addition",
               "-k", "1", "-o", str(out), "--events", "jsonl"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "AHA_HOME": str(tmp_path / "home")})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert (done["type"], done["status"], done["result"]["prompts"], done["result"]["kept"]) == (
        "done", "complete", TASK_ROWS, TASK_ROWS)
    traces = {record["prompt"]: record for record in _lines(out)}  # in the order the replies came
    task = [TaskSource("addition").row(index) for index in range(TASK_ROWS)]
    assert {prompt: (record["gold"], record["answer"]) for prompt, record in traces.items()} == {
        row["prompt"]: (row["answer"], f"\\boxed{{{row['answer']}}}") for row in task}


def test_keep_rules_choose_among_distinct_replies(tmp_path):
    """Three distinct replies per prompt, the first two right: "all" keeps both right ones in sample order,
    "first" the long one (sample 0), "shortest" the short one (sample 2)."""
    short = "<think>\nshort\n</think>\n\n\\boxed{4}"
    teacher = ListTeacher([REPLY, "<think>\nwrong\n</think>\n\n\\boxed{5}", short])
    kept = {}
    for rule in ("all", "first", "shortest"):
        generate_traces(teacher, ROWS[:1], k=3, out_path=tmp_path / f"{rule}.jsonl", keep=rule)
        kept[rule] = [(record["sample"], record["thinking"]) for record in _lines(tmp_path / f"{rule}.jsonl")]
    assert kept == {"all": [(0, THOUGHT.strip()), (2, "short")], "first": [(0, THOUGHT.strip())],
                    "shortest": [(2, "short")]}


def test_deleted_traces_start_over_and_changed_settings_are_flagged(tmp_path):
    out = tmp_path / "traces.jsonl"
    teacher = ListTeacher([REPLY, "no thought, just \\boxed{4}", "<think>\nshort\n</think>\n\n\\boxed{4}"])
    stats = generate_traces(teacher, ROWS, k=3, out_path=out, keep="shortest")
    assert stats.rejected == {"format": 2, "accuracy": 3} and stats.kept == 2  # one kept per prompt whose gold is 4
    assert {record["thinking"] for record in _lines(out)} == {"short"}
    expected = sorted([(prompt_id(ROWS[0]), 0, None, "keep rule"), (prompt_id(ROWS[0]), 1, "format", None),
                       *[(prompt_id(ROWS[1]), sample, "accuracy", None) for sample in range(3)],
                       ("again", 0, None, "keep rule"), ("again", 1, "format", None)])
    verdicts = lambda: sorted((r["prompt_id"], r["sample"], r["reason"], r["dropped"])  # noqa: E731
                              for r in _lines(rejected_path(out)))
    assert verdicts() == expected
    out.unlink()
    again = generate_traces(teacher, ROWS, k=3, out_path=out, keep="shortest")
    assert (again.skipped, again.prompts_done, teacher.prompts_asked) == (0, 3, 6)
    assert verdicts() == expected  # started over, not appended to
    forced = generate_traces(teacher, ROWS, k=3, out_path=out, keep="shortest", force=True)
    assert (forced.skipped, forced.prompts_done, teacher.prompts_asked) == (0, 3, 9) and verdicts() == expected
    events: list[dict] = []
    generate_traces(teacher, ROWS, k=2, out_path=out, keep="shortest", on_event=events.append)
    warnings = [event["message"] for event in events if event.get("level") == "warning"]
    assert any("different settings (k)" in message for message in warnings) and teacher.prompts_asked == 9


def test_the_files_read_back_as_every_verdict_in_sample_order(tmp_path):
    """follow.trace_records turns the three files into the rollouts the `sample` events show: each prompt's
    replies in sample order, kept or not, with the reasons the verifier wrote (not worked out again)."""
    out = tmp_path / "traces.jsonl"
    teacher = ListTeacher(["no thought, just \\boxed{4}", REPLY, REPLY])
    events: list[dict] = []
    generate_traces(teacher, ROWS[:2], k=3, out_path=out, on_event=events.append)
    records = trace_records(read_jsonl(out), read_jsonl(progress_path(out)), read_jsonl(rejected_path(out)))
    samples = [event for event in events if event["type"] == "sample"]
    assert [record["step"] for record in records] == [sample["step"] for sample in samples] == [1, 2]
    for record, sample in zip(records, samples, strict=True):
        assert (record["prompt_id"], record["prompt"], record["answer"]) == (
            sample["prompt_id"], sample["prompt"], sample["answer"])
        assert [c["accepted"] for c in record["completions"]] == [c["accepted"] for c in sample["completions"]]
        assert [c["answer_text"] for c in record["completions"]] == [c["answer_text"] for c in sample["completions"]]
        assert [c["rewards"] for c in record["completions"]] == [c["rewards"] for c in sample["completions"]]
    assert [(c["verdict"], c.get("dropped")) for c in records[0]["completions"]] == [
        ("format", None), (None, None), (None, "duplicate")]
    assert [c["verdict"] for c in records[1]["completions"]] == ["accuracy"] * 3
    assert records[1]["rejected"] == {"accuracy": 3} and records[1]["samples"] == 3
    # A reason the verifier gave stands as written, even one the rewards alone would not give.
    cancelled = [{**line, "reason": "cancelled"} for line in read_jsonl(rejected_path(out))]
    records = trace_records(read_jsonl(out), read_jsonl(progress_path(out)), cancelled)
    assert records[1]["completions"][0]["verdict"] == "cancelled"
    # Files written before the rejected file: the kept replies, and the counts.
    [first, second] = trace_records(read_jsonl(out), read_jsonl(progress_path(out)))
    assert [c["verdict"] for c in first["completions"]] == [None] and second["completions"] == []
    assert second["rejected"] == {"accuracy": 3}


def test_custom_reward_files_see_the_dataset_columns(tmp_path):
    checker = tmp_path / "checker.py"
    checker.write_text("def has_unit(prompts, completions, unit, **columns):\n"
                       "    return [float(u in c) for c, u in zip(completions, unit)]\n", encoding="utf-8")
    rows = [{"prompt": "How long?", "answer": "4", "unit": "cm"}, {"prompt": "How heavy?", "answer": "4", "unit": "kg"}]
    teacher = ListTeacher(["<think>\nmeasure\n</think>\n\n\\boxed{4} cm"])
    stats = generate_traces(teacher, rows, k=1, out_path=tmp_path / "t.jsonl",
                            rewards=["accuracy", "format", f"{checker}:has_unit"])
    assert stats.kept == 1 and stats.rejected == {"has_unit": 1}
    assert _lines(tmp_path / "t.jsonl")[0]["rewards"] == {"accuracy": 1.0, "format": 1.0, "has_unit": 1.0}
