"""Tool calling (OpenAI `tools`): the request's tools checked, the model's own call format
detected from its chat template, the grammar that makes every call parse, and the streaming
parser that turns the model's text into calls. Pure: no llama.cpp here (the JSON Schema to GBNF
conversion is edgellm.text.schema_grammar's).

  spec     - `tools`, `tool_choice` and `parallel_tool_calls` from a request, checked
  formats  - the call formats (DeepSeek-R1, Hermes/Qwen2.5, Llama 3.x, generic) and detection
  parser   - model text -> content and call events, fed token by token
"""

from edgellm.text.toolcalls.formats import ToolFormat, ToolUse, detect_format
from edgellm.text.toolcalls.parser import (
    CallEvent,
    ToolCall,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallParser,
    ToolCallStart,
)
from edgellm.text.toolcalls.spec import (
    Tool,
    ToolChoice,
    ToolSpecError,
    parse_tool_choice,
    parse_tools,
)

__all__ = [
    "CallEvent",
    "Tool",
    "ToolCall",
    "ToolCallArguments",
    "ToolCallEnd",
    "ToolCallParser",
    "ToolCallStart",
    "ToolChoice",
    "ToolFormat",
    "ToolSpecError",
    "ToolUse",
    "detect_format",
    "parse_tool_choice",
    "parse_tools",
]
