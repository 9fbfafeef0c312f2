"""A Hugging Face checkpoint folder opened for export: config, architecture, safetensors tensor index.

Tensors are read, never memory-mapped: `load_rows` returns a block of rows as f32 (or f16 when stored
so), which is what lets the GGUF writer stream a model far larger than the RAM it uses. Reads config.json
itself (no transformers, no torch).
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
    """An opened checkpoint: folder, hparams (config.json with AutoConfig's defaults), GGUF arch, tensor index."""

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


# The defaults of transformers' config classes for the keys the writer reads, so that a sparse config.json
# reads as AutoConfig(...).to_dict() reads it (as llama.cpp's converter reads it) without importing transformers.
CONFIG_DEFAULTS = {
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 32768,
              "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False},
    "qwen3": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128,
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
}


def read_hparams(raw: dict, arch: str) -> dict:
    """config.json as AutoConfig.to_dict() has it for the keys the writer reads: the class defaults for
    missing keys, num_key_value_heads = num_attention_heads when null (Llama: also when absent), Llama's
    head_dim = hidden_size / num_attention_heads; RoPE keys are kept as written (Checkpoint.rope_parameters
    reads either form). Needs no transformers."""
    hparams = {**CONFIG_DEFAULTS[arch], **raw}
    for key, value in CONFIG_DEFAULTS[arch].items():
        if hparams[key] is None and key not in ("max_position_embeddings", "num_key_value_heads"):
            hparams[key] = value
    if hparams.get("num_key_value_heads") is None:
        hparams["num_key_value_heads"] = hparams["num_attention_heads"]
    if arch == "llama" and hparams.get("head_dim") is None:
        hparams["head_dim"] = hparams["hidden_size"] // hparams["num_attention_heads"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size"):
        if not isinstance(hparams[key], int) or isinstance(hparams[key], bool) or hparams[key] < 1:
            raise AhaError(f"{key} in config.json is {hparams[key]!r}, not a positive whole number; re-download "
                           "or re-save the checkpoint.")
    return hparams


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
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AhaError(f"cannot read {folder / 'config.json'}: not valid JSON ({exc}); re-download or re-save "
                       "the checkpoint.") from None
    hf_arch = ((raw.get("architectures") if isinstance(raw, dict) else None) or ["?"])[0]
    if hf_arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise AhaError(f"unsupported architecture {hf_arch}; Aha exports {supported} (the DeepSeek-R1 distills).")
    arch = SUPPORTED_ARCHITECTURES[hf_arch]
    tensors = index_tensors(_part_files(folder))
    return Checkpoint(folder, read_hparams(raw, arch), hf_arch, arch, tensors)


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


def read_bytes(local, start: int, size: int) -> np.ndarray:
    """`size` bytes of a tensor from byte `start`, read into a fresh array (not memory-mapped: pages of a map
    stay in the process's RSS once touched; read, they stay in the page cache only)."""
    out = np.empty(size, dtype=np.uint8)
    with open(local.data_range.filename, "rb", buffering=0) as file:
        file.seek(local.data_range.offset + start)
        view, done = memoryview(out), 0
        while done < size:
            got = file.readinto(view[done:])
            if not got:
                raise AhaError(f"{local.data_range.filename} ended inside a tensor; re-download or re-save the checkpoint.")
            done += got
    return out


def load_rows(local, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a tensor along its first axis (f32, or f16 when stored so)."""
    rows = local.shape[0] if local.shape else 1
    row_bytes = local.data_range.size // max(rows, 1)
    raw = read_bytes(local, start * row_bytes, (stop - start) * row_bytes)
    return _as_float(raw, local.dtype, (stop - start, *local.shape[1:]) if local.shape else ())


def load_tensor(local) -> np.ndarray:
    """One whole tensor: F32 and F16 as stored, BF16 (and anything else) upcast to f32."""
    return _as_float(read_bytes(local, 0, local.data_range.size), local.dtype, tuple(local.shape))
