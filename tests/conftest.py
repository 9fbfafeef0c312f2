"""Shared fixtures: tiny real checkpoints (built once per session) and their GGUF exports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import tiny_models

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ARCHS = ("qwen2", "llama", "qwen3")


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    """Every test gets its own Aha data directory; nothing touches the user's."""
    monkeypatch.setenv("AHA_HOME", str(tmp_path / "aha-home"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def checkpoint(tiny_dir):
    """checkpoint(arch) → folder of a tiny random HF checkpoint of that architecture (cached)."""
    def build(arch: str) -> Path:
        folder = tiny_dir / arch
        if not (folder / "model.safetensors").exists():
            tiny_models.make_checkpoint(folder, arch)
        return folder
    return build


@pytest.fixture(scope="session")
def gguf_file(tiny_dir, checkpoint):
    """gguf_file(arch, type) → our GGUF export of the tiny checkpoint (cached)."""
    from engine.export import export

    def build(arch: str, out_type: str) -> Path:
        path = tiny_dir / "gguf" / f"{arch}-{out_type}.gguf"
        if not path.exists():
            export(checkpoint(arch), path, out_type)
        return path
    return build


@pytest.fixture(scope="session")
def hf_logits():
    """hf_logits(folder, ids) → transformers' float32 logits (T, V) for one sequence."""
    def run(folder: Path, ids: list[int]):
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].numpy()
    return run


@pytest.fixture(scope="session")
def llama_logits():
    """llama_logits(gguf, ids, lora=None) → llama.cpp's logits (T, V) for one sequence."""
    def run(path: Path, ids: list[int], lora: Path | None = None):
        import llama_cpp
        import numpy as np

        llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                              lora_path=str(lora) if lora else None)
        try:
            llm.eval(ids)
            return np.array(llm.scores[: len(ids)])
        finally:
            llm.close()
    return run


def nmse(actual, reference) -> float:
    """Normalized mean squared error: mean((a − r)²) / mean(r²)."""
    import numpy as np

    actual, reference = np.asarray(actual, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(((actual - reference) ** 2).mean() / (reference ** 2).mean())
