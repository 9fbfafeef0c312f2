"""HF checkpoint → GGUF, written as llama.cpp's `convert_hf_to_gguf.py` writes it, one tensor at a time.

Same tensors (names, shapes, types, bytes) and the same architecture and tokenizer metadata as the
reference converter for qwen2, llama and qwen3; only descriptive `general.*` keys may differ.
Tensor infos are planned from the safetensors headers first, so the file can be streamed in row blocks:
peak memory is a block, not a tensor. Casts are numpy's (bf16 → f32 is a bit shift; to bf16 and q8_0,
gguf-py's quantizers): no torch, no transformers. Knows nothing of LoRA (a merge passes its rows in),
quantization to k-quants, or Ollama.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import AhaError, Cancelled
from engine.export.checkpoint import Checkpoint, load_rows, open_checkpoint, read_bytes
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
    make: Callable[[], np.ndarray]          # produces the whole f32/f16 data before quantization
    rows: Callable[[int, int], np.ndarray] | None = None  # rows [start, stop) of it: converted block by block
    source: object = None                   # the LocalTensor `rows` reads unchanged (a bf16 one is cast bitwise)


# (HF name, LocalTensor) → rows(start, stop) of the tensor to write, or None: the tensor as stored.
RowsOf = Callable[[str, object], Callable[[int, int], np.ndarray] | None]


def as_stored(name: str, local) -> None:
    """The default RowsOf: every tensor as stored (no adapter merged)."""
    return None


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


def plan_tensors(ckpt: Checkpoint, file_qtype: str, rows_of: RowsOf = as_stored) -> list[PlannedTensor]:
    """Every output tensor in the reference converter's order (extra tensors first, then file order).
    `rows_of` gives each tensor's rows (engine.export.lora passes one that adds a LoRA's B·A)."""
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

        changed = rows_of(name, local)
        rows = changed or (lambda start, stop, local=local: load_rows(local, start, stop))

        def make(rows=rows, local=local, heads=heads, permuted=permuted):
            data = rows(0, local.shape[0])
            return permute_rope(data, heads) if permuted else data

        shape = tuple(local.shape)
        planned.append(PlannedTensor(gguf_name, shape, output_qtype(gguf_name, shape, file_qtype), make,
                                     rows=None if permuted or not shape else rows,
                                     source=None if changed else local))
    return planned


def quantize(data: np.ndarray, qtype: str) -> np.ndarray:
    """f32/f16 → the on-disk array of `qtype` (gguf-py's reference quantizers; bf16 rounds to nearest even)."""
    import gguf

    return gguf.quants.quantize(data, gguf.GGMLQuantizationType[qtype])


ROW_BLOCK_ELEMENTS = 4 << 20  # elements converted at a time (16 MB as f32): memory is a block, not a tensor


def cast_bf16_bits(raw: np.ndarray, qtype: str) -> np.ndarray:
    """bf16 bit patterns (uint16) → F32 or BF16 bytes without rounding: f32 = bits << 16; to BF16 the bits
    themselves, NaNs made quiet (bit 6 set), which is what gguf-py's round-to-nearest-even gives an exact
    bf16 value."""
    if qtype == "F32":
        wide = raw.astype(np.uint32)
        wide <<= 16
        return wide.view(np.float32)
    bits = raw.copy()
    bits[(bits & 0x7FFF) > 0x7F80] |= 0x0040
    return bits.view(np.uint8)


def blocks(item: PlannedTensor) -> Iterator[np.ndarray]:
    """The on-disk bytes of one planned tensor, in blocks of whole rows (one block for a tensor that is
    made whole: Llama's permuted Q/K). Block by block the bytes are those of converting the tensor at once."""
    if item.rows is None:
        yield quantize(item.make(), item.qtype)
        return
    rows = item.shape[0]
    step = max(1, ROW_BLOCK_ELEMENTS // max(1, math.prod(item.shape[1:])))
    local = item.source
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        if local is not None and local.dtype == "BF16" and item.qtype in ("F32", "BF16"):
            row_bytes = local.data_range.size // rows
            yield cast_bf16_bits(read_bytes(local, start * row_bytes, (stop - start) * row_bytes).view(np.uint16),
                                 item.qtype)
        else:
            yield quantize(item.rows(start, stop), item.qtype)


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


def write_block(fout, block: np.ndarray) -> None:
    """The one place tensor bytes reach the file (a full disk raises here, as OSError ENOSPC)."""
    block.tofile(fout)


def write_planned(out: Path, arch: str, planned: list[PlannedTensor], add_metadata: Callable[[object], None], *,
                  force: bool = False, on_event: OnEvent = ignore, cancel: CancelToken | None = None,
                  stage: str = "write") -> Path:
    """Write a GGUF file atomically: metadata, tensor infos, then each tensor converted and written block by
    block (one row block in memory at a time), each aligned as gguf-py's write_tensor_data aligns it.
    Shared by models and LoRA adapters."""
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
            fout = writer.fout[0]
            writer.write_padding(fout, fout.tell())
            written = 0
            for block in blocks(item):
                write_block(fout, block)
                written += block.nbytes
                progress.advance(block.nbytes, tensors=index + 1, tensor_count=len(planned))
            if written != tensor_nbytes(item.shape, item.qtype):
                raise AssertionError(f"{item.gguf_name}: wrote {written} bytes, planned {tensor_nbytes(item.shape, item.qtype)}")
            writer.write_padding(fout, written)
        writer.close()
    return out


def write_gguf(src: Path | str | Checkpoint, out: Path | str, out_type: str = "f16", *, force: bool = False,
               on_event: OnEvent = ignore, cancel: CancelToken | None = None, stage: str = "write",
               rows_of: RowsOf = as_stored) -> Path:
    """Convert an HF checkpoint folder to one GGUF file of type f32, f16, bf16 or q8_0. Returns the path."""
    if out_type not in DIRECT_TYPES:
        raise AhaError(f"unknown direct GGUF type {out_type!r}; use one of {', '.join(DIRECT_TYPES)}.")
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    file_type, file_qtype = DIRECT_TYPES[out_type]
    out = Path(out)

    def add_metadata(writer) -> None:
        add_model_metadata(writer, ckpt, file_type)
        add_tokenizer_metadata(writer, ckpt, on_event)

    write_planned(out, ckpt.arch, plan_tensors(ckpt, file_qtype, rows_of), add_metadata,
                  force=force, on_event=on_event, cancel=cancel, stage=stage)
    on_event(make_event("artifact", kind="gguf", path=str(out), bytes=out.stat().st_size, gguf_type=out_type))
    return out
