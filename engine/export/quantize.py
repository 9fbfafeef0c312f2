"""Quantize a GGUF file with llama.cpp's own quantizer (`llama_model_quantize` in llama-cpp-python).

Knows the type names users type (q4_k_m, q6_k…) and which types need an importance matrix (refused:
Aha does not compute one). Progress is reported from the growing output file against the expected
size, since llama.cpp's quantizer has no callback.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from engine.errors import AhaError
from engine.fileio import atomic_output, check_free_space
from engine.jobs import OnEvent, Progress, ignore, make_event

# name → (LLAMA_FTYPE constant name, approximate bits per weight for the size estimate)
QUANT_TYPES = {
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", 4.5),
    "q4_1": ("LLAMA_FTYPE_MOSTLY_Q4_1", 5.0),
    "q5_0": ("LLAMA_FTYPE_MOSTLY_Q5_0", 5.5),
    "q5_1": ("LLAMA_FTYPE_MOSTLY_Q5_1", 6.0),
    "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", 3.0),
    "q3_k_s": ("LLAMA_FTYPE_MOSTLY_Q3_K_S", 3.5),
    "q3_k_m": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", 3.9),
    "q3_k_l": ("LLAMA_FTYPE_MOSTLY_Q3_K_L", 4.3),
    "q4_k_s": ("LLAMA_FTYPE_MOSTLY_Q4_K_S", 4.6),
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.9),
    "q5_k_s": ("LLAMA_FTYPE_MOSTLY_Q5_K_S", 5.5),
    "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.7),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", 6.6),
}

# Types whose quality collapses without an importance matrix; llama.cpp refuses most of them without one.
NEEDS_IMATRIX = {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "q2_k_s"}


def check_quant_type(name: str) -> str:
    """Normalize and validate a quantization type name; one-line errors for unknown or imatrix types."""
    key = name.lower()
    if key in NEEDS_IMATRIX:
        raise AhaError(f"{name} needs an importance matrix, which Aha does not compute; use q4_k_m, q5_k_m or "
                       "q6_k, or quantize with llama.cpp's llama-imatrix and llama-quantize.")
    if key not in QUANT_TYPES:
        raise AhaError(f"unknown GGUF type {name!r}; use f32, f16, bf16, q8_0 or one of {', '.join(QUANT_TYPES)}.")
    return key


def _watch_size(path: Path, progress: Progress, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        if path.exists():
            progress.update(min(path.stat().st_size, progress.total * 0.99))


def quantize_gguf(src: Path | str, out: Path | str, quant_type: str, *, force: bool = False,
                  n_threads: int | None = None, on_event: OnEvent = ignore) -> Path:
    """src (an f16/bf16/f32 GGUF) → out in `quant_type`, through llama.cpp. Written atomically."""
    import llama_cpp

    key = check_quant_type(quant_type)
    src, out = Path(src), Path(out)
    ftype_name, bits = QUANT_TYPES[key]
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = n_threads or os.cpu_count() or 1
    params.ftype = getattr(llama_cpp, ftype_name)
    expected = src.stat().st_size * bits / 16
    check_free_space(out.parent, int(expected))  # beside the f16 input, which is still on disk
    with atomic_output(out, force) as temp:
        progress = Progress(on_event, f"quantizing to {key}", expected, unit="B")
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_size, args=(temp, progress, stop), daemon=True)
        watcher.start()
        try:
            status = llama_cpp.llama_model_quantize(str(src).encode(), str(temp).encode(), params)
        finally:
            stop.set()
            watcher.join()
        if status != 0:
            raise AhaError(f"llama.cpp could not quantize {src.name} to {key} (status {status}); "
                           "check that the input is a complete f16/bf16/f32 GGUF.")
        progress.update(expected, force=True)
    on_event(make_event("artifact", kind="gguf", path=str(out), bytes=out.stat().st_size, gguf_type=key))
    return out
