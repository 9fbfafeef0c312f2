"""Rewards: answer extraction and comparison, the format rule, length and repetition shapes, reward files
and how a RewardSet survives a reward that fails."""

import math
import sys
import types

import pytest

from engine import r1
from engine.errors import AhaError
from engine.train.rewards import (
    BUILTIN_REWARDS,
    MAX_REPORTED_ERRORS,
    RewardSet,
    accuracy_reward,
    answers_match,
    cosine_length_reward,
    extract_final_answer,
    format_reward,
    is_well_formed,
    load_reward,
    make_length_reward,
    make_repetition_reward,
    repetition_fraction,
    soft_overlong_punishment,
)

THOUGHT = "<think>\nLet me work it out.\n</think>\n\n"

# accuracy -----------------------------------------------------------------------------------------

ACCURACY_TABLE = [
    # (completion, ground truth, expected reward)
    (THOUGHT + "The answer is $\\boxed{42}$.", "42", 1.0),
    (THOUGHT + "\\boxed{\\frac{1}{2}}", "0.5", 1.0),  # nested braces, fraction vs decimal
    (THOUGHT + "\\boxed{\\dfrac{3}{4}}", "\\frac34", 1.0),
    (THOUGHT + "\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", 1.0),
    (THOUGHT + "\\boxed{{{7}}}", "7", 1.0),
    (THOUGHT + "\\boxed{2.0}", "2", 1.0),  # decimal vs integer
    (THOUGHT + "\\boxed{2.5}", "2", 0.0),
    (THOUGHT + "\\boxed{-7}", "-7", 1.0),  # negative
    (THOUGHT + "\\boxed{7}", "-7", 0.0),
    (THOUGHT + "\\boxed{-\\frac{3}{4}}", "-0.75", 1.0),
    (THOUGHT + "\\boxed{1,000}", "1000", 1.0),  # thousands separator
    (THOUGHT + "\\boxed{(3,500)}", "3500", 0.0),  # ...but a pair is no grouped number (scored 1.0 once)
    (THOUGHT + "\\boxed{5\\text{ cm}}", "5", 1.0),  # units
    (THOUGHT + "\\boxed{50\\%}", "50", 1.0),
    (THOUGHT + "\\boxed{x = 5}", "5", 1.0),
    (THOUGHT + "\\boxed{\\text{(B)}}", "B", 1.0),
    (THOUGHT + "\\boxed{(x-1)(x+1)}", "x^2 - 1", 1.0),  # symbolic
    (THOUGHT + "\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
    (THOUGHT + "\\boxed{x^2 + 1}", "x^2 - 1", 0.0),
    (THOUGHT + "\\boxed{\\left( 1, \\frac{1}{2} \\right)}", "(1, 0.5)", 1.0),  # tuple, element by element
    (THOUGHT + "\\boxed{[1, 2)}", "(1, 2)", 0.0),  # different interval
    (THOUGHT + "So the total is 18 apples.", "18", 1.0),  # last number fallback
    (THOUGHT + "3 + 4 = 7", "7", 1.0),
    (THOUGHT + "First 3, then 12.", "3", 0.0),  # the *last* number counts
    (THOUGHT + "It is -3/4.", "-0.75", 1.0),
    (THOUGHT + "I don't know.", "3", 0.0),  # no answer
    (THOUGHT + "\\boxed{8}", "7", 0.0),  # wrong
    ("<think>\nSurely \\boxed{41}.\n</think>\n\n\\boxed{42}", "42", 1.0),  # the thought's box is not the answer
    ("<think>\nSurely \\boxed{42}.\n</think>\n\n\\boxed{41}", "42", 0.0),
    ("<think>\nIt must be \\boxed{42} but I ran out of", "42", 0.0),  # an unclosed thought has no answer
    (THOUGHT + "\\boxed{42}" + r1.EOS, "42", 1.0),  # a decoded stop token is ignored
    (THOUGHT + "\\boxed{42}", "The ground truth \\boxed{42}", 1.0),  # a boxed ground truth
    (THOUGHT + "\\boxed{72}", "She earns 9 * 8 = 72.\n#### 72", 1.0),  # GSM8K's ####
    (THOUGHT + "\\boxed{__import__('os').system('false')}", "0", 0.0),  # parsed, never evaluated
    (THOUGHT + "\\boxed{9^{9^{9}}}", "1", 0.0),  # too large to compute: not equal, and fast
]


@pytest.mark.parametrize(("completion", "gold", "expected"), ACCURACY_TABLE)
def test_accuracy_table(completion, gold, expected):
    assert accuracy_reward(["prompt"], [completion], answer=[gold]) == [expected]


def test_accuracy_reads_a_prefilled_thought_and_scores_a_batch():
    completions = ["Twice 21.\n</think>\n\n\\boxed{42}", "Twice 21, so \\boxed{42}", THOUGHT + "\\boxed{42}"]
    # The second is a prefilled thought that never closed: no answer.
    assert accuracy_reward(["p"] * 3, completions, answer=[42, 42, 42], prefilled=[True, True, False]) == [1.0, 0.0, 1.0]
    # Not prefilled, the same text has no thought at all: the whole text is the answer part.
    assert accuracy_reward(["p"], ["Twice 21, so \\boxed{42}"], answer=["42"]) == [1.0]


def test_accuracy_without_ground_truth():
    assert accuracy_reward(["p", "p"], [THOUGHT + "1", THOUGHT + "1"], answer=[None, "1"]) == [None, 1.0]
    with pytest.raises(ValueError, match="'answer' column"):
        accuracy_reward(["p"], ["\\boxed{1}"])


def test_extract_final_answer():
    assert extract_final_answer(THOUGHT + "\\boxed{\\frac{a}{\\sqrt{b}}} and \\boxed{x}") == "x"
    assert extract_final_answer(THOUGHT + "\\boxed{\\frac{a}{\\sqrt{b}}}") == "\\frac{a}{\\sqrt{b}}"
    assert extract_final_answer(THOUGHT + "\\boxed 5") == "5"
    assert extract_final_answer(THOUGHT + "Between 1,234 and 1,500.") == "1,500"
    assert extract_final_answer(THOUGHT + "nothing") is None


def test_math_verify_is_consulted_when_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # not installed: the fallback decides
    assert not answers_match("\\sin(\\pi/2)", "1")  # beyond the fallback
    calls = []
    fake = types.SimpleNamespace(parse=lambda text: [text],
                                 verify=lambda gold, prediction: calls.append((gold, prediction)) or True)
    monkeypatch.setitem(sys.modules, "math_verify", fake)
    assert answers_match("\\sin(\\pi/2)", "1")
    assert calls == [(["\\boxed{1}"], ["\\boxed{\\sin(\\pi/2)}"])]


# format -------------------------------------------------------------------------------------------

FORMAT_TABLE = [
    # (completion, prefilled, well formed)
    ("<think>\nreasoning\n</think>\n\nThe answer is 4.", False, True),
    ("\n <think>reasoning</think>4", False, True),  # whitespace before <think> is fine
    ("<think></think>4", False, True),  # an empty thought is still one block
    ("<think>reasoning</think>4" + r1.EOS, False, True),
    ("reasoning\n</think>\n\nThe answer is 4.", True, True),  # the prompt opened the thought
    ("reasoning\n</think>\n\nThe answer is 4.", False, False),  # ...but here nothing opened it
    ("<think>reasoning</think>4", True, False),  # a prefilled prompt already opened it
    ("<think>\nreasoning that never ends", False, False),  # unterminated
    ("reasoning that never ends", True, False),
    ("<think>reasoning</think>\n \n", False, False),  # empty answer
    ("<think>a</think>b<think>c</think>d", False, False),  # two think blocks
    ("Sure! <think>reasoning</think>4", False, False),  # text before <think>
    ("<think>a <think> b</think>4", False, False),  # nested open tag
    ("<think>a</think>4</think>", False, False),  # stray close tag in the answer
    ("The answer is 4.", False, False),  # no thought at all
]


@pytest.mark.parametrize(("completion", "prefilled", "expected"), FORMAT_TABLE)
def test_format_table(completion, prefilled, expected):
    assert is_well_formed(completion, prefilled) is expected
    assert format_reward(["p"], [completion], prefilled=prefilled) == [float(expected)]


def test_format_takes_prefilled_per_sample():
    completions = ["a</think>b", "<think>a</think>b"]
    assert format_reward(["p", "p"], completions, prefilled=[True, False]) == [1.0, 1.0]
    assert format_reward(["p", "p"], completions, prefilled=[False, True]) == [0.0, 0.0]


# length and repetition ----------------------------------------------------------------------------

def lengths(*counts):
    return [[0] * count for count in counts]


def test_cosine_length_reward_endpoints_and_monotonicity():
    reward = cosine_length_reward(max_len=100)
    counts = [0, 10, 25, 50, 75, 100, 150]
    right = reward(["p"] * 7, [THOUGHT + "\\boxed{1}"] * 7, answer="1", completion_ids=lengths(*counts))
    wrong = reward(["p"] * 7, [THOUGHT + "\\boxed{2}"] * 7, answer="1", completion_ids=lengths(*counts))
    assert right[0] == pytest.approx(1.0) and right[3] == pytest.approx(0.75) and right[5] == pytest.approx(0.5)
    assert wrong[0] == pytest.approx(-1.0) and wrong[3] == pytest.approx(-0.75) and wrong[5] == pytest.approx(-0.5)
    assert all(a > b for a, b in zip(right[:6], right[1:6], strict=False))  # shorter correct is better
    assert all(a < b for a, b in zip(wrong[:6], wrong[1:6], strict=False))  # longer wrong is less bad
    assert right[6] == right[5] and wrong[6] == wrong[5]  # clamped beyond max_len
    assert min(right) > max(wrong)


def test_cosine_length_reward_options():
    reward = make_length_reward("cosine", max_len=10, exceed=-2.0, correct=(2.0, 1.0))
    assert reward(["p"] * 3, [THOUGHT + "1"] * 3, answer="1", completion_ids=lengths(0, 9, 10)) == \
        pytest.approx([2.0, 1.0 + (1 + math.cos(math.pi * 0.9)) / 2, -2.0])
    assert reward(["p"], [THOUGHT + "1"], answer=[None], completion_ids=lengths(3)) == [None]
    with pytest.raises(ValueError, match="completion_ids"):
        reward(["p"], [THOUGHT + "1"], answer="1")
    with pytest.raises(ValueError, match="unknown length reward"):
        make_length_reward("linear")


def test_soft_overlong_punishment():
    reward = soft_overlong_punishment(max_len=10, cache_len=4)
    counts = [0, 6, 7, 8, 10, 11]
    assert reward(["p"] * 6, ["x"] * 6, completion_ids=lengths(*counts)) == pytest.approx([0, 0, -0.25, -0.5, -1, -1])
    assert make_length_reward("overlong", max_len=10, cache_len=4)(["p"], ["x"], completion_ids=lengths(9)) == [-0.75]
    with pytest.raises(ValueError, match="cache_len"):
        soft_overlong_punishment(max_len=10, cache_len=20)


def test_repetition_penalty():
    # 9 words, 7 trigrams (abc bca cab abc bca cab abc), 3 distinct: 1 − 3/7.
    assert repetition_fraction("a b c a b c a b c") == pytest.approx(4 / 7)
    assert repetition_fraction("A b C a B c") == pytest.approx(1 - 3 / 4)  # lowercased
    assert repetition_fraction("too short") == 0.0
    reward = make_repetition_reward(ngram_size=3, max_penalty=0.5)
    assert reward(["p"], ["a b c a b c a b c"]) == pytest.approx([-0.5 * 4 / 7])
    looping = ["the cat sat on the mat " + "and then it sat again " * repeats for repeats in range(5)]
    scores = BUILTIN_REWARDS["repetition"](["p"] * 5, looping)
    assert scores[0] == scores[1] == 0.0  # one pass of the phrase repeats no trigram
    assert all(a > b for a, b in zip(scores[1:], scores[2:], strict=False))  # more loops, more penalty
    assert min(scores) >= -1.0


# reward files and RewardSet ----------------------------------------------------------------------

def write(tmp_path, text, name="my_rewards.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtins_are_combined_with_weights():
    rewards = RewardSet(["accuracy", "format"], weights=[1.0, 0.2])
    completions = [THOUGHT + "\\boxed{4}", "\\boxed{4}", THOUGHT + "\\boxed{5}"]
    scores = rewards.score(["p"] * 3, completions, answer=["4"] * 3, prefilled=False)
    assert scores.totals == pytest.approx([1.2, 1.0, 0.2])
    assert scores.per_reward == {"accuracy": [1.0, 1.0, 0.0], "format": [1.0, 0.0, 1.0]}
    assert scores.errors == []
    assert rewards.names == ["accuracy", "format"]


def test_custom_reward_file(tmp_path):
    path = write(tmp_path, (
        "from dataclasses import dataclass\n\n"
        "@dataclass\nclass Settings:\n    scale: float = 0.5\n\n"
        "def mentions_answer(prompts, completions, answer, **kwargs):\n"
        "    return [Settings().scale * (str(a) in c) for c, a in zip(completions, answer)]\n"))
    assert load_reward(f"{path}:mentions_answer").__name__ == "mentions_answer"
    rewards = RewardSet([f"{path}:mentions_answer", "accuracy"])
    scores = rewards.score(["p", "p"], [THOUGHT + "\\boxed{12}", THOUGHT + "\\boxed{13}"], answer=["12", "12"])
    assert scores.per_reward["mentions_answer"] == [0.5, 0.0]
    assert scores.totals == [1.5, 0.0]


def test_a_reward_failing_on_one_sample_leaves_it_unscored_and_reports_once(tmp_path):
    path = write(tmp_path, (
        "def strict(prompts, completions, **kwargs):\n"
        "    return [1.0 / len(c.split('|')[1]) for c in completions]\n"))
    rewards = RewardSet([f"{path}:strict", "format"])
    completions = ["a|xy", "a|", "a|x"]  # the second divides by zero
    scores = rewards.score(["p"] * 3, completions)
    assert scores.per_reward["strict"] == [0.5, None, 1.0]
    assert scores.totals[0] == 0.5 and math.isnan(scores.totals[1]) and scores.totals[2] == 1.0
    assert len(scores.errors) == 1
    assert "strict" in scores.errors[0] and "sample 1" in scores.errors[0] and "'a|'" in scores.errors[0]
    assert "ZeroDivisionError" in scores.errors[0] and "my_rewards.py:2" in scores.errors[0]
    again = rewards.score(["p"] * 3, ["a|", "a|xyzw", "a|"])
    assert again.per_reward["strict"] == [None, 0.25, None] and again.errors == []  # already reported


def test_unscored_samples_get_zero_advantage():
    from engine.train.grpo_math import group_advantages

    def picky(prompts, completions, **kwargs):
        return [None if "?" in completion else float(len(completion)) for completion in completions]

    scores = RewardSet([picky]).score(["p"] * 4, ["aa", "?", "aaaa", "aaa"])
    assert scores.errors == ["reward picky failed on sample 1 (completion '?'): returned None"]
    advantages = group_advantages(scores.totals, group_size=4, scale="none")
    assert advantages.tolist() == [-1.0, 0.0, 1.0, 0.0]  # baseline 3 from the scored three


def test_a_batch_failure_is_isolated_sample_by_sample():
    def one_at_a_time(prompts, completions, answer, **kwargs):
        if len(completions) != 1:
            raise RuntimeError("batches not supported")
        return [float(completions[0] == answer[0])]

    scores = RewardSet([one_at_a_time]).score(["p"] * 3, ["1", "2", "3"], answer=["1", "0", "3"], prefilled=False)
    assert scores.totals == [1.0, 0.0, 1.0] and scores.errors == []


def test_wrong_values_are_errors():
    def odd(prompts, completions, **kwargs):
        return ["high" if completion == "b" else 1 for completion in completions]

    scores = RewardSet([odd]).score(["p"] * 2, ["a", "b"])
    assert scores.per_reward["odd"] == [1.0, None]
    assert scores.errors == ["reward odd failed on sample 1 (completion 'b'): returned 'high' (str), not a number"]


def test_distinct_errors_are_capped():
    def noisy(prompts, completions, **kwargs):
        raise ValueError(f"bad {completions[0]}")

    def fine(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    rewards = RewardSet([noisy, fine])
    with pytest.raises(AhaError):  # noisy fails everywhere
        rewards.score(["p"] * 3, ["a", "b", "c"])

    def mostly_noisy(prompts, completions, **kwargs):
        return [1.0 if completion == "ok" else 1 / 0 if completion == "zero" else int(completion)
                for completion in completions]

    rewards = RewardSet([mostly_noisy])
    scores = rewards.score(["p"] * 9, ["ok", *"abcdefgh"])
    assert len(scores.errors) == MAX_REPORTED_ERRORS + 1
    assert scores.errors[-1] == "reward mostly_noisy: further distinct errors are not reported"
    assert rewards.score(["p"] * 2, ["ok", "xyz"]).errors == []


def test_a_reward_failing_for_every_sample_stops_the_run(tmp_path):
    path = write(tmp_path, "def broken(prompts, completions, **kwargs):\n    raise KeyError('solution')\n")
    with pytest.raises(AhaError) as caught:
        RewardSet(["format", f"{path}:broken"]).score(["p"] * 2, ["<think>a</think>b"] * 2)
    message = str(caught.value)
    assert message.startswith("reward broken failed for every sample: KeyError: 'solution'")
    assert message.endswith("; fix the reward file") and "\n" not in message
    with pytest.raises(AhaError, match="reward accuracy failed for every sample: .*'answer' column.*dataset"):
        RewardSet(["accuracy"]).score(["p"], ["\\boxed{1}"])


@pytest.mark.parametrize(("source", "expected"), [
    ("def broken(:\n    pass\n", "SyntaxError"),
    ("import no_such_module_for_aha\n", "ModuleNotFoundError: No module named 'no_such_module_for_aha'"),
    ("raise RuntimeError('needs a GPU\\nand more')\n", "RuntimeError: needs a GPU and more (my_rewards.py:1)"),
])
def test_an_import_error_in_a_reward_file_is_one_line(tmp_path, source, expected):
    path = write(tmp_path, source)
    with pytest.raises(AhaError) as caught:
        load_reward(f"{path}:reward")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"cannot import reward file {path}") and expected in message
    assert not any(getattr(module, "__file__", None) == str(path) for module in list(sys.modules.values()))


def test_reward_specs_are_checked(tmp_path):
    path = write(tmp_path, "def helper():\n    pass\n\ndef score(prompts, completions, **kwargs):\n    return []\n")
    with pytest.raises(AhaError, match=r"has no function 'scor' \(it defines: helper, score\)"):
        load_reward(f"{path}:scor")
    with pytest.raises(AhaError, match="not found"):
        load_reward(f"{tmp_path / 'missing.py'}:score")
    with pytest.raises(AhaError, match="unknown reward 'acuracy': use one of accuracy, format, length, repetition"):
        load_reward("acuracy")
    with pytest.raises(AhaError, match="2 rewards but 1 weights"):
        RewardSet(["accuracy", "format"], weights=[1.0])
    with pytest.raises(AhaError, match="two rewards are named format"):
        RewardSet(["format", "format"])
    assert set(BUILTIN_REWARDS) == {"accuracy", "format", "length", "repetition", "language"}
