"""The export runs from the base install: no torch, transformers or peft, and the same files.

A child process refuses those imports (a meta-path finder that raises ImportError) and exports a tiny
checkpoint plain, with a LoRA merged and as a GGUF LoRA; its files are compared with the exports of this
process, where they are importable, and its merge with peft's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import make_lora_adapter

ROOT = Path(__file__).resolve().parents[1]

BLOCKED_EXPORT = """
import sys
BLOCKED = ("torch", "transformers", "peft")
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(name + " is blocked: the export must not import it")
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {root!r})
from engine.errors import AhaError
from engine.export.pipeline import export
base, adapter, work = {base!r}, {adapter!r}, {work!r}
export(base, work + "/plain.gguf", "f16")
export(base, work + "/merged.gguf", "f32", adapter=adapter)
export(base, work + "/adapter.gguf", "f16", adapter=adapter, adapter_only=True)
try:
    export(base, work + "/checked.gguf", "f16", check=True)
except AhaError as error:
    print("check:", error)
print("imported:", sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED))
"""


@pytest.fixture(scope="module")
def blocked_exports(checkpoint, tmp_path_factory):
    """(base, adapter, work, stdout) after the blocked child's exports of the tiny Llama (permuted Q/K)."""
    base = checkpoint("llama")
    work = tmp_path_factory.mktemp("no-torch")
    adapter = make_lora_adapter(base, work / "adapter")
    result = subprocess.run([sys.executable, "-c", BLOCKED_EXPORT.format(root=str(ROOT), base=str(base),
                                                                         adapter=str(adapter), work=str(work))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return base, adapter, work, result.stdout


def tensors(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    return {tensor.name: np.array(tensor.data) for tensor in GGUFReader(path).tensors}


def test_export_imports_no_torch_and_writes_the_same_files(blocked_exports, gguf_file):
    """Without torch the plain export is byte for byte the one written with torch at hand, the adapter-only
    one too; torch never got imported; --check alone says it needs the train extra."""
    from engine.export.pipeline import export

    base, adapter, work, stdout = blocked_exports
    assert "imported: []" in stdout
    assert "check: --check runs the HF model in transformers, which needs the train extra" in stdout
    assert (work / "plain.gguf").read_bytes() == gguf_file("llama", "f16").read_bytes()
    here = export(base, work / "adapter-here.gguf", "f16", adapter=adapter, adapter_only=True)["gguf"]
    assert (work / "adapter.gguf").read_bytes() == here.read_bytes()
    assert not (work / "checked.gguf").exists()


def test_numpy_merge_equals_peft_merge(blocked_exports, tmp_path):
    """The merged export's weights (W + alpha/r·B·A in numpy, per row block) are peft's merge_and_unload
    weights, written by the same writer, to float32 rounding; the adapter really changed them."""
    from engine.export.gguf_writer import write_gguf
    from engine.export.lora import merge_adapter

    base, adapter, work, _ = blocked_exports
    peft_merged = tensors(write_gguf(merge_adapter(base, adapter, tmp_path / "peft"), tmp_path / "peft.gguf", "f32"))
    ours, plain = tensors(work / "merged.gguf"), tensors(gguf_plain_f32(base, tmp_path))
    assert ours.keys() == peft_merged.keys()
    worst = max(float(np.abs(ours[name] - peft_merged[name]).max() / (np.abs(peft_merged[name]).max() or 1))
                for name in ours)
    assert worst <= 1e-6
    assert not np.array_equal(ours["blk.0.attn_q.weight"], plain["blk.0.attn_q.weight"])
    assert np.array_equal(ours["blk.0.attn_norm.weight"], plain["blk.0.attn_norm.weight"])


def gguf_plain_f32(base: Path, work: Path) -> Path:
    from engine.export.gguf_writer import write_gguf

    return write_gguf(base, work / "plain-f32.gguf", "f32")


WRITER_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "head_dim", "tie_word_embeddings")


@pytest.mark.parametrize("hf_arch,model_type", [("Qwen2ForCausalLM", "qwen2"), ("LlamaForCausalLM", "llama"),
                                                ("Qwen3ForCausalLM", "qwen3")])
def test_sparse_config_reads_as_autoconfig_reads_it(hf_arch, model_type, tmp_path):
    """A config.json that leaves most keys out reads, for every key the writer uses, as transformers'
    AutoConfig reads it (as llama.cpp's converter does): its class defaults, kv heads = heads, Llama's
    head_dim; RoPE too, through Checkpoint.rope_parameters."""
    import json

    from transformers import AutoConfig

    from engine.export.checkpoint import SUPPORTED_ARCHITECTURES, Checkpoint, read_hparams

    raw = {"architectures": [hf_arch], "model_type": model_type, "hidden_size": 192, "num_attention_heads": 6,
           "rope_theta": 500000.0}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    auto = AutoConfig.from_pretrained(tmp_path).to_dict()
    ours = read_hparams(raw, SUPPORTED_ARCHITECTURES[hf_arch])
    assert {key: ours.get(key) for key in WRITER_KEYS} == {key: auto.get(key) for key in WRITER_KEYS}

    def rope(hparams):
        return Checkpoint(tmp_path, hparams, hf_arch, model_type, {}).rope_parameters

    assert rope(ours)["rope_theta"] == rope(auto)["rope_theta"] == 500000.0


@pytest.mark.parametrize("out_type", ["f32", "f16", "bf16", "q8_0"])
def test_row_blocks_write_the_same_bytes(out_type, monkeypatch, checkpoint, gguf_file, tmp_path):
    """Blocks of 1,000 elements (a 256-wide row at a time: every 2-D tensor in dozens of blocks, the
    bf16 bit casts and gguf-py's quantizers alike) write the file written with the default blocks, in
    which the tiny model's tensors are each one block; the reference test compares that file with llama.cpp's."""
    from engine.export import gguf_writer

    monkeypatch.setattr(gguf_writer, "ROW_BLOCK_ELEMENTS", 1000)
    blocked = gguf_writer.write_gguf(checkpoint("qwen2"), tmp_path / "blocked.gguf", out_type)
    assert blocked.read_bytes() == gguf_file("qwen2", out_type).read_bytes()
