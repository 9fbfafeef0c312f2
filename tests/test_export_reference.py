"""Our writer produces what llama.cpp's own convert_hf_to_gguf.py produces, tensor for tensor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ARCHS
from tests.support.gguf_compare import differences

RUNNER = Path(__file__).parent / "support" / "reference_converter.py"


def reference_gguf(checkpoint: Path, out: Path, out_type: str, pre: str) -> Path:
    if not out.exists():
        subprocess.run([sys.executable, str(RUNNER), pre, str(checkpoint), "--outfile", str(out),
                        "--outtype", out_type], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("out_type", ["f32", "f16", "bf16", "q8_0"])
def test_same_file_as_llama_cpp_converter(arch, out_type, checkpoint, gguf_file, tmp_path_factory):
    from gguf import GGUFReader

    ours = gguf_file(arch, out_type)
    pre = bytes(GGUFReader(ours).fields["tokenizer.ggml.pre"].parts[-1]).decode()
    reference = reference_gguf(checkpoint(arch), tmp_path_factory.getbasetemp() / f"ref-{arch}-{out_type}.gguf",
                               out_type, pre)
    assert differences(ours, reference) == []


def test_pre_tokenizer_is_chosen_like_llama_cpp(gguf_file):
    from gguf import GGUFReader

    def pre(arch):
        return bytes(GGUFReader(gguf_file(arch, "f16")).fields["tokenizer.ggml.pre"].parts[-1]).decode()

    # Unknown (trained-on-the-fly) tokenizers get the pre-tokenizer whose regex is identical to theirs.
    assert pre("qwen2") == "qwen2" and pre("qwen3") == "qwen2" and pre("llama") == "llama-bpe"


def test_known_hashes_map_like_llama_cpp():
    from engine.export.pretokenizers import KNOWN_HASHES

    assert KNOWN_HASHES["b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5"] == "deepseek-r1-qwen"
    assert KNOWN_HASHES["0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"] == "llama-bpe"


def test_comparison_notices_a_different_file(gguf_file):
    diffs = differences(gguf_file("qwen2", "f16"), gguf_file("qwen2", "f32"))
    assert any("general.file_type" in d for d in diffs) and any("token_embd.weight" in d for d in diffs)
