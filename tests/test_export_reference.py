"""Our GGUF export agrees with llama.cpp's own converter (convert_hf_to_gguf.py of the llama-cpp-python sdist).

Tensor for tensor on our tiny fixtures. `tokenizer.ggml.pre` on real tokenizers (Qwen1.5/2.5, Llama 3,
DeepSeek-R1-Distill-Qwen) rebuilt from llama.cpp's own vocab files: there llama.cpp's unmodified code picks
the name, and our check text and hash table are read back from llama.cpp's source, not from a copy.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.export.pretokenizers import CHECK_TEXT, KNOWN_HASHES
from engine.export.vocab import check_hash, choose_pre, load_vocab
from tests.conftest import ARCHS
from tests.support.gguf_compare import differences
from tests.support.known_tokenizers import KNOWN, save_known_tokenizers
from tests.support.reference_converter import ensure_fetched

RUNNER = Path(__file__).parent / "support" / "reference_converter.py"


def reference_gguf(checkpoint: Path, out: Path, out_type: str, pre: str) -> Path:
    if not out.exists():
        subprocess.run([sys.executable, str(RUNNER), pre, str(checkpoint), "--outfile", str(out),
                        "--outtype", out_type], check=True, capture_output=True)
    return out


def written_pre(path: Path) -> str:
    from gguf import GGUFReader

    return bytes(GGUFReader(path).fields["tokenizer.ggml.pre"].parts[-1]).decode()


@functools.cache
def llama_cpp_pre_source() -> tuple[str, dict[str, str]]:
    """(chktxt, {chkhsh: name}) as llama.cpp's get_vocab_base_pre spells them (its `if chkhsh == …: res = …`)."""
    tree = ast.parse((ensure_fetched() / "conversion" / "base.py").read_text(encoding="utf-8"))
    (function,) = [node for node in ast.walk(tree)
                   if isinstance(node, ast.FunctionDef) and node.name == "get_vocab_base_pre"]
    (chktxt,) = [ast.literal_eval(node.value) for node in function.body
                 if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "chktxt"]
    table = {}
    for node in function.body:  # a later `if` with the same hash wins, as a later dict key does
        if isinstance(node, ast.If) and ast.unparse(node.test).startswith("chkhsh == "):
            (assign,) = node.body
            assert ast.unparse(assign.targets[0]) == "res", ast.unparse(node)
            table[ast.literal_eval(node.test.comparators[0])] = ast.literal_eval(assign.value)
    return chktxt, table


@pytest.fixture(scope="module")
def pre_choices(tmp_path_factory, checkpoint):
    """name → (tokenizer folder, its vocab_size); and llama_cpp_pre(name), the `pre` llama.cpp's own
    get_vocab_base picks for that folder (None: it refuses the tokenizer).

    Names: KNOWN's real tokenizers (rebuilt from the sdist's ggml-vocab files) and "fixture-<arch>",
    our fixtures' tokenizers. llama.cpp judges them all in one run, while the tests do their own work."""
    root = tmp_path_factory.mktemp("known-tokenizers")
    folders = save_known_tokenizers(root) | {f"fixture-{arch}": (checkpoint(arch), None) for arch in ARCHS}
    with open(root / "llama-cpp.log", "w") as log:
        process = subprocess.Popen([sys.executable, str(RUNNER), "--choose-pre",
                                    *(str(folder) for folder, _ in folders.values())],
                                   stdout=subprocess.PIPE, stderr=log, text=True)

    @functools.cache
    def chosen() -> dict[str, str | None]:
        out, _ = process.communicate()
        assert process.returncode == 0, (root / "llama-cpp.log").read_text()
        return json.loads(out)

    yield folders, lambda name: chosen()[str(folders[name][0])]
    process.kill()
    process.wait()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("out_type", ["f32", "f16", "bf16", "q8_0"])
def test_same_file_as_llama_cpp_converter(arch, out_type, checkpoint, gguf_file, tmp_path_factory):
    """Tensor for tensor and key for key, our export is the file llama.cpp's converter writes.

    llama.cpp refuses our fixtures' trained-on-the-fly tokenizers (their hash is in no table), so the
    runner answers that one lookup with the `pre` we wrote: this test does not check `pre` itself —
    test_real_tokenizer_gets_llama_cpps_pre does."""
    ours = gguf_file(arch, out_type)
    reference = reference_gguf(checkpoint(arch), tmp_path_factory.getbasetemp() / f"ref-{arch}-{out_type}.gguf",
                               out_type, written_pre(ours))
    assert differences(ours, reference) == []


def test_check_text_is_llama_cpps():
    """Our CHECK_TEXT is, character for character, the chktxt llama.cpp's converter hashes."""
    assert CHECK_TEXT == llama_cpp_pre_source()[0]


def test_known_hashes_are_llama_cpps_table():
    """KNOWN_HASHES is exactly the hash → name table of llama.cpp's get_vocab_base_pre: no entry more,
    less or different, the two the R1 distills need included."""
    table = llama_cpp_pre_source()[1]
    assert table["b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5"] == "deepseek-r1-qwen"
    assert table["0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"] == "llama-bpe"
    assert KNOWN_HASHES == table


@pytest.mark.parametrize("name", KNOWN)
def test_real_tokenizer_gets_llama_cpps_pre(name, pre_choices):
    """A real tokenizer llama.cpp knows gets from our export the `pre` llama.cpp's own code picks.

    Its check hash is in llama.cpp's table under `name` (a sha256 match: the rebuild encodes the check
    text exactly as the Hub original), our load_vocab writes that name as known, without a warning, and
    llama.cpp's unmodified get_vocab_base, run on the same folder, picks the same name."""
    folders, llama_cpp_pre = pre_choices
    vocab, tokenizer = load_vocab(*folders[name])
    assert KNOWN_HASHES.get(check_hash(tokenizer)) == name, f"not llama.cpp's hash of {KNOWN[name].hub_repo}"
    assert (vocab.pre, vocab.pre_known, vocab.warnings) == (name, True, [])
    assert llama_cpp_pre(name) == name


def test_unknown_tokenizer_gets_its_regex_twin(gguf_file, pre_choices):
    """Our fixtures' tokenizers are unknown to llama.cpp (its code refuses them); we write, with a warning,
    the pre-tokenizer whose regex is identical to theirs (Qwen's for Qwen2/3, Llama 3's for Llama)."""
    from transformers import AutoTokenizer

    folders, llama_cpp_pre = pre_choices
    assert [llama_cpp_pre(f"fixture-{arch}") for arch in ARCHS] == [None, None, None]
    for arch in ARCHS:
        folder = folders[f"fixture-{arch}"][0]
        _, known, warnings = choose_pre(AutoTokenizer.from_pretrained(folder), folder)
        assert not known and warnings[0].startswith("llama.cpp does not know this tokenizer")
    assert [written_pre(gguf_file(arch, "f16")) for arch in ARCHS] == ["qwen2", "llama-bpe", "qwen2"]


def test_comparison_notices_a_different_file(gguf_file):
    """The comparison above can fail: it reports a different file type and different tensors."""
    diffs = differences(gguf_file("qwen2", "f16"), gguf_file("qwen2", "f32"))
    assert any("general.file_type" in d for d in diffs) and any("token_embd.weight" in d for d in diffs)
