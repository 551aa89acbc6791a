"""Check a GBNF grammar before llama.cpp sees it. Pure: no I/O, no llama_cpp.

llama.cpp's parser reports a bad grammar only by returning NULL, which llama-cpp-python 0.3.36
hands straight to the sampler chain (a segfault), and it prints the whole grammar to stderr. So
edgellm parses the same syntax first, a port of the parser in llama.cpp's src/llama-grammar.cpp
(same tokens, same escapes, same repetition limits), and refuses with a one-line reason saying
where. It also refuses what would make llama.cpp's own checks blow up: nesting deep enough to
overflow its recursive parser, and rule graphs whose left-recursion check (a recursive walk
without memory, in src/llama-grammar.cpp) would take exponential time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from edgellm.errors import GrammarError

MAX_GRAMMAR_BYTES = 256 * 1024  # JSON-schema grammars are a few KiB; llama.cpp's examples < 10 KiB
MAX_NESTING = 100  # parentheses: each level is a C++ stack frame in llama.cpp's parser
MAX_RULES = 10_000  # named, grouped and repetition-generated rules together
# llama.cpp's MAX_REPETITION_THRESHOLD: larger {m,n} repetitions are refused there too.
MAX_REPETITION_THRESHOLD = 2000
# Calls llama.cpp's left-recursion check would make (it revisits shared rules every time).
MAX_LEFT_RECURSION_WORK = 1_000_000
# Elements llama.cpp would hold after expanding repetitions: "<100 KB literal>"{0,2000} is 200M
# (GBs in llama.cpp, and 30 s to check here before this limit).
MAX_EXPANDED_ELEMENTS = 500_000

_HEX_WIDTH = {"x": 2, "u": 4, "U": 8}
_SIMPLE_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}

# An element of a rule, as llama.cpp stores it: a reference to another rule, a terminal
# (characters or a token), or the end of one alternative.
REF, TERMINAL, ALT = "ref", "terminal", "alt"


@dataclass
class ParsedGrammar:
    """Rules by id; each rule is its elements with ALT between alternatives (llama.cpp's layout)."""

    names: dict[str, int] = field(default_factory=dict)
    rules: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)  # `<name>` tokens: the caller checks them
    copied: int = 0  # elements repetitions copied (llama.cpp copies them too, in memory)

    def symbol(self, name: str) -> int:
        return self.names.setdefault(name, len(self.names))

    def generated(self, base: str) -> int:
        rule_id = len(self.names)
        self.names[f"{base}_{rule_id}"] = rule_id
        if len(self.names) > MAX_RULES:
            raise _Fail(f"more than {MAX_RULES} rules (repetitions and groups count)")
        return rule_id


class _Fail(Exception):
    """A parse failure, with llama.cpp's wording where it has one."""


def _is_word(char: str) -> bool:
    # llama.cpp's is_word_char: letters, digits and '-' (no underscore).
    return ("a" <= char <= "z") or ("A" <= char <= "Z") or ("0" <= char <= "9") or char == "-"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.grammar = ParsedGrammar()
        self.depth = 0

    # -- characters --

    def at(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def space(self, pos: int, newline_ok: bool) -> int:
        while True:
            char = self.at(pos)
            if char == "#":
                while self.at(pos) not in ("", "\r", "\n"):
                    pos += 1
            elif char in (" ", "\t") or (newline_ok and char in ("\r", "\n")):
                pos += 1
            else:
                return pos

    def name(self, pos: int) -> int:
        end = pos
        while _is_word(self.at(end)):
            end += 1
        if end == pos:
            raise _Fail(f"expecting name at {self.where(pos)}")
        return end

    def integer(self, pos: int) -> tuple[int, int]:
        end = pos
        while self.at(end).isdigit() and self.at(end).isascii():
            end += 1
        if end == pos:
            raise _Fail(f"expecting an int at {self.where(pos)}")
        return int(self.text[pos:end]), end

    def char(self, pos: int) -> int:
        """Skip one (possibly escaped) character; returns the position after it."""
        char = self.at(pos)
        if char == "":
            raise _Fail("unexpected end of input")
        if char != "\\":
            return pos + 1
        kind = self.at(pos + 1)
        if kind in _HEX_WIDTH:
            width = _HEX_WIDTH[kind]
            digits = self.text[pos + 2 : pos + 2 + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise _Fail(f"expecting {width} hex chars at {self.where(pos + 2)}")
            return pos + 2 + width
        if kind in _SIMPLE_ESCAPES:
            return pos + 2
        raise _Fail(f"unknown escape at {self.where(pos)}")

    def where(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        snippet = self.text[pos : pos + 20].split("\n")[0]
        return f"line {line}, column {column}" + (f" ('{snippet}')" if snippet else " (end of input)")

    # -- structure --

    def parse(self) -> ParsedGrammar:
        pos = self.space(0, True)
        while pos < len(self.text):
            pos = self.rule(pos)
        return self.grammar

    def rule(self, pos: int) -> int:
        end = self.name(pos)
        name = self.text[pos:end]
        rule_id = self.grammar.symbol(name)
        pos = self.space(end, False)
        if self.text[pos : pos + 3] != "::=":
            raise _Fail(f"expecting ::= at {self.where(pos)}")
        pos = self.alternates(self.space(pos + 3, True), name, rule_id, nested=False)
        if self.at(pos) == "\r":
            pos += 2 if self.at(pos + 1) == "\n" else 1
        elif self.at(pos) == "\n":
            pos += 1
        elif pos < len(self.text):
            raise _Fail(f"expecting newline or end at {self.where(pos)}")
        return self.space(pos, True)

    def alternates(self, pos: int, name: str, rule_id: int, nested: bool) -> int:
        elements: list[tuple[str, int]] = []
        pos = self.sequence(pos, name, elements, nested)
        while self.at(pos) == "|":
            elements.append((ALT, 0))
            pos = self.sequence(self.space(pos + 1, True), name, elements, nested)
        self.grammar.rules[rule_id] = elements
        return pos

    def sequence(self, pos: int, name: str, elements: list[tuple[str, int]], nested: bool) -> int:
        last_start = len(elements)
        n_prev_rules = 1

        def repeat(low: int, high: int | None) -> None:
            nonlocal n_prev_rules
            if last_start == len(elements):
                raise _Fail(f"expecting preceding item to */+/?/{{ at {self.where(pos)}")
            total = high if high else (low if low else 1)
            if n_prev_rules * total > MAX_REPETITION_THRESHOLD:
                raise _Fail(f"the repetition at {self.where(pos)} makes more than {MAX_REPETITION_THRESHOLD} rules")
            previous = elements[last_start:]
            optional = 1 if high is None else high - low
            self.grammar.copied += len(previous) * (max(low - 1, 0) + optional)
            if self.grammar.copied > MAX_EXPANDED_ELEMENTS:
                raise _Fail(f"the repetition at {self.where(pos)} expands the grammar past {MAX_EXPANDED_ELEMENTS:,} elements")
            if low == 0:
                del elements[last_start:]
            else:
                for _ in range(low - 1):
                    elements.extend(previous)
            last_rule = 0
            for index in range(optional):
                rule_id = self.grammar.generated(name)
                rule = list(previous)
                if index > 0 or high is None:
                    rule.append((REF, rule_id if high is None else last_rule))
                rule += [(ALT, 0)]
                self.grammar.rules[rule_id] = rule
                last_rule = rule_id
            if optional > 0:
                elements.append((REF, last_rule))
            n_prev_rules *= total

        while pos < len(self.text):
            char = self.text[pos]
            if char == '"':
                pos += 1
                last_start, n_prev_rules = len(elements), 1
                while self.at(pos) != '"':
                    pos = self.char(pos)
                    elements.append((TERMINAL, 0))
                pos = self.space(pos + 1, nested)
            elif char == "[":
                pos += 1
                if self.at(pos) == "^":
                    pos += 1
                last_start, n_prev_rules = len(elements), 1
                while self.at(pos) != "]":
                    pos = self.char(pos)
                    if len(elements) == last_start:  # llama.cpp adds nothing for an empty class
                        elements.append((TERMINAL, 0))
                    if self.at(pos) == "-" and self.at(pos + 1) != "]":
                        if self.at(pos + 1) == "":
                            raise _Fail("unexpected end of input")
                        pos = self.char(pos + 1)
                pos = self.space(pos + 1, nested)
            elif char in ("<", "!"):
                if char == "!":
                    pos += 1
                pos = self.token(pos)
                last_start, n_prev_rules = len(elements), 1
                elements.append((TERMINAL, 0))
                pos = self.space(pos, nested)
            elif _is_word(char):
                end = self.name(pos)
                ref = self.grammar.symbol(self.text[pos:end])
                pos = self.space(end, nested)
                last_start, n_prev_rules = len(elements), 1
                elements.append((REF, ref))
            elif char == "(":
                self.depth += 1
                if self.depth > MAX_NESTING:
                    raise _Fail(f"parentheses nested deeper than {MAX_NESTING} at {self.where(pos)}")
                pos = self.space(pos + 1, True)
                before = len(self.grammar.names)
                sub_rule = self.grammar.generated(name)
                pos = self.alternates(pos, name, sub_rule, nested=True)
                n_prev_rules = max(1, len(self.grammar.names) - before)
                last_start = len(elements)
                elements.append((REF, sub_rule))
                if self.at(pos) != ")":
                    raise _Fail(f"expecting ')' at {self.where(pos)}")
                self.depth -= 1
                pos = self.space(pos + 1, nested)
            elif char == ".":
                last_start, n_prev_rules = len(elements), 1
                elements.append((TERMINAL, 0))
                pos = self.space(pos + 1, nested)
            elif char in "*+?":
                pos = self.space(pos + 1, nested)
                repeat(*{"*": (0, None), "+": (1, None), "?": (0, 1)}[char])
            elif char == "{":
                pos = self.space(pos + 1, nested)
                low, pos = self.integer(pos)
                pos = self.space(pos, nested)
                high: int | None = low
                if self.at(pos) == "}":
                    pos = self.space(pos + 1, nested)
                elif self.at(pos) == ",":
                    pos = self.space(pos + 1, nested)
                    high = None
                    if self.at(pos).isdigit():
                        high, pos = self.integer(pos)
                        pos = self.space(pos, nested)
                    if self.at(pos) != "}":
                        raise _Fail(f"expecting '}}' at {self.where(pos)}")
                    pos = self.space(pos + 1, nested)
                else:
                    raise _Fail(f"expecting ',' at {self.where(pos)}")
                if low > MAX_REPETITION_THRESHOLD:
                    raise _Fail(f"{low} repetitions is more than llama.cpp allows ({MAX_REPETITION_THRESHOLD})")
                if high is not None and high > MAX_REPETITION_THRESHOLD:
                    high = None  # llama.cpp treats a huge maximum as "no maximum"
                if high is not None and high < low:
                    raise _Fail(f"a repetition's maximum is below its minimum at {self.where(pos)}")
                repeat(low, high)
            else:
                break
        return pos

    def token(self, pos: int) -> int:
        if self.at(pos) != "<":
            raise _Fail(f"expecting '<' at {self.where(pos)}")
        pos += 1
        if self.at(pos) == "[":
            value, end = self.integer(pos + 1)
            if value > 0xFFFFFFFF:
                raise _Fail(f"token id {value} is too big")
            if self.at(end) != "]" or self.at(end + 1) != ">":
                raise _Fail(f"expecting ']>' at {self.where(end)}")
            return end + 2
        end = self.text.find(">", pos)
        if end < 0:
            raise _Fail(f"expecting '>' at {self.where(len(self.text))}")
        self.grammar.tokens.append(self.text[pos - 1 : end + 1])
        return end + 1


def _alternatives(rule: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    out: list[list[tuple[str, int]]] = [[]]
    for element in rule:
        if element[0] == ALT:
            out.append([])
        else:
            out[-1].append(element)
    return out


def _check_structure(grammar: ParsedGrammar, root: str) -> None:
    names_by_id = {rule_id: name for name, rule_id in grammar.names.items()}
    for rule_id, name in names_by_id.items():
        if rule_id not in grammar.rules:
            raise _Fail(f"rule '{name}' is used but never defined")
    if root not in grammar.names:
        raise _Fail(f"the grammar has no '{root}' rule")
    alternatives = {rule_id: _alternatives(rule) for rule_id, rule in grammar.rules.items()}
    # Which rules can match the empty string, followed through references. llama.cpp's own check
    # only looks for a literally empty alternative, so it misses `a ::= ws a` with `ws ::= " "*`,
    # and then expands that rule forever at the first token (std::bad_alloc, an abort).
    may_be_empty = _nullable(alternatives)

    # Edges from a rule to the rules it can start with: (target, quirky, grows). `quirky`: llama.cpp's
    # own left-recursion walk follows it; `grows`: more of the alternative follows the reference, so
    # expanding it pushes a new element on llama.cpp's stack.
    edges: dict[int, list[tuple[int, bool, bool]]] = {}
    literally_empty = {rule_id: any(not alt for alt in alts) for rule_id, alts in alternatives.items()}
    for rule_id, alts in alternatives.items():
        out = edges.setdefault(rule_id, [])
        for alt in alts:
            quirky = True
            for index, (kind, value) in enumerate(alt):
                if kind != REF:
                    break
                out.append((value, quirky, index + 1 < len(alt)))
                quirky = quirky and literally_empty[value]
                if not may_be_empty[value]:
                    break

    def cycles(follow: Callable[[bool, bool], bool], needs_growth: bool) -> int | None:
        """A rule on a cycle of followed edges (with a growing edge, if asked), else None."""
        component = strongly_connected({r: [t for t, q, g in es if follow(q, g)] for r, es in edges.items()})
        for rule_id, out in edges.items():
            for target, quirky, grows in out:
                if follow(quirky, grows) and component[rule_id] == component[target] and (grows or not needs_growth):
                    return rule_id
        return None

    looped = cycles(lambda quirky, _: quirky, needs_growth=False)
    if looped is not None:
        raise _Fail(f"left recursion: rule '{names_by_id[looped]}' can start with itself (llama.cpp does not support it)")
    looped = cycles(lambda _, __: True, needs_growth=True)
    if looped is not None:
        raise _Fail(
            f"left recursion: rule '{names_by_id[looped]}' can start with itself through rules that match "
            "nothing (llama.cpp would expand it until memory runs out)"
        )
    # llama.cpp's walk revisits a shared rule every time it is reached: count its calls (the
    # quirky edges form a DAG now) so a grammar cannot make it run for hours.
    work: dict[int, int] = {}
    for rule_id in _postorder({r: [t for t, q, _ in es if q] for r, es in edges.items()}):
        work[rule_id] = min(1 + sum(work[t] for t, q, _ in edges[rule_id] if q), MAX_LEFT_RECURSION_WORK + 1)
    if sum(work.values()) > MAX_LEFT_RECURSION_WORK:
        raise _Fail("the grammar's rules branch into each other too much for llama.cpp to check in reasonable time")


def _nullable(alternatives: dict[int, list[list[tuple[str, int]]]]) -> dict[int, bool]:
    """Which rules can match the empty string: a worklist, linear in the grammar's size (a
    fixpoint over all rules took seconds on a chain of 2,000 rules, one rule per pass)."""
    nullable = {rule_id: False for rule_id in alternatives}
    waiting: list[int] = []  # per alternative: references not yet known to match nothing
    owner: list[int] = []
    users: dict[int, list[int]] = {}
    ready: list[int] = []
    for rule_id, alts in alternatives.items():
        for alt in alts:
            if any(kind != REF for kind, _ in alt):
                continue  # a terminal: never empty
            index = len(waiting)
            waiting.append(len(alt))
            owner.append(rule_id)
            for _, value in alt:
                users.setdefault(value, []).append(index)
            if not alt:
                ready.append(rule_id)
    while ready:
        rule_id = ready.pop()
        if nullable[rule_id]:
            continue
        nullable[rule_id] = True
        for index in users.get(rule_id, []):
            waiting[index] -= 1
            if waiting[index] == 0:
                ready.append(owner[index])
    return nullable


def _postorder(graph: dict[int, list[int]]) -> list[int]:
    """Nodes of an acyclic graph, each after everything it points to (iterative)."""
    order: list[int] = []
    done: set[int] = set()
    for start in graph:
        if start in done:
            continue
        done.add(start)
        stack = [(start, iter(graph[start]))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                order.append(node)
            elif child not in done:
                done.add(child)
                stack.append((child, iter(graph[child])))
    return order


Node = TypeVar("Node", bound=Hashable)


def strongly_connected(graph: Mapping[Node, Iterable[Node]]) -> dict[Node, Node]:
    """Strongly connected components (Tarjan's algorithm, iterative): node -> its component's root
    node. Rule cycles here; tests/import_graph.py finds import circles with it too."""
    index: dict[Node, int] = {}
    low: dict[Node, int] = {}
    on_stack: set[Node] = set()
    stack: list[Node] = []
    component: dict[Node, Node] = {}
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component[member] = node
                    if member == node:
                        break
    return component


def check_grammar(text: str, root: str = "root") -> ParsedGrammar:
    """Parse GBNF as llama.cpp would; raise GrammarError with a one-line reason if llama.cpp would refuse it."""
    if "\x00" in text:
        raise GrammarError("invalid grammar: it contains a NUL character")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise GrammarError("invalid grammar: it is not valid Unicode (an unpaired surrogate)") from None
    if size > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"invalid grammar: it is larger than {MAX_GRAMMAR_BYTES // 1024} KiB")
    if not text.strip():
        raise GrammarError("invalid grammar: it is empty")
    try:
        grammar = _Parser(text).parse()
        if not grammar.rules:
            raise _Fail("it has no rules")
        _check_structure(grammar, root)
    except _Fail as exc:
        raise GrammarError(f"invalid grammar: {exc}") from None
    return grammar


# ------------------------------------------------------------------------------------------------
# Reading text the way the grammar read it

_UTF8_LENGTH = (1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4)  # by the lead byte's high nibble


class GrammarTextDecoder:
    """Token bytes -> text exactly as llama.cpp's grammar decodes them (llama-grammar.cpp,
    decode_utf8), for text generated under a grammar.

    Python's UTF-8 decoder and the grammar's disagree on malformed bytes: inside one token the
    grammar does not check continuation bytes, so C0 A2 is '"' to it, two U+FFFD to Python. A
    model can write such bytes (random weights often do), and then the JSON the grammar closed
    would not parse, or a string it kept to maxLength would be longer. Decoding as the grammar did
    keeps the text and the grammar's view the same, so what it allowed parses and validates.
    Code points that cannot be text (surrogates, above U+10FFFF) become U+FFFD, one for one.
    Same interface as codecs' incremental decoders: decode(data, final=False) -> str.
    """

    def __init__(self) -> None:
        self._value = 0
        self._remaining = 0

    def decode(self, data: bytes, final: bool = False) -> str:
        out: list[str] = []
        pos = 0
        if self._remaining > 0:
            while pos < len(data) and self._remaining > 0:
                byte = data[pos]
                if byte >> 6 != 2:  # the grammar refuses such a token; never seen under it
                    self._remaining = 0
                    out.append("\ufffd")
                    break
                self._value = (self._value << 6) + (byte & 0x3F)
                pos += 1
                self._remaining -= 1
            else:
                if self._remaining == 0:
                    out.append(_text_of(self._value))
        while pos < len(data):
            byte = data[pos]
            remaining = _UTF8_LENGTH[byte >> 4] - 1
            pos += 1
            if remaining < 0:  # a stray continuation byte: refused by the grammar too
                out.append("\ufffd")
                continue
            value = byte & ((1 << (7 - remaining)) - 1)
            while pos < len(data) and remaining > 0:
                value = (value << 6) + (data[pos] & 0x3F)
                pos += 1
                remaining -= 1
            if remaining == 0:
                out.append(_text_of(value))
            else:
                self._value, self._remaining = value, remaining
        if final and self._remaining > 0:
            self._remaining = 0
            out.append("\ufffd")
        return "".join(out)


def _text_of(code_point: int) -> str:
    if 0xD800 <= code_point <= 0xDFFF or code_point > 0x10FFFF:
        return "\ufffd"
    return chr(code_point)


# ------------------------------------------------------------------------------------------------
# Writing GBNF


def gbnf_literal(text: str) -> str:
    """A GBNF string literal matching exactly `text`."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F or (code > 0x9F and not 0xD800 <= code <= 0xDFFF):
            out.append(char)
        else:
            out.append(escape_code(code))
    return '"' + "".join(out) + '"'


def escape_code(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02X}"
    if code < 0x10000:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"
