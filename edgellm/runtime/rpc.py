"""llama.cpp's RPC backend through ctypes: serving this board's CPU to other boards (`edgellm
worker`), and adding workers as devices before a model loads (`--rpc`).

llama-cpp-python 0.3.36 has no RPC parameter (Llama(rpc_servers=...) falls into **kwargs), but its
build with -DGGML_RPC=ON ships libggml-rpc with ggml-rpc.h's functions, which this module calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgellm.device.workers import Endpoint
from edgellm.errors import RuntimeUnavailableError, WorkerError

GGML_BACKEND_DEVICE_TYPE_CPU = 0
# struct ggml_backend_device (ggml-backend-impl.h): 17 interface function pointers, then reg and
# context. Slot 2 is get_memory, the one the worker replaces to offer --mem instead of all the RAM.
DEVICE_STRUCT_POINTERS = 19
GET_MEMORY_SLOT, INIT_BACKEND_SLOT = 2, 5
# struct ggml_backend: guid, 16 interface function pointers, then device and context. The RPC server
# asks the backend's device for memory, so the backend must point at the capped copy.
BACKEND_DEVICE_SLOT = 17
GET_MEMORY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t))
INIT_BACKEND = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)
ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
# A worker board that loses power or network sends no reset: without keepalive llama.cpp would wait
# on its socket forever. Dead after ~5 s idle + 3 probes 2 s apart, or 15 s of unacknowledged data.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES, USER_TIMEOUT_MS = 5, 2, 3, 15_000
EXIT_WORKER_LOST = 1


def _library_dir() -> Path:
    from edgellm.runtime.native import load_llama_cpp  # noqa: PLC0415  (edgellm.runtime.engine's modules import this one)

    return Path(load_llama_cpp().__file__ or ".").parent / "lib"


def _open(stem: str) -> ctypes.CDLL:
    """The copy of `stem` that libllama itself loaded. A wheel cannot hold symlinks, so it ships
    libggml.so and libggml.so.0 as two files: opening the wrong one gives a second ggml, whose
    device list llama.cpp never sees."""
    directory = _library_dir()
    candidates = sorted(directory.glob(f"{stem}.*")) if directory.is_dir() else []
    candidates = [c for c in candidates if c.suffix in (".so", ".dylib", ".dll") or ".so." in c.name]
    loaded = _loaded_paths()
    # Already mapped into this process first, then the soname form (libggml.so.0), then the rest.
    candidates.sort(key=lambda c: (str(c) not in loaded, not re.fullmatch(rf"{re.escape(stem)}\.so\.\d+|{re.escape(stem)}\.\d+\.dylib", c.name)))
    if not candidates:
        raise RuntimeUnavailableError(
            f"this llama-cpp-python was built without llama.cpp's RPC backend (no {stem} in {directory})",
            hint="reinstall with scripts/install.sh, which builds it with -DGGML_RPC=ON")
    return ctypes.CDLL(str(candidates[0]))


def _loaded_paths() -> set[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    except OSError:
        return set()


@functools.lru_cache(maxsize=1)
def _ggml() -> Any:
    lib = _open("libggml")
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    lib.ggml_backend_register.restype = None
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    return lib


@functools.lru_cache(maxsize=1)
def _ggml_base() -> Any:
    lib = _open("libggml-base")
    lib.ggml_set_abort_callback.restype = ctypes.c_void_p
    lib.ggml_set_abort_callback.argtypes = [ABORT_CALLBACK]
    return lib


@functools.lru_cache(maxsize=1)
def _ggml_rpc() -> Any:
    lib = _open("libggml-rpc")
    lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_get_device_memory.restype = None
    lib.ggml_backend_rpc_get_device_memory.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_size_t),
                                                       ctypes.POINTER(ctypes.c_size_t)]
    lib.ggml_backend_rpc_start_server.restype = None
    lib.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                                  ctypes.POINTER(ctypes.c_void_p)]
    return lib


def require() -> None:
    """A one-line error unless this llama-cpp-python has the RPC backend."""
    _ggml_rpc()


def device_memory(device: int) -> tuple[int, int]:
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    _ggml().ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


# ---- the main side --------------------------------------------------------------------------

_attached: list[Endpoint] = []
_worker_sockets: dict[tuple[str, int], socket.socket] = {}  # local address -> a handle on a connection to a worker
_socket_endpoints: dict[tuple[str, int], Endpoint] = {}
_keep_alive: list[Any] = []  # ctypes callbacks must outlive every call into C


def attach_workers(endpoints: list[Endpoint]) -> None:
    """Register each worker's devices with llama.cpp, in order, so the next model loads its layers
    onto them. Probe them first (edgellm.device.workers.probe): a worker llama.cpp cannot reach aborts it."""
    if not endpoints:
        return
    rpc, ggml = _ggml_rpc(), _ggml()
    _install_abort_handler()
    for endpoint in endpoints:
        if endpoint in _attached:
            continue
        reg = rpc.ggml_backend_rpc_add_server(str(endpoint).encode())
        if not reg:
            raise WorkerError(f"worker {endpoint} offers no device")
        ggml.ggml_backend_register(reg)
        _attached.append(endpoint)


def keep_alive_worker_sockets() -> int:
    """Turn on TCP keepalive and a user timeout on this process's connections to workers (llama.cpp
    sets neither), so a board that vanishes fails the next call instead of hanging it, and keep a
    handle on each (the stall check reads their TCP_INFO). Returns how many connections it found
    (Linux: /proc/self/fd; elsewhere the first 1024 descriptors)."""
    if not _attached:
        return 0
    wanted: dict[tuple[str, int], Endpoint] = {}
    for endpoint in _attached:
        with contextlib.suppress(OSError):  # resolved as llama.cpp resolves it (gethostbyname)
            wanted[(socket.gethostbyname(endpoint.host), endpoint.port)] = endpoint
    for held in _worker_sockets.values():
        held.close()
    _worker_sockets.clear()
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            peer = sock.getpeername()[:2] if sock.type == socket.SOCK_STREAM else None
            local = sock.getsockname()[:2]
        except OSError:
            peer = None
        if peer not in wanted or local in _worker_sockets:
            sock.close()
            continue
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                                  ("TCP_KEEPCNT", KEEPALIVE_PROBES), ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):
                if hasattr(socket, option):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        _worker_sockets[local] = sock
        _socket_endpoints[local] = wanted[peer]
    if _worker_sockets and not _heartbeat:
        _heartbeat.append(threading.Thread(target=_beat, name="rpc-heartbeat", daemon=True))
        _heartbeat[0].start()
    return len(_worker_sockets)


# ---- a main board that idles (serve between requests, chat while its user reads) -------------
# An `edgellm worker` drops a client that has been quiet for its --idle-timeout (300 s by default)
# while it owes it no reply: a connection quiet for HEARTBEAT_S is asked the worker's memory (one
# round trip through llama.cpp's own connection, queued behind whatever else it sends).
# EDGELLM_RPC_HEARTBEAT_S sets it (tests).
HEARTBEAT_S = 30.0
_heartbeat: list[threading.Thread] = []


def _beat() -> None:
    every = float(os.environ.get("EDGELLM_RPC_HEARTBEAT_S") or HEARTBEAT_S)
    while True:
        time.sleep(min(5.0, every / 2))
        for local, sock in list(_worker_sockets.items()):
            if not _held_by_llama_cpp(sock):  # the model is gone, and its connection: ours is the last handle
                sock.close()
                _worker_sockets.pop(local, None)
                continue
            if _quiet_ms(sock) >= every * 1000:
                free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
                _ggml_rpc().ggml_backend_rpc_get_device_memory(str(_socket_endpoints[local]).encode(), 0,
                                                                ctypes.byref(free), ctypes.byref(total))


def _quiet_ms(sock: socket.socket) -> float:
    """How long nothing went either way on this connection (Linux's TCP_INFO; elsewhere: long)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (AttributeError, OSError):
        return float("inf")
    return float(min(struct.unpack_from("<I", info, TCP_INFO_LAST_DATA_SENT)[0], struct.unpack_from("<I", info, TCP_INFO_LAST_DATA_RECV)[0]))


def _held_by_llama_cpp(sock: socket.socket) -> bool:
    """Whether another descriptor of this process (llama.cpp's) is on the same connection: asking
    llama.cpp for a worker's memory without one would open a connection of its own."""
    try:
        ours = os.fstat(sock.fileno())
        names = os.listdir("/proc/self/fd")
    except OSError:
        return True
    holders = 0
    for name in names:
        with contextlib.suppress(OSError):
            other = os.stat(f"/proc/self/fd/{name}")
            holders += (other.st_dev, other.st_ino) == (ours.st_dev, ours.st_ino)
    return holders >= 2


# ---- a worker that accepts but never answers (hung, or its board swapping itself to death) ----
# TCP stays up, so neither an error nor keepalive ends the wait: a decode that outlasts a generous
# limit does. The first decode may page in this board's share of a mapped model (from an SD card,
# a minute or more), hence its longer limit. EDGELLM_RPC_STALL_S sets both (tests).
STALL_FIRST_S, STALL_BASE_S, STALL_PER_TOKEN_S = 300.0, 60.0, 0.5
_NO_WATCH = contextlib.nullcontext()


class _StallWatch:
    def __init__(self) -> None:
        override = os.environ.get("EDGELLM_RPC_STALL_S")
        self.first_s, self.base_s = (float(override),) * 2 if override else (STALL_FIRST_S, STALL_BASE_S)
        self.since: float | None = None
        self.limit = 0.0
        self.decodes = 0
        threading.Thread(target=self._check, name="rpc-stall-watch", daemon=True).start()

    @contextlib.contextmanager
    def watch(self, n_tokens: int) -> Iterator[None]:
        self.limit = (self.first_s if self.decodes == 0 else self.base_s) + n_tokens * STALL_PER_TOKEN_S
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.since = None
            self.decodes += 1

    def _check(self) -> None:
        while True:
            time.sleep(1.0)
            since = self.since
            if since is not None and time.monotonic() - since > self.limit:
                waited = time.monotonic() - since
                named = ", ".join(map(str, waiting_on() or _attached))
                _exit_with(f"worker {named} has not answered for {waited:.0f} s (hung, or its board is out of memory "
                           "and swapping); edgellm stops: restart `edgellm worker` on that board, then run again")


_stall_watch: list[_StallWatch] = []


def decode_watch(n_tokens: int) -> contextlib.AbstractContextManager[None]:
    """Around a llama_decode of `n_tokens`: with workers attached, a stall beyond the limit ends
    the process with one line naming the worker; without, nothing (a shared null context)."""
    if not _attached:
        return _NO_WATCH
    if not _stall_watch:
        _stall_watch.append(_StallWatch())
    return _stall_watch[0].watch(n_tokens)


TCP_INFO_LAST_DATA_SENT, TCP_INFO_LAST_DATA_RECV = 44, 52  # struct tcp_info offsets (ms ago), Linux


def waiting_on() -> list[Endpoint]:
    """The workers this process sent to after their last reply: the ones it waits for (Linux)."""
    if not hasattr(socket, "TCP_INFO"):
        return []
    waiting = []
    for local, sock in _worker_sockets.items():
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        except OSError:
            continue
        sent_ago, received_ago = struct.unpack_from("<I", info, TCP_INFO_LAST_DATA_SENT)[0], struct.unpack_from("<I", info, TCP_INFO_LAST_DATA_RECV)[0]
        if sent_ago < received_ago and _socket_endpoints[local] not in waiting:
            waiting.append(_socket_endpoints[local])
    return waiting


def _exit_with(line: str) -> None:
    """From a native callback, where no exception can reach the CLI's funnel: keep what was
    generated (flushed, its line ended on a terminal), print `error: LINE`, exit 1."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        if sys.stdout.isatty():
            sys.stdout.write("\n")
            sys.stdout.flush()
    print(f"error: {line}", file=sys.stderr, flush=True)
    os._exit(EXIT_WORKER_LOST)


def _install_abort_handler() -> None:
    """llama.cpp's RPC client calls GGML_ABORT when a worker stops answering. Say which worker in
    one line and exit: a split model cannot go on without one of its parts."""
    if _keep_alive:
        return

    @ABORT_CALLBACK
    def on_abort(message: bytes | None) -> None:
        _exit_with(lost_worker_message((message or b"").decode("utf-8", "replace").strip()))

    _keep_alive.append(on_abort)
    _ggml_base().ggml_set_abort_callback(on_abort)


def lost_worker_message(native: str) -> str:
    """The one line for an abort while workers are attached: the workers that no longer accept a
    connection are the ones lost (a live worker accepts, even while busy with us)."""
    detail = native.split(": ", 1)[-1] if ": " in native else native
    gone: list[str] = []
    for attempt in range(5):  # a killed worker's port may still listen for a moment as it exits
        if attempt:
            time.sleep(0.2)
        for endpoint in _attached:
            try:
                socket.create_connection((endpoint.host, endpoint.port), timeout=1.0).close()
            except OSError:
                gone.append(str(endpoint))
        if gone:
            break
    if "RPC" not in native and not gone:
        return f"llama.cpp stopped: {detail}"
    if gone:
        return (f"worker {', '.join(gone)} went away ({detail.rstrip('.')}); the model's layers there are lost, "
                "so edgellm stops: restart `edgellm worker` on that board, then run again")
    return (f"a worker ({', '.join(map(str, _attached))}) stopped answering ({detail.rstrip('.')}); "
            "edgellm stops: check the workers (an `edgellm worker` says on its stderr why it dropped a client), then run again")


# ---- the worker side ------------------------------------------------------------------------

def serve(endpoint: Endpoint, *, offer_bytes: int, threads: int, quiet: bool = True) -> None:
    """Serve this board's CPU at `endpoint`, offering `offer_bytes` of memory to planners. Blocks
    (llama.cpp's accept loop); returns only when the server could not start or stopped."""
    ggml, rpc = _ggml(), _ggml_rpc()
    cpu = ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not cpu:
        raise RuntimeUnavailableError("llama.cpp has no CPU device")
    device = offered_device(cpu, offer_bytes)
    devices = (ctypes.c_void_p * 1)(ctypes.addressof(device))

    @ABORT_CALLBACK
    def on_abort(message: bytes | None) -> None:
        # In `edgellm worker`'s child: the parent says this line when it starts the server again.
        _exit_with((message or b"").decode("utf-8", "replace").strip().split(": ", 1)[-1])

    _keep_alive.append(on_abort)
    _ggml_base().ggml_set_abort_callback(on_abort)
    if quiet:
        # llama.cpp's banner and per-connection lines go to stdout; edgellm printed its own line.
        sys.stdout.flush()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    rpc.ggml_backend_rpc_start_server(str(endpoint).encode(), None, threads, 1, devices)


def offered_device(cpu: int, offer_bytes: int) -> Any:
    """A copy of llama.cpp's CPU device whose memory query answers `offer_bytes` free and total:
    what the RPC server reports to planners (llama.cpp's CPU device reports all physical RAM)."""
    original = (ctypes.c_void_p * DEVICE_STRUCT_POINTERS).from_address(cpu)
    device = (ctypes.c_void_p * DEVICE_STRUCT_POINTERS)(*original)

    @GET_MEMORY
    def get_memory(_device: int, free: Any, total: Any) -> None:
        free[0] = offer_bytes
        total[0] = offer_bytes

    original_init = INIT_BACKEND(original[INIT_BACKEND_SLOT] or 0)
    address = ctypes.addressof(device)
    layout_error = "this llama.cpp's device layout is not the one edgellm knows: cannot cap the worker's memory"

    @INIT_BACKEND
    def init_backend(_device: int, params: bytes | None) -> int:
        backend = original_init(cpu, params)
        if backend:
            slots = (ctypes.c_void_p * (BACKEND_DEVICE_SLOT + 1)).from_address(backend)
            if slots[BACKEND_DEVICE_SLOT] != cpu:
                _exit_with(layout_error)
            slots[BACKEND_DEVICE_SLOT] = address
        return backend or 0

    _keep_alive.extend([get_memory, init_backend, original_init])
    device[GET_MEMORY_SLOT] = ctypes.cast(get_memory, ctypes.c_void_p).value
    device[INIT_BACKEND_SLOT] = ctypes.cast(init_backend, ctypes.c_void_p).value
    # The struct layout is llama.cpp-internal: check the copy answers as the CPU and with the offer.
    ggml = _ggml()
    if ggml.ggml_backend_dev_name(address) != ggml.ggml_backend_dev_name(cpu) or device_memory(address) != (offer_bytes, offer_bytes):
        raise RuntimeUnavailableError(layout_error)
    return device
