"""engine.chat.compare without Qt or a model: sides run in order with their own model and sampling, every event
tagged with its side; a cancel ends the running side and starts no other; the summary line."""

from __future__ import annotations

from engine.chat.compare import Plan, SideEvent, stream, summary
from engine.chat.runtime import ChatEvent
from engine.jobs import CancelToken


class FakeModel:
    """Streams one thought token and one answer token, then done with the sampling it was given; stops as
    ChatModel does (a done event saying "cancelled") when the cancel token is set."""

    def __init__(self, name: str, cancel_after_thought: CancelToken | None = None):
        self.name, self.cancel_after_thought = name, cancel_after_thought
        self.calls: list[dict] = []

    def stream(self, messages, temperature, top_p, max_tokens, cancel=None, thinking_budget=None):
        self.calls.append({"messages": messages, "temperature": temperature, "top_p": top_p,
                           "max_tokens": max_tokens, "thinking_budget": thinking_budget})
        yield ChatEvent("thinking", f"{self.name} thinks")
        if self.cancel_after_thought is not None:
            self.cancel_after_thought.cancel()
        if cancel is not None and cancel.cancelled:
            yield ChatEvent("done", stats={"stop_reason": "cancelled", "thinking_unfinished": True})
            return
        yield ChatEvent("answer", f"{self.name} answers")
        yield ChatEvent("done", stats={"stop_reason": "eos", "thinking_tokens": 1, "answer_tokens": 1})


def test_sides_run_in_order_each_with_its_model_and_sampling():
    models = {"A": FakeModel("a"), "B": FakeModel("b")}
    loaded = []

    def load(side, path):
        loaded.append((side, path))
        return models[side]

    plans = {"A": Plan("a.gguf", temperature=0.0, top_p=1.0), "B": Plan("b.gguf", thinking_budget=256)}
    events = list(stream("2+2?", plans, load, max_tokens=64))
    assert [(event.side, event.kind, event.text) for event in events] == [
        ("A", "start", ""), ("A", "thinking", "a thinks"), ("A", "answer", "a answers"), ("A", "done", ""),
        ("B", "start", ""), ("B", "thinking", "b thinks"), ("B", "answer", "b answers"), ("B", "done", "")]
    assert loaded == [("A", "a.gguf"), ("B", "b.gguf")]
    assert models["A"].calls == [{"messages": [{"role": "user", "content": "2+2?"}], "temperature": 0.0,
                                  "top_p": 1.0, "max_tokens": 64, "thinking_budget": None}]
    assert (models["B"].calls[0]["temperature"], models["B"].calls[0]["top_p"]) == (0.6, 0.95)
    assert models["B"].calls[0]["thinking_budget"] == 256
    results = {event.side: event.stats for event in events if event.kind == "done"}
    assert summary(results) == "A thought 1 token, B 1; A answered in 1 token, B in 1."
    assert summary({"A": results["A"]}) == ""
    results["B"] = {**results["B"], "thinking_tokens": 256, "budget_ended_thought": True}
    assert summary(results) == "A thought 1 token, B 256 (its budget ended it); A answered in 1 token, B in 1."


def test_a_cancel_ends_the_running_side_and_starts_no_other():
    cancel = CancelToken()
    models = {"A": FakeModel("a", cancel_after_thought=cancel), "B": FakeModel("b")}
    events = list(stream("2+2?", {"A": Plan("a.gguf"), "B": Plan("b.gguf")}, lambda side, path: models[side],
                         cancel=cancel))
    assert events[-1] == SideEvent("A", "done", stats={"stop_reason": "cancelled", "thinking_unfinished": True})
    assert {event.side for event in events} == {"A"} and models["B"].calls == []
