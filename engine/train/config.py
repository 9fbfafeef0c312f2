"""Config dataclasses as files and flags: TOML in, TOML out, and the settings' own descriptions
(`setting(default, help, group)`, listed by `describe_settings`), which build one argparse flag per setting
under its group's heading and feed the Train form; plus the config a resumed run continues with. Knows the
dataclass fields only, nothing of training.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.errors import AhaError

# The groups of settings, in the order --help and the Train form show them:
#   Model      what is trained (or asked, for a teacher) and how it runs: checkpoint, device, attention
#   LoRA       the adapter (peft LoRA, QLoRA) or full fine-tuning
#   Rollouts   sampling completions: how many, how long, how random; for traces, which ones are kept
#   Loss       the objective: rewards, clipping, KL penalty, loss normalisation, distillation divergence
#   Optimizer  AdamW, the learning-rate schedule, the batch and how long to train
#   Data       datasets, their columns, prompt length, held-out rows
#   Logging    the run directory, checkpoints, metrics and how often to evaluate
GROUPS = ("Model", "LoRA", "Rollouts", "Loss", "Optimizer", "Data", "Logging")


def setting(default: Any, help: str, group: str, *, choices: tuple | None = None, short: str | None = None,
            metavar: str | None = None, repeat: bool = False) -> Any:
    """A config field that describes itself, as TRL's `field(metadata={"help": …})`: `help` is one sentence
    of what it does (--help adds the default), `group` one of GROUPS, `choices` the values it takes. For its
    flag only: `short` (e.g. "-o"), `metavar`, and `repeat` for a list given one value per flag
    (`--reward a --reward b`) instead of several after one."""
    if group not in GROUPS:
        raise ValueError(f"unknown settings group {group!r}; use one of {', '.join(GROUPS)}")
    metadata: dict[str, Any] = {"help": help, "group": group}
    extras = {"choices": choices, "short": short, "metavar": metavar, "repeat": repeat or None}
    metadata.update({key: value for key, value in extras.items() if value is not None})
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    """One setting as --help and the Train form show it."""

    name: str                              # the field, TOML key and (with - for _) flag: num_generations
    group: str                             # one of GROUPS; "" for a field declared without `setting`
    help: str                              # one sentence, without the default
    default: Any
    type: type                             # int, float, str or bool; a list setting's element type
    choices: tuple | None = None           # the values it takes, when they are fixed
    many: bool = False                     # a list of values (a TOML array)
    optional: bool = False                 # may be unset (None)
    flags: tuple[str, ...] = ()            # ("--num-generations",); ("-k",) for a one-letter name; ("-o", "--output")
    metavar: str = "TEXT"                  # the flag's value in --help
    repeat: bool = False                   # a list given one value per flag, the flag repeated


def describe_settings(cls: type) -> list[SettingInfo]:
    """Every setting of a config dataclass, in declaration order (a subclass's redefinition keeps its
    parent's place), with what its `setting(...)` says about it.

    Example: describe_settings(GRPOConfig)[-1] → SettingInfo(name="eval_samples", group="Data",
    help="held-out prompts per evaluation", default=200, type=int, flags=("--eval-samples",), metavar="N", …)
    """
    hints, infos = typing.get_type_hints(cls), []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        options = typing.get_args(kind) if _is_union(kind) else (kind,)
        base = next(option for option in options if option is not type(None))
        many = typing.get_origin(base) is tuple
        element = typing.get_args(base)[0] if many else base
        meta = field.metadata
        long = ("-" if len(field.name) == 1 else "--") + field.name.replace("_", "-")
        infos.append(SettingInfo(
            name=field.name, group=meta.get("group", ""), help=meta.get("help", ""), default=field.default,
            type=element, choices=meta.get("choices"), many=many, optional=type(None) in options,
            flags=(meta["short"], long) if "short" in meta else (long,),
            metavar=meta.get("metavar") or {int: "N", float: "X"}.get(element, "TEXT"), repeat=meta.get("repeat", False)))
    return infos


def config_fields(cls: type) -> dict[str, Any]:
    """{name: type} of a config dataclass's settings (resolved annotations)."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def load_config(cls: type, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None):
    """A config: the dataclass defaults, then the TOML file's keys, then `overrides` (flags). Unknown keys
    and values of the wrong type are one-line AhaErrors naming the key and the file."""
    values: dict[str, Any] = {}
    source = "flags"
    if path is not None:
        path = Path(path).expanduser()
        source = str(path)
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as error:
            raise AhaError(f"config file {path} not found") from error
        except tomllib.TOMLDecodeError as error:
            raise AhaError(f"config file {path} is not valid TOML: {error}") from error
    fields = config_fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise AhaError(f"unknown setting {unknown[0]!r} in {source}; known settings: {', '.join(fields)}")
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    converted = {key: _convert(value, fields[key], key, source) for key, value in values.items()}
    return cls(**converted)


# Settings a resumed run may change; the rest are the run's saved ones.
RESUMABLE_SETTINGS = ("max_steps", "save_steps", "logging_steps", "eval_steps")

def num_generations_eval_setting():
    """num_generations_eval, the same in GRPO and SFT configs (TRL's name)."""
    return setting(1, "held-out completions per prompt at each evaluation (TRL's num_generations_eval): 1 is "
                      "greedy; k > 1 samples k at eval_temperature and logs eval/pass@1 (the mean over the k, the "
                      "R1 paper's pass@1), eval/cons@k (majority vote) and eval/pass@k, with eval/accuracy = "
                      "eval/pass@1", "Logging")


def eval_temperature_setting():
    """eval_temperature, the same in GRPO and SFT configs."""
    return setting(0.6, "sampling temperature of the held-out completions when num_generations_eval > 1, with "
                        "top-p 0.95 (the R1 paper's)", "Logging")



def run_config(cls: type, config: Any, resume: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Any:
    """The validated config to run: `config` for a new run; for `resume`, the run's saved config with
    `overrides` of RESUMABLE_SETTINGS (any other override is a one-line error)."""
    if resume is not None:
        from engine.train.runs import saved_config

        changed = {key: value for key, value in (overrides or {}).items() if value is not None}
        fixed = sorted(set(changed) - set(RESUMABLE_SETTINGS))
        if fixed:
            raise AhaError(f"--resume continues a run with its saved settings; {fixed[0]} cannot change "
                           f"(only {', '.join(RESUMABLE_SETTINGS)} can)")
        config = load_config(cls, None, {**saved_config(resume), **changed})
    elif config is None:
        raise ValueError("a new run needs a config (or give the run directory to resume)")
    config.validate()
    return config


def _convert(value: Any, kind: Any, key: str, source: str) -> Any:
    """A TOML or flag value as the field's type: ints accepted for floats, lists become tuples."""
    options = typing.get_args(kind) if _is_union(kind) else (kind,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option)
        if origin is tuple and isinstance(value, list | tuple):
            element = typing.get_args(option)[0]
            return tuple(_convert(item, element, key, source) for item in value)
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option in (int, str, bool) and type(value) is option:
            return value
    raise AhaError(f"setting {key!r} in {source} should be {_type_name(kind)}, got {value!r}")


def _is_union(kind: Any) -> bool:
    return isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union


def _type_name(kind: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "unset"}
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    return " or ".join(names.get(option, "a list") for option in options)


def config_to_toml(config: Any) -> str:
    """The config as TOML that `load_config` reads back (unset values are left out)."""
    lines = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is not None:
            lines.append(f"{field.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string is a JSON string


def add_config_flags(parser, cls: type, skip: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    """One flag per setting (`num_generations` → `--num-generations`) under its group's heading, in GROUPS
    order; its help is the setting's sentence and default (`flag_help`). Every default is None, so only
    the flags given override the TOML file. Booleans get `--x/--no-x`, lists take several values (or one
    per repeated flag), `choices` are checked; `required` names the flags that must be given."""
    import argparse

    settings = [info for info in describe_settings(cls) if info.name not in skip]
    order = [*GROUPS, *sorted({info.group for info in settings} - set(GROUPS))]
    for group_name in order:
        members = [info for info in settings if info.group == group_name]
        if not members:
            continue
        group = parser.add_argument_group(group_name or "other settings")
        for info in members:
            options: dict[str, Any] = dict(dest=info.name, default=None, help=flag_help(info).replace("%", "%%"))
            if info.name in required:
                options["required"] = True
            if info.type is bool:
                group.add_argument(*info.flags, action=argparse.BooleanOptionalAction, **options)
                continue
            options.update(type=info.type, choices=info.choices)
            if info.choices is None:
                options["metavar"] = info.metavar
            if info.many and info.repeat:
                options["action"] = "append"
            elif info.many:
                options["nargs"] = "+"
            group.add_argument(*info.flags, **options)


def flag_help(info: SettingInfo) -> str:
    """A flag's --help: the setting's sentence, then its default as TOML writes it, and for a boolean the
    flag that changes it, e.g. "train a LoRA adapter … (default: true; --no-use-peft turns it off)"."""
    default = info.default
    if isinstance(default, bool):
        flag = info.flags[-1]
        change = f"{'--no-' + flag.removeprefix('--')} turns it off" if default else f"{flag} turns it on"
        shown = f"{str(default).lower()}; {change}"
    elif isinstance(default, tuple):
        shown = (", " if info.repeat else " ").join(map(str, default))
    else:
        shown = "" if default is None else str(default)
    return f"{info.help} (default: {shown})" if shown else info.help


def flag_overrides(args: Any, cls: type) -> dict[str, Any]:
    """The settings given as flags (argparse namespace → {name: value})."""
    return {name: getattr(args, name) for name in config_fields(cls) if getattr(args, name, None) is not None}


