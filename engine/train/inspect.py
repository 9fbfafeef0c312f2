"""What the Train form shows before a run starts, behind `aha inspect`: the devices (CUDA GPUs or the CPU,
and whether QLoRA 4-bit can run), the Hugging Face checkpoints on this machine (the HF cache's snapshots and
the data dir's runs, with architecture, parameter count and size, read without loading weights), and a
dataset's preview (columns, first rows, the first prompt rendered exactly as training renders it).

Plain dicts out, ready for JSON; knows nothing of Qt. Only `devices` imports torch, and `preview_dataset`
imports transformers when a model is given (for its tokenizer).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from engine.errors import AhaError

PREVIEW_ROWS = 5  # rows a dataset preview shows by default
RUN_SEARCH_DEPTH = 4  # folder levels under <data dir>/runs searched for checkpoints (runs/<run>/final/merged)


# Devices ------------------------------------------------------------------------------------------

def devices() -> dict[str, Any]:
    """{"cuda": [{"index", "name", "vram_bytes"}], "cpu_cores", "summary", "qlora": {"available", "reason"}}.

    Example on a laptop without a GPU: {"cuda": [], "cpu_cores": 8, "summary": "CPU, 8 cores",
    "qlora": {"available": False, "reason": "QLoRA 4-bit needs an NVIDIA GPU with CUDA; none was found"}}
    """
    import importlib.util

    import torch

    cuda = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            cuda.append({"index": index, "name": properties.name, "vram_bytes": int(properties.total_memory)})
    cores = os.cpu_count() or 1
    if not cuda:
        qlora = {"available": False, "reason": "QLoRA 4-bit needs an NVIDIA GPU with CUDA; none was found"}
    elif importlib.util.find_spec("bitsandbytes") is None:
        qlora = {"available": False, "reason": "QLoRA 4-bit needs bitsandbytes: pip install bitsandbytes"}
    else:
        qlora = {"available": True, "reason": None}
    return {"cuda": cuda, "cpu_cores": cores, "summary": device_summary(cuda, cores), "qlora": qlora}


def device_summary(cuda: list[dict], cores: int) -> str:
    """ "NVIDIA H200, 139.8 GiB" (each GPU, joined by "; ") or "CPU, 8 cores"."""
    from engine.jobs import format_bytes

    if not cuda:
        return f"CPU, {cores} core{'s' if cores != 1 else ''}"
    return "; ".join(f"{gpu['name']}, {format_bytes(gpu['vram_bytes'])}" for gpu in cuda)


# Checkpoints --------------------------------------------------------------------------------------

def safetensors_parameters(path: Path) -> int:
    """The number of parameters in one .safetensors file, from its JSON header (8-byte length, then JSON)."""
    try:
        with open(path, "rb") as stream:
            (length,) = struct.unpack("<Q", stream.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(stream.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise AhaError(f"{path} is not a valid safetensors file ({error}); re-download or re-save the checkpoint") from None
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def checkpoint_info(folder: str | Path, source: str = "folder", repo_id: str | None = None) -> dict[str, Any]:
    """One HF checkpoint folder: {"path", "name", "source", "repo_id", "architecture", "model_type",
    "parameters", "size_bytes"}; parameters from the safetensors headers (no weights loaded)."""
    folder = Path(folder).expanduser()
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AhaError(f"{folder} has no config.json: give a Hugging Face checkpoint folder") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise AhaError(f"{config_path} is not valid JSON ({error}); re-download or re-save the checkpoint") from None
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise AhaError(f"{folder} has no .safetensors weights: give a Hugging Face checkpoint folder")
    architectures = config.get("architectures") or [config.get("model_type") or "unknown"]
    size = sum(entry.stat().st_size for entry in folder.iterdir() if entry.is_file())  # follows the cache's links
    return {"path": str(folder), "name": repo_id or folder.name, "source": source, "repo_id": repo_id,
            "architecture": str(architectures[0]), "model_type": config.get("model_type"),
            "parameters": sum(safetensors_parameters(shard) for shard in shards), "size_bytes": size}


def is_checkpoint_folder(folder: Path) -> bool:
    """config.json and at least one .safetensors file (an adapter folder has adapter_config.json instead)."""
    return (folder / "config.json").is_file() and next(folder.glob("*.safetensors"), None) is not None


def hf_cache_dir() -> Path:
    """The HF hub cache: $HF_HUB_CACHE, else huggingface_hub's default (read now, so a test's env applies)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_checkpoints(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The HF cache's model snapshots that are checkpoints (config.json + safetensors), newest revision
    first per repo; an absent or unreadable cache is no checkpoints."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(cache_dir or hf_cache_dir())
    except (CacheNotFound, OSError, ValueError):
        return []
    found = []
    for repo in sorted(cache.repos, key=lambda repo: repo.repo_id):
        if repo.repo_type != "model":
            continue
        for revision in sorted(repo.revisions, key=lambda revision: revision.last_modified, reverse=True):
            if is_checkpoint_folder(revision.snapshot_path):
                found.append(_described(revision.snapshot_path, "hf-cache", repo.repo_id))
    return [info for info in found if info is not None]


def run_checkpoints(runs_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Checkpoint folders under the data dir's runs (full fine-tunes, merged adapters), RUN_SEARCH_DEPTH deep."""
    if runs_dir is None:
        from engine.paths import subdir

        runs_dir = subdir("runs")
    found, level = [], [Path(runs_dir)]
    for _ in range(RUN_SEARCH_DEPTH):
        below = []
        for folder in level:
            try:
                children = sorted(entry for entry in folder.iterdir() if entry.is_dir())
            except OSError:
                continue
            for child in children:
                if is_checkpoint_folder(child):
                    found.append(_described(child, "run", None))
                else:
                    below.append(child)
        level = below
    return [info for info in found if info is not None]


def discover_checkpoints(cache_dir: str | Path | None = None, runs_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every HF checkpoint Aha can train from on this machine: the HF cache's, then the runs'."""
    return cached_checkpoints(cache_dir) + run_checkpoints(runs_dir)


def _described(folder: Path, source: str, repo_id: str | None) -> dict[str, Any] | None:
    try:
        return checkpoint_info(folder, source, repo_id)
    except (AhaError, OSError):  # a half-downloaded snapshot: not offered
        return None


def parameters_text(count: int) -> str:
    """1_543_714_304 → "1.5B"; 270_000 → "270K"."""
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= size:
            return f"{count / size:.3g}{suffix}"
    return str(count)


def checkpoints_table(infos: list[dict[str, Any]]) -> str:
    from engine.jobs import format_bytes

    if not infos:
        return f"no checkpoints found (HF cache: {hf_cache_dir()}, and the runs' folders)"
    rows = [(info["name"], info["architecture"], parameters_text(info["parameters"]), format_bytes(info["size_bytes"]),
             info["path"]) for info in infos]
    return _table(("name", "architecture", "parameters", "size", "path"), rows)


# Datasets -----------------------------------------------------------------------------------------

def preview_dataset(source: str, *, prompt_column: str = "prompt", answer_column: str | None = "answer",
                    model: str | None = None, system_prompt: str | None = None,
                    limit: int = PREVIEW_ROWS) -> dict[str, Any]:
    """A dataset as the Train form previews it: {"source", "kind" (task, file or hub), "columns" (the
    file's own, for the column mapping), "rows" (the first `limit`, unmapped), "mapping_error" (the column
    mapping's problem, one line, or None), "prompt" (the first row's mapped prompt), and with `model` its
    "rendered_prompt" and "prefilled" exactly as training renders it (engine.train.sampling.render_prompt).}

    A file that cannot be read is an AhaError; a column mapping that does not fit is `mapping_error`, so the
    form can still offer the file's columns."""
    from engine.train.data import TaskSource, file_records, is_task, load_rows, open_dataset

    if limit < 1:
        raise AhaError(f"--limit must be at least 1, got {limit}")
    mapping_error = None
    if is_task(source):
        rows = [TaskSource(source).row(index) for index in range(limit)]
        kind, mapped = "task", rows
    elif Path(source).expanduser().exists() or Path(source).suffix:
        kind = "file"
        rows = file_records(source, limit)
        try:
            mapped = load_rows(source, prompt_column, answer_column or None)[:1]
        except AhaError as error:
            mapping_error, mapped = str(error), []
    else:
        kind = "hub"
        mapped = open_dataset(source, 0, prompt_column, answer_column or None)[:limit]
        rows = mapped
    columns = list(dict.fromkeys(key for row in rows for key in row))
    preview: dict[str, Any] = {"source": source, "kind": kind, "columns": columns, "rows": [_jsonable(row) for row in rows],
                               "mapping_error": mapping_error, "prompt": None, "rendered_prompt": None,
                               "prefilled": None}
    if mapped:
        preview["prompt"] = _jsonable(mapped[0]["prompt"])
    if model and mapped:
        from engine.train.core import check_model_folder, load_tokenizer
        from engine.train.sampling import is_prefilled, render_prompt

        tokenizer = load_tokenizer(check_model_folder(model))
        rendered = render_prompt(tokenizer, mapped[0]["prompt"], system_prompt)
        preview.update(rendered_prompt=rendered, prefilled=is_prefilled(rendered))
    return preview


def dataset_text(preview: dict[str, Any]) -> str:
    """The preview for a terminal: columns, the first rows as a table, the rendered prompt."""
    lines = [f"{preview['source']} ({preview['kind']}): columns {', '.join(preview['columns'])}"]
    rows = [tuple(_cell(row.get(column)) for column in preview["columns"]) for row in preview["rows"]]
    lines.append(_table(tuple(preview["columns"]), rows))
    if preview["mapping_error"]:
        lines.append(f"column mapping: {preview['mapping_error']}")
    if preview["rendered_prompt"] is not None:
        lines += ["", "first prompt as the model sees it:", preview["rendered_prompt"]]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def _cell(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in (header, *rows))


def devices_text(info: dict[str, Any]) -> str:
    from engine.jobs import format_bytes

    lines = [f"{gpu['index']}  {gpu['name']}  {format_bytes(gpu['vram_bytes'])}" for gpu in info["cuda"]]
    lines.append(f"CPU, {info['cpu_cores']} cores")
    qlora = info["qlora"]
    lines.append("QLoRA 4-bit: available" if qlora["available"] else f"QLoRA 4-bit: not available ({qlora['reason']})")
    return "\n".join(lines)
