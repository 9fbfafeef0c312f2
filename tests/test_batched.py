"""engine.eval.batched on real llama.cpp: batched samples equal sequential ones, seeds, stops, cancel, errors."""

from __future__ import annotations

import pytest

from engine import r1
from engine.distill.teachers import Sampling
from engine.errors import AhaError
from engine.eval.batched import BatchedGGUF, default_parallel, kv_bytes_per_token, thinking_token_count
from engine.llama_backend import load_llama
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT

# Different lengths: a few tokens, a sentence, ~100 and ~300 tokens (several prompt batches apart).
PROMPTS = ["hi", "What is 12 + 35?", "Tell me a long story about a cat. " * 10, "x" * 300]


@pytest.fixture(scope="module")
def teacher(gguf_file):
    model = BatchedGGUF(gguf_file("qwen2", "f32"), n_ctx=1024, n_threads=2)
    yield model
    model.close()


@pytest.fixture(scope="module")
def sequential(gguf_file):
    """sequential(prompt_tokens, max_tokens, temperature, seed) → the reply's text and token count from the
    plain llama_cpp.Llama token loop (`Llama.generate`, what create_completion runs), stopped where ChatModel
    stops: an end-of-generation token or an R1 turn marker."""
    import llama_cpp

    llm = load_llama(str(gguf_file("qwen2", "f32")), n_ctx=1024, n_threads=2, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    stops = {llm.token_eos()} | {ids[0] for ids in (llm.tokenize(s.encode(), add_bos=False, special=True)
                                                   for s in r1.STOPS) if len(ids) == 1}

    def run(tokens: list[int], max_tokens: int, temperature: float = 0.0, seed: int | None = None):
        if seed is not None:
            llm.set_seed(seed)
        reply = []
        for token in llm.generate(tokens, temp=temperature, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0):
            if token in stops or llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            reply.append(token)
            if len(reply) >= max_tokens:
                break
        return llm.detokenize(reply).decode("utf-8", errors="replace"), len(reply)

    yield run
    llm.close()


def rendered(teacher, prompt):
    return teacher.chat.render([{"role": "user", "content": prompt}])


@pytest.mark.parametrize("n_parallel", [None, 3])  # all 16 together; 3 slots reused as samples end
def test_greedy_batched_equals_sequential_token_for_token(teacher, sequential, n_parallel):
    teacher.n_parallel = n_parallel
    sampling = Sampling(temperature=0.0, max_tokens=24, seed=0)
    try:
        results = dict(teacher.generate(PROMPTS, 4, sampling))
    finally:
        teacher.n_parallel = None
    assert sorted(results) == [0, 1, 2, 3]
    for index, prompt in enumerate(PROMPTS):
        tokens = rendered(teacher, prompt).tokens
        text, count = sequential(tokens, 24)
        for sample in results[index]:
            assert (sample.raw, sample.usage["completion_tokens"]) == (text, count)
            assert sample.usage["prompt_tokens"] == len(tokens)
            assert sample.finish_reason == ("length" if count == 24 else "stop")


def test_same_seed_same_samples_each_sample_its_own_seed(teacher):
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=16, seed=5)
    first = dict(teacher.generate(PROMPTS[:2], 4, sampling))
    again = dict(teacher.generate(PROMPTS[:2], 4, sampling))
    shifted = dict(teacher.generate(PROMPTS[:2], 3, Sampling(temperature=1.0, top_p=0.95, max_tokens=16, seed=6)))
    teacher.n_parallel = 1
    try:
        alone = dict(teacher.generate(PROMPTS[:2], 4, sampling))   # one sequence at a time
    finally:
        teacher.n_parallel = None
    # The same batch is repeated exactly. Across batch compositions (4 sequences together, one at a time, 3 per
    # prompt) llama.cpp's CPU kernels sum in another order, so logits differ in their last bits, and at
    # temperature 1.0 a random-weight model's nearly tied tokens can flip a late token: measured on an AMD EPYC,
    # 1 of 4 samples of a prompt. A seed mix-up would change nearly every sample (different seeds give different
    # texts, asserted below), so at least half the samples must still be identical (11 of 14 were).
    same, pairs = 0, 0
    for index in (0, 1):
        raws = [s.raw for s in first[index]]
        assert raws == [s.raw for s in again[index]]
        assert [s.sampling["seed"] for s in first[index]] == [5, 6, 7, 8]
        assert len(set(raws)) > 1                                  # different seeds, different samples
        # sample i is seeded seed + i, whatever else is in the batch:
        alone_raws, shifted_raws = [s.raw for s in alone[index]], [s.raw for s in shifted[index]]
        for mine, other in [*zip(raws, alone_raws, strict=True), *zip(raws[1:], shifted_raws, strict=True)]:
            same, pairs = same + (mine == other), pairs + 1
    assert same >= 0.5 * pairs, f"only {same} of {pairs} samples equal across batch compositions"


def test_finish_reasons_and_thinking_split(scripted_gguf):
    with_budget = Sampling(temperature=0.0, max_tokens=400, seed=0)
    model = BatchedGGUF(scripted_gguf, n_ctx=1024, n_threads=2)
    try:
        (_, full), = model.generate([QUESTION], 2, with_budget)
        (_, cut), = model.generate([QUESTION], 2, Sampling(temperature=0.0, max_tokens=10, seed=0))
    finally:
        model.close()
    for sample in full:
        assert sample.finish_reason == "stop" and sample.prefilled
        assert (sample.thinking, sample.answer) == (THOUGHT.strip(), ANSWER)
        assert 0 < sample.usage["thinking_tokens"] < sample.usage["completion_tokens"]
    for sample in cut:
        assert sample.finish_reason == "length" and sample.answer == "" and THOUGHT.startswith(sample.thinking)
        assert sample.usage["thinking_tokens"] == sample.usage["completion_tokens"] == 10


class CountingCancel:
    """Cancelled from the `after`-th check on (a CancelToken-like `.cancelled`)."""

    def __init__(self, after: int):
        self.after, self.checks = after, 0

    @property
    def cancelled(self) -> bool:
        self.checks += 1
        return self.checks > self.after


def test_cancel_stops_between_decode_steps(teacher):
    cancel = CountingCancel(after=6)
    done = list(teacher.generate(PROMPTS, 4, Sampling(temperature=0.0, max_tokens=500, seed=0), cancel))
    assert done == [] and cancel.checks == 7                      # nothing incomplete is yielded
    assert list(teacher.generate(PROMPTS[:1], 1, Sampling(temperature=0.0, max_tokens=2)))  # still usable


def test_bad_paths_are_one_line_errors(tmp_path):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model")
    for path in (tmp_path / "missing.gguf", not_gguf):
        with pytest.raises(AhaError) as raised:
            BatchedGGUF(path)
        assert "\n" not in str(raised.value) and path.name in str(raised.value)


def test_thinking_token_count_and_parallel_choice():
    pieces = [b"Step", b" 1", b"</th", b"ink>", b"\n\n", b"4"]
    assert thinking_token_count(pieces, prefilled=True) == 4      # through the token completing </think>
    assert thinking_token_count(pieces[:3], prefilled=True) == 3  # an unclosed thought is all thinking
    assert thinking_token_count([b"<think>", b"a", b"</think>", b"b"], prefilled=False) == 3
    assert thinking_token_count([b"4"], prefilled=False) == 0
    cell = kv_bytes_per_token(n_layer=24, n_embd=1024, n_head=16, n_head_kv=2)
    assert cell == 2 * 24 * 128 * 2
    assert default_parallel(8, 8, 256, cell) == 64                    # all of a small job, up to the cap
    assert default_parallel(8, 1, 256, cell) == 8
    assert default_parallel(64, 100, 32768, cell) == (2 << 30) // (32768 * cell)  # the KV budget decides
    assert default_parallel(8, 8, 10**9, cell) == 1
