"""The evaluation estimators on hand-computed cases: pass@k (Chen et al.'s unbiased estimator), pass@1 as the
mean over k samples, the majority vote with lighteval's tie rule, summaries and the paired comparison."""

import math

import pytest

from engine.eval.metrics import (
    ProblemResult,
    compare,
    cons_at_k,
    majority,
    pass1_mean,
    pass_at_k,
    pass_at_k_levels,
    sign_flip_p,
    summarize,
    thinking_buckets,
)


def problem(prompt_id, correct, extracted=None, thinking=None, answer=None, cut=None, majority_index=None):
    count = len(correct)
    return ProblemResult(prompt_id, tuple(correct), tuple(extracted or ["1"] * count),
                         tuple(thinking or [10] * count), tuple(answer or [1] * count),
                         tuple(cut or [False] * count), majority_index)


# pass@k -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (4, 1, 2, 1 - 3 / 6),          # 1 − C(3,2)/C(4,2)
    (5, 2, 3, 1 - 1 / 10),         # 1 − C(3,3)/C(5,3)
    (8, 2, 4, 1 - 15 / 70),        # 1 − C(6,4)/C(8,4)
    (10, 3, 1, 0.3),               # pass@1 = c/n
    (5, 3, 3, 1.0),                # n − c = 2 < k: every draw of 3 holds a correct one
    (4, 1, 4, 1.0),                # k = n with one correct
    (4, 0, 4, 0.0),                # k = n, none correct
    (10, 0, 3, 0.0),               # c = 0
    (6, 6, 1, 1.0),                # all correct
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_equals_the_binomial_form_on_a_grid():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k)), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0.0 < pass_at_k(2000, 3, 64) < 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 0), (4, 1, 5), (4, 5, 2), (4, -1, 2)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass1_is_the_mean_over_the_samples():
    assert pass1_mean([True, False, False, True]) == 0.5
    assert pass1_mean([False] * 3) == 0.0
    assert pass1_mean([True]) == 1.0
    with pytest.raises(ValueError):
        pass1_mean([])


def test_pass_at_k_levels():
    assert pass_at_k_levels(1) == [1]
    assert pass_at_k_levels(8) == [1, 2, 4, 8]
    assert pass_at_k_levels(6) == [1, 2, 4, 6]
    assert pass_at_k_levels(64) == [1, 2, 4, 8, 16, 32, 64]


# Majority vote ------------------------------------------------------------------------------------

def test_majority_largest_group_wins():
    assert majority(["4", "3", "3"], same=str.__eq__) == 1
    assert majority(["7", "5", "7", "5", "5"], same=str.__eq__) == 1


def test_majority_tie_goes_to_the_answer_seen_first_as_in_lighteval():
    # lighteval: max(all_answers, key=all_answers.count) keeps the first maximal element in sample order
    assert majority(["3", None, "4", "4", "3"], same=str.__eq__) == 0
    assert majority(["4", "3", "3", "4"], same=str.__eq__) == 0
    assert majority(["9", "4", "3", "3", "4"], same=str.__eq__) == 1
    answers = ["a", "b", "b", "a", "c"]
    assert answers[majority(answers, same=str.__eq__)] == max(answers, key=answers.count)


def test_missing_answers_never_vote():
    assert majority([None, None, "5"], same=str.__eq__) == 2
    assert majority([None, None]) is None
    assert majority([]) is None


def test_equivalent_answers_in_different_forms_vote_together():
    assert majority(["0.7", "1/2", "\\frac{1}{2}"]) == 1
    assert majority(["\\frac{1}{2}", "0.7", "0.7", "1/2", "0.5"]) == 0   # three halves against two 0.7


def test_cons_at_k():
    assert cons_at_k(["0.7", "1/2", "\\frac{1}{2}"], [False, True, True]) == 1.0
    assert cons_at_k(["0.7", "0.7", "1/2"], [False, False, True]) == 0.0
    assert cons_at_k([None, None], [False, False]) == 0.0
    assert cons_at_k(["4", "3", "3", "4"], [False, True, True, False], same=str.__eq__) == 0.0  # tie: "4" first


# Summary ------------------------------------------------------------------------------------------

def tiny_set():
    first = ProblemResult("p1", (True, False, True, False), ("5", "4", "5", None), (10, 20, 30, 40),
                          (5, 5, 5, 0), (False, False, False, True), 0)
    second = ProblemResult("p2", (False, False, False, False), ("1", "2", "2", "3"), (50, 60, 70, 80),
                           (1, 2, 3, 2), (False, False, False, False), 1)
    return [first, second]


def test_summarize_a_hand_made_set():
    summary = summarize(tiny_set(), k=4)
    assert summary["problems"] == 2 and summary["samples"] == 8
    assert summary["pass@1"] == pytest.approx(0.25)                  # (2/4 + 0/4) / 2
    assert summary["pass@1_stderr"] == pytest.approx(0.25)           # sd(0.5, 0) = √0.125, / √2
    assert summary["cons@k"] == pytest.approx(0.5)                   # p1's majority "5" right, p2's "2" wrong
    assert summary["pass@k"] == pytest.approx({"1": 0.25, "2": (1 - 1 / 6) / 2, "4": 0.5})
    assert summary["thinking_tokens_mean"] == pytest.approx(45.0)
    assert summary["answer_tokens_mean"] == pytest.approx(23 / 8)
    assert summary["cut_share"] == pytest.approx(1 / 8)
    assert summary["no_answer_share"] == pytest.approx(1 / 8)
    # 8 lengths in 5 buckets cut at round(8·i/5) = 2, 3, 5, 6; the cut sample (40 tokens, wrong) is in the third
    assert summary["by_thinking_length"] == [
        {"low": 10, "high": 20, "samples": 2, "accuracy": 0.5},
        {"low": 30, "high": 30, "samples": 1, "accuracy": 1.0},
        {"low": 40, "high": 50, "samples": 2, "accuracy": 0.0},
        {"low": 60, "high": 60, "samples": 1, "accuracy": 0.0},
        {"low": 70, "high": 80, "samples": 2, "accuracy": 0.0},
    ]


def test_summarize_with_fewer_samples_than_k_and_none():
    summary = summarize([problem("p", [True, False])], k=4)
    assert summary["pass@k"] == {"1": 0.5, "2": 1.0, "4": None}
    assert summary["pass@1_stderr"] == 0.0 and summary["cons@k"] == 0.0   # no majority recorded
    empty = summarize([], k=2)
    assert empty["problems"] == 0 and empty["pass@1"] is None and empty["pass@k"] == {"1": None, "2": None}
    assert empty["by_thinking_length"] == []


def test_thinking_buckets_never_split_a_length():
    buckets = thinking_buckets([(t, t > 4) for t in (1, 2, 2, 2, 3, 4, 5, 6, 7, 8)])
    assert [(b["low"], b["high"], b["samples"]) for b in buckets] == [(1, 2, 4), (3, 4, 2), (5, 6, 2), (7, 8, 2)]
    assert [b["accuracy"] for b in buckets] == [0.0, 0.0, 1.0, 1.0]
    assert thinking_buckets([(7, True)] * 3) == [{"low": 7, "high": 7, "samples": 3, "accuracy": 1.0}]
    assert len(thinking_buckets([(t, False) for t in range(100)])) == 5
    assert thinking_buckets([]) == []


def test_problem_result_checks_its_lengths():
    with pytest.raises(ValueError):
        ProblemResult("p", (True,), ("1", "2"), (1,), (1,), (False,), None)
    with pytest.raises(ValueError):
        ProblemResult("p", (True,), ("1",), (1,), (1,), (False,), 3)


# Comparison ---------------------------------------------------------------------------------------

def test_identical_models_differ_by_nothing():
    models = [problem(f"p{i}", [i % 2 == 0, i % 3 == 0]) for i in range(6)]
    result = compare(models, models)
    assert result["problems"] == 6 and result["difference"] == 0.0 and result["ci95"] == [0.0, 0.0]
    assert result["p_value"] == 1.0 and not result["significant"]
    assert result["note"] == "within noise (+0.0 points, p = 1, 6 problems)"


def test_a_clear_gain_is_significant():
    base = [problem(f"p{i}", [False, False, i % 5 == 0]) for i in range(40)]
    trained = [problem(f"p{i}", [True, True, i % 7 != 0]) for i in range(40)]
    result = compare(base, trained)
    assert result["difference"] > 0.5 and result["ci95"][0] > 0
    assert result["p_value"] < 0.001 and result["significant"]
    assert result["note"] == f"+{100 * result['difference']:.1f} points, p < 0.001"
    assert compare(trained, base)["note"].startswith("-")


def test_exact_sign_flip_p_by_hand():
    # d = (1, 0.5, −0.5): the 8 sign sums are ±2, ±1, ±1, 0, 0; six reach |Σd| = 1
    a = [problem("x", [False, False]), problem("y", [False, False]), problem("z", [True, False])]
    b = [problem("z", [False, False]), problem("y", [True, False]), problem("x", [True, True]),
         problem("only-b", [True, True])]
    result = compare(a, b)
    assert result["problems"] == 3
    assert result["difference"] == pytest.approx(1 / 3)
    assert result["p_value"] == pytest.approx(6 / 8)
    se = math.sqrt(((2 / 3) ** 2 + (1 / 6) ** 2 + (5 / 6) ** 2) / 2 / 3)
    assert result["ci95"] == pytest.approx([1 / 3 - 1.96 * se, 1 / 3 + 1.96 * se])
    assert result["note"] == "within noise (+33.3 points, p = 0.75, 3 problems)"
    # all five (six) problems gained: only all-plus and all-minus reach the observed sum, p = 2/2^n
    assert sign_flip_p([1.0] * 5) == pytest.approx(2 / 32)
    assert not compare([problem(f"p{i}", [False]) for i in range(5)],
                       [problem(f"p{i}", [True]) for i in range(5)])["significant"]
    six = compare([problem(f"p{i}", [False]) for i in range(6)], [problem(f"p{i}", [True]) for i in range(6)])
    assert six["p_value"] == pytest.approx(2 / 64) and six["significant"]
    assert six["note"] == "+100.0 points, p = 0.031"


def test_monte_carlo_p_is_seeded():
    differences = [0.25, -0.5, 0.75, 0.0, 0.5, -0.25] * 4                 # 24 problems: Monte Carlo
    assert sign_flip_p(differences, seed=1) == sign_flip_p(differences, seed=1)
    assert 0.0 < sign_flip_p(differences) <= 1.0
    assert sign_flip_p([0.0] * 30) == 1.0


def test_compare_without_common_problems():
    result = compare([problem("a", [True])], [problem("b", [True])])
    assert result["problems"] == 0 and result["p_value"] is None and not result["significant"]
