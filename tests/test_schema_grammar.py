"""JSON Schema -> grammar (edgellm.text.schema_grammar): what it refuses, and that what it accepts holds.

Refusals are table-tested (pure). Acceptance is tested on the real thing: schemas from a random
generator -> grammar -> generations forced on a tiny real GGUF model through llama.cpp -> every value
that comes back validates against its schema (jsonschema), or the schema was refused up front."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edgellm.errors import GrammarError
from edgellm.text.grammar import check_grammar
from edgellm.text.schema_grammar import MAX_REPEAT, SchemaError, SchemaGrammar, integer_range, pattern_rule


def grammar_of(schema: Any, *, tool: bool = False) -> str:
    builder = SchemaGrammar()
    builder.add(schema, "root", require_object=tool)
    text = builder.text()
    check_grammar(text)
    return text


# -- refusals: one line, naming the keyword ------------------------------------------------------

HUGE = 1_000_000_000


@pytest.mark.parametrize(("schema", "words"), [
    # 1. a repetition count that expands into text: maxLength 10^9 grew serve to 22 GB (OOM kill)
    ({"type": "string", "maxLength": HUGE}, f"'maxLength' {HUGE} is more than the grammar allows ({MAX_REPEAT})"),
    ({"type": "string", "minLength": HUGE}, "'minLength' 1000000000 is more than"),
    ({"type": "array", "maxItems": HUGE}, "'maxItems' 1000000000 is more than"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 5000}, "'minItems' 5000 is more than"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/big"}}, "$defs": {"big": {"type": "string", "maxLength": HUGE}}},
     "at /$defs/big: 'maxLength'"),
    ({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string", "minLength": HUGE}}}},
     "at /properties/a/items: 'minLength'"),
    ({"type": "string", "pattern": "^a{1000000000}$"}, "a repetition of more than 1000"),
    ({"type": "string", "pattern": "^(ab){2,1000000}$"}, "a repetition of more than 1000"),
    ({"type": "object", "maxProperties": HUGE}, "'maxProperties' cannot be enforced"),
    # 3. what llama-cpp-python's converter silently ignored or mis-named
    ({"type": "string", "minLength": 5, "maxLength": 2}, "'minLength' 5 is more than 'maxLength' 2"),
    ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}, "'maxLength' beside 'pattern'"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]}, "'required' names 'b', which is not among"),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
                {"type": "object", "properties": {"a": {"type": "string"}}}]}, "'allOf' gives property 'a' two different schemas"),
    ({"type": "object", "enum": [1, 2]}, "the enum value 1 is not of type object"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "'oneOf' alternatives that one value could match twice"),
    ({"type": "integer", "multipleOf": 3}, "'multipleOf' cannot be enforced"),
    ({"type": "number", "minimum": 0.5}, "'minimum' 0.5 on a 'number' cannot be enforced by the grammar: only whole-number bounds"),
    ({"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1}, "no number is within its bounds"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer is within its bounds"),
    ({"type": "array", "uniqueItems": True}, "'uniqueItems' cannot be enforced"),
    ({"type": "string", "pattern": "^(?=a)b$"}, "lookarounds"),
    ({"type": "string", "pattern": "^(a)\\1$"}, "backreferences"),
    ({"type": "string", "pattern": "a[b"}, "not a valid regular expression"),
    ({"$ref": "https://example.com/s.json"}, "only local '#/...' $ref"),
    ({"$ref": "#/$defs/missing"}, "points at nothing"),
    ({"$ref": "#/$defs/a", "type": "string", "$defs": {"a": {"type": "string"}}}, "'type' beside '$ref'"),
    ({"enum": []}, "an empty 'enum' matches no value"),
    ({"anyOf": []}, "an empty 'anyOf' matches no value"),
    ({"type": "strnig"}, "'type' must be one of"),
    (False, "the schema 'false' matches no value"),
    ({"type": "object", "properties": {"a": False}, "required": ["a"]}, "at /properties/a: the schema 'false'"),
])
def test_what_the_grammar_cannot_enforce_is_refused_naming_the_keyword(schema: Any, words: str) -> None:
    with pytest.raises(SchemaError) as caught:
        grammar_of(schema)
    assert words in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("schema", [
    {"items": {"type": "integer"}},
    {"anyOf": [{"type": "integer"}]},
    {"type": "object", "enum": [{"a": 1}]},  # an object, but any other shape would be too: refused on kind, not value
    {"$ref": "#/$defs/s", "$defs": {"s": {"type": "integer"}}},
    {"type": ["object", "null"], "properties": {}},
    {},
])
def test_tool_parameters_must_describe_objects_only(schema: Any) -> None:
    if schema.get("enum"):
        grammar_of(schema, tool=True)  # an enum of objects is objects only: accepted
        return
    with pytest.raises(SchemaError, match="must describe an object"):
        grammar_of(schema, tool=True)


def test_a_deep_schema_is_refused_before_python_runs_out_of_stack() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaError, match="nested more than 64 deep"):
        grammar_of(schema)


# -- the text of the grammar ------------------------------------------------------------------------

def test_same_names_in_defs_and_definitions_and_properties_get_their_own_rules() -> None:
    # llama-cpp-python named a $ref's rule after its last part: $defs/s and definitions/s shared
    # one rule, so {"a": 1, "b": 2} came back where b must be "p" or "q".
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/s"}, "b": {"$ref": "#/definitions/s"}, "s": {"type": "null"}},
              "required": ["a", "b", "s"], "$defs": {"s": {"type": "integer"}}, "definitions": {"s": {"enum": ["p", "q"]}}}
    text = grammar_of(schema)
    names = [line.split(" ::= ")[0] for line in text.splitlines()]
    assert len(names) == len(set(names))
    assert '("\\"p\\"" | "\\"q\\"")' in text and "integer" in text


@pytest.mark.parametrize("name", ['say "hi"', "back\\slash", "new\nline", "definitions", "$defs", "$ref", "tab\there", "ünï"])
def test_property_names_with_quotes_backslashes_and_keyword_names_work(name: str) -> None:
    schema = {"type": "object", "properties": {name: {"type": "boolean"}}, "required": [name]}
    text = grammar_of(schema)
    # The key is written as JSON writes it, so what comes back parses to the same name.
    from edgellm.text.grammar import gbnf_literal

    assert gbnf_literal(json.dumps(name, ensure_ascii=False)) in text


@pytest.mark.parametrize(("low", "high"), [(0, 0), (-5, 123), (7, 7), (-120, -3), (10, 10**6), (-(10**16) + 1, 10**16 - 1), (99, 1000)])
def test_integer_ranges_match_exactly_their_integers(low: int, high: int) -> None:
    import re

    expression = integer_range(low, high)
    # GBNF here is close enough to a regex to check membership with Python's re
    regex = expression.replace('"', "").replace(" ", "")
    for value in {low, high, low - 1, high + 1, (low + high) // 2, 0, -1, 1, 9, 10, 99, 100, 101}:
        assert bool(re.fullmatch(regex, str(value))) == (low <= value <= high), (value, expression)


@pytest.mark.parametrize("bounds", [
    {"minimum": 0, "maximum": 1}, {"exclusiveMinimum": 0, "exclusiveMaximum": 1}, {"minimum": -1, "exclusiveMaximum": 1},
    {"exclusiveMinimum": -5, "maximum": -2}, {"exclusiveMaximum": 0}, {"minimum": 3}, {"minimum": 7, "maximum": 7},
])
def test_number_ranges_hold_only_numbers_within_their_bounds(bounds: dict[str, int]) -> None:
    import re

    from edgellm.text.schema_grammar import number_range

    low = bounds.get("minimum", bounds.get("exclusiveMinimum"))
    high = bounds.get("maximum", bounds.get("exclusiveMaximum"))
    expression = number_range(low, "exclusiveMinimum" in bounds, high, "exclusiveMaximum" in bounds)
    regex = re.compile(expression.replace('"', "").replace(" ", ""))
    validator = jsonschema.Draft202012Validator({"type": "number", **bounds})
    rng = random.Random(5)
    matched = 0
    for _ in range(5000):
        value = rng.choice([rng.randint(-12, 12), round(rng.uniform(-12, 12), rng.randint(1, 6))])
        for text in {str(value), f"{value:.1f}", "0.99999999999999", "-0.5", "1.000001"}:
            if regex.fullmatch(text):
                matched += 1
                assert validator.is_valid(json.loads(text)), (text, expression)
    assert matched > 50
    check_grammar(f"root ::= {expression}")


def test_patterns_write_json_text_for_quotes_backslashes_and_controls() -> None:
    assert pattern_rule('^"$') == '"\\\\\\""'  # the JSON text \" for the character "
    assert pattern_rule("^\\\\$") == '"\\\\\\\\"'  # the JSON text \\ for one backslash
    assert pattern_rule("^\\n$") == '"\\\\n"'


# -- every accepted schema holds: random schemas, forced generations on a real model ------------------


class SchemaMaker:
    """Random schemas that reach every branch of the converter, the traps included."""

    NAMES = ("a", "b", "s", "x-y", "x_y", 'q"t', "b\\s", "nl\nx", "$ref", "$defs", "definitions", "root", "space", "char", "ü")
    PATTERNS = ("^[a-z]{1,4}$", "^\\d{2}-\\d{2}$", '^"?[A-F]+$', "^(yes|no)$", "ab?c", "^\\\\[0-9]$", "^[^a-z\\n]{2}$",
                "^(?:x|y){0,3}z$", "^\\w+@\\w+\\.(com|org)$", "^.{0,5}$", "^\\s?\\S{1,3}$", "^[\\x41-\\x43]{2}$", "^[]a]+$")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.defs: dict[str, Any] = {}

    def top(self) -> dict[str, Any]:
        self.defs = {}
        schema = self.object(0) if self.rng.random() < 0.85 else self.any(0)
        if self.defs and isinstance(schema, dict):
            for name, sub in self.defs.items():
                where = "$defs" if name.startswith("d:") else "definitions"
                schema.setdefault(where, {})[name[2:]] = sub
        return schema

    def any(self, depth: int) -> Any:
        kinds = ["string", "integer", "boolean", "enum", "const", "null", "number", "pattern"]
        if depth < 3:
            kinds += ["object", "array", "anyOf", "oneOf", "ref", "allOf", "types", "tuple"]
        kind = self.rng.choice(kinds)
        return getattr(self, kind.replace("-", "_"))(depth)

    def string(self, depth: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        roll = self.rng.random()
        if roll < 0.5:
            low = self.rng.choice([0, 1, 2, 5])
            schema["minLength"] = low
            schema["maxLength"] = self.rng.choice([low, low + 3, low + 8, max(low - 1, 0)])
        elif roll < 0.6:
            schema["maxLength"] = self.rng.choice([HUGE, 2 * MAX_REPEAT])
        elif roll < 0.7:
            schema["format"] = self.rng.choice(["date", "uuid", "time", "email"])
        return schema

    def pattern(self, depth: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "pattern": self.rng.choice(self.PATTERNS)}
        if self.rng.random() < 0.1:
            schema["maxLength"] = 3
        return schema

    def integer(self, depth: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        if self.rng.random() < 0.6:
            for keyword in self.rng.sample(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"], self.rng.randint(1, 2)):
                schema[keyword] = self.rng.choice([-1000, -7, -1, 0, 0.5, 3, 42, 99, 10**6])
        return schema

    def number(self, depth: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "number"}
        if self.rng.random() < 0.6:
            for keyword in self.rng.sample(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"], self.rng.randint(1, 2)):
                schema[keyword] = self.rng.choice([-100, -1, 0, 1, 5, 0.25])
        return schema

    def boolean(self, depth: int) -> dict[str, Any]:
        return {"type": "boolean", "description": "annotation"}

    def null(self, depth: int) -> dict[str, Any]:
        return {"type": "null"}

    def enum(self, depth: int) -> dict[str, Any]:
        values = self.rng.sample(["p", "q", 'say "x"', "a\\b", 1, 2.5, None, True, [1, "x"], {"k": "v"}], self.rng.randint(1, 4))
        schema: dict[str, Any] = {"enum": values}
        if self.rng.random() < 0.3:
            schema["type"] = self.rng.choice(["string", "integer", "object"])
        return schema

    def const(self, depth: int) -> dict[str, Any]:
        return {"const": self.rng.choice(["fixed", 7, None, {"nested": [1, 2]}, "line\nbreak"])}

    def types(self, depth: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.rng.sample(["string", "integer", "null", "boolean", "array"], 2)}
        if "string" in schema["type"]:
            schema["maxLength"] = 4
        if "array" in schema["type"]:
            schema["maxItems"] = 2
            schema["items"] = self.any(depth + 1)
        return schema

    def object(self, depth: int) -> dict[str, Any]:
        names = self.rng.sample(self.NAMES, self.rng.randint(0, 4))
        schema: dict[str, Any] = {"type": "object", "properties": {name: self.any(depth + 1) for name in names}}
        if names and self.rng.random() < 0.7:
            schema["required"] = self.rng.sample(names, self.rng.randint(1, len(names)))
        if self.rng.random() < 0.08:
            schema.setdefault("required", []).append("missing")
        roll = self.rng.random()
        if roll < 0.3:
            schema["additionalProperties"] = False
        elif roll < 0.4:
            schema["additionalProperties"] = {"type": "integer", "maximum": 9}
            if self.rng.random() < 0.5:
                schema["properties"] = {}
                schema.pop("required", None)
        return schema

    def array(self, depth: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": self.any(depth + 1)}
        if self.rng.random() < 0.7:
            low = self.rng.choice([0, 1, 2])
            schema["minItems"] = low
            schema["maxItems"] = self.rng.choice([low, low + 1, low + 2])
        else:
            schema["maxItems"] = 2
        return schema

    def tuple(self, depth: int) -> dict[str, Any]:
        return {"type": "array", "prefixItems": [self.any(depth + 1) for _ in range(self.rng.randint(1, 3))]}

    def anyOf(self, depth: int) -> dict[str, Any]:  # noqa: N802  (the keyword's name)
        return {"anyOf": [self.any(depth + 1) for _ in range(self.rng.randint(1, 3))]}

    def oneOf(self, depth: int) -> dict[str, Any]:  # noqa: N802  (the keyword's name)
        if self.rng.random() < 0.5:  # objects told apart by a tag
            return {"oneOf": [{"type": "object", "properties": {"kind": {"const": tag}, "v": self.any(depth + 1)},
                               "required": ["kind", "v"]} for tag in ("a", "b")]}
        return {"oneOf": [self.any(depth + 1) for _ in range(self.rng.randint(1, 3))]}

    def allOf(self, depth: int) -> dict[str, Any]:  # noqa: N802  (the keyword's name)
        first, second = self.object(depth + 1), self.object(depth + 1)
        if self.rng.random() < 0.5:
            first.pop("additionalProperties", None)
            second.pop("additionalProperties", None)
        return {"allOf": [first, second]}

    def ref(self, depth: int) -> dict[str, Any]:
        # Same names under $defs and definitions, pointing at different schemas: the old collision.
        name = self.rng.choice(["s", "t", "a"])
        where = self.rng.choice(["d:", "D:"])
        if where + name not in self.defs:
            self.defs[where + name] = self.any(depth + 1)
        return {"$ref": f"#/{'$defs' if where == 'd:' else 'definitions'}/{name}"}


def random_schemas(count: int, seed: int) -> Iterator[tuple[int, Any]]:
    maker = SchemaMaker(random.Random(seed))
    for index in range(count):
        yield index, maker.top()


def test_the_random_schemas_reach_both_sides() -> None:
    refused = accepted = 0
    for _, schema in random_schemas(400, seed=1):
        try:
            grammar_of(schema)
            accepted += 1
        except GrammarError:
            refused += 1
    assert accepted > 150 and refused > 50, (accepted, refused)


@pytest.fixture(scope="module")
def engine(tiny_q4km: Path) -> Iterator[Any]:
    from edgellm.device.hardware import detect
    from edgellm.device.profiles import select_profile
    from edgellm.plan.planner import make_plan
    from edgellm.runtime.engine import Engine
    from edgellm.store.gguf import read_gguf

    model = read_gguf(tiny_q4km)
    device = detect("/")
    profile, _ = select_profile(device, None)
    loaded = Engine(model, make_plan(model, device, profile, ctx=2048))
    yield loaded
    loaded.close()


def test_every_value_generated_under_a_random_schema_validates(engine: Any) -> None:
    from edgellm.runtime.types import GenerationStats, SamplingParams, TextEvent

    refused = valid = cut = 0
    for index, schema in random_schemas(160, seed=2):
        try:
            grammar_of(schema)
        except GrammarError:
            refused += 1
            # the engine refuses it the same way, before anything is generated
            with pytest.raises(GrammarError):
                engine.grammar_text(SamplingParams(json_schema=json.dumps(schema)))
            continue
        params = SamplingParams(json_schema=json.dumps(schema), max_tokens=160, temperature=1.5, top_k=0, top_p=1.0,
                                min_p=0.0, seed=index, split_reasoning=False, grammar_is_answer=True)
        text, stats = "", None
        for event in engine.generate_from_prompt("{", params):
            if isinstance(event, TextEvent):
                text += event.text
            elif isinstance(event, GenerationStats):
                stats = event
        assert stats is not None
        if stats.finish_reason != "stop":
            cut += 1
            continue
        value = json.loads(text)
        jsonschema.Draft202012Validator(schema).validate(value)  # the promise: it validates
        valid += 1
    assert valid >= 40 and refused >= 20, (valid, refused, cut)


def test_every_call_made_with_random_parameters_validates(engine: Any) -> None:
    from edgellm.runtime.types import GenerationStats, SamplingParams
    from edgellm.text.toolcalls import ToolCallArguments, ToolCallEnd, ToolSpecError, ToolUse, parse_tool_choice, parse_tools
    from edgellm.text.toolcalls.formats import GENERIC

    refused = valid = cut = 0
    for index, schema in random_schemas(120, seed=3):
        function = {"name": "f", "parameters": schema}
        try:
            tools = parse_tools([{"type": "function", "function": function}])
        except ToolSpecError as exc:
            assert "\n" not in exc.message
            refused += 1
            continue
        use = ToolUse(GENERIC, tools, parse_tool_choice("required", tools), parallel=False)
        params = SamplingParams(tool_use=use, max_tokens=200, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=index)
        arguments, ended, stats = "", False, None
        for event in engine.generate([{"role": "user", "content": "call f"}], params):
            if isinstance(event, ToolCallArguments):
                arguments += event.text
            elif isinstance(event, ToolCallEnd):
                ended = True
            elif isinstance(event, GenerationStats):
                stats = event
        if not ended:
            assert stats is not None and stats.finish_reason == "length"
            cut += 1
            continue
        jsonschema.Draft202012Validator(schema).validate(json.loads(arguments))
        valid += 1
    assert valid >= 30 and refused >= 10, (valid, refused, cut)
