"""The reasoning split, for all three forms R1 distills write, with tags split anywhere."""

from __future__ import annotations

import pytest

from edgellm.text.reasoning import ANSWER, REASONING, ReasoningSplitter, split_reasoning

FORMS = [
    # (text, opened_by_template, reasoning, answer)
    ("<think>\nLet me add.\n</think>\n\nIt is 4.", False, "\nLet me add.\n", "It is 4."),
    ("Let me add.\n</think>\n\nIt is 4.", True, "Let me add.\n", "It is 4."),
    # Not opened by the template and not beginning with <think>: answer from the first word, so it
    # streams at once (0.1 held it all, waiting for a </think> that might come at the very end).
    ("Let me add.\n</think>\n\nIt is 4.", False, "", "Let me add.\n</think>\n\nIt is 4."),
    ("It is 4.", False, "", "It is 4."),
    ("  <think>a < b</think>x</thin", False, "a < b", "x</thin"),
    ("<think>unfinished thought", False, "unfinished thought", ""),
    # The template opened <think> and the model wrote it again: the repeat is not reasoning text.
    ("<think>hmm</think>Streaming works.", True, "hmm", "Streaming works."),
    ("\n<think>\nhmm</think>ok", True, "\nhmm", "ok"),
    ("<thin", True, "<thin", ""),
    ("<b>bold</b> thought</think>ok", True, "<b>bold</b> thought", "ok"),
]


def _feed_in_pieces(text: str, cuts: list[int], **kwargs: bool) -> tuple[str, str]:
    splitter = ReasoningSplitter(**kwargs)
    pieces = []
    start = 0
    for cut in [*cuts, len(text)]:
        pieces += splitter.feed(text[start:cut])
        start = cut
    pieces += splitter.finish()
    return "".join(t for k, t in pieces if k == REASONING), "".join(t for k, t in pieces if k == ANSWER)


@pytest.mark.parametrize(("text", "opened", "reasoning", "answer"), FORMS)
def test_whole_text(text: str, opened: bool, reasoning: str, answer: str) -> None:
    assert split_reasoning(text, opened_by_template=opened) == (reasoning, answer)


@pytest.mark.parametrize(("text", "opened", "reasoning", "answer"), FORMS)
def test_every_single_cut_point(text: str, opened: bool, reasoning: str, answer: str) -> None:
    for cut in range(1, len(text)):
        assert _feed_in_pieces(text, [cut], opened_by_template=opened) == (reasoning, answer), cut


@pytest.mark.parametrize(("text", "opened", "reasoning", "answer"), FORMS)
def test_one_character_at_a_time(text: str, opened: bool, reasoning: str, answer: str) -> None:
    assert _feed_in_pieces(text, list(range(1, len(text))), opened_by_template=opened) == (reasoning, answer)


def test_reasoning_streams_before_the_closing_tag_arrives() -> None:
    splitter = ReasoningSplitter(opened_by_template=True)
    assert splitter.feed("First I ") == [(REASONING, "First I ")]
    assert splitter.feed("think</th") == [(REASONING, "think")]  # '</th' held back: may be a tag
    assert splitter.feed("ink>\n\nDone") == [(ANSWER, "Done")]


def test_models_that_do_not_think_stream_everything_as_answer() -> None:
    splitter = ReasoningSplitter(thinks=False)
    assert splitter.feed("<think>") == [(ANSWER, "<think>")]
    assert splitter.feed("x") == [(ANSWER, "x")]


def test_a_reply_that_skips_thinking_streams_from_its_first_word() -> None:
    # Issue 18: with the template form that does not open <think>, `run --think show` printed its
    # first byte at 97% of a 300-token reply.
    splitter = ReasoningSplitter(opened_by_template=False)
    assert splitter.feed("<th") == []  # may still become <think>
    assert splitter.feed("e") == [(ANSWER, "<the")]
    assert splitter.feed(" answer") == [(ANSWER, " answer")]
