"""Request bodies of Ollama's API (pydantic), field for field as its api/types.go declares them.

Known fields are validated strictly (true is not 1, a string is not a list); unknown top-level
fields are accepted and named in the log once, as Ollama ignores them; unknown fields inside a
message or a tool call are ignored. Sizes are bounded by the body limit and by the checks the
prompt gets (edgellm.serve.translate.check_size); names and short strings here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Lenient = ConfigDict(extra="allow")
Ignoring = ConfigDict(extra="ignore")
MAX_NAME = 256  # characters of a model or tool name


class OllamaFunctionCall(BaseModel):
    model_config = Ignoring
    name: str = Field(max_length=MAX_NAME)
    # An object, as Ollama sends and takes it; JSON text (OpenAI's way) is taken too.
    arguments: dict[str, Any] | str | None = None
    index: int | None = None


class OllamaToolCall(BaseModel):
    model_config = Ignoring
    id: str | None = Field(default=None, max_length=MAX_NAME)
    type: str | None = None
    function: OllamaFunctionCall


class OllamaMessage(BaseModel):
    model_config = Ignoring
    role: str = Field(max_length=32)
    content: str | None = None
    thinking: str | None = None  # an earlier reply's reasoning, sent back: not shown to the model
    images: list[Any] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = Field(default=None, max_length=MAX_NAME)
    tool_call_id: str | None = Field(default=None, max_length=MAX_NAME)


class OllamaRequest(BaseModel):
    """What /api/chat and /api/generate share (GenerateRequest and ChatRequest in api/types.go)."""

    model_config = Lenient
    model: str = Field(default="", max_length=MAX_NAME)
    stream: bool | None = None  # None: true, Ollama's default
    format: str | dict[str, Any] | None = None  # "json", "" or a JSON schema
    keep_alive: float | str | None = None  # a Go duration ("5m", "-1s"), seconds, -1: forever, 0: now
    options: dict[str, Any] | None = None  # checked one by one in edgellm.serve.ollama_translate
    think: bool | str | None = None  # true/false, or "low", "medium", "high", "max"
    truncate: bool | None = None  # drop the oldest turns when the history does not fit (default: --truncate)
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class OllamaChatRequest(OllamaRequest):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[Any] | None = None  # checked by edgellm.text.toolcalls.parse_tools


class OllamaGenerateRequest(OllamaRequest):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None  # deprecated in Ollama; never returned here
    raw: bool | None = None
    images: list[Any] | None = None


class OllamaModelRequest(BaseModel):
    """/api/show, /api/pull, /api/delete: a model by name (`name` is the deprecated spelling)."""

    model_config = Lenient
    model: str = Field(default="", max_length=MAX_NAME)
    name: str = Field(default="", max_length=MAX_NAME)
    verbose: bool | None = None
    stream: bool | None = None
    insecure: bool | None = None

    @property
    def target(self) -> str:
        return self.model or self.name
