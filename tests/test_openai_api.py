"""engine.openai_api's retry policy against a scripted loopback server: what is tried again (429, 5xx) and
how long it waits, what is not (a refusal, a reply that is not JSON, no server), and the one-line errors.
The teacher's and the judge's own tests cover 401, 5xx and timeouts through their callers."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.openai_api import NoReply, NotJSON, OpenAIClient, Refused, Unanswered, Unreachable
from tests.support.llama_server import free_port

OK = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}).encode()


class _Scripted(BaseHTTPRequestHandler):
    """Answers request n with script[n] (status, body); the last entry repeats."""

    script: list[tuple[int, bytes]] = []
    seen: list[float] = []

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        _Scripted.seen.append(time.monotonic())
        status, body = _Scripted.script[min(len(_Scripted.seen), len(_Scripted.script)) - 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    _Scripted.seen = []

    def client(script, **options) -> OpenAIClient:
        _Scripted.script = script
        return OpenAIClient(f"http://127.0.0.1:{httpd.server_address[1]}", role="judge",
                            model_setting="judge_model", **options)

    yield client
    httpd.shutdown()
    httpd.server_close()


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"message": message}}).encode()


def test_429_and_5xx_are_tried_again_after_backoff(scripted):
    client = scripted([_error(429, "slow down"), _error(503, "loading"), (200, OK)], retries=2, backoff_s=0.05)
    assert client.chat({"model": "m"})["choices"][0]["message"]["content"] == "hi"
    waits = [later - earlier for earlier, later in zip(_Scripted.seen, _Scripted.seen[1:], strict=False)]
    assert len(_Scripted.seen) == 3 and waits[0] >= 0.05 and waits[1] >= 0.1  # backoff_s · 2ⁿ⁻¹ after try n


def test_every_try_failing_is_one_line_naming_the_last_failure(scripted):
    client = scripted([_error(500, "out of\nmemory")], retries=1, backoff_s=0.0)
    with pytest.raises(Unanswered) as failed:
        client.chat({"model": "m"})
    assert str(failed.value) == (f"the judge at {client.base_url}/chat/completions failed 2 times: HTTP 500 out of "
                                 "memory; check the server's log")
    assert len(_Scripted.seen) == 2


def test_refusals_garbage_and_no_server_are_not_tried_again(scripted):
    with pytest.raises(Refused, match=r"HTTP 404: no such model\); .*model name \(judge_model\)"):
        scripted([_error(404, "no such model")], retries=2, backoff_s=0.0).chat({"model": "m"})
    assert len(_Scripted.seen) == 1
    with pytest.raises(NotJSON, match="did not answer with JSON"):
        scripted([(200, b"<html>")], retries=2, backoff_s=0.0).chat({"model": "m"})
    assert len(_Scripted.seen) == 2
    with pytest.raises(Unreachable, match="cannot reach the judge at") as unreachable:
        OpenAIClient(f"http://127.0.0.1:{free_port()}", role="judge").chat({"model": "m"})
    assert isinstance(unreachable.value, NoReply) and not isinstance(unreachable.value, Refused)
