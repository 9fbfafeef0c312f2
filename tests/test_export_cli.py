"""`aha export` from the command line: bad input gives one line and no partial file; events; Ollama; the types
that go through llama.cpp's quantizer (real files of that type, the f16 intermediate removed after); the free
disk space check."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.llama_backend import load_llama
from tests.fake_ollama import FakeOllama


def aha(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, env=env)


def assert_one_line_error(result, *words):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aha: error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_missing_folder(tmp_path):
    result = aha("export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out" / "m.gguf"))
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unsupported_architecture(checkpoint, tmp_path):
    folder = tmp_path / "gpt2ish"
    shutil.copytree(checkpoint("qwen2"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    config["model_type"] = "mistral"
    (folder / "config.json").write_text(json.dumps(config))
    result = aha("export", str(folder), "-o", str(tmp_path / "m.gguf"))
    assert_one_line_error(result, "unsupported architecture MistralForCausalLM")
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*partial*")) == []


@pytest.mark.parametrize("cut", ["header", "data"])
def test_corrupt_safetensors(checkpoint, tmp_path, cut):
    folder = tmp_path / "broken"
    shutil.copytree(checkpoint("qwen2"), folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:200] if cut == "header" else data[: len(data) // 2])
    result = aha("export", str(folder), "-o", str(tmp_path / "m.gguf"))
    assert_one_line_error(result, "model.safetensors")
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*partial*")) == []


def test_adapter_for_another_base(checkpoint, tmp_path):
    from tests.tiny_models import make_lora_adapter

    adapter = make_lora_adapter(checkpoint("qwen3"), tmp_path / "adapter")
    result = aha("export", str(checkpoint("qwen2")), "-o", str(tmp_path / "m.gguf"), "--adapter", str(adapter))
    assert_one_line_error(result, "another base model")
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*")) == []


@pytest.mark.parametrize("out_type,words", [("q9_z", ["unknown GGUF type"]), ("iq2_xs", ["importance matrix"])])
def test_unknown_or_imatrix_type(checkpoint, tmp_path, out_type, words):
    result = aha("export", str(checkpoint("qwen2")), "-o", str(tmp_path / "m.gguf"), "--type", out_type)
    assert_one_line_error(result, *words)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_force(checkpoint, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"the user's file")
    result = aha("export", str(checkpoint("qwen2")), "-o", str(out))
    assert_one_line_error(result, "already exists", "--force")
    assert out.read_bytes() == b"the user's file"
    forced = aha("export", str(checkpoint("qwen2")), "-o", str(out), "--force")
    assert forced.returncode == 0 and out.read_bytes()[:4] == b"GGUF"


def test_events_jsonl_and_ollama_registration(checkpoint, tmp_path, monkeypatch):
    import os

    with FakeOllama() as url:
        env = {**os.environ, "OLLAMA_HOST": url}
        result = aha("export", str(checkpoint("qwen2")), "-o", str(tmp_path / "r1.gguf"), "--type", "q8_0",
                     "--ollama", "aha-r1:test", "--events", "jsonl", env=env)
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        kinds = [e["type"] for e in events]
        assert kinds[-1] == "done" and "progress" in kinds
        progress = [e for e in events if e["type"] == "progress" and e["unit"] == "B"]
        assert progress[-1]["done"] == progress[-1]["total"]
        artifacts = {e["kind"] for e in events if e["type"] == "artifact"}
        assert {"gguf", "modelfile", "ollama"} <= artifacts
        from engine.export.ollama import OllamaClient

        shown = OllamaClient(url).show("aha-r1:test")
        assert "thinking" in shown["capabilities"]
    modelfile = (tmp_path / "r1.Modelfile").read_text()
    assert modelfile.startswith("FROM ./r1.gguf") and modelfile.count("PARAMETER stop") == 4


def test_an_unreachable_ollama_is_said_first_and_nothing_is_written(checkpoint, tmp_path):
    """With --ollama and no Ollama listening, the one "cannot reach Ollama" line comes before any work:
    nothing converted (no progress line), no folder or file made."""
    import os
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}"}
    out = tmp_path / "out" / "r1.gguf"
    result = aha("export", str(checkpoint("qwen2")), "-o", str(out), "--type", "q4_k_m", "--ollama", "aha-r1",
                 env=env)
    assert_one_line_error(result, f"cannot reach Ollama at http://127.0.0.1:{port}", "ollama serve")
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_aha_without_arguments_prints_help():
    result = aha()
    assert result.returncode == 0 and "export" in result.stdout and "usage: aha" in result.stdout


# Types through llama.cpp's quantizer ---------------------------------------------------------------

# type → (the tensor type of the weight matrices, general.file_type's LLAMA_FTYPE constant name, what
# read_gguf_info reports, an NMSE bound against the f32 file's logits). llama.cpp keeps norms and biases
# in F32 and puts output.weight (and, for the _M mixes, some attn_v/ffn_down) in Q6_K. Measured NMSE on the
# tiny qwen2 fixture: q4_0 0.092, q5_k_m 0.014, q6_k 0.0057; a file that fell back to a cruder type, or
# whose blocks were scrambled, is caught.
QUANTIZED = {
    "q4_0": ("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_0", 0.15),
    "q5_k_m": ("Q5_K", "LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q5_K_M", 0.03),
    "q6_k": ("Q6_K", "LLAMA_FTYPE_MOSTLY_Q6_K", "Q6_K", 0.012),
}


@pytest.mark.parametrize("out_type", sorted(QUANTIZED))
def test_quantizer_types_are_really_that_type_and_run(out_type, gguf_file, checkpoint, llama_logits):
    """q4_0, q5_k_m and q6_k exports (through llama.cpp's quantizer) are files of that type: the weight
    matrices' tensor types as GGUFReader reads them, general.file_type, the quantization Aha's library
    reports; llama.cpp loads them, their logits stay close to the f32 file's, and they generate."""
    import llama_cpp
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from engine.models import read_gguf_info
    from tests.conftest import nmse

    weights_type, ftype_name, reported, bound = QUANTIZED[out_type]
    path = gguf_file("qwen2", out_type)
    reader = GGUFReader(path)
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    matrices = {name: kind for name, kind in types.items() if name.endswith(".weight") and kind != "F32"}
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == types["blk.1.ffn_up.weight"] == weights_type
    assert set(matrices.values()) <= {weights_type, "Q6_K"}, matrices
    assert sum(kind == weights_type for kind in matrices.values()) > len(matrices) / 2
    assert {kind for name, kind in types.items() if name not in matrices} == {"F32"}  # norms and biases
    assert int(reader.fields["general.file_type"].parts[-1][0]) == getattr(llama_cpp, ftype_name)
    assert read_gguf_info(path).quantization == reported

    tokenizer = AutoTokenizer.from_pretrained(checkpoint("qwen2"))
    ids = [tokenizer.bos_token_id, *tokenizer("Please reason step by step: 12+35=").input_ids[1:]]
    assert nmse(llama_logits(path, ids), llama_logits(gguf_file("qwen2", "f32"), ids)) <= bound
    llm = load_llama(str(path), n_ctx=128, verbose=False, n_threads=2)
    try:
        assert llm.create_completion("12+35=", max_tokens=8, temperature=0.0)["usage"]["completion_tokens"] > 0
    finally:
        llm.close()


def test_a_k_quant_export_shows_only_ahas_lines_and_names_the_file_once(tmp_path):
    """`aha export --type q4_k_m` in a child process, its stdout and stderr read at the file descriptors:
    none of llama.cpp's loader or per-tensor log, only Aha's lines (a warning, the bars, "wrote …"), the
    fallback quantization llama.cpp reports for a model 128 wide summed up in one warning, and the output
    path named once."""
    from tests.tiny_models import TinySpec, make_checkpoint

    narrow = make_checkpoint(tmp_path / "narrow", TinySpec("qwen2", tied=False, hidden=128, ffn=384))
    out = tmp_path / "out" / "m.gguf"
    result = aha("export", str(narrow), "-o", str(out), "--type", "q4_k_m")
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert not [line for line in lines if "llama_model" in line or "converting to" in line or "kv " in line], lines
    assert all(line.startswith(("warning: ", "writing f16.gguf ", "quantizing to q4_k_m ", "wrote "))
               for line in lines), lines
    assert [line for line in lines if "llama.cpp:" in line] == [
        "warning: llama.cpp: 15 of 27 tensor(s) required fallback quantization"]
    assert (result.stdout + result.stderr).count(str(out)) == 1
    # The f16 intermediate, removed after, is no result: only the two files left are named.
    assert [line for line in lines if line.startswith("wrote ")] == [f"wrote {out}",
                                                                     f"wrote {out.with_suffix('.Modelfile')}"]


def test_a_quantizer_error_names_llama_cpps_reason(tmp_path):
    """llama.cpp's log is silenced during quantization, but its error still reaches the user's one line."""
    from engine.errors import AhaError
    from engine.export.quantize import quantize_gguf

    not_gguf = tmp_path / "config.gguf"
    not_gguf.write_text("{}" * 64)
    with pytest.raises(AhaError, match=r"could not quantize config.gguf to q4_k_m: invalid magic characters"):
        quantize_gguf(not_gguf, tmp_path / "m.gguf", "q4_k_m")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("outcome", ["quantized", "quantizer failed"])
def test_k_quant_intermediate_f16_is_removed(outcome, checkpoint, tmp_path, monkeypatch):
    """A k-quant export writes an f16 GGUF first (in a hidden work folder beside the output) and quantizes
    that; afterwards — done, or failed in the quantizer — the output folder holds only the result and its
    Modelfile (or is gone: the export made it), and the temp dir nothing."""
    import tempfile

    import llama_cpp
    from gguf import GGUFReader

    from engine.errors import AhaError
    from engine.export import quantize
    from engine.export.pipeline import export

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TMPDIR", str(temp))
    seen = {}
    real_quantize = quantize.quantize_gguf

    def watching(src, out, quant_type, **kwargs):
        seen.update(path=Path(src), existed=Path(src).is_file(),
                    file_type=int(GGUFReader(src).fields["general.file_type"].parts[-1][0]))
        return real_quantize(src, out, quant_type, **kwargs)

    monkeypatch.setattr(quantize, "quantize_gguf", watching)
    if outcome == "quantizer failed":
        monkeypatch.setattr(llama_cpp, "llama_model_quantize", lambda *args: 1)
    out = tmp_path / "out" / "m.gguf"
    if outcome == "quantized":
        export(checkpoint("qwen2"), out, "q5_k_m")
        assert sorted(path.name for path in out.parent.iterdir()) == ["m.Modelfile", "m.gguf"]
        assert GGUFReader(out).fields["general.file_type"].parts[-1][0] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M
    else:
        with pytest.raises(AhaError, match="could not quantize"):
            export(checkpoint("qwen2"), out, "q5_k_m")
        assert not out.parent.exists()  # nothing, not even the folder the export made
    assert seen["existed"] and seen["file_type"] == llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    assert seen["path"].parent.parent == out.parent and not seen["path"].exists()
    assert list(temp.iterdir()) == []


# Free disk space -----------------------------------------------------------------------------------


@pytest.mark.parametrize("out_type", ["f16", "q4_k_m"])
def test_too_little_disk_space_refuses_the_export(out_type, checkpoint, tmp_path, monkeypatch, capsys):
    """With the disk's free space faked (shutil.disk_usage, as engine.fileio reads it) below the file's size
    plus the margin, `aha export` stops with one line saying how much is needed and free, exit 2, and leaves
    no file (no partial, no f16 intermediate); with enough free space the same export goes through."""
    import types

    from engine import cli

    free = {"bytes": 10 * 10**6}  # a ~3 MB f16 file + the 64 MiB margin does not fit
    monkeypatch.setattr("engine.fileio.shutil.disk_usage",
                        lambda path: types.SimpleNamespace(total=10**12, used=10**12 - free["bytes"],
                                                           free=free["bytes"]))
    out = tmp_path / "out" / "m.gguf"
    base = checkpoint("qwen2")
    capsys.readouterr()  # what building the fixture printed
    assert cli.main(["export", str(base), "-o", str(out), "--type", out_type]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aha: error: not enough disk space in "), lines
    assert re.search(r"need about \d+\.\d MB, 10\.0 MB free; free some space or write elsewhere\.$", lines[0]), lines
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # nothing, not even its folder
    free["bytes"] = 100 * 10**6
    assert cli.main(["export", str(base), "-o", str(out), "--type", out_type]) == 0
    assert sorted(path.name for path in out.parent.iterdir()) == ["m.Modelfile", "m.gguf"]


@pytest.mark.parametrize("step", ["quantize", "merge"])
def test_every_file_an_export_writes_checks_the_space_it_needs(step, checkpoint, tmp_path, monkeypatch, capsys):
    """A k-quant export writes the quantized file while the f16 intermediate is still on disk, and --adapter
    first writes the merged checkpoint: each checks its own size against the disk's free space (faked: ample
    until the step under test asks), so a full disk is one line before the step, never a failed write."""
    import types

    from engine import cli
    from tests.tiny_models import make_lora_adapter

    base = checkpoint("qwen2")
    adapter = make_lora_adapter(base, tmp_path / "adapter") if step == "merge" else None
    calls = []

    def disk_usage(path):
        calls.append(str(path))
        full = (step == "quantize" and len(calls) == 2) or (step == "merge" and len(calls) == 1)
        free = 10**6 if full else 10**12
        return types.SimpleNamespace(total=10**12, used=10**12 - free, free=free)

    monkeypatch.setattr("engine.fileio.shutil.disk_usage", disk_usage)
    out = tmp_path / "out" / "m.gguf"
    args = ["export", str(base), "-o", str(out), "--type", "q4_k_m" if step == "quantize" else "f16"]
    capsys.readouterr()  # what building the fixtures printed
    assert cli.main(args + (["--adapter", str(adapter)] if adapter else [])) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("aha: error: not enough disk space in "), errors
    assert len(calls) == (2 if step == "quantize" else 1)  # stopped at the step under test
    assert not out.parent.exists()  # no output, no intermediate, not even the folder the export made
