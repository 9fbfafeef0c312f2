"""Compare: one prompt to two models (or one model with two sampling settings or thinking budgets), and what
the two replies say.

`stream()` runs the sides one after the other (fair timings on a shared CPU/GPU), each on its own model, and
yields every event tagged with its side; `summary()` says in a line how the two thought and answered.
Nothing is saved to the store. Knows nothing of widgets or threads, nor how a model is kept loaded: the
caller's `load` gives each side its model (the Compare pane runs this on a worker thread).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from engine import r1
from engine.chat.conversation import counted
from engine.chat.runtime import ChatModel

# The sampling settings a side can pick, by the name the pane lists them under.
SAMPLINGS = {"DeepSeek R1 (0.6 · 0.95)": {"temperature": r1.TEMPERATURE, "top_p": r1.TOP_P},
             "Greedy (0 · 1.0)": {"temperature": 0.0, "top_p": 1.0},
             "Hot (1.0 · 0.95)": {"temperature": 1.0, "top_p": 0.95}}


@dataclass(frozen=True)
class Plan:
    """What one side runs: a model (its path), its sampling and its thinking budget."""

    model: str
    temperature: float = r1.TEMPERATURE
    top_p: float = r1.TOP_P
    thinking_budget: int | None = None  # end the thought at this many tokens (None: no budget)


@dataclass(frozen=True)
class SideEvent:
    """kind: "start" (the side's turn begins; its model may still have to load) | "thinking" | "answer" |
    "done" (stats set); text: the new text, "" for start and done."""

    side: str
    kind: str
    text: str = ""
    stats: dict | None = None


def stream(prompt: str, plans: Mapping[str, Plan], load: Callable[[str, str], ChatModel], max_tokens: int = 4096,
           cancel=None) -> Iterator[SideEvent]:
    """Each side's reply to `prompt`, side after side in the plans' order; `load(side, path)` gives a side its
    model. A cancel ends the running side's reply (its done event says "cancelled") and starts no other."""
    for side, plan in plans.items():
        if cancel is not None and cancel.cancelled:
            return
        yield SideEvent(side, "start")
        model = load(side, plan.model)
        for event in model.stream([{"role": "user", "content": prompt}], temperature=plan.temperature,
                                  top_p=plan.top_p, max_tokens=max_tokens, cancel=cancel,
                                  thinking_budget=plan.thinking_budget):
            yield SideEvent(side, event.kind, event.text, event.stats)


def summary(results: Mapping[str, dict]) -> str:
    """ "A thought 120 tokens, B 88; A answered in 1 token, B in 40." from the A and B done stats; "" until
    both sides are done. A thought its budget ended says so: "A thought 256 tokens (its budget ended it), …"."""
    a, b = results.get("A"), results.get("B")
    if not (a and b):
        return ""

    def cut(stats: dict) -> str:
        return " (its budget ended it)" if stats.get("budget_ended_thought") else ""
    return (f"A thought {counted(a.get('thinking_tokens', 0), 'token')}{cut(a)}, B {b.get('thinking_tokens', 0)}"
            f"{cut(b)}; A answered in {counted(a.get('answer_tokens', 0), 'token')}, B in {b.get('answer_tokens', 0)}.")
