"""The models a server serves and which of them are in memory (Ollama's scheduler, planned by
the device): every model has a name and its plan; a request for one that is not loaded loads it,
after unloading the least recently used idle models until its plan fits beside the loaded ones
within the memory budget. Loading and unloading happen under one asyncio lock, so two requests
for the same model load it once and the set in memory never exceeds the budget.

Each loaded model has its own engine host (edgellm.serve.host): slots, scheduler, generation
thread. A host stays in the table once made; unloading frees its engine, loading makes a new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from edgellm import ui
from edgellm.errors import one_line
from edgellm.plan.planner import Plan
from edgellm.runtime.protocol import GenerationEngine
from edgellm.serve.errors import APIError, shutting_down
from edgellm.serve.host import EngineHost
from edgellm.serve.metrics import Metrics
from edgellm.serve.ollama_models import OllamaModel
from edgellm.serve.ollama_translate import names_match
from edgellm.store.gguf import ModelInfo
from edgellm.units import format_size

# How often a load that waits for room looks again at the loaded models' work.
ROOM_POLL_SECONDS = 0.05

# Loads a model: its engine, and how to load it again after an unload freed it.
LoadModel = Callable[[], tuple[GenerationEngine, Callable[[], GenerationEngine]]]


@dataclass
class Candidate:
    """A model the server can load on request: its id, other names, header and plan."""

    model_id: str
    aliases: list[str]
    info: ModelInfo
    plan: Plan
    load: LoadModel


@dataclass
class Served:
    """One model of the server: how it is described, and its host once it was loaded."""

    model_id: str
    model: OllamaModel
    aliases: list[str] = field(default_factory=list)
    load: LoadModel | None = None  # None: loaded at the start (-m)
    host: EngineHost | None = None

    @property
    def loaded(self) -> bool:
        return self.host is not None and self.host.engine is not None

    @property
    def size(self) -> int:
        """What its plan says it holds in memory (weights, KV cache, compute, runtime)."""
        return self.model.plan.total_bytes

    def named(self, name: str) -> bool:
        return any(names_match(name, known) for known in (self.model_id, *self.aliases))


def served_from(candidate: Candidate) -> Served:
    """A Candidate (a model on disk, planned) as one of the server's models, loaded when asked for."""
    plan = candidate.plan
    return Served(candidate.model_id, OllamaModel(candidate.model_id, candidate.info, plan, plan.n_ctx_per_slot, False),
                  candidate.aliases, load=candidate.load)


class ModelSet:
    """The server's models by name, and the loading and unloading within the memory budget."""

    def __init__(self, *, queue_size: int, metrics: Metrics, budget: int | None = None,
                 keep_alive_s: float | None = None) -> None:
        """`budget`: bytes the loaded models may hold together (None: not checked); `keep_alive_s`:
        how long a model loaded on request stays loaded once idle (None: until room is needed)."""
        self.queue_size = queue_size
        self.metrics = metrics
        self.budget = budget
        self.keep_alive_s = keep_alive_s
        self.served: dict[str, Served] = {}
        self.default: Served | None = None
        self.draining = False
        # Looks at the disk for models added or removed outside the server (edgellm.serve.ollama_pull).
        self.sync_with_disk: Callable[[], Awaitable[None]] | None = None
        self._lock = asyncio.Lock()

    def add(self, served: Served, *, default: bool = False) -> None:
        if served.model_id in self.served:
            return
        self.served[served.model_id] = served
        if default:
            self.default = served

    def find(self, name: str) -> Served | None:
        """The model a request names: its id or an alias (NAME:latest is NAME, case ignored)."""
        for served in self.served.values():
            if names_match(name, served.model_id):
                return served
        return next((served for served in self.served.values() if served.named(name)), None)

    async def lookup(self, name: str) -> Served | None:
        """find(), after a look at the disk when the name is new (a model `edgellm pull` just added)."""
        found = self.find(name)
        if found is None and self.sync_with_disk is not None:
            await self.sync_with_disk()
            found = self.find(name)
        return found

    async def listing(self) -> list[Served]:
        """Every model, the disk looked at again first (clients poll the list: what they see is what is there)."""
        if self.sync_with_disk is not None:
            await self.sync_with_disk()
        return list(self.served.values())

    def forget(self, served: Served) -> None:
        """A model whose file is gone (edgellm rm) and that is not loaded: no longer offered."""
        if served is not self.default and not served.loaded:
            self.served.pop(served.model_id, None)

    async def for_v1(self, name: str | None) -> Served:
        """The model a /v1 request names; none named: the default (-m's), as before several were served."""
        if not name:
            if self.default is not None:
                return self.default
            raise APIError(400, f"model is required: this server serves {self._names()}", param="model", code="model_required")
        found = await self.lookup(name)
        if found is None:
            raise APIError(404, f"the model '{one_line(name, 100)}' is not served here; this server serves {self._names()}",
                           param="model", code="model_not_found")
        return found

    def _names(self) -> str:
        return ", ".join(f"'{model_id}'" for model_id in self.served) or "no model"

    def names(self) -> list[str]:
        """Every name a model answers to (a new model's names must not take one)."""
        return [name for served in self.served.values() for name in (served.model_id, *served.aliases)]

    def hosts(self) -> list[EngineHost]:
        return [served.host for served in self.served.values() if served.host is not None]

    def loaded(self) -> list[Served]:
        return [served for served in self.served.values() if served.loaded]

    # -- a request's use of a model --

    @asynccontextmanager
    async def use(self, served: Served) -> AsyncIterator[EngineHost]:
        """Around a request's use of a model: loads it if needed (making room first), and keeps it
        loaded until the request is answered (its generation job, if any, holds it then)."""
        if not served.loaded:
            async with self._lock:
                if not served.loaded:
                    await self._make_room(served)
                    await self._load(served)
                host = served.host
                assert host is not None
                host.users += 1  # before the lock is let go: no unload can take it from here on
        else:
            host = served.host
            assert host is not None
            host.users += 1
        host.last_used = time.monotonic()
        try:
            yield host
        finally:
            host.users -= 1
            host.last_used = time.monotonic()

    async def unload(self, host: EngineHost, *, wait: bool = True) -> None:
        """Free a model (idle unload, keep_alive 0), in turn with the loads. `wait` False: not while
        a load runs or waits for room (the supervisor: its watchdog pings must not wait for a load;
        it comes round again)."""
        if not wait and self._lock.locked():
            return
        async with self._lock:
            await host.unload()

    async def remove(self, served: Served, delete: Callable[[], object]) -> None:
        """Take a model out of the set and run `delete` (its file), in turn with the loads, so no
        request loads the file while it goes. A model in use or loaded at the start is refused."""
        async with self._lock:
            if served is self.default:
                raise APIError(400, f"{served.model_id} is the model serve was started with (-m); stop serve to delete it",
                               code="model_in_use")
            host = served.host
            if host is not None:
                await host.unload(force=True, why=f"{served.model_id} unloaded: deleted")
                if host.engine is not None:  # not idle: unload let it be
                    raise APIError(409, f"{served.model_id} is answering requests; delete it when they are done",
                                   code="model_in_use")
            self.served.pop(served.model_id, None)
            await asyncio.get_running_loop().run_in_executor(None, delete)

    def refusal(self, served: Served) -> str | None:
        plan = served.model.plan
        if not plan.fits:
            return plan.refusal or f"{served.model_id} does not fit this board's memory"
        if self.budget is not None and served.size > self.budget:
            return (f"{served.model_id} needs {format_size(served.size)}, more than the memory budget of "
                    f"{format_size(self.budget)} even with no other model loaded")
        return None

    async def _make_room(self, served: Served) -> None:
        """Unload the least recently used idle models until `served` fits beside the rest; while
        every loaded model is busy, wait for one to finish."""
        refused = self.refusal(served)
        if refused is not None:
            raise APIError(503, f"cannot load {served.model_id}: {refused}", type="server_error", code="model_too_large")
        if self.budget is None:
            return
        while True:
            if self.draining:
                raise shutting_down()
            others = [other for other in self.loaded() if other is not served]
            if sum(other.size for other in others) + served.size <= self.budget:
                return
            now = time.monotonic()
            idle = [other for other in others if other.host is not None and other.host.should_unload(now, force=True)]
            if idle:
                victim = min(idle, key=lambda other: other.host.last_used if other.host else 0.0)
                assert victim.host is not None
                await victim.host.unload(force=True, why=f"{victim.model_id} unloaded to make room for {served.model_id}")
                continue
            await asyncio.sleep(ROOM_POLL_SECONDS)

    async def _load(self, served: Served) -> None:
        if self.draining:
            raise shutting_down()
        started = time.perf_counter()
        try:
            if served.host is not None:
                await served.host.reload()  # it says so itself
                return
            else:
                if served.load is None:
                    raise APIError(503, f"{served.model_id} is not loaded", type="server_error", code="model_unloaded")
                engine, reload = await asyncio.get_running_loop().run_in_executor(None, served.load)
                host = EngineHost(engine, queue_size=self.queue_size, metrics=self.metrics, load_engine=reload,
                                  idle_unload_s=self.keep_alive_s)
                host.follows_keep_alive = True
                host.owns_first_engine = True
                host.name = served.model_id
                host.start()
                served.host = host
                served.model.fim = engine.fim_tokens is not None
        except APIError:
            raise
        except Exception as exc:  # a file gone, a broken model: the request fails, the server stays
            raise APIError(500, f"cannot load {served.model_id}: {one_line(str(exc), 300)}", type="server_error",
                           code="model_load_failed") from exc
        ui.info(f"loaded {served.model_id} in {time.perf_counter() - started:.1f}s "
                f"({format_size(served.size)}; {len(self.loaded())} loaded)")

    # -- the end --

    def drain(self) -> None:
        self.draining = True
        for host in self.hosts():
            host.drain()

    def cancel_all(self) -> None:
        for host in self.hosts():
            host.cancel_all()

    async def close(self) -> None:
        async with self._lock:
            for host in self.hosts():
                await host.close()
