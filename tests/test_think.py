"""The streaming <think> parser: routing, held-back tag prefixes, state errors, chunking invariance."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.think import (
    CLOSE_TAG,
    OPEN_TAG,
    ParserState,
    Segment,
    ThinkParser,
    ThinkStateError,
    ThinkSummary,
    partial_tag_length,
    split_thinking,
)


def run(chunks, prefilled=False):
    """Feed chunks one by one; return (merged segments, parser)."""
    parser = ThinkParser(prefilled=prefilled)
    segments = []
    for chunk in chunks:
        segments += well_formed(parser.feed(chunk))
    segments += well_formed(parser.finish())
    return merge(segments), parser


def well_formed(segments):
    """One call's output: no empty segments, no two neighbours of the same kind."""
    assert all(segment.text for segment in segments)
    assert all(a.kind != b.kind for a, b in zip(segments, segments[1:], strict=False))
    return segments


def cut(text, cuts):
    """Split text at sorted positions (repeats give empty chunks)."""
    starts, ends = [0, *cuts], [*cuts, len(text)]
    return [text[start:end] for start, end in zip(starts, ends, strict=True)]


def merge(segments):
    merged = []
    for segment in segments:
        if merged and merged[-1].kind == segment.kind:
            merged[-1] = Segment(segment.kind, merged[-1].text + segment.text)
        else:
            merged.append(segment)
    return merged


def test_not_prefilled_routes_thinking_and_answer_verbatim():
    segments, parser = run(["<think>\nLet me see.\n</think>\n\nThe answer is 4."])
    assert segments == [Segment("thinking", "\nLet me see.\n"), Segment("answer", "\n\nThe answer is 4.")]
    assert parser.summary() == ThinkSummary(prefilled=False, blocks_opened=1, blocks_closed=1,
                                            ended_in_thinking=False)


def test_prefilled_first_close_tag_ends_the_prompt_opened_thought():
    segments, parser = run(["Okay, 2+2.", "</think>", "4"], prefilled=True)
    assert segments == [Segment("thinking", "Okay, 2+2."), Segment("answer", "4")]
    assert (parser.blocks_opened, parser.blocks_closed, parser.ended_in_thinking) == (1, 1, False)


def test_prefilled_parser_starts_in_thinking():
    assert ThinkParser(prefilled=True).in_thinking
    assert not ThinkParser().in_thinking


def test_unterminated_thought_is_reported():
    parser = ThinkParser()
    assert parser.feed("<think>hmm, still") == [Segment("thinking", "hmm, still")]
    assert parser.in_thinking
    assert parser.finish() == []
    assert parser.ended_in_thinking
    assert parser.state is ParserState.FINISHED
    assert not parser.in_thinking


def test_no_think_block_is_all_answer():
    segments, parser = run(["Just ", "an answer."])
    assert segments == [Segment("answer", "Just an answer.")]
    assert (parser.blocks_opened, parser.blocks_closed, parser.ended_in_thinking) == (0, 0, False)


def test_text_before_think_is_answer_and_a_second_block_is_thinking_again():
    segments, parser = run(["pre<think>a</think>mid<think>b</think>post"])
    assert segments == [Segment("answer", "pre"), Segment("thinking", "a"), Segment("answer", "mid"),
                        Segment("thinking", "b"), Segment("answer", "post")]
    assert (parser.blocks_opened, parser.blocks_closed) == (2, 2)


def test_stray_close_tag_without_open_block_is_answer_text():
    segments, parser = run(["a</think>b"])
    assert segments == [Segment("answer", "a</think>b")]
    assert parser.blocks_closed == 0


def test_nested_open_tag_inside_thinking_is_thinking_text():
    segments, parser = run(["<think>x<think>y</think>z"])
    assert segments == [Segment("thinking", "x<think>y"), Segment("answer", "z")]
    assert (parser.blocks_opened, parser.blocks_closed) == (1, 1)


def test_incomplete_tag_at_the_end_is_flushed_as_text_by_finish():
    parser = ThinkParser()
    assert parser.feed("answer <thi") == [Segment("answer", "answer ")]
    assert parser.finish() == [Segment("answer", "<thi")]
    parser = ThinkParser(prefilled=True)
    assert parser.feed("thought </thin") == [Segment("thinking", "thought ")]
    assert parser.finish() == [Segment("thinking", "</thin")]
    assert parser.ended_in_thinking


def test_only_a_possible_tag_prefix_is_held_back():
    parser = ThinkParser()
    assert parser.feed("abc<") == [Segment("answer", "abc")]
    assert parser.feed("x") == [Segment("answer", "<x")]
    parser = ThinkParser()
    assert parser.feed("abc<x") == [Segment("answer", "abc<x")]
    parser = ThinkParser()
    assert parser.feed("a</") == [Segment("answer", "a</")]  # outside a thought only <think> counts
    parser = ThinkParser(prefilled=True)
    assert parser.feed("a<thi") == [Segment("thinking", "a<thi")]  # inside, only </think> counts
    assert parser.feed("b</") == [Segment("thinking", "b")]


def test_tag_split_at_every_character_is_recognized():
    text = "x<think>y</think>z"
    segments, _ = run(list(text))
    assert segments == [Segment("answer", "x"), Segment("thinking", "y"), Segment("answer", "z")]


def test_one_feed_merges_same_kind_and_drops_empty_segments():
    parser = ThinkParser()
    assert parser.feed("a<think></think>b") == [Segment("answer", "ab")]
    assert parser.feed("") == []


def test_finish_twice_and_feed_after_finish_name_the_states():
    parser = ThinkParser()
    parser.finish()
    with pytest.raises(ThinkStateError, match="expected state answer or thinking, got finished"):
        parser.finish()
    with pytest.raises(ThinkStateError, match="feed"):
        parser.feed("more")


def test_ended_in_thinking_before_finish_is_an_error():
    with pytest.raises(ThinkStateError, match="expected state finished, got answer"):
        _ = ThinkParser().ended_in_thinking


def test_split_thinking():
    assert split_thinking("<think>a</think>b<think>c</think>d") == ("ac", "bd")
    assert split_thinking("reason</think>answer", prefilled=True) == ("reason", "answer")
    assert split_thinking("plain") == ("", "plain")


def test_partial_tag_length():
    assert partial_tag_length("abc<th", OPEN_TAG) == 3
    assert partial_tag_length("abc", OPEN_TAG) == 0
    assert partial_tag_length("</think", CLOSE_TAG) == 7
    assert partial_tag_length("<", CLOSE_TAG) == 1


CORPUS = [
    ("<think>\nFirst, 2+2=4.\n</think>\n\n**4**", False),
    ("Okay, so the user asks 2+2.\n</think>\n\nIt is 4.", True),
    ("<think>unterminated, the model ran out of tokens", False),
    ("still thinking when stopped", True),
    ("No reasoning at all.", False),
    ("preamble <think>a</think> mid <think>b</think> end", False),
    ("stray </think> close, then <think>real</think>", False),
    ("<think>nested <think> open</think> after </think> stray", False),
    ("<<think>>< /think></think></<think><thi", False),
    ("ends with a partial tag <thi", False),
    ("prefilled with a partial close </thin", True),
    ("<think>Unicode: 数学 ünïcödé 🤔 <｜User｜></think>答案是 4 ✅", False),
    ("🤔</think>\n\n<think>again</think>😀<", True),
    ("<think></think><think></think>", False),
    ("", False),
    ("", True),
]


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CORPUS), data=st.data())
def test_any_chunking_of_the_corpus_matches_one_whole_feed(case, data):
    text, prefilled = case
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 2)))
    chunks = cut(text, cuts)
    assert run(chunks, prefilled)[0] == run([text], prefilled)[0]


PIECES = ["<think>", "</think>", "<", "</", "<th", "</thi", "think>", ">", "a", "é", " ", "\n", "🤔"]


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=30), prefilled=st.booleans(), data=st.data())
def test_any_chunking_of_generated_text_matches_one_whole_feed(pieces, prefilled, data):
    text = "".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 2)))
    chunks = cut(text, cuts)
    whole, parser = run([text], prefilled)
    assert run(chunks, prefilled)[0] == whole
    assert run(list(text), prefilled)[0] == whole
    # Nothing but the tags that switched state is dropped.
    tags_seen = parser.blocks_opened - prefilled
    routed = sum(len(segment.text) for segment in whole)
    assert routed == len(text) - tags_seen * len(OPEN_TAG) - parser.blocks_closed * len(CLOSE_TAG)
