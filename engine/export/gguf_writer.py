"""HF checkpoint → GGUF, written as llama.cpp's `convert_hf_to_gguf.py` writes it, one tensor at a time.

Same tensors (names, shapes, types, bytes) and the same architecture and tokenizer metadata as the
reference converter for qwen2, llama and qwen3; only descriptive `general.*` keys may differ.
Tensor infos are planned from the safetensors headers first, so the file can be streamed: peak memory
is one tensor, not the model. Knows nothing of LoRA, quantization to k-quants, or Ollama.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import AhaError, Cancelled
from engine.export.checkpoint import Checkpoint, load_rows, load_tensor, open_checkpoint
from engine.fileio import atomic_output, check_free_space
from engine.jobs import CancelToken, OnEvent, Progress, ignore, make_event

# Output types written directly (name → (gguf.LlamaFileType value, gguf.GGMLQuantizationType name)).
DIRECT_TYPES = {
    "f32": (0, "F32"),
    "f16": (1, "F16"),
    "bf16": (32, "BF16"),
    "q8_0": (7, "Q8_0"),
}


@dataclass
class PlannedTensor:
    """One output tensor: where it comes from, its GGUF name, numpy shape and type, and how to make it."""

    gguf_name: str
    shape: tuple[int, ...]
    qtype: str                              # gguf.GGMLQuantizationType member name
    make: Callable[[], np.ndarray]          # produces the f32/f16 data before quantization
    source: object = None                   # a LocalTensor copied as is: converted row block by row block


def permute_rope(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half Q/K rows → ggml's interleaved RoPE layout (Llama only).

    (n_head·2·d, …) viewed as (n_head, 2, d, …), axes 1 and 2 swapped, flattened back.
    """
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """`rope_freqs.weight` for rope_type llama3: one factor per frequency pair (head_dim/2 values, f32).

    freq_i = 1 / θ^(2i/d); wavelength λ = 2π / freq. λ < L/high → 1; λ > L/low → factor; between,
    smooth = (L/λ − low)/(high − low) and the factor is 1 / ((1 − smooth)/factor + smooth),
    with L = original_max_position_embeddings (Meta's Llama 3.1 reference, as llama.cpp writes it).
    """
    base = rope.get("rope_theta", 10000.0)
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factors = []
    for freq in freqs.astype(np.float32):
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def output_qtype(gguf_name: str, shape: tuple[int, ...], file_qtype: str) -> str:
    """The converter's rule: 1-D tensors, norms and biases stay F32; a row that does not split into
    whole quantization blocks falls back to F16; everything else takes the file's type."""
    import gguf

    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return "F32"
    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[file_qtype]]
    return file_qtype if shape[-1] % block == 0 else "F16"


def plan_tensors(ckpt: Checkpoint, file_qtype: str) -> list[PlannedTensor]:
    """Every output tensor in the reference converter's order (extra tensors first, then file order)."""
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[ckpt.arch.upper()], ckpt.block_count)
    planned = []
    rope = ckpt.rope_parameters
    if ckpt.arch == "llama" and str(rope.get("rope_type", "")).lower() == "llama3":
        factors = llama3_rope_factors(rope, ckpt.head_dim)
        planned.append(PlannedTensor("rope_freqs.weight", factors.shape, "F32", lambda f=factors: f))
    n_head, n_kv = ckpt.hparams["num_attention_heads"], ckpt.hparams["num_key_value_heads"]
    tied = bool(ckpt.hparams.get("tie_word_embeddings"))
    for name, local in ckpt.tensors.items():
        if name.endswith(".rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise AhaError(f"cannot map tensor {name} of {ckpt.hf_arch} to GGUF; the checkpoint has "
                           "layers this architecture does not define.")
        heads = n_head if name.endswith(("q_proj.weight", "q_proj.bias")) else (
            n_kv if name.endswith(("k_proj.weight", "k_proj.bias")) else None)

        permuted = ckpt.arch == "llama" and heads is not None

        def make(local=local, heads=heads, permuted=permuted):
            data = load_tensor(local)
            return permute_rope(data, heads) if permuted else data

        shape = tuple(local.shape)
        planned.append(PlannedTensor(gguf_name, shape, output_qtype(gguf_name, shape, file_qtype), make,
                                     source=None if permuted else local))
    return planned


def quantize(data: np.ndarray, qtype: str) -> np.ndarray:
    """f32/f16 → the on-disk array of `qtype` (gguf-py's reference quantizers; bf16 rounds to nearest even)."""
    import gguf

    return gguf.quants.quantize(data, gguf.GGMLQuantizationType[qtype])


ROW_BLOCK_BYTES = 8 << 20  # source bytes converted at a time: bounded temporaries, cache-friendly


_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def cast_with_torch(local, qtype: str) -> np.ndarray | None:
    """A float→float cast (bf16/f16/f32 → f32/f16/bf16) done by torch in one vectorized, multi-threaded
    pass, bit-identical to upcasting to f32 and rounding to nearest even. None when not applicable."""
    if local.dtype not in _TORCH_DTYPES or qtype not in _TORCH_DTYPES:
        return None
    try:
        import torch
    except ImportError:
        return None
    source = torch.from_numpy(local.mmap_bytes()).view(getattr(torch, _TORCH_DTYPES[local.dtype]))
    target = source.to(getattr(torch, _TORCH_DTYPES[qtype]))
    if qtype == "BF16":  # numpy has no bfloat16: hand over the bytes
        return target.view(torch.uint8).numpy().reshape(*local.shape[:-1], local.shape[-1] * 2)
    return target.numpy().reshape(local.shape)


def convert(item: PlannedTensor) -> np.ndarray:
    """The on-disk array of one planned tensor. Float casts go through torch; a 2-D source tensor to be
    quantized is converted in row blocks straight into the output array (no full-size f32 temporary)."""
    local = item.source
    if local is None:
        return quantize(item.make(), item.qtype)
    cast = cast_with_torch(local, item.qtype)
    if cast is not None:
        return cast
    if len(item.shape) != 2:
        return quantize(item.make(), item.qtype)
    rows, row_bytes = item.shape[0], local.data_range.size // max(item.shape[0], 1)
    step = max(1, ROW_BLOCK_BYTES // max(row_bytes, 1))
    first = quantize(load_rows(local, 0, min(step, rows)), item.qtype)
    out = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
    out[: first.shape[0]] = first
    for start in range(first.shape[0], rows, step):
        out[start : start + step] = quantize(load_rows(local, start, min(start + step, rows)), item.qtype)
    return out


def tensor_nbytes(shape: tuple[int, ...], qtype: str) -> int:
    import gguf

    byte_shape = gguf.quant_shape_to_byte_shape(shape, gguf.GGMLQuantizationType[qtype])
    return int(np.prod(byte_shape))


def add_model_metadata(writer, ckpt: Checkpoint, file_type: int) -> None:
    """general.type, architecture keys and the quantization version, in the converter's order."""
    import gguf

    hp = ckpt.hparams
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(ckpt.folder.name)
    writer.add_block_count(ckpt.block_count)
    if hp.get("max_position_embeddings") is not None:
        writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_head_count_kv(hp["num_key_value_heads"])
    rope = ckpt.rope_parameters
    rope_type, rope_factor = rope.get("rope_type"), rope.get("factor")
    if rope_type in ("linear", "yarn") and rope_factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if rope_type == "linear" else gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope_factor)
        if rope_type == "yarn":
            writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    if hp.get("head_dim") is not None:
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    writer.add_file_type(file_type)
    if ckpt.arch == "llama":
        writer.add_vocab_size(hp["vocab_size"])
        writer.add_rope_dimension_count(ckpt.head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_tokenizer_metadata(writer, ckpt: Checkpoint, on_event: OnEvent) -> None:
    """tokenizer.ggml.* and the chat template, as the converter's gpt2 vocab path writes them."""
    import json

    import gguf

    from engine.export.vocab import load_vocab

    vocab, _ = load_vocab(ckpt.folder, ckpt.hparams["vocab_size"])
    for warning in vocab.warnings:
        on_event(make_event("log", level="warning", message=warning))
    config_file = ckpt.folder / "tokenizer_config.json"
    if ckpt.arch == "llama" and config_file.is_file():
        prefix_space = json.loads(config_file.read_text(encoding="utf-8")).get("add_prefix_space")
        if prefix_space is not None:
            writer.add_add_space_prefix(prefix_space)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    gguf.SpecialVocab(ckpt.folder, load_merges=True).add_to_gguf(writer, quiet=True)


def write_planned(out: Path, arch: str, planned: list[PlannedTensor], add_metadata: Callable[[object], None], *,
                  force: bool = False, on_event: OnEvent = ignore, cancel: CancelToken | None = None,
                  stage: str = "write") -> Path:
    """Write a GGUF file atomically: metadata, tensor infos, then each tensor made, quantized and written
    in turn (one tensor in memory at a time). Shared by models and LoRA adapters."""
    import gguf

    total = sum(tensor_nbytes(p.shape, p.qtype) for p in planned)
    with atomic_output(out, force) as temp:
        check_free_space(temp.parent, total)
        writer = gguf.GGUFWriter(path=None, arch=arch)
        add_metadata(writer)
        for item in planned:
            qtype = gguf.GGMLQuantizationType[item.qtype]
            dtype = {"F32": np.float32, "F16": np.float16}.get(item.qtype, np.uint8)
            shape = item.shape if dtype is not np.uint8 else gguf.quant_shape_to_byte_shape(item.shape, qtype)
            writer.add_tensor_info(item.gguf_name, shape, np.dtype(dtype), tensor_nbytes(item.shape, item.qtype), qtype)
        writer.write_header_to_file(path=temp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        progress = Progress(on_event, stage, total, unit="B", label=f"writing {out.name}")
        for index, item in enumerate(planned):
            if cancel is not None and cancel.cancelled:
                raise Cancelled("export cancelled; no file was written.")
            data = convert(item)
            writer.write_tensor_data(data)
            progress.advance(data.nbytes, tensors=index + 1, tensor_count=len(planned))
        writer.close()
    return out


def write_gguf(src: Path | str | Checkpoint, out: Path | str, out_type: str = "f16", *, force: bool = False,
               on_event: OnEvent = ignore, cancel: CancelToken | None = None, stage: str = "write") -> Path:
    """Convert an HF checkpoint folder to one GGUF file of type f32, f16, bf16 or q8_0. Returns the path."""
    if out_type not in DIRECT_TYPES:
        raise AhaError(f"unknown direct GGUF type {out_type!r}; use one of {', '.join(DIRECT_TYPES)}.")
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    file_type, file_qtype = DIRECT_TYPES[out_type]
    out = Path(out)

    def add_metadata(writer) -> None:
        add_model_metadata(writer, ckpt, file_type)
        add_tokenizer_metadata(writer, ckpt, on_event)

    write_planned(out, ckpt.arch, plan_tensors(ckpt, file_qtype), add_metadata,
                  force=force, on_event=on_event, cancel=cancel, stage=stage)
    on_event(make_event("artifact", kind="gguf", path=str(out), bytes=out.stat().st_size, gguf_type=out_type))
    return out
