"""Benchmark: rendering a long answer (3,000 words, 41 LaTeX formulas, a table, code) into a QTextDocument
with Aha's Markdown + math renderer vs Qt's own QTextDocument.setMarkdown (which shows the LaTeX as text).

Both lay the document out at 700 px; Aha cold (every formula drawn by matplotlib's mathtext) and warm (the
formulas from its cache, as in the live re-render while an answer streams). Prints medians and the ratios
against Qt; goal: warm within a few times Qt's own Markdown, cold under 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    from app.chat.rich_text import MathRenderer, render_markdown
    from app.qt import QtGui, QtWidgets
    from tests.support.long_answer import long_answer

    QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    answer, black = long_answer(), QtGui.QColor("black")

    def timed(render) -> float:
        document = QtGui.QTextDocument()
        document.setTextWidth(700)
        started = time.perf_counter()
        render(document)
        document.size()  # and the layout a view would do
        return time.perf_counter() - started

    qt_times, cold_times, warm_times = [], [], []
    for _ in range(args.rounds):
        renderer = MathRenderer()
        qt_times.append(timed(lambda document: document.setMarkdown(answer)))
        cold_times.append(timed(lambda document, r=renderer: render_markdown(document, answer, color=black, renderer=r)))
        warm_times.append(timed(lambda document, r=renderer: render_markdown(document, answer, color=black, renderer=r)))
    qt, cold, warm = (statistics.median(times) for times in (qt_times, cold_times, warm_times))
    print(f"3,000 words, 41 formulas, {args.rounds} rounds (median):")
    print(f"  Qt setMarkdown   {qt * 1000:7.1f} ms (formulas left as text)")
    print(f"  Aha, cold cache  {cold * 1000:7.1f} ms (41 formulas drawn)")
    print(f"  Aha, warm cache  {warm * 1000:7.1f} ms")
    print(f"ratio to Qt's own Markdown: warm {warm / qt:.2f}x, cold {cold / qt:.1f}x")


if __name__ == "__main__":
    main()
