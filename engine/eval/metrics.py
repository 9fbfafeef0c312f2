"""Evaluation metrics over k sampled answers per problem: pass@1 (the R1 paper's mean over k samples),
pass@k (Chen et al. 2021's unbiased estimator), cons@k (majority vote), thinking-length buckets, and a
paired comparison of two models on the same problems with a sign-flip randomization test.

Pure functions of booleans, answers and token counts; nothing here samples, reads files or logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy

from engine.train.answers import answers_match

MAX_BUCKETS = 5            # accuracy-by-thinking-length buckets (quantiles of thinking tokens)
EXACT_FLIPS_UP_TO = 16     # problems up to which the sign-flip test enumerates all 2^n assignments
MONTE_CARLO_FLIPS = 10_000  # random assignments beyond that, seeded
SIGNIFICANCE = 0.05


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c of them correct)
    is correct: the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374, Codex paper, fig. 3),

        pass@k = 1 − C(n−c, k) / C(n, k) = 1 − ∏_{i=n−c+1}^{n} (1 − k/i),

    in the product form (no huge binomials); 1.0 when n − c < k (every draw of k holds a correct one).

    Example:
    >>> pass_at_k(4, 1, 2)   # 1 − C(3,2)/C(4,2) = 1 − 3/6
    0.5
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass1_mean(correct: Sequence[bool]) -> float:
    """The R1 paper's pass@1 of one problem: the share of its k samples that are correct, (1/k) Σ_i p_i
    (DeepSeek-R1, arXiv 2501.12948, evaluation setup; it equals pass_at_k(k, c, 1))."""
    if not correct:
        raise ValueError("pass@1 needs at least one sample")
    return sum(map(bool, correct)) / len(correct)


def majority(answers: Sequence[str | None], same: Callable[[str, str], bool] = answers_match) -> int | None:
    """Index of the sample whose answer wins the majority vote, or None when no sample has an answer.

    Answers are grouped by `same` (an answer joins the first group whose first answer it matches, so
    "1/2" and "\\frac{1}{2}" vote together); None never votes. The largest group wins; on a tie the group
    whose first answer comes earliest wins, and the index returned is that first answer's. This is
    lighteval's rule: `MajAtN.compute` (src/lighteval/metrics/metrics_sample.py, huggingface/lighteval
    at 3fd1526) takes `max(all_answers, key=all_answers.count)`, and Python's max keeps the first
    maximal element in sample order. lighteval groups by exact string after normalization and lets
    empty answers vote; here equivalence is `same` and a missing answer abstains.

    Example:
    >>> majority(["3", None, "4", "4", "3"], same=str.__eq__)   # 3 and 4 tie at two; 3 came first
    0
    """
    groups: list[list[int]] = []          # sample indices, first member = the group's representative
    by_text: dict[str, int] = {}          # exact answer text → its group (no checker call for repeats)
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        group = by_text.get(answer)
        if group is None:
            group = next((g for g, members in enumerate(groups) if same(answer, answers[members[0]])), None)
            if group is None:
                group = len(groups)
                groups.append([])
            by_text[answer] = group
        groups[group].append(index)
    if not groups:
        return None
    winner = max(groups, key=len)  # first of the largest: groups are in order of first appearance
    return winner[0]


def cons_at_k(answers: Sequence[str | None], correct: Sequence[bool],
              same: Callable[[str, str], bool] = answers_match) -> float:
    """cons@k of one problem: 1.0 when the majority-vote sample is correct, else 0.0 (also with no answer)."""
    winner = majority(answers, same)
    return float(winner is not None and bool(correct[winner]))


@dataclass(frozen=True)
class ProblemResult:
    """One model's k samples of one problem, one entry per sample in each tuple. `cut`: the thought was
    cut by the token budget (finish "length" with no `</think>`), scored wrong. `majority`: the index of
    the majority-vote sample (see `majority`), None when no sample has an answer."""

    prompt_id: str
    correct: tuple[bool, ...]
    extracted: tuple[str | None, ...]
    thinking_tokens: tuple[int, ...]
    answer_tokens: tuple[int, ...]
    cut: tuple[bool, ...]
    majority: int | None

    def __post_init__(self) -> None:
        lengths = {len(self.correct), len(self.extracted), len(self.thinking_tokens), len(self.answer_tokens),
                   len(self.cut)}
        if len(lengths) != 1 or not self.correct:
            raise ValueError(f"problem {self.prompt_id}: every per-sample tuple needs the same length >= 1")
        if self.majority is not None and not 0 <= self.majority < len(self.correct):
            raise ValueError(f"problem {self.prompt_id}: majority index {self.majority} out of range")


def pass_at_k_levels(k: int) -> list[int]:
    """The k values pass@k is reported at: 1, the powers of 2 below k, and k (k=6 → [1, 2, 4, 6])."""
    levels = [1 << power for power in range(k.bit_length()) if 1 << power <= k]
    return levels if levels[-1] == k else levels + [k]


def summarize(problems: Sequence[ProblemResult], k: int) -> dict:
    """One model's metrics over its problems.

    pass@1 = mean over problems of pass1_mean (the paper's number), pass@1_stderr = sd/√P of the
    per-problem pass@1 (sd with P−1; 0.0 for one problem); cons@k = mean over problems of the majority
    sample being correct; pass@k at 1, powers of 2 and k, each the mean of pass_at_k(n_p, c_p, j) over the
    problems with at least j samples (None when none has); token means, `cut_share` and
    `no_answer_share` over all samples; `by_thinking_length`: ≤ 5 quantile buckets of thinking tokens
    (see `thinking_buckets`, cut samples included and counted wrong). Without problems every number is None.
    """
    samples = [(tokens, correct, answer_tokens, cut, extracted) for problem in problems
               for tokens, correct, answer_tokens, cut, extracted in zip(
                   problem.thinking_tokens, problem.correct, problem.answer_tokens, problem.cut,
                   problem.extracted, strict=True)]
    levels = pass_at_k_levels(k)
    if not problems:
        return {"problems": 0, "samples": 0, "pass@1": None, "pass@1_stderr": None, "cons@k": None,
                "pass@k": {str(level): None for level in levels}, "thinking_tokens_mean": None,
                "answer_tokens_mean": None, "cut_share": None, "no_answer_share": None, "by_thinking_length": []}
    per_problem = [pass1_mean(problem.correct) for problem in problems]
    pass_k = {}
    for level in levels:
        values = [pass_at_k(len(p.correct), sum(map(bool, p.correct)), level) for p in problems
                  if len(p.correct) >= level]
        pass_k[str(level)] = _mean(values) if values else None
    cons = [float(p.majority is not None and bool(p.correct[p.majority])) for p in problems]
    return {
        "problems": len(problems),
        "samples": len(samples),
        "pass@1": _mean(per_problem),
        "pass@1_stderr": _standard_error(per_problem),
        "cons@k": _mean(cons),
        "pass@k": pass_k,
        "thinking_tokens_mean": _mean([s[0] for s in samples]),
        "answer_tokens_mean": _mean([s[2] for s in samples]),
        "cut_share": _mean([float(s[3]) for s in samples]),
        "no_answer_share": _mean([float(s[4] is None) for s in samples]),
        "by_thinking_length": thinking_buckets([(s[0], bool(s[1])) for s in samples]),
    }


def thinking_buckets(samples: Sequence[tuple[int, bool]], buckets: int = MAX_BUCKETS) -> list[dict]:
    """Accuracy by thinking length: samples (thinking tokens, correct) sorted by tokens and cut into at
    most `buckets` groups of about equal size at the quantiles i·N/B, each edge moved up past samples of
    the same length so a length never spans two buckets. One dict per bucket: "low"/"high" (its smallest
    and largest thinking tokens), "samples", "accuracy" (share correct).

    Example:
    >>> [b["samples"] for b in thinking_buckets([(t, True) for t in (1, 2, 2, 2, 3, 4, 5, 6, 7, 8)])]
    [4, 2, 2, 2]
    """
    ordered = sorted(samples, key=lambda sample: sample[0])
    total = len(ordered)
    count = min(buckets, len({tokens for tokens, _ in ordered}))
    result, start = [], 0
    for bucket in range(1, count + 1):
        end = total if bucket == count else round(bucket * total / count)
        if end <= start:
            continue
        while end < total and ordered[end][0] == ordered[end - 1][0]:
            end += 1
        chunk = ordered[start:end]
        result.append({"low": chunk[0][0], "high": chunk[-1][0], "samples": len(chunk),
                       "accuracy": sum(correct for _, correct in chunk) / len(chunk)})
        start = end
        if start >= total:
            break
    return result


def compare(a: Sequence[ProblemResult], b: Sequence[ProblemResult], seed: int = 0) -> dict:
    """Model b against model a on the problems both answered (paired by prompt_id).

    d_p = pass@1_b(p) − pass@1_a(p) per problem; difference = mean d; ci95 = mean ± 1.96·se with
    se = sd(d)/√P (sd with P−1; 0 for one problem). p_value: a paired sign-flip randomization test of
    mean d = 0: the share of sign assignments s ∈ {±1}^P with |Σ s_p d_p| ≥ |Σ d_p| — all 2^P for
    P ≤ 16 (exact), else (1 + hits)/(1 + 10,000) over seeded random flips. significant: p < 0.05. note:
    "+12.0 points, p = 0.003", or "within noise (+1.5 points, p = 0.41, 200 problems)".
    """
    by_id = {problem.prompt_id: problem for problem in a}
    pairs = [(by_id[problem.prompt_id], problem) for problem in b if problem.prompt_id in by_id]
    if not pairs:
        return {"problems": 0, "difference": None, "ci95": None, "p_value": None, "significant": False,
                "note": "no problems in common"}
    differences = [pass1_mean(right.correct) - pass1_mean(left.correct) for left, right in pairs]
    mean = _mean(differences)
    half_width = 1.96 * _standard_error(differences)
    p_value = sign_flip_p(differences, seed)
    significant = p_value < SIGNIFICANCE
    detail = f"{100 * mean:+.1f} points, p {_p_text(p_value)}"
    note = detail if significant else f"within noise ({detail}, {len(pairs)} problems)"
    return {"problems": len(pairs), "difference": mean, "ci95": [mean - half_width, mean + half_width],
            "p_value": p_value, "significant": significant, "note": note}


def sign_flip_p(differences: Sequence[float], seed: int = 0) -> float:
    """Two-sided p of the paired sign-flip test: P(|Σ s_p d_p| ≥ |Σ d_p|) over random signs s_p = ±1,
    exact for ≤ 16 differences, else Monte Carlo with MONTE_CARLO_FLIPS seeded draws.

    Example:
    >>> sign_flip_p([1.0, 0.5, -0.5])   # sums ±2, ±1, ±1, 0, 0: six of eight reach |1|
    0.75
    """
    values = numpy.asarray(differences, dtype=numpy.float64)                       # (P,)
    observed = abs(values.sum()) - 1e-9  # tolerance: float sums of the same terms in another order
    if len(values) <= EXACT_FLIPS_UP_TO:
        assignments = numpy.arange(2 ** len(values))[:, None] >> numpy.arange(len(values)) & 1  # (2^P, P)
        signs = 1.0 - 2.0 * assignments                                            # (2^P, P)
        return float((numpy.abs(signs @ values) >= observed).mean())
    rng = numpy.random.default_rng(seed)
    hits, rows = 0, max(1, 2_000_000 // len(values))  # chunks of ≤ 2M signs
    for start in range(0, MONTE_CARLO_FLIPS, rows):
        signs = rng.choice((-1.0, 1.0), size=(min(rows, MONTE_CARLO_FLIPS - start), len(values)))  # (R, P)
        hits += int((numpy.abs(signs @ values) >= observed).sum())                 # (R,)
    return (1 + hits) / (1 + MONTE_CARLO_FLIPS)


def _p_text(p_value: float) -> str:
    return "< 0.001" if p_value < 0.001 else f"= {p_value:.2g}"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _standard_error(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1)
    return math.sqrt(variance / len(values))
