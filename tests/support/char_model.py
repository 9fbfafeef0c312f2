"""A character-level tiny Qwen2 for the learning tests (tests/test_grpo_learning.py): the R1 recipe in
miniature.

`make_char_model(folder)` writes a real HF checkpoint folder: a random-init `Qwen2ForCausalLM` (4 layers,
hidden 128, 4 heads, ffn 384, tied embeddings, ~0.86M parameters, eager attention) and a real `tokenizers`
tokenizer with one token per character of `0-9 + - * = \\n space`, plus pad, eos, `<think>`, `</think>`
(20 tokens), and a chat template that renders just the user's text. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

CHARACTERS = list("0123456789+-*=\n ")
PAD, EOS, THINK_OPEN, THINK_CLOSE = "<pad>", "<eos>", "<think>", "</think>"
VOCABULARY = [PAD, EOS, THINK_OPEN, THINK_CLOSE, *CHARACTERS]  # ids 0..19
# The user's text and nothing else: the loop's "chat template applied" path runs, and the prompt of
# "123+456=" stays those 8 characters. No generation prompt: the completion opens its own <think>.
CHAT_TEMPLATE = "{% for message in messages %}{% if message['role'] == 'user' %}{{ message['content'] }}{% endif %}{% endfor %}"


def build_char_tokenizer():
    """A `tokenizers.Tokenizer`: WordLevel over single characters, a pre-tokenizer that isolates every
    character, the think tags as added (non-special) tokens, pad/eos special, a Fuse decoder."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocabulary = {token: index for index, token in enumerate(VOCABULARY)}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token=PAD))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in (PAD, EOS)])
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in (THINK_OPEN, THINK_CLOSE)])
    return tokenizer


def make_char_model(folder: Path, seed: int = 0, layers: int = 4, hidden: int = 128, heads: int = 4,
                    ffn: int = 384) -> Path:
    """Write the char-level checkpoint (float32 safetensors, tokenizer, chat template) to folder."""
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    transformers.utils.logging.disable_progress_bar()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_char_tokenizer(), eos_token=EOS, pad_token=PAD)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text(encoding="utf-8"))
    tokenizer_config.update(chat_template=CHAT_TEMPLATE, add_bos_token=False, add_eos_token=False)
    config_file.write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (folder / "chat_template.jinja").unlink(missing_ok=True)

    config = Qwen2Config(vocab_size=len(VOCABULARY), hidden_size=hidden, intermediate_size=ffn,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=256, tie_word_embeddings=True, rope_theta=10000.0,
                         eos_token_id=VOCABULARY.index(EOS), pad_token_id=VOCABULARY.index(PAD),
                         bos_token_id=None, attn_implementation="eager")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(folder)
    return folder
