"""`edgellm serve`: an OpenAI-compatible HTTP API over one loaded Engine (FastAPI on uvicorn).

Requests are prepared (template, tokens, grammar) in a preparation thread, then handed to the
engine's scheduler (edgellm.runtime.batch), which one worker thread steps: every step decodes one
batch for all the slots. Beyond the slots, requests wait in the scheduler's queue; more than
slots + --queue get 503 + Retry-After. Events come back to the event loop through each job's
queue; a client that goes away cancels its job and the scheduler frees the slot at its next step.
Reasoning goes to `reasoning_content`, as DeepSeek's API and llama.cpp's server do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from edgellm import guards, ui
from edgellm.metrics import Metrics
from edgellm.errors import ContextOverflowError, EdgeLLMError, EmptyPromptError, GrammarError, UsageError
from edgellm.reasoning import REASONING, held_prefix_length
from edgellm.runtime import GenerationStats, Prompt, SamplingParams, TextEvent
from edgellm.runtime.batch import Finished, Scheduler, SequenceRequest

DEFAULT_QUEUE_SIZE = 8
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
RETRY_AFTER_SECONDS = 5
# How often a request that is waiting (for the slot, or for its first token) checks whether its
# client is still there; streaming responses are also cancelled by Starlette as soon as it notices.
DISCONNECT_POLL_SECONDS = 0.25
SHUTDOWN_GRACE_SECONDS = 5
# A body has this long to arrive once its head has: a client trickling bytes holds nothing longer.
BODY_TIMEOUT_SECONDS = 30


@dataclass
class ServerConfig:
    model_id: str
    api_key: str | None = None
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for
    queue_size: int = DEFAULT_QUEUE_SIZE  # requests that may wait while one generates
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # None: any Host header (a public bind, protected by the key); else loopback names plus these.
    allowed_hosts: list[str] | None = None
    cors_origins: list[str] = field(default_factory=list)
    # Chat histories longer than a slot: drop the oldest turns ("oldest", as `edgellm chat` does) or 400 ("error").
    truncate: str = "oldest"
    created: int = field(default_factory=lambda: int(time.time()))


# --- errors in OpenAI's shape --------------------------------------------------------------------


class APIError(Exception):
    """An error answered as {"error": {message, type, param, code}} with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The client closed the connection while its request waited or generated."""


# --- request bodies ------------------------------------------------------------------------------

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
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    # Sent back by clients that echo our replies; R1's guidance is not to feed reasoning back.
    reasoning_content: str | None = None
    refusal: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None

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
    stop: Union[str, list[str], None] = None
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
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[Literal["text"]] | None = None


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str]]
    echo: bool | None = None
    best_of: int | None = Field(default=None, ge=1, le=1)
    suffix: str | None = None


# --- the generation slot -------------------------------------------------------------------------


class QueueFull(Exception):
    """Every slot is busy and every place in the queue is taken."""


class Admission:
    """How many requests the server holds: `slots` generating plus `queue_size` waiting.

    Entering is synchronous, so no other request can pass the room check between the check and
    the entry (with --queue 1, four simultaneous requests were once all let in).
    """

    def __init__(self, slots: int, queue_size: int) -> None:
        self.slots = slots
        self.queue_size = queue_size
        self.held = 0

    @property
    def capacity(self) -> int:
        return self.slots + self.queue_size

    def enter(self) -> None:
        if self.held >= self.capacity:
            raise QueueFull()
        self.held += 1

    def leave(self) -> None:
        self.held = max(self.held - 1, 0)


# --- one generation, run in the worker thread ----------------------------------------------------


@dataclass
class Failure:
    error: BaseException


END = object()
Item = Union[TextEvent, GenerationStats, Failure, object]


class GenerationJob:
    """One request's generation on the scheduler; its events arrive on the event loop's queue.

    `on_finished` runs on the event loop once the scheduler has let go of the request (after
    its last event), so nothing on the loop side, cancellation included, can run it early.
    """

    def __init__(self, prompt: Prompt, params: SamplingParams, loop: asyncio.AbstractEventLoop,
                 *, on_finished: Callable[[], None] | None = None) -> None:
        self._on_finished = on_finished
        self._loop = loop
        self.items: asyncio.Queue[Item] = asyncio.Queue()
        self.finished = asyncio.Event()
        self.stats: GenerationStats | None = None
        self.cut_short = False  # cancelled by the server's shutdown: the answer is incomplete
        self.created = time.perf_counter()
        self.first_token_s: float | None = None  # from the request to its first text
        self.request = SequenceRequest(prompt, params, self._emit)

    def cancel(self) -> None:
        self.request.cancel()  # the scheduler drops it at its next step

    def _emit(self, event: Any) -> None:
        """Called from the scheduler's thread."""
        if isinstance(event, GenerationStats):
            self.stats = event
        elif isinstance(event, TextEvent) and self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.created
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is gone (shutdown)
            if isinstance(event, Finished):
                if event.error is not None:
                    self._loop.call_soon_threadsafe(self.items.put_nowait, Failure(event.error))
                self._loop.call_soon_threadsafe(self.items.put_nowait, END)
                self._loop.call_soon_threadsafe(self._finish)
            else:
                self._loop.call_soon_threadsafe(self.items.put_nowait, event)

    def _finish(self) -> None:
        self.finished.set()
        if self._on_finished is not None:
            self._on_finished()

    @property
    def generated_tokens(self) -> int:
        return self.stats.generated_tokens if self.stats is not None else 0

    async def wait_finished(self) -> None:
        """Wait for the scheduler to let go of this request, even inside a cancelled request."""
        with anyio.CancelScope(shield=True):
            await self.finished.wait()


class ItemReader:
    """Reads a job's items, noticing a vanished client while nothing arrives."""

    def __init__(self, job: GenerationJob, request: Request) -> None:
        self.job = job
        self.request = request
        self._getter: asyncio.Future[Item] | None = None

    async def next(self) -> Item:
        if self._getter is None:
            try:
                return self.job.items.get_nowait()
            except asyncio.QueueEmpty:
                self._getter = asyncio.ensure_future(self.job.items.get())
        await wait_watching_client(self._getter, self.request)
        item = self._getter.result()
        self._getter = None
        return item

    def ready(self) -> list[Item]:
        """Items already queued (to send several tokens in one chunk when the client is slow)."""
        out: list[Item] = []
        while self._getter is None:
            try:
                out.append(self.job.items.get_nowait())
            except asyncio.QueueEmpty:
                break
        return out

    def close(self) -> None:
        if self._getter is not None and not self._getter.done():
            self._getter.cancel()


async def wait_watching_client(future: Awaitable[Any], request: Request) -> None:
    """Wait for `future`; raise ClientGone if the client disconnects meanwhile."""
    task = asyncio.ensure_future(future)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
        if done:
            return
        if await request.is_disconnected():
            raise ClientGone()


# --- the server ----------------------------------------------------------------------------------


class Server:
    """Owns the engine, its scheduler and the threads around it; builds the FastAPI app."""

    def __init__(self, engine: Any, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        slots = int(getattr(engine, "sequences", 1))
        self.scheduler = Scheduler(engine, slots)
        self.admission = Admission(slots, config.queue_size)
        self.generator = threading.Thread(target=self.scheduler.run, name="edgellm-generate", daemon=True)
        self.preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgellm-prepare")
        self.max_piece_bytes = int(getattr(engine, "max_piece_bytes", 256))
        self.active_jobs: set[GenerationJob] = set()
        self.ignored_fields: set[str] = set()  # unknown request fields already logged
        self.metrics = Metrics()
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- jobs --

    def start_job(self, prompt: Prompt, params: SamplingParams, request_id: str = "") -> GenerationJob:
        """Hand a request to the scheduler, or 503 when every slot and queue place is taken."""
        if self.draining:
            raise _shutting_down()
        try:
            self.admission.enter()
        except QueueFull:
            raise APIError(
                503,
                f"the server is busy: {self.admission.slots} generating and {self.config.queue_size} waiting",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None

        def finished() -> None:
            self.active_jobs.discard(job)
            self.admission.leave()
            if job.stats is not None:
                self.metrics.generation(job.stats.prompt_tokens, job.stats.generated_tokens)
            if job.first_token_s is not None:
                self.metrics.first_token(job.first_token_s)

        job = GenerationJob(prompt, params, asyncio.get_running_loop(), on_finished=finished)
        job.request.id = request_id
        self.active_jobs.add(job)
        self.scheduler.submit(job.request)
        return job

    def begin_shutdown(self) -> None:
        """On SIGTERM/Ctrl-C (called from the signal handler): take no new work, give the running
        generation SHUTDOWN_GRACE_SECONDS to finish, then cancel it so its response ends cleanly."""
        self.draining = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.call_later, SHUTDOWN_GRACE_SECONDS, self.cancel_all)

    def cancel_all(self) -> None:
        for job in list(self.active_jobs):
            job.cut_short = True
            job.cancel()

    async def shutdown(self) -> None:
        """Stop in-flight generation and wait for the worker to let go of the engine."""
        self.draining = True
        self.cancel_all()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.preparer.shutdown, True)
        for job in list(self.active_jobs):
            await job.wait_finished()
        self.scheduler.stop()
        await loop.run_in_executor(None, self.generator.join)
        self.scheduler.close()

    # -- the app --

    def app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            self.generator.start()
            yield
            await self.shutdown()

        app = FastAPI(title="edgellm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
        app.add_exception_handler(APIError, _api_error_handler)  # type: ignore[arg-type]
        app.add_exception_handler(ValidationError, _validation_error_handler)  # type: ignore[arg-type]
        app.add_exception_handler(ClientGone, _client_gone_handler)  # type: ignore[arg-type]
        app.add_exception_handler(StarletteHTTPException, _http_error_handler)  # type: ignore[arg-type]
        # Anything else: an OpenAI-style 500 (Starlette re-raises it; RequestLog logs one line).
        app.add_exception_handler(Exception, _unexpected_error_handler)

        @app.get("/health")
        async def health(request: Request) -> dict[str, Any]:
            # Liveness for anyone (load balancers, systemd checks); what is served and how busy
            # it is only for those who hold the key.
            if not self.is_authorized(request):
                return {"status": "ok"}
            scheduler = self.scheduler
            return {"status": "ok", "model": self.config.model_id, "busy": scheduler.busy > 0, "queued": scheduler.waiting,
                    "slots": len(scheduler.slots), "slots_busy": scheduler.busy}

        @app.get("/metrics")
        async def metrics(request: Request) -> Response:
            self.authorize(request)
            scheduler = self.scheduler
            text = self.metrics.render(slots=len(scheduler.slots), busy=scheduler.busy, queued=scheduler.waiting)
            return Response(text, media_type="text/plain; version=0.0.4")

        @app.get("/slots")
        async def slots(request: Request) -> list[dict[str, Any]]:
            self.authorize(request)
            return self.scheduler.describe()

        @app.get("/v1/models")
        async def list_models(request: Request) -> dict[str, Any]:
            self.authorize(request)
            return {"object": "list", "data": [self.model_card()]}

        @app.get("/v1/models/{model_id:path}")
        async def get_model(model_id: str, request: Request) -> dict[str, Any]:
            self.authorize(request)
            self.check_model(model_id)
            return self.model_card()

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            self.authorize(request)
            require_json(request)
            body = ChatCompletionRequest.model_validate(await read_json(request, self.config.max_body_bytes), strict=True)
            return await self.chat(request, body)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            self.authorize(request)
            require_json(request)
            body = CompletionRequest.model_validate(await read_json(request, self.config.max_body_bytes), strict=True)
            return await self.complete(request, body)

        wrapped: Any = app
        if self.config.cors_origins:
            from starlette.middleware.cors import CORSMiddleware  # noqa: PLC0415

            wrapped = CORSMiddleware(wrapped, allow_origins=self.config.cors_origins, allow_methods=["GET", "POST"],
                                     allow_headers=["authorization", "content-type"], max_age=600)
        if self.config.allowed_hosts is not None:
            wrapped = guards.HostCheck(wrapped, self.config.allowed_hosts)
        return RequestLog(wrapped, self.metrics)  # type: ignore[return-value]

    def model_card(self) -> dict[str, Any]:
        return {"id": self.config.model_id, "object": "model", "created": self.config.created, "owned_by": "edgellm"}

    def is_authorized(self, request: Request) -> bool:
        key = self.config.api_key
        if key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode("utf-8", "replace"), key.encode())

    def authorize(self, request: Request) -> None:
        if not self.is_authorized(request):
            raise APIError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                type="authentication_error",
                code="invalid_api_key",
            )

    def check_model(self, model: str | None) -> None:
        if model and model != self.config.model_id:
            raise APIError(
                404,
                f"the model '{model}' is not served here; this server serves '{self.config.model_id}'",
                param="model",
                code="model_not_found",
            )

    # -- request -> sampling --

    def sampling(self, body: SamplingFields, max_tokens: int | None) -> SamplingParams:
        self.check_model(body.model)
        for name in body.model_extra or {}:
            if name not in self.ignored_fields and len(self.ignored_fields) < 1000:
                self.ignored_fields.add(name)
                ui.info(f"note: ignoring the request field '{name}' (not an OpenAI or llama.cpp field edgellm uses); said once")
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
        )

    async def chat(self, request: Request, body: ChatCompletionRequest) -> Response:
        if body.tools:
            raise APIError(400, "tools (function calling) are not supported by this server", param="tools", code="unsupported_parameter")
        params = self.sampling(body, body.max_completion_tokens or body.max_tokens)
        if body.response_format is not None and body.response_format.type != "text":
            if body.grammar:
                raise APIError(400, "use either response_format or grammar, not both", param="grammar")
            params.grammar, params.json_schema = response_format_grammar(body.response_format)
            params.split_reasoning = False  # the grammar owns every token: all of it is the JSON answer
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text(i)} for i, m in enumerate(body.messages)
        ]
        self.check_size(len(messages), sum(len(m["content"]) for m in messages), "messages")
        param = "response_format" if body.response_format is not None else "grammar"
        dropped: list[int] = []

        def fitted() -> Prompt:
            prompt, count = self.fit_history(messages, params.max_tokens)
            dropped.append(count)
            return prompt

        prompt = await self.prepare(request, fitted, params, param)
        # A raw `grammar` may spell out "...</think>answer" and is split like free text.
        reply = Reply(request, self, "chat.completion", body.stream, stop_strings(body.stop))
        if dropped and dropped[0]:
            reply.headers["X-Edgellm-Dropped-Messages"] = str(dropped[0])
            reply.log["note"] = f"history too long for a slot: dropped the oldest {dropped[0]} messages"
        return await reply.respond(prompt, params, include_usage=bool(body.stream_options and body.stream_options.include_usage))

    async def complete(self, request: Request, body: CompletionRequest) -> Response:
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
        self.check_size(1, len(text), "prompt")
        engine = self.engine
        prompt = await self.prepare(request, lambda: engine.prompt_from_text(text), params, "grammar")
        reply = Reply(request, self, "text_completion", body.stream, stop_strings(body.stop))
        return await reply.respond(prompt, params, include_usage=bool(body.stream_options and body.stream_options.include_usage))

    def fit_history(self, messages: list[dict[str, str]], max_tokens: int | None) -> tuple[Prompt, int]:
        """The prompt for `messages`, dropping the oldest turns (the system prompt stays) until it
        leaves a slot room for the reply, as `edgellm chat` does; returns it and how many messages
        went. A last turn too long on its own is still refused (400)."""
        engine = self.engine
        slot_ctx = self.scheduler.slot_ctx
        room = min(max_tokens or slot_ctx // 4, slot_ctx // 2)
        head = 0
        while head < len(messages) and messages[head]["role"] == "system":
            head += 1
        system, rest = messages[:head], list(messages[head:])
        dropped = 0
        while True:
            prompt = engine.prompt_from_messages(system + rest, check=False)
            if len(prompt.tokens) <= slot_ctx - room or self.config.truncate == "error":
                break
            cut = next((i for i in range(1, len(rest)) if rest[i]["role"] == "user"), None)
            if cut is None:
                break  # only the last turn is left: too long on its own
            dropped += cut
            rest = rest[cut:]
        engine.check_prompt(prompt.tokens)
        if len(prompt.tokens) >= slot_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(prompt.tokens)} tokens but a slot holds {slot_ctx} (n_ctx)",
                hint="send less, or start the server with a larger --ctx (or fewer --parallel slots)",
            )
        return prompt, dropped

    def check_size(self, n_messages: int, n_chars: int, param: str) -> None:
        """Refuse, without any template or tokenizer work, what cannot fit the context: every
        message takes at least one token, and no token covers more than max_piece_bytes bytes."""
        n_ctx = self.scheduler.slot_ctx
        if n_messages >= n_ctx:
            raise APIError(400, f"{n_messages} messages cannot fit a context of {n_ctx} tokens", param=param,
                           code="context_length_exceeded")
        if n_chars > n_ctx * self.max_piece_bytes:
            raise APIError(400, f"{n_chars} characters of input cannot fit a context of {n_ctx} tokens", param=param,
                           code="context_length_exceeded")

    async def prepare(self, request: Request, make_prompt: Callable[[], Prompt], params: SamplingParams, param: str) -> Prompt:
        """Template, tokenizer and grammar work in the preparation thread, before the generation
        slot is taken: a huge or hostile request costs its own time, not everyone's."""
        engine = self.engine

        def work() -> Prompt:
            text = engine.grammar_text(params)
            params.grammar, params.json_schema = text, None  # checked once; generation reuses it
            return make_prompt()

        future = asyncio.get_running_loop().run_in_executor(self.preparer, work)
        # A client that leaves does not stop the work already running; its outcome is dropped.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        await wait_watching_client(future, request)
        try:
            return future.result()
        except GrammarError as exc:
            raise APIError(400, exc.message, param=param, code="invalid_grammar") from None
        except EdgeLLMError as exc:
            raise _as_api_error(exc) from None


def _shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", type="server_error", code="shutting_down",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def response_format_grammar(response_format: ResponseFormat) -> tuple[str | None, str | None]:
    """(grammar, json_schema) for SamplingParams: any JSON object, or JSON matching a schema."""
    if response_format.type == "json_schema":
        schema = response_format.json_schema.schema_ if response_format.json_schema else None
        if not schema:
            raise APIError(400, "response_format json_schema needs json_schema.schema", param="response_format")
        return None, json.dumps(schema)
    from edgellm.runtime import json_grammar  # noqa: PLC0415

    return json_grammar(), None


def stop_strings(stop: str | list[str] | None) -> list[str]:
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    strings = [s for s in strings if s]
    if len(strings) > 4:
        raise APIError(400, "at most 4 stop sequences", param="stop")
    return strings


class StopFilter:
    """Cuts the output at the first stop sequence; holds back text that may be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.stopped = self.buffer[:cut], "", True
            return out
        keep = max(held_prefix_length(self.buffer, stop) for stop in self.stops)
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class Reply:
    """Turns one job's events into an OpenAI response (JSON or server-sent events)."""

    def __init__(
        self, request: Request, server: Server, kind: str, stream: bool, stops: list[str]
    ) -> None:
        self.request = request
        self.server = server
        self.kind = kind  # "chat.completion" or "text_completion"
        self.stream = stream
        self.stop = StopFilter(stops)
        self.id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.log: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("edgellm", {})
        self.headers: dict[str, str] = {}
        self.log["tokens"] = 0

    async def respond(self, prompt: Prompt, params: SamplingParams, *, include_usage: bool) -> Response:
        job = self.server.start_job(prompt, params, self.id)
        reader = ItemReader(job, self.request)
        try:
            # Wait for the first event before answering, so that a prompt too long for the context
            # or a bad grammar is a 400, not an error inside a 200 stream.
            first = await reader.next()
            if isinstance(first, Failure):
                raise _as_api_error(first.error)
            if not self.stream:
                return await self._collect(first, reader)
        except BaseException as exc:
            job.cancel()
            reader.close()
            self.log["disconnected"] = isinstance(exc, (ClientGone, asyncio.CancelledError))
            await job.wait_finished()
            self.log["tokens"] = job.generated_tokens
            raise
        return StreamingResponse(
            self._sse(first, reader, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **self.headers},
        )

    def _pieces(self, item: Item) -> list[tuple[str, str]]:
        """(field, text) pairs for an event: field is 'reasoning_content' or 'content'."""
        if not isinstance(item, TextEvent) or self.stop.stopped:
            return []
        if item.kind == REASONING:  # only chat splits reasoning; completions ask for none
            return [("reasoning_content", item.text)]
        text = self.stop.feed(item.text)
        return [("content", text)] if text else []

    async def _collect(self, first: Item, reader: ItemReader) -> Response:
        parts: dict[str, list[str]] = {"reasoning_content": [], "content": []}
        item = first
        while item is not END:
            if isinstance(item, Failure):
                raise _as_api_error(item.error)
            for name, text in self._pieces(item):
                parts[name].append(text)
            if self.stop.stopped:
                reader.job.cancel()
            item = await reader.next()
        parts["content"].append(self.stop.flush())
        await reader.job.wait_finished()
        self._note_finished(reader.job)
        reasoning, answer = "".join(parts["reasoning_content"]), "".join(parts["content"])
        finish = self._finish_reason(reader.job)
        if self.kind == "text_completion":
            choice: dict[str, Any] = {"index": 0, "text": answer, "logprobs": None, "finish_reason": finish}
        else:
            message: dict[str, Any] = {"role": "assistant", "content": answer}
            if reasoning:
                message["reasoning_content"] = reasoning
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return JSONResponse(
            {"id": self.id, "object": self.kind, "created": self.created, "model": self.server.config.model_id,
             "choices": [choice], "usage": _usage(reader.job)},
            headers=self.headers,
        )

    def _finish_reason(self, job: GenerationJob) -> str:
        if self.stop.stopped:
            return "stop"
        if job.cut_short:
            self.log["note"] = "cut short by shutdown"
            return "length"
        return "length" if job.stats is not None and job.stats.finish_reason == "length" else "stop"

    def _note_finished(self, job: GenerationJob) -> None:
        self.log["tokens"] = job.generated_tokens
        if job.stats is not None:
            self.log["tps"] = job.stats.gen_tps

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.server.config.model_id}
        if self.kind == "text_completion":
            data["object"] = "text_completion"
            data["choices"] = [] if delta is None else [
                {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
            ]
        else:
            data["object"] = "chat.completion.chunk"
            data["choices"] = [] if delta is None else [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            ]
        if usage is not None:
            data["usage"] = usage
        return _sse_data(data)

    async def _sse(self, first: Item, reader: ItemReader, include_usage: bool) -> AsyncIterator[bytes]:
        job = reader.job
        completed = False
        try:
            if self.kind == "chat.completion":
                yield self._chunk({"role": "assistant", "content": ""})
            batch = [first]
            while True:
                out, ended = self._render(batch)
                if out:
                    yield out
                if ended:
                    break
                if self.stop.stopped:
                    job.cancel()  # keep reading until END: the worker says when it has stopped
                batch = [await reader.next(), *reader.ready()]
            rest = self.stop.flush()
            if rest:
                yield self._chunk({"content": rest})
            await job.wait_finished()
            self._note_finished(job)
            yield self._chunk({}, self._finish_reason(job))
            if include_usage:
                yield self._chunk(None, usage=_usage(job))
            yield b"data: [DONE]\n\n"
            completed = True
        finally:
            if not completed:
                # The client went away (or the server is shutting down): stop generating.
                job.cancel()
                reader.close()
                self.log["disconnected"] = True
                await job.wait_finished()
                self.log["tokens"] = job.generated_tokens

    def _render(self, batch: list[Item]) -> tuple[bytes, bool]:
        """SSE bytes for a batch of events, consecutive text of one field in one chunk; and END seen."""
        out: list[bytes] = []
        delta: dict[str, str] = {}
        failure: bytes | None = None
        ended = False
        for item in batch:
            if isinstance(item, Failure):
                failure = _sse_data(_as_api_error(item.error).body())
            if item is END or failure is not None:
                ended = True
                break
            for name, text in self._pieces(item):
                if delta and name not in delta:
                    out.append(self._chunk(delta))
                    delta = {}
                delta[name] = delta.get(name, "") + text
        if delta:
            out.append(self._chunk(delta))
        if failure is not None:
            out.append(failure)
        return b"".join(out), ended


def _sse_data(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _usage(job: GenerationJob) -> dict[str, int]:
    prompt = job.stats.prompt_tokens if job.stats else 0
    completion = job.generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _as_api_error(error: BaseException) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, ContextOverflowError):
        return APIError(400, error.message, param="messages", code="context_length_exceeded")
    if isinstance(error, EmptyPromptError):
        return APIError(400, error.message, param="prompt")
    if isinstance(error, EdgeLLMError):
        return APIError(400, error.message)
    return APIError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")


# --- request plumbing ----------------------------------------------------------------------------


def require_json(request: Request) -> None:
    """POST bodies must say they are JSON: a web page can send text/plain to any site without a
    CORS preflight, so accepting it would let any page the user opens use a loopback server."""
    if not guards.is_json_media_type(request.headers.get("content-type")):
        raise APIError(415, "the request body must be JSON: send the header 'Content-Type: application/json'",
                       code="unsupported_media_type")


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing bodies over `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(BODY_TIMEOUT_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None  # left mid-body: a 499 in the log, not a 500
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {BODY_TIMEOUT_SECONDS} s", code="request_timeout") from None
    try:
        return guards.parse_json_body(b"".join(chunks))
    except guards.BodyError as exc:
        raise APIError(400, f"the request body is not acceptable: {exc}", code="invalid_json") from None


def _validation_message(error: ValidationError) -> APIError:
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "extra_forbidden":
        return APIError(400, f"unknown field '{param}'", param=param, code="unknown_field")
    if first["type"] == "missing":
        return APIError(400, f"missing field '{param}'", param=param, code="missing_field")
    return APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param, code="invalid_value")


async def _api_error_handler(_: Request, error: APIError) -> JSONResponse:
    return error.response()


async def _http_error_handler(_: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = "not_found" if error.status_code == 404 else "method_not_allowed" if error.status_code == 405 else None
    return APIError(error.status_code, str(error.detail), code=kind).response()


async def _validation_error_handler(_: Request, error: ValidationError) -> JSONResponse:
    return _validation_message(error).response()


async def _client_gone_handler(_: Request, __: ClientGone) -> Response:
    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


async def _unexpected_error_handler(_: Request, error: Exception) -> JSONResponse:
    return _as_api_error(error).response()


KNOWN_PATHS = frozenset({"/health", "/metrics", "/slots", "/v1/models", "/v1/chat/completions", "/v1/completions"})


class RequestLog:
    """ASGI middleware: one stderr line per request (method, path, status, tokens, tok/s, time)."""

    def __init__(self, app: Any, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 0}

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        failure: BaseException | None = None
        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:  # already answered with a 500 body; log one line, not a traceback
            failure = exc
            if os.environ.get("EDGELLM_DEBUG", "") not in ("", "0"):
                traceback.print_exc()
        finally:
            line = request_log_line(scope, status["code"], time.perf_counter() - started)
            if self.metrics is not None:
                # Known paths only: a scanner's random URLs must not grow the label set without end.
                known = scope["path"] in KNOWN_PATHS
                self.metrics.request(scope["path"] if known else "other", status["code"] or 500)
            if failure is not None:
                line += f" | error: {type(failure).__name__}: {failure}"
            ui.info(line)


def request_log_line(scope: dict[str, Any], status: int, seconds: float) -> str:
    note = scope.get("state", {}).get("edgellm", {})
    parts = [f"{scope['method']} {scope['path']} {status or '-'}"]
    if "tokens" in note:
        parts.append(f"{note['tokens']} tokens")
        if note.get("tps"):
            parts.append(f"{note['tps']:.1f} tok/s")
    parts.append(f"{seconds:.2f}s")
    if note.get("note"):
        parts.append(note["note"])
    if note.get("disconnected"):
        parts.append("client disconnected: generation stopped")
    return " | ".join(parts)


def create_app(engine: Any, config: ServerConfig) -> Any:
    """The ASGI app serving `engine` (an edgellm.runtime.Engine, or anything with its generate API)."""
    return Server(engine, config).app()


# --- running it ----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def allowed_hosts(bind_host: str, extra: list[str]) -> list[str] | None:
    """The Host values to answer: on loopback, loopback names plus `extra`; elsewhere any (None),
    unless `extra` names some (then loopback names plus those)."""
    if is_loopback(bind_host) or extra:
        return list(extra)
    return None


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to expose the model beyond this machine without a key (or an explicit --insecure)."""
    if is_loopback(host) or api_key or insecure:
        return
    raise UsageError(
        f"refusing to listen on {host} without an API key: anyone who can reach it could use the model",
        hint=f"edgellm serve --host {host} --api-key \"$(openssl rand -hex 16)\"  (or add --insecure on a trusted network)",
    )


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen before the model loads, so a taken port fails fast with a clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, IndexError) as exc:
        raise UsageError(f"cannot listen on {host}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint=f"pick another port: edgellm serve --port {port + 1 if port else 8080}",
        ) from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def serve(engine: Any, config: ServerConfig, sock: socket.socket) -> list[int]:
    """Serve until SIGTERM or Ctrl-C; uvicorn drains in-flight requests, then we cancel the rest.

    Returns the signals that stopped it.
    """
    import uvicorn  # noqa: PLC0415

    edge = Server(engine, config)

    class SignalAwareServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            edge.begin_shutdown()

    uv_config = uvicorn.Config(
        edge.app(),
        log_level="warning",
        access_log=False,  # RequestLog writes one line per request instead
        lifespan="on",
        # A backstop: begin_shutdown cancels generation after the grace period, ending responses.
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS + 10,
        # No connection limit: uvicorn counts silent connections against it, so 63 idle sockets
        # shut everyone out. Connections that send no request head in time are closed instead,
        # and the generation queue bounds the real work.
        limit_concurrency=None,
        http=guards.head_deadline_protocol(),
    )
    server = SignalAwareServer(uv_config)
    received: list[int] = []
    # uvicorn re-raises the signal that stopped it once it is done; catch that here so that a
    # SIGTERM ends with exit code 0 after a clean shutdown instead of killing the process.
    previous = {sig: signal.signal(sig, lambda number, _frame: received.append(number)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received
