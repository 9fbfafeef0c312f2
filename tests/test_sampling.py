"""The KV-cache sampler: padding and positions, EOS and the completion mask, greedy equal to
transformers' generate, top-p and seeded sampling, prompt rendering. (Its speed against generate is
bench/sampling.py's.)"""

from types import SimpleNamespace

import pytest
import torch

from engine.train.core import load_tokenizer
from engine.train.data import TaskSource
from engine.train.sampling import (
    decode,
    encode_prompts,
    eos_token_ids,
    greedy_accuracy,
    is_prefilled,
    left_pad,
    position_ids,
    sample,
)
from tests.support.char_model import make_char_model


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = make_char_model(tmp_path_factory.mktemp("char"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return model.eval(), load_tokenizer(folder)


class ScriptedModel(torch.nn.Module):
    """Emits token 3 until the position of its input reaches 5, then EOS (1): rows whose prompts end at
    different positions stop at different steps. Checks that positions count real tokens only."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids, cache=None, use_cache=True, logits_to_keep=None):
        assert attention_mask.shape[1] >= input_ids.shape[1]
        logits = torch.full((*input_ids.shape, 5), -10.0)  # (B, L, V)
        stop = position_ids >= 5  # (B, L)
        logits[..., 3] = torch.where(stop, -10.0, 10.0)
        logits[..., 1] = torch.where(stop, 10.0, -10.0)
        return SimpleNamespace(logits=logits)


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6], [7, 8, 9, 10], []], pad_id=0)
    assert ids.tolist() == [[0, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 0]]
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert position_ids(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3], [0, 0, 0, 0]]


def test_stops_when_every_row_has_eos_and_masks_after_it():
    model = ScriptedModel()
    prompts = [[2, 2], [2, 2, 2, 2], [2] * 6]  # last positions 1, 3, 5
    rollout = sample(model, prompts, max_new_tokens=10, eos_ids=1, pad_id=0, temperature=0.0)
    assert rollout.completion_ids.tolist() == [[3, 3, 3, 3, 1], [3, 3, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert rollout.mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert rollout.lengths.tolist() == [5, 3, 1]
    assert rollout.terminated.tolist() == [True, True, True]
    assert model.training  # given back in its mode

    clipped = sample(model, prompts, max_new_tokens=3, eos_ids=[1], pad_id=0, temperature=0.7)
    assert clipped.completion_ids.tolist() == [[3, 3, 3], [3, 3, 1], [1, 0, 0]]
    assert clipped.terminated.tolist() == [False, True, True]
    assert clipped.mask.tolist() == [[1, 1, 1], [1, 1, 1], [1, 0, 0]]


def test_cancel_stops_the_rollout():
    class AfterTwo:
        reads = 0

        @property
        def cancelled(self):
            self.reads += 1
            return self.reads > 2

    rollout = sample(ScriptedModel(), [[2, 2]], max_new_tokens=10, eos_ids=1, pad_id=0, temperature=0.0,
                     cancel=AfterTwo())
    assert rollout.cancelled and rollout.completion_ids.shape[1] == 3


def test_greedy_equals_generate(char_model):
    """Left-padded prompts of different lengths: our loop and model.generate pick the same tokens, on 128
    rows × 40 tokens (the GRPO batch of the learning test)."""
    model, tokenizer = char_model
    rows = TaskSource("addition").heldout(128)
    ids, _, _ = encode_prompts(tokenizer, [row["prompt"] for row in rows])
    ids = [sequence[index % 4:] for index, sequence in enumerate(ids)]  # lengths 5..8
    ours = sample(model, ids, max_new_tokens=40, eos_ids=eos_token_ids(tokenizer, model), pad_id=0, temperature=0.0)
    prompt_ids, prompt_mask = left_pad(ids, 0)
    theirs = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=40, do_sample=False,
                            eos_token_id=1, pad_token_id=0)[:, prompt_ids.shape[1]:]
    width = min(theirs.shape[1], ours.completion_ids.shape[1])
    same = (theirs[:, :width] == ours.completion_ids[:, :width]) | (ours.mask[:, :width] == 0)
    assert bool(same.all())


def test_seeded_sampling_repeats_and_tiny_top_p_is_greedy(char_model):
    model, tokenizer = char_model
    ids, _, _ = encode_prompts(tokenizer, ["123+456=", "9+9="])
    first = sample(model, ids, max_new_tokens=12, eos_ids=1, pad_id=0, temperature=1.0,
                   generator=torch.Generator().manual_seed(3))
    second = sample(model, ids, max_new_tokens=12, eos_ids=1, pad_id=0, temperature=1.0,
                    generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.completion_ids, second.completion_ids)
    greedy = sample(model, ids, max_new_tokens=12, eos_ids=1, pad_id=0, temperature=0.0)
    nucleus = sample(model, ids, max_new_tokens=12, eos_ids=1, pad_id=0, temperature=1.0, top_p=1e-6)
    assert torch.equal(greedy.completion_ids, nucleus.completion_ids)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_finished_rows_leave_the_batch_without_changing_any_row(char_model, top_p):
    """Compaction: once a quarter of the rows have emitted EOS they leave the forward batch and the KV
    cache; every row's tokens are those of the uncompacted run (the draws are made for the full batch)."""
    model, tokenizer = char_model
    rows = TaskSource("addition", seed=5).heldout(16)
    ids, _, _ = encode_prompts(tokenizer, [row["prompt"] for row in rows])
    prompts = [sequence for sequence in ids for _ in range(4)]  # 64 rows
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        runs = [sample(model, prompts, max_new_tokens=40, eos_ids=1, pad_id=0, temperature=1.0, top_p=top_p,
                       generator=torch.Generator().manual_seed(11), compact=compact) for compact in (False, True)]
    finally:
        hook.remove()
    plain, compacted = runs
    assert torch.equal(plain.completion_ids, compacted.completion_ids)
    assert torch.equal(plain.terminated, compacted.terminated) and torch.equal(plain.mask, compacted.mask)
    steps = plain.completion_ids.shape[1]
    assert set(sizes[:steps]) == {64} and min(sizes[steps:]) < 64  # only the compacted run shrank its batch
    assert 16 <= int(plain.terminated.sum()) < 64 and plain.lengths.min() < steps  # rows ended at many steps


def test_prompts_render_through_the_chat_template(char_model, checkpoint):
    _, tokenizer = char_model
    ids, rendered, prefilled = encode_prompts(tokenizer, ["12+3="])
    assert rendered == ["12+3="] and prefilled == [False]
    assert tokenizer.convert_ids_to_tokens(ids[0]) == list("12+3=")
    r1_tokenizer = load_tokenizer(checkpoint("qwen2"))
    _, rendered, prefilled = encode_prompts(r1_tokenizer, ["What is 2+2?"])
    assert rendered[0].endswith("<｜Assistant｜><think>\n") and prefilled == [True]
    assert is_prefilled("x<think>\n") and not is_prefilled("x</think>\n")
    # A rendered prompt is remembered, with the template as part of the key: a new template renders anew.
    r1_tokenizer.chat_template = "{{ messages[0]['content'] }}!"
    assert encode_prompts(r1_tokenizer, ["What is 2+2?"])[1] == ["What is 2+2?!"]


def test_decode_stops_at_eos_and_greedy_accuracy_scores(char_model):
    model, tokenizer = char_model
    completion = tokenizer("<think>\n1+1=2\n</think>\n2", add_special_tokens=False).input_ids
    ids = torch.tensor([completion + [1, 5, 5]])
    mask = torch.tensor([[1] * (len(completion) + 1) + [0, 0]])
    assert decode(tokenizer, ids, mask, [1]) == ["<think>\n1+1=2\n</think>\n2"]
    accuracy, details = greedy_accuracy(model, tokenizer, TaskSource("addition").heldout(8), max_new_tokens=4)
    assert accuracy == 0.0 and details["mean_length"] <= 4  # a random model; 4 tokens can't answer


LLAMA3_LIKE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] | trim }}<|eot_id|>{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n")
SHOUTING = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
TESTS_CONTENT = "{% for m in messages %}{% if '7' in m['content'] %}seven:{% endif %}{{ m['content'] }}{% endfor %}"


@pytest.mark.parametrize("template", [None, LLAMA3_LIKE, SHOUTING, TESTS_CONTENT])
@pytest.mark.parametrize("system_prompt", [None, "Think step by step."])
def test_plain_prompts_render_as_the_template_does(checkpoint, template, system_prompt):
    """render_prompt writes a plain prompt into the frame its template rendered once (the R1 template, a
    Llama-3-like one that trims): the same text as apply_chat_template, prompt by prompt. A template that
    changes or tests the content gets no frame and renders every prompt itself."""
    from engine.train.sampling import _PLAIN_PROMPT, _render, render_prompt

    tokenizer = load_tokenizer(checkpoint("qwen2"))
    if template is not None:
        tokenizer.chat_template = template
    prompts = ["358+467=", "What is 7 times 8?", "12 - 5 = ?", " padded ", "x <think> y", "\\frac{1}{2} + 1",
               "line one\nline two", "7"]
    assert [bool(_PLAIN_PROMPT.fullmatch(prompt)) for prompt in prompts] == [True, True, True, False, False, False,
                                                                             True, True]
    for prompt in prompts * 2:  # the second round reads the remembered texts
        expected = _render(tokenizer, [{"role": "user", "content": prompt}], system_prompt)
        assert render_prompt(tokenizer, prompt, system_prompt) == expected
    frame = tokenizer.__dict__["_aha_frames"][(tokenizer.chat_template, system_prompt)]
    assert (frame is not None) is (template in (None, LLAMA3_LIKE))
