"""The demo's tiny model (engine/demo/model.py): the same bytes for a seed, a tokenizer that keeps every digit
of the task its own token, and a GGUF whose llama.cpp tokenization is the Hugging Face one."""

import hashlib
import json

import pytest

from engine.demo.model import DemoModelSpec, build_demo_tokenizer, make_demo_model
from engine.distill.traces import task_trace
from engine.llama_backend import load_llama
from engine.r1 import BOS
from engine.train.core import load_tokenizer
from engine.train.data import TaskSource

FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def digest(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def task_rows(count=100):
    """Rows of the task (prompt, answer, completion): held-out and training ones."""
    return [*TaskSource("addition").heldout(count // 2), *(TaskSource("addition", 3).row(i) for i in range(count // 2))]


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    return make_demo_model(tmp_path_factory.mktemp("demo") / "model", seed=0)


def test_same_seed_same_bytes_other_seed_other_weights(demo_model, tmp_path):
    again = make_demo_model(tmp_path / "again", seed=0)
    other = make_demo_model(tmp_path / "other", seed=1)
    assert digest(again) == digest(demo_model)
    assert digest(other)["model.safetensors"] != digest(demo_model)["model.safetensors"]
    assert digest(other)["tokenizer.json"] == digest(demo_model)["tokenizer.json"]
    config = json.loads((demo_model / "config.json").read_text())
    spec = DemoModelSpec()
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (spec.layers, spec.hidden, 264)


def test_digits_are_single_tokens_and_decoding_is_lossless(demo_model):
    tokenizer = load_tokenizer(demo_model)
    rows = task_rows()
    assert len(tokenizer) == 264 and tokenizer.unk_token is None
    for row in rows:
        trace = task_trace(row, tokenizer)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                               add_generation_prompt=True)
        assert prompt.startswith(BOS) and prompt.endswith("<think>\n")
        for text in (row["prompt"], trace["completion"]):
            ids = tokenizer(text, add_special_tokens=False).input_ids
            assert tokenizer.decode(ids) == text
            # one token per character, except "\n\n" (the one merge) and the think tag (an added token)
            expected = len(text) - text.count("\n\n") - (len("</think>") - 1) * text.count("</think>")
            assert len(ids) == expected, text
    raw = build_demo_tokenizer()
    assert raw.encode("\n\n", add_special_tokens=False).ids == [256]
    assert raw.encode("12", add_special_tokens=False).ids == [raw.token_to_id("1"), raw.token_to_id("2")]


def test_llama_cpp_tokenizes_the_exported_vocabulary_as_hugging_face_does(demo_model, tmp_path):

    from engine.export.gguf_writer import write_gguf

    gguf = write_gguf(demo_model, tmp_path / "demo-f32.gguf", "f32")
    tokenizer, rows = load_tokenizer(demo_model), task_rows()
    llm = load_llama(str(gguf), n_ctx=64, vocab_only=True, verbose=False)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                           add_generation_prompt=True) + task_trace(row, tokenizer)["completion"]
             for row in rows]
    texts += ["Hello, world! It's 12,345.67 — naïve café.\n\n\tdone", "你好 🙂"]
    for text in texts:
        hf = tokenizer(text, add_special_tokens=False).input_ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf, text
