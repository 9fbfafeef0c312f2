"""The demo's tiny reasoning model: a random-init Qwen2 (124K parameters) with a byte-level BPE tokenizer
that llama.cpp runs, so the trained model exports to GGUF and chats like a real R1 distill.

The tokenizer is built, not trained (deterministic, no corpus): the 256 byte symbols of GPT-2's byte-level
alphabet, one merge ("\\n\\n", which R1 writes after `</think>`: llama.cpp refuses a BPE vocabulary without
merges), Qwen2's pre-tokenizer regex (so `tokenizer.ggml.pre = "qwen2"` and every digit is its own token,
as in Qwen2 itself), and the R1 distills' special tokens: BOS/EOS/pad special, the turn markers and think
tags added but not special. The chat template is the official R1-Distill one (engine.r1.CHAT_TEMPLATE),
which pre-fills `<think>\\n`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.r1 import ASSISTANT, BOS, CHAT_TEMPLATE, EOS, THINK_CLOSE, THINK_OPEN, USER

PAD = "<｜▁pad▁｜>"
# Qwen2's pre-tokenizer regex as its tokenizer.json carries it (one digit per pre-token: `\p{N}`).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MERGES = [("Ċ", "Ċ")]  # "\n\n": the one merge (byte-level spelling of a newline is "Ċ")


@dataclass(frozen=True)
class DemoModelSpec:
    """Shape of the demo model. hidden is a multiple of 32 so that q8_0 applies to every matrix."""

    layers: int = 2
    hidden: int = 64
    heads: int = 2
    kv_heads: int = 2
    ffn: int = 192
    max_positions: int = 256
    tied: bool = True
    init_std: float = 0.06              # the weights' normal init (transformers' initializer_range; see recipe.py)


def build_demo_tokenizer():
    """The demo's `tokenizers.Tokenizer`: 256 byte tokens (ids 0–255), the "\\n\\n" merge (256), then BOS,
    EOS, pad (special) and the R1 turn markers and think tags (added, not special): 264 tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merged = ["".join(pair) for pair in MERGES]
    vocab = {token: index for index, token in enumerate(alphabet + merged)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES)))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOS, EOS, PAD)])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t in (USER, ASSISTANT, THINK_OPEN, THINK_CLOSE)])
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(  # add_bos_token: true, as the R1 distills
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 $B:1", special_tokens=[(BOS, bos_id)])
    return tokenizer


def save_demo_tokenizer(folder: Path) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json (R1 chat template, add_bos_token true) to folder.
    Returns the special ids and the size: {"bos", "eos", "pad", "size"}."""
    from transformers import PreTrainedTokenizerFast

    raw = build_demo_tokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    config_file = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    # unk_token null: byte-level BPE has no unknown token (transformers' Qwen2Tokenizer would add one).
    config.update(add_bos_token=True, add_eos_token=False, unk_token=None, chat_template=CHAT_TEMPLATE)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    (Path(folder) / "chat_template.jinja").unlink(missing_ok=True)  # one copy of the template, as R1's repos
    return {name: raw.token_to_id(token) for name, token in (("bos", BOS), ("eos", EOS), ("pad", PAD))} | {
        "size": raw.get_vocab_size(with_added_tokens=True)}


def make_demo_model(folder: Path, seed: int = 0, spec: DemoModelSpec = DemoModelSpec()) -> Path:
    """Write a random-init Qwen2ForCausalLM (float32 safetensors) with the demo tokenizer to folder; the
    same seed gives the same bytes."""
    import torch
    import transformers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    transformers.utils.logging.disable_progress_bar()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = save_demo_tokenizer(folder)
    config = Qwen2Config(vocab_size=ids["size"], hidden_size=spec.hidden, intermediate_size=spec.ffn,
                         num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                         num_key_value_heads=spec.kv_heads, max_position_embeddings=spec.max_positions,
                         tie_word_embeddings=spec.tied, initializer_range=spec.init_std, rope_theta=10000.0,
                         rms_norm_eps=1e-6,
                         bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                         attn_implementation="eager")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)  # the caller's random stream is not ours to move
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.bos_token_id = ids["bos"]
    model.save_pretrained(folder)
    return folder

