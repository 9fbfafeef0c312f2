"""Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist, in .cache/llama.cpp).

The reference refuses tokenizers whose pre-tokenizer hash it does not know — every tokenizer trained
on the fly in our fixtures. For those (and only those) this runner answers the hash lookup with the
name given on the command line; every other step of the reference conversion runs unchanged.

Usage: python reference_converter.py PRE_NAME CHECKPOINT --outfile OUT --outtype f16
"""

import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / ".cache" / "llama.cpp"


def main() -> None:
    pre_name = sys.argv.pop(1)
    sys.path.insert(0, str(REFERENCE))
    sys.path.insert(1, str(REFERENCE / "gguf-py"))
    from conversion import base

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
