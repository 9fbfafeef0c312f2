"""Model library: GGUF header reading (against gguf-py's reader, and broken files of every kind), the JSON
library, discovery in fake Ollama / LM Studio / HF-cache trees, name lookup, and Hub downloads from
tests/support/fake_hub.py on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import AhaError
from engine.jobs import CancelToken
from engine.models import (
    R1_DEFAULT,
    Library,
    check_gguf,
    describe,
    discover,
    discover_hf_cache,
    discover_lmstudio,
    discover_ollama,
    format_count,
    hf_cache_root,
    is_model_file,
    lmstudio_roots,
    match_entries,
    model_name,
    normalize_ollama_name,
    ollama_roots,
    pull,
    read_gguf_info,
)
from tests.support import platforms
from tests.support.fake_hub import COMMIT, FakeHub

REPO = "unsloth/Tiny-R1-GGUF"
FILE = "Tiny-R1-Q8_0.gguf"


@pytest.fixture(scope="module")
def tiny_gguf(gguf_file) -> Path:
    return gguf_file("qwen2", "q8_0")


@pytest.fixture(scope="module")
def tiny_bytes(tiny_gguf) -> bytes:
    return tiny_gguf.read_bytes()


def write_gguf(path: Path, *, name: str | None = "tiny", template: str | None = None,
               tokens: list[str] | None = None, file_type: int | None = None, tensors=None, endian=None) -> Path:
    """A small GGUF written with gguf-py: the metadata a test needs, and a few tensors."""
    import gguf

    kw = {"endianess": endian} if endian is not None else {}
    writer = gguf.GGUFWriter(path, "llama", **kw)
    if name is not None:
        writer.add_name(name)
    writer.add_context_length(2048)
    if file_type is not None:
        writer.add_file_type(file_type)
    if tokens is not None:
        writer.add_token_list(tokens)
    if template is not None:
        writer.add_chat_template(template)
    for tensor_name, array, raw_type in tensors or [("output_norm.weight", np.ones(32, np.float32), None),
                                                  ("token_embd.weight", np.ones((8, 32), np.float32), None)]:
        writer.add_tensor(tensor_name, array, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_one_line_error(path, match: str | None = None) -> str:
    with pytest.raises(AhaError) as caught:
        read_gguf_info(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    if match:
        assert match in message, message
    return message


# --- GGUF header ---------------------------------------------------------------------------------------------

def test_reads_the_fixture_like_gguf_reader(tiny_gguf):
    import gguf

    info = read_gguf_info(tiny_gguf)
    reader = gguf.GGUFReader(tiny_gguf)
    assert info.architecture == "qwen2" and info.name == "qwen2" and info.kind == "model"
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert info.tensor_count == len(reader.tensors) == 27
    assert info.quantization == "Q8_0"
    assert info.context_length == 4096
    assert info.chat_template == reader.fields["tokenizer.chat_template"].contents()
    assert info.is_reasoning and info.reasoning_from == "chat template"
    assert info.tokenizer_pre == "qwen2" and info.add_bos is True
    assert info.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].data)
    assert info.file_size == tiny_gguf.stat().st_size and info.version == 3 and info.split_count == 1
    assert info.metadata["tokenizer.ggml.bos_token_id"] == reader.fields["tokenizer.ggml.bos_token_id"].contents()
    rows = dict(describe(info))
    assert rows["quantization"] == "Q8_0" and rows["reasoning"] == "yes (from its chat template)"


@pytest.mark.parametrize(("kw", "expected"), [
    ({"template": "{{ '<｜Assistant｜><think>\\n' }}", "tokens": ["a", "b"]}, "chat template"),
    ({"template": "{{ messages }}", "tokens": ["a", "<think>", "</think>"]}, "vocabulary"),
    ({"name": "DeepSeek-R1-Distill-Qwen-1.5B"}, "name"),
    ({"name": "QwQ-32B"}, "name"),
    ({"name": "DeepSeek-R1-Distill-Qwen-1.5B", "tokens": ["a", "b"], "template": "{{ x }}"}, None),
    ({"name": "Qwen2.5-1.5B-Instruct"}, None),
    ({"name": "gpt2-r10"}, None),
])
def test_reasoning_is_decided_from_template_then_vocabulary_then_name(tmp_path, kw, expected):
    info = read_gguf_info(write_gguf(tmp_path / "m.gguf", **kw))
    assert info.reasoning_from == expected and info.is_reasoning is (expected is not None)


def test_quantization_from_file_type_else_the_dominant_tensor_type(tmp_path):
    import gguf

    assert read_gguf_info(write_gguf(tmp_path / "a.gguf", file_type=15)).quantization == "Q4_K_M"
    assert read_gguf_info(write_gguf(tmp_path / "b.gguf", file_type=0)).quantization == "F32"
    quantized = gguf.quants.quantize(np.ones((64, 64), np.float32), gguf.GGMLQuantizationType.Q8_0)
    tensors = [("output_norm.weight", np.ones(4096, np.float32), None),        # more elements, but 1-D
               ("blk.0.attn_q.weight", quantized, gguf.GGMLQuantizationType.Q8_0)]
    info = read_gguf_info(write_gguf(tmp_path / "c.gguf", tensors=tensors))
    assert info.quantization == "Q8_0" and info.parameter_count == 4096 + 64 * 64


def test_big_endian_files_read_the_same(tmp_path):
    import gguf

    little = read_gguf_info(write_gguf(tmp_path / "le.gguf", name="R1-tiny", tokens=["<think>", "</think>"]))
    big = read_gguf_info(write_gguf(tmp_path / "be.gguf", name="R1-tiny", tokens=["<think>", "</think>"],
                                    endian=gguf.GGUFEndian.BIG))
    assert (big.name, big.parameter_count, big.context_length, big.vocab_size, big.reasoning_from) == \
           (little.name, little.parameter_count, little.context_length, little.vocab_size, little.reasoning_from)


def test_name_falls_back_to_the_file_name(tmp_path):
    assert read_gguf_info(write_gguf(tmp_path / "Some-Model-Q4_K_M.gguf", name=None)).name == "Some-Model-Q4_K_M"


@pytest.mark.parametrize(("make", "expected"), [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(60)), "is not a GGUF file (starts with b'PK\\x03\\x04')"),
    (lambda p: p.write_bytes(os.urandom(4096).replace(b"G", b"x")), "is not a GGUF file"),
    (lambda p: p.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n"), "git lfs pull"),
    (lambda p: p.write_bytes(b"<!DOCTYPE html><html>404</html>"), "HTML page"),
    (lambda p: p.write_bytes(b"GGUF\x04\x00\x00\x00" + bytes(16)), "GGUF version 4, newer than this Aha reads"),
    (lambda p: p.write_bytes(b"GGUF\x01\x00\x00\x00" + bytes(16)), "GGUF version 1, no longer supported"),
    (lambda p: p.write_bytes(b"GGU"), "is truncated"),
])
def test_broken_files_give_one_line(tmp_path, make, expected):
    path = tmp_path / "model.gguf"
    make(path)
    assert_one_line_error(path, expected)


def test_a_safetensors_file_is_named_as_such(tmp_path, checkpoint):
    path = tmp_path / "model.gguf"
    shutil.copy(checkpoint("qwen2") / "model.safetensors", path)
    assert_one_line_error(path, "a safetensors file")


def test_truncated_fixture_names_the_tensor_count_and_the_end(tmp_path, tiny_bytes):
    info_end = 16320          # where tensor data starts in the fixture: header cuts before, data cuts after
    for cut in (6, 12, 20, 24, 200, 3000, info_end - 10, info_end + 100, len(tiny_bytes) - 1):
        path = tmp_path / f"cut-{cut}.gguf"
        path.write_bytes(tiny_bytes[:cut])
        message = assert_one_line_error(path, "is truncated")
        assert f"ends at byte {cut}" in message
        if cut >= 24:
            assert "the header says 27 tensors" in message


def test_unknown_value_type_is_corrupt(tmp_path):
    body = struct.pack("<QQ", 0, 1) + struct.pack("<Q", 3) + b"key" + struct.pack("<I", 99) + bytes(16)
    path = tmp_path / "odd.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + body)
    assert_one_line_error(path, "is corrupt: metadata key 'key' has unknown value type 99")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz.gguf"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_truncation_is_an_aha_error(tiny_bytes, scratch, data):
    cut = data.draw(st.integers(0, len(tiny_bytes) - 1))
    scratch.write_bytes(tiny_bytes[:cut])
    assert_one_line_error(scratch)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_header_bytes_never_crash(tiny_bytes, scratch, data):
    """Overwrite a few header bytes with anything: the result reads, or fails with one line."""
    corrupted = bytearray(tiny_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(4, 16320 - 1))
        corrupted[at] = data.draw(st.integers(0, 255))
    scratch.write_bytes(bytes(corrupted))
    try:
        read_gguf_info(scratch)
    except AhaError as exc:
        assert "\n" not in str(exc)


# --- Library -------------------------------------------------------------------------------------------------

def test_add_a_file_persists_and_is_idempotent(tmp_path, tiny_gguf):
    model = tmp_path / "DeepSeek-R1-Tiny-Q8_0.gguf"
    shutil.copy(tiny_gguf, model)
    changes = Library().add(model)
    assert [(e.source, e.name, e.path) for e in changes.added] == [("file", "DeepSeek-R1-Tiny-Q8_0", model)]
    assert Library().add(model).added == ()
    stored = json.loads((Path(os.environ["AHA_HOME"]) / "library.json").read_text())
    assert stored["entries"][0]["path"] == str(model) and stored["entries"][0]["added_at"].endswith("+00:00")
    assert Library().entries() == list(changes.added)


def test_add_a_broken_file_is_refused(tmp_path):
    (tmp_path / "notes.gguf").write_text("hello")
    with pytest.raises(AhaError, match="is not a GGUF file"):
        Library().add(tmp_path / "notes.gguf")
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(AhaError, match="no .gguf model files"):
        Library().add(tmp_path / "empty-folder")
    assert Library().entries() == []


def test_add_a_folder_skips_projectors_later_shards_and_broken_files(tmp_path, tiny_gguf):
    folder = tmp_path / "models"
    for name in ("a.gguf", "sub/b.gguf", "mmproj-a-f16.gguf", "big-00001-of-00002.gguf",
                 "big-00002-of-00002.gguf", ".hidden.gguf"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_gguf, folder / name)
    (folder / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    (folder / "readme.md").write_text("hi")
    changes = Library().add(folder)
    assert sorted(e.name for e in changes.added) == ["a", "b", "big"]
    assert {e.source for e in changes.added} == {"folder"}
    assert len(changes.skipped) == 1 and "broken.gguf is truncated" in changes.skipped[0]


def test_remove_keeps_files(tmp_path, tiny_gguf):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(tiny_gguf, folder / name)
    single = tmp_path / "single.gguf"
    shutil.copy(tiny_gguf, single)
    library = Library()
    library.add(folder)
    library.add(single)
    assert [e.name for e in library.remove(single).removed] == ["single"]
    assert single.exists()
    assert [e.name for e in library.remove("a").removed] == ["a"]
    assert [e.name for e in library.remove(folder).removed] == ["b"]
    assert library.entries() == [] and (folder / "a.gguf").exists()
    library.add(single)
    single.unlink()                                     # an entry whose file is gone goes by its path too
    assert [e.name for e in library.remove(single).removed] == ["single"]
    with pytest.raises(AhaError, match="not in the model library"):
        library.remove(single)


def test_a_corrupt_library_file_is_one_line(tmp_path):
    library = Library(tmp_path / "library.json")
    library.path.write_text("{not json")
    with pytest.raises(AhaError, match="cannot read the model library"):
        library.entries()


# --- Discovery -----------------------------------------------------------------------------------------------

def ollama_store(root: Path, gguf: bytes, names: list[tuple[str, str, str, str]]) -> str:
    """An Ollama store: the GGUF as a blob under its sha256, and one manifest per (registry, namespace, model, tag)."""
    digest = hashlib.sha256(gguf).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(gguf)
    config = hashlib.sha256(b"{}").hexdigest()
    (root / "blobs" / f"sha256-{config}").write_bytes(b"{}")
    for registry, namespace, model, tag in names:
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "digest": f"sha256:{config}", "size": 2},
                    "layers": [{"mediaType": "application/vnd.ollama.image.template", "digest": f"sha256:{config}"},
                               {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}",
                                "size": len(gguf)}]}
        path = root / "manifests" / registry / namespace / model / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest))
    return digest


def test_discover_ollama_names_tags_and_blobs(tmp_path, tiny_bytes):
    root = tmp_path / "ollama"
    digest = ollama_store(root, tiny_bytes, [("registry.ollama.ai", "library", "deepseek-r1", "1.5b"),
                                             ("registry.ollama.ai", "library", "deepseek-r1", "latest"),
                                             ("registry.ollama.ai", "someone", "aha-r1", "q8"),
                                             ("hf.co", "unsloth", "Tiny-R1-GGUF", "Q8_0")])
    missing = root / "manifests" / "registry.ollama.ai" / "library" / "gone" / "latest"
    missing.parent.mkdir(parents=True)
    missing.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                               "digest": "sha256:" + "0" * 64}]}))
    broken = root / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("{")
    found, skipped = discover_ollama(root)
    assert sorted(f.name for f in found) == ["deepseek-r1:1.5b", "deepseek-r1:latest",
                                             "hf.co/unsloth/Tiny-R1-GGUF:Q8_0", "someone/aha-r1:q8"]
    assert {f.path for f in found} == {root / "blobs" / f"sha256-{digest}"}
    assert all(f.ollama_name == f.name and f.source == "ollama" for f in found)
    assert len(skipped) == 2 and any("gone:latest: blob" in s for s in skipped)
    assert read_gguf_info(found[0].path).architecture == "qwen2"


def test_discover_lmstudio_publisher_repo_file(tmp_path, tiny_gguf):
    root = tmp_path / "lmstudio" / "models"
    repo = root / "lmstudio-community" / "Tiny-R1-GGUF"
    repo.mkdir(parents=True)
    shutil.copy(tiny_gguf, repo / "Tiny-R1-Q8_0.gguf")
    shutil.copy(tiny_gguf, repo / "mmproj-Tiny-R1-F16.gguf")
    found, skipped = discover_lmstudio(root)
    assert [(f.name, f.origin, f.source) for f in found] == [("Tiny-R1-Q8_0", "lmstudio-community/Tiny-R1-GGUF",
                                                              "lmstudio")]
    assert read_gguf_info(found[0].path).quantization == "Q8_0"


def hf_cache(root: Path, tiny_bytes: bytes) -> Path:
    """models--org--repo with one blob linked from two snapshots, plus a dangling link."""
    repo = root / "models--unsloth--Tiny-R1-GGUF"
    blob = repo / "blobs" / hashlib.sha256(tiny_bytes).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(tiny_bytes)
    for revision in ("a" * 40, "b" * 40):
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        (snapshot / "Tiny-R1-Q8_0.gguf").symlink_to(Path("../..") / "blobs" / blob.name)
    (repo / "snapshots" / ("b" * 40) / "Tiny-R1-F16.gguf").symlink_to(Path("../..") / "blobs" / "missing")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    return blob


@platforms.symlinks
def test_discover_hf_cache_resolves_links_to_blobs(tmp_path, tiny_bytes):
    blob = hf_cache(tmp_path / "hub", tiny_bytes)
    found, skipped = discover_hf_cache(tmp_path / "hub")
    assert [(f.path, f.name, f.origin) for f in found] == [(blob, "Tiny-R1-Q8_0", "unsloth/Tiny-R1-GGUF")]
    assert len(skipped) == 1 and "Tiny-R1-F16.gguf" in skipped[0]
    assert read_gguf_info(found[0].path).vocab_size == 576


def test_discover_reads_every_source_root_and_adds_nothing(tmp_path, tiny_bytes, tiny_gguf):
    """discover(): what each source finds under its roots, in one list with what was skipped; a root that is
    not there is passed over, and the library stays as it was."""
    ollama_store(tmp_path / "ollama", tiny_bytes, [("registry.ollama.ai", "library", "deepseek-r1", "1.5b")])
    (tmp_path / "ollama" / "manifests" / "registry.ollama.ai" / "library" / "broken").mkdir()
    (tmp_path / "ollama" / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest").write_text("{")
    repo = tmp_path / "lmstudio" / "lmstudio-community" / "Tiny-R1-GGUF"
    repo.mkdir(parents=True)
    shutil.copy(tiny_gguf, repo / "Tiny-R1-Q8_0.gguf")
    found, skipped = discover({"ollama": [tmp_path / "ollama"], "lmstudio": [tmp_path / "nowhere", tmp_path / "lmstudio"]})
    assert [(f.source, f.name) for f in found] == [("ollama", "deepseek-r1:1.5b"), ("lmstudio", "Tiny-R1-Q8_0")]
    assert len(skipped) == 1 and "broken" in skipped[0]
    assert Library().entries() == []


@platforms.symlinks
def test_scan_adds_refreshes_and_keeps_user_entries(tmp_path, tiny_bytes, tiny_gguf):
    roots = {"ollama": [tmp_path / "ollama"], "lmstudio": [tmp_path / "nowhere"], "hf-cache": [tmp_path / "hub"]}
    ollama_store(tmp_path / "ollama", tiny_bytes, [("registry.ollama.ai", "library", "deepseek-r1", "1.5b")])
    hf_cache(tmp_path / "hub", tiny_bytes)
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(tiny_gguf, mine / "my-model.gguf")
    library = Library()
    library.add(mine / "my-model.gguf")
    changes = library.scan(roots=roots)
    assert sorted((e.source, e.name) for e in changes.added) == [("hf-cache", "Tiny-R1-Q8_0"),
                                                                 ("ollama", "deepseek-r1:1.5b")]
    assert library.scan(roots=roots).added == ()                        # nothing new the second time
    shutil.rmtree(tmp_path / "ollama" / "manifests")
    changes = library.scan(extra_folders=[mine], roots=roots)
    assert [e.name for e in changes.removed] == ["deepseek-r1:1.5b"]
    assert changes.added == ()                                           # my-model is already in, as a file
    assert sorted(e.source for e in library.entries()) == ["file", "hf-cache"]
    library.scan(roots={"ollama": [tmp_path / "ollama"]})               # a source not scanned keeps its entries
    assert sorted(e.source for e in library.entries()) == ["file", "hf-cache"]
    with pytest.raises(AhaError, match="is not a folder"):
        library.scan(extra_folders=[tmp_path / "nope"], roots=roots)


def test_find_resolves_paths_names_tags_and_substrings(tmp_path, tiny_bytes, tiny_gguf):
    ollama_store(tmp_path / "ollama", tiny_bytes, [("registry.ollama.ai", "library", "deepseek-r1", "latest"),
                                                   ("registry.ollama.ai", "library", "deepseek-r1", "7b")])
    library = Library()
    library.scan(roots={"ollama": [tmp_path / "ollama"]})
    own = tmp_path / "Qwen-Math-Q8_0.gguf"
    shutil.copy(tiny_gguf, own)
    library.add(own)
    assert library.find("deepseek-r1").ollama_name == "deepseek-r1:latest"
    assert library.find("deepseek-r1:7b").ollama_name == "deepseek-r1:7b"
    assert library.find("registry.ollama.ai/library/deepseek-r1:7b").name == "deepseek-r1:7b"
    assert library.find("qwen-math").path == own
    assert library.find(str(own)).source == "file"
    loose = tmp_path / "loose.gguf"
    shutil.copy(tiny_gguf, loose)
    entry = library.find(str(loose))
    assert entry.path == loose and entry not in library.entries()      # usable, not registered
    with pytest.raises(AhaError, match="matches 2 models"):
        library.find("deepseek")
    with pytest.raises(AhaError, match="no model called 'llama'"):
        library.find("llama")
    own.unlink()
    with pytest.raises(AhaError, match="its file .* is gone"):
        library.find("Qwen-Math-Q8_0")


def test_small_pure_helpers():
    assert normalize_ollama_name("deepseek-r1") == "deepseek-r1:latest"
    assert normalize_ollama_name("user/m:q4") == "user/m:q4"
    assert model_name(Path("DeepSeek-R1-Q4_K_M-00001-of-00003.gguf")) == "DeepSeek-R1-Q4_K_M"
    assert is_model_file(Path("x-00001-of-00002.gguf")) and not is_model_file(Path("x-00002-of-00002.gguf"))
    assert not is_model_file(Path("mmproj-model-f16.gguf")) and not is_model_file(Path("x.bin"))
    assert format_count(1_777_088_000) == "1.78B" and format_count(494_032_768) == "494M"
    assert format_count(999) == "999"
    assert match_entries([], "anything") == []
    assert R1_DEFAULT == ("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF", "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf")


def test_default_roots_follow_env_and_platform(tmp_path):
    home = tmp_path / "home"
    assert ollama_roots({"OLLAMA_MODELS": "/data/ollama"}, home) == [Path("/data/ollama")]
    assert ollama_roots({}, home)[0] == home / ".ollama" / "models"
    assert hf_cache_root({"HF_HUB_CACHE": "/c/hub", "HF_HOME": "/h"}, home) == Path("/c/hub")
    assert hf_cache_root({"HF_HOME": "/h"}, home) == Path("/h/hub")
    assert hf_cache_root({"XDG_CACHE_HOME": "/x"}, home) == Path("/x/huggingface/hub")
    assert hf_cache_root({}, home) == home / ".cache" / "huggingface" / "hub"
    assert lmstudio_roots({}, home) == [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]
    home.mkdir()
    (home / ".lmstudio-home-pointer").write_text(str(tmp_path / "studio") + "\n")
    (tmp_path / "studio").mkdir()
    (tmp_path / "studio" / "settings.json").write_text(json.dumps({"downloadsFolder": str(tmp_path / "dl")}))
    assert lmstudio_roots({}, home)[:2] == [tmp_path / "studio" / "models", tmp_path / "dl"]


def test_check_gguf_looks_at_magic_only(tmp_path, tiny_bytes):
    path = tmp_path / "head.gguf"
    path.write_bytes(tiny_bytes[:64])
    check_gguf(path)
    with pytest.raises(AhaError, match="is empty"):
        (tmp_path / "e.gguf").write_bytes(b"")
        check_gguf(tmp_path / "e.gguf")


# --- Downloads -----------------------------------------------------------------------------------------------

@pytest.fixture
def hub(monkeypatch, tmp_path, tiny_bytes):
    """The fake Hub holding REPO/FILE, with HF_ENDPOINT pointing at it and the HF cache in tmp_path."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 << 10)   # several chunks per file
    server = FakeHub()
    server.add(REPO, FILE, tiny_bytes)
    with server as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        yield server


def test_pull_downloads_verifies_and_registers(hub, tiny_bytes, tmp_path):
    events = []
    path = pull(REPO, FILE, on_event=events.append)
    assert path == Path(os.environ["AHA_HOME"]) / "models" / "unsloth" / "Tiny-R1-GGUF" / FILE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(tiny_bytes).hexdigest()
    [entry] = Library().entries()
    assert entry.path == path and entry.origin == f"{REPO}/{FILE}@{COMMIT}"
    stages = {e["stage"] for e in events if e["type"] == "progress"}
    assert stages == {"download", "verify"}
    last = [e for e in events if e["type"] == "progress" and e["stage"] == "download"][-1]
    assert last["done"] == last["total"] == len(tiny_bytes) and last["unit"] == "B"
    assert events[-1]["type"] == "artifact" and events[-1]["path"] == str(path)
    assert [r for r in hub.requests if r[0] == "GET"][0][1] == f"/{REPO}/resolve/{COMMIT}/{FILE}"
    assert not list(path.parent.glob(".*incomplete"))
    again = pull(REPO, FILE)                                        # already there: verified, not fetched
    assert again == path and len([r for r in hub.requests if r[0] == "GET"]) == 1


def test_a_dropped_connection_resumes_with_a_range_request(hub, tiny_bytes, tmp_path):
    hub.drop_after = len(tiny_bytes) // 2
    path = pull(REPO, FILE, dest=tmp_path / "dl")
    ranges = [r[2] for r in hub.requests if r[0] == "GET"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= len(tiny_bytes) // 2
    assert path.read_bytes() == tiny_bytes


def test_cancel_keeps_the_partial_and_the_next_pull_resumes_it(hub, tiny_bytes, tmp_path):
    class CancelledOnThirdLook(CancelToken):
        """Set by the time the download loop checks for the third time (after two 64 KiB chunks)."""

        looks = 0

        @property
        def cancelled(self) -> bool:
            self.looks += 1
            return self.looks > 3          # pull looks once before it starts

    with pytest.raises(AhaError, match="cancelled at .* the same pull resumes it"):
        pull(REPO, FILE, dest=tmp_path / "dl", cancel=CancelledOnThirdLook())
    [partial] = (tmp_path / "dl").glob(".*.incomplete")
    assert 0 < partial.stat().st_size < len(tiny_bytes)
    assert not (tmp_path / "dl" / FILE).exists() and Library().entries() == []
    kept = partial.stat().st_size
    path = pull(REPO, FILE, dest=tmp_path / "dl")
    assert hub.requests[-1] == ("GET", f"/{REPO}/resolve/{COMMIT}/{FILE}", f"bytes={kept}-")
    assert path.read_bytes() == tiny_bytes and not partial.exists()
    assert len(Library().entries()) == 1


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(hub, tiny_bytes, tmp_path):
    hub.add(REPO, FILE, tiny_bytes, sha256="0" * 64)
    with pytest.raises(AhaError) as caught:
        pull(REPO, FILE, dest=tmp_path / "dl")
    assert "failed verification: sha256" in str(caught.value) and "\n" not in str(caught.value)
    assert list((tmp_path / "dl").iterdir()) == [] and Library().entries() == []


def test_hub_errors_are_one_line(hub, tmp_path):
    with pytest.raises(AhaError, match="has no file nope.gguf"):
        pull(REPO, "nope.gguf", dest=tmp_path)
    with pytest.raises(AhaError, match="no repository someone/else"):
        pull("someone/else", FILE, dest=tmp_path)
    with pytest.raises(AhaError, match="has no revision 'v9'"):
        pull(REPO, FILE, revision="v9", dest=tmp_path)
    with pytest.raises(AhaError, match="is not a .gguf file"):
        pull(REPO, "README.md", dest=tmp_path)
    with pytest.raises(AhaError, match="is not a file name inside a repository"):
        pull(REPO, "../evil.gguf", dest=tmp_path)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(AhaError, match="cancelled before it started"):
        pull(REPO, FILE, dest=tmp_path, cancel=cancel)


def test_no_connection_says_what_to_do(monkeypatch, tmp_path):
    with socket.socket() as probe:                 # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(AhaError, match=r"cannot download .*; check the connection or set HF_ENDPOINT"):
        pull(*R1_DEFAULT, dest=tmp_path)
