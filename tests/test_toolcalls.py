"""Tool calling logic: the request checks, each format's streaming parser fed piece by piece, and
the scheduler taking back an opener and forcing the format's own opening (on the scripted
engine of tests/fake_engine.py, whose tokens can hold several characters as a real vocabulary's
do). The same paths through real GGUF models, templates and the openai client are in
test_toolcalls_models.py."""

from __future__ import annotations

import json
import random

import pytest
from fake_engine import FakeEngine, collect, run_until_idle

from edgellm.runtime.batch import SequenceRequest
from edgellm.runtime.types import SamplingParams
from edgellm.text.toolcalls import (
    ToolCallParser,
    ToolChoice,
    ToolSpecError,
    ToolUse,
    detect_format,
    parse_tool_choice,
    parse_tools,
)
from edgellm.text.toolcalls.formats import GENERIC, HERMES, LLAMA3, R1, R1_OPENERS

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
TRICKY_ARGUMENTS = '{"city": "Oslo } {", "nested": [1, {"x": "\\"]"}], "n": 2}'


def pieces_of(text: str, rng: random.Random) -> list[str]:
    """`text` cut at random places, as tokens cut it (single characters included)."""
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        out.append(text[i:i + n])
        i += n
    return out


def parse(fmt, before: str, after: str, seed: int, must_call: bool = False) -> tuple[str, ToolCallParser, str | None]:
    """Feed `before` (model text up to and including an opener) piece by piece; when the parser
    triggers, play the engine (start_calls), then feed `after` (what the grammar makes it write)."""
    parser = ToolCallParser(fmt, must_call=must_call)
    rng = random.Random(seed)
    content, opener = [], None
    for piece in pieces_of(before, rng):
        for event in parser.feed(piece):
            assert isinstance(event, str)
            content.append(event)
        if parser.triggered is not None:
            opener = parser.triggered
            break
    if opener is not None:
        parser.start_calls()
        for piece in pieces_of(after, rng):
            parser.feed(piece)
    content += [e for e in parser.finish() if isinstance(e, str)]
    return "".join(content), parser, opener


def r1_call(name: str, arguments: str) -> str:
    return f"{name}\n```json\n{arguments}\n```<｜tool▁call▁end｜>"


@pytest.mark.parametrize("opener", R1_OPENERS)
@pytest.mark.parametrize("seed", range(4))
def test_r1_calls_parse_from_every_opener_spelling(opener: str, seed: int) -> None:
    after = (r1_call("get_weather", TRICKY_ARGUMENTS) + "\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>"
             + r1_call("get_time", "{}") + "<｜tool▁calls▁end｜>")
    content, parser, found = parse(R1, f"Let me look that up. {opener}<｜tool▁call▁begin｜>func", after, seed)
    assert found == opener
    assert content == "Let me look that up. "
    assert [(c.name, c.arguments, c.complete) for c in parser.calls] == [
        ("get_weather", TRICKY_ARGUMENTS, True), ("get_time", "{}", True)]
    assert json.loads(parser.calls[0].arguments)["nested"][1]["x"] == '"]'
    assert parser.all_complete


@pytest.mark.parametrize("seed", range(6))
def test_hermes_calls_parse_with_space_before_the_closing(seed: int) -> None:
    after = ('get_weather", "arguments": ' + TRICKY_ARGUMENTS + ' }\n</tool_call>\n<tool_call>\n{"name": "'
             + 'get_time", "arguments": {}}\n</tool_call>')
    content, parser, found = parse(HERMES, "Checking.\n<tool_call>\n{\"na", after, seed)
    assert (found, content) == ("<tool_call>", "Checking.\n")
    assert [(c.name, c.arguments) for c in parser.calls] == [("get_weather", TRICKY_ARGUMENTS), ("get_time", "{}")]


@pytest.mark.parametrize("opener", ["<|python_tag|>", '{"name"', '{ "name"'])
@pytest.mark.parametrize("seed", range(3))
def test_llama3_calls_parse(opener: str, seed: int) -> None:
    content, parser, found = parse(LLAMA3, opener + ': "get_wea', 'get_weather", "parameters": {"city": "Oslo"}}', seed)
    assert (found, content) == (opener, "")
    assert [(c.name, c.parsed_arguments()) for c in parser.calls] == [("get_weather", {"city": "Oslo"})]


@pytest.mark.parametrize("seed", range(5))
def test_text_that_only_looks_like_an_opener_is_content(seed: int) -> None:
    text = "Use <tool> tags, or <｜tool▁call like this, and {\"nam\": 1}. <tool_cal"
    for fmt in (R1, HERMES, LLAMA3, GENERIC):
        content, parser, found = parse(fmt, text, "", seed)
        assert (content, found, parser.calls) == (text, None, [])


def test_a_reply_cut_inside_the_arguments_leaves_the_call_incomplete() -> None:
    _, parser, _ = parse(HERMES, "<tool_call>", 'get_weather", "arguments": {"city": "Os', 0)
    assert parser.calls[0].arguments == '{"city": "Os'
    assert not parser.calls[0].complete and not parser.all_complete
    assert parser.calls[0].parsed_arguments() is None


def test_with_a_call_required_no_text_before_it_is_content() -> None:
    content, _, found = parse(HERMES, "Sure, here it comes", "", 0, must_call=True)
    assert (content, found) == ("", None)


@pytest.mark.parametrize("template, expected", [
    ("{{ '<｜Assistant｜><｜tool▁calls▁begin｜>' }} tool['function']['arguments'] | tojson", ("r1", True)),
    ("{{ '<｜tool▁calls▁begin｜>' + tool['function']['arguments'] }}", ("r1", False)),
    ("{% for tool in tools %}<tool_call>{% endfor %}", ("hermes", True)),
    ('{% if tools %}<|start_header_id|>"parameters"{% endif %}', ("llama3", True)),
    ("{{ messages[0]['content'] }}", ("generic", True)),
    (None, ("generic", True)),
])
def test_the_format_is_read_from_the_template(template: str | None, expected: tuple[str, bool]) -> None:
    fmt = detect_format(template)
    assert (fmt.name, fmt.arguments_as_object) == expected


# -- request checks --

@pytest.mark.parametrize("tools, message", [
    ({"type": "function"}, "'tools' must be a list of tools, not dict"),
    ([1], "tools[0] must be an object, not int"),
    ([{"type": "retrieval"}], "only tools of type 'function' are supported"),
    ([{"type": "function"}], "tools[0] needs a 'function' object"),
    ([{"type": "function", "function": {"name": "a b"}}], "tools[0].function.name must be 1-64 letters"),
    ([{"type": "function", "function": {"name": "x" * 65}}], "must be 1-64 letters"),
    ([WEATHER, WEATHER], "tools[1]: two tools are named 'get_weather'"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], "must be a JSON Schema object, not list"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], "must describe an object"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "n": {"type": "number", "minimum": 1.5}}}}}], "'minimum' 1.5 on a 'number' cannot be enforced by the grammar"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {},
        "required": ["q"]}}}], "'required' names 'q', which is not among its properties"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], "description must be a string"),
    ([WEATHER] * 129, "at most 128"),
])
def test_bad_tools_are_refused_with_the_reason(tools: object, message: str) -> None:
    with pytest.raises(ToolSpecError) as caught:
        parse_tools(tools)
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_property_and_definition_names_are_not_mistaken_for_keywords() -> None:
    schema = {"type": "object", "properties": {"minimum": {"type": "number"}, "not": {"$ref": "#/$defs/if"}},
              "$defs": {"if": {"type": "string"}}}
    [tool] = parse_tools([{"type": "function", "function": {"name": "f", "parameters": schema}}])
    assert tool.parameters == schema


@pytest.mark.parametrize("choice, tools, expected", [
    (None, [WEATHER], ToolChoice("auto")),
    ("none", [WEATHER], ToolChoice("none")),
    ("required", [WEATHER], ToolChoice("required")),
    ({"type": "function", "function": {"name": "get_weather"}}, [WEATHER], ToolChoice("named", "get_weather")),
])
def test_tool_choice(choice: object, tools: list, expected: ToolChoice) -> None:
    assert parse_tool_choice(choice, parse_tools(tools)) == expected


@pytest.mark.parametrize("choice, message", [
    ("always", "must be 'none', 'auto', 'required' or a function"),
    ({"type": "function", "function": {"name": "get_time"}}, "names 'get_time', which is not among the tools"),
    ({"function": "get_weather"}, "must look like"),
    (3, "must be a string or an object, not int"),
])
def test_bad_tool_choice_is_refused(choice: object, message: str) -> None:
    with pytest.raises(ToolSpecError) as caught:
        parse_tool_choice(choice, parse_tools([WEATHER]))
    assert message in caught.value.message


def test_required_without_tools_is_refused() -> None:
    with pytest.raises(ToolSpecError, match="needs at least one tool"):
        parse_tool_choice("required", [])


# -- the scheduler --

def use(choice: str = "auto", parallel: bool = True) -> ToolUse:
    tools = parse_tools([WEATHER, TIME])
    return ToolUse(GENERIC, tools, parse_tool_choice(choice, tools), parallel=parallel)


BODY = 'get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def generate(engine: FakeEngine, params: SamplingParams) -> tuple[object, list]:
    events: list = []
    prompt = engine.prompt_from_messages([{"role": "user", "content": "Weather?"}], tool_use=params.tool_use)
    engine.scheduler.submit(SequenceRequest(prompt, params, events.append))
    run_until_idle(engine.scheduler)
    return collect(events), events


def test_an_opener_that_ends_inside_a_token_is_taken_back_and_written_by_the_engine() -> None:
    """The model writes '<tool_call>' across tokens, the last one running on past it; the engine
    drops those tokens from the cache, writes the space before the opener and the format's own
    opening, and the call grammar continues from the name."""
    def reply(prompt: str) -> list[str]:
        if prompt.endswith(GENERIC.forced_start):
            return list(BODY)
        return ["Let", " me", " check", ". <tool", "_ca", "ll>\n{\"na"]

    engine = FakeEngine(reply, slots=1)
    response, _ = generate(engine, SamplingParams(tool_use=use()))
    assert response.answer == "Let me check. "
    assert [(c.name, c.arguments, c.complete) for c in response.tool_calls] == [("get_weather", '{"city": "Oslo"}', True)]
    assert response.stats.finish_reason == "tool_calls"
    held = engine.backend.text_of(engine.backend.kv[0])
    assert held.endswith("assistant:Let me check. " + GENERIC.forced_start + BODY)
    first, second = engine.backend.samplers
    assert first.grammar is None and second.grammar == "call grammar for 2 tools"


def test_a_required_call_is_forced_at_once_when_there_is_no_reasoning() -> None:
    engine = FakeEngine(lambda prompt: BODY if prompt.endswith(GENERIC.forced_start) else "I would rather chat.", slots=1)
    response, _ = generate(engine, SamplingParams(tool_use=use("required")))
    assert (response.answer, response.stats.finish_reason) == ("", "tool_calls")
    assert [c.name for c in response.tool_calls] == ["get_weather"]
    assert len(engine.backend.samplers) == 1 and engine.backend.samplers[0].grammar is not None


def test_a_required_call_follows_the_reasoning() -> None:
    """Reasoning streams freely; at </think> the engine writes the blank line and the opening."""
    def reply(prompt: str) -> list[str]:
        if prompt.endswith("</think>\n\n" + GENERIC.forced_start):
            return list(BODY)
        return ["Weather", " means", " a", " call.", "</think>", "\n\nNo", " call"]

    engine = FakeEngine(reply, slots=1, thinks=True, template_opens_think=True)
    response, _ = generate(engine, SamplingParams(tool_use=use("required")))
    assert response.reasoning == "Weather means a call."
    assert (response.answer, response.stats.finish_reason) == ("", "tool_calls")
    assert [c.arguments for c in response.tool_calls] == ['{"city": "Oslo"}']


def test_a_required_call_is_made_when_the_model_would_end_while_reasoning() -> None:
    """Seen through Open WebUI with R1's template: the model ended inside <think>, and a required
    call never came. Now the engine closes the reasoning itself and the call follows."""
    forced = "\n</think>\n\n" + GENERIC.forced_start

    def reply(prompt: str) -> list[str]:
        return list(BODY) if prompt.endswith(forced) else ["Hmm", ", the", " weather"]  # then the end of generation

    engine = FakeEngine(reply, slots=1, thinks=True, template_opens_think=True)
    response, _ = generate(engine, SamplingParams(tool_use=use("required")))
    assert response.reasoning == "Hmm, the weather"
    assert (response.stats.finish_reason, [c.name for c in response.complete_calls]) == ("tool_calls", ["get_weather"])


def test_reasoning_that_runs_long_is_closed_in_time_for_a_required_call() -> None:
    forced = "\n</think>\n\n" + GENERIC.forced_start
    engine = FakeEngine(lambda prompt: BODY if prompt.endswith(forced) else "x" * 1000, slots=1, thinks=True,
                        template_opens_think=True)
    response, _ = generate(engine, SamplingParams(tool_use=use("required"), max_tokens=300))
    assert response.reasoning == "x" * 150  # max_tokens less the room kept for the call (half of 300)
    assert (response.stats.finish_reason, [c.arguments for c in response.complete_calls]) == ("tool_calls", ['{"city": "Oslo"}'])
    assert response.stats.generated_tokens <= 300


def test_without_an_opener_the_reply_is_plain_content_and_stop_sequences_still_apply() -> None:
    engine = FakeEngine("It is sunny. <tool> is not a call. Bye", slots=1)
    response, _ = generate(engine, SamplingParams(tool_use=use(), stop=[" Bye"]))
    assert (response.answer, response.tool_calls, response.stats.finish_reason) == ("It is sunny. <tool> is not a call.", [], "stop")


def test_tool_choice_none_never_parses_calls() -> None:
    text = "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"
    engine = FakeEngine(text, slots=1)
    response, _ = generate(engine, SamplingParams(tool_use=use("none")))
    assert (response.answer, response.tool_calls) == (text, [])


def test_max_tokens_inside_a_call_ends_with_length_and_an_incomplete_call() -> None:
    engine = FakeEngine(lambda prompt: BODY if prompt.endswith(GENERIC.forced_start) else "x", slots=1)
    response, _ = generate(engine, SamplingParams(tool_use=use("required"), max_tokens=len(GENERIC.forced_start) + 20))
    assert response.stats.finish_reason == "length"
    assert response.tool_calls and not response.tool_calls[0].complete
    assert response.complete_calls == []


def test_call_grammar_layouts() -> None:
    """The grammar repeats calls only when parallel calls are allowed and the format has them."""
    tools = parse_tools([WEATHER, TIME])
    rules = ["w-args", "t-args"]
    parallel = GENERIC.grammar(tools, rules, "", ToolChoice("required"), parallel=True)
    single = GENERIC.grammar(tools, rules, "", ToolChoice("required"), parallel=False)
    named = R1.grammar(tools, rules, "", ToolChoice("named", "get_time"), parallel=True)
    llama = LLAMA3.grammar(tools, rules, "", ToolChoice("auto"), parallel=True)
    assert ")*" in parallel.splitlines()[-1] and ")*" not in single.splitlines()[-1]
    assert "tc-call ::= tc-call-1" in named and "get_weather" not in named
    assert named.splitlines()[-1] == 'root ::= tc-call "<｜tool▁calls▁end｜>"'
    assert llama.splitlines()[-1] == "root ::= tc-call"


# -- the API, in-process on the scripted engine --

def scripted_calls(prompt: str) -> list[str]:
    """Two calls in the generic (Hermes) layout, the opener split across tokens."""
    if prompt.endswith(GENERIC.forced_start):
        return list('get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n{"name": "'
                    'get_time", "arguments": {}}\n</tool_call>')
    return ["Looking", " it up.", "\n<to", "ol_call>"]


def test_calls_come_back_whole_and_streamed_as_the_openai_client_accumulates_them() -> None:
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from test_serve_inprocess import start

    with start(FakeEngine(scripted_calls, slots=1)) as running:
        ask = {"model": "fake", "messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER, TIME]}
        whole = running.client.chat.completions.create(**ask)  # type: ignore[call-overload]
        choice = whole.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Looking it up.\n"
        assert [(c.function.name, c.function.arguments, c.type) for c in choice.message.tool_calls] == [
            ("get_weather", '{"city": "Oslo"}', "function"), ("get_time", "{}", "function")]
        assert all(c.id.startswith("call_") for c in choice.message.tool_calls)

        state = ChatCompletionStreamState()
        chunks = list(running.client.chat.completions.create(**ask, stream=True))  # type: ignore[call-overload]
        for chunk in chunks:
            state.handle_chunk(chunk)
        streamed = state.get_final_completion().choices[0]
        assert streamed.finish_reason == "tool_calls"
        assert streamed.message.content == "Looking it up.\n"
        assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == [
            ("get_weather", '{"city": "Oslo"}'), ("get_time", "{}")]
        fragments = [d for chunk in chunks for c in chunk.choices if c.delta.tool_calls for d in c.delta.tool_calls]
        assert {d.index for d in fragments} == {0, 1}
        assert all(d.id for d in fragments if d.function and d.function.name)


@pytest.mark.parametrize("body, message", [
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name must be"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "names 'nope'"),
    ({"tool_choice": "required"}, "needs at least one tool"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "use either tools or response_format"),
    ({"tools": [WEATHER], "grammar": 'root ::= "x"'}, "use either tools or grammar"),
    ({"tools": "get_weather"}, "tools: Input should be a valid list"),
    ({"chat_template_kwargs": {"messages": "x"}}, "chat_template_kwargs may not set 'messages'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments is not valid JSON"),
])
def test_bad_tool_requests_get_a_400_naming_the_problem(body: dict, message: str) -> None:
    import httpx
    from test_serve_inprocess import start

    with start(FakeEngine("Hi.", slots=1)) as running:
        request = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], **body}
        answer = httpx.post(running.url + "/v1/chat/completions", json=request, timeout=30)
        assert answer.status_code == 400, answer.text
        assert message in answer.json()["error"]["message"]


def test_a_tool_round_trip_in_the_history_reaches_the_template() -> None:
    from test_serve_inprocess import start

    seen: list[str] = []

    def reply(prompt: str) -> str:
        seen.append(prompt)
        return "It is 21 degrees in Oslo."

    with start(FakeEngine(reply, slots=1)) as running:
        messages = [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
        ]
        answer = running.client.chat.completions.create(model="fake", messages=messages, tools=[WEATHER])  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "It is 21 degrees in Oslo."
        assert answer.choices[0].finish_reason == "stop"
    prompt = seen[-1]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in prompt
    assert '<tool_response>\n{"temperature": 21}\n</tool_response>' in prompt
    assert "You can call functions." in prompt  # the generic format describes the tools


def test_tools_too_large_for_a_slot_are_named_in_the_error() -> None:
    import httpx
    from test_serve_inprocess import start

    many = [{"type": "function", "function": {"name": f"tool_{i}", "description": "does a thing " * 20}} for i in range(28)]
    with start(FakeEngine("Hi.", slots=1, n_ctx=4096)) as running:
        answer = httpx.post(running.url + "/v1/chat/completions", timeout=30,
                            json={"model": "fake", "messages": [{"role": "user", "content": "hi"}], "tools": many})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "of them the descriptions of its 28 tools, but a slot holds 4096: send fewer tools" in error["message"]
