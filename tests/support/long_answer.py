"""A long Markdown answer with LaTeX: 3,000 words, 40 formula paragraphs, a code block and a table.

Used by the rich-text test (each formula drawn once) and bench/rich_text.py (render time vs Qt's own).
"""


def long_answer(formulas: int = 40, words: int = 3000) -> str:
    vocabulary = "the sum of squares is bounded so we consider each term separately and conclude".split()
    paragraphs, count = [], 0
    for number in range(formulas):
        sentence = " ".join(vocabulary[(number + k) % len(vocabulary)] for k in range(words // formulas))
        count += words // formulas
        if number % 8 == 3:
            paragraphs.append(f"{sentence}\n\n$$\\sum_{{i=1}}^{{{number}}} \\frac{{i^2}}{{{number + 1}}}$$")
        elif number % 8 == 7:
            paragraphs.append(f"- {sentence} \\boxed{{{number}}}")
        else:
            paragraphs.append(f"{sentence} $x_{{{number}}}^2 + \\alpha_{number} \\le {number}$ {sentence[:20]}")
    paragraphs.insert(5, "```python\ndef f(x):\n    return x ** 2\n```")
    paragraphs.insert(9, "| a | b |\n|---|---|\n| 1 | $\\pi$ |")
    assert count >= words
    return "\n\n".join(paragraphs)
