"""The answer checker (engine/train/answers.py): one table of (prediction, gold, equal) cases run twice, with
math-verify deciding and with the fallback alone (math-verify hidden), plus the cases where only one path
is right. A checker that calls a wrong answer right is the worse failure (GRPO learns to exploit it), so
each false positive once seen is its own case."""

import sys

import pytest

from engine.train.answers import answers_match, extract_final_answer

THOUGHT = "<think>\nworked out\n</think>\n\n"


@pytest.fixture(params=["math-verify", "fallback"])
def checker(request, monkeypatch):
    """Runs a test with math-verify deciding, then with the fallback alone (math-verify made unimportable)."""
    if request.param == "math-verify":
        pytest.importorskip("math_verify")
    else:
        monkeypatch.setitem(sys.modules, "math_verify", None)
    return request.param


# Both paths agree on these.
BOTH = [
    # (prediction, gold, equal)
    # -- false positives of the thousands-separator rule (each one scored 1.0 before) --
    ("(3,500)", "3500", False),  # an interval or a pair is not the number 3500
    ("(12,102)", "12102", False),  # the interval
    ("[3,500]", "3500", False),  # a closed interval
    ("3500", "(3,500)", False),  # the same with the roles swapped
    ("(3,500)", "3,500", False),  # a pair against a grouped number
    ("1,2,3", "123", False),  # a comma list is not a number
    ("1,234,5", "12345", False),  # a last group of one digit: no grouping
    ("12,34", "1234", False),  # a group of two digits: a list, not 1234
    ("0,500", "500", False),  # a leading 0 is no digit group (a decimal comma, if anything)
    ("3,5", "35", False),  # a decimal comma or a list, never 35
    ("1,000,00", "100000", False),  # a short last group
    ("3, 500", "3500", False),  # a comma and a space: a list
    ("1\\,2", "12", False),  # a thin space between digits that are no digit groups
    ("1{,}2", "12", False),  # a decimal comma or a list, never 12
    # -- well-formed grouped numbers still read as numbers --
    ("1,000", "1000", True),
    ("1,234,567", "1234567", True),
    ("12,102", "12102", True),  # a bare grouped number is the number
    ("\\$1,000", "1000", True),
    ("-1,000", "-1000", True),
    ("10,000.5", "10000.5", True),
    ("3{,}500", "3500", True),  # LaTeX's grouping comma
    ("3\\,500", "3500", True),  # a thin space between groups (math-verify alone reads 503)
    ("3\\,500\\,000", "3500000", True),
    ("3\\,500", "503", False),  # ...and never 3 + 500
    ("(3,500)", "(3, 500)", True),  # a pair is still equal to itself
    ("(1,2,3)", "(1, 2, 3)", True),
    # -- units and text macros --
    ("5\\text{ cm}", "5", True),
    ("5\\,\\text{cm}", "5", True),
    ("5\\mathrm{cm}", "5", True),
    ("3\\,500\\text{ m}", "3500", True),
    ("18 apples", "18", True),
    ("50\\%", "50", True),
    # -- fractions --
    ("\\dfrac{3}{4}", "0.75", True),
    ("\\tfrac{1}{2}", "0.5", True),
    ("\\frac12", "0.5", True),
    ("\\dfrac12", "\\frac{1}{2}", True),
    ("\\frac13", "0.5", False),
    ("-\\frac{3}{4}", "-0.75", True),
    # -- plain cases --
    ("42", "42", True),
    ("2.0", "2", True),
    ("2.5", "2", False),
    ("7", "-7", False),
    ("x = 5", "5", True),
    ("\\text{(B)}", "B", True),
    ("(x-1)(x+1)", "x^2 - 1", True),
    ("x^2 + 1", "x^2 - 1", False),
    ("\\left( 1, \\frac{1}{2} \\right)", "(1, 0.5)", True),
    ("[1, 2)", "(1, 2)", False),  # a different interval
]


# The fallback reads these; math-verify, which decides where it has an opinion, does not (a missed right
# answer, the safe side).
FALLBACK_ONLY = [
    ("x=3,500", "3500", True),
    ("1,000 m^2", "1000", True),
    ("60 km/h", "60", True),
]


@pytest.mark.parametrize(("prediction", "gold", "expected"), FALLBACK_ONLY)
def test_the_fallback_alone(monkeypatch, prediction, gold, expected):
    monkeypatch.setitem(sys.modules, "math_verify", None)
    assert answers_match(prediction, gold) is expected


@pytest.mark.parametrize(("prediction", "gold", "expected"), BOTH)
def test_answers_match(checker, prediction, gold, expected):
    assert answers_match(prediction, gold) is expected


def test_math_verify_decides_where_it_has_an_opinion(checker):
    # The fallback's parser reads no \sin; math-verify does and its verdict wins.
    assert answers_match("\\sin(\\pi/2)", "1") is (checker == "math-verify")
    assert answers_match("\\sin(\\pi/2)", "2") is False


def test_math_verify_is_the_default_checker():
    """math-verify is a dependency of the train and dev extras: `make test` runs it."""
    pytest.importorskip("math_verify", reason="math-verify comes with the train and dev extras")
    assert answers_match("\\frac{\\pi}{2}", "\\pi/2")


EXTRACTION = [
    # (completion, extracted) — our own extraction, where math-verify has no opinion
    (THOUGHT + "So the total is 18 apples.", "18"),
    (THOUGHT + "Answer: 42", "42"),  # a labelled answer
    (THOUGHT + "Between 1,234 and 1,500.", "1,500"),
    (THOUGHT + "The point is (12,102).", "102"),  # a pair is never read as 12102
    (THOUGHT + "The list is 1,2,3.", "3"),
    (THOUGHT + "\\boxed{(3,500)}", "(3,500)"),
    (THOUGHT + "nothing", None),
]


@pytest.mark.parametrize(("completion", "extracted"), EXTRACTION)
def test_extract_final_answer(completion, extracted):
    assert extract_final_answer(completion) == extracted


@pytest.mark.parametrize(("completion", "gold"), [
    (THOUGHT + "\\boxed{(3,500)}", "3500"),  # the false positive, end to end
    (THOUGHT + "The interval is (12,102).", "12102"),  # unboxed: the last number is 102
])
def test_false_positives_score_zero(checker, completion, gold):
    from engine.train.rewards import accuracy_reward

    assert accuracy_reward(["p"], [completion], answer=[gold]) == [0.0]


@pytest.mark.parametrize(("prediction", "gold", "expected"), [
    ("825", "825", True), ("825", "824", False), ("-7", "-7", True), ("7", "-7", False), ("007", "7", True),
    (" 42", "42 ", True), ("1" * 101, "1" * 101, True)])
def test_plain_integers_are_compared_without_math_verify(monkeypatch, prediction, gold, expected):
    """The integer fast path gives math-verify's verdict without calling it (its parse dominated a GRPO step
    on the arithmetic tasks); anything longer or not a plain integer still goes to math-verify."""
    calls = []
    math_verify = pytest.importorskip("math_verify")

    def counted(text, *args, **kwargs):
        calls.append(text)
        return math_verify_parse(text, *args, **kwargs)

    math_verify_parse = math_verify.parse
    monkeypatch.setattr(math_verify, "parse", counted)
    assert answers_match(prediction, gold) is expected
    assert bool(calls) is (len(prediction.strip()) > 100)
