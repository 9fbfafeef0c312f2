"""The Train pane with real children on the tiny checkpoint: discovery (`aha inspect`) fills the model and
device pickers, the dataset preview shows the rendered first prompt, settings → TOML → form give the same
command line for every method, presets apply, a bad value is one line, the reward check flags a reward that
never fires, and Start launches a real tiny GRPO run on the CPU whose saved settings duplicate back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.train.view import TrainPane, training_note
from app.workers import JobStatus
from engine import cli
from engine.store import Store
from engine.train import commands
from tests.test_inspect import fake_hf_cache
from tests.test_reward_check import NO_DOTALL

SMOKE = "CPU smoke test"


@pytest.fixture
def pane(qtbot):
    """A Train pane not yet shown: it starts no discovery or preview child until it is."""
    store = Store()
    widget = TrainPane(store)
    qtbot.addWidget(widget)
    widget.resize(1200, 800)
    yield widget
    qtbot.waitUntil(widget.idle)
    widget.shutdown()
    store.close()


@pytest.fixture
def shown_pane(pane, qtbot, tmp_path, checkpoint, monkeypatch):
    """The pane shown, its discovery done, with the tiny checkpoint in a fake HF cache."""
    cache = tmp_path / "hf-cache"
    fake_hf_cache(cache, checkpoint("qwen2"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # the inspect children inherit it
    assert pane.idle()
    pane.show()
    qtbot.waitUntil(pane.idle)
    return pane


def test_discovery_fills_the_pickers_and_the_dataset_preview_and_its_mapping(shown_pane, qtbot, tmp_path):
    pane = shown_pane
    combo = pane.model.checkpoint
    assert combo.count() == 1 and combo.itemText(0).startswith("tiny-org/tiny-r1 — Qwen2ForCausalLM · ")
    assert pane.model.detected.text().startswith("detected: ")
    if pane.model.device.findData("cuda:0") < 0:  # no CUDA here: QLoRA is off, with the reason
        assert not pane.model.mode.model().item(1).isEnabled()
        assert "needs an NVIDIA GPU with CUDA" in pane.model.mode_note.text()
    assert pane.dataset.table.rowCount() == 5 and pane.dataset.table.horizontalHeaderItem(0).text() == "prompt"
    assert pane.dataset.rendered.toPlainText() == "(pick a model to see the prompt with its chat template)"
    # A file: its own columns fill the mapping's drop-downs, and a mapping that does not fit is one line.
    data = tmp_path / "questions.jsonl"
    data.write_text('{"question": "1+1=", "solution": "2"}\n{"question": "2+2=", "solution": "4"}\n')
    with qtbot.waitSignal(pane.dataset.previewed) as preview:
        pane.dataset.set_values({"dataset": str(data)})
    assert "has no column 'prompt'" in pane.dataset.status.text()
    assert [pane.dataset.prompt_column.itemText(index) for index in range(2)] == ["question", "solution"]
    assert preview.args[0]["columns"] == ["question", "solution"]
    with qtbot.waitSignal(pane.dataset.previewed):
        pane.dataset.set_values({"prompt_column": "question", "answer_column": "solution"})
    assert pane.dataset.status.text().startswith("file: columns question, solution")
    # The discovered checkpoint picked: the first prompt as its chat template renders it, <think> prefilled.
    with qtbot.waitSignal(pane.dataset.previewed) as preview:
        combo.setCurrentIndex(0)
    assert "Qwen2ForCausalLM" in pane.model.checkpoint_info.text()
    assert preview.args[0]["rendered_prompt"] == "<｜begin▁of▁sentence｜><｜User｜>1+1=<｜Assistant｜><think>\n"
    assert pane.dataset.rendered.toPlainText() == preview.args[0]["rendered_prompt"]

SETTINGS = {
    "grpo": {"dataset": "arithmetic", "rewards": ("format", "accuracy"), "reward_weights": (0.5, 2.0), "beta": 0.04,
             "loss_type": "dr_grpo", "system_prompt": "Think first.", "epsilon_high": 0.28, "use_peft": False,
             "save_total_limit": None, "lora_target_modules": ("q_proj", "v_proj")},
    "generate": {"teacher": "openai:http://localhost:9/v1", "dataset": "addition", "output": "traces.jsonl",
                 "reward": ("accuracy",), "k": 3, "keep": "shortest", "limit": 5},
    "distill-sft": {"dataset": "addition", "traces": "traces.jsonl", "packing": True, "learning_rate": 5e-05,
                    "max_length": None},
    "distill-kd": {"dataset": "addition", "teacher": "/teacher", "kd_kind": "jsd", "lmbda": 0.25, "device": "cpu"},
}


def test_settings_round_trip_through_toml_to_the_same_command_for_every_method(pane, tmp_path, checkpoint):
    model = str(checkpoint("qwen2"))
    for kind, values in SETTINGS.items():
        pane.set_kind(kind)
        pane.set_values({**values, **({"model": model} if kind != "generate" else {})})
        args = pane.command_args()
        assert args[:len(commands.KINDS[kind].words)] == list(commands.KINDS[kind].words)
        assert args == commands.command_args(kind, pane.values())
        path = tmp_path / f"{kind}.toml"
        pane.save_toml(path)
        pane.set_kind("grpo")
        pane.apply_preset(SMOKE)  # change everything the file should put back
        pane.set_values({"dataset": "addition", "model": ""})
        pane.load_toml(path)
        assert pane.kind() == kind
        assert pane.command_args() == args, kind
        pane.show_command()
        assert pane.command_line.text() == commands.shell_line(args)


def test_presets_apply_and_a_bad_value_is_one_line(pane):
    pane.apply_preset("R1 recipe (accuracy + format, β = 0, DAPO loss)")
    values = pane.values()
    assert (values["beta"], values["loss_type"], values["rewards"]) == (0.0, "dapo", ("accuracy", "format"))
    pane.apply_preset("QLoRA on an 8 GB GPU")
    assert pane.model.mode.currentText() == "QLoRA (4-bit)" and pane.values()["load_in_4bit"] is True
    pane.apply_preset(SMOKE)
    values = pane.values()
    assert (values["device"], values["max_steps"], values["load_in_4bit"]) == ("cpu", 2, False)
    field = pane.forms["grpo"].fields["num_generations"]
    field.editor.setText("many")
    field.editor.textEdited.emit("many")
    assert field.error_label.text() == "num_generations must be a whole number, got 'many'"
    assert pane.start() is None and pane.status.text() == "num_generations must be a whole number, got 'many'"
    field.editor.setText("2")
    field.editor.textEdited.emit("2")
    assert field.error_label.isHidden()
    assert pane.start() is None and pane.status.text().startswith("no model given")  # validate, one line


def test_the_reward_check_flags_a_reward_that_never_fires(pane, qtbot, tmp_path, checkpoint):
    reward_file = tmp_path / "my_rewards.py"
    reward_file.write_text(NO_DOTALL)
    pane.model.set_model(str(checkpoint("qwen2")))
    pane.rewards.add_reward(f"{reward_file}:think_format", 0.5)
    pane.apply_preset(SMOKE)
    sampling = cli.build_parser().parse_args(pane.reward_check_args())  # nothing typed: it samples, as the run would
    assert (sampling.model, sampling.device, sampling.max_completion_length, sampling.reward_weights) == (
        str(checkpoint("qwen2")), "cpu", 8, [1.0, 1.0, 0.5])
    pane.rewards.typed.setPlainText("Let me add.\n7+8=15\n</think>\n1603\n---\njust 12")
    job = pane.check_rewards()
    assert job.argv[job.argv.index("--rewards") + 1:][:3] == ["accuracy", "format", f"{reward_file}:think_format"]
    with qtbot.waitSignal(job.finished) as ended:
        pass
    assert ended.args[0].status == JobStatus.COMPLETE
    assert pane.rewards.flagged_rewards() == ["think_format"]
    assert "think_format never fired" in pane.rewards.warnings.text() and "re.DOTALL" in pane.rewards.warnings.text()
    results = pane.rewards.results
    headers = [results.horizontalHeaderItem(column).text() for column in range(results.columnCount())]
    assert headers == ["completion", "think", "answer", "accuracy", "format", "⚠ think_format", "total"]
    assert [results.item(0, column).text() for column in range(1, 7)] == [
        "Let me add. 7+8=15", "1603", "1", "1", "0", "2"]  # prefilled: the template opened <think>


def test_start_runs_a_tiny_grpo_job_and_its_settings_duplicate_back(pane, qtbot, checkpoint):
    pane.model.set_model(str(checkpoint("qwen2")))
    pane.apply_preset(SMOKE)
    args = pane.command_args()
    with qtbot.waitSignal(pane.run_started) as started:
        pane.start()
    job = started.args[0]
    assert job.argv[-len(args) - 2:] == [*args, "--events", "jsonl"]
    assert pane.command_line.text() == commands.shell_line(args)
    with qtbot.waitSignal(job.finished, timeout=120_000) as ended:
        pass
    outcome = ended.args[0]
    assert outcome.status == JobStatus.COMPLETE, str(outcome)
    assert "complete" in pane.status.text()
    with Store() as store:
        run = store.get_run(job.run_id)
    assert (run["kind"], run["status"]) == ("grpo", "complete")
    pane.apply_preset("R1 recipe (accuracy + format, β = 0, DAPO loss)")
    pane.set_kind("distill-sft")
    pane.load_settings("grpo", run["config"])
    assert pane.kind() == "grpo" and pane.command_args() == args


def test_the_pane_never_imports_torch(tmp_path):
    """Building the pane and its commands stays off torch and transformers (the children load them)."""
    code = ("import sys\nfrom app.qt import QtWidgets\napp = QtWidgets.QApplication([])\n"
            "from app.train.view import TrainPane\nfrom engine.store import Store\nfrom engine.train import commands\n"
            "pane = TrainPane(Store())\nfor kind in commands.KINDS:\n    pane.set_kind(kind)\n    pane.command_args()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "QT_QPA_PLATFORM": "offscreen",
                                 "AHA_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_switching_method_keeps_the_sections_and_not_a_same_named_setting(pane, checkpoint):
    pane.set_values({"model": str(checkpoint("qwen2")), "dataset": "arithmetic", "temperature": 0.9})
    pane.set_kind("distill-kd")
    values = pane.values()
    assert (values["model"], values["dataset"]) == (str(checkpoint("qwen2")), "arithmetic")
    assert values["temperature"] == 1.0  # KD's softening temperature is not GRPO's sampling one
    pane.set_kind("generate")
    assert "--answer-column" not in commands.command_args("generate", {**pane.values(), "teacher": "gguf:t"})
    assert not pane.dataset.system_prompt.isEnabled()  # trace generation has no system prompt setting
    pane.set_kind("grpo")
    assert pane.values()["temperature"] == 0.9 and pane.values()["answer_column"] == "answer"


def test_a_cuda_machine_offers_each_gpu_and_qlora(pane):
    """The model section given what `aha inspect devices` reports on a CUDA machine (this one may have none)."""
    pane.model.set_devices({"cuda": [{"index": 0, "name": "NVIDIA H200", "vram_bytes": 150_000_000_000}],
                            "cpu_cores": 16, "summary": "NVIDIA H200, 150.0 GB",
                            "qlora": {"available": True, "reason": None}})
    device = pane.model.device
    assert [device.itemText(index) for index in range(device.count())] == ["auto", "CPU", "CUDA 0: NVIDIA H200"]
    assert pane.model.mode.model().item(1).isEnabled() and pane.model.mode_note.isHidden()
    device.setCurrentIndex(2)
    pane.model.mode.setCurrentText("QLoRA (4-bit)")
    assert (pane.values()["device"], pane.values()["load_in_4bit"]) == ("cuda:0", True)


def test_without_the_train_extra_the_pane_says_how_to_add_it_and_start_is_off(qtbot):
    """A chat-only install (no torch): the note with the install command, Start off for the methods that need
    torch and on for trace generation, no `aha inspect devices` child (it would import torch)."""
    note = training_note(False, "bundle")
    store = Store()
    pane = TrainPane(store, note=note)
    qtbot.addWidget(pane)
    pane.show()
    assert pane.note.isVisible() and pane.note.text() == note
    assert not pane.start_button.isEnabled() and pane.start() is None and pane.status.text() == note
    assert pane.model.detected.text() == "could not detect devices: torch is not installed (the train extra)"
    assert "devices" not in pane.inspector._running
    pane.set_kind("generate")
    assert pane.start_button.isEnabled() and pane.can_start()
    pane.set_kind("grpo")
    assert not pane.start_button.isEnabled()
    qtbot.waitUntil(pane.idle)
    pane.shutdown()
    store.close()


def test_training_note_names_the_command_for_each_kind_of_install():
    assert training_note(True, "bundle") is None
    assert 'pipx install --force "aha-workbench[train]"' in training_note(False, "bundle")
    assert "not part of the standalone app" in training_note(False, "bundle")
    assert 'pipx install --force "aha-workbench[train]"' in training_note(False, "pipx")
    assert '/opt/py/bin/python -m pip install "aha-workbench[train]"' in training_note(False, "pip", "/opt/py/bin/python")
