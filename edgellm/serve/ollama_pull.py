"""Ollama's /api/pull and /api/delete: a client adds a model to the board's disk (through
edgellm's own download code: resumed, sha256-verified, the quant picked by the planner) or takes
one off. The new model is planned and served at once, under the names `edgellm ls` gives it.

Both change the disk, so a client on the network needs the key (--api-key), or the owner's word
(--allow-pull) when serve listens beyond this machine without one: a LAN client must not be able
to fill the disk. A pull of a model the server already serves answers `success` at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from edgellm import ui
from edgellm.errors import DownloadError, EdgeLLMError, ModelNotFoundError, NotOnHubError, one_line
from edgellm.plan.resolve import Located
from edgellm.serve.config import ServerConfig
from edgellm.serve.errors import APIError
from edgellm.serve.library import Library
from edgellm.serve.models import ModelSet, Served, served_from
from edgellm.serve.ollama_schemas import OllamaModelRequest
from edgellm.units import format_size

NDJSON = "application/x-ndjson"
# A progress line at most this often (a chunk arrives every few KiB: a line each would be MBs).
PROGRESS_EVERY_S = 0.25
# How often a pull answered in one piece looks whether its client is still there.
DISCONNECT_POLL_S = 0.5
# Requests look at the disk for models pulled or removed outside serve at most this often.
RESCAN_EVERY_S = 2.0

Event = dict[str, Any]
SUCCESS: Event = {"status": "success"}


class PullCancelled(Exception):
    """The client went away, or the server stops: the partial file stays, the next pull resumes it."""


def refused(what: str) -> APIError:
    return APIError(403, f"{what} is off on this server: it listens beyond this machine without an API key, and a "
                         "client on the network must not fill or empty the board's disk; start serve with "
                         "--allow-pull (or --api-key)", type="permission_error", code="pull_not_allowed")


def as_pull_error(error: BaseException) -> APIError:
    """A failed pull as Ollama answers one: 404 for a name nobody has, 500 for a failed download."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, EdgeLLMError):
        text = error.message + (f" ({error.hint})" if error.hint else "")
        status = (404 if isinstance(error, (ModelNotFoundError, NotOnHubError)) else 500 if isinstance(error, DownloadError)
                  else 400)
        return APIError(status, one_line(text, 600), type="server_error" if status == 500 else "invalid_request_error")
    return APIError(500, f"pull failed: {type(error).__name__}: {one_line(str(error), 300)}", type="server_error")


@dataclass
class PullProgress:
    """What edgellm.store.hub reports a transfer to, as Ollama's progress lines (throttled)."""

    emit: Callable[[Event], None]
    cancelled: threading.Event
    digest: str
    total: int
    completed: int = 0
    last: float = field(default=0.0)

    def update(self, n_bytes: int) -> None:
        if self.cancelled.is_set():
            raise PullCancelled
        self.completed += n_bytes
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S or self.completed >= self.total:
            self.last = now
            self._line()

    def reset(self, done: int) -> None:
        self.completed = done
        self._line()

    def close(self) -> None:
        if self.completed >= self.total and not self.cancelled.is_set():
            self.emit({"status": "verifying sha256 digest"})

    def _line(self) -> None:
        self.emit({"status": f"pulling {self.digest.removeprefix('sha256:')[:12]}", "digest": self.digest,
                   "total": self.total, "completed": self.completed})


class Pulls:
    """/api/pull and /api/delete over the server's models and the disk's."""

    def __init__(self, config: ServerConfig, models: ModelSet, library: Library | None,
                 added: Callable[[Served], None] = lambda _: None) -> None:
        """`added` hears of each model that joins (a pull, the disk)."""
        self.config = config
        self.models = models
        self.library = library
        self.added = added
        # One download, or one look at the disk, at a time: the board's disk and link are one.
        self._one_at_a_time = asyncio.Lock()
        self._running: set[threading.Event] = set()
        self._synced_at = time.monotonic()  # serve listed the disk as it started
        self._unservable: set[Path] = set()  # files the disk look said were no model: said once

    def cancel_all(self) -> None:
        """The server stops: running downloads end at their next chunk (the partial file stays)."""
        for cancelled in list(self._running):
            cancelled.set()

    # -- pull --

    async def pull(self, request: Request, body: OllamaModelRequest) -> Response:
        name = body.target.strip()
        if not name:
            raise APIError(400, "model is required", param="model")
        stream = body.stream is not False
        if self.models.find(name) is not None:
            return self._answer([{"status": "pulling manifest"}, SUCCESS], stream)
        library = self._library(f"'{one_line(name, 100)}' is not served here, and this server cannot download models")
        if not self.config.allow_pull:
            raise refused("pulling models")
        try:
            ref = library.parse(name)
            # Which file, before the reply begins: a name the hub lacks is a 404, not a line in a 200.
            located = await asyncio.get_running_loop().run_in_executor(None, library.locate, ref)
        except EdgeLLMError as exc:
            raise as_pull_error(exc) from None
        cancelled = threading.Event()
        events: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(event: Event | BaseException | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        task = asyncio.ensure_future(self._pull(name, located, library, emit, cancelled))
        if stream:
            return StreamingResponse(self._lines(events, task, cancelled), media_type=NDJSON,
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        while not task.done():
            await asyncio.wait([task], timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                cancelled.set()
        error = task.exception()
        if error is not None:
            raise as_pull_error(error) from None
        return JSONResponse(SUCCESS)

    async def _pull(self, name: str, located: Located, library: Library, emit: Callable[[Event | BaseException | None], None],
                    cancelled: threading.Event) -> None:
        """The pull, as events (the last one: None when it succeeded, the error when not)."""
        try:
            emit({"status": "pulling manifest"})
            async with self._one_at_a_time:
                found = self.models.find(name)  # a pull that waited for this one may find it done
                if found is None:
                    self._running.add(cancelled)
                    try:
                        served = await asyncio.get_running_loop().run_in_executor(
                            None, self._fetch_and_plan, located, library, emit, cancelled, set(self.models.names()))
                    finally:
                        self._running.discard(cancelled)
                    self.models.add(served)
                    self.added(served)
            emit({"status": "writing manifest"})
            emit(SUCCESS)
            emit(None)
        except BaseException as exc:
            if isinstance(exc, PullCancelled):
                ui.info(f"pull of {name} stopped: its client went away or serve stops (the part downloaded "
                        "stays; the next pull resumes it)")
            emit(exc)
            raise

    @staticmethod
    def _fetch_and_plan(located: Located, library: Library, emit: Callable[[Event], None], cancelled: threading.Event,
                        taken: set[str]) -> Served:
        """In a worker thread: download (unless here), plan; the new model."""
        path: Path | None = located.path
        if path is None:
            digest = f"sha256:{located.remote.sha256}" if located.remote and located.remote.sha256 else located.filename
            started = time.monotonic()
            path = library.download(located, ui.info, lambda _label, total, have: PullProgress(emit, cancelled, digest, total, have))
            ui.info(f"pulled {located.name} ({format_size(located.size)}) in {time.monotonic() - started:.1f}s for a client")
        item = library.downloaded(path)
        if item is None:
            raise DownloadError(f"{located.name} was downloaded to {path}, but is not in the cache listing")
        candidate, _ = library.candidate(item, {known.casefold() for known in taken})
        return served_from(candidate)

    async def _lines(self, events: asyncio.Queue[Event | BaseException | None], task: asyncio.Future[None],
                     cancelled: threading.Event) -> AsyncIterator[bytes]:
        try:
            while True:
                event = await events.get()
                if event is None:
                    return
                if isinstance(event, BaseException):
                    yield _line(as_pull_error(event).ollama_body())
                    return
                yield _line(event)
        finally:
            if not task.done():
                cancelled.set()  # the client went away: the download stops at its next chunk
            task.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen: no "never retrieved"

    # -- the disk, changed outside the server --

    async def sync_with_disk(self) -> None:
        """Serve the models `edgellm pull` added to the cache while serve ran, and stop offering the
        unloaded ones `edgellm rm` took away (at most every RESCAN_EVERY_S: clients poll)."""
        library = self.library
        if library is None or time.monotonic() - self._synced_at < RESCAN_EVERY_S:
            return
        if self._one_at_a_time.locked():
            return  # a pull is under way (minutes, on a board): the listing must not wait for it
        async with self._one_at_a_time:
            self._synced_at = time.monotonic()
            loop = asyncio.get_running_loop()
            items = await loop.run_in_executor(None, library.items)
            on_disk = {_real(item.path) for item in items}
            known: dict[Path, Served] = {}
            for served in list(self.models.served.values()):
                path = _real(served.model.info.path)
                if path is None:
                    continue
                known[path] = served
                if served.load is not None and path not in on_disk and not path.exists():
                    self.models.forget(served)
                    if served.model_id not in self.models.served:
                        ui.info(f"{served.model_id} is gone from the disk: no longer served")
            used = {name.casefold() for name in self.models.names()}
            for item in items:
                path = _real(item.path)
                if path is None or path in known or path in self._unservable:
                    continue
                try:
                    candidate, _ = await loop.run_in_executor(None, library.candidate, item, used)
                except EdgeLLMError as exc:
                    self._unservable.add(path)
                    ui.warn(f"not serving {item.name}: {exc.message}")
                    continue
                served = served_from(candidate)
                self.models.add(served)
                self.added(served)
                ui.info(f"serving {item.name} too: it appeared in the Hugging Face cache")

    # -- delete --

    async def delete(self, body: OllamaModelRequest) -> Response:
        name = body.target.strip()
        if not name:
            raise APIError(400, "model is required", param="model")
        served = self.models.find(name)
        if served is None:
            raise APIError(404, f"model '{one_line(name, 100)}' not found", param="model", code="model_not_found")
        library = self._library("this server cannot delete models")
        if not self.config.allow_pull:
            raise refused("deleting models")
        path = served.model.info.path
        item = library.downloaded(Path(path)) if path is not None else None
        if item is None:
            raise APIError(400, f"{served.model_id} is not a downloaded model (not in the Hugging Face cache): "
                                "delete your own files yourself", code="not_downloaded")
        freed: list[int] = []
        await self.models.remove(served, lambda: freed.append(library.delete(item)))
        ui.info(f"deleted {served.model_id} for a client ({format_size(freed[0] if freed else 0)} freed)")
        return Response(status_code=200)

    def _library(self, why: str) -> Library:
        if self.library is None:
            raise APIError(501, f"{why} (edgellm pull NAME on the board, then restart serve)", code="not_implemented")
        return self.library

    @staticmethod
    def _answer(events: list[Event], stream: bool) -> Response:
        if not stream:
            return JSONResponse(events[-1])
        return Response(b"".join(_line(event) for event in events), media_type=NDJSON)


def _real(path: Path | str | None) -> Path | None:
    if path is None:
        return None
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return None


def _line(data: Event) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
