"""The expected size of an export, per GGUF type, before anything is written.

Size ≈ Σ over the planned tensors of elements × bits per weight / 8, where 1-D tensors (norms, biases) stay
F32 as the writer keeps them, and each type's bits per weight are its block size in bytes × 8 / weights per
block (f16 16, q8_0 8.5) or, for llama.cpp's k-quant mixes, the average in engine.export.quantize. The
tokenizer metadata is estimated from the vocabulary. Knows nothing of writing: shapes in, bytes out.
"""

from __future__ import annotations

from pathlib import Path

from engine.export.gguf_writer import DIRECT_TYPES
from engine.export.quantize import QUANT_TYPES

DIRECT_BITS = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5}  # q8_0: 32 int8 + one f16 scale per block
METADATA_BYTES_PER_TOKEN = 24  # a token's string (~8 bytes), its length, score and type; merges about as much


def bits_per_weight(out_type: str) -> float:
    """Average bits per weight of a 2-D tensor in this type (k-quants: llama.cpp's mixes, on average)."""
    key = out_type.lower()
    return DIRECT_BITS[key] if key in DIRECT_BITS else QUANT_TYPES[key][1]


def export_types() -> list[str]:
    """The types an export can write, the direct ones first: f32, f16, bf16, q8_0, then the k-quants."""
    return [*DIRECT_TYPES, *QUANT_TYPES]


def expected_sizes(src: Path | str, types: list[str] | None = None) -> dict[str, int]:
    """{type: expected bytes} of the GGUF `aha export SRC --type TYPE` writes (an adapter merged into it
    changes no shape). Reads only the safetensors headers and config.json."""
    from engine.export.checkpoint import open_checkpoint
    from engine.export.gguf_writer import plan_tensors

    ckpt = open_checkpoint(src)
    counts = {"matrix": 0, "vector": 0}
    for tensor in plan_tensors(ckpt, "F16"):
        elements = 1
        for dim in tensor.shape:
            elements *= int(dim)
        counts["vector" if tensor.qtype == "F32" else "matrix"] += elements
    metadata = int(ckpt.hparams.get("vocab_size") or 0) * METADATA_BYTES_PER_TOKEN * 2
    return {key: int(counts["matrix"] * bits_per_weight(key) / 8 + counts["vector"] * 4 + metadata)
            for key in (types or export_types())}
