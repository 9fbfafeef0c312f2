"""Tiny random-weight Hugging Face checkpoints that stand in for the DeepSeek-R1 distills in tests.

Builds, in about a second on a CPU, real `Qwen2ForCausalLM` (qkv biases), `LlamaForCausalLM`
(`rope_type: llama3`) and `Qwen3ForCausalLM` (q/k norms) folders — grouped-query attention, tied and
untied embeddings, bf16 safetensors — with a byte-level BPE tokenizer trained on the fly that carries
the R1 special tokens and an R1-style chat template ending in `<｜Assistant｜><think>\\n`.
Nothing here is downloaded; the code these checkpoints exercise is the real code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.r1 import ASSISTANT, BOS, CHAT_TEMPLATE, EOS, THINK_CLOSE, THINK_OPEN, USER

PAD = "<｜▁pad▁｜>"

# Pre-tokenizer regexes as the real tokenizer.json files carry them.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The fixtures carry the R1 template as a real distill does (its own copy of the official text).
R1_CHAT_TEMPLATE = CHAT_TEMPLATE

# A small multilingual, numeric and code corpus: enough merges for a realistic BPE.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. She said: \"it's 12,345.67 dollars!\"",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "Let me think. 12 + 35 = 47, then 47 * 3 = 141. So the answer is \\boxed{141}.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5\n",
    "Wait, that doesn't look right. Let's re-check: 9 + 8 = 17, carry 1.",
    "Über naïve café — résumé. 你好，世界！こんにちは。Привет, мир. 🙂 👍",
    "   indented   text\twith\ttabs\n\n\nand blank lines\r\n",
    "x^2 + y^2 = z^2; \\frac{a}{b} + \\sqrt{2} \\approx 1.414",
    "I'll, you've, we're, they'd, it's, I'm, she'll — contractions.",
    "0123456789 10 100 1000 10000 3.14159 2.71828 -42 +7",
]


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny checkpoint. hidden/head sizes are multiples of 32 so every quantization applies."""

    arch: str                    # "qwen2" | "llama" | "qwen3"
    tied: bool                   # tie_word_embeddings
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2            # grouped-query attention
    ffn: int = 512
    vocab_pad_to: int = 64       # config.vocab_size > tokenizer size: ids filled as [PAD{i}] in GGUF
    seed: int = 0
    ascii_only: bool = False     # a vocabulary of printable ASCII pieces only (every token is valid text)


SPECS = {
    "qwen2": TinySpec("qwen2", tied=False),
    "llama": TinySpec("llama", tied=False),
    "qwen3": TinySpec("qwen3", tied=True),
}


def build_tokenizer(pattern: str = QWEN2_PATTERN, vocab_size: int = 700, ascii_only: bool = False):
    """Train a byte-level BPE `tokenizers.Tokenizer` with the R1 added tokens. Deterministic.

    ascii_only: no byte tokens outside printable ASCII, so any token sequence decodes to valid text
    (what a benchmark with a random model needs; such a tokenizer cannot encode other text)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [line for line in _CORPUS if line.isascii()] if ascii_only else _CORPUS
    alphabet = sorted({c for line in corpus for c in line}) if ascii_only else pre_tokenizers.ByteLevel.alphabet()
    if ascii_only:  # the byte-level spellings of the corpus's characters (space is "Ġ", newline "Ċ")
        alphabet = sorted({c for ch in alphabet for c in pre_tokenizers.ByteLevel(add_prefix_space=False)
                           .pre_tokenize_str(ch)[0][0]})
    limit = {"limit_alphabet": len(alphabet)} if ascii_only else {}
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False,
                                  special_tokens=[], **limit)
    tokenizer.train_from_iterator(corpus * 4, trainer)
    # As in DeepSeek-R1-Distill-Qwen: BOS/EOS/pad are special; the turn markers and think tags are
    # added tokens that are not "special" (so they survive skip_special_tokens decoding).
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOS, EOS, PAD)])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t in (USER, ASSISTANT, THINK_OPEN, THINK_CLOSE)])
    # add_bos_token: true, as the R1 distills' tokenizers (a TemplateProcessing post-processor).
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 $B:1", special_tokens=[(BOS, bos_id)])
    return tokenizer


def save_tokenizer(out_dir: Path, pattern: str = QWEN2_PATTERN, ascii_only: bool = False) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json (with the R1 chat template). Returns special ids."""
    from transformers import PreTrainedTokenizerFast

    raw = build_tokenizer(pattern, ascii_only=ascii_only)
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.chat_template = R1_CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # R1 distills: add_bos_token true, add_eos_token false; template kept inside tokenizer_config.
    config.update(add_bos_token=True, add_eos_token=False, chat_template=R1_CHAT_TEMPLATE)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    template_file = out_dir / "chat_template.jinja"
    if template_file.exists():  # keep one source of truth, as R1's own repos do
        template_file.unlink()
    return {name: raw.token_to_id(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("pad", PAD))} | {
        "size": raw.get_vocab_size(with_added_tokens=True)
    }


def make_config(spec: TinySpec, vocab_size: int, ids: dict[str, int]):
    """A transformers config of the spec's architecture."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        intermediate_size=spec.ffn,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        rms_norm_eps=1e-6,
        tie_word_embeddings=spec.tied,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        initializer_range=0.05,
    )
    if spec.arch == "qwen2":
        return Qwen2Config(max_position_embeddings=4096, rope_theta=10000.0, **common)
    if spec.arch == "llama":
        return LlamaConfig(
            max_position_embeddings=16384,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192},
            **common,
        )
    if spec.arch == "qwen3":
        # head_dim set explicitly (Qwen3 style) and different from hidden/heads.
        return Qwen3Config(max_position_embeddings=4096, rope_theta=1000000.0, head_dim=32, **common)
    raise ValueError(f"unknown tiny architecture {spec.arch!r}")


def make_checkpoint(out_dir: Path, spec: TinySpec | str = "qwen2") -> Path:
    """Build a tiny random checkpoint (bf16 safetensors + tokenizer) in out_dir and return it."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = SPECS[spec] if isinstance(spec, str) else spec
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = save_tokenizer(out_dir, LLAMA3_PATTERN if spec.arch == "llama" else QWEN2_PATTERN, spec.ascii_only)
    vocab_size = -(-ids["size"] // spec.vocab_pad_to) * spec.vocab_pad_to
    config = make_config(spec, vocab_size, ids)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random norms and biases, so a wrong mapping cannot hide behind ones/zeros
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.copy_(1.0 + 0.2 * torch.randn_like(param) if "norm" in name else 0.1 * torch.randn_like(param))
    model.to(torch.bfloat16).save_pretrained(out_dir)
    return out_dir


def make_lora_adapter(base_dir: Path, out_dir: Path, r: int = 8, alpha: int = 16, seed: int = 1, **lora_kwargs) -> Path:
    """A PEFT LoRA adapter on all linear layers of base_dir with non-zero random A and B ("trained")."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", lora_dropout=0.0, **lora_kwargs)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.05 * torch.randn_like(param))
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)
