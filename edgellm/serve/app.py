"""The HTTP side of `edgellm serve`: the FastAPI app, authorisation, and the OpenAI handlers
(Ollama's API is mounted beside them from edgellm.serve.ollama).

A handler reads and checks the body (edgellm.serve.intake, edgellm.serve.translate), prepares the
prompt in the preparation threads (templates, tokens, grammar: off the event loop and before a
slot is taken), and hands it to the engine host (edgellm.serve.host) through a Reply
(edgellm.serve.replies). Rule: no scheduler here: the routes ask the host (start_job,
capacity(), in_use()), nothing else. Requests find their host by model name in `hosts`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
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
from edgellm.serve.lifecycle import supervise
from edgellm.serve.metrics import Metrics
from edgellm.serve.ollama import OllamaAPI
from edgellm.serve.replies import Reply
from edgellm.serve.schemas import ChatCompletionRequest, CompletionRequest
from edgellm.serve.sdnotify import Notifier
from edgellm.serve.translate import Translator

SHUTDOWN_GRACE_SECONDS = 5


class Server:
    """The FastAPI app over one engine host: its routes, their authorisation, and its life
    (start, the supervisor beside it, the drain on SIGTERM, the shutdown)."""

    def __init__(self, engine: GenerationEngine, config: ServerConfig, *, notifier: Notifier | None = None,
                 load_engine: Callable[[], GenerationEngine] | None = None) -> None:
        """`load_engine` loads the model again after --idle-unload freed it; `notifier` tells
        systemd how the service is (a no-op outside systemd)."""
        self.config = config
        self.notifier = notifier or Notifier({})
        self.metrics = Metrics()
        self.host = EngineHost(engine, queue_size=config.queue_size, metrics=self.metrics, load_engine=load_engine,
                               idle_unload_s=config.idle_unload_s)
        # Model name -> its host: every Ollama request finds its model here (one entry today: -m's).
        self.hosts = {config.model_id: self.host}
        self.translate = Translator(config)
        self.preparer = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="edgellm-prepare")
        self.ollama = OllamaAPI(config, self.hosts, self.authorize, self.preparer)
        self.ready_status = f"serving {config.model_id}"
        self._supervisor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life --

    def begin_shutdown(self) -> None:
        """On SIGTERM/Ctrl-C (called from the signal handler): take no new work, give the running
        generation SHUTDOWN_GRACE_SECONDS to finish, then cancel it so its response ends cleanly."""
        self.host.drain()
        self.notifier.stopping(f"stopping: {self.host.capacity().jobs} requests get {SHUTDOWN_GRACE_SECONDS}s to finish")
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.call_later, SHUTDOWN_GRACE_SECONDS, self.host.cancel_all)

    async def shutdown(self) -> None:
        """Stop in-flight generation and wait for the worker to let go of the engine."""
        self.host.drain()
        if self._supervisor is not None:
            self._supervisor.cancel()
        self.host.cancel_all()
        await asyncio.get_running_loop().run_in_executor(None, self.preparer.shutdown, True)
        await self.host.close()

    # -- the app --

    def app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            self.host.start()
            self.ollama.start()
            self._supervisor = asyncio.create_task(supervise(self.host, self.notifier))
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
            room = self.host.capacity()
            return {"status": "ok", "model": self.config.model_id, "model_loaded": room.loaded,
                    "busy": room.busy > 0, "queued": room.waiting, "slots": room.slots, "slots_busy": room.busy,
                    "idle_unload_s": self.config.idle_unload_s}

        @app.get("/metrics")
        async def metrics(request: Request) -> Response:
            self.authorize(request)
            room = self.host.capacity()
            text = self.metrics.render(slots=room.slots, busy=room.busy, queued=room.waiting, loaded=room.loaded)
            return Response(text, media_type="text/plain; version=0.0.4")

        @app.get("/slots")
        async def slots(request: Request) -> list[dict[str, Any]]:
            self.authorize(request)
            return self.host.describe_slots()

        @app.get("/v1/models")
        async def list_models(request: Request) -> dict[str, Any]:
            self.authorize(request)
            return {"object": "list", "data": [self.model_card()]}

        @app.get("/v1/models/{model_id:path}")
        async def get_model(model_id: str, request: Request) -> dict[str, Any]:
            self.authorize(request)
            self.translate.check_model(model_id)
            return self.model_card()

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            self.authorize(request)
            require_json(request)
            body = ChatCompletionRequest.model_validate(await read_json(request, self.config.max_body_bytes), strict=True)
            async with self.host.in_use():
                return await self.chat(request, body)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            self.authorize(request)
            require_json(request)
            body = CompletionRequest.model_validate(await read_json(request, self.config.max_body_bytes), strict=True)
            async with self.host.in_use():
                return await self.complete(request, body)

        self.ollama.mount(app)

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

    # -- the handlers (inside host.in_use(): the engine is loaded) --

    async def chat(self, request: Request, body: ChatCompletionRequest) -> Response:
        engine, slot_ctx = self.host.loaded_engine, self.host.capacity().slot_ctx
        chat = self.translate.chat(body, engine, slot_ctx, self.host.max_piece_bytes)
        dropped: list[int] = []

        def fitted() -> Prompt:
            prompt, count = self.translate.fit(chat, engine, slot_ctx)
            dropped.append(count)
            return prompt

        prompt = await prompt_off_the_loop(self.preparer, engine, request, fitted, chat.params, chat.param)
        # A raw `grammar` may spell out "...</think>answer" and is split like free text.
        reply = Reply(request, self.host.start_job, self.config.model_id, "chat.completion", body.stream)
        if dropped and dropped[0]:
            reply.headers["X-Edgellm-Dropped-Messages"] = str(dropped[0])
            reply.log["note"] = f"history too long for a slot: dropped the oldest {dropped[0]} messages"
        return await reply.respond(prompt, chat.params, include_usage=bool(body.stream_options and body.stream_options.include_usage))

    async def complete(self, request: Request, body: CompletionRequest) -> Response:
        engine = self.host.loaded_engine
        text, params = self.translate.completion(body, self.host.capacity().slot_ctx, self.host.max_piece_bytes)
        prompt = await prompt_off_the_loop(self.preparer, engine, request, lambda: engine.prompt_from_text(text), params, "grammar")
        reply = Reply(request, self.host.start_job, self.config.model_id, "text_completion", body.stream)
        return await reply.respond(prompt, params, include_usage=bool(body.stream_options and body.stream_options.include_usage))


def create_app(engine: GenerationEngine, config: ServerConfig) -> Any:
    """The ASGI app serving `engine` (an edgellm.runtime.engine.Engine, or anything with its generate API)."""
    return Server(engine, config).app()


