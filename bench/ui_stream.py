"""Benchmark: a 300 tokens/s chat stream into Aha's Chat pane vs into a plain QTextBrowser that takes every
token as it arrives (the straightforward widget a chat app starts with), offscreen, same synthetic stream.

Both receive the events the same way (app.workers.ThreadJob, drained on the GUI thread); Aha batches them
(≤ 30 document updates a second) and renders the answer's Markdown and math while it streams and at the
end; the peer inserts each token, then renders the final Markdown with Qt's own setMarkdown. Prints, for
each, the 10 ms timer's p50/p99 lateness (how long the window could not respond), the document updates,
and how long after the last token the final text was on screen; goal: Aha's p99 lateness ≤ 50 ms and
≤ the peer's. tests/test_app_responsiveness.py asserts the behaviour with loose bounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def run(peer: str, rate: int, seconds: float) -> dict:
    """One stream into `peer` ("aha" or "plain"): timer lateness, document updates, final-text delay."""
    from app.qt import Qt, QtCore, QtWidgets
    from app.workers import ThreadJob
    from tests.support.synthetic_stream import synthetic_stream

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    marks: dict = {}
    result: dict = {"updates": 0}
    job = ThreadJob(lambda emit, cancel: synthetic_stream(emit, cancel, marks, rate, seconds))
    if peer == "aha":
        from app.chat.view import ChatPane
        from engine.store import Store

        widget = ChatPane(Store(Path(tempfile.mkdtemp()) / "aha.db"))
        widget.resize(1100, 760)
        widget.show()
        widget._start_stream()
        reply = widget.streaming
        for owner, name in ((reply.think, "append"), (reply.answer, "append_plain")):
            original = getattr(owner, name)

            def counted(text, original=original):
                result["updates"] += 1
                return original(text)
            setattr(owner, name, counted)
        job.event.connect(widget.session._on_event)
        widget.session.finished.connect(lambda stats: result.setdefault("shown_at", time.perf_counter()))
    else:
        widget = QtWidgets.QTextBrowser()
        widget.resize(1100, 760)
        widget.show()
        answer: list[str] = []

        def on_event(event):
            if event.kind in ("thinking", "answer"):
                if event.kind == "answer":
                    answer.append(event.text)
                cursor = widget.textCursor()
                cursor.movePosition(cursor.MoveOperation.End)
                cursor.insertText(event.text)
                result["updates"] += 1
            elif event.kind == "done":
                widget.setMarkdown("".join(answer))
                widget.document().size()  # and the layout the view does
                result["shown_at"] = time.perf_counter()
        job.event.connect(on_event)
    ticks: list[float] = []
    timer = QtCore.QTimer(interval=10, timerType=Qt.TimerType.PreciseTimer, timeout=lambda: ticks.append(time.perf_counter()))
    timer.start()
    job.start()
    while "shown_at" not in result:
        app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 20)
    timer.stop()
    widget.close()
    lateness = sorted(later - earlier - 0.010 for earlier, later in zip(ticks, ticks[1:], strict=False))
    return {"p50": lateness[len(lateness) // 2], "p99": lateness[int(len(lateness) * 0.99)],
            "updates": result["updates"], "final": result["shown_at"] - marks["done_at"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=300, help="tokens per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each; the median is shown")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"plain": [], "aha": []}
    for _ in range(args.rounds):
        for peer in runs:
            runs[peer].append(run(peer, args.rate, args.seconds))
    print(f"{args.rate} tokens/s for {args.seconds:.0f} s, {args.rounds} alternating runs each, offscreen")
    summary = {}
    for peer, rows in runs.items():
        median = {key: sorted(row[key] for row in rows)[len(rows) // 2] for key in rows[0]}
        summary[peer] = median
        print(f"  {peer:5s}: timer lateness p50 {median['p50'] * 1000:6.1f} ms, p99 {median['p99'] * 1000:6.1f} ms; "
              f"{median['updates']:5d} document updates; final text {median['final'] * 1000:6.1f} ms after the last token")
    print(f"ratio aha/plain: p99 lateness {summary['aha']['p99'] / summary['plain']['p99']:.2f}x, "
          f"document updates {summary['aha']['updates'] / summary['plain']['updates']:.3f}x")


if __name__ == "__main__":
    main()
