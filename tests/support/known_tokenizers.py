"""Real Hugging Face tokenizers rebuilt, with no download, from llama.cpp's vocab-only GGUF files.

From the tokenizer.ggml.* keys of models/ggml-vocab-*.gguf in the llama-cpp-python sdist (real models'
tokens, merges and special ids) this writes tokenizer.json and tokenizer_config.json as the Hub repositories
carry them. A check hash in llama.cpp's table proves a rebuild encodes llama.cpp's check text exactly.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.r1 import ASSISTANT, BOS, EOS, THINK_CLOSE, THINK_OPEN, USER
from tests.tiny_models import LLAMA3_PATTERN, QWEN2_PATTERN

SDIST_DIR = Path(__file__).resolve().parents[2] / ".cache" / "sdist"

# tokenizer.ggml.token_type values (gguf.TokenType)
NORMAL, CONTROL = 1, 3

# DeepSeek-R1-Distill-Qwen's added tokens (from id 151643 on, after Qwen2.5's byte-level BPE): True = special.
R1_QWEN_ADDED = [
    (EOS, True), (USER, False), (ASSISTANT, False), (BOS, True), ("<|EOT|>", False),
    (THINK_OPEN, False), (THINK_CLOSE, False),
    *[(f"<|{name}|>", True) for name in ("quad_start", "quad_end", "vision_start", "vision_end",
                                         "vision_pad", "image_pad", "video_pad")],
    ("<tool_call>", False), ("</tool_call>", False),
    *[(f"<|{name}|>", False) for name in ("fim_prefix", "fim_middle", "fim_suffix", "fim_pad",
                                          "repo_name", "file_sep")],
]


@dataclass(frozen=True)
class KnownTokenizer:
    """How one Hub tokenizer is rebuilt from a ggml-vocab file (what the GGUF does not record).

    The check hash pins the vocabulary, merges, BOS id and Llama 3's regex (Qwen's digits are single
    tokens, so its \\p{N} split leaves that hash unchanged; the check text holds no added token). NFC and
    ignore_merges, which the check text cannot tell apart, are set as the Hub files have them."""

    vocab_file: str              # models/ggml-vocab-<vocab_file>.gguf
    hub_repo: str                # the model llama.cpp's table entry was hashed from
    pattern: str                 # the Split regex of its tokenizer.json
    nfc: bool                    # its NFC normalizer (Qwen)
    ignore_merges: bool          # its BPE model's ignore_merges (Llama 3)
    config: dict = field(default_factory=dict)   # its tokenizer_config.json
    added: list | None = None    # (content, special) from the first added id on; None: the GGUF's CONTROL tokens
    bos: str | None = None       # prepended by a TemplateProcessing post-processor


KNOWN = {
    "qwen2": KnownTokenizer(
        "qwen2", "Qwen/Qwen1.5-7B", QWEN2_PATTERN, nfc=True, ignore_merges=False,
        config={"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace",
                "add_prefix_space": False, "clean_up_tokenization_spaces": False, "model_max_length": 32768}),
    "llama-bpe": KnownTokenizer(
        "llama-bpe", "meta-llama/Meta-Llama-3-8B", LLAMA3_PATTERN, nfc=False, ignore_merges=True,
        bos="<|begin_of_text|>",
        config={"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": True,
                "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 1000000000000000019884624838656}),
    "deepseek-r1-qwen": KnownTokenizer(
        "qwen2", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", QWEN2_PATTERN, nfc=True, ignore_merges=False,
        added=R1_QWEN_ADDED, bos=BOS,
        config={"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True, "add_eos_token": False,
                "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": None, "legacy": True,
                "clean_up_tokenization_spaces": False, "model_max_length": 16384, "sp_model_kwargs": {}}),
}


def extract_vocab_files(names: set[str], out_dir: Path) -> dict[str, Path]:
    """models/ggml-vocab-<name>.gguf of the llama-cpp-python sdist in .cache/sdist, extracted in one pass."""
    (sdist,) = SDIST_DIR.glob("llama_cpp_python-*.tar.gz")
    wanted = {f"ggml-vocab-{name}.gguf": name for name in names}
    found = {}
    with tarfile.open(sdist) as tar:
        for member in tar:
            parts = member.name.split("/")
            if parts[-3:-1] == ["llama.cpp", "models"] and parts[-1] in wanted:
                found[wanted[parts[-1]]] = path = out_dir / parts[-1]
                path.write_bytes(tar.extractfile(member).read())
    assert set(found) == names, f"{sdist.name} lacks ggml-vocab files for {names - set(found)}"
    return found


def read_tokenizer_keys(path: Path) -> dict:
    """The tokenizer.* key-values of a GGUF file (a tensor-free vocab file is all key-values).

    gguf.GGUFReader makes a numpy view of every array element: ~10 s for these 300k-string files.
    This walks the same layout (gguf's magic, value types and their numpy dtypes) in about a second."""
    import numpy as np
    from gguf import GGUF_MAGIC, GGUFReader, GGUFValueType

    data = path.read_bytes()
    offset = 0

    def number(dtype):
        nonlocal offset
        dtype = np.dtype(dtype).newbyteorder("<")
        offset += dtype.itemsize
        return np.frombuffer(data, dtype, 1, offset - dtype.itemsize)[0].item()

    def string() -> str:
        nonlocal offset
        size = int.from_bytes(data[offset:offset + 8], "little")
        offset += 8 + size
        return data[offset - size:offset].decode("utf-8")

    def value(kind: GGUFValueType):
        nonlocal offset
        if kind == GGUFValueType.STRING:
            return string()
        if kind != GGUFValueType.ARRAY:
            return number(GGUFReader.gguf_scalar_to_np[kind])
        item_kind, count = GGUFValueType(number(np.uint32)), number(np.uint64)
        if item_kind in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            return [value(item_kind) for _ in range(count)]
        dtype = np.dtype(GGUFReader.gguf_scalar_to_np[item_kind]).newbyteorder("<")
        offset += dtype.itemsize * count
        return np.frombuffer(data, dtype, count, offset - dtype.itemsize * count).tolist()

    assert number(np.uint32) == GGUF_MAGIC and number(np.uint32) >= 2, f"{path} is not a GGUF v2+ file"
    number(np.uint64)  # tensor count
    keys = {}
    for _ in range(number(np.uint64)):
        key = string()
        keys[key] = value(GGUFValueType(number(np.uint32)))
    return {key: val for key, val in keys.items() if key.startswith("tokenizer.")}


def save_known_tokenizers(out_dir: Path) -> dict[str, tuple[Path, int]]:
    """Every KNOWN tokenizer rebuilt in out_dir/<name>: name → (that folder, its model's vocab_size)."""
    vocab_files = extract_vocab_files({spec.vocab_file for spec in KNOWN.values()}, out_dir)
    keys = {vocab_file: read_tokenizer_keys(path) for vocab_file, path in vocab_files.items()}
    return {name: (save_known_tokenizer(spec, keys[spec.vocab_file], out_dir / name),
                   len(keys[spec.vocab_file]["tokenizer.ggml.tokens"]))  # config.json's vocab_size: padding included
            for name, spec in KNOWN.items()}


def save_known_tokenizer(spec: KnownTokenizer, keys: dict, out_dir: Path) -> Path:
    """Write spec's tokenizer.json + tokenizer_config.json, from its vocab file's tokenizer.* keys, into out_dir."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    assert keys["tokenizer.ggml.model"] == "gpt2", f"{spec.vocab_file} is not a byte-level BPE vocabulary"
    tokens, types = keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"]
    vocab = {token: token_id for token_id, (token, kind) in enumerate(zip(tokens, types, strict=True)) if kind == NORMAL}
    assert sorted(vocab.values()) == list(range(len(vocab))), "NORMAL tokens must come first"
    merges = [tuple(merge.split(" ", 1)) for merge in keys["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, ignore_merges=spec.ignore_merges))
    if spec.nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec.pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    added = spec.added or [(token, True) for token, kind in zip(tokens, types, strict=True) if kind == CONTROL]
    for token, special in added:  # one at a time: each gets the next id, as in the original
        add = tokenizer.add_special_tokens if special else tokenizer.add_tokens
        add([AddedToken(token, special=special, normalized=False)])
    assert [tokenizer.token_to_id(token) for token, _ in added] == list(range(len(vocab), len(vocab) + len(added)))
    tokenizer.post_processor = (
        processors.TemplateProcessing(single=f"{spec.bos}:0 $A:0", pair=f"{spec.bos}:0 $A:0 {spec.bos}:1 $B:1",
                                      special_tokens=[(spec.bos, tokenizer.token_to_id(spec.bos))])
        if spec.bos else processors.ByteLevel(trim_offsets=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(spec.config, indent=2, ensure_ascii=False),
                                                   encoding="utf-8")
    return out_dir
