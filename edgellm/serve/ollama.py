"""Ollama's API on serve's port, next to /v1: the routes, and a job's events as NDJSON.

Home Assistant's Ollama integration, Open WebUI's Ollama connection, LangChain's ChatOllama and
Continue talk to it unmodified. A request names its model; the name is looked up in the server's
table of engine hosts (model id -> EngineHost, one entry while serve serves the one -m model) and
goes through the same machinery as /v1: the body read and checked (edgellm.serve.intake,
edgellm.serve.ollama_translate), the prompt prepared off the event loop, the job run by the host.
Authorisation, the Host check, body limits, metrics and the access log are the server's, as on /v1.
`GET /` and `GET /api/version` answer without a key, as /health does: clients probe them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from edgellm import ui
from edgellm.errors import one_line
from edgellm.runtime.types import Prompt, SamplingParams
from edgellm.serve.config import ServerConfig
from edgellm.serve.errors import APIError, as_api_error
from edgellm.serve.host import EngineHost
from edgellm.serve.intake import prompt_off_the_loop, read_json, require_json
from edgellm.serve.jobs import END, Failure, GenerationJob, Item, ItemReader, answer_from_first
from edgellm.serve.library import Library
from edgellm.serve.models import ModelSet, Served
from edgellm.serve.ollama_models import OllamaModel
from edgellm.serve.ollama_pull import Pulls
from edgellm.serve.ollama_schemas import OllamaChatRequest, OllamaGenerateRequest, OllamaModelRequest, OllamaRequest
from edgellm.serve.ollama_translate import (
    FOREVER,
    OLLAMA_VERSION,
    Chunks,
    OllamaTranslator,
    Timing,
    metrics,
    parse_keep_alive,
    tool_call,
)
from edgellm.store.digest import file_sha256

NDJSON = "application/x-ndjson"
Body = TypeVar("Body", bound=BaseModel)


class OllamaAPI:
    """The /api routes over the server's engine hosts."""

    def __init__(self, config: ServerConfig, models: ModelSet, authorize: Callable[[Request], None],
                 preparer: ThreadPoolExecutor, library: Library | None = None) -> None:
        self.config = config
        self.models = models
        self.authorize = authorize
        self.preparer = preparer
        self.translate = OllamaTranslator(config)
        # A request without keep_alive: serve's --keep-alive (Ollama's default is 5m).
        self.default_keep_alive = models.keep_alive_s if models.keep_alive_s is not None else FOREVER
        self.digests = Digests()
        self.pulls = Pulls(config, models, library, added=lambda served: self.digests.start([served.model]))
        models.sync_with_disk = self.pulls.sync_with_disk

    # -- models --

    async def find(self, name: str) -> Served:
        """The served model a request names, or Ollama's 404."""
        if not name.strip():
            raise APIError(400, "model is required", param="model")
        found = await self.models.lookup(name)
        if found is None:
            raise APIError(404, f"model '{one_line(name, 100)}' not found", param="model", code="model_not_found")
        return found

    def described(self) -> list[OllamaModel]:
        return [served.model for served in self.models.served.values()]

    def start(self) -> None:
        self.digests.start(self.described())

    async def digest(self, model: OllamaModel) -> str:
        return await self.digests.get(model)

    # -- the routes --

    def mount(self, app: FastAPI) -> None:
        @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
        async def root() -> Response:
            return PlainTextResponse("Ollama is running")

        @app.get("/api/version")
        async def version() -> dict[str, str]:
            return {"version": OLLAMA_VERSION}

        @app.get("/api/tags")
        async def tags(request: Request) -> dict[str, Any]:
            self.authorize(request)
            return {"models": [served.model.tag(await self.digest(served.model)) for served in await self.models.listing()]}

        @app.get("/api/ps")
        async def ps(request: Request) -> dict[str, Any]:
            self.authorize(request)
            running = []
            for served in self.models.loaded():
                if served.host is not None:
                    running.append(served.model.running(await self.digest(served.model), served.host.idle_left()))
            return {"models": running}

        @app.post("/api/show")
        async def show(request: Request) -> dict[str, Any]:
            body = await self.body(request, OllamaModelRequest)
            return (await self.find(body.target)).model.show()

        @app.post("/api/chat")
        async def chat(request: Request) -> Response:
            started = time.perf_counter()
            body = await self.body(request, OllamaChatRequest)
            return await self.chat(request, body, started)

        @app.post("/api/generate")
        async def generate(request: Request) -> Response:
            started = time.perf_counter()
            body = await self.body(request, OllamaGenerateRequest)
            return await self.generate(request, body, started)

        @app.post("/api/pull")
        async def pull(request: Request) -> Response:
            body = await self.body(request, OllamaModelRequest)
            return await self.pulls.pull(request, body)

        @app.api_route("/api/delete", methods=["DELETE", "POST"])
        async def delete(request: Request) -> Response:
            body = await self.body(request, OllamaModelRequest)
            return await self.pulls.delete(body)

        not_yet = {
            "/api/create": "creating models", "/api/copy": "copying models", "/api/push": "pushing models",
            "/api/blobs/{digest}": "blobs",
            # Open WebUI asks for these for its documents: its own embedding engine does that job.
            "/api/embed": "embeddings (for Open WebUI's documents, keep its default SentenceTransformers embedding engine)",
            "/api/embeddings": "embeddings (for Open WebUI's documents, keep its default SentenceTransformers embedding engine)",
        }
        for path, what in not_yet.items():
            app.add_api_route(path, self._not_implemented(what), methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                              include_in_schema=False)

    def _not_implemented(self, what: str) -> Callable[[Request], Any]:
        async def refuse(request: Request) -> Response:
            self.authorize(request)
            raise APIError(501, f"{what}: not supported by edgellm's Ollama API (it serves the chat and completion "
                                "endpoints: /api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/pull, /api/delete)", code="not_implemented")
        return refuse

    async def body(self, request: Request, schema: type[Body]) -> Body:
        self.authorize(request)
        require_json(request, browsers_only=True)
        return schema.model_validate(await read_json(request, self.config.max_body_bytes), strict=True)

    # -- chat and generate --

    def _keep_alive(self, seconds: float, host: EngineHost) -> None:
        """Hand a request's keep_alive (parsed before anything is loaded) to its host."""
        if not host.keep_alive(seconds):
            self.translate.note("keep_alive0", "keep_alive 0 asks to unload the model, but this server cannot load it "
                                               "again: it stays loaded")
        elif (not host.follows_keep_alive and seconds not in (0.0, FOREVER, self.default_keep_alive)
              and host.idle_unload_s is None):
            self.translate.note("keep_alive", f"keep_alive {seconds:g}s: the model stays loaded (serve's --idle-unload "
                                              "decides; keep_alive 0 frees it)")

    async def load_or_unload(self, body: OllamaRequest, served: Served, *, chat: bool) -> Response:
        """An empty chat or prompt: load the model (keep_alive 0: free it), as Ollama documents."""
        chunks = Chunks(body.model, chat=chat)
        seconds = parse_keep_alive(body.keep_alive, self.default_keep_alive)
        if seconds == 0:
            host = served.host
            if host is not None:
                self._keep_alive(seconds, host)
                if host.should_unload(time.monotonic()):
                    await self.models.unload(host)
            return JSONResponse(chunks.last({}, "unload", {}))
        async with self.models.use(served) as host:
            self._keep_alive(seconds, host)
            return JSONResponse(chunks.last({}, "load", {}))

    async def chat(self, request: Request, body: OllamaChatRequest, started: float) -> Response:
        served = await self.find(body.model)
        if not body.messages:
            return await self.load_or_unload(body, served, chat=True)
        keep_alive = parse_keep_alive(body.keep_alive, self.default_keep_alive)
        waited = time.perf_counter()
        async with self.models.use(served) as host:
            timing = Timing(started, time.perf_counter() - waited)
            self._keep_alive(keep_alive, host)
            engine, slot_ctx = host.loaded_engine, host.capacity().slot_ctx
            chat = self.translate.chat(body, engine, slot_ctx, host.max_piece_bytes)
            dropped: list[int] = []

            def fitted() -> Prompt:
                prompt, count = self.translate.fit(chat, engine, slot_ctx, body.truncate)
                dropped.append(count)
                return prompt

            prompt = await prompt_off_the_loop(self.preparer, engine, request, fitted, chat.params, chat.param)
            reply = NdjsonReply(request, host.start_job, Chunks(body.model, chat=True), body.stream is not False, timing)
            if dropped and dropped[0]:
                reply.headers["X-Edgellm-Dropped-Messages"] = str(dropped[0])
                reply.log["note"] = f"history too long for a slot: dropped the oldest {dropped[0]} messages"
            return await reply.respond(prompt, chat.params)

    async def generate(self, request: Request, body: OllamaGenerateRequest, started: float) -> Response:
        served = await self.find(body.model)
        if not body.prompt and not body.suffix:
            return await self.load_or_unload(body, served, chat=False)
        keep_alive = parse_keep_alive(body.keep_alive, self.default_keep_alive)
        waited = time.perf_counter()
        async with self.models.use(served) as host:
            timing = Timing(started, time.perf_counter() - waited)
            self._keep_alive(keep_alive, host)
            engine, slot_ctx = host.loaded_engine, host.capacity().slot_ctx
            made = self.translate.generate(body, engine, slot_ctx, host.max_piece_bytes)
            prompt = await prompt_off_the_loop(self.preparer, engine, request, lambda: self.translate.prompt(made, engine, slot_ctx),
                                               made.params, made.param)
            reply = NdjsonReply(request, host.start_job, Chunks(body.model, chat=False), body.stream is not False, timing)
            return await reply.respond(prompt, made.params)


class Digests:
    """Each model file's sha256 (Ollama's `digest`), hashed once in a background thread."""

    def __init__(self) -> None:
        self._digests: dict[str, asyncio.Future[str]] = {}

    def start(self, models: list[OllamaModel]) -> None:
        """Begin hashing the model files (for `digest`) in the background: a file outside the
        Hugging Face cache is hashed once, and clients list models within seconds of the start."""
        for model in models:
            self._digest_future(model)

    def _digest_future(self, model: OllamaModel) -> asyncio.Future[str]:
        future = self._digests.get(model.model_id)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._digests[model.model_id] = loop.create_future()
            path = model.info.path

            def work() -> None:
                if sys.platform.startswith("linux"):  # this thread only: generation keeps the cores
                    with contextlib.suppress(OSError, AttributeError):
                        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
                try:
                    value = file_sha256(path) if path is not None else ""
                except OSError as exc:
                    ui.warn(f"cannot hash {path} for Ollama's digest: {exc.strerror or exc}")
                    value = ""
                def settle() -> None:
                    if not future.done():
                        future.set_result(value)

                with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped
                    loop.call_soon_threadsafe(settle)

            threading.Thread(target=work, name="edgellm-digest", daemon=True).start()
        return future

    async def get(self, model: OllamaModel) -> str:
        return await asyncio.shield(self._digest_future(model))


def describe(model_id: str, host: EngineHost) -> OllamaModel:
    engine = host.first_engine
    return OllamaModel(model_id, engine.model, engine.plan, host.capacity().slot_ctx, engine.fim_tokens is not None)


StartJob = Callable[[Prompt, SamplingParams, str], GenerationJob]


class NdjsonReply:
    """One job's events as Ollama's reply: NDJSON objects as they come (stream), or one object."""

    def __init__(self, request: Request, start_job: StartJob, chunks: Chunks, stream: bool, timing: Timing) -> None:
        self.request = request
        self.start_job = start_job
        self.chunks = chunks
        self.stream = stream
        self.timing = timing
        self.id = "ollama-" + uuid.uuid4().hex[:24]
        self.log: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("edgellm", {})
        self.headers: dict[str, str] = {}
        self.log["tokens"] = 0

    async def respond(self, prompt: Prompt, params: SamplingParams) -> Response:
        job = self.start_job(prompt, params, self.id)
        reader = ItemReader(job, self.request, streamed=self.stream)

        async def respond(first: Item) -> Response:
            if not self.stream:
                return await self._collect(first, reader)
            return StreamingResponse(self._lines(first, reader), media_type=NDJSON,
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **self.headers})

        return await answer_from_first(job, reader, self.log, respond)

    def _finish(self, job: GenerationJob) -> tuple[str, dict[str, int]]:
        """done_reason and the metrics, once the scheduler has let go of the job."""
        self.log["tokens"] = job.generated_tokens
        stats = job.stats
        if stats is not None:
            self.log["tps"] = stats.gen_tps
        if job.cut_short:
            self.log["note"] = "cut short by shutdown"
        calls = job.result.complete_calls
        if calls:
            self.log["note"] = f"{len(calls)} tool call(s): " + ", ".join(call.name for call in calls)[:200]
        reason = "length" if job.cut_short or (stats is not None and stats.finish_reason == "length") else "stop"
        total = time.perf_counter() - self.timing.started
        return reason, metrics(stats, job.generated_tokens, total, self.timing.load_s)

    async def _collect(self, first: Item, reader: ItemReader) -> Response:
        item = first
        while item is not END:
            if isinstance(item, Failure):
                raise as_api_error(item.error)
            item = await reader.next()
        await reader.job.wait_finished()
        reason, counts = self._finish(reader.job)
        result = reader.job.result
        fields: dict[str, Any] = {"content": result.answer, "thinking": result.reasoning,
                                  "tool_calls": [tool_call(call.id, call.name, call.arguments, index)
                                                 for index, call in enumerate(result.complete_calls)]}
        return JSONResponse(self.chunks.last(fields, reason, counts), headers=self.headers)

    async def _lines(self, first: Item, reader: ItemReader) -> AsyncIterator[bytes]:
        job = reader.job
        completed = False
        try:
            batch = [first]
            while True:
                out, ended, failed = self._render(batch)
                if out:
                    yield out
                if failed:
                    completed = True
                    return
                if ended:
                    break
                batch = [await reader.next(), *reader.ready()]
            await job.wait_finished()
            reason, counts = self._finish(job)
            yield _line(self.chunks.last({}, reason, counts))
            completed = True
        finally:
            if not completed:
                # The client went away (or the server is shutting down): stop generating.
                job.cancel()
                reader.close()
                self.log["disconnected"] = True
                await job.wait_finished()
                self.log["tokens"] = job.generated_tokens

    def _render(self, batch: list[Item]) -> tuple[bytes, bool, bool]:
        """NDJSON lines for a batch of events (consecutive text of one field in one object; each
        finished tool call in its own); whether the reply ended, and whether a failure ended it
        (then its {"error": ...} line is the last)."""
        lines: list[bytes] = []
        fields: dict[str, Any] = {}

        def flush() -> None:
            if fields:
                lines.append(_line(self.chunks.chunk(fields)))
                fields.clear()

        for item in batch:
            if isinstance(item, Failure):
                flush()
                lines.append(_line(as_api_error(item.error).ollama_body()))
                self.log["note"] = "failed mid-stream: " + one_line(str(item.error), 200)
                return b"".join(lines), True, True
            if item is END:
                flush()
                return b"".join(lines), True, False
            for name, value in self.chunks.pieces(item):
                if name == "tool_calls":
                    flush()
                    lines.append(_line(self.chunks.chunk({"tool_calls": [value]})))
                    continue
                if fields and name not in fields:
                    flush()
                fields[name] = fields.get(name, "") + value
        flush()
        return b"".join(lines), False, False


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
