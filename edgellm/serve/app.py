"""The HTTP side of `edgellm serve`: the FastAPI app, authorisation, and the OpenAI handlers
(Ollama's API is mounted beside them from edgellm.serve.ollama).

A handler reads and checks the body (edgellm.serve.intake, edgellm.serve.translate), prepares the
prompt in the preparation threads (templates, tokens, grammar: off the event loop and before a
slot is taken), and hands it to the engine host (edgellm.serve.host) through a Reply
(edgellm.serve.replies). Rule: no scheduler here: the routes ask the host (start_job,
capacity()), nothing else. Requests find their model by name in `models` (edgellm.serve.models),
which loads it when needed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from edgellm.runtime.protocol import GenerationEngine
from edgellm.runtime.types import Prompt
from edgellm.serve import guards
from edgellm.serve.access_log import RequestLog
from edgellm.serve.config import ServerConfig
from edgellm.serve.errors import APIError, install_handlers
from edgellm.serve.host import EngineHost
from edgellm.serve.intake import PREPARE_THREADS, prompt_off_the_loop, read_json, require_json
from edgellm.serve.library import Library
from edgellm.serve.lifecycle import supervise
from edgellm.serve.metrics import Metrics
from edgellm.serve.models import Candidate, ModelSet, Served, served_from
from edgellm.serve.ollama import OllamaAPI, describe
from edgellm.serve.replies import Reply
from edgellm.serve.schemas import ChatCompletionRequest, CompletionRequest
from edgellm.serve.sdnotify import Notifier
from edgellm.serve.translate import Translator

SHUTDOWN_GRACE_SECONDS = 5


class Server:
    """The FastAPI app over the served models' engine hosts: its routes, their authorisation, and its life
    (start, the supervisor beside it, the drain on SIGTERM, the shutdown)."""

    def __init__(self, engine: GenerationEngine | None, config: ServerConfig, *, notifier: Notifier | None = None,
                 load_engine: Callable[[], GenerationEngine] | None = None, candidates: Sequence[Candidate] = (),
                 budget: int | None = None, keep_alive_s: float | None = None, keep_alive_given: bool = False,
                 default_aliases: Sequence[str] = (), library: Library | None = None) -> None:
        """`engine`: the -m model, loaded (the default model; None: none); `load_engine` loads it
        again after an unload freed it; `candidates`: the models loaded when a request asks for
        them, within `budget` bytes together, each unloaded after `keep_alive_s` idle (None: only
        to make room; a request's keep_alive changes it; `keep_alive_given`: for -m's model too);
        `default_aliases`: -m's other names; `library`: the disk's models, for pulls and deletes
        (None: the served set is fixed); `notifier` tells systemd how the service is (a no-op
        outside systemd)."""
        self.config = config
        self.notifier = notifier or Notifier({})
        self.metrics = Metrics()
        self.models = ModelSet(queue_size=config.queue_size, metrics=self.metrics, budget=budget, keep_alive_s=keep_alive_s)
        if engine is not None:
            idle_s = config.idle_unload_s if config.idle_unload_s is not None or not keep_alive_given else keep_alive_s
            host = EngineHost(engine, queue_size=config.queue_size, metrics=self.metrics, load_engine=load_engine,
                              idle_unload_s=idle_s)
            host.follows_keep_alive = keep_alive_given
            host.name = config.model_id if candidates else ""
            self.models.add(Served(config.model_id, describe(config.model_id, host), list(default_aliases), host=host), default=True)
        for candidate in candidates:
            self.models.add(served_from(candidate))
        self.translate = Translator(config)
        self.translate.routed = True  # the routes find the model by name (404 before translation)
        self.preparer = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="edgellm-prepare")
        self.ollama = OllamaAPI(config, self.models, self.authorize, self.preparer, library)
        self.ready_status = f"serving {config.model_id or f'{len(self.models.served)} models'}"
        self._supervisor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def host(self) -> EngineHost | None:
        """The default model's host (-m's), if any."""
        return self.models.default.host if self.models.default is not None else None

    # -- life --

    def begin_shutdown(self) -> None:
        """On SIGTERM/Ctrl-C (called from the signal handler): take no new work, give the running
        generation SHUTDOWN_GRACE_SECONDS to finish, then cancel it so its response ends cleanly."""
        self.models.drain()
        jobs = sum(host.capacity().jobs for host in self.models.hosts())
        self.notifier.stopping(f"stopping: {jobs} requests get {SHUTDOWN_GRACE_SECONDS}s to finish")
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.call_later, SHUTDOWN_GRACE_SECONDS, self.models.cancel_all)

    async def shutdown(self) -> None:
        """Stop in-flight generation and wait for the worker to let go of the engine."""
        self.models.drain()
        if self._supervisor is not None:
            self._supervisor.cancel()
        self.models.cancel_all()
        self.ollama.pulls.cancel_all()
        await asyncio.get_running_loop().run_in_executor(None, self.preparer.shutdown, True)
        await self.models.close()

    # -- the app --

    def app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            for host in self.models.hosts():
                host.start()
            self.ollama.start()
            self._supervisor = asyncio.create_task(supervise(self.models, self.notifier))
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
            rooms = [host.capacity() for host in self.models.hosts()]
            default = self.host
            return {"status": "ok", "model": self.config.model_id or None,
                    "model_loaded": default.capacity().loaded if default is not None else any(room.loaded for room in rooms),
                    "models_loaded": [served.model_id for served in self.models.loaded()],
                    "busy": any(room.busy for room in rooms), "queued": sum(room.waiting for room in rooms),
                    "slots": sum(room.slots for room in rooms), "slots_busy": sum(room.busy for room in rooms),
                    "idle_unload_s": self.config.idle_unload_s}

        @app.get("/metrics")
        async def metrics(request: Request) -> Response:
            self.authorize(request)
            rooms = [(served.model_id, served.host.capacity()) for served in self.models.served.values() if served.host is not None]
            text = self.metrics.render(slots=sum(room.slots for _, room in rooms), busy=sum(room.busy for _, room in rooms),
                                       queued=sum(room.waiting for _, room in rooms), loaded=any(room.loaded for _, room in rooms),
                                       models=[(name, room.slots, room.busy, room.waiting, room.loaded) for name, room in rooms])
            return Response(text, media_type="text/plain; version=0.0.4")

        @app.get("/slots")
        async def slots(request: Request) -> list[dict[str, Any]]:
            self.authorize(request)
            return [{**slot, "model": served.model_id} for served in self.models.served.values() if served.host is not None
                    for slot in served.host.describe_slots()]

        @app.get("/v1/models")
        async def list_models(request: Request) -> dict[str, Any]:
            self.authorize(request)
            return {"object": "list", "data": [self.model_card(served.model_id) for served in await self.models.listing()]}

        @app.get("/v1/models/{model_id:path}")
        async def get_model(model_id: str, request: Request) -> dict[str, Any]:
            self.authorize(request)
            return self.model_card((await self.models.for_v1(model_id)).model_id)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            self.authorize(request)
            require_json(request)
            body = ChatCompletionRequest.model_validate(await read_json(request, self.config.max_body_bytes), strict=True)
            served = await self.models.for_v1(body.model)
            async with self.models.use(served) as host:
                return await self.chat(request, body, served.model_id, host)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            self.authorize(request)
            require_json(request)
            body = CompletionRequest.model_validate(await read_json(request, self.config.max_body_bytes), strict=True)
            served = await self.models.for_v1(body.model)
            async with self.models.use(served) as host:
                return await self.complete(request, body, served.model_id, host)

        self.ollama.mount(app)

        wrapped: Any = app
        if self.config.cors_origins:
            from starlette.middleware.cors import CORSMiddleware  # noqa: PLC0415

            wrapped = CORSMiddleware(wrapped, allow_origins=self.config.cors_origins, allow_methods=["GET", "POST"],
                                     allow_headers=["authorization", "content-type"], max_age=600)
        if self.config.allowed_hosts is not None:
            wrapped = guards.HostCheck(wrapped, self.config.allowed_hosts)
        return RequestLog(wrapped, self.metrics)  # type: ignore[return-value]

    def model_card(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.config.created, "owned_by": "edgellm"}

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

    # -- the handlers (inside host.in_use(): the engine is loaded) --

    async def chat(self, request: Request, body: ChatCompletionRequest, model_id: str, host: EngineHost) -> Response:
        engine, slot_ctx = host.loaded_engine, host.capacity().slot_ctx
        chat = self.translate.chat(body, engine, slot_ctx, host.max_piece_bytes)
        dropped: list[int] = []

        def fitted() -> Prompt:
            prompt, count = self.translate.fit(chat, engine, slot_ctx)
            dropped.append(count)
            return prompt

        prompt = await prompt_off_the_loop(self.preparer, engine, request, fitted, chat.params, chat.param)
        # A raw `grammar` may spell out "...</think>answer" and is split like free text.
        reply = Reply(request, host.start_job, model_id, "chat.completion", body.stream)
        if dropped and dropped[0]:
            reply.headers["X-Edgellm-Dropped-Messages"] = str(dropped[0])
            reply.log["note"] = f"history too long for a slot: dropped the oldest {dropped[0]} messages"
        return await reply.respond(prompt, chat.params, include_usage=bool(body.stream_options and body.stream_options.include_usage))

    async def complete(self, request: Request, body: CompletionRequest, model_id: str, host: EngineHost) -> Response:
        engine = host.loaded_engine
        text, params = self.translate.completion(body, host.capacity().slot_ctx, host.max_piece_bytes)
        prompt = await prompt_off_the_loop(self.preparer, engine, request, lambda: engine.prompt_from_text(text), params, "grammar")
        reply = Reply(request, host.start_job, model_id, "text_completion", body.stream)
        return await reply.respond(prompt, params, include_usage=bool(body.stream_options and body.stream_options.include_usage))


def create_app(engine: GenerationEngine, config: ServerConfig) -> Any:
    """The ASGI app serving `engine` (an edgellm.runtime.engine.Engine, or anything with its generate API)."""
    return Server(engine, config).app()


