"""`aha inspect`: devices, the checkpoints of a fake HF cache (the tiny checkpoint laid out as huggingface_hub
stores it) and of the runs, and a dataset's preview with its first prompt rendered as training renders it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import AhaError
from engine.train import inspect
from engine.train.data import TaskSource

REPO = Path(__file__).resolve().parents[1]


def aha(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=120)


def fake_hf_cache(root: Path, folder: Path, repo_id: str = "tiny-org/tiny-r1") -> Path:
    """The checkpoint as the HF cache holds it: blobs, refs/main, snapshots/<commit>/ of links to the blobs."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for index, file in enumerate(sorted(path for path in folder.iterdir() if path.is_file())):
        blob = repo / "blobs" / f"{index:040x}"
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_safetensors_parameters_match_the_model(checkpoint):
    from transformers import AutoModelForCausalLM

    folder = checkpoint("qwen2")
    model = AutoModelForCausalLM.from_pretrained(folder)
    counted = inspect.safetensors_parameters(folder / "model.safetensors")
    assert counted == sum(parameter.numel() for parameter in model.parameters())  # tied weights once
    info = inspect.checkpoint_info(folder)
    assert info["architecture"] == "Qwen2ForCausalLM" and info["model_type"] == "qwen2"
    assert info["parameters"] == counted
    assert info["size_bytes"] >= (folder / "model.safetensors").stat().st_size


def test_checkpoints_of_a_fake_hf_cache_and_of_the_runs(checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    snapshot = fake_hf_cache(cache, checkpoint("qwen2"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    runs = Path(os.environ["AHA_HOME"]) / "runs"
    merged = runs / "grpo-1" / "final" / "merged"
    merged.mkdir(parents=True)
    for file in checkpoint("llama").iterdir():
        (merged / file.name).write_bytes(file.read_bytes())
    (runs / "grpo-1" / "final" / "adapter").mkdir()  # an adapter is not a checkpoint
    (runs / "grpo-1" / "final" / "adapter" / "adapter_config.json").write_text("{}")
    found = inspect.discover_checkpoints()
    assert [(info["source"], info["name"], info["architecture"]) for info in found] == [
        ("hf-cache", "tiny-org/tiny-r1", "Qwen2ForCausalLM"), ("run", "merged", "LlamaForCausalLM")]
    assert found[0]["path"] == str(snapshot)
    assert found[0]["size_bytes"] >= (checkpoint("qwen2") / "model.safetensors").stat().st_size  # links followed
    result = aha("inspect", "checkpoints", "--json", env={"HF_HUB_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    assert [info["name"] for info in json.loads(result.stdout)] == ["tiny-org/tiny-r1", "merged"]
    table = inspect.checkpoints_table(found)
    assert "tiny-org/tiny-r1" in table and "Qwen2ForCausalLM" in table


def test_no_cache_is_no_checkpoints(tmp_path):
    assert inspect.cached_checkpoints(tmp_path / "absent") == []


def test_devices():
    """(The Train pane's test runs `aha inspect devices --json` as its child.)"""
    info = inspect.devices()
    assert json.loads(json.dumps(info)) == info
    assert inspect.devices_text(info).splitlines()[-2] == f"CPU, {info['cpu_cores']} cores"
    assert info["cpu_cores"] >= 1 and isinstance(info["cuda"], list)
    if not info["cuda"]:
        assert info["summary"] == f"CPU, {info['cpu_cores']} cores" or info["summary"] == "CPU, 1 core"
        assert info["qlora"] == {"available": False,
                                 "reason": "QLoRA 4-bit needs an NVIDIA GPU with CUDA; none was found"}
    else:
        assert info["cuda"][0]["vram_bytes"] > 0


def test_task_preview_renders_the_first_prompt_as_training_does(checkpoint):
    from engine.train.core import load_tokenizer
    from engine.train.sampling import encode_prompts

    preview = inspect.preview_dataset("addition", model=str(checkpoint("qwen2")), limit=3)
    first = TaskSource("addition").row(0)
    assert preview["kind"] == "task" and preview["columns"] == ["prompt", "answer", "completion"]
    assert preview["rows"][0] == first and len(preview["rows"]) == 3
    _, rendered, prefilled = encode_prompts(load_tokenizer(checkpoint("qwen2")), [first["prompt"]])
    assert preview["rendered_prompt"] == rendered[0]
    assert preview["rendered_prompt"].endswith("<｜Assistant｜><think>\n") and preview["prefilled"] is prefilled[0] is True


def test_file_preview_lists_its_own_columns_and_a_mapping_that_does_not_fit(tmp_path, checkpoint):
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"question": f"{n}+1=", "solution": str(n + 1)}) + "\n" for n in range(8)))
    preview = inspect.preview_dataset(str(data), limit=2)
    assert preview["columns"] == ["question", "solution"] and len(preview["rows"]) == 2
    assert "has no column 'prompt'" in preview["mapping_error"] and preview["rendered_prompt"] is None
    mapped = inspect.preview_dataset(str(data), prompt_column="question", answer_column="solution",
                                     model=str(checkpoint("qwen2")), system_prompt="Be brief.")
    assert mapped["mapping_error"] is None and mapped["prompt"] == "0+1="
    assert "Be brief." in mapped["rendered_prompt"] and "0+1=" in mapped["rendered_prompt"]
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("prompt,answer\n1+1=,2\n")
    assert inspect.preview_dataset(str(csv_file))["rows"] == [{"prompt": "1+1=", "answer": "2"}]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args in (["inspect", "dataset", str(tmp_path / "missing.jsonl")], ["inspect", "dataset", "addition", "--limit", "0"],
                 ["inspect", "dataset", "addition", "--model", str(tmp_path)]):
        result = aha(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("aha: error: ")
    with pytest.raises(AhaError, match="not valid JSON"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text("{nope\n")
        inspect.preview_dataset(str(bad))


def test_a_gpu_is_named_with_its_memory():
    """What `devices` reports on a CUDA machine (this one may have none): each GPU with its memory."""
    gpus = [{"index": 0, "name": "NVIDIA H200", "vram_bytes": 150_000_000_000},
            {"index": 1, "name": "NVIDIA RTX 4060", "vram_bytes": 8_000_000_000}]
    assert inspect.device_summary(gpus, 16) == "NVIDIA H200, 150.0 GB; NVIDIA RTX 4060, 8.0 GB"
    assert inspect.device_summary([], 1) == "CPU, 1 core"
    text = inspect.devices_text({"cuda": gpus[:1], "cpu_cores": 16, "qlora": {"available": True, "reason": None}})
    assert text.splitlines() == ["0  NVIDIA H200  150.0 GB", "CPU, 16 cores", "QLoRA 4-bit: available"]
