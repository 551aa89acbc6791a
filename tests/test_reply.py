"""One reply's state machine (edgellm.runtime.reply) without a model or a scheduler: tokens go in
as text, actions come out. Tables of the reasoning split, the thinking budget's bridge, required
tool calls, stop sequences cut across tokens and the answer grammar that waits for the reasoning.
The same paths through the real Scheduler are in test_scheduler.py, test_toolcalls.py and
test_thinking.py."""

from __future__ import annotations

from typing import Any

import pytest

from edgellm.runtime.reply import CALL_ROOM_TOKENS, Action, Emit, End, Next, ReplyState, TakeBack, UseGrammar, Write
from edgellm.runtime.types import DEFAULT_THINK_MESSAGE, Prompt, SamplingParams, TextEvent
from edgellm.text.reasoning import ANSWER, REASONING
from edgellm.text.toolcalls import ToolUse, parse_tool_choice, parse_tools
from edgellm.text.toolcalls.formats import GENERIC
from edgellm.text.toolcalls.parser import ToolCallEnd, ToolCallStart

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL_GRAMMAR = "call grammar"
BODY = ['get', '_weather", ', '"arguments": ', '{"city": "Oslo"}', '}\n</tool_call>']
FORCED = GENERIC.forced_start


def tool_use(choice: str) -> ToolUse:
    tools = parse_tools([WEATHER])
    return ToolUse(GENERIC, tools, parse_tool_choice(choice, tools))


class Driver:
    """The scheduler's side as the reply sees it: token ids, the counts it passes (sampled tokens,
    cells used: one a token, one a character of the engine's text, no prompt), the events it sends on."""

    def __init__(self, *, opens_think: bool = False, thinks: bool = True, grammar: str | None = None,
                 max_tokens: int = 1000, context: int = 4096, **params: Any) -> None:
        use = params.pop("tool_use", None)
        self.params = SamplingParams(grammar=grammar, tool_use=use, **params)
        self.reply = ReplyState(Prompt([1], opens_think), self.params, thinks=thinks, grammar=grammar,
                                tool_grammar=CALL_GRAMMAR if use is not None and use.active else None)
        self.max_tokens, self.context = max_tokens, context
        self.generated = self.used = 0
        self.events: list[Any] = []

    def feed(self, pieces: list[str]) -> list[Action]:
        """Feed pieces as tokens until the reply writes or ends; its actions then, Emits left out
        ([] when every piece went on)."""
        for piece in pieces:
            self.generated += 1
            actions = self.reply.feed(1000 + self.generated, piece.encode(), generated=self.generated,
                                      max_tokens=self.max_tokens, context_left=self.context - self.used)
            done = self.carry_out(actions)
            assert done, "every feed ends in Next, Write or End"
            if not isinstance(done[-1], Next):
                return done
            assert done == [Next(1000 + self.generated)]
        return []

    def end_of_generation(self) -> list[Action]:
        return self.carry_out(self.reply.end_of_generation())

    def carry_out(self, actions: list[Action]) -> list[Action]:
        assert not any(isinstance(a, Next | Write | End) for a in actions[:-1]), actions  # they come last
        self.events += [a.event for a in actions if isinstance(a, Emit)]
        for action in actions:
            if isinstance(action, Next):
                self.used += 1
            elif isinstance(action, TakeBack):  # the newest was not decoded
                self.generated, self.used = self.generated - action.tokens, self.used - (action.tokens - 1)
            elif isinstance(action, Write):
                self.used += len(action.tokens) + len(action.text)
        return [a for a in actions if not isinstance(a, Emit)]

    def finish(self, reason: str) -> str:
        self.events += self.reply.finish()
        return self.reply.finish_reason(reason)

    def text(self, kind: str) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextEvent) and e.kind == kind)


# -- the reasoning split --

@pytest.mark.parametrize(("opens_think", "thinks", "pieces", "reasoning", "answer", "reasoning_tokens"), [
    (True, True, ["Let", " me", " think", "</th", "ink>", "\n\nHi", "."], "Let me think", "Hi.", 4),
    (False, True, ["<th", "ink>", "hm", "</think>", "ok"], "hm", "ok", 2),
    (False, True, ["Paris", " is", " it."], "", "Paris is it.", 0),  # a reply that skips thinking
    (False, False, ["<think>", "x", "</think>", "y"], "", "<think>x</think>y", 0),  # not a reasoning model
    (True, True, ["still", " thinking"], "still thinking", "", 2),  # ends inside the reasoning
])
def test_the_reasoning_split(opens_think: bool, thinks: bool, pieces: list[str], reasoning: str, answer: str,
                             reasoning_tokens: int) -> None:
    reply = Driver(opens_think=opens_think, thinks=thinks)
    assert reply.feed(pieces) == []
    assert reply.end_of_generation() == [End("stop")]
    assert reply.finish("stop") == "stop"
    assert (reply.text(REASONING), reply.text(ANSWER)) == (reasoning, answer)
    assert reply.reply.reasoning_tokens == reasoning_tokens  # a token counts while the reply is still reasoning after it


def test_no_split_keeps_the_tags_in_the_answer() -> None:
    reply = Driver(opens_think=True, split_reasoning=False)
    reply.feed(["a", "</think>", "b"])
    reply.finish("stop")
    assert (reply.text(REASONING), reply.text(ANSWER)) == ("", "a</think>b")


# -- the thinking budget --

@pytest.mark.parametrize(("budget", "message", "written"), [
    (3, DEFAULT_THINK_MESSAGE, DEFAULT_THINK_MESSAGE + "\n</think>\n\n"),
    (2, "Enough.", "Enough.\n</think>\n\n"),
    (1, "", "\n</think>\n\n"),  # no bridge line: the closing tag alone
])
def test_the_budget_closes_the_reasoning_after_a_bridge_line(budget: int, message: str, written: str) -> None:
    reply = Driver(opens_think=True, think_budget=budget, think_message=message)
    done = reply.feed(["a", "b", "c", "d", "e"])
    # The budget's last token stays (it was sampled, not yet decoded), then the engine's text.
    assert done == [Write((1000 + budget,), written)]
    assert reply.reply.reasoning_tokens == budget
    assert reply.text(REASONING) == "abcde"[:budget] + message
    assert reply.feed(["The", " answer"]) == []
    reply.finish("stop")
    assert reply.text(ANSWER) == "The answer"


def test_no_budget_when_the_reply_does_not_reason() -> None:
    reply = Driver(thinks=False, think_budget=1)
    assert reply.feed(["a", "b", "c"]) == [] and reply.reply.reasoning_tokens == 0


# -- required tool calls --

def test_a_required_call_without_reasoning_starts_with_the_reply() -> None:
    reply = Driver(thinks=False, tool_use=tool_use("required"))
    assert (reply.reply.opening, reply.reply.grammar) == (FORCED, CALL_GRAMMAR)
    assert reply.feed(BODY) == []
    assert reply.end_of_generation() == [End("stop")]
    assert reply.finish("stop") == "tool_calls"
    starts = [e for e in reply.events if isinstance(e, ToolCallStart)]
    assert [s.name for s in starts] == ["get_weather"] and isinstance(reply.events[-1], ToolCallEnd)
    assert reply.text(ANSWER) == ""


@pytest.mark.parametrize(("pieces", "end", "done"), [
    # The model closes its reasoning: the engine writes the blank line and the opening after </think>.
    (["Weather", " means", " a call.", "</think>"], False,
     [UseGrammar(CALL_GRAMMAR), Write((1004,), "\n\n" + FORCED)]),
    # </think> inside a token with text after it: that token is taken back and written again up to the tag.
    (["Weather", ".</think>\n\nSure"], False,
     [TakeBack(1), UseGrammar(CALL_GRAMMAR), Write((), ".</think>\n\n" + FORCED)]),
    # The model would end while reasoning: the engine closes it, and the call follows.
    (["Hmm", ", the", " weather"], True,
     [UseGrammar(CALL_GRAMMAR), Write((), "\n</think>\n\n" + FORCED)]),
])
def test_a_required_call_follows_the_reasoning(pieces: list[str], end: bool, done: list[Action]) -> None:
    reply = Driver(opens_think=True, tool_use=tool_use("required"))
    assert (reply.reply.opening, reply.reply.grammar) == ("", None)  # the call grammar waits for the reasoning
    got = reply.feed(pieces)
    if end:
        assert got == []
        got = reply.end_of_generation()
    assert got == done
    assert reply.feed(BODY) == []
    assert reply.finish("stop") == "tool_calls"
    assert reply.text(ANSWER) == "" and [e.name for e in reply.events if isinstance(e, ToolCallStart)] == ["get_weather"]


@pytest.mark.parametrize(("max_tokens", "context", "closed_at"), [
    (300, 4096, 150),  # max_tokens less the room kept for the call: half of a small max_tokens
    (2000, 4096, 2000 - CALL_ROOM_TOKENS),
    (4000, 600, 600 - CALL_ROOM_TOKENS - 1),  # the slot's end comes first: the call's room and 2 cells stay free
])
def test_reasoning_that_runs_long_is_closed_in_time_for_the_call(max_tokens: int, context: int, closed_at: int) -> None:
    reply = Driver(opens_think=True, tool_use=tool_use("required"), max_tokens=max_tokens, context=context)
    done = reply.feed(["x"] * max_tokens)
    assert done == [UseGrammar(CALL_GRAMMAR), Write((1000 + closed_at,), "\n</think>\n\n" + FORCED)]
    assert reply.generated == closed_at


def test_an_opener_cut_inside_a_token_is_taken_back_and_written_whole() -> None:
    reply = Driver(thinks=False, tool_use=tool_use("auto"))
    done = reply.feed(["Let", " me", " check", ". <tool", "_ca", 'll>\n{"na'])
    assert done == [TakeBack(3), UseGrammar(CALL_GRAMMAR), Write((), ". " + FORCED)]
    assert reply.generated == 3 and reply.text(ANSWER) == "Let me check. "


def test_an_auto_call_that_never_comes_is_content() -> None:
    reply = Driver(thinks=False, tool_use=tool_use("auto"))
    assert reply.feed(["It is", " <tool>", " not a call"]) == []
    assert reply.finish("stop") == "stop" and reply.text(ANSWER) == "It is <tool> not a call"


# -- stop sequences --

@pytest.mark.parametrize(("pieces", "stops", "answer", "stopped_at"), [
    (["abc<", "/en", "d>never", "more"], ["</end>"], "abc", 3),
    (["a", "b", "\n", "\n", "c"], ["\n\n"], "ab", 4),
    (["one ", "END", "two"], ["STOP", "END"], "one ", 2),
    (["abc</en"], ["</end>"], "abc</en", None),  # held as a possible stop, released at the end
    (["x</e", "nd"], ["</end>"], "x</end", None),
])
def test_stops_across_token_boundaries(pieces: list[str], stops: list[str], answer: str, stopped_at: int | None) -> None:
    reply = Driver(thinks=False, stop=stops)
    done = reply.feed(pieces)
    if stopped_at is None:
        assert done == [] and reply.end_of_generation() == [End("stop")]
    else:
        assert done == [End("stop")] and reply.generated == stopped_at
    assert reply.finish("length") == ("stop" if stopped_at else "length")
    assert reply.text(ANSWER) == answer


def test_stops_apply_to_the_answer_not_the_reasoning() -> None:
    reply = Driver(opens_think=True, stop=["\n\n"])
    assert reply.feed(["one", "\n\n", "two", "</think>", "\n\nanswer", "\n", "\ntail"]) == [End("stop")]
    assert (reply.text(REASONING), reply.text(ANSWER)) == ("one\n\ntwo", "answer")


def test_length_is_the_schedulers_limit_unless_a_stop_came_first() -> None:
    reply = Driver(thinks=False, max_tokens=3, stop=["zz"])
    assert reply.feed(["a", "b", "z", "z"]) == [End("length")]
    assert reply.finish("length") == "length" and reply.text(ANSWER) == "abz"


# -- the answer grammar --

@pytest.mark.parametrize(("pieces", "done"), [
    (["hm", "</think>"], [UseGrammar("G"), Write((1002,), "\n\n")]),
    (["hm", "</th", "ink>"], [UseGrammar("G"), Write((1003,), "\n\n")]),
    (["hm", "</think>\n\nThe"], [TakeBack(1), UseGrammar("G"), Write((), "</think>\n\n")]),
])
def test_with_a_budget_the_grammar_waits_for_the_answer(pieces: list[str], done: list[Action]) -> None:
    reply = Driver(opens_think=True, grammar="G", think_budget=100)
    assert (reply.reply.grammar, reply.reply.answer_grammar) == (None, "G")
    assert reply.feed(pieces) == done
    assert reply.reply.answer_grammar is None


@pytest.mark.parametrize(("opens_think", "pieces", "done", "reasoning"), [
    # </think> and the answer's first word in one token: the token is taken back, the word with it.
    (True, ["hm", "</think>\n\nThe"], [TakeBack(1), UseGrammar("G"), Write((), "</think>\n\n")], "hm"),
    (True, ["hm", " so.</think>The"], [TakeBack(1), UseGrammar("G"), Write((), " so.</think>\n\n")], "hm so."),
    (True, ["hm", "</th", "ink>\n\nThe"], [TakeBack(1), UseGrammar("G"), Write((), "ink>\n\n")], "hm"),
    (False, ["<think>", "hm", "</think>\nThe"], [TakeBack(1), UseGrammar("G"), Write((), "</think>\n\n")], "hm"),
])
def test_answer_text_in_the_token_that_closes_the_reasoning_is_not_sent(
        opens_think: bool, pieces: list[str], done: list[Action], reasoning: str) -> None:
    """The grammar takes the answer from </think> on: text after the tag in the same token was
    sampled without it and is taken back, so the client must not see it (it saw 'The{"city": ...}')."""
    reply = Driver(opens_think=opens_think, grammar="G", think_budget=100)
    assert reply.feed(pieces) == done
    assert reply.text(ANSWER) == ""  # nothing of the answer before the grammar's
    assert reply.feed(['{"city": ', '"Oslo"}']) == []
    assert reply.end_of_generation() == [End("stop")]
    assert reply.finish("stop") == "stop"
    assert (reply.text(REASONING), reply.text(ANSWER)) == (reasoning, '{"city": "Oslo"}')


def test_the_budget_switches_the_answer_grammar_on_with_its_bridge() -> None:
    reply = Driver(opens_think=True, grammar="G", think_budget=2, think_message="")
    assert reply.feed(["a", "b", "c"]) == [UseGrammar("G"), Write((1002,), "\n</think>\n\n")]


@pytest.mark.parametrize(("thinks", "budget", "ignore_eos", "grammar", "answer_grammar"), [
    (True, None, False, "G", None),  # no budget: the grammar owns every token
    (False, 5, False, "G", None),  # no reasoning: nothing to wait for
    (True, 5, True, None, "G"),
])
def test_which_grammar_a_reply_starts_under(thinks: bool, budget: int | None, ignore_eos: bool,
                                            grammar: str | None, answer_grammar: str | None) -> None:
    reply = Driver(opens_think=thinks, thinks=thinks, grammar="G", think_budget=budget, ignore_eos=ignore_eos).reply
    assert (reply.grammar, reply.answer_grammar) == (grammar, answer_grammar)
    assert reply.stops_at_eog  # constrained: the end of generation ends it even with ignore_eos


def test_ignore_eos_without_a_grammar_does_not_stop_at_the_end() -> None:
    assert not Driver(thinks=False, ignore_eos=True).reply.stops_at_eog
