"""`edgellm worker`: serve this board's CPU to another board's edgellm over llama.cpp's RPC
protocol, so a model too large for one board runs split across several (`--rpc` on the main one).

Two processes: this one listens on the worker's address and relays each client (edgellm.worker.relay:
sizes checked against the offer, idle clients dropped, one client at a time); a child runs
llama.cpp's RPC server on a private loopback port. Whatever a client sends, the worker stays: if
llama.cpp's server dies anyway, the child is started again.

llama.cpp's RPC server has no authentication: anyone who reaches the port can use the board's
memory and CPU. Hence loopback by default, and --allow-lan.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from edgellm.device.profiles import this_device
from edgellm.device.workers import Endpoint, is_loopback, let_idle_threads_sleep
from edgellm.errors import UsageError, WorkerError
from edgellm.plan.planner import RUNTIME_OVERHEAD_BYTES, memory_budget, select_cores, thread_count
from edgellm.units import format_size
from edgellm.worker.backend import Backend, WorkerPlan
from edgellm.worker.relay import HANDSHAKE_S, IDLE_S, STALL_S, Limits, Relay

LAN_WARNING = ("this worker has no authentication: anyone who can reach {endpoint} can use this board's memory and "
               "CPU; run it only on a trusted LAN")


def plan_worker(host: str, port: int, *, mem: int | None, threads: int | None, allow_lan: bool,
                profile: str | None = None, sysroot: str = "/", idle_s: float | None = None) -> WorkerPlan:
    """Check the address and decide what the worker offers: --mem, at most this board's budget (what
    is available minus the OS reserve and the worker's own runtime), on the profile's cores."""
    try:
        address = ipaddress.IPv4Address(host)  # llama.cpp binds with inet_addr: IPv4 literals only
    except ValueError:
        raise UsageError(f"--host {host}: give an IPv4 address of this board (127.0.0.1, 0.0.0.0 or a LAN address)") from None
    warnings = []
    if not is_loopback(str(address)):
        if not allow_lan:
            raise UsageError(f"--host {host} would let other machines use this worker, which has no authentication",
                             hint=f"add --allow-lan to serve the LAN (a trusted one only): edgellm worker --host {host} --allow-lan")
        warnings.append(LAN_WARNING.format(endpoint=f"{host}:{port}"))
    device, chosen, _ = this_device(sysroot, profile)
    budget, reason = memory_budget(device, chosen)
    room = max(budget - RUNTIME_OVERHEAD_BYTES, 0) if budget is not None else None
    if mem is not None and mem <= 0:
        raise UsageError("--mem must be more than 0")
    idle_s = IDLE_S if idle_s is None else idle_s
    if not 0 < idle_s < float("inf"):
        raise UsageError(f"--idle-timeout {idle_s:g}: give a number of seconds above 0, e.g. --idle-timeout {IDLE_S:g}")
    offer = mem if mem is not None else room
    if offer is None:
        raise UsageError("this board's memory size is unknown: say what the worker offers with --mem, e.g. --mem 3GiB")
    if room is not None and offer > room:
        warnings.append(f"--mem {format_size(offer)} is more than this board can hold ({reason}, less the worker's own "
                        f"{format_size(RUNTIME_OVERHEAD_BYTES)}): offering {format_size(room)}")
        offer = room
    if offer <= 0:
        raise WorkerError(f"this board has no memory to offer ({reason})")
    cores = select_cores(device, chosen)
    n_threads = thread_count(device, cores, threads, chosen.threads)
    return WorkerPlan(Endpoint(str(address), port), offer, n_threads, cores, chosen.name, warnings, idle_s)


def listen(endpoint: Endpoint) -> socket.socket:
    """The worker's address, bound and listening: a one-line error if it is taken."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama.cpp does
    try:
        listener.bind((endpoint.host, endpoint.port))
        listener.listen(16)
    except OSError as exc:
        listener.close()
        raise WorkerError(f"cannot listen on {endpoint}: {exc.strerror or exc}",
                          hint="is another worker running there? pick another --port") from None
    return listener


def run_worker(plan: WorkerPlan, *, say: Callable[[str], None], warn: Callable[[str], None]) -> None:
    """Listen, start llama.cpp's server behind the relay, print where the worker listens, and
    serve until Ctrl-C or SIGTERM."""
    let_idle_threads_sleep()
    from edgellm.runtime.native import pin_to_cores  # noqa: PLC0415  (edgellm.runtime.engine is slow to import)

    listener = listen(plan.endpoint)
    backend = Backend(plan, warn)
    limits = Limits(plan.offer_bytes, idle_s=plan.idle_s, stall_s=min(STALL_S, plan.idle_s), handshake_s=min(HANDSHAKE_S, plan.idle_s))
    relay = Relay(listener, backend.address, limits, note=warn)
    backend.on_failure = relay.stop
    try:
        for warning in plan.warnings:
            warn(warning)
        pin_to_cores(plan.cores)
        backend.start()
        say(plan.listening_line())
        relay.serve_forever()
    finally:
        relay.stop()
        backend.stop()
    if backend.failure is not None:
        raise backend.failure
    raise WorkerError(f"the worker on {plan.endpoint} stopped")
