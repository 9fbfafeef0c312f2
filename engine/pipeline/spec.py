"""A pipeline file: its TOML read into a `PipelineSpec` and checked before anything runs (pure: reads the file,
touches nothing else).

    name = "r1-mini"
    model = "demo"             # the base model: an HF checkpoint folder, or "demo" (the demo's tiny Qwen2)
    seed = 0                   # every stage's seed unless the stage sets its own

    [vars]                     # ${name} in any stage's string, overridable with --set name=VALUE
    problems = "addition"

    [[stage]]
    name = "cold_start"        # its run directory is <pipeline dir>/cold_start; @cold_start names its output
    kind = "sft"               # sft, kd, grpo, generate, eval or export
    model = "@base"            # the settings of that command (`aha distill sft`'s here), references allowed
    dataset = "${problems}"

A reference is `@stage` or `@stage.field`: an earlier stage's output (or `@base`, the pipeline's model), resolved
when its stage starts (engine.pipeline.runner). FIELDS lists what each kind of stage gives; a bare `@stage` is
its first field, adapted to the setting it fills (a model setting gets a model folder, `teacher` an hf: spec).
`--set` overrides a variable (`--set problems=math.jsonl`), a top-level key (`--set seed=3`) or one stage's
setting (`--set cold_start.max_steps=50`); the value is read as TOML (`50`, `1e-5`, `true`, `["a", "b"]`), and
as a plain string when it is not TOML.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import AhaError

# The stage kinds, each with the run kind its command records and a title for people.
KINDS = {"sft": "distill-sft", "kd": "distill-kd", "grpo": "grpo", "generate": "generate", "eval": "eval",
         "export": "export"}
TRAINING = ("sft", "kd", "grpo")
# What a stage of each kind gives later stages (the first is what a bare @stage means).
FIELDS = {"sft": ("model", "adapter", "base", "run_dir"), "kd": ("model", "adapter", "base", "run_dir"),
          "grpo": ("model", "adapter", "base", "run_dir"), "generate": ("traces", "run_dir"),
          "eval": ("eval", "run_dir"), "export": ("gguf", "modelfile"), "base": ("model",)}
# Settings the pipeline sets itself: where each stage writes.
PLACED = {"sft": ("output_dir",), "kd": ("output_dir",), "grpo": ("output_dir",), "generate": ("output",),
          "eval": ("output_dir",), "export": ()}
# The export stage's settings (`aha export`'s flags); the other kinds take their config's fields.
EXPORT_SETTINGS = {"src": str, "adapter": str, "output": str, "type": str, "ollama": str, "num_ctx": int,
                   "check": bool}
DEMO_MODEL = "demo"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
REFERENCE = re.compile(r"@([A-Za-z_][A-Za-z0-9_-]*)(?:\.([a-z_]+))?")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TOP_LEVEL = ("name", "description", "model", "seed", "vars", "stage")


@dataclass(frozen=True)
class Reference:
    """`@stage.field`; field None for a bare `@stage`."""

    stage: str
    field: str | None = None

    def __str__(self) -> str:
        return f"@{self.stage}" + (f".{self.field}" if self.field else "")


@dataclass(frozen=True)
class StageSpec:
    name: str
    kind: str
    title: str
    settings: Mapping[str, Any]    # the command's settings as written (variables substituted, references kept)

    @property
    def run_kind(self) -> str:
        return KINDS[self.kind]


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    model: str                     # the base: a folder, or DEMO_MODEL
    seed: int
    stages: tuple[StageSpec, ...]
    description: str = ""
    variables: Mapping[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> StageSpec:
        return next(stage for stage in self.stages if stage.name == name)


def bundled_dir() -> Path:
    """The pipelines that ship with Aha (assets/pipelines, installed in the package aha_assets)."""
    from engine.assets import asset_path

    return asset_path("pipelines")


def bundled_names() -> list[str]:
    return sorted(path.stem for path in bundled_dir().glob("*.toml"))


def find_file(name: str) -> Path:
    """A pipeline file by path, or by the name of a bundled one (`r1`, `r1-mini`, with or without .toml)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    bundled = bundled_dir() / (name if name.endswith(".toml") else f"{name}.toml")
    if "/" not in name and bundled.is_file():
        return bundled
    known = ", ".join(bundled_names()) or "none"
    raise AhaError(f"pipeline file {name} not found; give a .toml path or a bundled pipeline ({known})")


def parse_reference(value: Any) -> Reference | None:
    """The reference a setting's value is, or None for a plain value.

    >>> parse_reference("@cold_start"), parse_reference("@rejection.traces"), parse_reference("a@b")
    (Reference(stage='cold_start', field=None), Reference(stage='rejection', field='traces'), None)
    """
    if not isinstance(value, str):
        return None
    match = REFERENCE.fullmatch(value)
    return Reference(match.group(1), match.group(2)) if match else None


def references(value: Any) -> list[Reference]:
    """Every reference in a setting's value (a string, or a list of them)."""
    values = value if isinstance(value, list | tuple) else [value]
    return [reference for item in values if (reference := parse_reference(item)) is not None]


def substitute(value: Any, variables: Mapping[str, Any], where: str) -> Any:
    """`${name}` replaced by its variable in a string (a whole-string `${name}` takes the variable's own type),
    in the items of a list; an unknown name is a one-line error naming `where`.

    >>> substitute("${problems}", {"problems": "math.jsonl"}, "x"), substitute("${n}", {"n": 4}, "x")
    ('math.jsonl', 4)
    """
    if isinstance(value, list):
        return [substitute(item, variables, where) for item in value]
    if not isinstance(value, str):
        return value

    def lookup(name: str) -> Any:
        if name not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise AhaError(f"{where} uses ${{{name}}}, which is not a variable of the pipeline ([vars]: {known}); "
                           f"add it to [vars] or give it with --set {name}=VALUE")
        return variables[name]

    whole = VARIABLE.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    return VARIABLE.sub(lambda match: str(lookup(match.group(1))), value)


def parse_set(text: str) -> tuple[str, Any]:
    """`--set KEY=VALUE` as (KEY, value): the value read as a TOML value, else the text itself.

    >>> parse_set("cold_start.max_steps=50"), parse_set("problems=math.jsonl"), parse_set("x.rewards=['a']")
    (('cold_start.max_steps', 50), ('problems', 'math.jsonl'), ('x.rewards', ['a']))
    """
    key, equals, raw = text.partition("=")
    if not equals or not key.strip():
        raise AhaError(f"--set {text}: write KEY=VALUE (a variable, a top-level key or STAGE.SETTING)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def apply_sets(data: dict[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """The pipeline's TOML table with --set overrides applied (a new dict)."""
    data = {**data, "vars": dict(data.get("vars") or {}), "stage": [dict(stage) for stage in data.get("stage") or []]}
    for text in sets:
        key, value = parse_set(text)
        stage_name, dot, setting = key.partition(".")
        if dot:
            stage = next((stage for stage in data["stage"] if stage.get("name") == stage_name), None)
            if stage is None:
                names = ", ".join(str(stage.get("name")) for stage in data["stage"])
                raise AhaError(f"--set {key}: the pipeline has no stage {stage_name!r} (its stages: {names})")
            if setting in ("name", "kind"):
                raise AhaError(f"--set {key}: a stage's name and kind are the file's; copy the file to change them")
            stage[setting] = value
        elif key in ("name", "description", "model", "seed"):
            data[key] = value
        else:
            data["vars"][key] = value
    return data


def load_pipeline(name: str | Path, sets: Sequence[str] = (), model: str | None = None) -> tuple[PipelineSpec, str]:
    """The pipeline in file `name` (a path or a bundled name) with `sets` and `model` applied, checked; and the
    file's text (kept in the pipeline's run, so a resume runs what was started)."""
    path = find_file(str(name))
    text = path.read_text(encoding="utf-8")
    data = read_toml(text, str(path))
    if model is not None:
        data["model"] = model
    return parse_pipeline(apply_sets(data, sets), str(path)), text


def read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise AhaError(f"pipeline file {source} is not valid TOML: {error}") from None


def parse_pipeline(data: Mapping[str, Any], source: str) -> PipelineSpec:
    """The spec of a pipeline's TOML table; every mistake a one-line AhaError naming the stage and the key:
    unknown top-level keys, stage names (missing, repeated, not a name), kinds, settings the kind does not take
    or the pipeline places itself, variables, and references to a stage that is not earlier or to a field
    that stage does not give."""
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise AhaError(f"{source}: unknown key {unknown[0]!r}; a pipeline has {', '.join(TOP_LEVEL)} ([[stage]] "
                       "tables)")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise AhaError(f"{source}: no base model; set model = \"path/to/hf-checkpoint\" (or \"demo\") in the file, "
                       "or give --model")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise AhaError(f"{source}: seed must be a whole number, got {seed!r}")
    variables = dict(data.get("vars") or {})
    tables = data.get("stage")
    if not isinstance(tables, list) or not tables:
        raise AhaError(f"{source}: no stages; add [[stage]] tables with a name and a kind")
    stages: list[StageSpec] = []
    for index, table in enumerate(tables, 1):
        stages.append(_parse_stage(table, index, stages, variables, source))
    return PipelineSpec(name=str(data.get("name") or Path(source).stem), model=model, seed=seed,
                        stages=tuple(stages), description=str(data.get("description") or ""), variables=variables)


def _parse_stage(table: Any, index: int, earlier: Sequence[StageSpec], variables: Mapping[str, Any],
                 source: str) -> StageSpec:
    if not isinstance(table, dict):
        raise AhaError(f"{source}: stage {index} is not a table; write it as [[stage]] with name = … and kind = …")
    name, kind = table.get("name"), table.get("kind")
    if not isinstance(name, str) or not NAME.fullmatch(name) or name == "base":
        raise AhaError(f"{source}: stage {index} needs a name of letters, digits, _ and - (not 'base'), got {name!r}")
    if any(stage.name == name for stage in earlier):
        raise AhaError(f"{source}: two stages are named {name!r}; give each stage its own name")
    if kind not in KINDS:
        raise AhaError(f"{source}: stage {name!r} has kind {kind!r}; use one of {', '.join(KINDS)}")
    where = f"{source}: stage {name!r}"
    title = str(table.get("title") or name.replace("_", " "))
    settings = {key: substitute(value, variables, f"{where} ({key})") for key, value in table.items()
                if key not in ("name", "kind", "title")}
    known = settings_of(kind)
    for key, value in settings.items():
        if key in PLACED[kind]:
            raise AhaError(f"{where} sets {key}, which the pipeline sets itself (<pipeline dir>/{name}); remove it")
        if key not in known:
            raise AhaError(f"{where}: {kind} stages have no setting {key!r}; see `aha {_command(kind)} --help`")
        for reference in references(value):
            _check_reference(reference, earlier, f"{where} ({key})")
    return StageSpec(name=name, kind=kind, title=title, settings=settings)


def _check_reference(reference: Reference, earlier: Sequence[StageSpec], where: str) -> None:
    if reference.stage == "base":
        kind = "base"
    else:
        stage = next((stage for stage in earlier if stage.name == reference.stage), None)
        if stage is None:
            names = ", ".join(["base", *(stage.name for stage in earlier)])
            raise AhaError(f"{where} refers to {reference}, which is not an earlier stage (it can name: {names})")
        kind = stage.kind
    if reference.field is not None and reference.field not in FIELDS[kind]:
        raise AhaError(f"{where}: @{reference.stage} ({kind}) gives {', '.join(FIELDS[kind])}, not "
                       f"{reference.field!r}")


def settings_of(kind: str) -> dict[str, Any]:
    """{setting: type} a stage of `kind` takes."""
    if kind == "export":
        return dict(EXPORT_SETTINGS)
    from engine.train.config import config_fields

    return config_fields(config_class(kind))


def config_class(kind: str) -> type:
    """The config dataclass of a stage kind (not export, whose settings are EXPORT_SETTINGS)."""
    if kind == "eval":
        from engine.eval.runner import EvalConfig

        return EvalConfig
    from engine.train.commands import config_class as run_config_class

    return run_config_class(KINDS[kind])


def _command(kind: str) -> str:
    return {"sft": "distill sft", "kd": "distill kd", "generate": "distill generate"}.get(kind, kind)
