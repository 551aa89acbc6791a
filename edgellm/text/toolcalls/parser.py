"""Model text -> content and tool calls, fed in pieces as they are generated. Pure.

Before a call, text is content; a possible start of an opener at the end of a piece is held
back until the next piece decides it (markers arrive split across tokens). When an opener is
complete the parser stops and says so (`triggered`): the engine then writes the format's own
`forced_start` and constrains the rest with the call grammar, and calls `start_calls()`. From
there the text follows the format's layout exactly, so the parser reads names and streams each
call's arguments as fragments (OpenAI's `delta.tool_calls`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from edgellm.text.reasoning import held_prefix_length
from edgellm.text.toolcalls.formats import ToolFormat


@dataclass
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass
class ToolCallArguments:
    index: int
    text: str


@dataclass
class ToolCallEnd:
    """The call's arguments closed: they parse."""

    index: int


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""  # JSON text, as the model wrote it
    complete: bool = False  # the arguments closed (a reply cut by max_tokens leaves it open)

    def parsed_arguments(self) -> Any:
        return json.loads(self.arguments) if self.complete else None

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def to_json(self) -> dict[str, Any]:
        """One line for shell agents: {"name": ..., "arguments": {...}}."""
        return {"name": self.name, "arguments": self.parsed_arguments()}


ParserEvent = str | ToolCallStart | ToolCallArguments | ToolCallEnd
CallEvent = ToolCallStart | ToolCallArguments | ToolCallEnd


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class _ArgumentScanner:
    """Finds where a JSON object ends in streamed text: braces outside strings."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    started: bool = False

    def scan(self, text: str) -> int:
        """How many characters of `text` belong to the object; -1: all of them, and it is still open."""
        for i, char in enumerate(text):
            if not self.started:
                if char == "{":
                    self.started, self.depth = True, 1
                continue
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char == "{" or char == "[":
                self.depth += 1
            elif char == "}" or char == "]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return -1


@dataclass
class ToolCallParser:
    """Feed answer text; get content strings and call events. `calls` holds every call so far."""

    format: ToolFormat
    must_call: bool = False  # tool_choice required or named: no content before the call
    calls: list[ToolCall] = field(default_factory=list)
    triggered: str | None = None  # the opener the model wrote, until start_calls()
    _state: str = "content"  # content | name | arguments | after | between | done
    _buffer: str = ""
    _scanner: _ArgumentScanner = field(default_factory=_ArgumentScanner)

    def feed(self, text: str) -> list[ParserEvent]:
        self._buffer += text
        out: list[ParserEvent] = []
        while self._buffer:
            before = (self._state, len(self._buffer))
            getattr(self, "_" + self._state)(out)
            if (self._state, len(self._buffer)) == before or self.triggered is not None:
                break  # waiting for more text
        return out

    def start_calls(self) -> None:
        """The engine wrote `forced_start`: what follows is the first call's name. What the model
        wrote after its opener is dropped (the engine took that text back)."""
        self.triggered = None
        self._buffer = ""
        self._state = "name"

    def finish(self) -> list[ParserEvent]:
        """The end of generation: held content is content after all; an open call stays incomplete."""
        rest, self._buffer = self._buffer, ""
        self.triggered = None  # an opener the engine had no room left to act on is text
        return [rest] if self._state == "content" and rest else []

    @property
    def all_complete(self) -> bool:
        """At least one call, and every call's arguments closed."""
        return bool(self.calls) and all(call.complete for call in self.calls)

    # -- states (each consumes what it can from the buffer) --

    def _content(self, out: list[ParserEvent]) -> None:
        if self.triggered is not None:
            return
        if self.must_call:
            self._buffer = ""  # the engine starts the call as soon as the answer does; nothing before it
            return
        found = [(index, opener) for opener in self.format.openers if (index := self._buffer.find(opener)) >= 0]
        if found:
            index, opener = min(found)
            if index:
                out.append(self._buffer[:index])
            self._buffer = self._buffer[index:]
            self.triggered = opener
            return
        keep = max(held_prefix_length(self._buffer, opener) for opener in self.format.openers)
        release = self._buffer[: len(self._buffer) - keep]
        if release:
            out.append(release)
            self._buffer = self._buffer[len(release):]

    def _name(self, out: list[ParserEvent]) -> None:
        end = self._buffer.find(self.format.name_suffix[0])
        if end < 0:
            return
        name = self._buffer[:end]
        call = ToolCall(id=new_call_id(), name=name)
        self.calls.append(call)
        out.append(ToolCallStart(len(self.calls) - 1, call.id, name))
        self._buffer = self._buffer[end:]
        self._state = "name_suffix"

    def _name_suffix(self, out: list[ParserEvent]) -> None:
        suffix = self.format.name_suffix
        if len(self._buffer) < len(suffix):
            return
        self._buffer = self._buffer[len(suffix):]  # fixed by the grammar
        self._scanner = _ArgumentScanner()
        self._state = "arguments"

    def _arguments(self, out: list[ParserEvent]) -> None:
        call = self.calls[-1]
        end = self._scanner.scan(self._buffer)
        piece = self._buffer if end < 0 else self._buffer[:end]
        if not call.arguments:
            piece = piece.lstrip()
        if piece:
            call.arguments += piece
            out.append(ToolCallArguments(len(self.calls) - 1, piece))
        self._buffer = "" if end < 0 else self._buffer[end:]
        if end >= 0:
            call.complete = True
            out.append(ToolCallEnd(len(self.calls) - 1))
            self._state = "after"

    def _after(self, out: list[ParserEvent]) -> None:
        suffix = self.format.call_suffix.lstrip()
        text = self._buffer.lstrip()
        if len(text) < len(suffix):
            self._buffer = text
            return
        self._buffer = text[len(suffix):]
        self._state = "between"

    def _between(self, out: list[ParserEvent]) -> None:
        fmt = self.format
        if fmt.separator is not None:
            again = fmt.separator + fmt.call_prefix
            if self._buffer.startswith(again):
                self._buffer = self._buffer[len(again):]
                self._state = "name"
                return
            if again.startswith(self._buffer):
                return  # could still be the next call
        self._buffer = ""  # the closing (fixed by the grammar), or nothing
        self._state = "done"

    def _done(self, out: list[ParserEvent]) -> None:
        self._buffer = ""
