"""The engine host: one loaded model, its scheduler and the thread that steps it, the jobs it
runs, and the idle unload and reload (as llama.cpp's server keeps its slots and task queue apart
from the HTTP handlers, and mlx-lm's server its generator).

Rule: the only serve module that touches the Scheduler. Everything else starts jobs with
start_job, uses the engine inside in_use(), and reads the scheduler's counters through
capacity()'s frozen snapshot. No HTTP request in here: serving several models at once is
several hosts.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from edgellm import ui
from edgellm.runtime.protocol import GenerationEngine
from edgellm.runtime.types import Prompt, SamplingParams
from edgellm.serve.errors import RETRY_AFTER_SECONDS, APIError, shutting_down
from edgellm.serve.jobs import Admission, GenerationJob, QueueFull
from edgellm.serve.metrics import Metrics


@dataclass(frozen=True)
class Capacity:
    """The host at one moment. While the model is unloaded, busy and waiting are 0 and
    heartbeat_age is None; slots and slot_ctx are still the model's."""

    loaded: bool  # the model is in memory (False: --idle-unload freed it)
    slots: int  # sequences generated at once (--parallel)
    slot_ctx: int  # tokens of context each slot holds
    busy: int  # slots generating now
    waiting: int  # requests queued in the scheduler for a slot
    jobs: int  # requests admitted and not finished (generating, queued, or being let go)
    heartbeat_age: float | None  # seconds since the generation loop last came round


def give_back_memory() -> None:
    """After a model is freed: collect its Python objects, and ask glibc to return the freed heap
    to the system (else the RSS creeps up by ~12 MB per model switch on x86-64)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to ask
        pass


def _unloaded() -> APIError:
    return APIError(503, "the model is not loaded", type="server_error", code="model_unloaded")


class EngineHost:
    """Hosts one model for the server: loads, unloads and reloads it, and runs its jobs."""

    def __init__(self, engine: GenerationEngine, *, queue_size: int, metrics: Metrics,
                 load_engine: Callable[[], GenerationEngine] | None = None, idle_unload_s: float | None = None) -> None:
        """`engine` is loaded and belongs to the caller, who closes it; `load_engine` loads the
        model again after the idle unload freed it (an engine the host then owns)."""
        self.engine: GenerationEngine | None = engine  # None while --idle-unload has freed it
        self.first_engine = engine
        self.load_engine = load_engine
        self.idle_unload_s = idle_unload_s
        self.queue_size = queue_size
        self.metrics = metrics
        self.scheduler = engine.scheduler  # the engine's one scheduler (run and chat use it too)
        self.admission = Admission(len(self.scheduler.slots), queue_size)
        self.generator = self._generator_thread()
        # Computed once (it reads the whole vocabulary); a reload loads the same model.
        self.max_piece_bytes = int(engine.max_piece_bytes)
        self.active_jobs: set[GenerationJob] = set()
        self.draining = False
        self.users = 0  # requests inside in_use(), not yet answered
        self.last_used = time.monotonic()
        self.unload_asked = False  # a request asked to free the model once idle (Ollama's keep_alive 0)
        # A model loaded on request: each request's keep_alive sets how long it stays loaded once
        # idle (else --idle-unload alone decides, and other keep_alive values are only noted).
        self.follows_keep_alive = False
        self.owns_first_engine = False  # the host closes `engine` too (a model loaded on request)
        self.name = ""  # the model's id, in log lines when a server serves several
        self._load_lock = asyncio.Lock()

    def _generator_thread(self) -> threading.Thread:
        # Requests inside in_use() without a job yet are being prepared: a batch starting from
        # idle waits a moment for them (edgellm.runtime.batch.GATHER_SECONDS).
        self.scheduler.coming = lambda: max(self.users - len(self.active_jobs), 0)
        return threading.Thread(target=self.scheduler.run, name="edgellm-generate", daemon=True)

    # -- what it holds --

    def capacity(self, now: float | None = None) -> Capacity:
        scheduler, loaded = self.scheduler, self.engine is not None
        if not loaded:  # a freed model's scheduler is closed: only its shape is read, not its counters
            return Capacity(False, len(scheduler.slots), scheduler.slot_ctx, 0, 0, len(self.active_jobs), None)
        age = (time.monotonic() if now is None else now) - scheduler.heartbeat
        return Capacity(True, len(scheduler.slots), scheduler.slot_ctx, scheduler.busy, scheduler.waiting,
                        len(self.active_jobs), age)

    def describe_slots(self) -> list[dict[str, Any]]:
        """Each slot's state (GET /slots); none while the model is unloaded."""
        return self.scheduler.describe() if self.engine is not None else []

    @property
    def loaded_engine(self) -> GenerationEngine:
        """The engine, inside in_use() (which loads it): a request never sees it unloaded."""
        if self.engine is None:
            raise _unloaded()
        return self.engine

    # -- jobs --

    def start(self) -> None:
        """Start the generation thread (once the event loop runs)."""
        self.generator.start()

    def start_job(self, prompt: Prompt, params: SamplingParams, request_id: str = "") -> GenerationJob:
        """Hand a request to the scheduler, or 503 when every slot and queue place is taken."""
        if self.draining:
            raise shutting_down()
        try:
            self.admission.enter()
        except QueueFull:
            raise APIError(
                503,
                f"the server is busy: {self.admission.slots} generating and {self.queue_size} waiting",
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

    def drain(self) -> None:
        """Take no new jobs (shutdown): start_job answers 503 shutting_down from now on."""
        self.draining = True

    def cancel_all(self) -> None:
        for job in list(self.active_jobs):
            job.cut_short = True
            job.cancel()

    async def close(self) -> None:
        """Wait for every job to be let go, then stop the generation thread: the first engine
        is its owner's to close; one reload() made is closed here."""
        for job in list(self.active_jobs):
            await job.wait_finished()
        loop = asyncio.get_running_loop()
        async with self._load_lock:
            if self.engine is self.first_engine and not self.owns_first_engine:
                await loop.run_in_executor(None, self._stop_generator)
            elif self.engine is not None:
                await loop.run_in_executor(None, self._close_engine, self.engine)

    def _stop_generator(self) -> None:
        self.scheduler.stop()
        self.generator.join()
        self.scheduler.close()

    # -- idle unload --

    @asynccontextmanager
    async def in_use(self) -> AsyncIterator[None]:
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

    def keep_alive(self, seconds: float) -> bool:
        """A request's wish for how long the model stays loaded after it: 0 frees it as soon as no
        request uses it (the next one loads it again); any other value undoes that wish and leaves
        --idle-unload in charge. False when the model could not be loaded again, so it stays."""
        if seconds != 0:
            self.unload_asked = False
            if self.follows_keep_alive:
                self.idle_unload_s = None if math.isinf(seconds) else seconds
            return True
        if self.load_engine is None:
            return False
        self.unload_asked = True
        return True

    def idle_left(self, now: float | None = None) -> float | None:
        """Seconds until the idle unload frees the model (None: it stays loaded)."""
        if self.unload_asked:
            return 0.0
        if self.idle_unload_s is None:
            return None
        return max(self.idle_unload_s - ((time.monotonic() if now is None else now) - self.last_used), 0.0)

    def should_unload(self, now: float, *, force: bool = False) -> bool:
        """Whether the model is idle and its time is up (`force`: idle is enough: room is needed)."""
        idle = self.idle_unload_s
        return (self.engine is not None and not self.draining and self.users == 0
                and not self.active_jobs and self.scheduler.busy == 0 and self.scheduler.waiting == 0
                and (force or self.unload_asked or (idle is not None and now - self.last_used >= idle)))

    async def unload(self, *, force: bool = False, why: str | None = None) -> None:
        """Free the model and its context (the memory goes back to the board)."""
        async with self._load_lock:
            if not self.should_unload(time.monotonic(), force=force):
                return
            asked, self.unload_asked = self.unload_asked, False
            engine, self.engine = self.loaded_engine, None  # requests from now on wait for reload()
            await asyncio.get_running_loop().run_in_executor(None, self._close_engine, engine)
            self.metrics.unloaded()
            if why is None:
                why = "a request asked (keep_alive 0)" if asked else f"idle for {self.idle_unload_s:g}s"
                why += f": {self.name or 'model'} unloaded"
            ui.info(f"{why} (the next request loads it again)")

    def _close_engine(self, engine: GenerationEngine) -> None:
        self._stop_generator()
        engine.close()
        give_back_memory()

    async def reload(self) -> None:
        async with self._load_lock:
            if self.engine is not None:
                return
            if self.load_engine is None:
                raise _unloaded()
            started = time.perf_counter()
            engine = await asyncio.get_running_loop().run_in_executor(None, self.load_engine)
            self.scheduler = engine.scheduler
            self.generator = self._generator_thread()
            self.generator.start()
            self.engine = engine
            self.metrics.reloaded()
            ui.info(f"{self.name or 'model'} loaded again in {time.perf_counter() - started:.1f}s")
