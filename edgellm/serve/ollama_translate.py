"""Ollama's API, translated: request bodies -> the SamplingParams and prompt input the OpenAI API
uses (edgellm.serve.translate), and a job's events -> Ollama's NDJSON objects.

Decisions where Ollama's documentation is silent or where edgellm differs on purpose:
- `think`: absent on a reasoning model, it reasons and the reasoning goes to `thinking` (Ollama's
  default since it gained `think`: thinking models think); `false` skips the reasoning; `true` uses
  the server's budget (--think-budget); "low", "medium" and "high" the profile's budgets (the same
  ones as /v1's reasoning_effort: 256, 1024 and 4096 tokens unless the profile says otherwise);
  "max" no budget at all. On a model that does not reason, true or a level is a 400, as in Ollama.
  With `format` the JSON is the answer: it follows a budgeted reasoning (true: "medium" when the
  server sets no budget), or comes at once when the model does not reason first.
- `options.num_ctx` never reloads the model: every request gets a slot's context, and a longer
  history loses its oldest turns, as on /v1 (said once in the log). `num_thread` is the plan's.
- Sampling defaults are the server's (as on /v1), not Ollama's per-model Modelfile values.
- edgellm's extensions ride in `options`, the one free-form map every Ollama client passes on:
  `tool_choice` ("auto", "none", "required" or a tool's name) and `grammar` (GBNF).
- `keep_alive` is checked (a Go duration such as "5m" or "-1s", seconds, -1, 0); 0 frees the model
  once idle (the next request loads it again), other values leave the server's --idle-unload alone.

Rule: pure, as translate.py: no HTTP request, no event loop; the engine is handed in.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edgellm import ui
from edgellm.errors import one_line
from edgellm.runtime.protocol import GenerationEngine
from edgellm.runtime.types import GenerationStats, Prompt, SamplingParams, TextEvent
from edgellm.serve.config import ServerConfig
from edgellm.serve.errors import APIError
from edgellm.serve.ollama_schemas import OllamaChatRequest, OllamaGenerateRequest, OllamaMessage, OllamaRequest
from edgellm.serve.translate import ChatInput, check_size, fit_history, stop_sequences
from edgellm.text.reasoning import REASONING
from edgellm.text.toolcalls import ToolSpecError, ToolUse, parse_tool_choice, parse_tools
from edgellm.text.toolcalls.parser import ToolCallArguments, ToolCallEnd, ToolCallStart

# What /api/version answers: numeric (VS Code's Ollama provider compares it), recent enough for
# clients to send `think`, `tools` and structured `format`.
OLLAMA_VERSION = "0.12.0"
ROLES = ("system", "user", "assistant", "tool")
THINK_LEVELS = ("low", "medium", "high", "max")
# Options Ollama knows that edgellm leaves to the plan or does not have: named in the log once.
IGNORED_OPTIONS = frozenset({
    "num_keep", "num_batch", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "numa", "low_vram", "f16_kv",
    "vocab_only", "logits_all", "embedding_only", "penalize_newline", "mirostat", "mirostat_tau", "mirostat_eta",
    "tfs_z", "draft_num_predict", "num_thread",
})
MAX_OPTIONS = 64  # entries in `options`; Ollama knows about 35
MAX_NOTES = 64  # distinct log notes kept (unknown option names are hostile input too)
FOREVER = math.inf
MAX_TOP_K = 1 << 20


def ollama_name(model_id: str) -> str:
    """The name Ollama's API lists a model under: NAME:TAG, the tag `latest` when it has none."""
    return model_id if ":" in model_id.rpartition("/")[2] else f"{model_id}:latest"


def names_match(requested: str, model_id: str) -> bool:
    """Whether a request's model name means the model served as `model_id` (NAME:latest is NAME;
    names compare without case, as Ollama's do)."""
    def plain(name: str) -> str:
        name = name.strip().casefold()
        return name.removesuffix(":latest")

    return bool(requested.strip()) and plain(requested) == plain(model_id)


# --- keep_alive --------------------------------------------------------------------------------------

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_keep_alive(value: float | str | None, default: float) -> float:
    """Seconds the model should stay loaded after a request (FOREVER: always; 0: unload now), from
    Ollama's keep_alive: a Go duration ("5m", "1h30m", "-1s"), a number of seconds (also as text),
    or a negative value for ever. APIError 400 for anything else."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise APIError(400, "keep_alive must be a duration such as \"5m\" or a number of seconds, not a boolean", param="keep_alive")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        seconds = _go_duration(value)
    if math.isnan(seconds):
        raise APIError(400, "keep_alive is not a number", param="keep_alive")
    return FOREVER if seconds < 0 or math.isinf(seconds) else seconds


def _go_duration(text: str) -> float:
    shown = one_line(text, 40)
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    if re.fullmatch(r"\d+(\.\d+)?", body):  # "300": seconds (Ollama's OLLAMA_KEEP_ALIVE takes it so)
        return sign * float(body)
    parts = _GO_PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise APIError(400, f"keep_alive {shown!r} is not a duration: use e.g. \"5m\", \"1h30m\", \"300s\", 300 (seconds), "
                            "-1 (keep loaded) or 0 (unload now)", param="keep_alive")
    return sign * sum(float(number) * _GO_UNITS[unit] for number, unit in parts)


# --- requests ----------------------------------------------------------------------------------------


@dataclass
class GenerateInput:
    """A checked /api/generate request: its sampling and what the prompt is made of (messages
    through the chat template, raw text, or a prefix and suffix to fill in between)."""

    params: SamplingParams
    param: str  # the field a grammar error names
    messages: list[dict[str, Any]] | None = None
    text: str | None = None
    fim: tuple[str, str] | None = None


class OllamaTranslator:
    """The server's reading of Ollama request bodies. Its one state: the notes already logged."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.noted: set[str] = set()

    def note(self, key: str, text: str) -> None:
        """Say `text` in the log the first time `key` comes up (bounded: keys come from requests)."""
        if key not in self.noted and len(self.noted) < MAX_NOTES:
            self.noted.add(key)
            ui.info(f"note: {text}; said once")

    def note_fields(self, body: OllamaRequest) -> None:
        for name in body.model_extra or {}:
            shown = one_line(name, 64)
            self.note(f"field:{shown}", f"ignoring the Ollama request field '{shown}' (not one edgellm uses)")

    # -- sampling --

    def sampling(self, body: OllamaRequest, slot_ctx: int) -> tuple[SamplingParams, Any]:
        """SamplingParams from `options` (the server's defaults for what is not there), and the
        edgellm extension tool_choice (None: not given)."""
        self.note_fields(body)
        if body.logprobs:
            raise APIError(400, "'logprobs' is not supported by this server", param="logprobs")
        options = body.options or {}
        if len(options) > MAX_OPTIONS:
            raise APIError(400, f"options has {len(options)} entries; at most {MAX_OPTIONS} are accepted", param="options")
        read = _Options(options)
        params = SamplingParams()
        limit = self.config.max_tokens_limit
        predict = read.integer("num_predict")
        params.max_tokens = min(predict, limit) if predict is not None and predict > 0 else limit  # -1, -2, 0: as long as allowed
        params.temperature = read.number("temperature", 0.0, 100.0, params.temperature)
        params.top_k = read.integer("top_k", 0, MAX_TOP_K, params.top_k) or 0
        params.top_p = read.number("top_p", 0.0, 1.0, params.top_p)
        params.min_p = read.number("min_p", 0.0, 1.0, params.min_p)
        params.typical_p = read.number("typical_p", 0.0, 1.0, params.typical_p)
        params.repeat_penalty = read.number("repeat_penalty", 0.0, 100.0, params.repeat_penalty)
        params.presence_penalty = read.number("presence_penalty", -2.0, 2.0, params.presence_penalty)
        params.frequency_penalty = read.number("frequency_penalty", -2.0, 2.0, params.frequency_penalty)
        last_n = read.integer("repeat_last_n", -1, None, params.penalty_last_n)
        params.penalty_last_n = slot_ctx if last_n == -1 or (last_n or 0) > slot_ctx else last_n or 0
        seed = read.integer("seed")
        params.seed = seed if seed is not None and seed >= 0 else None  # Ollama's -1: a random seed
        params.stop = stop_sequences(read.stops())
        params.grammar = read.text("grammar")
        num_ctx = read.integer("num_ctx", 1, None)
        if num_ctx is not None and num_ctx > slot_ctx:
            self.note("num_ctx", f"options.num_ctx {num_ctx} is more than a slot's context ({slot_ctx} tokens): requests get "
                                 f"{slot_ctx} and the oldest turns of a longer history are dropped (the model is not reloaded)")
        for name in options:
            if name in IGNORED_OPTIONS:
                why = "the plan decides the threads" if name == "num_thread" else "set by the plan or not used by edgellm"
                self.note(f"option:{name}", f"ignoring options.{name} ({why})")
            elif name not in read.known:
                shown = one_line(name, 64)
                self.note(f"option:{shown}", f"ignoring options.{shown} (not an Ollama option edgellm knows)")
        return params, options.get("tool_choice")

    def thinking(self, think: bool | str | None, params: SamplingParams, *, thinks: bool, model: str) -> None:
        """The reply's reasoning budget from `think` (see the module's docstring)."""
        if think is None:
            budget = self.config.think_budget
        elif think is False:
            budget = 0
        else:
            if isinstance(think, str) and think not in THINK_LEVELS:
                raise APIError(400, f"think must be true, false, \"low\", \"medium\", \"high\" or \"max\", not {one_line(think, 20)!r}",
                               param="think")
            if not thinks:
                raise APIError(400, f"\"{one_line(model, 80)}\" does not support thinking", param="think")
            answer_grammar = params.grammar_is_answer
            if think is True:
                budget = self.config.think_budget
                if budget is None and answer_grammar:
                    budget = self.config.effort_budgets.get("medium")
            elif think == "max":
                budget = self.config.effort_budgets.get("high") if answer_grammar else None
            else:
                budget = self.config.effort_budgets.get(think)
        params.no_think = budget == 0
        params.think_budget = budget or None
        params.think_message = self.config.think_message

    def answer_format(self, value: str | dict[str, Any] | None, params: SamplingParams) -> bool:
        """`format`: "json" (any JSON object) or a JSON schema; True when one applies."""
        if value is None or value == "":
            return False
        if params.grammar:
            raise APIError(400, "use either format or options.grammar, not both", param="format")
        if value == "json":
            from edgellm.runtime.engine import json_grammar  # noqa: PLC0415  (loads llama_cpp's grammar module)

            params.grammar = json_grammar()
        elif isinstance(value, dict):
            params.json_schema = json.dumps(value)
        else:
            raise APIError(400, f"format must be \"json\" or a JSON schema object, not {one_line(str(value), 40)!r}", param="format")
        params.grammar_is_answer = True
        return True

    def tool_use(self, tools: list[Any] | None, choice: Any, engine: GenerationEngine) -> ToolUse | None:
        if not tools and choice in (None, "none", "auto"):
            return None
        try:
            parsed = parse_tools(tools or [])
            if isinstance(choice, str) and choice not in ("none", "auto", "required"):
                choice = {"type": "function", "function": {"name": choice}}  # a tool's name
            return ToolUse(engine.tool_format, parsed, parse_tool_choice(choice, parsed, "options.tool_choice"))
        except ToolSpecError as exc:
            raise APIError(400, exc.message, param=exc.param, code="invalid_tools") from None

    # -- the endpoints --

    def chat(self, body: OllamaChatRequest, engine: GenerationEngine, slot_ctx: int, max_piece_bytes: int) -> ChatInput:
        params, choice = self.sampling(body, slot_ctx)
        formatted = self.answer_format(body.format, params)
        params.tool_use = self.tool_use(body.tools, choice, engine)
        active = params.tool_use is not None and params.tool_use.active
        if active and (formatted or params.grammar):
            raise APIError(400, "use either tools or format (or options.grammar), not both; or options.tool_choice \"none\"",
                           param="format" if formatted else "options.grammar")
        self.thinking(body.think, params, thinks=bool(engine.model.thinks), model=body.model)
        messages = template_messages(body.messages)
        tools_chars = len(json.dumps(body.tools)) if body.tools else 0
        check_size(len(messages), tools_chars + sum(len(m["content"] or "") + len(json.dumps(m.get("tool_calls") or ""))
                                                    for m in messages), "messages", slot_ctx, max_piece_bytes)
        param = "format" if formatted else "tools" if active else "options.grammar"
        return ChatInput(params, messages, {}, param)

    def generate(self, body: OllamaGenerateRequest, engine: GenerationEngine, slot_ctx: int, max_piece_bytes: int) -> GenerateInput:
        if body.images:
            raise APIError(400, "images: this model reads text only", param="images")
        if body.template:
            raise APIError(400, "template: edgellm uses the model's own chat template; send raw: true with the whole prompt instead",
                           param="template")
        if body.context:
            self.note("context", "ignoring /api/generate's context (deprecated by Ollama; edgellm never returns one)")
        params, _ = self.sampling(body, slot_ctx)
        formatted = self.answer_format(body.format, params)
        param = "format" if formatted else "options.grammar"
        prompt, suffix = body.prompt or "", body.suffix or ""
        check_size(1, len(prompt) + len(suffix) + len(body.system or ""), "prompt", slot_ctx, max_piece_bytes)
        if suffix:
            if engine.fim_tokens is None:
                raise APIError(400, f"suffix: \"{one_line(body.model, 80)}\" has no fill-in-the-middle tokens in its vocabulary; "
                                    "use a code model that has them (such as Qwen2.5-Coder), or send the prompt alone", param="suffix")
            params.split_reasoning = False
            return GenerateInput(params, param, fim=(prompt, suffix))
        if body.raw:
            params.split_reasoning = False  # the model's text as written, tags included, as /v1/completions
            return GenerateInput(params, param, text=prompt)
        self.thinking(body.think, params, thinks=bool(engine.model.thinks), model=body.model)
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + [{"role": "user", "content": prompt}]
        return GenerateInput(params, param, messages=messages)

    def prompt(self, made: GenerateInput, engine: GenerationEngine, slot_ctx: int) -> Prompt:
        """The prompt of a checked /api/generate request (runs in the preparation thread)."""
        if made.fim is not None:
            return engine.fim_prompt(*made.fim)
        if made.text is not None:
            return engine.prompt_from_text(made.text)
        prompt, _ = fit_history(engine, made.messages or [], slot_ctx=slot_ctx, max_tokens=made.params.max_tokens,
                                params=made.params, drop_oldest=False)
        return prompt

    def fit(self, chat: ChatInput, engine: GenerationEngine, slot_ctx: int, truncate: bool | None) -> tuple[Prompt, int]:
        """fit_history for a checked chat: the request's `truncate`, else the server's --truncate."""
        drop = truncate if truncate is not None else self.config.truncate != "error"
        return fit_history(engine, chat.messages, slot_ctx=slot_ctx, max_tokens=chat.params.max_tokens, params=chat.params,
                           template_kwargs=chat.template_kwargs, drop_oldest=drop)


class _Options:
    """Reads `options` the way Ollama's Options.FromMap does (a JSON number is an int when whole),
    refusing a wrong type or a value out of range with a 400 that names the option."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.known: set[str] = {"tool_choice"}

    def _get(self, name: str) -> Any:
        self.known.add(name)
        return self.options.get(name)

    def _refuse(self, name: str, what: str) -> APIError:
        return APIError(400, f"options.{name} must be {what}", param=f"options.{name}")

    def integer(self, name: str, low: int | None = None, high: int | None = None, default: int | None = None) -> int | None:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._refuse(name, "a whole number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self._refuse(name, f"from {low if low is not None else '-inf'} to {high if high is not None else 'inf'}")
        return value

    def number(self, name: str, low: float, high: float, default: float) -> float:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._refuse(name, "a number")
        if not low <= value <= high:
            raise self._refuse(name, f"from {low:g} to {high:g}")
        return float(value)

    def text(self, name: str) -> str | None:
        value = self._get(name)
        if value is not None and not isinstance(value, str):
            raise self._refuse(name, "a string")
        return value or None

    def stops(self) -> list[str]:
        value = self._get("stop")
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._refuse("stop", "a list of strings")
        return value


def template_messages(messages: list[OllamaMessage]) -> list[dict[str, Any]]:
    """Ollama messages as the chat template takes them (the shape /v1's messages get): tool calls
    with their arguments, tool results with the tool's name. Images are refused (text models)."""
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message.role.lower()
        if role not in ROLES:
            raise APIError(400, f"messages[{index}].role must be system, user, assistant or tool, not {one_line(message.role, 32)!r}",
                           param=f"messages.{index}.role")
        if message.images:
            raise APIError(400, f"messages[{index}] has images: this model reads text only", param=f"messages.{index}.images")
        shaped: dict[str, Any] = {"role": role, "content": message.content or ""}
        if role == "assistant" and message.tool_calls:
            shaped["tool_calls"] = [_history_call(call) for call in message.tool_calls]
            shaped["content"] = shaped["content"] or None
        if role == "tool":
            if message.tool_name:
                shaped["name"] = message.tool_name
            if message.tool_call_id:
                shaped["tool_call_id"] = message.tool_call_id
        out.append(shaped)
    return out


def _history_call(call: Any) -> dict[str, Any]:
    arguments = call.function.arguments
    shaped: dict[str, Any] = {"type": "function", "function": {"name": call.function.name,
                                                               "arguments": {} if arguments is None else arguments}}
    if call.id:
        shaped["id"] = call.id
    return shaped


# --- replies -----------------------------------------------------------------------------------------


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with microseconds, as Ollama's created_at (Go parses it; clients show it)."""
    return (moment or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def nanoseconds(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


@dataclass
class Timing:
    """When a request arrived and how long loading the model took for it (seconds)."""

    started: float
    load_s: float = 0.0


def metrics(stats: GenerationStats | None, generated: int, total_s: float, load_s: float) -> dict[str, int]:
    """The last object's durations (nanoseconds) and counts, as Ollama's Metrics. prompt_eval_count
    is the whole prompt (cached tokens included, as Ollama counts it); a duration is at least 1 ns
    when its count is not 0, so a client's tokens/second never divides by zero."""
    prompt_tokens = stats.prompt_tokens if stats else 0
    prompt_s = stats.ttft_s if stats else 0.0
    if stats is not None and stats.gen_tps > 0:
        eval_s = generated / stats.gen_tps
    else:
        eval_s = max(total_s - load_s - prompt_s, 0.0)
    return {
        "total_duration": max(nanoseconds(total_s), 1),
        "load_duration": nanoseconds(load_s),
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": max(nanoseconds(prompt_s), 1 if prompt_tokens else 0),
        "eval_count": generated,
        "eval_duration": max(nanoseconds(eval_s), 1 if generated else 0),
    }


class Chunks:
    """One reply's events as Ollama objects: /api/chat's `message` chunks, or /api/generate's
    `response` chunks. Text streams as it comes; a tool call is sent whole once its arguments
    close (arguments as an object, as Ollama sends them)."""

    def __init__(self, model: str, *, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self._calls: dict[int, tuple[str, str, list[str]]] = {}  # index -> (id, name, argument pieces)

    def pieces(self, item: Any) -> list[tuple[str, Any]]:
        """(field, value) for an event: ("content" or "thinking", text), or ("tool_calls", a call)."""
        if isinstance(item, ToolCallStart):
            self._calls[item.index] = (item.id, item.name, [])
        elif isinstance(item, ToolCallArguments) and item.index in self._calls:
            self._calls[item.index][2].append(item.text)
        elif isinstance(item, ToolCallEnd) and item.index in self._calls:
            call_id, name, parts = self._calls.pop(item.index)
            return [("tool_calls", tool_call(call_id, name, "".join(parts), item.index))]
        elif isinstance(item, TextEvent) and item.text:
            return [("thinking" if item.kind == REASONING else "content", item.text)]
        return []

    def head(self) -> dict[str, Any]:
        return {"model": self.model, "created_at": timestamp()}

    def chunk(self, fields: dict[str, Any], *, done: bool = False) -> dict[str, Any]:
        """One object: `fields` (content, thinking, tool_calls) in the endpoint's shape."""
        text = fields.get("content", "")
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if fields.get("thinking"):
                message["thinking"] = fields["thinking"]
            if fields.get("tool_calls"):
                message["tool_calls"] = fields["tool_calls"]
            return {**self.head(), "message": message, "done": done}
        out: dict[str, Any] = {**self.head(), "response": text}
        if fields.get("thinking"):
            out["thinking"] = fields["thinking"]
        out["done"] = done
        return out

    def last(self, fields: dict[str, Any], reason: str, counts: dict[str, int]) -> dict[str, Any]:
        """The final object: done, why, and the metrics (with the whole reply when not streamed)."""
        return {**self.chunk(fields, done=True), "done_reason": reason, **counts}


def tool_call(call_id: str, name: str, arguments: str, index: int) -> dict[str, Any]:
    """A call as Ollama writes it: {"id", "function": {"index", "name", "arguments": {...}}}."""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):
        parsed = {}  # not reached: the call grammar makes every closed call's arguments parse
    return {"id": call_id, "function": {"index": index, "name": name, "arguments": parsed}}
