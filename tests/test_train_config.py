"""Settings that describe themselves: every field of the training and trace-generation configs has a
sentence of help and a group of GROUPS, `describe_settings` lists them as add_config_flags and the Train
form read them, and `--help` shows each setting with its sentence and default under its group's heading."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.distill.generate import GenerateConfig
from engine.distill.kd import KDConfig
from engine.distill.traces import TraceSFTConfig
from engine.train.config import (
    GROUPS,
    SettingInfo,
    add_config_flags,
    describe_settings,
    flag_help,
    flag_overrides,
    load_config,
    setting,
)
from engine.train.core import TrainConfig
from engine.train.grpo import GRPOConfig
from engine.train.sft import SFTConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [TrainConfig, GRPOConfig, SFTConfig, TraceSFTConfig, KDConfig, GenerateConfig]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: config.__name__)
def test_every_setting_has_help_and_a_known_group(config):
    infos = describe_settings(config)
    assert [info.name for info in infos] == [field.name for field in dataclasses.fields(config)]
    bare = [info.name for info in infos if len(info.help.split()) < 3]
    assert not bare, f"{config.__name__} settings without a sentence of help: {bare}"
    unknown = {info.name: info.group for info in infos if info.group not in GROUPS}
    assert not unknown, f"{config.__name__} settings outside GROUPS {GROUPS}: {unknown}"


def test_a_setting_in_an_unknown_group_is_refused():
    assert GROUPS == ("Model", "LoRA", "Rollouts", "Loss", "Optimizer", "Data", "Logging")
    with pytest.raises(ValueError, match="unknown settings group 'Sampling'"):
        setting(1, "a number", "Sampling")


def test_describe_settings_says_what_flags_and_the_train_form_need():
    grpo = {info.name: info for info in describe_settings(GRPOConfig)}
    assert grpo["num_generations"] == SettingInfo(
        name="num_generations", group="Rollouts", default=8, type=int, flags=("--num-generations",), metavar="N",
        help="G: completions per prompt, compared with each other for the group advantages (TRL's num_generations)")
    assert (grpo["rewards"].type, grpo["rewards"].many, grpo["rewards"].default) == (str, True, ("accuracy", "format"))
    assert (grpo["reward_weights"].type, grpo["reward_weights"].many, grpo["reward_weights"].optional) == (float, True, True)
    assert grpo["loss_type"].choices == ("grpo", "dapo", "dr_grpo") and grpo["loss_type"].group == "Loss"
    assert grpo["use_peft"].type is bool and grpo["use_peft"].group == "LoRA"
    assert grpo["learning_rate"].default == 1e-5  # GRPOConfig's redefinition, in TrainConfig's place
    generate = {info.name: info for info in describe_settings(GenerateConfig)}
    assert generate["k"].flags == ("-k",) and generate["output"].flags == ("-o", "--output")
    assert generate["reward"].repeat and generate["teacher"].metavar == "KIND:TARGET"
    assert generate["keep"].choices == ("all", "shortest", "first")


def test_add_config_flags_builds_each_flag_from_describe_settings():
    """One source: each flag's option strings, help, choices and group heading are its SettingInfo's."""
    for config in CONFIGS:
        parser = argparse.ArgumentParser()
        add_config_flags(parser, config)
        groups = {action.dest: group.title for group in parser._action_groups for action in group._group_actions}
        actions = {action.dest: action for action in parser._actions if action.dest != "help"}
        assert list(actions) == [info.name for info in sorted(describe_settings(config),
                                                               key=lambda info: GROUPS.index(info.group))]
        for info in describe_settings(config):
            action = actions[info.name]
            assert tuple(action.option_strings[:len(info.flags)]) == info.flags
            assert action.help == flag_help(info).replace("%", "%%") and action.choices == info.choices
            assert groups[info.name] == info.group and action.default is None


def test_generate_flags_parse_as_before():
    """The generate flags built from GenerateConfig: the same names, -k and -o, choices, a repeatable
    --reward, required --teacher/--dataset/--output, and the same defaults once the config is built."""
    from engine import cli

    parser = cli.build_parser()
    base = ["distill", "generate", "--teacher", "openai:http://x/v1", "--dataset", "addition", "-o", "t.jsonl"]
    config = load_config(GenerateConfig, None, flag_overrides(parser.parse_args(base), GenerateConfig))
    assert config == GenerateConfig(teacher="openai:http://x/v1", dataset="addition", output="t.jsonl")
    assert (config.k, config.keep, config.reward, config.temperature, config.top_p, config.max_tokens, config.seed,
            config.concurrency, config.timeout, config.n_ctx, config.limit, config.answer_column, config.force) == (
        4, "all", ("accuracy", "format"), 0.6, 0.95, 4096, None, 4, 600.0, 4096, None, None, False)
    args = parser.parse_args([*base, "-k", "2", "--keep", "shortest", "--reward", "accuracy", "--reward", "length",
                              "--timeout", "5", "--force", "--seed", "7"])
    config = load_config(GenerateConfig, None, flag_overrides(args, GenerateConfig))
    assert (config.k, config.keep, config.reward, config.timeout, config.force, config.seed) == (
        2, "shortest", ("accuracy", "length"), 5.0, True, 7)
    for wrong in ([*base, "--keep", "longest"], base[:-2], ["distill", "generate", "--dataset", "addition", "-o", "t"]):
        with pytest.raises(SystemExit):
            parser.parse_args(wrong)


def help_sections(*command: str) -> dict[str, str]:
    """`python -m engine.cli COMMAND --help`, as {heading: its lines}, in the order shown."""
    environment = {**os.environ, "COLUMNS": "100", "PYTHONPATH": str(REPO)}
    text = subprocess.run([sys.executable, "-m", "engine.cli", *command, "--help"], cwd=REPO, env=environment,
                          capture_output=True, text=True, check=True).stdout
    sections, heading = {}, "usage"
    for line in text.splitlines():
        if re.fullmatch(r"[A-Za-z][\w ]{0,30}:", line):  # a heading, not a description line ending in ":"
            heading = line[:-1]
            sections[heading] = ""
        elif heading in sections:
            sections[heading] += line + "\n"
    return sections


def flat(text: str) -> str:
    """The help text with argparse's line wrapping undone (it wraps at spaces and after hyphens)."""
    return " ".join(re.sub(r"-\n\s+", "-", text).split())


@pytest.mark.parametrize("command, config, groups", [
    (("grpo",), GRPOConfig, GROUPS),
    (("distill", "generate"), GenerateConfig, ("Model", "Rollouts", "Data", "Logging")),
], ids=["grpo", "distill generate"])
def test_help_lists_every_setting_under_its_group_with_its_sentence_and_default(command, config, groups):
    sections = help_sections(*command)
    assert list(sections) == ["options", *groups]  # the run's own flags first, then GROUPS' order
    assert "--events" in sections["options"]
    for info in describe_settings(config):
        assert re.search(rf"^  {re.escape(info.flags[0])}[ ,\n]", sections[info.group], re.M), info.name
        assert flag_help(info) in flat(sections[info.group]), info.name
    text = flat("".join(sections.values()))
    if config is GRPOConfig:
        assert ("--num-generations N G: completions per prompt, compared with each other for the group advantages "
                "(TRL's num_generations) (default: 8)") in text
        assert "(default: true; --no-use-peft turns it off)" in text and "(default: 1e-05)" in text
        assert "--loss-type {grpo,dapo,dr_grpo}" in text
        assert "--config TOML" in sections["options"] and "--resume RUN_DIR" in sections["options"]
    else:
        assert "-k N samples per prompt (default: 4)" in text and "-o FILE, --output FILE" in text
        assert "--temperature X the teacher's sampling temperature; DeepSeek advises 0.6 for R1 models (default: 0.6)" in text
        assert "--reward NAME verifier: accuracy, format" in text and "(default: accuracy, format)" in text
        assert "--force, --no-force start over: delete an existing output first (default: false; --force turns it on)" in text
