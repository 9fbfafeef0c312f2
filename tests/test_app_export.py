"""The Export pane with real `aha export … --events jsonl` child processes on the tiny checkpoints: stages, the
check shown, "Chat with it", cancel, and the Ollama connection line (Ollama itself cannot run here: the
Ollama is tests/fake_ollama.py on loopback, and a closed port)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from app.export.view import ExportPane
from app.workers import JobStatus
from engine.export.ollama import modelfile_text
from engine.models import Library
from engine.paths import data_dir
from engine.store import Store
from tests.fake_ollama import FakeOllama


@pytest.fixture
def pane(qtbot):
    store = Store()
    widget = ExportPane(store, Library())
    qtbot.addWidget(widget)
    yield widget
    widget.shutdown()
    store.close()


def wait_for_source(qtbot, pane):
    qtbot.waitUntil(lambda: pane.source is not None or pane.source_line.objectName() == "Warning")
    assert pane.source is not None, pane.source_line.text()


def run_export(qtbot, pane) -> tuple[object, list[dict]]:
    events = []
    job = pane.start_export()
    job.event.connect(events.append)
    with qtbot.waitSignal(job.finished, timeout=120_000) as finished:
        pass
    return finished.args[0], events


def test_export_a_checkpoint_register_check_and_chat(qtbot, pane, checkpoint):
    folder = checkpoint("qwen2")
    pane.set_source(str(folder))
    wait_for_source(qtbot, pane)
    assert pane.source_line.text().startswith("HF checkpoint · Qwen2ForCausalLM · qwen2 · f16 ≈ 3.0 MB")
    labels = [pane.type_combo.itemText(index) for index in range(pane.type_combo.count())]
    assert labels[:4] == ["f32  ·  ≈ 5.9 MB", "f16  ·  ≈ 3.0 MB", "bf16  ·  ≈ 3.0 MB", "q8_0  ·  ≈ 1.6 MB"]
    assert "q4_k_m  ·  ≈ 940.0 KB" in labels
    output = Path(pane.output_edit.text())
    assert output == data_dir() / "models" / "qwen2-f16.gguf"
    pane.ctx_spin.setValue(2048)
    assert pane.modelfile_view.toPlainText() == modelfile_text("qwen2-f16.gguf", num_ctx=2048)
    with FakeOllama() as url:
        pane.host_edit.setText(url)
        pane.register_box.setChecked(True)
        assert pane.name_edit.text() == "qwen2-f16"
        pane.name_edit.clear()
        pane.name_edit.textEdited.emit("")
        assert not pane.export_button.isEnabled()  # registering needs a name
        pane.name_edit.setText("qwen2-f16")
        pane.name_edit.textEdited.emit("qwen2-f16")
        assert pane.export_button.isEnabled()
        assert pane.command_line.text().endswith("--num-ctx 2048 --ollama qwen2-f16 --check")
        outcome, events = run_export(qtbot, pane)
    assert outcome.status == JobStatus.COMPLETE, outcome
    stages = [event["stage"] for event in events if event["type"] == "progress"]
    assert list(dict.fromkeys(stages)) == ["write", "register", "check"]
    assert "✓ write" in pane.stage_line.text() and "✓ check" in pane.stage_line.text()
    assert output.is_file() and pane.outcome_line.text().startswith("Exported qwen2-f16.gguf (3.0 MB)")
    assert pane.check_list.item(0).text() == "Check passed"
    lines = pane.check_lines()
    assert [status for status, _ in lines] == ["pass"] * len(lines)
    assert "✓ Ollama registered: Ollama lists `thinking` for qwen2-f16." in [text for _, text in lines]
    assert sum("identical for 16 tokens" in text for _, text in lines) == 3
    with qtbot.waitSignal(pane.chat_requested) as chat:
        pane.chat_button.click()
    assert chat.args == [str(output)]


def test_export_a_runs_adapter_merged_and_checked(qtbot, pane, checkpoint, tmp_path):
    """A run's final adapter, as the trainer records it (a store run whose `model` is the base, an
    `adapter` artifact), is offered in the combo; the merged export's check compares with base + adapter."""
    from tests.tiny_models import make_lora_adapter

    base = checkpoint("qwen2")
    adapter = make_lora_adapter(base, tmp_path / "runs" / "grpo-1" / "final" / "adapter", r=4, alpha=64)
    store = pane.store
    run_id = store.create_run("grpo", {"model": str(base)}, dir=tmp_path / "runs" / "grpo-1", status="complete")
    store.add_artifact("adapter", adapter, run_id=run_id)
    pane.refresh_runs()
    assert pane.runs_combo.count() == 2 and pane.runs_combo.itemText(1).startswith(f"grpo run {run_id} · final/adapter")
    pane.set_source(str(adapter), str(base))                 # as Export… in the Runs pane sends it: the combo names it
    assert pane.runs_combo.currentIndex() == 1
    pane.set_source(str(base))
    assert pane.runs_combo.currentIndex() == 0
    pane.runs_combo.setCurrentIndex(1)
    pane.runs_combo.activated.emit(1)
    wait_for_source(qtbot, pane)
    assert pane.source.adapter == str(adapter) and pane.base_edit.text() == str(base)
    assert pane.source_line.text().startswith("LoRA adapter (r 4) adapter on Qwen2ForCausalLM")
    pane.type_combo.setCurrentIndex(pane.type_combo.findData("f32"))
    assert Path(pane.output_edit.text()).name == "qwen2-grpo-1-f32.gguf"
    outcome, events = run_export(qtbot, pane)
    assert outcome.status == JobStatus.COMPLETE, outcome
    assert list(dict.fromkeys(e["stage"] for e in events if e["type"] == "progress")) == ["merge", "write", "check"]
    assert pane.check_list.item(0).text() == "Check passed"
    assert sum("identical for 16 tokens" in text for _, text in pane.check_lines()) == 3
    pane.adapter_only_radio.setChecked(True)  # adapter-only: direct types, no check, no Ollama
    assert [pane.type_combo.itemData(index) for index in range(pane.type_combo.count())] == ["f32", "f16", "bf16", "q8_0"]
    assert not pane.check_box.isEnabled() and "--adapter-only" in pane.command_line.text()
    assert "--check" not in pane.command_line.text()


def test_a_template_without_think_fails_the_check_in_the_list(qtbot, pane, checkpoint, tmp_path):
    import json
    import shutil

    folder = tmp_path / "no-think"
    shutil.copytree(checkpoint("qwen2"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    pane.set_source(str(folder))
    wait_for_source(qtbot, pane)
    pane.check_box.setChecked(True)
    outcome, _ = run_export(qtbot, pane)
    assert outcome.status == JobStatus.COMPLETE  # the export is written; the check says what is wrong with it
    assert pane.check_list.item(0).text().startswith("Check failed: 1 of")
    failed = [text for status, text in pane.check_lines() if status == "fail"]
    assert len(failed) == 1 and failed[0].startswith("✗ chat template: the chat template never writes <think>")


def test_cancel_leaves_nothing_behind(qtbot, pane, checkpoint):
    pane.set_source(str(checkpoint("qwen2")))
    wait_for_source(qtbot, pane)
    pane.type_combo.setCurrentIndex(pane.type_combo.findData("q4_k_m"))  # write (a scratch f16), then quantize
    output = Path(pane.output_edit.text())
    job = pane.start_export()
    job.event.connect(lambda event: pane.cancel_button.click() if event["type"] == "start" else None)
    with qtbot.waitSignal(job.finished, timeout=120_000) as finished:
        pass
    assert finished.args[0].status == JobStatus.CANCELLED, finished.args[0]
    assert not output.exists()
    assert [path.name for path in output.parent.iterdir()] == []  # no .partial file, no .work folder, no Modelfile
    assert pane.outcome_line.text() == "Export cancelled; nothing was left behind."
    assert not pane.chat_button.isEnabled() and not pane.export_button.isHidden() and pane.cancel_button.isHidden()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_connection_check_running_and_not_running(qtbot, pane):
    with FakeOllama(version="0.9.1") as url:
        pane.host_edit.setText(url)
        pane.connection_button.click()
        qtbot.waitUntil(lambda: pane.connection_button.isEnabled())
        assert pane.connection_line.text() == f"✓ Ollama 0.9.1 is running at {url}"
    port = closed_port()
    pane.host_edit.setText(f"127.0.0.1:{port}")
    pane.connection_button.click()
    qtbot.waitUntil(lambda: pane.connection_button.isEnabled())
    assert pane.connection_line.text() == (f"✗ Ollama is not running at http://127.0.0.1:{port} (connection refused): "
                                           "start it with `ollama serve` (or set OLLAMA_HOST)")
    assert pane.connection_line.objectName() == "Warning"
