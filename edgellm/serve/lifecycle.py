"""The server's life as a service: systemd's watchdog and status, and the idle unload.

One asyncio task (`supervise`) runs beside the routes. Because it runs on the event loop and reads
the generation loop's heartbeat, a watchdog ping means both are alive: an HTTP loop that hangs or
a decode that never returns stops the pings, and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from edgellm.serve.host import Capacity, EngineHost
from edgellm.serve.sdnotify import Notifier

if TYPE_CHECKING:
    from edgellm.serve.models import ModelSet

STATUS_EVERY_SECONDS = 5.0
TICK_SECONDS = 1.0


def tick_seconds(notifier: Notifier) -> float:
    """How often to look: twice per watchdog period (sd_watchdog_enabled(3) advises half)."""
    if notifier.watchdog_s:
        return max(min(notifier.watchdog_s / 4, TICK_SECONDS), 0.05)
    return TICK_SECONDS


def heartbeat_fresh(heartbeat: float, watchdog_s: float, now: float | None = None) -> bool:
    """The generation loop came round (a step, or the idle beat) recently enough to ping.

    A decode step is one blocking llama.cpp call: a 512-token prompt batch of a 7B model on a Pi
    takes about a minute. So a step may take nearly the whole watchdog period (less two ticks of
    margin); a hung one is then caught within two periods.
    """
    age = (now if now is not None else time.monotonic()) - heartbeat
    return age < watchdog_s - 2 * min(watchdog_s / 4, TICK_SECONDS)


def status_text(host: EngineHost, room: Capacity) -> str:
    served = host.metrics.generations
    if not room.loaded:
        why = f"after {host.idle_unload_s:g}s idle" if host.idle_unload_s is not None else "as a request asked"
        return f"model unloaded {why} (loads on the next request); {served} requests served"
    return f"{room.busy} of {room.slots} slots busy, {room.waiting} queued, {served} requests served"


async def supervise(models: ModelSet, notifier: Notifier) -> None:
    """Watchdog pings, STATUS= lines and the idle unload of every model, until cancelled."""
    tick = tick_seconds(notifier)
    last_status = ""
    last_status_at = 0.0
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        if models.draining:
            continue  # STOPPING=1 went out: systemd times the stop now, not the watchdog
        hosts = models.hosts()
        rooms = [(host, host.capacity(now)) for host in hosts]
        if notifier.watchdog_s and all(room.heartbeat_age is None or heartbeat_fresh(now - room.heartbeat_age, notifier.watchdog_s, now)
                                       for _, room in rooms):
            notifier.watchdog()
        if len(rooms) == 1:
            text = status_text(*rooms[0])
        else:
            loaded = [host.name for host, room in rooms if room.loaded]
            text = (f"{len(loaded)} of {len(models.served)} models loaded ({', '.join(loaded) or 'none'}); "
                    f"{models.metrics.generations} requests served")
        if notifier.enabled and (text != last_status or now - last_status_at > STATUS_EVERY_SECONDS * 12):
            notifier.status(text)
            last_status, last_status_at = text, now
        for host in hosts:
            if host.should_unload(now):
                await models.unload(host, wait=False)
