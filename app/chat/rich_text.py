"""Markdown answers with LaTeX math, shown in a QTextDocument: `split_math` finds the formulas,
`MathRenderer` draws them with matplotlib's mathtext (imported with the first formula) and
`render_markdown` puts text and images together. It knows nothing of models or chats: callers
re-render the whole answer on every update and the cache keeps that cheap.
"""

from __future__ import annotations

import math
import re
import string
from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, NamedTuple

from app.qt import Qt, QtCore, QtGui

if TYPE_CHECKING:
    import numpy as np


class Piece(NamedTuple):
    kind: Literal["text", "inline", "display"]
    source: str  # Markdown text, or the formula's LaTeX without its delimiters


# --- Finding the math -------------------------------------------------------------------------

_ESCAPABLE = frozenset(string.punctuation)
_FENCE = re.compile(r"[ \t]*(?:>[ \t]?)*[ \t]*(`{3,}|~{3,})([^\n]*)")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_BACKTICKS = re.compile(r"`+")
_BOXED = re.compile(r"\\boxed\s*\{")


def split_math(text: str) -> list[Piece]:
    """Cut an answer into text and formulas: `$…$`, `\\(…\\)` and a bare `\\boxed{…}` are inline,
    `$$…$$` and `\\[…\\]` display. Code spans and fenced code are left alone, `\\$` and amounts
    like "$5 and $10" stay text (pandoc's rule: no space inside the dollars, no digit after the
    closing one), and a formula still open at the end of a streamed answer stays text.
    """
    pieces: list[Piece] = []
    text_start = index = 0
    while index < len(text):
        if index == 0 or text[index - 1] == "\n":
            fence_end = _fenced_code_end(text, index)
            if fence_end is not None:
                index = fence_end
                continue
        char = text[index]
        found = None
        if char == "`":
            index = _code_span_end(text, index)
            continue
        if char == "$":
            found = _dollar_math(text, index)
            if found is None:
                index += 2 if text.startswith("$$", index) else 1
                continue
        elif char == "\\":
            found = _backslash_math(text, index)
            if found is None:
                escaped = index + 1 < len(text) and text[index + 1] in _ESCAPABLE
                index += 2 if escaped else 1
                continue
        else:
            index += 1
            continue
        kind, source, end = found
        if text_start < index:
            pieces.append(Piece("text", text[text_start:index]))
        pieces.append(Piece(kind, source))
        text_start = index = end
    if text_start < len(text):
        pieces.append(Piece("text", text[text_start:]))
    return pieces


def _fenced_code_end(text: str, start: int) -> int | None:
    """End of the fenced code block opening at `start` (a line start), or None if none opens there."""
    opening = _FENCE.match(text, start)
    if opening is None or (opening.group(1)[0] == "`" and "`" in opening.group(2)):
        return None
    fence = opening.group(1)
    closing = re.compile(rf"^[ \t]*(?:>[ \t]?)*[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M)
    match = closing.search(text, opening.end())
    return match.end() if match else len(text)  # unclosed: code runs to the end, as in CommonMark


def _code_span_end(text: str, start: int) -> int:
    """Index after the code span opening at `start`, or after its backticks if it never closes."""
    run = len(_BACKTICKS.match(text, start).group())
    paragraph = _BLANK_LINE.search(text, start)
    limit = paragraph.start() if paragraph else len(text)
    closing = re.compile(rf"(?<!`)`{{{run}}}(?!`)").search(text, start + run, limit)
    return closing.end() if closing else start + run


def _dollar_math(text: str, start: int) -> tuple[str, str, int] | None:
    if text.startswith("$$", start):
        end = _find_closing(text, start + 2, "$$")
        if end is None or not text[start + 2 : end].strip():
            return None
        return "display", text[start + 2 : end].strip(), end + 2
    if start + 1 >= len(text) or text[start + 1].isspace():
        return None
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "`" or (char == "\n" and _BLANK_LINE.match(text, index)):
            return None  # a code span or a new paragraph comes first
        if char == "$":
            before_space = text[index - 1].isspace()
            after = text[index + 1] if index + 1 < len(text) else ""
            if not before_space and not after.isdigit():
                return "inline", text[start + 1 : index], index + 1
            if before_space and after and not after.isspace():
                return None  # looks like the next opening dollar: "$5 and $10"
        index += 1
    return None


def _backslash_math(text: str, start: int) -> tuple[str, str, int] | None:
    pair = text[start : start + 2]
    if pair in ("\\(", "\\["):
        kind, closer = ("inline", "\\)") if pair == "\\(" else ("display", "\\]")
        end = _find_closing(text, start + 2, closer)
        if end is None or not text[start + 2 : end].strip():
            return None
        return kind, text[start + 2 : end].strip(), end + 2
    boxed = _BOXED.match(text, start)
    if boxed:
        end = _closing_brace(text, boxed.end())
        if end is not None:
            return "inline", text[start:end], end
    return None


def _find_closing(text: str, index: int, closer: str) -> int | None:
    """Index of `closer` after `index`, skipping backslash escapes; None past a blank line or the end."""
    while index < len(text):
        if text.startswith(closer, index):
            return index
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == "\n" and _BLANK_LINE.match(text, index):
            return None
        index += 1
    return None


def _closing_brace(text: str, index: int) -> int | None:
    """Index after the `}` that closes the group whose `{` ends just before `index`."""
    depth = 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        depth += (char == "{") - (char == "}")
        index += 1
        if depth == 0:
            return index
    return None


# --- Drawing the math -------------------------------------------------------------------------


class MathImage(NamedTuple):
    image: QtGui.QImage  # premultiplied ARGB, transparent, devicePixelRatio set
    depth: float  # logical pixels below the baseline


class _Box(NamedTuple):
    alpha: np.ndarray  # (rows, cols) uint8 coverage
    ascent: int  # rows above the baseline


MATH_FONT = "dejavusans"  # mathtext's font set; "cm" looks like LaTeX, DejaVu matches the UI text
_DISPLAY_SCALE = 1.2
_MAX_SOURCE = 2000  # longer "formulas" are almost surely not math: shown as source

# Rewrites into what mathtext understands; applied in order. \text, \, \; \! \: \cdot \times are native.
_REWRITES = [(re.compile(pattern), replacement) for pattern, replacement in (
    (r"\\[dtc]frac(?![a-zA-Z])", r"\\frac"),
    (r"\\[dt]binom(?![a-zA-Z])", r"\\binom"),
    (r"\\(frac|binom)\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\\1{\2}{\3}"),  # \frac12 → \frac{1}{2}
    (r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}"),
    (r"\\(?:display|text|script|scriptscript)style(?![a-zA-Z])", ""),
    (r"\\(?:no)?limits(?![a-zA-Z])|\\notag(?![a-zA-Z])|\\nonumber(?![a-zA-Z])", ""),
    (r"\\[bB]igg?[lrm]?(?![a-zA-Z])", ""),  # \big( → (
    (r"\\le(?![a-zA-Z])", r"\\leq"),
    (r"\\ge(?![a-zA-Z])", r"\\geq"),
    (r"\\[lr]vert(?![a-zA-Z])", "|"),
    (r"\\[lr]Vert(?![a-zA-Z])", r"\\|"),
    (r"\\text(bf|it|rm|tt|sf)(?![a-zA-Z])", r"\\math\1"),
    (r"\\mbox(?![a-zA-Z])", r"\\text"),
    (r"\\bm(?![a-zA-Z])", r"\\boldsymbol"),
    (r"\\operatorname\*", r"\\operatorname"),
    (r"\\implies(?![a-zA-Z])", r"\\Longrightarrow"),
    (r"\\impliedby(?![a-zA-Z])", r"\\Longleftarrow"),
    (r"\\iff(?![a-zA-Z])", r"\\Longleftrightarrow"),
    (r"\\land(?![a-zA-Z])", r"\\wedge"),
    (r"\\lor(?![a-zA-Z])", r"\\vee"),
    (r"\\lnot(?![a-zA-Z])", r"\\neg"),
    (r"\\pmod\s*\{([^{}]*)\}", r"\\ (\\mathrm{mod}\\ \1)"),
    (r"\\[bp]?mod(?![a-zA-Z])", r"\\ \\mathrm{mod}\\ "),
    (r"\\dots[bcimo](?![a-zA-Z])", r"\\ldots"),
    (r"\\(?:square|Box)(?![a-zA-Z])", "\u25a1"),
    (r"\\qed(?![a-zA-Z])", r"\\blacksquare"),
    (r"\\stackrel(?![a-zA-Z])", r"\\overset"),
    (r"\\tag\*?\s*\{([^{}]*)\}", r"\\qquad(\1)"),
    (r"\\lbrack(?![a-zA-Z])", "["),
    (r"\\rbrack(?![a-zA-Z])", "]"),
    (r"\\&", "&"),
)]
_TEXT_FRACTION = re.compile(r"\\frac(?![a-zA-Z])")
_DELIMITER_SIZING = re.compile(r"\\(?:left|right)(?![a-zA-Z])\s*\.?")
_MULTILINE = re.compile(
    r"\\begin\{(aligned|align\*?|alignat\*?|gathered|gather\*?|split|eqnarray\*?)\}(?:\{\d+\})?(.*)\\end\{\1\}",
    re.S,
)


class MathRenderer:
    """LaTeX → `MathImage` through matplotlib's mathtext, with an LRU cache.

    `\\boxed{X}` (which mathtext lacks) is X in a drawn frame; aligned/gathered environments and
    `\\\\` become stacked lines aligned at their first `&`. A formula mathtext cannot parse gives
    None (the caller shows its source), never an exception.
    """

    def __init__(self, capacity: int = 512):
        self.capacity = capacity
        self._cache: OrderedDict[tuple, MathImage | None] = OrderedDict()

    def render(self, latex: str, *, display: bool = False, color: QtGui.QColor, device_pixel_ratio: float = 1.0,
               font_size: float = 13.0) -> MathImage | None:
        """`font_size` is the surrounding text's size in logical pixels (its em)."""
        key = (latex, display, color.rgba(), round(device_pixel_ratio, 3), round(font_size, 2))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            result = _draw(latex, display, color, device_pixel_ratio, font_size)
        except Exception:  # mathtext raises ValueError and, on odd input, assorted others
            result = None
        self._cache[key] = result
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return result


def _draw(latex: str, display: bool, color: QtGui.QColor, device_pixel_ratio: float,
          font_size: float) -> MathImage | None:
    if not latex.strip() or len(latex) > _MAX_SOURCE:
        return None
    size = font_size * (_DISPLAY_SCALE if display else 1.0) * device_pixel_ratio  # device pixels per em
    rows = [[_line_box(_normalize(cell, display), size) for cell in row] for row in _rows(latex)]
    box = rows[0][0] if len(rows) == 1 and len(rows[0]) == 1 else _stacked(rows, size)
    return _colored(box, color, device_pixel_ratio)


def _normalize(latex: str, display: bool) -> str:
    latex = " ".join(latex.split())  # mathtext stops at a newline
    for pattern, replacement in _REWRITES:
        latex = pattern.sub(replacement, latex)
    if display:  # mathtext's \frac is always the small, in-line one
        latex = _TEXT_FRACTION.sub(r"\\dfrac", latex)
    return latex


def _rows(latex: str) -> list[list[str]]:
    """Lines (split at top-level `\\\\`) of cells (split at top-level `&`); one cell for one-liners."""
    environment = _MULTILINE.fullmatch(latex.strip())
    body = environment.group(2) if environment else latex
    rows: list[list[str]] = [[""]]
    depth = index = 0
    while index < len(body):
        char = body[index]
        if body.startswith("\\\\", index) and depth == 0:
            rows.append([""])
            spacing = re.match(r"\s*\[[^\]]*\]", body[index + 2 :])  # \\[4pt]
            index += 2 + (spacing.end() if spacing else 0)
            continue
        if char == "\\":
            rows[-1][-1] += body[index : index + 2]
            index += 2
            continue
        if char == "&" and depth == 0 and (environment or len(rows) > 1 or "\\\\" in body):
            rows[-1].append("{}")  # "{}=" keeps the relation's spacing at a cell start
        else:
            depth += (char == "{") - (char == "}")
            rows[-1][-1] += char
        index += 1
    return [row for row in rows if "".join(row).strip(" {}")] or [[latex]]


def _line_box(latex: str, size: float) -> _Box:
    """One line of math: plain runs through mathtext, `\\boxed{…}` runs framed, side by side."""
    parts: list[_Box] = []
    index = 0
    for match in _BOXED.finditer(latex):
        if match.start() < index:
            continue  # a \boxed inside the previous one: drawn by the recursion
        end = _closing_brace(latex, match.end())
        if end is None:
            break
        before = latex[index : match.start()]
        if before.strip():
            parts.append(_rasterized(("{}" if parts else "") + before + "{}", size))
        parts.append(_framed(_line_box(latex[match.end() : end - 1], size), size))
        index = end
    rest = latex[index:]
    if rest.strip() or not parts:
        parts.append(_rasterized(("{}" if parts else "") + rest, size))
    return parts[0] if len(parts) == 1 else _side_by_side(parts)


def _rasterized(latex: str, size: float) -> _Box:
    """mathtext for one run; unsupported \\left/\\right sizing falls back to plain delimiters."""
    try:
        return _rasterize(latex, size)
    except ValueError:
        plain = _DELIMITER_SIZING.sub("", latex)
        if plain == latex:
            raise
        return _rasterize(plain, size)


@lru_cache(maxsize=1)
def _mathtext():
    """matplotlib is imported here, with the first formula, so the window opens fast."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import MathTextParser

    return MathTextParser("agg"), FontProperties


def _rasterize(latex: str, size: float) -> _Box:
    """The one call into matplotlib: LaTeX → coverage at `size` pixels per em."""
    import numpy as np

    if not latex.strip(" {}"):
        return _Box(np.zeros((0, 0), np.uint8), 0)
    parser, font_properties = _mathtext()
    result = parser.parse(f"${latex}$", dpi=72, prop=font_properties(size=size, math_fontfamily=MATH_FONT))
    alpha = np.asarray(result.image, dtype=np.uint8)  # (rows, cols)
    # The baseline as mathtext's Agg output draws glyphs: its reported height less depth less the
    # one-pixel margin, truncated like the glyph positions (matplotlib's backend_agg adds the 1 back).
    ascent = math.floor(result.height - result.depth - 1 + 1e-6)
    return _Box(alpha, min(alpha.shape[0], max(0, ascent)))


def _side_by_side(parts: list[_Box]) -> _Box:
    import numpy as np

    ascent = max(part.ascent for part in parts)
    descent = max(part.alpha.shape[0] - part.ascent for part in parts)
    canvas = np.zeros((ascent + descent, sum(part.alpha.shape[1] for part in parts)), np.uint8)
    x = 0
    for part in parts:
        rows, cols = part.alpha.shape
        top = ascent - part.ascent
        canvas[top : top + rows, x : x + cols] = part.alpha
        x += cols
    return _Box(canvas, ascent)


def _framed(content: _Box, size: float) -> _Box:
    """\\boxed: a rectangle around the content, with a little air inside and out."""
    import numpy as np

    stroke = max(1, round(size * 0.06))
    pad = max(2, round(size * 0.2))
    outside = max(1, round(size * 0.1))
    ink_rows, ink_cols = np.nonzero(content.alpha)
    if len(ink_rows):  # frame the ink, not mathtext's margins: as even as TeX's \fbox
        top, left = ink_rows.min(), ink_cols.min()
        content = _Box(content.alpha[top : ink_rows.max() + 1, left : ink_cols.max() + 1], content.ascent - top)
    rows, cols = content.alpha.shape
    inner = stroke + pad
    canvas = np.zeros((rows + 2 * inner, cols + 2 * inner), np.uint8)
    canvas[inner : inner + rows, inner : inner + cols] = content.alpha
    canvas[:stroke, :] = canvas[-stroke:, :] = canvas[:, :stroke] = canvas[:, -stroke:] = 255
    canvas = np.pad(canvas, ((0, 0), (outside, outside)))
    return _Box(canvas, content.ascent + inner)


def _stacked(rows: list[list[_Box]], size: float) -> _Box:
    """Lines one above the other: cells alternate right- and left-aligned (like `align`), a lone
    cell is centred."""
    import numpy as np

    columns = max(len(row) for row in rows)
    widths = [max((row[c].alpha.shape[1] for row in rows if c < len(row)), default=0) for c in range(columns)]
    gap = round(size)  # \quad between column pairs
    offsets = [sum(widths[:c]) + gap * (c // 2) for c in range(columns)]
    width = offsets[-1] + widths[-1]
    lines = []
    for row in rows:
        line = _side_by_side(row) if len(row) == 1 else None
        if line is None:
            ascent = max(cell.ascent for cell in row)
            descent = max(cell.alpha.shape[0] - cell.ascent for cell in row)
            line = _Box(np.zeros((ascent + descent, width), np.uint8), ascent)
            for c, cell in enumerate(row):
                rows_, cols = cell.alpha.shape
                x = offsets[c] + (widths[c] - cols if c % 2 == 0 else 0)
                top = ascent - cell.ascent
                line.alpha[top : top + rows_, x : x + cols] = cell.alpha
        lines.append(line)
    total_width = max(line.alpha.shape[1] for line in lines)
    leading = round(size * 0.3)
    canvas = np.zeros((sum(line.alpha.shape[0] for line in lines) + leading * (len(lines) - 1), total_width),
                      np.uint8)
    y = 0
    for line in lines:
        rows_, cols = line.alpha.shape
        x = (total_width - cols) // 2
        canvas[y : y + rows_, x : x + cols] = line.alpha
        y += rows_ + leading
    last = lines[-1]
    return _Box(canvas, canvas.shape[0] - (last.alpha.shape[0] - last.ascent))


def _colored(box: _Box, color: QtGui.QColor, device_pixel_ratio: float) -> MathImage | None:
    import numpy as np

    rows, cols = box.alpha.shape
    if rows == 0 or cols == 0:
        return None
    alpha = box.alpha.astype(np.uint32) * color.alpha() // 255
    pixels = np.empty((rows, cols, 4), np.uint8)  # RGBA, premultiplied
    for channel, value in enumerate((color.red(), color.green(), color.blue())):
        pixels[..., channel] = alpha * value // 255
    pixels[..., 3] = alpha
    data = pixels.tobytes()
    image = QtGui.QImage(data, cols, rows, 4 * cols, QtGui.QImage.Format.Format_RGBA8888_Premultiplied)
    image = image.convertToFormat(QtGui.QImage.Format.Format_ARGB32_Premultiplied)  # a deep copy
    image.setDevicePixelRatio(device_pixel_ratio)
    return MathImage(image, (rows - box.ascent) / device_pixel_ratio)


# --- Putting it in a document -----------------------------------------------------------------

_SCHEME = "aha-math:"
_LINE_PREFIX = re.compile(r"([ \t]*(?:>[ \t]?)*)([ \t]*(?:(?:[-+*]|\d{1,9}[.)])[ \t]+)?)")


class _Formula(NamedTuple):
    source: str
    display: bool  # own centred paragraph, larger


def render_markdown(document: QtGui.QTextDocument, text: str, *, color: QtGui.QColor,
                    renderer: MathRenderer | None = None) -> None:
    """Replace `document`'s content with `text` as GitHub Markdown, its formulas as images.

    Each formula goes through Markdown as a placeholder image `![math](aha-math:N)`; after
    `setMarkdown` (which drops all resources) the rendered images are added and the placeholders'
    formats fixed: size, baseline, tooltip with the source. Formulas that fail show as code.
    """
    renderer = renderer if renderer is not None else _shared_renderer()
    markdown, formulas = _with_placeholders(split_math(text))
    document.setMarkdown(markdown, QtGui.QTextDocument.MarkdownFeature.MarkdownDialectGitHub)
    code_blocks, code_spans, placeholders = _scan(document, len(formulas))
    cursor = QtGui.QTextCursor(document)
    cursor.beginEditBlock()  # one relayout for all the edits
    try:
        _style_code(cursor, code_blocks, code_spans, color)
        _place_formulas(document, cursor, [(position, image_format, formulas[number])
                                           for position, image_format, number in placeholders], color, renderer)
    finally:
        cursor.endEditBlock()


@lru_cache(maxsize=1)
def _shared_renderer() -> MathRenderer:
    return MathRenderer()


def _with_placeholders(pieces: list[Piece]) -> tuple[str, list[_Formula]]:
    parts: list[str] = []
    formulas: list[_Formula] = []
    line = ""  # the current Markdown line so far: display math continues its list item or quote
    for piece in pieces:
        if piece.kind == "text":
            parts.append(piece.source)
            line = (line + piece.source).rsplit("\n", 1)[-1]
            continue
        image = f"![math]({_SCHEME}{len(formulas)})"
        own_block = piece.kind == "display" and not line.lstrip().startswith(("|", "#"))
        formulas.append(_Formula(piece.source, own_block))
        if own_block:
            prefix = _LINE_PREFIX.match(line)
            indent = prefix.group(1) + " " * len(prefix.group(2))
            parts.append(f"\n\n{indent}{image}\n\n{indent}")
            line = indent
        else:
            parts.append(image)
            line += image
    return "".join(parts), formulas


def _scan(document: QtGui.QTextDocument, formula_count: int):
    """Code blocks (start, end), inline code spans (start, end) and formula placeholders
    (position, format, number) in what the Markdown importer built."""
    code_blocks, code_spans, placeholders = [], [], []
    block = document.begin()
    while block.isValid():
        block_format = block.blockFormat()
        if block_format.hasProperty(QtGui.QTextFormat.Property.BlockCodeFence) or block_format.hasProperty(
                QtGui.QTextFormat.Property.BlockCodeLanguage):
            code_blocks.append((block.position(), block.position() + block.length() - 1))
            block = block.next()
            continue
        for item in block:
            fragment = item.fragment()
            char_format = fragment.charFormat()
            if char_format.isImageFormat():
                name = char_format.toImageFormat().name()
                number = name.removeprefix(_SCHEME)
                if name.startswith(_SCHEME) and number.isdigit() and int(number) < formula_count:
                    placeholders.append((fragment.position(), char_format.toImageFormat(), int(number)))
            elif char_format.fontFixedPitch():
                code_spans.append((fragment.position(), fragment.position() + fragment.length()))
        block = block.next()
    return code_blocks, code_spans, placeholders


def _style_code(cursor: QtGui.QTextCursor, code_blocks, code_spans, color: QtGui.QColor) -> None:
    """Code: fixed-pitch text on a faint tint of the text colour (for light and dark themes)."""
    band = QtGui.QTextBlockFormat()
    band.setBackground(_tint(color, 20))
    fixed = QtGui.QTextCharFormat()
    fixed.setFontFixedPitch(True)
    for start, end in code_blocks:
        _select(cursor, start, end)
        cursor.mergeBlockFormat(band)
        cursor.mergeCharFormat(fixed)
    span = QtGui.QTextCharFormat()
    span.setBackground(_tint(color, 24))
    for start, end in code_spans:
        _select(cursor, start, end)
        cursor.mergeCharFormat(span)


def _select(cursor: QtGui.QTextCursor, start: int, end: int) -> None:
    cursor.setPosition(start)
    cursor.setPosition(end, QtGui.QTextCursor.MoveMode.KeepAnchor)


def _place_formulas(document: QtGui.QTextDocument, cursor: QtGui.QTextCursor, placeholders,
                    color: QtGui.QColor, renderer: MathRenderer) -> None:
    app = QtGui.QGuiApplication.instance()
    device_pixel_ratio = app.devicePixelRatio() if app is not None else 1.0
    for position, image_format, formula in reversed(placeholders):  # replacements shift what follows
        font = image_format.font()
        math = renderer.render(formula.source, display=formula.display, color=color,
                               device_pixel_ratio=device_pixel_ratio, font_size=_pixel_size(font))
        _select(cursor, position, position + 1)
        if math is None:
            cursor.insertText(formula.source, _code_format(font, color))
            continue
        image, baseline_font = _on_baseline(math, font)
        document.addResource(QtGui.QTextDocument.ResourceType.ImageResource, QtCore.QUrl(image_format.name()),
                             image)
        placed = QtGui.QTextImageFormat(image_format)
        placed.setWidth(image.width() / image.devicePixelRatio())
        placed.setHeight(image.height() / image.devicePixelRatio())
        placed.setVerticalAlignment(QtGui.QTextCharFormat.VerticalAlignment.AlignBaseline)
        placed.clearProperty(QtGui.QTextFormat.Property.FontSizeAdjustment)
        placed.setFont(baseline_font)
        placed.setToolTip(formula.source)
        cursor.setCharFormat(placed)
        if formula.display and cursor.block().text() == "\ufffc":
            centred = QtGui.QTextBlockFormat()
            centred.setAlignment(Qt.AlignmentFlag.AlignHCenter)
            cursor.mergeBlockFormat(centred)


def _on_baseline(math: MathImage, font: QtGui.QFont) -> tuple[QtGui.QImage, QtGui.QFont]:
    """The image, padded, and the font for its format that put the formula's baseline on the text's.

    Qt draws an AlignBaseline object with its bottom one descent *of the format's font* below the
    baseline (AlignMiddle centres it in the line instead, which depends on its neighbours). That font
    is otherwise unused, so a deep formula gets one sized to make this descent its depth. Padding to
    at least the text's ascent and descent keeps a line (or table cell) of only math like a text line.
    """
    metrics = QtGui.QFontMetricsF(font)
    if math.depth <= metrics.descent():
        baseline_font, descent = font, metrics.descent()
    else:
        point_size, descent = _descent_font_size(font.toString(), round(math.depth, 2))
        baseline_font = QtGui.QFont(font)
        baseline_font.setPointSizeF(point_size)
    image = math.image
    ratio = image.devicePixelRatio()
    bottom = round((descent - math.depth) * ratio)
    top = max(0, round((metrics.ascent() + math.depth) * ratio) - image.height())
    if top or bottom:
        image = image.copy(QtCore.QRect(0, -top, image.width(), image.height() + top + bottom))  # transparent
        image.setDevicePixelRatio(ratio)
    return image, baseline_font


@lru_cache(maxsize=1024)
def _descent_font_size(font_description: str, depth: float) -> tuple[float, float]:
    """(point size, its descent ≥ depth) of the font described, in steps of a quarter point."""
    font = QtGui.QFont()
    font.fromString(font_description)
    font.setPointSizeF(100.0)
    per_point = QtGui.QFontMetricsF(font).descent() / 100.0
    point_size = max(1.0, round(depth / per_point * 4 + 0.5) / 4)
    for _ in range(8):
        font.setPointSizeF(point_size)
        descent = QtGui.QFontMetricsF(font).descent()
        if descent >= depth:
            break
        point_size += 0.25
    return point_size, descent


def _pixel_size(font: QtGui.QFont) -> float:
    if font.pixelSize() > 0:
        return float(font.pixelSize())
    screen = QtGui.QGuiApplication.primaryScreen()
    dpi = screen.logicalDotsPerInchY() if screen is not None else 96.0
    return font.pointSizeF() * dpi / 72.0


def _tint(color: QtGui.QColor, alpha: int) -> QtGui.QColor:
    background = QtGui.QColor(color)
    background.setAlpha(alpha)
    return background


def _code_format(font: QtGui.QFont, color: QtGui.QColor) -> QtGui.QTextCharFormat:
    code = QtGui.QTextCharFormat()
    code.setFont(font)
    code.setFontFamilies(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont).families())
    code.setFontFixedPitch(True)
    code.setBackground(_tint(color, 24))
    return code
