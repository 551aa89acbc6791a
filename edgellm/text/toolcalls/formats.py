"""Call formats: how each model family writes a tool call, detected from its chat template.

A format is a layout of fixed text around each call's name and arguments. The grammar built from
it (with the tools' JSON Schemas) makes the model write exactly that layout, so the parser can
follow it token by token and every call's arguments parse. The model starts a call in its own
words (any of `openers`, misspellings included); from there the engine writes `opening` itself
and the grammar takes over.

  r1       DeepSeek-R1 distills: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
           ```json ARGS ```<｜tool▁call▁end｜> ... <｜tool▁calls▁end｜>
  hermes   Hermes / Qwen2.5: <tool_call>{"name": NAME, "arguments": ARGS}</tool_call>
  llama3   Llama 3.x: {"name": NAME, "parameters": ARGS} (or after <|python_tag|>), one call
  generic  any other template: the tools are described in the system prompt, and the call is
           the Hermes layout (<tool_call>{"name": ..., "arguments": ...}</tool_call>)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from edgellm.text.grammar import gbnf_literal
from edgellm.text.jsondepth import max_depth
from edgellm.text.toolcalls.spec import Tool, ToolChoice, ToolSpecError

MAX_ARGUMENTS_DEPTH = 64  # a call's arguments in the history: as deep as a whole request body may be

# The distills write the opening tag in several spellings; llama.cpp's common/chat.cpp accepts
# these five. The markers are not single tokens in the published vocabularies: they are text.
R1_OPENERS = (
    "<｜tool▁calls▁begin｜>",
    "<｜tool_calls_begin｜>",
    "<｜tool calls begin｜>",
    "<｜tool\\_calls\\_begin｜>",
    "<｜tool▁calls｜>",
)


@dataclass(frozen=True)
class ToolFormat:
    name: str
    openers: tuple[str, ...]  # what the model may write to start its calls
    opening: str  # what the engine writes instead, before the first call's prefix
    call_prefix: str  # before each call's name
    name_suffix: str  # between the name and the arguments
    call_suffix: str  # after the arguments
    separator: str | None  # between two calls (None: one call per reply)
    closing: str  # after the last call
    template_renders_tools: bool  # the chat template shows `tools` itself (else: the system prompt does)
    arguments_as_object: bool = True  # the template wants tool_calls[].function.arguments as an object

    @property
    def forced_start(self) -> str:
        """The text the engine writes when a call starts; the grammar continues from the first name."""
        return self.opening + self.call_prefix

    # -- the grammar --

    @staticmethod
    def rule_names(n_tools: int) -> frozenset[str]:
        """The rule names `grammar` uses itself (the tools' schemas must leave them free)."""
        return frozenset({"root", "tc-call", *(f"tc-call-{index}" for index in range(n_tools))})

    def grammar(self, tools: list[Tool], argument_rules: list[str], rules_text: str,
                choice: ToolChoice, parallel: bool) -> str:
        """GBNF for everything after `forced_start`: the calls, then the closing. `argument_rules[i]`
        is the rule (in `rules_text`) for tools[i]'s arguments."""
        bodies = []
        for index, tool in enumerate(tools):
            if choice.mode == "named" and tool.name != choice.name:
                continue
            bodies.append(f"tc-call-{index}")
        lines = [rules_text]
        for index, tool in enumerate(tools):
            if f"tc-call-{index}" in bodies:
                lines.append(f"tc-call-{index} ::= {gbnf_literal(tool.name + self.name_suffix)} "
                             f"{argument_rules[index]} {gbnf_literal(self.call_suffix)}")
        lines.append("tc-call ::= " + " | ".join(bodies))
        more = ""
        if parallel and self.separator is not None and choice.mode != "named":
            more = f" ( {gbnf_literal(self.separator + self.call_prefix)} tc-call )*"
        closing = f" {gbnf_literal(self.closing)}" if self.closing else ""
        lines.append(f"root ::= tc-call{more}{closing}")
        return "\n".join(lines)

    # -- the prompt --

    def template_messages(self, messages: list[dict[str, Any]], tools: list[Tool], choice: ToolChoice) -> list[dict[str, Any]]:
        """The conversation as this format's template wants it: tool calls in the history in
        its shape, results in its role, and (where the template cannot) the tools described."""
        out: list[dict[str, Any]] = []
        for index, message in enumerate(messages):
            out.append(self._history_message(message, index))
        if tools and choice.mode != "none" and not self.template_renders_tools:
            out = _with_system_text(out, self.describe(tools))
        return out

    def _history_message(self, message: dict[str, Any], index: int) -> dict[str, Any]:
        role = message.get("role")
        calls = message.get("tool_calls") or []
        if role == "assistant" and calls:
            shaped = [self._history_call(call, index, number) for number, call in enumerate(calls)]
            if self.name == "generic":
                text = (message.get("content") or "")
                text += "".join(f"{'' if not text and n == 0 else chr(10)}<tool_call>\n"
                                + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False)
                                + "\n</tool_call>" for n, c in enumerate(shaped))
                return {"role": "assistant", "content": text}
            result: dict[str, Any] = {"role": "assistant", "content": message.get("content") or None, "tool_calls": shaped}
            return result
        if role == "tool":
            content = message.get("content") or ""
            if self.name == "generic":
                return {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
            shaped_tool: dict[str, Any] = {"role": "tool", "content": content}
            if message.get("tool_call_id"):
                shaped_tool["tool_call_id"] = message["tool_call_id"]
            if message.get("name"):
                shaped_tool["name"] = message["name"]
            return shaped_tool
        return {"role": role, "content": message.get("content") or ""}

    def _history_call(self, call: Any, index: int, number: int) -> dict[str, Any]:
        where = f"messages[{index}].tool_calls[{number}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolSpecError(f"{where} needs a function with a name", param="messages")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            if max_depth(arguments) > MAX_ARGUMENTS_DEPTH:  # json.loads would recurse until a RecursionError
                raise ToolSpecError(f"{where}.function.arguments nests more than {MAX_ARGUMENTS_DEPTH} levels deep", param="messages")
            try:
                parsed = json.loads(arguments) if arguments.strip() else {}
            except (ValueError, RecursionError):
                raise ToolSpecError(f"{where}.function.arguments is not valid JSON", param="messages") from None
        elif isinstance(arguments, dict):
            parsed = arguments
        else:
            raise ToolSpecError(f"{where}.function.arguments must be a JSON string", param="messages")
        text = json.dumps(parsed, ensure_ascii=False)
        shaped: dict[str, Any] = {
            "type": "function",
            "function": {"name": function["name"], "arguments": parsed if self.arguments_as_object else text},
        }
        if isinstance(call.get("id"), str):
            shaped["id"] = call["id"]
        return shaped

    def describe(self, tools: list[Tool]) -> str:
        """The tools and the call layout in words, for templates that do not show tools themselves."""
        listing = "\n".join(json.dumps(tool.to_openai(), ensure_ascii=False) for tool in tools)
        example = self.forced_start + "NAME" + self.name_suffix + '{"ARGUMENT": "VALUE"}' + self.call_suffix + self.closing
        return (
            "You can call functions. Their signatures (JSON Schema) are inside <tools></tools>:\n"
            f"<tools>\n{listing}\n</tools>\n"
            "To call a function, reply with this and nothing else, NAME and the arguments filled in:\n"
            f"{example}\n"
            "The function's result comes back in the next message; then answer with it."
        )


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = (first.get("content") or "").rstrip() + "\n\n" + text if first.get("content") else text
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


R1 = ToolFormat(
    name="r1",
    openers=R1_OPENERS,
    opening="<｜tool▁calls▁begin｜>",
    call_prefix="<｜tool▁call▁begin｜>function<｜tool▁sep｜>",
    name_suffix="\n```json\n",
    call_suffix="\n```<｜tool▁call▁end｜>",
    separator="\n",
    closing="<｜tool▁calls▁end｜>",
    template_renders_tools=False,
)
HERMES = ToolFormat(
    name="hermes",
    openers=("<tool_call>",),
    opening="<tool_call>",
    call_prefix='\n{"name": "',
    name_suffix='", "arguments": ',
    call_suffix="}\n</tool_call>",
    separator="\n<tool_call>",
    closing="",
    template_renders_tools=True,
)
LLAMA3 = ToolFormat(
    name="llama3",
    openers=("<|python_tag|>", '{"name"', '{ "name"'),
    opening="",
    call_prefix='{"name": "',
    name_suffix='", "parameters": ',
    call_suffix="}",
    separator=None,  # Llama 3.x templates render one call per assistant message
    closing="",
    template_renders_tools=True,
)
# Any other template: the Hermes layout, its tools described in the system prompt by edgellm.
GENERIC = replace(HERMES, name="generic", template_renders_tools=False)


def detect_format(template: str | None) -> ToolFormat:
    """The call format a chat template was written for (generic when it shows none)."""
    text = template or ""
    # The template serialises the arguments itself (`arguments | tojson`, `['arguments'] | tojson`):
    # it wants an object; otherwise it concatenates them and wants the JSON text.
    as_object = re.search(r"arguments['\"]?\]?\s*\|\s*tojson", text) is not None
    if "tool▁calls▁begin" in text:
        return replace(R1, arguments_as_object=as_object)
    if "<tool_call>" in text and "tools" in text:
        return replace(HERMES, arguments_as_object=True)
    if "<|start_header_id|>" in text and ("<|python_tag|>" in text or '"parameters"' in text) and "tools" in text:
        return replace(LLAMA3, arguments_as_object=True)
    return GENERIC


@dataclass
class ToolUse:
    """One request's tool calling: what the engine needs to detect, force and constrain calls."""

    format: ToolFormat
    tools: list[Tool]
    choice: ToolChoice
    parallel: bool = True
    grammar: str | None = None  # the checked GBNF, set by Engine.tool_grammar

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice.mode != "none"

    @property
    def must_call(self) -> bool:
        return self.choice.mode in ("required", "named")
