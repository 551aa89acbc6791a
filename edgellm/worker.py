"""`edgellm worker`: serve this board's CPU to another board's edgellm over llama.cpp's RPC
protocol, so a model too large for one board runs split across several (`--rpc` on the main one).

llama.cpp's RPC server has no authentication: anyone who reaches the port can use the board's
memory and CPU, and a malformed request can crash it. Hence loopback by default, and --allow-lan.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edgellm.errors import UsageError, WorkerError
from edgellm.hardware import detect, format_cpu_list
from edgellm.planner import RUNTIME_OVERHEAD_BYTES, memory_budget, select_cores, thread_count
from edgellm.profiles import select_profile
from edgellm.rpc import PROTOCOL_VERSION, Endpoint, is_loopback, let_idle_threads_sleep
from edgellm.units import format_size

LAN_WARNING = ("this worker has no authentication: anyone who can reach {endpoint} can use this board's memory and "
               "CPU, or crash it; run it only on a trusted LAN")


@dataclass
class WorkerPlan:
    endpoint: Endpoint
    offer_bytes: int
    threads: int
    cores: list[int]
    profile: str
    warnings: list[str]

    def listening_line(self) -> str:
        version = ".".join(map(str, PROTOCOL_VERSION))
        return (f"worker listening on {self.endpoint}: offers {format_size(self.offer_bytes)}, {self.threads} threads on "
                f"CPUs {format_cpu_list(self.cores)} ({self.profile}), RPC protocol v{version}; stop with Ctrl-C")


def plan_worker(host: str, port: int, *, mem: int | None, threads: int | None, allow_lan: bool,
                profile: str | None = None, sysroot: str = "/") -> WorkerPlan:
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
    device = detect(sysroot)
    chosen, _ = select_profile(device, profile)
    budget, reason = memory_budget(device, chosen)
    room = max(budget - RUNTIME_OVERHEAD_BYTES, 0) if budget is not None else None
    if mem is not None and mem <= 0:
        raise UsageError("--mem must be more than 0")
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
    return WorkerPlan(Endpoint(str(address), port), offer, n_threads, cores, chosen.name, warnings)


def check_port_free(endpoint: Endpoint) -> None:
    """Bind the port once ourselves: llama.cpp only prints 'Failed to create server socket'."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama.cpp does
    try:
        probe.bind((endpoint.host, endpoint.port))
    except OSError as exc:
        raise WorkerError(f"cannot listen on {endpoint}: {exc.strerror or exc}",
                          hint="is another worker running there? pick another --port") from None
    finally:
        probe.close()


def run_worker(plan: WorkerPlan, *, say: Callable[[str], None], warn: Callable[[str], None]) -> None:
    """Pin to the plan's cores, print where the worker listens, and serve until Ctrl-C or SIGTERM."""
    let_idle_threads_sleep()
    from edgellm.runtime import pin_to_cores, rpc  # noqa: PLC0415  (loads llama_cpp)

    rpc.require()
    check_port_free(plan.endpoint)
    for warning in plan.warnings:
        warn(warning)
    pin_to_cores(plan.cores)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            rpc.serve(plan.endpoint, offer_bytes=plan.offer_bytes, threads=plan.threads, quiet=not os.environ.get("EDGELLM_LLAMA_LOG"))
        except BaseException as exc:  # noqa: BLE001  (handed to the main thread)
            failure.append(exc)

    # llama.cpp's accept loop never returns to Python: in a thread of its own, Ctrl-C still works.
    server = threading.Thread(target=serve, name="rpc-server", daemon=True)
    say(plan.listening_line())
    server.start()
    while server.is_alive():
        server.join(0.5)
    if failure:
        raise failure[0]
    raise WorkerError(f"the RPC server on {plan.endpoint} stopped", hint="run with EDGELLM_LLAMA_LOG=1 to see llama.cpp's reason")
