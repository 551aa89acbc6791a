"""The request side of tool calling: OpenAI `tools` and `tool_choice`, checked. Pure.

Everything here comes from a request body or a file, so it is hostile until checked: names are
what the formats can carry, parameters are JSON Schemas for objects that the grammar enforces in
full (edgellm.text.schema_grammar refuses what it cannot enforce, so a call's arguments always
validate), and sizes are bounded before the schema is walked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from edgellm.errors import EdgeLLMError
from edgellm.text.schema_grammar import SchemaError, SchemaGrammar

MAX_TOOLS = 128  # OpenAI's limit
MAX_PARAMETERS_CHARS = 64 * 1024  # per tool; real ones are a few hundred bytes
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule: what every format can carry
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class ToolSpecError(EdgeLLMError):
    """A `tools` array or `tool_choice` that cannot be used; `param` names the field."""

    exit_code = 2

    def __init__(self, message: str, *, param: str = "tools", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_PARAMETERS))

    def to_openai(self) -> dict[str, Any]:
        """The tool as the chat templates expect it: {"type": "function", "function": {...}}."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    """none: the model may not call; auto: it may; required: it must call one; named: it must call `name`."""

    mode: str = "auto"
    name: str | None = None


def parse_tools(value: Any, param: str = "tools") -> list[Tool]:
    """An OpenAI `tools` array as Tools, or ToolSpecError naming the first thing wrong."""
    if not isinstance(value, list):
        raise ToolSpecError(f"'{param}' must be a list of tools, not {_kind(value)}", param=param)
    if len(value) > MAX_TOOLS:
        raise ToolSpecError(f"'{param}' has {len(value)} tools; at most {MAX_TOOLS} are allowed", param=param)
    tools: list[Tool] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"{param}[{index}]"
        if not isinstance(item, dict):
            raise ToolSpecError(f"{where} must be an object, not {_kind(item)}", param=param)
        kind = item.get("type", "function")
        if kind != "function":
            raise ToolSpecError(f"{where}: only tools of type 'function' are supported, not {str(kind)[:40]!r}", param=param)
        function = item.get("function")
        if not isinstance(function, dict):
            raise ToolSpecError(f"{where} needs a 'function' object", param=param)
        name = function.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ToolSpecError(
                f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-', not {str(name)[:70]!r}", param=param
            )
        if name in seen:
            raise ToolSpecError(f"{where}: two tools are named '{name}'", param=param)
        seen.add(name)
        description = function.get("description", "")
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise ToolSpecError(f"{where}.function.description must be a string", param=param)
        parameters = function.get("parameters")
        if parameters is None:
            parameters = dict(EMPTY_PARAMETERS)
        check_parameters(parameters, f"{where}.function.parameters ('{name}')", param)
        tools.append(Tool(name=name, description=description, parameters=parameters))
    return tools


def check_parameters(schema: Any, where: str, param: str = "tools") -> None:
    """A tool's `parameters`: a JSON Schema for objects, all of which the grammar enforces."""
    if not isinstance(schema, dict):
        raise ToolSpecError(f"{where} must be a JSON Schema object, not {_kind(schema)}", param=param)
    try:
        size = len(json.dumps(schema))
    except (ValueError, TypeError, RecursionError):
        raise ToolSpecError(f"{where} is not a JSON document", param=param) from None
    if size > MAX_PARAMETERS_CHARS:
        raise ToolSpecError(f"{where} is larger than {MAX_PARAMETERS_CHARS // 1024} KiB", param=param)
    try:
        SchemaGrammar().add(schema, "arguments", require_object=True)
    except SchemaError as exc:
        raise ToolSpecError(f"{where}: {exc.message}", param=param,
                            hint="every call's arguments must validate, so the grammar enforces the whole schema") from None


def parse_tool_choice(value: Any, tools: list[Tool], param: str = "tool_choice") -> ToolChoice:
    """`tool_choice`: none, auto (the default), required, or {"type": "function", "function": {"name": ...}}."""
    if value is None:
        return ToolChoice("auto")
    if isinstance(value, str):
        if value in ("none", "auto", "required"):
            if value == "required" and not tools:
                raise ToolSpecError("tool_choice 'required' needs at least one tool in 'tools'", param=param)
            return ToolChoice(value)
        raise ToolSpecError(f"{param} must be 'none', 'auto', 'required' or a function, not {value[:40]!r}", param=param)
    if isinstance(value, dict):
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if value.get("type", "function") != "function" or not isinstance(name, str):
            raise ToolSpecError(f"{param} must look like {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}", param=param)
        if name not in {tool.name for tool in tools}:
            raise ToolSpecError(f"{param} names '{name[:64]}', which is not among the tools", param=param)
        return ToolChoice("named", name)
    raise ToolSpecError(f"{param} must be a string or an object, not {_kind(value)}", param=param)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
