"""The models `aha eval` compares: a spec per model, opened as an engine.distill.teachers Teacher.

Specs: `gguf:PATH` or a library name (llama.cpp, the runtime users chat with), `hf:FOLDER[+ADAPTER]`
(transformers with the KV-cache sampler), `openai:URL` (any OpenAI-compatible server, the served name from
`--model`), `run:ID` (a training run's final checkpoint: its base model + adapter, or the full model it saved).
Parsing is cheap and checks what it can without loading anything; `open_model` loads. Knows nothing of
datasets, scoring or files (engine.eval.runner's).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.distill.teachers import (
    HFTeacher,
    OpenAITeacher,
    Teacher,
    parse_teacher,
    split_adapter,
)
from engine.errors import AhaError

# Run kinds whose final checkpoint `run:ID` evaluates.
TRAINING_KINDS = ("grpo", "sft", "distill-sft", "distill-kd")
# Path parts that say nothing about which model it is (a run's layout): a label skips them.
_GENERIC_PARTS = ("final", "adapter", "model", "checkpoints", "merged")
SPEC_HELP = ("gguf:PATH, a library model name (aha models list), hf:FOLDER[+ADAPTER], openai:URL (with --model "
             "NAME) or run:ID (a training run's final checkpoint)")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: `kind` is the teacher kind that runs it (gguf, hf, openai), `target` the GGUF
    file, HF folder or base URL, `adapter` a PEFT adapter folder (hf only), `run_id` when it came from run:ID."""

    spec: str
    kind: str
    target: str
    adapter: str | None = None
    run_id: int | None = None


def parse_model(spec: str) -> ModelSpec:
    """A spec (see the module docstring) resolved without loading: files and folders checked, `run:ID`
    looked up in the store, a library name found. One AhaError line for anything wrong."""
    spec = spec.strip()
    prefix, _, rest = spec.partition(":")
    if prefix == "run":
        return _run_spec(spec, rest)
    if prefix in ("gguf", "hf", "openai") and rest:
        kind, target = parse_teacher(spec)
        if kind == "gguf":
            path = Path(target).expanduser()
            if not path.is_file():
                raise AhaError(f"{spec}: no GGUF file at {path}; give gguf:PATH to a .gguf file")
            return ModelSpec(spec, "gguf", str(path))
        if kind == "hf":
            folder, adapter = split_adapter(target)
            if not (Path(folder).expanduser() / "config.json").is_file():
                raise AhaError(f"{spec}: {folder} is not a Hugging Face checkpoint folder (no config.json)")
            if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
                raise AhaError(f"{spec}: {adapter} is not a PEFT adapter folder (no adapter_config.json)")
            return ModelSpec(spec, "hf", folder, adapter)
        return ModelSpec(spec, "openai", target)
    from engine.models import Library

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSpec(spec, "gguf", str(path))
    if not spec or "/" in spec or prefix in ("gguf", "hf", "openai") or path.exists():
        raise AhaError(f"unknown model {spec!r}: give {SPEC_HELP}")
    try:
        entry = Library().find(spec)
    except AhaError:
        raise AhaError(f"unknown model {spec!r}: not in the model library; give {SPEC_HELP}") from None
    return ModelSpec(spec, "gguf", str(entry.path))


def _run_spec(spec: str, rest: str) -> ModelSpec:
    """run:ID → the run's final adapter on its base model, or the full model it saved; a run stopped
    before its end gives its latest checkpoint."""
    from engine.store import Store

    if not rest.strip().isdigit():
        raise AhaError(f"{spec}: give run:ID with the number `aha runs list` shows")
    run_id = int(rest)
    with Store() as store:
        run = store.get_run(run_id)
    if run["kind"] not in TRAINING_KINDS:
        raise AhaError(f"run {run_id} is a {run['kind']} run, not a training run; run:ID takes a GRPO, SFT or "
                       "distillation run")
    if not run["dir"] or not Path(run["dir"]).is_dir():
        raise AhaError(f"run {run_id} has no run directory any more ({run['dir']})")
    directory = Path(run["dir"])
    candidates = [directory / "final"] + [path for path in sorted(
        (directory / "checkpoints").glob("step-*"), key=lambda path: -int(path.name[5:]) if path.name[5:].isdigit() else 0)]
    for folder in candidates:
        if (folder / "adapter" / "adapter_config.json").is_file():
            base = run["config"].get("model")
            if not base or not (Path(base).expanduser() / "config.json").is_file():
                raise AhaError(f"run {run_id}'s base model {base} is gone; give hf:BASE+{folder / 'adapter'}")
            return ModelSpec(spec, "hf", str(Path(base).expanduser()), str(folder / "adapter"), run_id)
        if (folder / "model" / "config.json").is_file():
            return ModelSpec(spec, "hf", str(folder / "model"), None, run_id)
    raise AhaError(f"run {run_id} has no checkpoint yet (status {run['status']}); resume it or wait for its first save")


def open_model(spec: ModelSpec | str, *, model: str | None = None, api_key_env: str | None = None,
               concurrency: int = 4, n_ctx: int = 4096, timeout_s: float = 600.0, device: str | None = None) -> Teacher:
    """The Teacher that runs a spec: gguf → llama.cpp's batched decoding, hf → the HF sampler (+ adapter) on `device` (None: CUDA
    when there is one), openai → an endpoint (`model`: the served name; unset: the one it serves)."""
    parsed = parse_model(spec) if isinstance(spec, str) else spec
    if parsed.kind == "gguf":
        from engine.eval.batched import BatchedGGUF

        return BatchedGGUF(parsed.target, n_ctx=n_ctx)  # n_ctx: per sequence (prompt + reply)
    if parsed.kind == "hf":
        return HFTeacher(parsed.target, adapter=parsed.adapter, device=device)
    return OpenAITeacher(parsed.target, model=model, api_key_env=api_key_env, concurrency=concurrency,
                         timeout_s=timeout_s)


def model_label(spec: ModelSpec | str, served: str | None = None) -> str:
    """A short name for tables: the GGUF's file stem, the HF folder (+ the adapter's), `run:ID`, the served
    model's name (else the endpoint's host). Parts of a run's layout (final/, adapter/, …) are skipped.

    Example: hf:runs/sft/final/model+runs/grpo/final/adapter → "sft+grpo"; gguf:models/q4.gguf → "q4"."""
    parsed = parse_model(spec) if isinstance(spec, str) else spec
    if parsed.run_id is not None:
        return f"run:{parsed.run_id}"
    if parsed.kind == "gguf":
        return Path(parsed.target).stem if parsed.spec.startswith("gguf:") or "/" in parsed.spec else parsed.spec
    if parsed.kind == "hf":
        name = _path_label(parsed.target)
        return f"{name}+{_path_label(parsed.adapter)}" if parsed.adapter else name
    if served:
        return served
    match = re.match(r"https?://([^/]+)", parsed.target)
    return match.group(1) if match else parsed.target


def model_labels(specs: Sequence[ModelSpec], served: Sequence[str | None] | None = None) -> list[str]:
    """model_label of each spec, made unique within one evaluation (" #2", " #3" for a repeat)."""
    labels = [model_label(spec, name) for spec, name in zip(specs, served or [None] * len(specs), strict=True)]
    unique = []
    for index, label in enumerate(labels):
        repeats = labels[:index].count(label)
        unique.append(label if not repeats else f"{label} #{repeats + 1}")
    return unique


def _path_label(path: str) -> str:
    """The last part of a path that names the model: runs/grpo/final/adapter → grpo, …/checkpoints/step-40/adapter
    → grpo@step-40."""
    parts = [part for part in Path(path).expanduser().parts if part not in ("/", "")]
    step = next((part for part in reversed(parts) if re.fullmatch(r"step-\d+", part)), None)
    names = [part for part in parts if part not in _GENERIC_PARTS and not re.fullmatch(r"step-\d+", part)]
    name = names[-1] if names else (parts[-1] if parts else path)
    return f"{name}@{step}" if step else name
