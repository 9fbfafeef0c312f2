"""Config dataclasses as files and flags: TOML in, TOML out, one argparse flag per setting (its help from
the field's `setting(default, help)`), and the config a resumed run continues with. Knows the dataclass
fields only, nothing of training.
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


def setting(default: Any, help: str) -> Any:
    """A config field that describes itself: `help` says what it does (its default is added by --help)."""
    return dataclasses.field(default=default, metadata={"help": help})


def setting_help(cls: type) -> dict[str, str]:
    """{name: help} of a config dataclass's settings; a field declared without `setting` has none."""
    return {field.name: field.metadata.get("help", "") for field in dataclasses.fields(cls)}


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


def run_config(cls: type, config: Any, resume: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Any:
    """The validated config to run: `config` for a new run; for `resume`, the run's saved config with
    `overrides` of RESUMABLE_SETTINGS (any other override is a one-line error)."""
    if resume is not None:
        from engine.runs import saved_config

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
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union else (kind,)
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


def add_config_flags(parser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per setting (`num_generations` → `--num-generations`), every default None so only the
    flags given override the TOML file. Booleans get `--x/--no-x`, lists take several values."""
    import argparse

    defaults = {field.name: field.default for field in dataclasses.fields(cls)}
    helps = setting_help(cls)
    group = parser.add_argument_group("settings (each overrides the TOML file's key of the same name)")
    for name, kind in config_fields(cls).items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        options = [option for option in (typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,))
                   if option is not type(None)]
        base = options[0]
        default = defaults[name]
        shown = (" ".join(map(str, default)) if isinstance(default, tuple)
                 else str(default).lower() if isinstance(default, bool) else default)
        parts = [helps[name].replace("%", "%%"), f"(default: {shown})" if shown not in (None, "") else ""]
        help_text = " ".join(part for part in parts if part) or None
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(base) is tuple:
            element = typing.get_args(base)[0]
            group.add_argument(flag, nargs="+", type=element, default=None, metavar="X" if element is float else "TEXT",
                               help=help_text)
        else:
            metavar = {int: "N", float: "X"}.get(base, "TEXT")
            group.add_argument(flag, type=base, default=None, metavar=metavar, help=help_text)


def flag_overrides(args: Any, cls: type) -> dict[str, Any]:
    """The settings given as flags (argparse namespace → {name: value})."""
    return {name: getattr(args, name) for name in config_fields(cls) if getattr(args, name, None) is not None}


