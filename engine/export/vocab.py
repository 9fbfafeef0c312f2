"""Tokenizer metadata for a GGUF file, read from a Hugging Face checkpoint folder.

Byte-level BPE only (what the R1 distills use): token list with types, merges, special ids, add_bos/eos
and the chat template, as llama.cpp's converter writes them. `tokenizer.ggml.pre` is chosen as llama.cpp
chooses it (a hash of the token ids of a fixed text); an unknown tokenizer gets the pre-tokenizer whose
regex matches its own, with a warning, instead of a refusal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from engine.errors import AhaError
from engine.export.pretokenizers import CHECK_TEXT, KNOWN_HASHES

# tokenizer.ggml.token_type values (gguf.TokenType)
NORMAL, UNUSED, CONTROL, USER_DEFINED = 1, 5, 3, 4

# Split regexes of tokenizer.json → the llama.cpp pre-tokenizer that implements the same regex.
_REGEX_TO_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+": "gpt-2",
}


@dataclass
class Vocab:
    """Everything `tokenizer.ggml.*` holds, plus how `pre` was decided."""

    tokens: list[str]
    token_types: list[int]
    pre: str
    pre_known: bool                      # True when llama.cpp's hash table knows this tokenizer
    warnings: list[str] = field(default_factory=list)


def check_hash(tokenizer) -> str:
    """llama.cpp's `chkhsh`: sha256 of `str(tokenizer.encode(CHECK_TEXT))` (special tokens added)."""
    ids = tokenizer.encode(CHECK_TEXT)
    return sha256(str(list(getattr(ids, "ids", ids))).encode()).hexdigest()  # a tokenizers Encoding, or ids


def _split_patterns(tokenizer_json: dict) -> list[str]:
    """Regex patterns of the Split pre-tokenizers in tokenizer.json, in order."""
    node = tokenizer_json.get("pre_tokenizer") or {}
    nodes = node.get("pretokenizers", [node]) if node.get("type") == "Sequence" else [node]
    patterns = []
    for item in nodes:
        if item and item.get("type") == "Split":
            pattern = item.get("pattern", {})
            patterns.append(pattern.get("Regex") or pattern.get("String") or "")
        elif item and item.get("type") == "ByteLevel" and item.get("use_regex", True):
            patterns.append(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    return patterns


def choose_pre(tokenizer, model_dir: Path) -> tuple[str, bool, list[str]]:
    """(pre name, known to llama.cpp?, warnings). Known hash first; else the regex twin; else "default"."""
    digest = check_hash(tokenizer)
    if digest in KNOWN_HASHES:
        return KNOWN_HASHES[digest], True, []
    tokenizer_file = model_dir / "tokenizer.json"
    patterns = _split_patterns(json.loads(tokenizer_file.read_text(encoding="utf-8"))) if tokenizer_file.is_file() else []
    for pattern in patterns:
        if pattern in _REGEX_TO_PRE:
            name = _REGEX_TO_PRE[pattern]
            return name, False, [
                f"llama.cpp does not know this tokenizer (check hash {digest[:12]}…); wrote "
                f"tokenizer.ggml.pre = {name!r}, whose pre-tokenizer regex is identical to this tokenizer's"]
    return "default", False, [
        f"llama.cpp does not know this tokenizer (check hash {digest[:12]}…) and no known pre-tokenizer "
        "matches its regex; wrote tokenizer.ggml.pre = 'default': tokenization in llama.cpp may differ"]


def _looks_special(token: str) -> bool:
    """llama.cpp's heuristic for added tokens that should be CONTROL although not marked special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


class HubTokenizer:
    """A tokenizer.json read by `tokenizers` as transformers' fast tokenizer reads it, for what the export
    needs: the vocabulary with added tokens, the added tokens' flags, encode (special tokens added as
    tokenizer_config.json's add_bos_token/add_eos_token say, like transformers) and decode."""

    def __init__(self, model_dir: Path):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config_file = model_dir / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        self.config = config if isinstance(config, dict) else {}
        self._add_qwen2_defaults(model_dir)
        self.added_tokens_decoder = self.backend.get_added_tokens_decoder()  # id → AddedToken
        self._bos = self._token_id(self.config.get("bos_token")) if self.config.get("add_bos_token") else None
        self._eos = self._token_id(self.config.get("eos_token")) if self.config.get("add_eos_token") else None

    def _add_qwen2_defaults(self, model_dir: Path) -> None:
        """transformers loads a qwen2 model's tokenizer (or one whose tokenizer_class is Qwen2Tokenizer) as
        its Qwen2Tokenizer, whose unk, eos and pad default to <|endoftext|>: a special token appended to the
        vocabulary when the tokenizer lacks it. llama.cpp's converter (AutoTokenizer) lists it; so do we."""
        from tokenizers import AddedToken

        config_file = model_dir / "config.json"
        model = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        tokenizer_class = str(self.config.get("tokenizer_class") or "").removesuffix("Fast")
        if "auto_map" in self.config or not (
                (isinstance(model, dict) and model.get("model_type") == "qwen2") or tokenizer_class == "Qwen2Tokenizer"):
            return
        for key in ("unk_token", "eos_token", "pad_token"):
            content = self.config.get(key, "<|endoftext|>")
            content = content.get("content") if isinstance(content, dict) else content
            if isinstance(content, str) and self.backend.token_to_id(content) is None:
                self.backend.add_special_tokens([AddedToken(content, special=True, normalized=False)])

    def _token_id(self, token) -> int | None:
        content = token.get("content") if isinstance(token, dict) else token
        return self.backend.token_to_id(content) if isinstance(content, str) else None

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        return {token.content: token_id for token_id, token in self.added_tokens_decoder.items()}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; with special tokens, the tokenizer.json post-processor's, or, when
        tokenizer_config.json asks for add_bos_token/add_eos_token, BOS + ids + EOS as transformers builds them."""
        if add_special_tokens and (self._bos is not None or self._eos is not None):
            ids = self.backend.encode(text, add_special_tokens=False).ids
            return [self._bos] * (self._bos is not None) + ids + [self._eos] * (self._eos is not None)
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)


def load_vocab(model_dir: Path, vocab_size: int):
    """Read the checkpoint's tokenizer.json with `tokenizers` (no transformers). Returns (Vocab, the tokenizer)."""
    if not (model_dir / "tokenizer.json").is_file():
        raise AhaError(f"{model_dir} has no byte-level BPE tokenizer.json; only BPE tokenizers (Qwen, "
                       "Llama 3, DeepSeek-R1 distills) can be exported.")
    try:
        tokenizer = HubTokenizer(model_dir)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's tokenizer files
        raise AhaError(f"cannot read the tokenizer in {model_dir}: {str(exc).splitlines()[0] if str(exc) else exc!r}. "
                       "Check tokenizer.json and tokenizer_config.json.") from None
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise AhaError(f"the tokenizer has ids up to {max(vocab.values())} but config.json says vocab_size="
                       f"{vocab_size}; the checkpoint is inconsistent.")
    pre, known, warnings = choose_pre(tokenizer, model_dir)
    reverse = {token_id: token for token, token_id in vocab.items()}
    added = tokenizer.get_added_vocab()
    added_decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for token_id in range(vocab_size):
        token = reverse.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(UNUSED)
            continue
        kind = NORMAL
        if token in added:
            if not added_decoder[token_id].normalized:  # llama.cpp expects pre-normalized added tokens
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if added_decoder[token_id].special or _looks_special(token):
                kind = CONTROL
            else:
                token = token.replace("\u2581", " ")
                kind = USER_DEFINED
        tokens.append(token)
        types.append(kind)
    return Vocab(tokens, types, pre, known, warnings), tokenizer
