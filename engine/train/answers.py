"""Final answers: extraction (the last \\boxed{…}, else the last number of the answer part) and equivalence,
the accuracy reward's checker. Strings in, booleans out. math-verify (HF's Math-Verify, a dependency of the
`train` extra) decides equivalence wherever it parses both answers; our own code decides only where it has no
opinion: extraction from an unboxed answer (its last number, so "Answer: 42" reads 42), and comparison when
math-verify is not installed (a base install), fails, or cannot run (its timeouts need the main thread).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

from engine import r1
from engine.think import split_thinking

# Answers longer than this are compared as text only: no symbolic work on a runaway completion.
MAX_SYMBOLIC_CHARS = 200


# Final answers ------------------------------------------------------------------------------------

def extract_final_answer(completion: str, prefilled: bool = False) -> str | None:
    """The final answer of a completion, or None: read from the answer part only (after `</think>`;
    a thought that never closes has no answer), it is the last `\\boxed{…}` (nested braces kept),
    else the last number (integer, decimal, `a/b` or `\\frac{a}{b}`)."""
    _, answer = split_thinking(_strip_stop_tokens(completion), prefilled)
    boxed = last_boxed(answer)
    if boxed is not None:
        return boxed.strip() or None
    numbers = _NUMBER.findall(answer)
    return numbers[-1] if numbers else None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` or `\\fbox{…}` with balanced braces; None without one."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start >= 0:
        rest = text[start:].removeprefix("\\boxed").removeprefix("\\fbox").lstrip()
        if rest.startswith("{"):
            content = _brace_group(rest, 0)
            if content is not None:
                return content[0]
        elif rest[:1].isalnum() or rest[:1] == "-":  # `\boxed 5`
            return re.match(r"-?[\w.]+", rest)[0]
        start = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    return None


_PLAIN_INTEGER = re.compile(r"\s*-?\d{1,100}\s*", re.ASCII)  # no sign-only, no groups, no runaway length


def answers_match(prediction: str, gold: str) -> bool:
    """Whether a final answer equals the ground truth. math-verify's verdict wins wherever it parses both
    (digit groups spaced with `\\,` or `{,}` are first written with commas, which it reads as one number);
    without one, the fallback below decides. The fallback normalizes LaTeX (`$`, `\\text{}`, `\\left(`,
    `\\dfrac`, degrees, `%`, a leading `x =`, trailing unit words), removes thousands separators only from a
    whole answer that is one well-formed grouped number (`1,234,567`: never `(3,500)` or `1,2,3`), then
    compares exact numbers (integers, decimals, `a/b`, `\\frac{a}{b}`), then simple expressions
    symbolically with sympy (parsed by our own small parser: no eval), element by element for tuples.
    Two plain integers (`825`, `-7`) are compared as integers first: the verdict math-verify would give, at a
    thousandth of its cost (its parse is ~2 ms, most of a GRPO step's reward time on arithmetic tasks)."""
    if _PLAIN_INTEGER.fullmatch(prediction) and _PLAIN_INTEGER.fullmatch(gold):
        return int(prediction) == int(gold)
    verdict = _math_verify_verdict(_comma_groups(prediction), _comma_groups(gold))
    if verdict is not None:
        return verdict
    return _equal(_normalize(prediction), _normalize(gold))


def gold_answer(value: Any) -> str | None:
    """The ground truth of a dataset's `answer` cell: the boxed part, the part after GSM8K's `####`,
    or the whole text; None when missing."""
    if value is None:
        return None
    text = str(value)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    return text.rsplit("####", 1)[-1].strip()



def _strip_stop_tokens(text: str) -> str:
    """Drop R1 stop tokens (`<｜end▁of▁sentence｜>` …) decoded at the end of a completion."""
    text = text.rstrip()
    while text.endswith(r1.STOPS):
        text = next(text.removesuffix(stop) for stop in r1.STOPS if text.endswith(stop)).rstrip()
    return text


def _brace_group(text: str, start: int) -> tuple[str, int] | None:
    """(content, index after the closing brace) of the balanced `{…}` opening at text[start]."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:index], index + 1
    return None


# Answer comparison (the fallback when math-verify is not installed) -------------------------------

_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])-)?\\[dt]?frac\{-?\d+(?:\.\d+)?\}\{-?\d+(?:\.\d+)?\}"  # \frac{1}{2}
    # 1,234,567.5, but not inside a pair or list: `(12,102)` is two numbers, not 12102
    r"|(?:(?<![\w)\]}])-)?(?<![\d.,(\[{])[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?(?!\d|,\d)"
    r"|(?:(?<![\w)\]}])-)?\d+(?:\.\d+)?(?:/\d+)?"  # 12, 0.5, 3/4
)
_TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{")
# LaTeX spacing between digits: `3\\,500`, `3{,}500`, `3~500`.
_DIGIT_SPACING = r"(?:\\[,;:! ]|~|\{,\}|\s)"
_SPACED_GROUPS = re.compile(rf"(?<![\d.,])[1-9]\d{{0,2}}(?:{_DIGIT_SPACING}\d{{3}})+(?![\d])")
_GROUPED_NUMBER = r"[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?"
_APART = "\u2423"  # digits kept apart by spacing that is no digit grouping: `1\\,2` is not 12
_DROP = ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\ ", "~", "$",
         "^{\\circ}", "^\\circ", "°", "\\%", "%", "{,}")


def _normalize(answer: str) -> str:
    """Canonical text of an answer: LaTeX noise, units and thousands separators removed. A separator goes
    only from a whole answer that is one well-formed grouped number (1-3 digits, the first not 0, then groups
    of exactly 3; `0,500` is a decimal comma, not 500):
    `1,000` and `3\\,500 cm` are numbers; `(3,500)`, `1,2,3` and `1\\,2` are not concatenated."""
    text = answer.strip().replace("\u2212", "-")  # the Unicode minus sign
    text = text.replace("\\{", "{").replace("\\}", "}")
    for fraction in ("\\dfrac", "\\tfrac", "\\cfrac"):
        text = text.replace(fraction, "\\frac")
    text = text.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "").replace("\\$", "")
    text = _comma_groups(text)
    text = re.sub(rf"(?<=\d){_DIGIT_SPACING}+(?=\d)", _APART, text)  # 1\,2: no number of its own
    text = _unwrap_text_commands(text)
    for noise in _DROP:
        text = text.replace(noise, "")
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)  # \frac12
    text = text.strip().rstrip(".").strip()
    if text.count("=") == 1:
        text = re.sub(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*", "", text)  # x = 5
    # 5 cm, 12 apples, 3,500 m^2, 60 km/h
    # The space is required: `2x` is no number with a unit.
    unit = re.fullmatch(rf"({_GROUPED_NUMBER}|-?\d+(?:\.\d+)?)\s+[A-Za-z]+(?:\s*/?\s*[A-Za-z]+)*(?:\^\{{?\d\}}?)?", text)
    if unit:
        text = unit[1]
    if re.fullmatch(_GROUPED_NUMBER, text):
        text = text.replace(",", "")
    return re.sub(r"\s+", "", text)


def _comma_groups(text: str) -> str:
    """Digit groups spaced the LaTeX way written with commas: `3\\,500` and `3{,}500` → `3,500`."""
    return _SPACED_GROUPS.sub(lambda match: re.sub(_DIGIT_SPACING, ",", match[0]), text)


def _unwrap_text_commands(text: str) -> str:
    """`\\text{ cm}` → ` cm` (and \\mathrm, \\mbox …), nested braces respected."""
    while (match := _TEXT_COMMANDS.search(text)) is not None:
        group = _brace_group(text, match.end() - 1)
        if group is None:
            return text[:match.start()] + text[match.end():]
        content, end = group
        text = f"{text[:match.start()]} {content}{text[end:]}"
    return text


def _equal(prediction: str, gold: str) -> bool:
    """Normalized answers: same text, same value, or same tuple element by element."""
    if prediction == gold or (prediction.isalpha() and prediction.casefold() == gold.casefold()):
        return True
    prediction_brackets, prediction_parts = _split_answer(prediction)
    gold_brackets, gold_parts = _split_answer(gold)
    if len(prediction_parts) == 1 and len(gold_parts) == 1:
        return _same_value(prediction, gold)
    if len(prediction_parts) != len(gold_parts):
        return False
    if prediction_brackets and gold_brackets and prediction_brackets != gold_brackets:
        return False  # the interval (1,2] is not [1,2]
    return all(_same_value(a, b) for a, b in zip(prediction_parts, gold_parts, strict=True))


def _split_answer(text: str) -> tuple[str, list[str]]:
    """(outer brackets, top-level comma-separated parts): `(1,2]` → ("(]", ["1", "2"]), `5` → ("", ["5"])."""
    if text[:1] in ("(", "[", "{") and _matching_close(text) == len(text) - 1:
        return text[0] + text[-1], _split_top_level(text[1:-1])
    return "", _split_top_level(text)


def _matching_close(text: str) -> int:
    depth = 0
    for index, char in enumerate(text):
        depth += (char in "([{") - (char in ")]}")
        if depth == 0:
            return index
    return -1


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    return [*parts, text[start:]]


def _same_value(prediction: str, gold: str) -> bool:
    if prediction == gold:
        return True
    exact = _as_fraction(prediction), _as_fraction(gold)
    if None not in exact:
        return exact[0] == exact[1]
    return _symbolic_equal(prediction, gold)


def _as_fraction(text: str) -> Fraction | None:
    """An exact number written as an integer, decimal, `a/b` or `\\frac{a}{b}` (signs allowed)."""
    number = r"[-+]?\d+(?:\.\d+)?|[-+]?\.\d+"
    try:
        if re.fullmatch(number, text):
            return Fraction(text)
        match = re.fullmatch(rf"([-+]?)(?:\\frac\{{({number})\}}\{{({number})\}}|({number})/({number}))", text)
        if match:
            numerator, denominator = match[2] or match[4], match[3] or match[5]
            value = Fraction(numerator) / Fraction(denominator)
            return -value if match[1] == "-" else value
    except ZeroDivisionError:
        return None
    return None


def _symbolic_equal(prediction: str, gold: str) -> bool:
    """Equal values for expressions our own parser reads: both sides evaluated with sympy to 30 digits
    at three fixed points (one without symbols) and compared to a relative 1e-9. Evaluation, not
    `simplify`: simplifying (x+y+z)^64 − (x+y+z+1)^64 takes minutes, evaluating it microseconds, and a
    polynomial identity that holds at generic points holds everywhere (Schwartz–Zippel)."""
    if max(len(prediction), len(gold)) > MAX_SYMBOLIC_CHARS:
        return False
    try:
        import sympy

        left, right = _parse_expression(prediction), _parse_expression(gold)
    except Exception:  # unreadable: equal only as text, which the caller has checked
        return False
    symbols = sorted(left.free_symbols | right.free_symbols, key=str)
    compared = 0
    for trial in range(3 if symbols else 1):
        point = {symbol: sympy.Rational(_SAMPLE_VALUES[(3 * trial + index) % len(_SAMPLE_VALUES)])
                 for index, symbol in enumerate(symbols)}
        try:
            a, b = complex(left.evalf(30, subs=point)), complex(right.evalf(30, subs=point))
        except Exception:  # a pole or an undefined value at this point: try the next one
            continue
        if not all(math.isfinite(part) for part in (a.real, a.imag, b.real, b.imag)):
            continue
        if abs(a - b) > 1e-9 * max(1.0, abs(a), abs(b)):
            return False
        compared += 1
    return compared > 0


_SAMPLE_VALUES = ("0.5377", "1.8339", "-2.2588", "0.8622", "0.3188", "-1.3077", "-0.4336", "0.3426",
                  "3.5784", "2.7694", "-1.3499", "3.0349")


class _Unreadable(Exception):
    """The expression is outside what the small parser reads."""


_COMMANDS = {"\\cdot": "*", "\\times": "*", "\\div": "/", "\\pi": " pi "}


def _latex_to_plain(text: str) -> str:
    """LaTeX arithmetic to plain infix: `\\frac{a}{b}` → `((a)/(b))`, `\\sqrt[n]{x}` → `((x)^(1/(n)))`,
    `\\sqrt{x}` → `sqrt(x)`, braces → parentheses. Any other command is unreadable."""
    out, index = [], 0
    while index < len(text):
        command = re.match(r"\\[A-Za-z]+", text[index:])
        if command is None:
            char = text[index]
            out.append("(" if char == "{" else ")" if char == "}" else char)
            index += 1
            continue
        name = command[0]
        index += len(name)
        if name in _COMMANDS:
            out.append(_COMMANDS[name])
        elif name == "\\frac":
            numerator, index = _latex_argument(text, index)
            denominator, index = _latex_argument(text, index)
            out.append(f"(({_latex_to_plain(numerator)})/({_latex_to_plain(denominator)}))")
        elif name == "\\sqrt":
            degree = None
            if text.startswith("[", index):
                end = text.find("]", index)
                if end < 0:
                    raise _Unreadable(text)
                degree, index = text[index + 1:end], end + 1
            radicand, index = _latex_argument(text, index)
            plain = _latex_to_plain(radicand)
            out.append(f"sqrt({plain})" if degree is None else f"(({plain})^(1/({_latex_to_plain(degree)})))")
        else:
            raise _Unreadable(name)
    return "".join(out)


def _latex_argument(text: str, index: int) -> tuple[str, int]:
    """A command's argument at text[index]: a `{…}` group or a single character."""
    while index < len(text) and text[index] == " ":
        index += 1
    if index >= len(text):
        raise _Unreadable(text)
    if text[index] == "{":
        group = _brace_group(text, index)
        if group is None:
            raise _Unreadable(text)
        return group
    return text[index], index + 1


_TOKENS = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|(sqrt|pi|[A-Za-z])|(\*\*|[-+*/^()]))")
MAX_EXPONENT = 64  # larger powers are not compared: 9^9^9 must not be computed
MAX_EXACT_BITS = 10_000  # nor an exact power of a number larger than this, like ((2^64)^64)^64


def _parse_expression(text: str):
    """A sympy expression from plain arithmetic: numbers (exact), one-letter symbols, pi, sqrt(…),
    + − * / ^, parentheses and implicit multiplication (`2x`, `3(x+1)`). Built from sympy objects
    directly, never through eval."""
    import sympy

    plain = _latex_to_plain(text).rstrip()
    tokens, position = [], 0
    while position < len(plain):
        match = _TOKENS.match(plain, position)
        if match is None or match.end() == position:
            raise _Unreadable(plain)
        number, name, operator = match.groups()
        tokens.append(("number", number) if number else ("name", name) if name else ("op", "^" if operator == "**" else operator))
        position = match.end()
    parser = _ExpressionParser(tokens, sympy)
    expression = parser.expression()
    if parser.index != len(tokens):
        raise _Unreadable(plain)
    return expression


class _ExpressionParser:
    """Recursive descent: expression := term (±term)*; term := unary ((*|/)? power)*;
    unary := ±unary | power; power := primary (^ unary)?; primary := number | name | (expression) | sqrt primary."""

    def __init__(self, tokens: list[tuple[str, str]], sympy):
        self.tokens, self.index, self.sympy = tokens, 0, sympy

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> bool:
        token = self.peek()
        if token is not None and token[0] == kind and (value is None or token[1] == value):
            self.index += 1
            return True
        return False

    def expression(self):
        value = self.term()
        while True:
            if self.take("op", "+"):
                value = value + self.term()
            elif self.take("op", "-"):
                value = value - self.term()
            else:
                return value

    def term(self):
        value = self.unary()
        while True:
            if self.take("op", "*"):
                value = value * self.unary()
            elif self.take("op", "/"):
                value = value / self.unary()
            elif self.peek() is not None and (self.peek()[0] in ("number", "name") or self.peek() == ("op", "(")):
                value = value * self.power()  # implicit multiplication: 2x, 3(x+1)
            else:
                return value

    def unary(self):
        if self.take("op", "-"):
            return -self.unary()
        if self.take("op", "+"):
            return self.unary()
        return self.power()

    def power(self):
        base = self.primary()
        if not self.take("op", "^"):
            return base
        exponent = self.unary()
        if exponent.is_Number and abs(exponent) > MAX_EXPONENT:
            raise _Unreadable("exponent too large")
        if base.is_Rational and exponent.is_Number and abs(exponent) * _bits(base) > MAX_EXACT_BITS:
            raise _Unreadable("power too large")
        return base ** exponent

    def primary(self):
        token = self.peek()
        if token is None:
            raise _Unreadable("unexpected end")
        self.index += 1
        kind, value = token
        if kind == "number":
            return self.sympy.Rational(value)
        if kind == "name":
            if value == "pi":
                return self.sympy.pi
            if value == "sqrt":
                return self.sympy.sqrt(self.primary())
            return self.sympy.Symbol(value)
        if value == "(":
            inner = self.expression()
            if not self.take("op", ")"):
                raise _Unreadable("unbalanced parenthesis")
            return inner
        raise _Unreadable(f"unexpected {value!r}")


def _bits(number) -> int:
    """Size of an exact rational in bits (numerator and denominator)."""
    return int(number.p).bit_length() + int(number.q).bit_length()


def _math_verify_verdict(prediction: str, gold: str) -> bool | None:
    """math-verify's verdict on the two answers (both wrapped in `\\boxed{}`); None (no opinion) when it
    is not installed, parses nothing from either, or fails (its timeouts use signal.alarm, which raises
    outside the main thread)."""
    try:
        import math_verify
    except ImportError:  # a base install without the train extra: the fallback decides
        return None
    try:
        gold_parsed = math_verify.parse(f"\\boxed{{{gold}}}")
        prediction_parsed = math_verify.parse(f"\\boxed{{{prediction}}}")
        if not gold_parsed or not prediction_parsed:
            return None
        return bool(math_verify.verify(gold_parsed, prediction_parsed))
    except Exception:  # math-verify's own failure (parse errors, threads) is no verdict
        return None
