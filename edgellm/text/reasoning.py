"""Split a reasoning model's streamed text into reasoning and answer. Pure; no I/O.

R1 distills write one of three forms:
  `<think>reasoning</think>answer`  - the model opens the tag itself;
  `reasoning</think>answer`         - the chat template already opened it (newer templates end
                                       the prompt with `<think>\\n`);
  `answer`                          - no tags at all (the distills sometimes skip thinking).
Tags may arrive split across tokens ('</', 'think', '>'), so a possible tag prefix is held back
until the next chunk decides it, and never more: a reply whose template did not open <think> and
that does not begin with it is answer text from its first characters.
"""

from __future__ import annotations

from enum import Enum

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

REASONING = "reasoning"
ANSWER = "answer"


class _State(Enum):
    UNDECIDED = 0  # reasoning model, no tag seen yet: the text's kind is not known
    REASONING = 1
    ANSWER = 2


def held_prefix_length(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (it may complete in the next chunk)."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class ReasoningSplitter:
    """Feed decoded text chunks; get back (kind, text) pieces in order.

    `opened_by_template`: the prompt ended with `<think>`, so output starts as reasoning.
    `thinks`: the model is a reasoning model; when False everything is answer, released at once.
    For a reasoning model whose template did not open the tag, text before any tag is held until
    `<think>` (it was reasoning), `</think>` (it was reasoning) or the end (it was the answer),
    which is what makes all three forms exact.
    """

    def __init__(self, *, opened_by_template: bool = False, thinks: bool = True) -> None:
        # The template opened <think>; a model that writes it again anyway has it dropped, as
        # llama-server's deepseek format does, so the tag does not show up inside the reasoning.
        self._may_repeat_open = opened_by_template
        if opened_by_template:
            self._state = _State.REASONING
        elif thinks:
            self._state = _State.UNDECIDED
        else:
            self._state = _State.ANSWER
        self._buffer = ""
        self._at_answer_start = False

    @property
    def in_reasoning(self) -> bool:
        return self._state is _State.REASONING

    @property
    def in_answer(self) -> bool:
        """The reasoning is over (or there was none): what comes next is the answer."""
        return self._state is _State.ANSWER

    def close_reasoning(self) -> tuple[bool, list[tuple[str, str]]]:
        """End the reasoning now (the engine writes the closing tag itself): returns whether the
        reply was reasoning, and the text held until now. What follows is the answer."""
        if self._state is _State.ANSWER:
            return False, []
        rest, self._buffer = self._buffer, ""
        was_reasoning = self._state is _State.REASONING
        if self._state is _State.UNDECIDED:
            stripped = rest.lstrip()
            was_reasoning = stripped.startswith(OPEN_TAG)
            rest = stripped[len(OPEN_TAG):] if was_reasoning else rest
        self._state = _State.ANSWER
        self._at_answer_start = True
        if not rest:
            return was_reasoning, []
        return was_reasoning, [(REASONING if was_reasoning else ANSWER, rest)]

    def feed(self, text: str) -> list[tuple[str, str]]:
        self._buffer += text
        out: list[tuple[str, str]] = []
        while True:
            if self._state is _State.ANSWER:
                # Answer text after </think> starts with the model's blank line; drop it.
                if self._at_answer_start:
                    stripped = self._buffer.lstrip()
                    if not stripped:
                        self._buffer = ""
                        return out
                    self._buffer = stripped
                    self._at_answer_start = False
                if self._buffer:
                    out.append((ANSWER, self._buffer))
                    self._buffer = ""
                return out
            if self._state is _State.UNDECIDED:
                stripped = self._buffer.lstrip()
                if stripped.startswith(OPEN_TAG):
                    self._buffer = stripped[len(OPEN_TAG):]
                    self._state = _State.REASONING
                    continue
                if len(stripped) < len(OPEN_TAG) and OPEN_TAG.startswith(stripped):
                    return out  # could still become <think>
                # It does not begin with <think>: it is the answer, and streams from here (as
                # llama-server's deepseek format decides). Holding it for a </think> that may come
                # much later stalled the stream for most of the reply.
                self._state = _State.ANSWER
                self._at_answer_start = True
                continue
            # REASONING
            if self._may_repeat_open:
                stripped = self._buffer.lstrip()
                if len(stripped) < len(OPEN_TAG) and OPEN_TAG.startswith(stripped):
                    return out  # could still be a repeated <think>
                self._may_repeat_open = False
                if stripped.startswith(OPEN_TAG):
                    self._buffer = stripped[len(OPEN_TAG):]
            index = self._buffer.find(CLOSE_TAG)
            if index >= 0:
                if self._buffer[:index]:
                    out.append((REASONING, self._buffer[:index]))
                self._buffer = self._buffer[index + len(CLOSE_TAG):]
                self._state = _State.ANSWER
                self._at_answer_start = True
                continue
            keep = held_prefix_length(self._buffer, CLOSE_TAG)
            release = self._buffer[: len(self._buffer) - keep]
            if release:
                out.append((REASONING, release))
            self._buffer = self._buffer[len(self._buffer) - keep:]
            return out

    def finish(self) -> list[tuple[str, str]]:
        """Release what is held at the end of generation."""
        rest, self._buffer = self._buffer, ""
        if not rest:
            return []
        if self._state is _State.REASONING:
            return [(REASONING, rest)]
        if self._state is _State.UNDECIDED:
            return [(ANSWER, rest)] if rest.strip() else []
        rest = rest.lstrip() if self._at_answer_start else rest
        return [(ANSWER, rest)] if rest else []


def split_reasoning(text: str, *, opened_by_template: bool = False, thinks: bool = True) -> tuple[str, str]:
    """Whole-text form: (reasoning, answer)."""
    splitter = ReasoningSplitter(opened_by_template=opened_by_template, thinks=thinks)
    pieces = splitter.feed(text) + splitter.finish()
    reasoning = "".join(t for kind, t in pieces if kind == REASONING)
    answer = "".join(t for kind, t in pieces if kind == ANSWER)
    return reasoning, answer
