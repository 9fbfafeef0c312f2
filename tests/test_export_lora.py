"""LoRA adapters: merged in float32, or written as a GGUF LoRA that llama.cpp applies to the base."""

from __future__ import annotations

import pytest

from engine.errors import AhaError
from tests.conftest import nmse
from tests.tiny_models import make_lora_adapter

PROMPT_IDS_TEXT = "Please reason step by step: 12+35=47, so"


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def lora_case(request, checkpoint, tmp_path_factory):
    arch = request.param
    base = checkpoint(arch)
    work = tmp_path_factory.mktemp(f"lora-{arch}")
    adapter = make_lora_adapter(base, work / "adapter")
    return arch, base, adapter, work


def ids_for(base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)(PROMPT_IDS_TEXT).input_ids


def test_merged_checkpoint_equals_base_plus_adapter(lora_case, hf_logits):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.export.lora import merge_adapter

    arch, base, adapter, work = lora_case
    merged = merge_adapter(base, adapter, work / "merged")
    ids = ids_for(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    with torch.no_grad():
        with_adapter = model(torch.tensor([ids])).logits[0].numpy()
    without = hf_logits(base, ids)
    assert nmse(hf_logits(merged, ids), with_adapter) <= 1e-6
    assert nmse(without, with_adapter) > 1e-3  # the adapter really changes the model


def test_gguf_adapter_on_base_matches_merged_gguf(lora_case, gguf_file, llama_logits):
    from engine.export.pipeline import export

    arch, base, adapter, work = lora_case
    merged_gguf = export(base, work / "merged-f32.gguf", "f32", adapter=adapter)["gguf"]
    lora_gguf = export(base, work / "adapter-f32.gguf", "f32", adapter=adapter, adapter_only=True)["gguf"]
    ids = ids_for(base)
    merged = llama_logits(merged_gguf, ids)
    applied = llama_logits(gguf_file(arch, "f32"), ids, lora=lora_gguf)
    assert nmse(applied, merged) <= 1e-4
    assert nmse(llama_logits(gguf_file(arch, "f32"), ids), merged) > 1e-3


@pytest.mark.parametrize("option,word", [({"use_dora": True}, "DoRA"), ({"use_rslora": True}, "rsLoRA"),
                                         ({"modules_to_save": ["lm_head"]}, "modules_to_save")])
def test_unrepresentable_adapters_are_refused_with_merge_advice(option, word, checkpoint, tmp_path):
    from engine.export.lora import write_lora_gguf

    adapter = make_lora_adapter(checkpoint("qwen2"), tmp_path / "adapter", **option)
    with pytest.raises(AhaError, match=f"{word}.*merge"):
        write_lora_gguf(checkpoint("qwen2"), adapter, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def test_adapter_for_another_base_is_refused(checkpoint, tmp_path):
    from engine.export.lora import merge_adapter

    adapter = make_lora_adapter(checkpoint("qwen3"), tmp_path / "qwen3-adapter")
    with pytest.raises(AhaError, match="another base model"):
        merge_adapter(checkpoint("qwen2"), adapter, tmp_path / "merged")
