"""Request bodies of the OpenAI API (pydantic): known fields strict, unknown ones accepted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgellm.serve.errors import APIError

Strict = ConfigDict(extra="forbid")
# Request bodies: known fields are validated strictly, unknown ones are accepted (Open WebUI
# forwards Ollama options such as num_ctx to OpenAI connections) and logged once by name.
Lenient = ConfigDict(extra="allow")


class ContentPart(BaseModel):
    """One part of a message's content list: text is used; anything else is refused in text()."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = Strict
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    # Sent back by clients that echo our replies; R1's guidance is not to feed reasoning back.
    reasoning_content: str | None = None
    refusal: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None

    def to_template(self, index: int) -> dict[str, Any]:
        """The message for the chat template: role, text, and tool calls or results where present."""
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": self.text(index)}
        if self.role == "assistant" and self.tool_calls:
            message["tool_calls"] = self.tool_calls
            message["content"] = message["content"] or None
        if self.role == "tool":
            if self.tool_call_id is not None:
                message["tool_call_id"] = self.tool_call_id
            if self.name is not None:
                message["name"] = self.name
        return message

    def text(self, index: int = 0) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.type != "text":
                raise APIError(400, f"message {index + 1} has a '{part.type}' part: this model takes text only",
                               param=f"messages.{index}.content", code="unsupported_content")
            if part.text is None:
                raise APIError(400, f"message {index + 1} has a text part without 'text'", param=f"messages.{index}.content")
            texts.append(part.text)
        return "".join(texts)


class JsonSchemaFormat(BaseModel):
    model_config = Strict
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = Strict
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = Strict
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class SamplingFields(BaseModel):
    """Fields both endpoints share; the last group are llama.cpp server extensions."""

    model_config = Lenient
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)  # validated strictly: true is not 1
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None
    user: str | None = None
    # Extensions that llama.cpp's server also accepts.
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, ge=0.0)
    grammar: str | None = None
    ignore_eos: bool | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None  # checked by edgellm.text.toolcalls.parse_tools (one-line reasons)
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    # llama-server's extension: extra chat template variables (enable_thinking, ...).
    chat_template_kwargs: dict[str, bool | int | float | str | None] | None = None
    reasoning_effort: str | None = None
    # Extension: the reasoning budget in tokens for this reply (0: no reasoning).
    thinking_budget_tokens: int | None = Field(default=None, ge=0)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[Literal["text"]] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    echo: bool | None = None
    best_of: int | None = Field(default=None, ge=1, le=1)
    suffix: str | None = None


