"""The queue side: admission (slots + queue, 503 beyond), one request's generation on the
scheduler (GenerationJob), and reading its events on the event loop while watching the client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request

from edgellm.runtime.batch import Finished, SequenceRequest
from edgellm.runtime.response import Response as GenerationResult  # not Starlette's HTTP Response
from edgellm.runtime.types import GenerationStats, Prompt, SamplingParams, TextEvent
from edgellm.serve.errors import ClientGone, as_api_error

# How often a request that is waiting (for the slot, or for its first token) checks whether its
# client is still there; streaming responses are also cancelled by Starlette as soon as it notices.
DISCONNECT_POLL_SECONDS = 0.25


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


@dataclass
class Failure:
    error: BaseException


END = object()
Item = TextEvent | GenerationStats | Failure | object


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
        self.result = GenerationResult()  # everything generated, kept as it arrives (the answer, stats)
        self.cut_short = False  # cancelled by the server's shutdown: the answer is incomplete
        self.created = time.perf_counter()
        self.first_token_s: float | None = None  # from the request to its first text
        self.request = SequenceRequest(prompt, params, self._emit)

    def cancel(self) -> None:
        self.request.cancel()  # the scheduler drops it at its next step

    @property
    def stats(self) -> GenerationStats | None:
        return self.result.stats

    def _emit(self, event: Any) -> None:
        """Called from the scheduler's thread."""
        if self.result.add(event) is not None and self.first_token_s is None:
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
        return self.result.generated_tokens

    async def wait_finished(self) -> None:
        """Wait for the scheduler to let go of this request, even inside a cancelled request."""
        with anyio.CancelScope(shield=True):
            await self.finished.wait()


class ItemReader:
    """Reads a job's items, noticing a vanished client while nothing arrives."""

    def __init__(self, job: GenerationJob, request: Request, *, streamed: bool) -> None:
        self.job = job
        self.request = request
        self.streamed = streamed
        self._getter: asyncio.Future[Item] | None = None
        self._checked = time.monotonic()

    async def next(self) -> Item:
        # While tokens keep coming, wait_watching_client never waits long enough to look: a reply
        # that is not streamed (nothing is sent until the end, so no send fails) would generate on
        # for nobody. A streamed one learns it from its next send.
        if not self.streamed and time.monotonic() - self._checked >= DISCONNECT_POLL_SECONDS:
            self._checked = time.monotonic()
            if await self.request.is_disconnected():
                raise ClientGone()
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


async def answer_from_first(job: GenerationJob, reader: ItemReader, log: dict[str, Any],
                            respond: Callable[[Item], Awaitable[Any]]) -> Any:
    """Wait for a job's first event before answering (a prompt too long for the context or a bad
    grammar is then a 400, not an error inside a 200 stream), then `respond(first)`. On any failure
    or a client gone, the job is cancelled, waited for, and its tokens logged. Both APIs' replies."""
    try:
        first = await reader.next()
        if isinstance(first, Failure):
            raise as_api_error(first.error)
        return await respond(first)
    except BaseException as exc:
        job.cancel()
        reader.close()
        log["disconnected"] = isinstance(exc, (ClientGone, asyncio.CancelledError))
        await job.wait_finished()
        log["tokens"] = job.generated_tokens
        raise
