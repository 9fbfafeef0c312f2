"""Markdown + LaTeX rendering: finding formulas, drawing them, placing them in a QTextDocument.

Every test takes `qtbot`, so any Qt warning fails it (qt_log_level_fail = WARNING).
"""

from __future__ import annotations

import numpy as np
import pytest

from app.chat import rich_text
from app.chat.rich_text import MathRenderer, Piece, render_markdown, split_math
from app.qt import Qt, QtCore, QtGui, QtWidgets
from tests.support.long_answer import long_answer

BLACK = QtGui.QColor("black")


def text(source):
    return Piece("text", source)


def inline(source):
    return Piece("inline", source)


def display(source):
    return Piece("display", source)


@pytest.mark.parametrize(("answer", "pieces"), [
    ("Let $x^2$ be", [text("Let "), inline("x^2"), text(" be")]),
    ("$$\\frac{a}{b}$$", [display("\\frac{a}{b}")]),
    ("so\n$$\n a + b \n$$\nthen", [text("so\n"), display("a + b"), text("\nthen")]),
    ("\\(a+b\\) and \\[c\\]", [inline("a+b"), text(" and "), display("c")]),
    ("answer: \\boxed{\\frac{1}{2}}.", [text("answer: "), inline("\\boxed{\\frac{1}{2}}"), text(".")]),
    ("\\boxed{f(\\{x\\}) = {a}_{b}} ok", [inline("\\boxed{f(\\{x\\}) = {a}_{b}}"), text(" ok")]),
    ("$\\boxed{7}$", [inline("\\boxed{7}")]),
    ("costs \\$5 and \\$6", [text("costs \\$5 and \\$6")]),
    ("costs $5 and $10 total", [text("costs $5 and $10 total")]),
    ("from $5-$10, or $3 to $4.", [text("from $5-$10, or $3 to $4.")]),
    ("pay $20, get $x$ back", [text("pay $20, get "), inline("x"), text(" back")]),
    ("$x$ and $y$", [inline("x"), text(" and "), inline("y")]),
    ("$ x $ is not math", [text("$ x $ is not math")]),
    ("$a\n\nb$", [text("$a\n\nb$")]),
    ("use `$x$` literally, then $y$", [text("use `$x$` literally, then "), inline("y")]),
    ("``a ` $x$ ``", [text("``a ` $x$ ``")]),
    ("`$10` costs $y$", [text("`$10` costs "), inline("y")]),
    ("```\n$x$ \\(y\\)\n```\nthen $y$", [text("```\n$x$ \\(y\\)\n```\nthen "), inline("y")]),
    ("~~~~python\n$$a$$\n~~~~\n$b$", [text("~~~~python\n$$a$$\n~~~~\n"), inline("b")]),
    ("- item\n  ```\n  $x$\n  ```\n", [text("- item\n  ```\n  $x$\n  ```\n")]),
    # Unclosed while streaming: stays text until the closing delimiter arrives.
    ("The answer is $x^2 + ", [text("The answer is $x^2 + ")]),
    ("$$\\frac{a}{", [text("$$\\frac{a}{")]),
    ("so \\boxed{4", [text("so \\boxed{4")]),
    ("\\[ x = ", [text("\\[ x = ")]),
    ("```\n$x$", [text("```\n$x$")]),
    ("`$x$", [text("`"), inline("x")]),
    ("", []),
])
def test_split_math(qtbot, answer, pieces):
    assert split_math(answer) == pieces


def resources(document: QtGui.QTextDocument) -> list[QtGui.QImage]:
    images = []
    while (image := document.resource(QtGui.QTextDocument.ResourceType.ImageResource,
                                       QtCore.QUrl(f"aha-math:{len(images)}"))) is not None:
        images.append(image)
    return images


def alpha(image: QtGui.QImage) -> np.ndarray:
    image = image.convertToFormat(QtGui.QImage.Format.Format_RGBA8888)
    pixels = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    return pixels[:, : image.width(), 3].copy()  # the converted image dies with this call


def test_formulas_become_images_in_the_text(qtbot):
    document = QtGui.QTextDocument()
    render_markdown(document, "Let $x^2$ be the start; then\n\n$$\\frac{a}{b}$$\n\nand finally \\boxed{42} here.",
                    color=BLACK, renderer=MathRenderer())
    inline_image, display_image, boxed = resources(document)
    for image in (inline_image, display_image, boxed):
        assert image.width() > 0 and image.height() > 0
        assert image.hasAlphaChannel()
    assert display_image.height() > inline_image.height()
    plain = document.toPlainText()
    assert plain.count("\ufffc") == 3
    for word in ("Let", "be the start; then", "and finally", "here."):
        assert word in plain

    coverage = alpha(boxed)
    rows, cols = np.nonzero(coverage > 0)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    middle_row, middle_col = (top + bottom) // 2, (left + right) // 2
    assert coverage[middle_row, left] > 200 and coverage[middle_row, right] > 200  # sides of the frame
    assert coverage[top, middle_col] > 200 and coverage[bottom, middle_col] > 200  # top and bottom
    assert coverage[middle_row, left + 1 : left + 3].max() == 0  # air between frame and content
    assert (coverage[top + 3 : bottom - 2, left + 4 : right - 3] > 200).any()  # the "42"


def test_display_math_is_centred_on_its_own_line(qtbot):
    document = QtGui.QTextDocument()
    render_markdown(document, "1. Compute:\n   $$\\sum_{i=1}^{n} i$$\n2. Done", color=BLACK, renderer=MathRenderer())
    blocks = [document.findBlockByNumber(number) for number in range(document.blockCount())]
    (math_block,) = [block for block in blocks if block.text() == "\ufffc"]
    assert math_block.blockFormat().alignment() & Qt.AlignmentFlag.AlignHCenter
    assert "Compute:" in document.toPlainText() and "Done" in document.toPlainText()


@pytest.mark.parametrize("latex", [
    r"a \le b \ge c", r"\dfrac{1}{2} + \tfrac12", r"\text{if } x > 0", r"\left\lvert x \right\rvert",
    r"\left\langle x \middle| y \right\rangle", r"a\,b\;c\!d", r"a \cdot b \times c", r"x \equiv 1 \pmod{3}",
    r"p \implies q", r"\boxed{x = \frac{1}{2}}", r"y = \boxed{5} + 1", r"\bigl( x \bigr)",
    r"\begin{aligned} a &= b + c \\ &= d \end{aligned}",
])
def test_latex_that_mathtext_lacks_is_rewritten(qtbot, latex):
    assert MathRenderer().render(latex, display=True, color=BLACK) is not None


def test_unsupported_left_right_falls_back_to_plain_delimiters(qtbot, monkeypatch):
    calls = []
    rasterize = rich_text._rasterize
    monkeypatch.setattr(rich_text, "_rasterize", lambda latex, size: calls.append(latex) or rasterize(latex, size))
    assert MathRenderer().render(r"\left\ulcorner x \right\urcorner", color=BLACK) is not None
    assert len(calls) == 2 and "\\left" not in calls[1]


def test_malformed_formulas_show_their_source_as_code(qtbot):
    document = QtGui.QTextDocument()
    answer = "bad $\\frac{$ and $\\notacommand{x}$ and fine $y$"
    render_markdown(document, answer, color=BLACK, renderer=MathRenderer())
    plain = document.toPlainText()
    assert "\\frac{" in plain and "\\notacommand{x}" in plain
    assert plain.count("\ufffc") == 1
    block = document.firstBlock()
    fixed = [item.fragment().text() for item in block if item.fragment().charFormat().fontFixedPitch()]
    assert sorted(fixed) == ["\\frac{", "\\notacommand{x}"]


def test_fenced_code_block_is_fixed_pitch(qtbot):
    document = QtGui.QTextDocument()
    render_markdown(document, "Code:\n\n```python\nprint($x$)\n```\n", color=BLACK, renderer=MathRenderer())
    (block,) = [document.findBlockByNumber(n) for n in range(document.blockCount())
                if document.findBlockByNumber(n).text() == "print($x$)"]
    (item,) = list(block)
    font = item.fragment().charFormat().font()
    assert QtGui.QFontInfo(font).fixedPitch()
    assert block.blockFormat().background().color().alpha() > 0
    assert resources(document) == []


def test_cache_calls_matplotlib_once_per_formula(qtbot, monkeypatch):
    calls = []
    rasterize = rich_text._rasterize

    def counting(latex, size):
        calls.append(latex)
        return rasterize(latex, size)

    monkeypatch.setattr(rich_text, "_rasterize", counting)
    renderer = MathRenderer()
    answer = "Let $x^2$ be… $$\\frac{a}{b}$$ … \\boxed{42} and $x^2$ again"
    render_markdown(QtGui.QTextDocument(), answer, color=BLACK, renderer=renderer)
    assert len(calls) == 3
    document = QtGui.QTextDocument()
    render_markdown(document, answer, color=BLACK, renderer=renderer)
    assert len(calls) == 3
    assert len(resources(document)) == 4


def test_streaming_rerenders_into_a_browser(qtbot):
    """Every prefix of an answer, as a stream delivers it, renders without error or Qt warning."""
    browser = QtWidgets.QTextBrowser()
    qtbot.addWidget(browser)
    browser.resize(500, 400)
    browser.show()
    renderer = MathRenderer()
    answer = ("## Result $\\boxed{x=2}$\n\nWe have $a^2 + b^2 = c^2$, so\n\n$$c = \\sqrt{a^2+b^2}$$\n\n"
              "| n | $n^2$ |\n|---|---|\n| 3 | $9$ |\n\n```python\nprint('$5')\n```\nCost: $5 and $10.")
    for end in range(0, len(answer) + 1, 5):
        render_markdown(browser.document(), answer[:end], color=QtGui.QColor("#e6e6e6"), renderer=renderer)
        browser.viewport().repaint()
    render_markdown(browser.document(), answer, color=QtGui.QColor("#e6e6e6"), renderer=renderer)
    assert not browser.grab().isNull()
    assert "Cost: $5 and $10." in browser.document().toPlainText()


def test_a_long_answer_draws_each_formula_once_and_renders_again_from_the_cache(qtbot, monkeypatch):
    """3,000 words with 41 formulas: the first render draws each formula once, the next renders of the same
    answer (the live re-render while it streams, the final one) draw none. (Timings, against
    Qt's own setMarkdown: bench/rich_text.py.)"""
    answer = long_answer()
    drawn = []
    original = rich_text._draw
    monkeypatch.setattr(rich_text, "_draw", lambda latex, *args: drawn.append(latex) or original(latex, *args))
    renderer = MathRenderer()
    formulas = [piece.source for piece in split_math(answer) if piece.kind != "text"]
    documents = []
    for _ in range(3):
        document = QtGui.QTextDocument()
        document.setTextWidth(700)
        render_markdown(document, answer, color=BLACK, renderer=renderer)
        documents.append(document.toPlainText())
    assert len(formulas) == 41 and sorted(drawn) == sorted(formulas)
    assert documents[0] == documents[1] == documents[2] and "conclude" in documents[0]
