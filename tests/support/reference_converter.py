"""Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist, in .cache/llama.cpp).

It refuses tokenizers whose pre-tokenizer hash it does not know (all our fixtures'): for those only, the
runner answers that lookup with PRE_NAME; all else runs unchanged. --choose-pre converts nothing: it prints
(JSON, folder → name, null if refused) the `tokenizer.ggml.pre` llama.cpp's unmodified get_vocab_base picks.

--fetch puts them in place from the llama-cpp-python sdist Aha builds against (pip download, any platform);
`make test` runs it, and the tests that need the converter run it when .cache/llama.cpp is missing.

Usage: python reference_converter.py PRE_NAME CHECKPOINT --outfile OUT --outtype f16
       python reference_converter.py --choose-pre TOKENIZER_DIR...
       python reference_converter.py --fetch
"""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(__file__).resolve().parents[2] / ".cache"
REFERENCE = CACHE / "llama.cpp"
SDIST = CACHE / "sdist"
LLAMA_CPP_VERSION = "0.3.36"  # the llama-cpp-python release pyproject.toml pins
# What of the sdist's vendor/llama.cpp the tests use: the converter with its package and llama.cpp's gguf-py.
MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def fetch() -> Path:
    """Download the sdist (once; pip caches it) and unpack the converter into .cache/llama.cpp."""
    tarball = SDIST / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    if not tarball.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", str(SDIST)], check=True)
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    with tarfile.open(tarball) as tar:
        members = []
        for member in tar.getmembers():
            relative = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and relative.startswith(MEMBERS) and (member.isfile() or member.isdir()):
                member.name = relative
                members.append(member)
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python ≥ 3.11.4
        tar.extractall(REFERENCE, members=members, **safe)
    (REFERENCE / "convert_hf_to_gguf.py").touch()  # newer than the tarball: make's target is done
    return REFERENCE


def ensure_fetched() -> Path:
    """.cache/llama.cpp, fetched first if it is not there."""
    return REFERENCE if (REFERENCE / "convert_hf_to_gguf.py").is_file() else fetch()


def reference_base():
    """llama.cpp's conversion.base module, importing llama.cpp's own gguf-py."""
    sys.path.insert(0, str(REFERENCE))
    sys.path.insert(1, str(REFERENCE / "gguf-py"))
    from conversion import base

    return base


def choose_pre(folders: list[str]) -> dict[str, str | None]:
    """Folder → llama.cpp's `tokenizer.ggml.pre` for the tokenizer in it (None: not recognized).

    get_vocab_base loads the tokenizer itself (AutoTokenizer) and hashes it; it reads only dir_model and
    hparams from the model, so a TextModel with just those two set stands in for a whole checkpoint."""
    base = reference_base()
    chosen = {}
    for folder in folders:
        model = object.__new__(base.TextModel)
        model.dir_model, model.hparams = Path(folder), {}
        try:
            chosen[folder] = model.get_vocab_base()[2]
        except NotImplementedError:
            chosen[folder] = None
    return chosen


def main() -> None:
    if sys.argv[1] == "--fetch":
        print(fetch())
        return
    ensure_fetched()
    if sys.argv[1] == "--choose-pre":
        print(json.dumps(choose_pre(sys.argv[2:])))
        return
    pre_name = sys.argv.pop(1)
    base = reference_base()
    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            return pre_name

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv[0] = str(REFERENCE / "convert_hf_to_gguf.py")
    import convert_hf_to_gguf

    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
