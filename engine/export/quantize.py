"""Quantize a GGUF file with llama.cpp's own quantizer (`llama_model_quantize` in llama-cpp-python).

Knows the type names users type (q4_k_m, q6_k…) and which types need an importance matrix (refused:
Aha does not compute one). Progress is reported from the growing output file against the expected
size, since llama.cpp's quantizer has no callback; llama.cpp's own log (a line per metadata key and per
tensor) is kept off the terminal: its last warning (the summary) is one log line, its first error goes
into the AhaError.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from engine.errors import AhaError, Cancelled
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


# ggml_log_level in the llama.cpp that llama-cpp-python ships (its _logger.py still has the older numbering).
LOG_WARN, LOG_ERROR, LOG_CONT = 3, 4, 5


@contextlib.contextmanager
def quiet_llama_log() -> Iterator[dict[str, list[str]]]:
    """Route llama.cpp's log (llama_log_set also sets ggml's) into lists instead of stderr while the block
    runs: yields {"warnings": [...], "errors": [...]}, one entry per message (continuations joined), info
    and debug dropped. The previous handler, llama-cpp-python's, is put back afterwards."""
    import llama_cpp
    import llama_cpp._logger

    kept: dict[str, list[str]] = {"warnings": [], "errors": []}
    previous: list[list[str] | None] = [None]  # where the last message went (None: dropped), for LOG_CONT

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data) -> None:
        message = text.decode("utf-8", "replace")
        if level != LOG_CONT:
            previous[0] = {LOG_WARN: kept["warnings"], LOG_ERROR: kept["errors"]}.get(level)
            if previous[0] is not None:
                previous[0].append(message)
        elif previous[0] is not None:
            previous[0][-1] += message

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield kept
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))


def log_line(message: str) -> str:
    """A llama.cpp log message as one line, without its function prefix: "llama_model_quantize_impl:
    WARNING: 3 of 9 tensor(s) …" → "3 of 9 tensor(s) …"."""
    return re.sub(r"^\w+: (WARNING: )?", "", " ".join(message.split()))


def _watch_size(path: Path, progress: Progress, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        if path.exists():
            progress.update(min(path.stat().st_size, progress.total * 0.99))


def quantize_gguf(src: Path | str, out: Path | str, quant_type: str, *, force: bool = False,
                  n_threads: int | None = None, on_event: OnEvent = ignore, cancel=None) -> Path:
    """src (an f16/bf16/f32 GGUF) → out in `quant_type`, through llama.cpp. Written atomically. llama.cpp's
    quantizer cannot be interrupted: a cancel is honoured when it returns, before the file is renamed
    into place."""
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
        progress = Progress(on_event, "quantize", expected, unit="B", label=f"quantizing to {key}")
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_size, args=(temp, progress, stop), daemon=True)
        watcher.start()
        try:
            with quiet_llama_log() as log:
                status = llama_cpp.llama_model_quantize(str(src).encode(), str(temp).encode(), params)
        finally:
            stop.set()
            watcher.join()
        if status != 0:
            reason = f": {log_line(log['errors'][0])}" if log["errors"] else f" (status {status})"
            raise AhaError(f"llama.cpp could not quantize {src.name} to {key}{reason}; "
                           "check that the input is a complete f16/bf16/f32 GGUF.")
        if cancel is not None and cancel.cancelled:
            raise Cancelled("export cancelled while quantizing; no file was written.")
        progress.update(expected, force=True)
    if log["warnings"]:  # the last one sums up the others ("15 of 27 tensor(s) required fallback quantization")
        on_event(make_event("log", level="warning", message=f"llama.cpp: {log_line(log['warnings'][-1])}"))
    on_event(make_event("artifact", kind="gguf", path=str(out), bytes=out.stat().st_size, gguf_type=key))
    return out
