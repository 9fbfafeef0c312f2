"""Conversations: a chat turn runs the model on a branch of the store and saves every token as it comes.

`send()` adds the user's message and streams the reply; `regenerate()` streams a sibling reply to the
same user message (the old one is kept: branches, not overwrites). The assistant message is written
through the store's batched writer and always finished — `complete`, `stopped` (cancel, budget or a
full context: the thinking so far is kept) or `error` — even when the consumer stops iterating.
`stop_wording`, `thought_summary`, `stats_fields` and `stats_line` put a reply's stats and why it ended into
words, one wording for the window, Compare and `aha chat`. Knows nothing of Qt or terminals.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from engine import r1
from engine.chat.runtime import ChatEvent, ChatModel
from engine.store import Store

LEAF = "leaf"  # send(parent_id=LEAF): after the conversation's current leaf; parent_id=None: a new root

SETTINGS_DEFAULTS = {"temperature": r1.TEMPERATURE, "top_p": r1.TOP_P, "max_tokens": 4096, "history": "strip",
                     "system_prompt": "", "seed": None, "thinking_budget": None, "budget_message": "",
                     "thinking": None}


@dataclass
class TurnSettings:
    """Sampling and prompt settings of one turn (a conversation's settings, overridden per call)."""

    temperature: float = r1.TEMPERATURE
    top_p: float = r1.TOP_P
    max_tokens: int = 4096
    history: str = "strip"
    system_prompt: str = ""
    seed: int | None = None
    thinking_budget: int | None = None       # end the thought at this many tokens (None: no budget)
    budget_message: str = ""                 # what the budget says when it ends a thought ("": llama.cpp's sentence)
    thinking: bool | None = None             # the template's thinking switch (None: the template's default)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_conversation(cls, settings: dict, **overrides) -> TurnSettings:
        merged = {**SETTINGS_DEFAULTS, **{k: v for k, v in settings.items() if k in SETTINGS_DEFAULTS},
                  **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**merged)

    def sampling(self) -> dict:
        """The keyword arguments of ChatModel.stream (and what a reply records it was made with)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "seed": self.seed, "thinking_budget": self.thinking_budget,
                "budget_message": self.budget_message or None, "thinking": self.thinking}


def status_for(stop_reason: str | None) -> str:
    """Store status of a finished reply: natural end → complete, failure → error, any cut → stopped."""
    if stop_reason == "eos":
        return "complete"
    return "error" if stop_reason in ("error", None) else "stopped"


# Why a reply ended, in the one wording the Chat view, Compare and `aha chat` share.
STOP_WORDING = {"eos": "Finished", "cancelled": "Stopped by you", "max_tokens": "Cut by the token budget",
                "context_full": "Cut: the context is full", "error": "Failed"}
ENDED_IN_THOUGHT = "The model ended inside its thought"   # EOS before </think>: nobody stopped it
BUDGET_ENDED = "Ended by the thinking budget"              # the budget's text closed the thought


def stop_wording(stats: dict) -> str:
    """Why a reply ended: "Stopped by you", "Cut by the token budget while thinking", "The model ended inside
    its thought" (EOS inside <think>) …; "" when the stats say nothing (a message saved without stats)."""
    reason = stats.get("stop_reason")
    if reason is None:
        return ""
    if stats.get("budget_ended_thought") and not stats.get("thinking_unfinished"):
        ending = STOP_WORDING.get(reason, reason)
        return f"{ending} after the thinking budget ({counted(stats.get('thinking_budget') or 0, 'token')}) " \
               "ended the thought"
    if stats.get("thinking_unfinished"):
        return ENDED_IN_THOUGHT if reason == "eos" else f"{STOP_WORDING.get(reason, reason)} while thinking"
    return STOP_WORDING.get(reason, reason)


def counted(count: int, noun: str) -> str:
    """ "1 token", "0 tokens", "842 tokens"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def stats_fields(stats: dict) -> dict[str, str]:
    """A reply's stats in words, one wording for every view: Compare's table shows them as its rows, and
    stats_line and thought_summary are made of them. A value the stats lack reads as zero.

    Example:
    >>> stats_fields({"thinking_s": 3.14, "thinking_tokens": 120, "answer_s": 2.0, "answer_tokens": 1,
    ...               "ttft_s": 0.012, "tokens_per_s": 45.3, "stop_reason": "max_tokens"})  # doctest: +NORMALIZE_WHITESPACE
    {'Thinking': '3.1 s · 120 tokens', 'Answer': '2.0 s · 1 token', 'First token': '12 ms',
     'Speed': '45.3 tok/s', 'How it ended': 'Cut by the token budget'}
    """
    return {"Thinking": f"{stats.get('thinking_s') or 0.0:.1f} s · {counted(stats.get('thinking_tokens') or 0, 'token')}",
            "Answer": f"{stats.get('answer_s') or 0.0:.1f} s · {counted(stats.get('answer_tokens') or 0, 'token')}",
            "First token": f"{(stats.get('ttft_s') or 0.0) * 1000:.0f} ms",
            "Speed": f"{stats.get('tokens_per_s') or 0.0:.1f} tok/s",
            "How it ended": stop_wording(stats)}


def thought_summary(stats: dict) -> str:
    """Header of a finished thought: "Thought for 12.3 s · 842 tokens", or why it did not finish
    ("Stopped by you while thinking · 3.1 s · 120 tokens"), or that the budget ended it
    ("Ended by the thinking budget (256 tokens) · 3.1 s · 256 tokens")."""
    thinking = stats_fields(stats)["Thinking"]
    if stats.get("budget_ended_thought") and not stats.get("thinking_unfinished"):
        return f"{BUDGET_ENDED} ({counted(stats.get('thinking_budget') or 0, 'token')}) · {thinking}"
    reason = stop_wording(stats) if stats.get("thinking_unfinished") else ""
    return f"{reason} · {thinking}" if reason else f"Thought for {thinking}"


def stats_line(stats: dict, thought_above: bool = False, separator: str = " · ") -> str:
    """The line under a reply: the thought, the answer, first token, speed, why the reply ended when it did not
    end by itself, an error. A view that shows thought_summary above the reply (the window's think header)
    passes thought_above: the line then gives the thought's time and tokens only, and a thought that did not
    finish says why once, in that header (without a header, the line starts with the summary)."""
    fields, unfinished = stats_fields(stats), bool(stats.get("thinking_unfinished"))
    parts = []
    if thought_above and stats.get("thinking_tokens"):
        parts.append(f"thinking {fields['Thinking']}")
    elif not thought_above and (stats.get("thinking_tokens") or unfinished):
        parts.append(thought_summary(stats))
    if stats.get("answer_tokens"):
        parts.append(f"answer {fields['Answer']}")
    if stats.get("ttft_s") is not None:
        parts.append(f"first token {fields['First token']}")
    if stats.get("tokens_per_s"):
        parts.append(fields["Speed"])
    if stats.get("stop_reason") not in (None, "eos") and not unfinished:
        parts.append(fields["How it ended"])
    if stats.get("error"):
        parts.append(stats["error"])
    return separator.join(parts)


def messages_for(store: Store, leaf_id: int | None, system_prompt: str = "") -> list[dict]:
    """The branch ending at leaf_id as chat messages, reasoning kept apart in `thinking`."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    if leaf_id is not None:
        for message in store.branch_path(leaf_id):
            messages.append({"role": message.role, "content": message.content, "thinking": message.thinking})
    return messages


def stream_reply(store: Store, model: ChatModel, conversation_id: int, user_message_id: int,
                 settings: TurnSettings, cancel=None) -> Iterator[ChatEvent]:
    """Stream the model's reply to `user_message_id` into a new assistant message (a new branch)."""
    messages = messages_for(store, user_message_id, settings.system_prompt)
    sampling = settings.sampling() | {"history": settings.history}
    writer = store.begin_assistant_message(conversation_id, user_message_id, model=model.path.name,
                                           sampling=sampling)
    status, stats = "stopped", {"stop_reason": "cancelled"}
    try:
        for event in model.stream(messages, cancel=cancel, history=settings.history, **settings.sampling()):
            if event.kind == "done":
                stats = event.stats or {}
                status = status_for(stats.get("stop_reason"))
                event = ChatEvent("done", stats={**stats, "conversation_id": conversation_id,
                                                 "message_id": writer.message_id})
            else:
                writer.append(event.kind, event.text)
            yield event
    except Exception as exc:
        status, stats = "error", {"stop_reason": "error", "error": str(exc)}
        raise
    finally:
        writer.finish(status, stats)


def send(store: Store, model: ChatModel, conversation_id: int, text: str, *, parent_id: int | str | None = LEAF,
         settings: TurnSettings | None = None, cancel=None) -> Iterator[ChatEvent]:
    """Add a user message after parent_id (LEAF: the current leaf; None: a new first message, i.e. an edit
    of the first question) and stream the reply."""
    conversation = store.get_conversation(conversation_id)
    settings = settings or TurnSettings.from_conversation(conversation.settings)
    parent = conversation.leaf_id if parent_id == LEAF else parent_id
    user = store.add_message(conversation_id, parent, "user", text)
    if conversation.title == "New chat":
        store.rename_conversation(conversation_id, title_from(text))
    yield from stream_reply(store, model, conversation_id, user.id, settings, cancel)


def regenerate(store: Store, model: ChatModel, conversation_id: int, assistant_message_id: int, *,
               settings: TurnSettings | None = None, cancel=None) -> Iterator[ChatEvent]:
    """A new reply beside an existing one (same user message); the old reply stays as a branch."""
    old = store.get_message(assistant_message_id)
    settings = settings or TurnSettings.from_conversation(store.get_conversation(conversation_id).settings)
    yield from stream_reply(store, model, conversation_id, old.parent_id, settings, cancel)


def title_from(text: str, limit: int = 60) -> str:
    """A conversation title from its first message: the first line, cut at a word boundary."""
    line = " ".join(text.strip().split("\n", 1)[0].split()) or "New chat"
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + "…"
