"""A Hugging Face checkpoint folder opened for export: config, architecture, safetensors tensor index.

Tensors are memory-mapped, never loaded whole: `load_tensor` returns one tensor as f32 (or f16 when
stored so), which is what lets the GGUF writer stream a model far larger than the RAM it uses.
Every problem a user can meet (missing folder, unsupported architecture, corrupt or truncated
safetensors) becomes one AhaError line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import AhaError

# HF architecture → GGUF architecture name (gguf.MODEL_ARCH_NAMES)
SUPPORTED_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
}


@dataclass
class Checkpoint:
    """An opened checkpoint: folder, hparams (AutoConfig as a dict), GGUF arch, tensor index."""

    folder: Path
    hparams: dict
    hf_arch: str
    arch: str
    tensors: dict  # name → gguf.utility.LocalTensor (memory-mapped lazily)

    @property
    def block_count(self) -> int:
        return int(self.hparams["num_hidden_layers"])

    @property
    def head_dim(self) -> int:
        return int(self.hparams.get("head_dim") or self.hparams["hidden_size"] // self.hparams["num_attention_heads"])

    @property
    def rope_parameters(self) -> dict:
        """RoPE settings in transformers ≥ 5 form, falling back to the older rope_scaling + rope_theta keys."""
        params = dict(self.hparams.get("rope_parameters") or self.hparams.get("rope_scaling") or {})
        if "rope_theta" not in params and self.hparams.get("rope_theta") is not None:
            params["rope_theta"] = self.hparams["rope_theta"]
        if "rope_type" not in params and params.get("type") is not None:
            params["rope_type"] = params["type"]
        return params


def read_hparams(folder: Path) -> dict:
    """config.json through transformers' AutoConfig (as llama.cpp's converter reads it), as a dict."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False).to_dict()
    except Exception as exc:  # noqa: BLE001 - a broken config is the user's file, not our bug
        raise AhaError(f"cannot read {folder / 'config.json'}: {str(exc).splitlines()[0]}. "
                       "Is this a Hugging Face checkpoint folder?") from exc


def _part_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            raise AhaError(f"{index} is not a valid safetensors index; re-download or re-save the checkpoint.") from exc
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    if any(folder.glob("*.bin")):
        raise AhaError(f"{folder} holds PyTorch .bin weights; re-save it with safetensors "
                       "(model.save_pretrained(folder, safe_serialization=True)) and export again.")
    raise AhaError(f"no model.safetensors in {folder}; point Aha at a Hugging Face checkpoint folder.")


def index_tensors(parts: list[Path]) -> dict:
    """name → LocalTensor over all parts, checking that every tensor lies inside its file."""
    from gguf.utility import SafetensorsLocal

    tensors = {}
    for part in parts:
        if not part.is_file():
            raise AhaError(f"checkpoint part {part.name} is missing from {part.parent}; the download is incomplete.")
        size = part.stat().st_size
        try:
            with SafetensorsLocal(part) as local:
                entries = dict(local)
        except Exception as exc:  # noqa: BLE001 - malformed header: any parser error means corrupt file
            raise AhaError(f"{part} is not a valid safetensors file ({type(exc).__name__}); "
                           "re-download or re-save the checkpoint.") from exc
        for name, tensor in entries.items():
            end = tensor.data_range.offset + tensor.data_range.size
            if end > size:
                raise AhaError(f"{part} is truncated (tensor {name} ends at byte {end}, file has {size}); "
                               "re-download or re-save the checkpoint.")
        tensors.update(entries)
    return tensors


def open_checkpoint(folder: Path | str) -> Checkpoint:
    """Validate and index an HF checkpoint folder for export."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        raise AhaError(f"{folder} is a file, not a folder; give the Hugging Face checkpoint folder that holds "
                       "config.json (a .gguf needs no export).")
    if not folder.is_dir():
        raise AhaError(f"checkpoint folder {folder} does not exist; give the folder that holds config.json.")
    if not (folder / "config.json").is_file():
        raise AhaError(f"{folder} has no config.json; give the folder of a Hugging Face checkpoint.")
    # The checks that need no transformers come first: its import alone takes seconds.
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AhaError(f"cannot read {folder / 'config.json'}: not valid JSON ({exc}); re-download or re-save "
                       "the checkpoint.") from None
    hf_arch = ((raw.get("architectures") if isinstance(raw, dict) else None) or ["?"])[0]
    if hf_arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise AhaError(f"unsupported architecture {hf_arch}; Aha exports {supported} (the DeepSeek-R1 distills).")
    tensors = index_tensors(_part_files(folder))
    hparams = read_hparams(folder)
    return Checkpoint(folder, hparams, hf_arch, SUPPORTED_ARCHITECTURES[hf_arch], tensors)


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) → float32, exactly: the bf16 bits are the top half of the f32."""
    wide = raw.astype(np.uint32)
    wide <<= 16  # in place: one f32-sized temporary, not two
    return wide.view(np.float32)


def _as_float(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "F32":
        return np.asarray(raw.view(np.float32).reshape(shape))
    if dtype == "F16":
        return np.asarray(raw.view(np.float16).reshape(shape))
    if dtype == "BF16":
        return bf16_to_f32(raw.view(np.uint16)).reshape(shape)
    if dtype == "F64":
        return raw.view(np.float64).reshape(shape).astype(np.float32)
    raise AhaError(f"tensor dtype {dtype} is not supported for export; use an f32/f16/bf16 checkpoint.")


def load_rows(local, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a 2-D tensor, read from its file (f32, or f16 when stored so)."""
    rows, cols = local.shape
    row_bytes = local.data_range.size // rows
    raw = np.memmap(local.data_range.filename, mode="r", dtype=np.uint8,
                    offset=local.data_range.offset + start * row_bytes, shape=((stop - start) * row_bytes,))
    return _as_float(raw, local.dtype, (stop - start, cols))


def load_tensor(local) -> np.ndarray:
    """One tensor from its memory map: F32 and F16 as stored, BF16 (and anything else) upcast to f32."""
    return _as_float(local.mmap_bytes(), local.dtype, tuple(local.shape))
