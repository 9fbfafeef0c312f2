"""Compare two GGUF files the way the export issue defines "the same": tensors and non-descriptive KVs.

Returns a list of human-readable differences (empty = equivalent). Descriptive `general.*` keys (name,
basename, size label, …) may differ; `general.architecture`, `general.type`, `general.file_type` and
`general.quantization_version` may not.
"""

from __future__ import annotations

import numpy as np

STRUCTURAL_GENERAL = {"general.architecture", "general.type", "general.file_type", "general.quantization_version"}


def _value(field):
    from gguf import GGUFValueType

    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        if len(field.types) > 1 and field.types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist() for i in field.data]
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()


def metadata(path) -> dict:
    """Every KV of a GGUF file except GGUF.* header fields, as Python values."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {name: _value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def tensors(path) -> dict:
    """name → (shape, type name, raw bytes)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {t.name: (tuple(int(x) for x in t.shape), t.tensor_type.name, np.asarray(t.data).tobytes())
            for t in reader.tensors}


def differences(ours, reference) -> list[str]:
    """What differs between two GGUF files, ignoring descriptive general.* keys."""
    diffs = []
    meta_a, meta_b = metadata(ours), metadata(reference)
    keys = {k for k in meta_a.keys() | meta_b.keys() if not k.startswith("general.") or k in STRUCTURAL_GENERAL}
    for key in sorted(keys):
        if meta_a.get(key) != meta_b.get(key):
            a, b = repr(meta_a.get(key))[:120], repr(meta_b.get(key))[:120]
            diffs.append(f"kv {key}: ours={a} reference={b}")
    tens_a, tens_b = tensors(ours), tensors(reference)
    for name in sorted(tens_a.keys() | tens_b.keys()):
        if name not in tens_a or name not in tens_b:
            diffs.append(f"tensor {name}: only in {'ours' if name in tens_a else 'reference'}")
        elif tens_a[name][:2] != tens_b[name][:2]:
            diffs.append(f"tensor {name}: ours={tens_a[name][:2]} reference={tens_b[name][:2]}")
        elif tens_a[name][2] != tens_b[name][2]:
            diffs.append(f"tensor {name}: same shape and type, different bytes")
    return diffs
