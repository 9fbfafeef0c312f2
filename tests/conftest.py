"""Shared fixtures: tiny real checkpoints (built once per session) and their GGUF exports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.llama_backend import load_llama
from tests import tiny_models

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# torch's OpenMP threads (libgomp) spin for a long while when they wait for work. With more busy threads
# than cores (two test suites at once, or a test beside its own child processes) the spinning starves the
# thread doing the work: a small training loop ran 3× slower beside a second copy of itself (15.9 s vs
# 5.3 s alone). A short spin keeps that to 1.5× (8.0 s) and costs nothing alone; sleeping at once
# (OMP_WAIT_POLICY=PASSIVE) made token-by-token sampling 25 % slower. Set before anything imports torch;
# child processes inherit it.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
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
    from engine.export.pipeline import export

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
        import numpy as np

        llm = load_llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
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


@pytest.fixture(scope="session")
def scripted_gguf(tiny_dir, checkpoint):
    """A tiny model taught to answer QUESTION with a long thought then an answer (see scripted_model)."""
    from engine.export.pipeline import export
    from tests.support.scripted_model import train_scripted

    path = tiny_dir / "scripted.gguf"
    if not path.exists():
        folder = train_scripted(checkpoint("qwen2"), tiny_dir / "scripted")
        export(folder, path, "f16")
    return path


@pytest.fixture(scope="session")
def gguf_with_template(tiny_dir, checkpoint):
    """gguf_with_template(name, template | None, arch="qwen2") → a tiny GGUF of that architecture whose chat
    template is replaced (or removed)."""
    import json
    import shutil

    from engine.export.pipeline import export

    def build(name: str, template: str | None, arch: str = "qwen2") -> Path:
        path = tiny_dir / "templates" / f"{name}.gguf"
        if path.exists():
            return path
        folder = tiny_dir / "templates" / name
        shutil.copytree(checkpoint(arch), folder)
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config.pop("chat_template", None)
        if template is not None:
            config["chat_template"] = template
        config_file.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
        export(folder, path, "f16")
        return path
    return build


# pytest-qt waits 5 s by default. A wait's time limit is there to end a hang, not to time the app: on a
# machine running two test suites at once a model load or a child process can take longer than 5 s.
QT_WAIT_MS = 60_000


@pytest.fixture
def adder():
    """An OpenAI-compatible endpoint on loopback that adds ("123+456=" gets a thought and \\boxed{579}):
    a teacher that is always right, as `openai:URL`."""
    import threading
    from http.server import ThreadingHTTPServer

    from tests.test_distill_generate import _AddingEndpoint

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _AddingEndpoint)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"openai:http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def qtbot(qapp, request):
    """pytest-qt's qtbot with QT_WAIT_MS as the default limit of waitUntil / waitSignal(s) / waitCallback."""
    from pytestqt.qtbot import QtBot

    class PatientQtBot(QtBot):
        def waitUntil(self, callback, *, timeout=QT_WAIT_MS):  # noqa: N802 - pytest-qt's names
            return super().waitUntil(callback, timeout=timeout)

        def waitSignal(self, signal, *, timeout=QT_WAIT_MS, **kwargs):  # noqa: N802
            return super().waitSignal(signal, timeout=timeout, **kwargs)

        def waitSignals(self, signals, *, timeout=QT_WAIT_MS, **kwargs):  # noqa: N802
            return super().waitSignals(signals, timeout=timeout, **kwargs)

        def waitCallback(self, *, timeout=QT_WAIT_MS, **kwargs):  # noqa: N802
            return super().waitCallback(timeout=timeout, **kwargs)

    return PatientQtBot(request)


@pytest.fixture
def restyled(qapp):
    """theme.apply restyles the whole application: put its palette, style sheet and style back after."""
    from app.qt import QtGui

    palette, sheet, style = QtGui.QPalette(qapp.palette()), qapp.styleSheet(), qapp.style().name()
    yield qapp
    qapp.setStyleSheet(sheet)
    qapp.setPalette(palette)
    if style:
        qapp.setStyle(style)


def pytest_collection_modifyitems(config, items):
    """Items marked `gpu` are skipped where torch sees no CUDA GPU (the marker's promise in pyproject.toml).
    torch is imported only when such an item was collected, so other runs' collection stays fast."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    try:
        import torch
    except ImportError:
        reason = "needs a CUDA GPU (torch is not installed: pip install -e '.[train]')"
    else:
        if torch.cuda.is_available():
            return
        reason = "needs a CUDA GPU (torch.cuda.is_available() is False)"
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))
