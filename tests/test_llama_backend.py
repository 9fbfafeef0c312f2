"""engine.llama_backend: quantized models decode on CPUs with AMX (where llama.cpp's AMX repacking crashed)."""

from __future__ import annotations

import os
import subprocess
import sys

DECODE = """
import sys
from engine.llama_backend import load_llama
llm = load_llama(sys.argv[1], n_ctx=128, verbose=False, n_threads=2)
llm.eval(llm.tokenize(b"What is 2+2? Let me think.", add_bos=True))
print("decoded", llm.n_tokens)
"""


def _decode(path, **env):
    return subprocess.run([sys.executable, "-c", DECODE, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def len_prompt(path) -> int:
    from engine.llama_backend import load_llama

    llm = load_llama(path, n_ctx=64, verbose=False, n_threads=2, vocab_only=True)
    try:
        return len(llm.tokenize(b"What is 2+2? Let me think.", add_bos=True))
    finally:
        llm.close()


def test_quantized_models_decode_on_this_cpu(gguf_file):
    """In a child: a segfault here is a crash, not a failed assertion, and must not take the suite with it."""
    import llama_cpp

    from engine.llama_backend import amx_repack_unsafe

    amx = b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()
    assert amx_repack_unsafe() is amx
    for out_type in ("q8_0", "q4_k_m"):
        done = _decode(gguf_file("qwen2", out_type))
        assert done.returncode == 0, (out_type, done.returncode, done.stderr[-300:])
        assert done.stdout.split() == ["decoded", str(len_prompt(gguf_file("qwen2", "f16")))]


def test_llama_cpp_defaults_are_put_back_after_a_load(gguf_file):
    import llama_cpp
    import llama_cpp.llama as wrapper

    from engine import llama_backend

    default = wrapper.llama_cpp.llama_model_default_params
    with llama_backend._no_extra_buffers():
        assert wrapper.llama_cpp.llama_model_default_params().use_extra_bufts is False
    assert wrapper.llama_cpp.llama_model_default_params is default
    assert llama_cpp.llama_model_default_params().use_extra_bufts is True
    llama_backend.load_llama(gguf_file("qwen2", "f16"), n_ctx=64, verbose=False, n_threads=2).close()
    assert wrapper.llama_cpp.llama_model_default_params is default
