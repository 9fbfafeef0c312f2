"""A chat stream at a fixed rate without a model: ChatEvents for the responsiveness test and bench/ui_stream.py.

60 % of the tokens are thinking, then the answer (Markdown with math, a table and code) word by word,
then `done` with stats; `marks["done_at"]` is when the last token was emitted.
"""

from __future__ import annotations

import time

from engine.chat.runtime import ChatEvent

WORDS = ("Let me check the carry again: 7 + 8 = 15, so we write 5 and carry 1. Next column: "
         "2 + 9 + 1 = 12. ").split(" ")
ANSWER = ("The sum is $\\frac{1}{2} + x^2$, and so the final answer is $$\\boxed{1275}$$ — see the table:\n\n"
          "| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nprint(1275)\n```\n")


def synthetic_stream(emit, cancel, marks: dict, rate: int, seconds: float) -> None:
    """ChatEvents at `rate` per second for `seconds`: 60 % thinking, then the answer, then done."""
    total = int(rate * seconds)
    answer_words = ANSWER.split(" ")
    start = time.perf_counter()
    for index in range(total):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if index < total * 0.6:
            emit(ChatEvent("thinking", WORDS[index % len(WORDS)] + " "))
        else:
            position = index - int(total * 0.6)
            emit(ChatEvent("answer", answer_words[position % len(answer_words)] + " "))
    marks["done_at"] = time.perf_counter()
    emit(ChatEvent("done", stats={"stop_reason": "eos", "thinking_tokens": int(total * 0.6),
                                  "thinking_s": seconds * 0.6, "answer_tokens": int(total * 0.4),
                                  "answer_s": seconds * 0.4, "ttft_s": 0.01, "tokens_per_s": rate,
                                  "context_used": total + 20, "context_size": 4096}))
