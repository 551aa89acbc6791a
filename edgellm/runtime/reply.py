"""One reply's text, token by token: the state machine the scheduler drives. Pure: no llama.cpp.

The scheduler batches; this decides what a reply's tokens mean. It owns the reasoning split, the
thinking budget and its bridge line, tool calls (the parser, the call grammar waiting for the
call), the grammar an answer waits for while the reply reasons, stop sequences and the decoding
of token bytes. Hand it each sampled token with its bytes (`feed`, or `end_of_generation` for an
end-of-generation token); it returns actions for the scheduler to carry out, in this order:

  Emit(event)          send the request a TextEvent or a call event
  TakeBack(n)          the newest n generated tokens leave the reply (the newest was sampled only)
  UseGrammar(g)        a new sampler chain with grammar g
  Write(tokens, text)  evaluate these sampled tokens, then the engine's text, without sampling
  Next(token)          decode the sampled token and sample the next
  End(reason)          the reply is over ("stop", "length")

Write, Next or End comes last. The scheduler does every llama.cpp call an action asks for, so this
runs in unit tests without a model (tests/test_reply.py).
"""

from __future__ import annotations

import codecs
from collections import deque
from dataclasses import dataclass
from typing import Any

from edgellm.runtime.types import Prompt, SamplingParams, TextEvent
from edgellm.text.grammar import GrammarTextDecoder
from edgellm.text.reasoning import ANSWER, CLOSE_TAG, REASONING, ReasoningSplitter
from edgellm.text.stops import StopFilter
from edgellm.text.toolcalls.parser import ToolCallParser

# Generated tokens remembered with their text, to take back the ones that wrote a tool call's
# opener (the longest opener is a few dozen tokens of text in a vocabulary without it).
RECENT_TOKENS = 64
# With a required call, reasoning ends this many tokens before max_tokens (or the slot's end), so the call fits.
CALL_ROOM_TOKENS = 256


@dataclass(frozen=True)
class Emit:
    event: Any  # a TextEvent or a tool call event


@dataclass(frozen=True)
class TakeBack:
    tokens: int  # generated tokens, newest last; all but the newest (sampled, not decoded) are in the cache


@dataclass(frozen=True)
class UseGrammar:
    grammar: str  # a new sampler chain under it


@dataclass(frozen=True)
class Write:
    tokens: tuple[int, ...]  # sampled tokens that stay (the newest, not decoded yet)
    text: str  # the engine's text after them


@dataclass(frozen=True)
class Next:
    token: int


@dataclass(frozen=True)
class End:
    reason: str


Action = Emit | TakeBack | UseGrammar | Write | Next | End


class ReplyState:
    """One reply of one request. `grammar` is the request's (None: free text); `tool_grammar` the
    call grammar when tools are active. After construction, `opening` is text the engine writes
    after the prompt (a required call's start) and `grammar` the grammar the reply starts under."""

    def __init__(self, prompt: Prompt, params: SamplingParams, *, thinks: bool,
                 grammar: str | None, tool_grammar: str | None) -> None:
        self.params = params
        split = params.split_reasoning
        self.splitter = ReasoningSplitter(opened_by_template=prompt.opens_think and split,
                                          thinks=thinks and split and not prompt.closes_think)
        self.stop = StopFilter(params.stop)
        self.recent: deque[tuple[int, str]] = deque(maxlen=RECENT_TOKENS)  # generated (token, text), newest last
        self.reasoning_tokens = 0
        use = params.tool_use
        self.calls = ToolCallParser(use.format, must_call=use.must_call) if use is not None and use.active else None
        self.tool_grammar = tool_grammar if self.calls is not None else None  # the call grammar, until the call starts
        self.opening = ""
        if self.calls is not None and use is not None and use.must_call and self.splitter.in_answer:
            # No reasoning to wait for: the call starts with the reply, constrained from its first token.
            self.opening = use.format.forced_start
            grammar, self.tool_grammar = self.tool_grammar, None
            self.calls.start_calls()
        # Under a grammar the end of generation ends the reply even when told to ignore it.
        self.stops_at_eog = not params.ignore_eos or grammar is not None
        reasons = not self.splitter.in_answer
        self.think_budget = params.think_budget if reasons else None  # reasoning tokens allowed
        self.answer_grammar: str | None = None
        if grammar is not None and params.think_budget is not None and reasons and self.tool_grammar is None:
            # With a thinking budget the reply reasons first; the grammar applies to the answer.
            self.answer_grammar, grammar = grammar, None
        self.grammar = grammar
        self.decoder: Any = GrammarTextDecoder() if grammar is not None else codecs.getincrementaldecoder("utf-8")(errors="replace")

    # -- the scheduler's calls --

    def feed(self, token: int, piece: bytes, *, generated: int, max_tokens: int, context_left: int) -> list[Action]:
        """A sampled token (not an end of generation) and its bytes. `generated`: the reply's
        sampled tokens with this one; `max_tokens`: its limit; `context_left`: the slot's free cells."""
        out: list[Action] = []
        text = self.decoder.decode(piece)
        if self.calls is not None or self.answer_grammar is not None:
            self.recent.append((token, text))
        if text:
            self._emit(out, self.splitter.feed(text))
            if self.stop.stopped:  # a stop sequence: the reply ends here, without its text
                return [*out, End("stop")]
        if self.splitter.in_reasoning:
            self.reasoning_tokens += 1
            if self.think_budget is not None and self.reasoning_tokens >= self.think_budget:
                return self._end_reasoning(out, token, bridge=True)  # the budget is spent: answer now
        reason_until = max_tokens - min(CALL_ROOM_TOKENS, max_tokens // 2)
        if self._call_still_owed() and (generated >= reason_until or context_left <= CALL_ROOM_TOKENS + 2):
            return self._end_reasoning(out, token)  # keep room for the required call
        if generated >= max_tokens or context_left <= 1:
            return [*out, End("length")]
        if self.calls is not None and self.tool_grammar is not None and self._call_starts():
            return self._start_call(out, generated)
        if self.answer_grammar is not None and self.splitter.in_answer:
            return self._start_call(out, generated, answer_grammar=True)  # the model closed its reasoning: the grammar takes the answer
        return [*out, Next(token)]

    def end_of_generation(self) -> list[Action]:
        if self._call_still_owed():
            # The model would end while still reasoning, but a call is required: the reasoning
            # ends here instead, and the call follows.
            return self._end_reasoning([], None)
        return [End("stop")]

    def finish(self) -> list[Any]:
        """The events the reply still holds at its end: what the decoder and the splitter hold, then
        what the stop filter held as a possible stop sequence (it was not one, unless this completed it)."""
        if self.stop.stopped:
            return []
        out: list[Action] = []
        self._emit(out, self.splitter.feed(self.decoder.decode(b"", final=True)) + self.splitter.finish())
        if self.calls is not None:
            self._emit_answer(out, self.calls.finish())
        rest = self.stop.flush()
        if rest and not self.stop.stopped:
            out.append(Emit(TextEvent(ANSWER, rest)))
        return [action.event for action in out if isinstance(action, Emit)]

    def finish_reason(self, reason: str) -> str:
        """The scheduler's reason, unless a stop sequence ended the reply or its calls are complete."""
        if self.stop.stopped:
            return "stop"
        if self.calls is not None and self.calls.all_complete:
            return "tool_calls"
        return reason

    # -- reasoning budget, tool calls, answer grammars: the engine writing into a reply --

    def _call_starts(self) -> bool:
        """The model wrote an opener (auto), or its reasoning is over and a call is required."""
        assert self.calls is not None
        if self.calls.triggered is not None:
            return True
        use = self.params.tool_use
        return use is not None and use.must_call and self.splitter.in_answer

    def _call_owed(self) -> bool:
        """A call is required and has not started (its grammar is still waiting)."""
        if self.tool_grammar is None:  # the common case, first: no tools, or the call is under way
            return False
        use = self.params.tool_use
        return use is not None and use.must_call

    def _call_still_owed(self) -> bool:
        """A call is owed and the model is still reasoning."""
        return self._call_owed() and not self.splitter.in_answer

    def _end_reasoning(self, out: list[Action], newest: int | None, *, bridge: bool = False) -> list[Action]:
        """Close the reasoning now: write the closing tag (after the bridge line when the budget
        ran out), then what the answer starts with (a required call's opening), and switch on the
        grammar the answer has. `newest`: the token just sampled (None: it was an end of
        generation, dropped); every earlier token stays."""
        reasoning, pieces = self.splitter.close_reasoning()
        self._emit(out, pieces)
        text = ""
        if reasoning:
            message = self.params.think_message if bridge else ""
            if message:
                out.append(Emit(TextEvent(REASONING, message)))
            text = message + "\n" + CLOSE_TAG + "\n\n"
        grammar: str | None = None
        if self._call_owed():
            assert self.params.tool_use is not None and self.calls is not None
            text += self.params.tool_use.format.forced_start
            grammar, self.tool_grammar = self.tool_grammar, None
            self.calls.start_calls()
        elif self.answer_grammar is not None:
            grammar, self.answer_grammar = self.answer_grammar, None
        return self._write(out, [newest] if newest is not None else [], text, grammar)

    def _start_call(self, out: list[Action], generated: int, *, answer_grammar: bool = False) -> list[Action]:
        """Take back the tokens from the opener on (or everything after </think>), write the format's
        own opening instead and switch the call grammar on: the model continues at the first name.
        `answer_grammar`: no call, the answer began and its grammar starts after </think>.

        The opener may end inside a token, with text after it that the grammar would not allow;
        writing the opening ourselves makes the grammar start at a known place, token-aligned."""
        calls = self.calls
        recent = list(self.recent)
        raw = "".join(text for _, text in recent)
        if calls is not None and calls.triggered is not None and not answer_grammar:
            cut = raw.rfind(calls.triggered)
            lead = ""
            if cut < 0:  # not among the remembered tokens (cannot happen: openers are short): keep them all
                cut = len(raw)
        else:
            end_think = raw.rfind(CLOSE_TAG)
            if end_think >= 0:
                cut, lead = end_think + len(CLOSE_TAG), "\n\n"
            else:  # no reasoning in this reply: the call is the whole of it
                cut, lead = (0 if len(recent) == generated else len(raw)), ""
        cut = max(cut, 0)
        # Tokens ending at or before the cut stay; the first one past it is written again up to the cut.
        kept, start, pre = len(recent), 0, ""
        for index, (_, text) in enumerate(recent):
            if start + len(text) > cut:
                kept, pre = index, text[: cut - start]
                break
            start += len(text)
        dropped = len(recent) - kept
        if dropped:
            out.append(TakeBack(dropped))
        if answer_grammar:
            grammar, self.answer_grammar = self.answer_grammar, None
            text = pre + lead
        else:
            assert calls is not None and self.params.tool_use is not None
            grammar, self.tool_grammar = self.tool_grammar, None
            text = pre + lead + self.params.tool_use.format.forced_start
            calls.start_calls()
        newest = [recent[-1][0]] if dropped == 0 and recent else []
        return self._write(out, newest, text, grammar)

    def _write(self, out: list[Action], tokens: list[int], text: str, grammar: str | None) -> list[Action]:
        """Continue with `tokens` and the engine's `text`, evaluated, not sampled; a grammar that is
        not None takes over from here (None: the sampler chain stays)."""
        self.recent.clear()
        if grammar is not None:
            out.append(UseGrammar(grammar))
            self.decoder = GrammarTextDecoder()  # text under a grammar, read as the grammar reads it
        out.append(Write(tuple(tokens), text))
        return out

    def _emit(self, out: list[Action], pieces: list[tuple[str, str]]) -> None:
        """Split pieces as events; answer text goes through the stop filter, nothing after a stop.
        While the answer grammar waits, answer text is not sent: it came with the token that ended
        the reasoning (`</think>` and more in one piece), sampled without the grammar, and `feed`
        takes it back with that token (`_start_call`); the call parser drops text before a required
        call the same way."""
        for kind, chunk in pieces:
            if self.stop.stopped:
                return
            if kind == ANSWER and self.answer_grammar is not None:
                continue
            if kind == ANSWER and self.calls is not None:
                self._emit_answer(out, self.calls.feed(chunk))
                continue
            if kind == ANSWER:
                chunk = self.stop.feed(chunk)
            if chunk:
                out.append(Emit(TextEvent(kind, chunk)))

    def _emit_answer(self, out: list[Action], events: list[Any]) -> None:
        """Answer text through the tool call parser: content through the stop filter, calls as they are."""
        for event in events:
            if self.stop.stopped:
                return
            if isinstance(event, str):
                event = self.stop.feed(event)
                if event:
                    out.append(Emit(TextEvent(ANSWER, event)))
            else:
                out.append(Emit(event))
