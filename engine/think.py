"""Streaming `<think>` parser: routes model output into thinking and answer text as it arrives.

A pure state machine with no I/O, shared by the chat view and the format reward. It knows the two
tags and nothing else: not tokens, templates or display. Whether the prompt already opened a thought
("prefilled") is the caller's decision, made from the rendered prompt, never from the model name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

Kind = Literal["thinking", "answer"]


class ParserState(enum.Enum):
    """Where the parser is: outside a thought, inside one, or done (after `finish()`)."""

    ANSWER = "answer"
    THINKING = "thinking"
    FINISHED = "finished"


class ThinkStateError(RuntimeError):
    """A call the parser's state does not allow (feed or finish after finish)."""


@dataclass(frozen=True)
class Segment:
    """A run of text of one kind; `text` is verbatim model output, never empty."""

    kind: Kind
    text: str


@dataclass(frozen=True)
class ThinkSummary:
    """What a format reward needs to know about a finished stream."""

    prefilled: bool  # the prompt opened the first thought
    blocks_opened: int  # `<think>` tags seen, plus one for a prefilled thought
    blocks_closed: int  # `</think>` tags that closed a thought
    ended_in_thinking: bool  # the stream stopped inside an unclosed thought


class ThinkParser:
    """Feed chunks, get `Segment`s. A tag split across chunks is recognized; only a suffix that
    could still become the tag the current state waits for is held back until the next chunk.

    Outside a thought only `<think>` is special (a stray `</think>` is answer text); inside a thought
    only `</think>` is special (a nested `<think>` is thinking text).
    """

    def __init__(self, prefilled: bool = False):
        self.prefilled = prefilled
        self.state = ParserState.THINKING if prefilled else ParserState.ANSWER
        self.blocks_opened = 1 if prefilled else 0
        self.blocks_closed = 0
        self._held = ""
        self._ended_in_thinking: bool | None = None

    @property
    def in_thinking(self) -> bool:
        """True while inside an unclosed thought (False once finished: see `ended_in_thinking`)."""
        return self.state is ParserState.THINKING

    @property
    def ended_in_thinking(self) -> bool:
        """Whether the stream stopped inside a thought; known only after `finish()`."""
        if self._ended_in_thinking is None:
            raise self._state_error("ended_in_thinking", ParserState.FINISHED)
        return self._ended_in_thinking

    def feed(self, chunk: str) -> list[Segment]:
        """Route one chunk; returns the segments that are certain so far, merged by kind."""
        self._require_open("feed")
        text, self._held = self._held + chunk, ""
        segments: list[Segment] = []
        while text:
            tag = CLOSE_TAG if self.in_thinking else OPEN_TAG
            index = text.find(tag)
            if index < 0:
                keep = partial_tag_length(text, tag)
                _add(segments, self._kind(), text[: len(text) - keep])
                self._held = text[len(text) - keep :]
                break
            _add(segments, self._kind(), text[:index])
            self._cross(tag)
            text = text[index + len(tag) :]
        return segments

    def finish(self) -> list[Segment]:
        """End the stream: held-back text (a tag that never completed) is emitted as text."""
        self._require_open("finish")
        segments: list[Segment] = []
        _add(segments, self._kind(), self._held)
        self._held = ""
        self._ended_in_thinking = self.in_thinking
        self.state = ParserState.FINISHED
        return segments

    def summary(self) -> ThinkSummary:
        """The counts a format reward scores; available after `finish()`."""
        return ThinkSummary(self.prefilled, self.blocks_opened, self.blocks_closed, self.ended_in_thinking)

    def _kind(self) -> Kind:
        return "thinking" if self.in_thinking else "answer"

    def _cross(self, tag: str) -> None:
        if tag == OPEN_TAG:
            self.blocks_opened += 1
            self.state = ParserState.THINKING
        else:
            self.blocks_closed += 1
            self.state = ParserState.ANSWER

    def _require_open(self, call: str) -> None:
        if self.state is ParserState.FINISHED:
            raise self._state_error(call, ParserState.ANSWER, ParserState.THINKING)

    def _state_error(self, call: str, *expected: ParserState) -> ThinkStateError:
        wanted = " or ".join(state.value for state in expected)
        return ThinkStateError(f"ThinkParser.{call}: expected state {wanted}, got {self.state.value}")


def partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (0 if none)."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def split_thinking(text: str, prefilled: bool = False) -> tuple[str, str]:
    """(thinking, answer) of a whole completion: all thinking text joined, all answer text joined."""
    parser = ThinkParser(prefilled=prefilled)
    segments = parser.feed(text) + parser.finish()
    thinking = "".join(segment.text for segment in segments if segment.kind == "thinking")
    answer = "".join(segment.text for segment in segments if segment.kind == "answer")
    return thinking, answer


def _add(segments: list[Segment], kind: Kind, text: str) -> None:
    """Append text to a segment list, merging with a last segment of the same kind; skip empty text."""
    if not text:
        return
    if segments and segments[-1].kind == kind:
        segments[-1] = Segment(kind, segments[-1].text + text)
    else:
        segments.append(Segment(kind, text))
