"""The export check (engine.export.check), expected sizes (engine.export.sizes) and the Ollama connection line,
on the tiny real checkpoints: llama.cpp and transformers both run; the Ollama is tests/fake_ollama.py (Ollama
itself cannot be installed here)."""

from __future__ import annotations

import socket

import pytest

from engine import r1
from engine.errors import AhaError
from engine.export.check import (
    CheckItem,
    TokenComparison,
    check_export,
    comparison_item,
    modelfile_template,
    ollama_show_item,
    ollama_thinking_item,
)
from engine.export.ollama import R1_GO_TEMPLATE, connection_status, modelfile_text
from engine.export.pipeline import export, stages
from engine.export.sizes import expected_sizes
from tests.fake_ollama import FakeOllama

NO_THINK_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                     "{{ '<｜User｜>' + message['content'] }}{% else %}{{ '<｜Assistant｜>' + message['content'] }}"
                     "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}")


def by_name(check) -> dict[str, CheckItem]:
    return {item.name: item for item in check.items}


@pytest.mark.parametrize("out_type", ["f32", "f16"])
def test_a_good_export_passes_with_identical_tokens(out_type, gguf_file, checkpoint):
    check = check_export(gguf_file("qwen2", out_type), checkpoint("qwen2"))
    items = by_name(check)
    assert check.passed, [item.message for item in check.items]
    assert items["chat template"].status == "pass" and "opens <think>" in items["chat template"].message
    assert items["think tokens"].status == "pass"
    assert items["Ollama thinking"].status == "pass"
    tokens = [item for item in check.items if item.name.startswith("tokens")]
    assert len(tokens) == 3 and all(item.message.startswith("identical for 16 tokens (logits NMSE ") for item in tokens)
    assert all(c.diverged_at is None and c.prompt_diverged_at is None for c in check.comparisons)
    assert all(c.logits_nmse < 1e-5 for c in check.comparisons)  # measured: ~1e-6 (f16), ~2e-7 (f32)
    assert check.as_dict()["passed"] is True and check.as_dict()["gguf_type"] == out_type


def test_a_template_that_lost_think_fails_with_the_reason(gguf_with_template):
    check = check_export(gguf_with_template("no-think", NO_THINK_TEMPLATE))
    item = by_name(check)["chat template"]
    assert not check.passed
    assert item.status == "fail"
    assert item.message.startswith("the chat template never writes <think> (the generation prompt ends with ")
    assert "<｜Assistant｜>'" in item.message


def test_a_gguf_without_a_template_fails(gguf_with_template):
    item = by_name(check_export(gguf_with_template("none", None)))["chat template"]
    assert item.status == "fail" and "carries no chat template" in item.message


def test_the_merged_adapter_is_compared_with_base_plus_adapter(checkpoint, tmp_path):
    """The reference is transformers with the PEFT adapter unmerged; against the bare base the same GGUF
    diverges, so the token check can fail."""
    from tests.tiny_models import make_lora_adapter

    base = checkpoint("qwen2")
    adapter = make_lora_adapter(base, tmp_path / "adapter", r=4, alpha=64)
    out = tmp_path / "merged.gguf"
    result = export(base, out, "f32", adapter=adapter, check=True)
    assert result["check"]["passed"], result["check"]["items"]
    assert all(c["diverged_at"] is None for c in result["check"]["comparisons"])
    against_base = check_export(out, base)
    failed = [item for item in against_base.items if item.status == "fail"]
    assert len(failed) == 3 and all(item.name.startswith("tokens") for item in failed)
    assert all("the conversion or the merge is wrong" in item.message for item in failed)
    assert all(c.logits_nmse > 1e-2 for c in against_base.comparisons)


def test_a_k_quant_diverging_is_a_note_not_a_failure(gguf_file, checkpoint):
    check = check_export(gguf_file("qwen2", "q4_k_m"), checkpoint("qwen2"))
    tokens = [item for item in check.items if item.name.startswith("tokens")]
    assert check.gguf_type == "q4_k_m" and check.passed
    assert all(item.status in ("pass", "note") for item in tokens)
    assert any("expected for q4_k_m" in item.message for item in tokens)  # random weights: they do diverge


def test_comparison_lines_strict_near_tie_and_tokenizer():
    diverged = TokenComparison("p", 16, diverged_at=3, hf_token="a", gguf_token="b", hf_margin=0.5)
    assert comparison_item(1, diverged, "f16").status == "fail"
    assert comparison_item(1, diverged, "q5_k_m").status == "note"
    tie = TokenComparison("p", 16, diverged_at=3, hf_token="a", gguf_token="b", hf_margin=0.001)
    assert comparison_item(1, tie, "bf16").status == "note" and "near tie" in comparison_item(1, tie, "bf16").message
    noisy = TokenComparison("p", 16, logits_nmse=2e-3)  # same tokens, logits far off for f16, fine for q8_0
    assert comparison_item(1, noisy, "f16").status == "fail" and "logits NMSE 0.002" in comparison_item(1, noisy, "f16").message
    assert comparison_item(1, noisy, "q8_0").status == "pass"
    tokenized = TokenComparison("p", 16, prompt_diverged_at=5)
    assert "tokenizes prompt 2 differently" in comparison_item(2, tokenized, "f16").message


def test_ollama_rule_both_tags_in_the_template():
    assert ollama_thinking_item(R1_GO_TEMPLATE).status == "pass"
    assert modelfile_template(modelfile_text("m.gguf", num_ctx=4096)) == R1_GO_TEMPLATE
    lost = ollama_thinking_item(R1_GO_TEMPLATE.replace(r1.THINK_CLOSE, ""))
    assert lost.status == "fail" and lost.message.startswith("the Modelfile TEMPLATE lacks </think>: Ollama will not")
    assert ollama_thinking_item(modelfile_template("FROM ./m.gguf\n")).status == "fail"
    assert ollama_show_item("aha", {"capabilities": ["completion", "thinking"]}).status == "pass"
    assert "capabilities: completion" in ollama_show_item("aha", {"capabilities": ["completion"]}).message


def test_a_modelfile_that_lost_think_fails_the_ollama_line(gguf_file, tmp_path):
    modelfile = tmp_path / "x.Modelfile"
    modelfile.write_text(modelfile_text("x.gguf", num_ctx=512, template="{{ .Prompt }}"), encoding="utf-8")
    item = by_name(check_export(gguf_file("qwen2", "f16"), modelfile=modelfile))["Ollama thinking"]
    assert item.status == "fail" and "lacks <think> and </think>" in item.message


def test_check_is_a_stage_and_refused_for_an_adapter_only_export(checkpoint, tmp_path):
    assert stages("q4_k_m", ollama="m", check=True) == ["write", "quantize", "register", "check"]
    assert stages("f16") == ["write"]
    with pytest.raises(AhaError, match="adapter-only GGUF has no model to run"):
        export(checkpoint("qwen2"), tmp_path / "a.gguf", adapter=tmp_path, adapter_only=True, check=True)


def test_expected_sizes_match_the_files(checkpoint, gguf_file):
    sizes = expected_sizes(checkpoint("qwen2"))
    for out_type in ("f32", "f16", "q8_0", "q4_k_m"):
        actual = gguf_file("qwen2", out_type).stat().st_size
        assert abs(sizes[out_type] - actual) / actual < 0.03, (out_type, sizes[out_type], actual)
    order = ["f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"]
    assert [sizes[key] for key in order] == sorted((sizes[key] for key in order), reverse=True)
    assert sizes["f16"] == sizes["bf16"]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_connection_status_running_and_not_running():
    with FakeOllama(version="0.9.1") as url:
        assert connection_status(url) == f"Ollama 0.9.1 is running at {url}"
    port = closed_port()
    with pytest.raises(AhaError) as error:
        connection_status(f"127.0.0.1:{port}")
    assert str(error.value) == (f"Ollama is not running at http://127.0.0.1:{port} (connection refused): start it "
                                "with `ollama serve` (or set OLLAMA_HOST)")


def test_connection_status_reads_ollama_host(monkeypatch):
    with FakeOllama() as url:
        monkeypatch.setenv("OLLAMA_HOST", url.removeprefix("http://"))
        assert connection_status().endswith(f"is running at {url}")


def test_the_form_plan_names_outputs_and_commands(checkpoint, tmp_path):
    """engine.export.plan, what the Export pane asks: a source described, refused in one line when it is
    an adapter without a base, the default output name and the exact command line."""
    from engine.export import plan
    from tests.tiny_models import make_lora_adapter

    base = checkpoint("qwen2")
    source = plan.describe_source(str(base))
    assert source.adapter is None and source.sizes == expected_sizes(base)
    assert plan.output_name(source, "q4_k_m") == "qwen2-q4_k_m.gguf"
    adapter = make_lora_adapter(base, tmp_path / "grpo-3" / "final" / "adapter", r=4)
    config = tmp_path / "grpo-3" / "final" / "adapter" / "adapter_config.json"
    config.write_text(config.read_text().replace(str(base), ""), encoding="utf-8")  # no base recorded
    with pytest.raises(AhaError, match="is a LoRA adapter: choose the base checkpoint folder"):
        plan.describe_source(str(adapter))
    merged = plan.describe_source(str(adapter), str(base))
    assert merged.rank == 4 and plan.output_name(merged, "f16", adapter_only=True) == "qwen2-grpo-3-lora-f16.gguf"
    assert plan.export_args(merged, "o.gguf", "f16", num_ctx=4096, ollama="m", check=True) == [
        "export", str(base), "-o", "o.gguf", "--type", "f16", "--adapter", str(adapter), "--num-ctx", "4096",
        "--ollama", "m", "--check"]
    assert plan.ollama_name("/x/Qwen2 R1-f16.gguf") == "qwen2-r1-f16"
