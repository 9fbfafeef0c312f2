"""`aha export` from the command line: bad input gives one line and no partial file; events; Ollama."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.fake_ollama import FakeOllama


def aha(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, env=env)


def assert_one_line_error(result, *words):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aha: error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_missing_folder(tmp_path):
    result = aha("export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out" / "m.gguf"))
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unsupported_architecture(checkpoint, tmp_path):
    folder = tmp_path / "gpt2ish"
    shutil.copytree(checkpoint("qwen2"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    config["model_type"] = "mistral"
    (folder / "config.json").write_text(json.dumps(config))
    result = aha("export", str(folder), "-o", str(tmp_path / "m.gguf"))
    assert_one_line_error(result, "unsupported architecture MistralForCausalLM")
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*partial*")) == []


@pytest.mark.parametrize("cut", ["header", "data"])
def test_corrupt_safetensors(checkpoint, tmp_path, cut):
    folder = tmp_path / "broken"
    shutil.copytree(checkpoint("qwen2"), folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:200] if cut == "header" else data[: len(data) // 2])
    result = aha("export", str(folder), "-o", str(tmp_path / "m.gguf"))
    assert_one_line_error(result, "model.safetensors")
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*partial*")) == []


def test_adapter_for_another_base(checkpoint, tmp_path):
    from tests.tiny_models import make_lora_adapter

    adapter = make_lora_adapter(checkpoint("qwen3"), tmp_path / "adapter")
    result = aha("export", str(checkpoint("qwen2")), "-o", str(tmp_path / "m.gguf"), "--adapter", str(adapter))
    assert_one_line_error(result, "another base model")
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*")) == []


@pytest.mark.parametrize("out_type,words", [("q9_z", ["unknown GGUF type"]), ("iq2_xs", ["importance matrix"])])
def test_unknown_or_imatrix_type(checkpoint, tmp_path, out_type, words):
    result = aha("export", str(checkpoint("qwen2")), "-o", str(tmp_path / "m.gguf"), "--type", out_type)
    assert_one_line_error(result, *words)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_force(checkpoint, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"the user's file")
    result = aha("export", str(checkpoint("qwen2")), "-o", str(out))
    assert_one_line_error(result, "already exists", "--force")
    assert out.read_bytes() == b"the user's file"
    forced = aha("export", str(checkpoint("qwen2")), "-o", str(out), "--force")
    assert forced.returncode == 0 and out.read_bytes()[:4] == b"GGUF"


def test_events_jsonl_and_ollama_registration(checkpoint, tmp_path, monkeypatch):
    import os

    with FakeOllama() as url:
        env = {**os.environ, "OLLAMA_HOST": url}
        result = aha("export", str(checkpoint("qwen2")), "-o", str(tmp_path / "r1.gguf"), "--type", "q8_0",
                     "--ollama", "aha-r1:test", "--events", "jsonl", env=env)
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        kinds = [e["type"] for e in events]
        assert kinds[-1] == "done" and "progress" in kinds
        progress = [e for e in events if e["type"] == "progress" and e["unit"] == "B"]
        assert progress[-1]["done"] == progress[-1]["total"]
        artifacts = {e["kind"] for e in events if e["type"] == "artifact"}
        assert {"gguf", "modelfile", "ollama"} <= artifacts
        from engine.ollama import OllamaClient

        shown = OllamaClient(url).show("aha-r1:test")
        assert "thinking" in shown["capabilities"]
    modelfile = (tmp_path / "r1.Modelfile").read_text()
    assert modelfile.startswith("FROM ./r1.gguf") and modelfile.count("PARAMETER stop") == 4


def test_aha_without_arguments_prints_help():
    result = aha()
    assert result.returncode == 0 and "export" in result.stdout and "usage: aha" in result.stdout
