"""A training job's settings as the `aha` command that runs it, for the Train form: each run kind's config
class and command words, the settings as flags (only those that differ from the defaults, in the config's
order), the same settings as TOML and back, and the shell line a user can copy to a terminal or a cluster.

Knows the CLI's flag names (engine.train.config.add_config_flags and the distill commands' --student);
nothing of Qt, nothing of training.
"""

from __future__ import annotations

import dataclasses
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import AhaError


@dataclass(frozen=True)
class JobKind:
    """One kind of run the Train form starts."""

    kind: str                       # the run kind the store records: grpo, generate, distill-sft, distill-kd
    label: str                      # what the form calls it
    words: tuple[str, ...]          # the subcommand: ("grpo",), ("distill", "sft")
    model_flag: str | None = None   # the flag the `model` setting goes under when it is not --model
    skip: tuple[str, ...] = ()      # settings the command has no flag for


KINDS: dict[str, JobKind] = {
    "grpo": JobKind("grpo", "GRPO", ("grpo",)),
    "generate": JobKind("generate", "Distill — generate traces", ("distill", "generate")),
    "distill-sft": JobKind("distill-sft", "Distill — SFT on traces", ("distill", "sft"), "--student",
                           ("completion_column",)),
    "distill-kd": JobKind("distill-kd", "Distill — logit KD", ("distill", "kd"), "--student", ("completion_column",)),
}


def config_class(kind: str) -> type:
    """The config dataclass of a run kind."""
    if kind == "grpo":
        from engine.train.grpo import GRPOConfig

        return GRPOConfig
    if kind == "generate":
        from engine.distill.generate import GenerateConfig

        return GenerateConfig
    if kind == "distill-sft":
        from engine.distill.traces import TraceSFTConfig

        return TraceSFTConfig
    if kind == "distill-kd":
        from engine.distill.kd import KDConfig

        return KDConfig
    raise AhaError(f"unknown run kind {kind!r}: use one of {', '.join(KINDS)}")


def settable(kind: str) -> list:
    """The SettingInfos of a kind that its command takes (describe_settings minus the skipped ones)."""
    from engine.train.config import describe_settings

    return [info for info in describe_settings(config_class(kind)) if info.name not in KINDS[kind].skip]


def make_config(kind: str, values: Mapping[str, Any]):
    """The config of `values` (a partial dict, TOML types) on the defaults; wrong types and unknown keys are
    one-line AhaErrors naming the setting. Not validated (the form validates before it starts)."""
    from engine.train.config import load_config

    known = {info.name for info in settable(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AhaError(f"unknown setting {unknown[0]!r} for {KINDS[kind].label}")
    return load_config(config_class(kind), None, {key: value for key, value in values.items() if value is not None})


def changed_values(kind: str, config: Any) -> dict[str, Any]:
    """{name: value} of the settings that differ from the kind's defaults, in declaration order."""
    return {info.name: getattr(config, info.name) for info in settable(kind)
            if getattr(config, info.name) != info.default}


def command_args(kind: str, values: Mapping[str, Any]) -> list[str]:
    """`aha` ARGS (without `aha` and --events) that run `values` as a job of `kind`: the subcommand, then one
    flag per setting that differs from its default, in the config's order.

    Example: command_args("grpo", {"model": "m", "dataset": "addition", "max_steps": 2})
    → ["grpo", "--model", "m", "--dataset", "addition", "--max-steps", "2"]
    """
    job = KINDS[kind]
    return [*job.words, *setting_flags(make_config(kind, values), settable(kind), job.model_flag)]


def setting_flags(config: Any, infos: list, model_flag: str | None = None) -> list[str]:
    """The flags of a config's settings that differ from their defaults (infos: describe_settings of its
    class, in order); `model_flag` names the flag of `model` when it is not --model."""
    args: list[str] = []
    for info in infos:
        value = getattr(config, info.name)
        if value == info.default:
            continue
        flag = model_flag if info.name == "model" and model_flag else info.flags[-1]
        if info.type is bool and not info.many:
            args.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif info.many:
            items = [_flag_value(item) for item in value]
            if info.repeat:
                for item in items:
                    args += [flag, item]
            elif items:
                args += [flag, *items]
            # an empty list that is not the default cannot be a flag: the TOML file says it
        elif value is not None:
            args += [flag, _flag_value(value)]
    return args


def shell_line(args: list[str]) -> str:
    """The command a user types: `aha grpo --model 'my model' …` (quoted for a POSIX shell)."""
    return shlex.join(["aha", *args])


def to_toml(kind: str, values: Mapping[str, Any]) -> str:
    """The settings as a TOML file for `--config` (the kind on its first line, as a comment, and in `kind`
    so the form knows what to load it as); unset and default values are left out."""
    from engine.train.config import _toml_value

    config = make_config(kind, values)
    lines = [f"# aha {' '.join(KINDS[kind].words)} --config THIS_FILE", f"kind = {_toml_value(kind)}"]
    lines += [f"{name} = {_toml_value(value)}" for name, value in changed_values(kind, config).items()
              if value is not None]
    return "\n".join(lines) + "\n"


def from_toml(text: str, source: str = "the settings file") -> tuple[str, dict[str, Any]]:
    """(kind, values) of a TOML file written by `to_toml` (or a --config file with a `kind` key; grpo without
    one); values are checked against the kind's config."""
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise AhaError(f"{source} is not valid TOML: {error}") from None
    kind = values.pop("kind", "grpo")
    if kind not in KINDS:
        raise AhaError(f"{source}: kind = {kind!r} is not one of {', '.join(KINDS)}")
    config = make_config(kind, values)
    return kind, {name: getattr(config, name) for name in values}


def saved_values(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's saved config (Store's `config`, dataclasses.asdict) as form values: its settings that the kind
    takes, without output_dir (a new run needs its own directory)."""
    names = {info.name for info in settable(kind)} - {"output_dir"}
    values = {key: value for key, value in config.items() if key in names}
    made = make_config(kind, values)
    return {field.name: getattr(made, field.name) for field in dataclasses.fields(made) if field.name in values}


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)
