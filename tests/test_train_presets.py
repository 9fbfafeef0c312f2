"""The Train form's engine side: every preset is settings of its kinds' configs and validates, and a job's
settings become the same `aha` command line through TOML and back."""

from __future__ import annotations

import argparse

import pytest

from engine import cli
from engine.errors import AhaError
from engine.train import commands
from engine.train.config import flag_overrides, load_config
from engine.train.presets import PRESETS, apply_preset, preset

# What the form adds to a preset before a run: the model and the data (a kind's required settings).
REQUIRED = {"grpo": {"model": "m", "dataset": "addition"},
            "generate": {"teacher": "openai:http://localhost:1/v1", "dataset": "addition", "output": "out.jsonl"},
            "distill-sft": {"model": "m", "dataset": "addition"},
            "distill-kd": {"model": "m", "dataset": "addition", "teacher": "t"}}


@pytest.mark.parametrize("item", PRESETS, ids=lambda item: item.name)
def test_every_preset_validates_against_its_kinds_configs(item, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert item.kinds
    for kind in item.kinds:
        config = commands.make_config(kind, {**REQUIRED[kind], **item.values(kind)})
        config.validate()
        for name, value in item.values(kind).items():
            assert getattr(config, name) == value


def test_the_three_presets_say_what_they_are():
    r1 = preset("R1 recipe (accuracy + format, β = 0, DAPO loss)").values("grpo")
    assert (r1["rewards"], r1["beta"], r1["loss_type"]) == (("accuracy", "format"), 0.0, "dapo")
    assert preset("QLoRA on an 8 GB GPU").values("grpo")["load_in_4bit"] is True
    smoke = apply_preset("CPU smoke test", "grpo", {"model": "m", "max_steps": 100})
    assert (smoke["model"], smoke["device"], smoke["max_steps"]) == ("m", "cpu", 2)
    assert apply_preset("R1 recipe (accuracy + format, β = 0, DAPO loss)", "generate", {"k": 3}) == {"k": 3}
    with pytest.raises(AhaError, match="unknown preset"):
        preset("nope")


SETTINGS = {
    "grpo": {"model": "/m dir", "dataset": "addition", "rewards": ("accuracy", "format", "x.py:f"),
             "reward_weights": (1.0, 0.25, 2.0), "max_steps": 2, "use_peft": False, "learning_rate": 3e-06,
             "system_prompt": "Think 'carefully'.", "epsilon_high": 0.28},
    "generate": {"teacher": "gguf:/t.gguf", "dataset": "addition", "output": "out.jsonl", "reward": ("accuracy", "format"),
                 "k": 2, "force": True},
    "distill-sft": {"model": "/s", "dataset": "addition", "traces": "t.jsonl", "packing": True, "lora_r": 4},
    "distill-kd": {"model": "/s", "dataset": "addition", "teacher": "/t", "kd_kind": "jsd", "lmbda": 0.5},
}


@pytest.mark.parametrize("kind", commands.KINDS)
def test_settings_to_toml_and_back_give_the_same_command_the_cli_parses_to_the_same_config(kind):
    values = SETTINGS[kind]
    args = commands.command_args(kind, values)
    toml = commands.to_toml(kind, values)
    loaded_kind, loaded = commands.from_toml(toml)
    assert loaded_kind == kind and commands.command_args(kind, loaded) == args
    parsed = cli.build_parser().parse_args([*args, "--events", "jsonl"])
    config_class = commands.config_class(kind)
    overrides = flag_overrides(parsed, config_class)
    if getattr(parsed, "student", None):
        overrides["model"] = parsed.student
    assert load_config(config_class, None, overrides) == commands.make_config(kind, values)


def test_command_line_is_quoted_and_lists_only_changed_settings():
    args = commands.command_args("grpo", SETTINGS["grpo"])
    line = commands.shell_line(args)
    assert line.startswith("aha grpo --model '/m dir' --no-use-peft --learning-rate 3e-06 --max-steps 2 --dataset addition")
    assert "--rewards accuracy format x.py:f --reward-weights 1.0 0.25 2.0" in line
    assert "--num-generations" not in line  # the default is left out
    kd = commands.command_args("distill-kd", SETTINGS["distill-kd"])
    assert kd[:4] == ["distill", "kd", "--student", "/s"]
    generate = commands.command_args("generate", SETTINGS["generate"])
    assert "--output" in generate and "--force" in generate


def test_saved_run_config_and_bad_values():
    saved = {**SETTINGS["grpo"], "rewards": ["accuracy"], "reward_weights": None, "output_dir": "/old/run",
             "unknown_future_key": 1}
    values = commands.saved_values("grpo", saved)
    assert values["rewards"] == ("accuracy",) and "output_dir" not in values and "unknown_future_key" not in values
    with pytest.raises(AhaError, match="'max_steps'.*should be an integer"):
        commands.make_config("grpo", {"max_steps": "ten"})
    with pytest.raises(AhaError, match="not valid TOML"):
        commands.from_toml("kind = ")
    with pytest.raises(AhaError, match="kind = 'nope'"):
        commands.from_toml('kind = "nope"')
    assert isinstance(cli.build_parser(), argparse.ArgumentParser)
