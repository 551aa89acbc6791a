"""The HTTP app: routes, authorisation, request -> prompt and sampling, history fitting."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from edgellm import ui
from edgellm.errors import ContextOverflowError, EdgeLLMError, GrammarError, one_line
from edgellm.runtime.protocol import GenerationEngine
from edgellm.runtime.types import DEFAULT_THINK_MESSAGE, Prompt, SamplingParams
from edgellm.serve import guards
from edgellm.serve.access_log import RequestLog
from edgellm.serve.errors import (
    RETRY_AFTER_SECONDS,
    APIError,
    ClientGone,
    as_api_error,
    install_handlers,
    shutting_down,
)
from edgellm.serve.jobs import Admission, GenerationJob, QueueFull, wait_watching_client
from edgellm.serve.lifecycle import supervise
from edgellm.serve.metrics import Metrics
from edgellm.serve.replies import Reply
from edgellm.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFormat,
    SamplingFields,
)
from edgellm.serve.sdnotify import Notifier
from edgellm.text.stops import check_stops
from edgellm.text.toolcalls import ToolSpecError, ToolUse, parse_tool_choice, parse_tools

DEFAULT_QUEUE_SIZE = 8
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
SHUTDOWN_GRACE_SECONDS = 5
# Requests prepared at once (template, tokenizer, grammar checks): more than one, so a slow one does
# not hold up the others; few, as they share the board's cores with generation.
PREPARE_THREADS = 2
# Unknown request fields are named in the log once each: this many names, this long at most.
MAX_LOGGED_FIELDS = 64
MAX_LOGGED_FIELD_NAME = 64
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
    # Reasoning: the default budget (None: the model decides; 0: no reasoning), the budgets of
    # reasoning_effort, and the bridge line written when a budget runs out.
    think_budget: int | None = None
    effort_budgets: dict[str, int] = field(default_factory=lambda: {"low": 256, "medium": 1024, "high": 4096})
    think_message: str = DEFAULT_THINK_MESSAGE
    # Free the model after this many seconds without requests; the next request loads it again.
    idle_unload_s: float | None = None
    created: int = field(default_factory=lambda: int(time.time()))


class Server:
    """Owns the engine, its scheduler and the threads around it; builds the FastAPI app."""

    def __init__(self, engine: GenerationEngine, config: ServerConfig, *, notifier: Notifier | None = None,
                 load_engine: Callable[[], GenerationEngine] | None = None) -> None:
        """`load_engine` loads the model again after --idle-unload freed it; `notifier` tells
        systemd how the service is (a no-op outside systemd)."""
        self.engine: GenerationEngine | None = engine  # None while --idle-unload has freed it
        self.first_engine = engine
        self.config = config
        self.notifier = notifier or Notifier({})
        self.load_engine = load_engine
        self.scheduler = engine.scheduler  # the engine's one scheduler (run and chat use it too)
        slots = len(self.scheduler.slots)
        self.admission = Admission(slots, config.queue_size)
        self.generator = self._generator_thread()
        self.preparer = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="edgellm-prepare")
        self.max_piece_bytes = int(engine.max_piece_bytes)
        self.active_jobs: set[GenerationJob] = set()
        self.ignored_fields: set[str] = set()  # unknown request fields already logged
        self.metrics = Metrics()
        self.draining = False
        self.ready_status = f"serving {config.model_id}"
        self.users = 0  # requests past authorisation that may touch the engine, not yet answered
        self.last_used = time.monotonic()
        self._load_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _generator_thread(self) -> threading.Thread:
        return threading.Thread(target=self.scheduler.run, name="edgellm-generate", daemon=True)

    # -- jobs --

    def start_job(self, prompt: Prompt, params: SamplingParams, request_id: str = "") -> GenerationJob:
        """Hand a request to the scheduler, or 503 when every slot and queue place is taken."""
        if self.draining:
            raise shutting_down()
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
        self.notifier.stopping(f"stopping: {len(self.active_jobs)} requests get {SHUTDOWN_GRACE_SECONDS}s to finish")
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.call_later, SHUTDOWN_GRACE_SECONDS, self.cancel_all)

    def cancel_all(self) -> None:
        for job in list(self.active_jobs):
            job.cut_short = True
            job.cancel()

    async def shutdown(self) -> None:
        """Stop in-flight generation and wait for the worker to let go of the engine."""
        self.draining = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        self.cancel_all()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.preparer.shutdown, True)
        for job in list(self.active_jobs):
            await job.wait_finished()
        async with self._load_lock:
            if self.engine is self.first_engine:
                await loop.run_in_executor(None, self._stop_generator)  # its owner closes it
            elif self.engine is not None:
                await loop.run_in_executor(None, self._close_engine, self.engine)  # one reload() made

    def _stop_generator(self) -> None:
        self.scheduler.stop()
        self.generator.join()
        self.scheduler.close()

    # -- idle unload --

    @property
    def loaded_engine(self) -> GenerationEngine:
        """The engine, inside engine_in_use (which loads it): a request never sees it unloaded."""
        if self.engine is None:
            raise APIError(503, "the model is not loaded", type="server_error", code="model_unloaded")
        return self.engine

    @asynccontextmanager
    async def engine_in_use(self) -> AsyncIterator[None]:
        """Around a request's use of the engine: loads it if --idle-unload freed it, and keeps
        the unload away until the request is answered (its generation job, if any, holds it then)."""
        self.users += 1
        self.last_used = time.monotonic()
        try:
            if self.engine is None:
                await self.reload()
            yield
        finally:
            self.users -= 1
            self.last_used = time.monotonic()

    def should_unload(self, now: float) -> bool:
        idle = self.config.idle_unload_s
        return (idle is not None and self.engine is not None and not self.draining and self.users == 0
                and not self.active_jobs and self.scheduler.busy == 0 and self.scheduler.waiting == 0
                and now - self.last_used >= idle)

    async def unload(self) -> None:
        """Free the model and its context (the memory goes back to the board)."""
        async with self._load_lock:
            if not self.should_unload(time.monotonic()):
                return
            engine, self.engine = self.loaded_engine, None  # requests from now on wait for reload()
            await asyncio.get_running_loop().run_in_executor(None, self._close_engine, engine)
            self.metrics.unloaded()
            ui.info(f"idle for {self.config.idle_unload_s:g}s: model unloaded (the next request loads it again)")

    def _close_engine(self, engine: GenerationEngine) -> None:
        self._stop_generator()
        engine.close()

    async def reload(self) -> None:
        async with self._load_lock:
            if self.engine is not None:
                return
            if self.load_engine is None:
                raise APIError(503, "the model is not loaded", type="server_error", code="model_unloaded")
            started = time.perf_counter()
            engine = await asyncio.get_running_loop().run_in_executor(None, self.load_engine)
            self.scheduler = engine.scheduler
            self.generator = self._generator_thread()
            self.generator.start()
            self.engine = engine
            self.metrics.reloaded()
            ui.info(f"model loaded again in {time.perf_counter() - started:.1f}s")

    # -- the app --

    def app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            self.generator.start()
            self._supervisor = asyncio.create_task(supervise(self))
            self.notifier.ready(self.ready_status)
            yield
            await self.shutdown()

        app = FastAPI(title="edgellm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
        install_handlers(app)

        @app.get("/health")
        async def health(request: Request) -> dict[str, Any]:
            # Liveness for anyone (load balancers, systemd checks); what is served and how busy
            # it is only for those who hold the key.
            if not self.is_authorized(request):
                return {"status": "ok"}
            scheduler = self.scheduler
            loaded = self.engine is not None
            return {"status": "ok", "model": self.config.model_id, "model_loaded": loaded,
                    "busy": loaded and scheduler.busy > 0, "queued": scheduler.waiting if loaded else 0,
                    "slots": len(scheduler.slots), "slots_busy": scheduler.busy if loaded else 0,
                    "idle_unload_s": self.config.idle_unload_s}

        @app.get("/metrics")
        async def metrics(request: Request) -> Response:
            self.authorize(request)
            scheduler = self.scheduler
            loaded = self.engine is not None
            text = self.metrics.render(slots=len(scheduler.slots), busy=scheduler.busy if loaded else 0,
                                       queued=scheduler.waiting if loaded else 0, loaded=loaded)
            return Response(text, media_type="text/plain; version=0.0.4")

        @app.get("/slots")
        async def slots(request: Request) -> list[dict[str, Any]]:
            self.authorize(request)
            return self.scheduler.describe() if self.engine is not None else []

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
            async with self.engine_in_use():
                return await self.chat(request, body)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            self.authorize(request)
            require_json(request)
            body = CompletionRequest.model_validate(await read_json(request, self.config.max_body_bytes), strict=True)
            async with self.engine_in_use():
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

    async def chat(self, request: Request, body: ChatCompletionRequest) -> Response:
        params = self.sampling(body, body.max_completion_tokens or body.max_tokens)
        params.tool_use = self.tool_use(body)
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
        self.check_size(len(messages), tools_chars + sum(len(m["content"] or "") + len(json.dumps(m.get("tool_calls") or ""))
                                                         for m in messages), "messages")
        template_kwargs = template_variables(body.chat_template_kwargs)
        param = "response_format" if body.response_format is not None else "tools" if params.tool_use else "grammar"
        dropped: list[int] = []

        def fitted() -> Prompt:
            prompt, count = self.fit_history(messages, params.max_tokens, params, template_kwargs)
            dropped.append(count)
            return prompt

        prompt = await self.prepare(request, fitted, params, param)
        # A raw `grammar` may spell out "...</think>answer" and is split like free text.
        reply = Reply(request, self.start_job, self.config.model_id, "chat.completion", body.stream)
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
        engine = self.loaded_engine
        prompt = await self.prepare(request, lambda: engine.prompt_from_text(text), params, "grammar")
        reply = Reply(request, self.start_job, self.config.model_id, "text_completion", body.stream)
        return await reply.respond(prompt, params, include_usage=bool(body.stream_options and body.stream_options.include_usage))

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

    def tool_use(self, body: ChatCompletionRequest) -> ToolUse | None:
        """The request's tools in this model's call format (None: no tools, or tool_choice none
        with no tools), refused with a one-line reason naming the field."""
        if not body.tools and body.tool_choice in (None, "none", "auto"):
            return None
        try:
            tools = parse_tools(body.tools or [])
            choice = parse_tool_choice(body.tool_choice, tools)
        except ToolSpecError as exc:
            raise APIError(400, exc.message, param=exc.param, code="invalid_tools") from None
        return ToolUse(self.loaded_engine.tool_format, tools, choice, parallel=body.parallel_tool_calls is not False)

    def fit_history(self, messages: list[dict[str, Any]], max_tokens: int | None, params: SamplingParams | None = None,
                    template_kwargs: dict[str, Any] | None = None) -> tuple[Prompt, int]:
        """The prompt for `messages`, dropping the oldest turns (the system prompt stays) until it
        leaves a slot room for the reply, as `edgellm chat` does; returns it and how many messages
        went. A last turn too long on its own is still refused (400)."""
        engine = self.loaded_engine
        slot_ctx = self.scheduler.slot_ctx
        room = min(max_tokens or slot_ctx // 4, slot_ctx // 2)
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

        # Turns are dropped whole: the history restarts at a user message. Dropping more never
        # makes the prompt longer, so a binary search over those starts finds the fewest to drop
        # in a handful of template runs, not one per turn (a 4,000-turn body made 4,000).
        starts = [0] + [i for i in range(1, len(rest)) if rest[i]["role"] == "user"]
        low = 0
        if len(prompt_from(0).tokens) > limit and self.config.truncate != "error":
            low, high = 1, len(starts) - 1  # if nothing fits, the last turn alone (then refused below)
            while low < high:
                middle = (low + high) // 2
                if len(prompt_from(starts[middle]).tokens) <= limit:
                    high = middle
                else:
                    low = middle + 1
            low = min(low, len(starts) - 1)
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
        engine = self.loaded_engine
        gone = threading.Event()

        def step() -> None:
            if gone.is_set():
                raise ClientGone()  # the client left: the rest of the work is not done

        def work() -> Prompt:
            step()
            text = engine.grammar_text(params)
            params.grammar, params.json_schema = text, None  # checked once; generation reuses it
            step()
            if params.tool_use is not None and params.tool_use.active:
                engine.tool_grammar(params.tool_use)  # kept on the ToolUse
                step()
            return make_prompt()

        future = asyncio.get_running_loop().run_in_executor(self.preparer, work)
        future.add_done_callback(lambda done: done.cancelled() or done.exception())  # an outcome nobody reads
        try:
            await wait_watching_client(future, request)
        except ClientGone:
            gone.set()  # a preparation not started is dropped; one under way stops at its next step
            future.cancel()
            raise
        try:
            return future.result()
        except GrammarError as exc:
            raise APIError(400, exc.message, param=param, code="invalid_grammar") from None
        except EdgeLLMError as exc:
            raise as_api_error(exc) from None


# Template variables a request may not set: they are the template's inputs, set by the server.
RESERVED_TEMPLATE_VARIABLES = frozenset({
    "messages", "tools", "tool_choice", "functions", "function_call", "add_generation_prompt",
    "bos_token", "eos_token", "raise_exception", "strftime_now",
})
MAX_TEMPLATE_VARIABLES = 16


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


def create_app(engine: GenerationEngine, config: ServerConfig) -> Any:
    """The ASGI app serving `engine` (an edgellm.runtime.engine.Engine, or anything with its generate API)."""
    return Server(engine, config).app()


