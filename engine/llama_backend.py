"""Loading a GGUF into llama.cpp the one way Aha does: around llama.cpp's AMX crash.

On CPUs with AMX (Intel Sapphire Rapids and later) llama.cpp moves quantized weights (q4_0, q8_0, q4_K …) into
its AMX buffer, and its AMX matrix multiply segfaults on some models (ggml-org/llama.cpp#20824, closed
unfixed; dspy took the AMX build out of its CI for it). Here every tiny q8_0 and q4_k_m test model crashed
the process at its first decode. A crash loses the user's reply and the window, so where llama.cpp reports
AMX_INT8, Aha loads without the extra buffer types, as llama.cpp's own `--no-repack` does (weights stay
in the plain CPU buffer: no crash, slower prompt processing on those CPUs). AHA_LLAMA_REPACK=1 turns the
repacking back on. Nothing changes on other CPUs or with a GPU build's offloaded layers.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from pathlib import Path

_LOCK = threading.Lock()


@functools.cache
def amx_repack_unsafe() -> bool:
    """Whether this llama.cpp build would repack weights for AMX (and the user has not asked for it)."""
    import llama_cpp

    if os.environ.get("AHA_LLAMA_REPACK") == "1":
        return False
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


@contextlib.contextmanager
def _no_extra_buffers():
    """llama_cpp.Llama takes llama.cpp's default model parameters and sets only those it knows; while this is
    active the defaults say use_extra_bufts = false (llama-cpp-python has no argument for it)."""
    import llama_cpp.llama as wrapper

    low_level = wrapper.llama_cpp
    default = low_level.llama_model_default_params

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    with _LOCK:
        low_level.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            low_level.llama_model_default_params = default


def load_llama(path: Path | str, **kwargs):
    """llama_cpp.Llama(path, **kwargs), without AMX repacking where it crashes (see the module's docstring)."""
    import llama_cpp

    guard = _no_extra_buffers() if amx_repack_unsafe() else contextlib.nullcontext()
    with guard:
        return llama_cpp.Llama(model_path=str(path), **kwargs)
