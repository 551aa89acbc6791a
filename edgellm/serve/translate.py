"""Request bodies -> SamplingParams and prompts: every check a request gets before any generation
work (refused as APIError 400), and a chat history fitted to a slot.

Rule: no HTTP request, no event loop, no scheduler. The engine (templates, tokens) and a slot's
context are handed in, so all of it runs in a unit test on tests/fake_engine.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgellm import ui
from edgellm.errors import ContextOverflowError, one_line
from edgellm.runtime.protocol import GenerationEngine
from edgellm.runtime.types import Prompt, SamplingParams
from edgellm.serve.config import ServerConfig
from edgellm.serve.errors import APIError
from edgellm.serve.schemas import ChatCompletionRequest, CompletionRequest, ResponseFormat, SamplingFields
from edgellm.text.history import fewest_to_drop, history_room, turn_starts
from edgellm.text.stops import check_stops
from edgellm.text.toolcalls import ToolSpecError, ToolUse, parse_tool_choice, parse_tools

# Unknown request fields are named in the log once each: this many names, this long at most.
MAX_LOGGED_FIELDS = 64
MAX_LOGGED_FIELD_NAME = 64
# Template variables a request may not set: they are the template's inputs, set by the server.
RESERVED_TEMPLATE_VARIABLES = frozenset({
    "messages", "tools", "tool_choice", "functions", "function_call", "add_generation_prompt",
    "bos_token", "eos_token", "raise_exception", "strftime_now",
})
MAX_TEMPLATE_VARIABLES = 16


@dataclass
class ChatInput:
    """A chat request, checked: its sampling, its messages as the template takes them, its
    template variables, and the field a grammar error names."""

    params: SamplingParams
    messages: list[dict[str, Any]]
    template_kwargs: dict[str, Any]
    param: str


class Translator:
    """The server's reading of request bodies. Its one state: the unknown fields already logged."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.ignored_fields: set[str] = set()
        self.routed = False  # the server found the model by name already: any name it let through is served

    def check_model(self, model: str | None) -> None:
        if model and not self.routed and model != self.config.model_id:
            raise APIError(
                404,
                f"the model '{model}' is not served here; this server serves '{self.config.model_id}'",
                param="model",
                code="model_not_found",
            )

    def sampling(self, body: SamplingFields, max_tokens: int | None) -> SamplingParams:
        self.check_model(body.model)
        for name in body.model_extra or {}:
            shown = one_line(name, MAX_LOGGED_FIELD_NAME)  # kept and logged clipped: names may be megabytes
            if shown not in self.ignored_fields and len(self.ignored_fields) < MAX_LOGGED_FIELDS:
                self.ignored_fields.add(shown)
                ui.info(f"note: ignoring the request field '{shown}' (not an OpenAI or llama.cpp field edgellm uses); said once")
        unsupported = {
            "logit_bias": bool(body.logit_bias),
            "logprobs": bool(body.logprobs),
        }
        for name, used in unsupported.items():
            if used:
                raise APIError(400, f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
        if max_tokens is not None and max_tokens > self.config.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens is {max_tokens} but this server allows at most {self.config.max_tokens_limit}",
                param="max_tokens",
            )
        defaults = SamplingParams()
        return SamplingParams(
            max_tokens=max_tokens or self.config.max_tokens_limit,
            temperature=defaults.temperature if body.temperature is None else body.temperature,
            top_p=defaults.top_p if body.top_p is None else body.top_p,
            top_k=defaults.top_k if body.top_k is None else body.top_k,
            min_p=defaults.min_p if body.min_p is None else body.min_p,
            repeat_penalty=defaults.repeat_penalty if body.repeat_penalty is None else body.repeat_penalty,
            frequency_penalty=body.frequency_penalty or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            seed=body.seed,
            grammar=body.grammar,
            ignore_eos=bool(body.ignore_eos),
            stop=stop_sequences(body.stop),
        )

    def chat(self, body: ChatCompletionRequest, engine: GenerationEngine, slot_ctx: int, max_piece_bytes: int) -> ChatInput:
        """Everything about a chat request that needs no template run (fit_history does that)."""
        params = self.sampling(body, body.max_completion_tokens or body.max_tokens)
        params.tool_use = self.tool_use(body, engine)
        self.thinking(body, params)
        if body.response_format is not None and body.response_format.type != "text":
            if body.grammar:
                raise APIError(400, "use either response_format or grammar, not both", param="grammar")
            if params.tool_use is not None and params.tool_use.active:
                raise APIError(400, "use either tools or response_format, not both (or tool_choice 'none')", param="response_format")
            # The JSON is the answer: with a thinking budget the model reasons first, else not at all.
            params.grammar, params.json_schema = response_format_grammar(body.response_format)
            params.grammar_is_answer = True
        if body.grammar and params.tool_use is not None and params.tool_use.active:
            raise APIError(400, "use either tools or grammar, not both (or tool_choice 'none')", param="grammar")
        messages = [m.to_template(i) for i, m in enumerate(body.messages)]
        # The tools are rendered into the prompt too: a 3.6 MB description was tokenized (7 s) before it was refused.
        tools_chars = len(json.dumps(body.tools)) if body.tools else 0
        check_size(len(messages), tools_chars + sum(len(m["content"] or "") + len(json.dumps(m.get("tool_calls") or ""))
                                                    for m in messages), "messages", slot_ctx, max_piece_bytes)
        template_kwargs = template_variables(body.chat_template_kwargs)
        param = "response_format" if body.response_format is not None else "tools" if params.tool_use else "grammar"
        return ChatInput(params, messages, template_kwargs, param)

    def completion(self, body: CompletionRequest, slot_ctx: int, max_piece_bytes: int) -> tuple[str, SamplingParams]:
        """A raw completion's one prompt text and its sampling."""
        if body.echo or body.suffix:
            raise APIError(400, "'echo' and 'suffix' are not supported by this server", code="unsupported_parameter")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, "send one prompt per request", param="prompt")
        if not prompts[0]:
            raise APIError(400, "the prompt is empty: give the model some text to continue", param="prompt")
        params = self.sampling(body, body.max_tokens)
        params.split_reasoning = False  # raw completions return the model's text as written, tags included
        text = prompts[0]
        check_size(1, len(text), "prompt", slot_ctx, max_piece_bytes)
        return text, params

    def thinking(self, body: ChatCompletionRequest, params: SamplingParams) -> None:
        """The reply's reasoning budget: thinking_budget_tokens (0: none), else reasoning_effort
        (none/minimal: no reasoning; low/medium/high: the profile's budgets), else the server's."""
        budget = self.config.think_budget
        effort = body.reasoning_effort
        if effort is not None:
            if effort in ("none", "minimal"):
                budget = 0
            elif effort in self.config.effort_budgets:
                budget = self.config.effort_budgets[effort]
            else:
                raise APIError(400, f"reasoning_effort must be none, minimal, low, medium or high, not {effort[:40]!r}",
                               param="reasoning_effort")
        if body.thinking_budget_tokens is not None:
            budget = body.thinking_budget_tokens
        params.no_think = budget == 0
        params.think_budget = budget or None
        params.think_message = self.config.think_message

    def tool_use(self, body: ChatCompletionRequest, engine: GenerationEngine) -> ToolUse | None:
        """The request's tools in this model's call format (None: no tools, or tool_choice none
        with no tools), refused with a one-line reason naming the field."""
        if not body.tools and body.tool_choice in (None, "none", "auto"):
            return None
        try:
            tools = parse_tools(body.tools or [])
            choice = parse_tool_choice(body.tool_choice, tools)
        except ToolSpecError as exc:
            raise APIError(400, exc.message, param=exc.param, code="invalid_tools") from None
        return ToolUse(engine.tool_format, tools, choice, parallel=body.parallel_tool_calls is not False)

    def fit(self, chat: ChatInput, engine: GenerationEngine, slot_ctx: int) -> tuple[Prompt, int]:
        """fit_history for a checked chat request, as the server's --truncate says."""
        return fit_history(engine, chat.messages, slot_ctx=slot_ctx, max_tokens=chat.params.max_tokens, params=chat.params,
                           template_kwargs=chat.template_kwargs, drop_oldest=self.config.truncate != "error")


def fit_history(engine: GenerationEngine, messages: list[dict[str, Any]], *, slot_ctx: int, max_tokens: int | None,
                params: SamplingParams | None = None, template_kwargs: dict[str, Any] | None = None,
                drop_oldest: bool = True) -> tuple[Prompt, int]:
    """The prompt for `messages`, dropping the oldest turns (the system prompt stays) until it
    leaves a slot room for the reply, as `edgellm chat` does; returns it and how many messages
    went. A last turn too long on its own is still refused (400)."""
    room = history_room(slot_ctx, max_tokens)
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    system, rest = messages[:head], list(messages[head:])
    limit = slot_ctx - room

    made: dict[int, Prompt] = {}

    def prompt_from(cut: int) -> Prompt:
        if cut not in made:
            made[cut] = engine.prompt_from_messages(system + rest[cut:], check=False,
                                                    tool_use=params.tool_use if params else None,
                                                    template_kwargs=template_kwargs,
                                                    no_think=params.skips_reasoning if params else False)
        return made[cut]

    starts = turn_starts(rest)
    low = fewest_to_drop(starts, lambda cut: len(prompt_from(cut).tokens) <= limit) if drop_oldest else 0
    prompt, dropped = prompt_from(starts[low]), starts[low]
    use = params.tool_use if params is not None else None
    if len(prompt.tokens) >= slot_ctx and use is not None and use.active:
        # Clients such as Open WebUI send dozens of tools with every chat: say what they cost.
        bare = engine.prompt_from_messages(system + rest[starts[low]:], check=False, template_kwargs=template_kwargs)
        share = len(prompt.tokens) - len(bare.tokens)
        raise ContextOverflowError(
            f"the prompt is {len(prompt.tokens)} tokens, {share} of them the descriptions of its {len(use.tools)} tools, "
            f"but a slot holds {slot_ctx}: send fewer tools, or start the server with a larger --ctx",
        )
    engine.check_prompt(prompt.tokens)
    if len(prompt.tokens) >= slot_ctx:
        raise ContextOverflowError(
            f"the prompt is {len(prompt.tokens)} tokens but a slot holds {slot_ctx} (n_ctx)",
            hint="send less, or start the server with a larger --ctx (or fewer --parallel slots)",
        )
    return prompt, dropped


def check_size(n_messages: int, n_chars: int, param: str, slot_ctx: int, max_piece_bytes: int) -> None:
    """Refuse, without any template or tokenizer work, what cannot fit a slot's context: every
    message takes at least one token, and no token covers more than max_piece_bytes bytes."""
    if n_messages >= slot_ctx:
        raise APIError(400, f"{n_messages} messages cannot fit a context of {slot_ctx} tokens", param=param,
                       code="context_length_exceeded")
    if n_chars > slot_ctx * max_piece_bytes:
        raise APIError(400, f"{n_chars} characters of input cannot fit a context of {slot_ctx} tokens", param=param,
                       code="context_length_exceeded")


def template_variables(values: dict[str, Any] | None) -> dict[str, Any]:
    """chat_template_kwargs (llama-server's extension, e.g. {"enable_thinking": false}), checked."""
    if not values:
        return {}
    if len(values) > MAX_TEMPLATE_VARIABLES:
        raise APIError(400, f"chat_template_kwargs has more than {MAX_TEMPLATE_VARIABLES} entries", param="chat_template_kwargs")
    for name, value in values.items():
        if not name.isidentifier() or name in RESERVED_TEMPLATE_VARIABLES:
            raise APIError(400, f"chat_template_kwargs may not set '{name[:40]}'", param="chat_template_kwargs")
        if isinstance(value, str) and len(value) > 4096:
            raise APIError(400, f"chat_template_kwargs.{name} is longer than 4096 characters", param="chat_template_kwargs")
    return dict(values)


def stop_sequences(stop: str | list[str] | None) -> list[str]:
    try:
        return check_stops([stop] if isinstance(stop, str) else list(stop or []))
    except ValueError as exc:
        raise APIError(400, str(exc), param="stop") from None


def response_format_grammar(response_format: ResponseFormat) -> tuple[str | None, str | None]:
    """(grammar, json_schema) for SamplingParams: any JSON object, or JSON matching a schema."""
    if response_format.type == "json_schema":
        schema = response_format.json_schema.schema_ if response_format.json_schema else None
        if not schema:
            raise APIError(400, "response_format json_schema needs json_schema.schema", param="response_format")
        return None, json.dumps(schema)
    from edgellm.runtime.engine import json_grammar  # noqa: PLC0415

    return json_grammar(), None
