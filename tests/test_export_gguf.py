"""Our GGUF files run in llama.cpp exactly as the HF checkpoints run in transformers."""

from __future__ import annotations

import pytest

from engine.llama_backend import load_llama
from tests.conftest import ARCHS, nmse
from tests.tiny_models import ASSISTANT, EOS, THINK_CLOSE, THINK_OPEN, USER

HARD_TEXT = (f"{USER}Ünïcödé café 你好，世界 🙂👍 — 1234567 3.14159 -42\n\n   spaces\t\ttabs\r\n"
             f"I'll you've it's{ASSISTANT}{THINK_OPEN}\nLet me think… 12+35=47{THINK_CLOSE}\n\n"
             f"\\boxed{{47}}{EOS}  trailing  ")
LIMITS = {"f32": 1e-6, "f16": 1e-4, "bf16": 1e-4}


@pytest.fixture(scope="module")
def tokenizers(checkpoint):
    from transformers import AutoTokenizer

    return {arch: AutoTokenizer.from_pretrained(checkpoint(arch)) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("out_type", ["f32", "f16", "bf16"])
def test_tokens_and_logits_match_transformers(arch, out_type, checkpoint, gguf_file, tokenizers, hf_logits, llama_logits):

    path = gguf_file(arch, out_type)
    hf_ids = tokenizers[arch](HARD_TEXT, add_special_tokens=False).input_ids
    llm = load_llama(str(path), n_ctx=64, vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(HARD_TEXT.encode(), add_bos=False, special=True) == hf_ids
        assert llm.tokenize(b"hi", add_bos=True, special=False)[0] == tokenizers[arch].bos_token_id
    finally:
        llm.close()
    ids = [tokenizers[arch].bos_token_id, *hf_ids]
    reference = hf_logits(checkpoint(arch), ids)
    ours = llama_logits(path, ids)[:, : reference.shape[1]]
    assert nmse(ours, reference) <= LIMITS[out_type]


# NMSE of a quantized file's logits against the f32 file's, on the same tokens. Measured on the tiny random
# fixtures (whose small dimensions make quantization noise large): q8_0 8e-4 / 6e-4, q6_k 6e-3 / 4e-3,
# q4_k_m 0.049 / 0.046, q4_0 0.092 / 0.080 (qwen2 / llama). q4_k_m's bound sits between its own error and
# q4_0's: a file that fell back to a cruder type, or got a tensor's scales wrong, is caught.
QUANTIZED_LIMITS = {"q8_0": 1e-3, "q4_k_m": 0.075}


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("out_type", ["q8_0", "q4_k_m"])
def test_quantized_files_load_generate_and_stay_close(arch, out_type, gguf_file, tokenizers, llama_logits):

    ids = [tokenizers[arch].bos_token_id, *tokenizers[arch]("Please reason step by step: 12+35=").input_ids[1:]]
    f32 = llama_logits(gguf_file(arch, "f32"), ids)
    assert nmse(llama_logits(gguf_file(arch, out_type), ids), f32) <= QUANTIZED_LIMITS[out_type]
    llm = load_llama(str(gguf_file(arch, out_type)), n_ctx=128, verbose=False, n_threads=2)
    try:
        result = llm.create_completion("12+35=", max_tokens=8, temperature=0.0)
        assert result["usage"]["completion_tokens"] > 0
    finally:
        llm.close()


def test_q4_k_m_is_really_k_quantized(gguf_file):
    from gguf import GGUFReader

    types = {t.tensor_type.name for t in GGUFReader(gguf_file("qwen2", "q4_k_m")).tensors}
    assert "Q4_K" in types and "F32" in types
