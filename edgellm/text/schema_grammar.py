"""JSON Schema -> GBNF: every value the grammar lets a model write validates against the schema,
or the schema is refused up front with a one-line reason naming where and which keyword. Pure.

edgellm's own converter, not llama-cpp-python's SchemaConverter, because that one expands a
{m,n} bound into text before any size check (maxLength 10^9 grew serve to 22 GB), names a $ref's
rule after its last part (so $defs/s and definitions/s, or a definition and a property, share one
rule), and skips what it does not know (maxLength beside pattern, required names that are not
properties, conflicting allOf). The rules here:
- a keyword that constrains values is enforced or refused; annotations and unknown keywords, which
  JSON Schema validation ignores too, are ignored;
- every repetition count is bounded (MAX_REPEAT) before any text is made, and written as GBNF {m,n};
- rule names are allocated, never derived and looked up: two schemas never share a rule by name;
- the walk is bounded in depth and in nodes.
The grammar may allow fewer values than the schema (an object writes only its declared properties,
\\d only ASCII digits, oneOf only alternatives that cannot overlap): never more.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from edgellm.errors import GrammarError, one_line
from edgellm.text.grammar import escape_code, gbnf_literal

MAX_REPEAT = 1000  # minLength/maxLength/minItems/maxItems and {m,n} in patterns: tool arguments need far less
MAX_DEPTH = 64  # nested schemas (each level is a Python frame here)
MAX_NODES = 20_000  # schema nodes visited, $ref targets once
MAX_INT_DIGITS = 16  # integers the grammar writes: up to 16 digits, as llama.cpp's converter
MAX_NUMBER_BOUND = 10**9  # bounds on non-integer numbers: whole, and small enough to leave digits for a fraction
MAX_PATTERN_CHARS = 1000

# Keywords that constrain values and that the grammar cannot enforce: refused, with the keyword named.
UNENFORCEABLE = (
    "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
    "propertyNames", "minProperties", "maxProperties", "contains", "minContains", "maxContains",
    "unevaluatedProperties", "unevaluatedItems", "multipleOf", "$dynamicRef", "$recursiveRef",
)
_NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_STRING_KEYWORDS = ("minLength", "maxLength", "pattern", "format")
_ARRAY_KEYWORDS = ("items", "prefixItems", "minItems", "maxItems", "uniqueItems", "additionalItems")
_OBJECT_KEYWORDS = ("properties", "required", "additionalProperties", "patternProperties")
# Everything that says what a value may be; anything else in a schema object is an annotation.
_CONSTRAINTS = frozenset((
    "type", "enum", "const", "$ref", "anyOf", "oneOf", "allOf", *_NUMBER_BOUNDS, *_STRING_KEYWORDS,
    *_ARRAY_KEYWORDS, *_OBJECT_KEYWORDS, *UNENFORCEABLE,
))
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_ALL_KINDS = frozenset(TYPES) - {"integer"}  # integer values are numbers

# The JSON building blocks. `char` is one character of a JSON string: never a raw control character
# or DEL, and no \u escape of a surrogate, so one `char` is one character of the parsed string
# (minLength/maxLength count exactly) and the text is always valid UTF-8.
_HEX = "[0-9a-fA-F]"
PRIMITIVES: dict[str, str] = {
    "space": '" "?',
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CefEF] ' + _HEX + "{3} | [dD] [0-7] " + _HEX + "{2}))",
    "string": r'"\"" char* "\"" space',
    "integral-part": "[0] | [1-9] [0-9]{0,15}",
    "integer": '"-"? integral-part space',
    "number": '"-"? integral-part ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})? space',
    "boolean": '("true" | "false") space',
    "null": '"null" space',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
    "array": '"[" space ( value ("," space value)* )? "]" space',
    "date": '[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )',
    "time": '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )',
    "date-string": r'"\"" date "\"" space',
    "time-string": r'"\"" time "\"" space',
    "date-time-string": r'"\"" date "T" time "\"" space',
    "uuid-string": r'"\"" ' + _HEX + '{8} "-" ' + _HEX + '{4} "-" ' + _HEX + '{4} "-" ' + _HEX + '{4} "-" ' + _HEX + r'{12} "\"" space',
}
_PRIMITIVE_NEEDS = {
    "char": (), "string": ("char", "space"), "integral-part": (), "integer": ("integral-part", "space"),
    "number": ("integral-part", "space"), "boolean": ("space",), "null": ("space",), "space": (),
    "value": ("object", "array", "string", "number", "boolean", "null"),
    "object": ("string", "value", "space"), "array": ("value", "space"),
    "date": (), "time": (), "date-string": ("date", "space"), "time-string": ("time", "space"),
    "date-time-string": ("date", "time", "space"), "uuid-string": ("space",),
}
_FORMATS = {"date": "date-string", "time": "time-string", "date-time": "date-time-string", "uuid": "uuid-string"}


class SchemaError(GrammarError):
    """A schema the grammar cannot enforce exactly; the message says where and why, in one line."""


@dataclass
class _Document:
    """One schema as given: $refs point into it."""

    root: Any
    label: str  # for rule names


class SchemaGrammar:
    """Collects the rules for one or more schemas into one grammar.

        builder = SchemaGrammar(reserved={"root"})
        name = builder.add(schema, "tc-args-0")     # the rule for values of `schema`
        text = builder.text()                        # every rule, GBNF
    """

    def __init__(self, reserved: set[str] | frozenset[str] = frozenset()) -> None:
        self.rules: dict[str, str] = {}
        self._taken: set[str] = set(reserved) | set(PRIMITIVES)
        self._refs: dict[tuple[int, str], tuple[str, frozenset[str]]] = {}
        self._documents: list[_Document] = []
        self._nodes = 0

    # -- public --

    def add(self, schema: Any, name: str, *, require_object: bool = False) -> str:
        """Rules for `schema`, the top one named `name` (which must be free). With require_object the
        schema must describe JSON objects only (tool arguments). Raises SchemaError."""
        if name in self._taken:
            raise ValueError(f"rule name {name!r} is taken")
        self._taken.add(name)
        document = _Document(schema, name)
        self._documents.append(document)
        rule, kinds = self._visit(schema, len(self._documents) - 1, "", name, 0)
        if require_object and kinds != {"object"}:
            described = ", ".join(sorted(kinds)) if kinds != _ALL_KINDS else "any value"
            raise SchemaError(f"it must describe an object (\"type\": \"object\" with properties), not {described}")
        self.rules[name] = rule
        return name

    def text(self) -> str:
        return "\n".join(f"{name} ::= {body}" for name, body in self.rules.items())

    # -- rules --

    def _new_rule(self, hint: str, body: str | None = None) -> str:
        """A rule name no other rule has (hints are only for people reading the grammar)."""
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-")[:48].rstrip("-") or "r"
        name, counter = base, 1
        while name in self._taken:
            counter += 1
            name = f"{base}-{counter}"
        self._taken.add(name)
        if body is not None:
            self.rules[name] = body
        return name

    def _primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = PRIMITIVES[name]
            for needed in _PRIMITIVE_NEEDS[name]:
                self._primitive(needed)
        return name

    # -- the walk --

    def _visit(self, node: Any, doc: int, path: str, hint: str, depth: int) -> tuple[str, frozenset[str]]:
        """(a GBNF expression for the values of node, the JSON kinds it can write)."""
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise SchemaError(f"it has more than {MAX_NODES} schemas in all")
        if depth > MAX_DEPTH:
            raise SchemaError(f"{_at(path)}schemas are nested more than {MAX_DEPTH} deep")
        if node is True:
            return self._primitive("value"), _ALL_KINDS
        if node is False:
            raise SchemaError(f"{_at(path)}the schema 'false' matches no value")
        if not isinstance(node, dict):
            raise SchemaError(f"{_at(path)}a schema must be an object or a boolean, not {_kind(node)}")
        for keyword in UNENFORCEABLE:
            if keyword in node:
                raise SchemaError(f"{_at(path)}'{keyword}' cannot be enforced by the grammar")
        if node.get("uniqueItems", False) is not False:
            raise SchemaError(f"{_at(path)}'uniqueItems' cannot be enforced by the grammar")
        if node.get("patternProperties", {}) != {}:
            raise SchemaError(f"{_at(path)}'patternProperties' cannot be enforced by the grammar")
        if "$ref" in node:
            self._alone(node, "$ref", path)
            return self._ref(node["$ref"], doc, path, depth)
        for union in ("anyOf", "oneOf"):
            if union in node:
                return self._union(node, union, doc, path, hint, depth)
        if "allOf" in node:
            components = node["allOf"]
            if isinstance(components, list) and len(components) == 1 and not any(
                    key in _CONSTRAINTS for key in node if key != "allOf"):
                return self._visit(components[0], doc, path + "/allOf/0", hint, depth + 1)  # pydantic's $ref wrapper
            return self._visit(self._merged(node, doc, path), doc, path + "/allOf", hint, depth + 1)
        if "enum" in node or "const" in node:
            return self._literals(node, path, hint)
        kinds = _types(node, path)
        if len(kinds) == 6:
            return self._primitive("value"), _ALL_KINDS
        branches: list[str] = []
        made: set[str] = set()
        for kind in kinds:
            branches.append(self._typed(kind, node, doc, path, hint, depth))
            made.add("number" if kind == "integer" else kind)
        if len(branches) == 1:
            return branches[0], frozenset(made)
        return self._new_rule(hint, " | ".join(branches)), frozenset(made)

    def _alone(self, node: dict[str, Any], keyword: str, path: str) -> None:
        """Refuse constraints beside `keyword`, which the grammar would otherwise follow alone."""
        for other in node:
            if other in _CONSTRAINTS and other != keyword:
                raise SchemaError(f"{_at(path)}'{other}' beside '{keyword}' is not supported: "
                                  f"move it into the schema that '{keyword}' names")

    def _ref(self, ref: Any, doc: int, path: str, depth: int) -> tuple[str, frozenset[str]]:
        if not isinstance(ref, str):
            raise SchemaError(f"{_at(path)}'$ref' must be a string")
        if ref != "#" and not ref.startswith("#/"):
            raise SchemaError(f"{_at(path)}only local '#/...' $ref are supported, not '{one_line(ref)}'")
        key = (doc, ref)
        if key in self._refs:  # seen, or being made (a recursive schema): its rule, by name
            return self._refs[key]
        target = _pointed(self._documents[doc].root, ref)
        if target is _NOTHING:
            raise SchemaError(f"{_at(path)}'$ref' {one_line(ref)!r} points at nothing")
        name = self._new_rule(f"{self._documents[doc].label}-ref-{ref.rsplit('/', 1)[-1]}")
        self._refs[key] = (name, _ALL_KINDS)
        body, kinds = self._visit(target, doc, ref[1:], name, depth + 1)
        self.rules[name] = body
        self._refs[key] = (name, kinds)
        return name, kinds

    def _union(self, node: dict[str, Any], union: str, doc: int, path: str, hint: str, depth: int) -> tuple[str, frozenset[str]]:
        self._alone(node, union, path)
        alternatives = node[union]
        _non_empty(alternatives, union, path)
        rules, kinds = [], []
        for index, alternative in enumerate(alternatives):
            rule, made = self._visit(alternative, doc, f"{path}/{union}/{index}", f"{hint}-{index}", depth + 1)
            rules.append(rule)
            kinds.append(made)
        if union == "oneOf" and not self._exclusive(alternatives, kinds, doc):
            raise SchemaError(f"{_at(path)}'oneOf' alternatives that one value could match twice cannot be enforced: "
                              "use 'anyOf', or tell objects apart by a required 'const' property")
        return self._new_rule(hint, " | ".join(rules)), frozenset().union(*kinds)

    def _exclusive(self, alternatives: list[Any], kinds: list[frozenset[str]], doc: int) -> bool:
        """Whether no value can match two alternatives: different kinds, different constants, or
        objects told apart by a required property with a different constant in each."""
        if all(first.isdisjoint(second) for index, first in enumerate(kinds) for second in kinds[index + 1:]):
            return True
        resolved = [self._resolved(alternative, doc) for alternative in alternatives]
        constants = [_constants(schema) for schema in resolved]
        if all(values is not None for values in constants):
            flat = [value for values in constants for value in values or []]
            return len(flat) == len(set(flat))
        if all(made == {"object"} for made in kinds) and all(isinstance(schema, dict) for schema in resolved):
            shared = set.intersection(*(set(schema.get("required", [])) for schema in resolved))
            for name in sorted(shared):
                tags = [_constants(self._resolved(schema.get("properties", {}).get(name), doc)) for schema in resolved]
                if all(tag is not None for tag in tags):
                    flat = [value for tag in tags for value in tag or []]
                    if len(flat) == len(set(flat)):
                        return True
        return False

    def _resolved(self, schema: Any, doc: int) -> Any:
        """schema, with $refs followed (a few hops; a cycle gives the last schema seen)."""
        for _ in range(16):
            if not (isinstance(schema, dict) and isinstance(schema.get("$ref"), str)):
                return schema
            schema = _pointed(self._documents[doc].root, schema["$ref"])
            if schema is _NOTHING:
                return None
        return schema

    def _merged(self, node: dict[str, Any], doc: int, path: str) -> dict[str, Any]:
        """allOf as one object schema: components' properties together, or refused where they conflict."""
        components = node["allOf"]
        _non_empty(components, "allOf", path)
        rest = {key: value for key, value in node.items() if key != "allOf" and key in _CONSTRAINTS}
        parts = [self._resolved(component, doc) for component in components] + ([rest] if rest else [])
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for index, part in enumerate(parts):
            where = f"{path}/allOf/{index}" if index < len(components) else path
            if not isinstance(part, dict) or any(key in _CONSTRAINTS and key not in _OBJECT_KEYWORDS + ("type",) for key in part) \
                    or part.get("type", "object") != "object":
                raise SchemaError(f"{_at(where)}'allOf' is supported for object schemas with properties only")
            properties = part.get("properties", {})
            if not isinstance(properties, dict):
                raise SchemaError(f"{_at(where)}'properties' must be an object")
            for name, schema in properties.items():
                if name in merged["properties"] and merged["properties"][name] != schema:
                    raise SchemaError(f"{_at(where)}'allOf' gives property '{one_line(name)}' two different schemas")
                merged["properties"][name] = schema
            required = part.get("required", [])
            merged["required"] += required if isinstance(required, list) else [required]
        for part in parts:
            if part.get("additionalProperties", True) is not True:
                others = set(merged["properties"]) - set(part.get("properties", {}))
                if others:
                    raise SchemaError(f"{_at(path)}'allOf' joins objects, but one of them allows no property "
                                      f"'{one_line(sorted(others)[0])}' (additionalProperties)")
        merged["additionalProperties"] = False
        return merged

    def _literals(self, node: dict[str, Any], path: str, hint: str) -> tuple[str, frozenset[str]]:
        keyword = "const" if "const" in node else "enum"
        if keyword == "const" and "enum" in node:
            raise SchemaError(f"{_at(path)}'enum' beside 'const': give one")
        for other in node:
            if other in _CONSTRAINTS and other not in (keyword, "type"):
                raise SchemaError(f"{_at(path)}'{other}' beside '{keyword}' is not supported: list only values that fit")
        values = [node["const"]] if keyword == "const" else node["enum"]
        _non_empty(values, "enum", path)
        kinds = _types(node, path) if "type" in node else None
        made: set[str] = set()
        literals = []
        for value in values:
            kind = _kind_of(value)
            if kinds is not None and kind not in kinds and not (kind == "integer" and "number" in kinds):
                raise SchemaError(f"{_at(path)}the {keyword} value {one_line(json.dumps(value))} is not of type {'/'.join(kinds)}")
            made.add("number" if kind == "integer" else kind)
            literals.append(gbnf_literal(_json_text(value, path)))
        self._primitive("space")
        return self._new_rule(hint, "(" + " | ".join(dict.fromkeys(literals)) + ") space"), frozenset(made)

    def _typed(self, kind: str, node: dict[str, Any], doc: int, path: str, hint: str, depth: int) -> str:
        if kind == "string":
            return self._string(node, path, hint)
        if kind in ("integer", "number"):
            return self._number(kind, node, path, hint)
        if kind == "array":
            return self._array(node, doc, path, hint, depth)
        if kind == "object":
            return self._object(node, doc, path, hint, depth)
        return self._primitive(kind)  # boolean, null

    def _string(self, node: dict[str, Any], path: str, hint: str) -> str:
        fmt = node.get("format")
        known_format = _FORMATS.get(fmt) if isinstance(fmt, str) else None
        lengths = [keyword for keyword in ("minLength", "maxLength") if keyword in node]
        if "pattern" in node:
            if lengths or known_format:
                raise SchemaError(f"{_at(path)}'{lengths[0] if lengths else 'format'}' beside 'pattern' is not supported: "
                                  "write it into the pattern")
            body = pattern_rule(node["pattern"], _at(path))
            self._primitive("space")
            return self._new_rule(hint, r'"\"" ' + body + r' "\"" space')
        if known_format:
            if lengths:
                raise SchemaError(f"{_at(path)}'{lengths[0]}' beside 'format' is not supported")
            return self._primitive(known_format)
        if not lengths:
            return self._primitive("string")
        low = _count(node, "minLength", 0, path)
        high = _count(node, "maxLength", None, path)
        if high is not None and high < low:
            raise SchemaError(f"{_at(path)}'minLength' {low} is more than 'maxLength' {high}")
        self._primitive("char")
        self._primitive("space")
        return self._new_rule(hint, r'"\"" ' + repeat("char", low, high) + r' "\"" space')

    def _number(self, kind: str, node: dict[str, Any], path: str, hint: str) -> str:
        bounds = [keyword for keyword in _NUMBER_BOUNDS if keyword in node]
        if not bounds:
            return self._primitive(kind)
        for keyword in bounds:
            value = node[keyword]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SchemaError(f"{_at(path)}'{keyword}' must be a number")
        self._primitive("space")
        if kind == "integer":
            low, high = -(10**MAX_INT_DIGITS - 1), 10**MAX_INT_DIGITS - 1
            for keyword in bounds:
                value = node[keyword]
                if keyword == "minimum":
                    low = max(low, math.ceil(value))
                elif keyword == "exclusiveMinimum":
                    low = max(low, math.floor(value) + 1)
                elif keyword == "maximum":
                    high = min(high, math.floor(value))
                else:
                    high = min(high, math.ceil(value) - 1)
            if low > high:
                raise SchemaError(f"{_at(path)}no integer is within its bounds ({', '.join(bounds)})")
            return self._new_rule(hint, "(" + integer_range(low, high) + ") space")
        # A number: whole-number bounds only (0 to 1, 1 to 5, ...), written without an exponent.
        ends: dict[str, tuple[int, bool]] = {}
        for keyword in bounds:
            value = node[keyword]
            if float(value) != int(value) or abs(value) > MAX_NUMBER_BOUND:
                raise SchemaError(f"{_at(path)}'{keyword}' {value} on a 'number' cannot be enforced by the grammar: "
                                  f"only whole-number bounds up to {MAX_NUMBER_BOUND:,} are")
            side = "low" if keyword in ("minimum", "exclusiveMinimum") else "high"
            bound = (int(value), keyword.startswith("exclusive"))
            # the tighter of two bounds on one side: further in, or as far and open
            tightness = (bound[0] if side == "low" else -bound[0], bound[1])
            if side not in ends or tightness > (ends[side][0] if side == "low" else -ends[side][0], ends[side][1]):
                ends[side] = bound
        low, low_open = ends.get("low", (None, False))
        high, high_open = ends.get("high", (None, False))
        body = number_range(low, low_open, high, high_open)
        if not body:
            raise SchemaError(f"{_at(path)}no number is within its bounds ({', '.join(bounds)})")
        return self._new_rule(hint, "(" + body + ") space")

    def _array(self, node: dict[str, Any], doc: int, path: str, hint: str, depth: int) -> str:
        low = _count(node, "minItems", 0, path)
        high = _count(node, "maxItems", None, path)
        if high is not None and high < low:
            raise SchemaError(f"{_at(path)}'minItems' {low} is more than 'maxItems' {high}")
        self._primitive("space")
        tuple_items = node.get("prefixItems", node.get("items") if isinstance(node.get("items"), list) else None)
        if tuple_items is not None:
            if not isinstance(tuple_items, list) or not tuple_items:
                raise SchemaError(f"{_at(path)}'prefixItems' must be a non-empty list of schemas")
            count = len(tuple_items)
            if not low <= count <= (high if high is not None else count):
                raise SchemaError(f"{_at(path)}a tuple of {count} items does not fit 'minItems'/'maxItems'")
            key = "prefixItems" if "prefixItems" in node else "items"
            rules = [self._visit(item, doc, f"{path}/{key}/{index}", f"{hint}-{index}", depth + 1)[0]
                     for index, item in enumerate(tuple_items)]
            return self._new_rule(hint, '"[" space ' + ' "," space '.join(rules) + ' "]" space')
        item = node.get("items", True)
        item_rule = self._visit(item, doc, f"{path}/items", f"{hint}-item", depth + 1)[0]
        if high == 0:
            return self._new_rule(hint, '"[" space "]" space')
        more = repeat(f'"," space {item_rule}', max(low - 1, 0), None if high is None else high - 1, group=True)
        body = f"{item_rule} {more}".strip()
        return self._new_rule(hint, '"[" space ' + (f"( {body} )?" if low == 0 else body) + ' "]" space')

    def _object(self, node: dict[str, Any], doc: int, path: str, hint: str, depth: int) -> str:
        properties = node.get("properties", {})
        required = node.get("required", [])
        extra = node.get("additionalProperties", True)
        if not isinstance(properties, dict):
            raise SchemaError(f"{_at(path)}'properties' must be an object")
        if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
            raise SchemaError(f"{_at(path)}'required' must be a list of property names")
        missing = [name for name in required if name not in properties]
        if missing:
            raise SchemaError(f"{_at(path)}'required' names '{one_line(missing[0])}', which is not among its properties")
        self._primitive("space")
        if not properties and "properties" in node:
            return self._new_rule(hint, '"{" space "}" space')  # declared properties only: none
        if not properties:
            if extra is True:
                return self._primitive("object")
            if extra is False:
                return self._new_rule(hint, '"{" space "}" space')
            value = self._visit(extra, doc, f"{path}/additionalProperties", f"{hint}-value", depth + 1)[0]
            self._primitive("string")
            pair = f'string ":" space {value}'
            return self._new_rule(hint, '"{" space ( ' + pair + ' ( "," space ' + pair + ' )* )? "}" space')
        # Declared properties only: extra ones are never required, so leaving them out is always valid.
        pairs: dict[str, str] = {}
        for name, schema in properties.items():
            key = _json_text(name, f"{path}/properties")
            value = self._visit(schema, doc, f"{path}/properties/{_pointer(name)}", f"{hint}-{name}", depth + 1)[0]
            pairs[name] = f'{gbnf_literal(key)} space ":" space {value}'
        wanted = list(dict.fromkeys(required))
        optional = [name for name in properties if name not in wanted]
        body = ' "," space '.join(pairs[name] for name in wanted)
        if optional and wanted:
            body += " " + " ".join(f'( "," space {pairs[name]} )?' for name in optional)
        elif optional:
            # Any subset in order: start at one of them, then each later one optionally.
            rest = ""
            starts = []
            for index, name in reversed(list(enumerate(optional))):
                starts.append(f"{pairs[name]} {rest}".strip())
                if index > 0:
                    rest = self._new_rule(f"{hint}-{name}-rest", f'( "," space {pairs[name]} )? {rest}'.strip())
            body = "( " + " | ".join(reversed(starts)) + " )?"
        return self._new_rule(hint, '"{" space ' + body + ' "}" space')


# ------------------------------------------------------------------------------------------------
# Pieces


def repeat(item: str, low: int, high: int | None, group: bool = False) -> str:
    """GBNF for `item` repeated low..high times (high None: no maximum)."""
    element = f"( {item} )" if group else item
    if high == 0:
        return ""
    if (low, high) == (0, None):
        return f"{element}*"
    if (low, high) == (1, None):
        return f"{element}+"
    if (low, high) == (0, 1):
        return f"{element}?"
    if low == high:
        return f"{element}{{{low}}}" if low != 1 else element
    return f"{element}{{{low},{'' if high is None else high}}}"


def integer_range(low: int, high: int) -> str:
    """GBNF for the JSON integers low..high (no leading zeros), as alternatives."""
    parts = []
    if low < 0:
        negative_high = min(high, -1)
        parts.append('"-" (' + _natural_range(-negative_high, -low) + ")")
        low = 0
    if high >= 0 and low <= high:
        parts.append(_natural_range(low, high))
    return " | ".join(parts)


def number_range(low: int | None, low_open: bool, high: int | None, high_open: bool) -> str:
    """GBNF for JSON numbers (no exponent) between whole-number bounds (None: none; open: the bound
    itself excluded), or "" when there are none. At most 15 significant digits, so that the double
    a parser reads stays on the right side of the bound."""
    if low is not None and low >= 0:
        return _magnitudes(low, low_open, high, high_open)
    if high is not None and high <= 0:
        body = _magnitudes(-high, high_open, None if low is None else -low, low_open)
        return f'"-" ({body})' if body else ""
    # Below zero and above: "-" magnitudes up to |low|, and magnitudes up to high.
    negative = _magnitudes(0, True, None if low is None else -low, low_open)
    positive = _magnitudes(0, False, high, high_open)
    return " | ".join(part for part in (f'"-" ({negative})' if negative else "", positive) if part)


def _magnitudes(low: int, low_open: bool, high: int | None, high_open: bool) -> str:
    """Non-negative decimals m with low <(=) m <(=) high (high None: up to 16 integer digits)."""
    top = high if high is not None else 10**MAX_INT_DIGITS - 1
    if low > top or (low == top and (low_open or (high_open and high is not None))):
        return ""
    near = ([len(str(low))] if low_open else []) + ([len(str(high))] if high is not None else [])  # bounds a fraction could round onto
    digits = max(1, 15 - max(near)) if near else 15
    fraction = f'"." [0-9]{{1,{digits}}}'
    nonzero = f'"." [0-9]{{0,{digits - 1}}} [1-9]' if digits > 1 else '"." [1-9]'
    if low == top:
        return f'"{low}"'
    parts = [f'"{low}" {nonzero}' if low_open else f'"{low}" ({fraction})?']
    if low + 1 <= top - 1:
        parts.append(f"({_natural_range(low + 1, top - 1)}) ({fraction})?")
    if not (high_open and high is not None):
        parts.append(f'"{top}"' if high is not None else f'"{top}" ({fraction})?')
    return " | ".join(parts)


def _natural_range(low: int, high: int) -> str:
    """0 <= low <= high: each digit count on its own, then digit by digit."""
    parts = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        end = min(high, 10**digits - 1)
        if start <= end:
            parts.append(_same_length(str(start), str(end)))
    return " | ".join(parts)


def _same_length(low: str, high: str) -> str:
    """Digit strings of one length from low to high."""
    if len(low) == 1:
        return f"[{low}-{high}]" if low != high else f'"{low}"'
    if low[0] == high[0]:
        return f'"{low[0]}" (' + _same_length(low[1:], high[1:]) + ")"
    rest = len(low) - 1
    nines, zeros = "9" * rest, "0" * rest
    parts = []
    first = int(low[0])
    if low[1:] != zeros:
        parts.append(f'"{low[0]}" (' + _same_length(low[1:], nines) + ")")
        first += 1
    last = int(high[0])
    if high[1:] != nines:
        last -= 1
    if first <= last:
        parts.append((f"[{first}-{last}]" if first != last else f'"{first}"') + f" [0-9]{{{rest}}}")
    if high[1:] != nines:
        parts.append(f'"{high[0]}" (' + _same_length(zeros, high[1:]) + ")")
    return " | ".join(parts)


_NOTHING = object()


def _pointed(root: Any, ref: str) -> Any:
    """What a local $ref ('#' or '#/a/b', JSON Pointer escapes and %-encoding undone) points at in
    `root`, or _NOTHING."""
    if ref != "#" and not ref.startswith("#/"):
        return _NOTHING
    target = root
    for part in ref[2:].split("/") if ref != "#" else []:
        part = urllib.parse.unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return _NOTHING
    return target


def _non_empty(value: Any, keyword: str, path: str) -> None:
    if not isinstance(value, list):
        raise SchemaError(f"{_at(path)}'{keyword}' must be a list, not {_kind(value)}")
    if not value:
        raise SchemaError(f"{_at(path)}an empty '{keyword}' matches no value")


def _count(node: dict[str, Any], keyword: str, default: int | None, path: str) -> Any:
    if keyword not in node:
        return default
    value = node[keyword]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaError(f"{_at(path)}'{keyword}' must be a whole number of 0 or more")
    if value > MAX_REPEAT:
        raise SchemaError(f"{_at(path)}'{keyword}' {value} is more than the grammar allows ({MAX_REPEAT})")
    return value


def _types(node: dict[str, Any], path: str) -> list[str]:
    """The kinds to write: `type`, or a kind its keywords imply, or all (each writes a valid value)."""
    kind = node.get("type")
    if kind is None:
        if any(keyword in node for keyword in _OBJECT_KEYWORDS):
            return ["object"]
        if any(keyword in node for keyword in _ARRAY_KEYWORDS):
            return ["array"]
        if any(keyword in node for keyword in _STRING_KEYWORDS):
            return ["string"]
        if any(keyword in node for keyword in _NUMBER_BOUNDS):
            return ["integer"]
        return ["object", "array", "string", "number", "boolean", "null"]
    kinds = kind if isinstance(kind, list) else [kind]
    if not kinds or not all(isinstance(k, str) and k in TYPES for k in kinds):
        raise SchemaError(f"{_at(path)}'type' must be one of {', '.join(TYPES)} (or a list of them), not {one_line(json.dumps(kind))}")
    if "number" in kinds and "integer" in kinds:
        kinds = [k for k in kinds if k != "integer"]
    return list(dict.fromkeys(kinds))


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _constants(schema: Any) -> list[str] | None:
    """The values a const/enum schema allows, as canonical JSON, or None for any other schema."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return [json.dumps(schema["const"], sort_keys=True)]
    if isinstance(schema.get("enum"), list):
        return [json.dumps(value, sort_keys=True) for value in schema["enum"]]
    return None


def _json_text(value: Any, path: str) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        raise SchemaError(f"{_at(path)}a value or property name is not valid JSON text (an unpaired surrogate?)") from None
    return text


def _pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _at(path: str) -> str:
    return f"at {one_line(path, 80)}: " if path else ""


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ------------------------------------------------------------------------------------------------
# Patterns: a regular expression (as Python's re reads it: jsonschema checks with re.search) as the
# GBNF for the *JSON text* of strings that match it: a '"' in the pattern is '\"' in the text.

_MAX_CODE = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
_DIGITS = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(0x09, 0x0D), (0x20, 0x20)]
_ASCII = [(0x00, 0x7F)]
_CLASS_ESCAPES = {"d": _DIGITS, "w": _WORD, "s": _SPACE}
_CHAR_ESCAPES = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "a": 0x07}


def pattern_rule(pattern: Any, where: str = "") -> str:
    """GBNF for the JSON string content of strings matching `pattern` (re.search semantics)."""
    if not isinstance(pattern, str):
        raise SchemaError(f"{where}'pattern' must be a string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise SchemaError(f"{where}'pattern' is longer than {MAX_PATTERN_CHARS} characters")
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise SchemaError(f"{where}'pattern' is not a valid regular expression: {exc}") from None
    return _PatternParser(pattern, where).parse()


class _PatternParser:
    def __init__(self, pattern: str, where: str) -> None:
        self.text = pattern
        self.pos = 0
        self.where = where
        self.depth = 0

    def fail(self, what: str) -> SchemaError:
        return SchemaError(f"{self.where}'pattern' {one_line(self.text, 60)!r}: {what}")

    def at(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def parse(self) -> str:
        body = self.alternatives(top=True)
        if self.pos != len(self.text):
            raise self.fail(f"unexpected '{self.at()}' at {self.pos}")
        return body or '""'

    def alternatives(self, top: bool) -> str:
        sequences = [self.sequence(top)]
        while self.at() == "|":
            self.pos += 1
            sequences.append(self.sequence(top))
        if len(sequences) == 1:
            return sequences[0]
        return " | ".join(sequence or '""' for sequence in sequences)

    def sequence(self, top: bool) -> str:
        items: list[str] = []
        start = self.pos
        while self.at() not in ("", "|", ")"):
            char = self.at()
            if char == "^":
                if not (top and self.pos == start):
                    raise self.fail("'^' is supported only at the start of the pattern or of a top-level alternative")
                self.pos += 1
                continue
            if char == "$":
                self.pos += 1
                if not (top and self.at() in ("", "|")):
                    raise self.fail("'$' is supported only at the end of the pattern or of a top-level alternative")
                continue
            atom = self.atom()
            items.append(self.quantified(atom))
        return " ".join(item for item in items if item)

    def atom(self) -> str:
        char = self.at()
        if char == "(":
            self.pos += 1
            if self.at() == "?":
                if self.text.startswith("?:", self.pos):
                    self.pos += 2
                elif self.text.startswith("?P<", self.pos):
                    end = self.text.find(">", self.pos)
                    self.pos = end + 1
                else:
                    raise self.fail("lookarounds, inline flags and conditionals are not supported")
            self.depth += 1
            if self.depth > 32:
                raise self.fail("groups are nested more than 32 deep")
            inner = self.alternatives(top=False)
            self.depth -= 1
            if self.at() != ")":
                raise self.fail("unbalanced parentheses")
            self.pos += 1
            return f"( {inner or chr(34) * 2} )"
        if char == "[":
            return _json_chars(self.char_class())
        if char == ".":
            self.pos += 1
            return _json_chars(_complement([(0x0A, 0x0A)]))
        if char == "\\":
            return _json_chars(self.escape(in_class=False))
        if char in "*+?":
            raise self.fail(f"nothing to repeat at {self.pos}")
        if char == "{" and self.quantifier_at() is not None:
            raise self.fail(f"nothing to repeat at {self.pos}")
        self.pos += 1
        return _json_chars([(ord(char), ord(char))])

    def quantifier_at(self) -> tuple[int, int | None, int] | None:
        """(low, high, length) when a {m}, {m,}, {,n} or {m,n} quantifier starts here."""
        match = re.match(r"\{(\d*)(,?)(\d*)\}", self.text[self.pos:])
        if not match or not (match.group(1) or match.group(2)):  # '{}' is two characters, as in Python
            return None
        low = int(match.group(1)) if match.group(1) else 0
        high: int | None = low if not match.group(2) else (int(match.group(3)) if match.group(3) else None)
        return low, high, match.end()

    def quantified(self, atom: str) -> str:
        char = self.at()
        if char in ("*", "+", "?"):
            self.pos += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        elif char == "{" and (found := self.quantifier_at()) is not None:
            low, high, length = found
            self.pos += length
            if low > MAX_REPEAT or (high is not None and high > MAX_REPEAT):
                raise self.fail(f"a repetition of more than {MAX_REPEAT}")
            if high is not None and high < low:
                raise self.fail("a repetition's maximum is below its minimum")
        else:
            return atom
        if self.at() == "+":
            raise self.fail("possessive quantifiers are not supported")
        if self.at() == "?":
            self.pos += 1  # lazy: the same strings match as a whole
        return repeat(atom, low, high, group=True)

    def escape(self, in_class: bool) -> list[tuple[int, int]]:
        """The characters one backslash escape stands for (the position is past it after)."""
        kind = self.at(1)
        self.pos += 2
        if kind in _CLASS_ESCAPES:
            return list(_CLASS_ESCAPES[kind])  # ASCII only: Python's \d, \w, \s also match more
        if kind in ("D", "W", "S"):
            return _intersect(_complement(_CLASS_ESCAPES[kind.lower()]), _ASCII)  # ASCII only: a subset of what matches
        if kind in _CHAR_ESCAPES:
            return [(_CHAR_ESCAPES[kind],) * 2]
        if kind == "b" and in_class:
            return [(0x08, 0x08)]
        if kind in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[kind]
            code = int(self.text[self.pos:self.pos + width], 16)
            self.pos += width
            return [(code, code)]
        if kind == "0" or (kind in "01234567" and in_class):
            digits = re.match(r"[0-7]{0,2}", self.text[self.pos:])
            length = digits.end() if digits else 0
            code = int(kind + self.text[self.pos:self.pos + length], 8)
            self.pos += length
            return [(code, code)]
        if kind.isalnum():
            raise self.fail(f"'\\{kind}' (backreferences, anchors and word boundaries) is not supported")
        return [(ord(kind), ord(kind))]

    def char_class(self) -> list[tuple[int, int]]:
        self.pos += 1
        negated = self.at() == "^"
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while self.at() != "]" or first:
            if self.at() == "":
                raise self.fail("unbalanced square brackets")
            first = False
            if self.at() == "\\":
                if negated and self.at(1) in "dwsDWS":
                    raise self.fail(f"'\\{self.at(1)}' inside '[^...]' is not supported")
                piece = self.escape(in_class=True)
            else:
                piece = [(ord(self.at()), ord(self.at()))]
                self.pos += 1
            if len(piece) == 1 and piece[0][0] == piece[0][1] and self.at() == "-" and self.at(1) not in ("]", ""):
                self.pos += 1
                if self.at() == "\\":
                    end = self.escape(in_class=True)
                    if len(end) != 1 or end[0][0] != end[0][1]:
                        raise self.fail("a range ends in a class escape")
                    high = end[0][0]
                else:
                    high = ord(self.at())
                    self.pos += 1
                ranges.append((piece[0][0], high))
            else:
                ranges.extend(piece)
        self.pos += 1
        return _complement(ranges) if negated else _normal(ranges)


def _normal(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, start = [], 0
    for low, high in _normal(ranges):
        if low > start:
            out.append((start, low - 1))
        start = high + 1
    if start <= _MAX_CODE:
        out.append((start, _MAX_CODE))
    return out


def _intersect(ranges: list[tuple[int, int]], within: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return _normal([(max(a, c), min(b, d)) for a, b in ranges for c, d in within if max(a, c) <= min(b, d)])


def _json_chars(ranges: list[tuple[int, int]]) -> str:
    """GBNF for one character from `ranges` as it appears inside a JSON string."""
    ranges = _normal(ranges)
    plain = _intersect(ranges, [(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x7E), (0x80, 0xD7FF), (0xE000, _MAX_CODE)])
    parts = []
    if plain:
        if len(plain) == 1 and plain[0][0] == plain[0][1]:
            parts.append(gbnf_literal(chr(plain[0][0])))
        else:
            parts.append("[" + "".join(escape_code(a) if a == b else f"{escape_code(a)}-{escape_code(b)}" for a, b in plain) + "]")
    members: set[int] = set()
    for low, high in _intersect(ranges, [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]):
        members.update(range(low, high + 1))
    common = members & {0x22, 0x5C, 0x0A, 0x09, 0x0D}
    if plain or common:
        members = common  # other control characters are left out: fewer choices, all still match
    short = {0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r", 0x08: "\\b", 0x0C: "\\f"}
    for code in sorted(members):
        parts.append(gbnf_literal(short.get(code, f"\\u{code:04x}")))
    if not parts:
        raise SchemaError("'pattern' has a character class that matches no character")
    return parts[0] if len(parts) == 1 else "( " + " | ".join(parts) + " )"
