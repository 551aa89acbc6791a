"""llama.cpp's RPC protocol as far as edgellm speaks it itself: worker addresses, and a probe that
asks a worker its protocol version and free memory before llama.cpp connects. Pure Python.

Why a probe of our own: llama.cpp's RPC client aborts the process on any failure (a worker down, a
version mismatch) and waits forever on a worker that stopped answering. The probe turns each of
those into a one-line error with a timeout, before any native code sees the address.

Wire format (ggml/src/ggml-rpc/ggml-rpc.cpp, protocol v7.0.0), little-endian:
  request  | u8 command | u64 payload size | payload |
  response | u64 payload size | payload |
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass

from edgellm.errors import WorkerError

# The protocol version this build of llama.cpp speaks (ggml-rpc.h RPC_PROTO_*_VERSION). A worker
# must have the same major and no newer minor (ggml-rpc.cpp negotiate_hello).
PROTOCOL_VERSION = (7, 0, 0)
DEFAULT_PORT = 50052
CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14  # always 14, in every protocol version
CMD_DEVICE_COUNT = 15
CONN_CAPS_SIZE = 24  # transport capabilities in HELLO (RDMA); zeros: plain TCP
MAX_DEVICES = 16  # GGML_RPC_MAX_SERVERS; a worker claiming more is not a llama.cpp worker
# What an `edgellm worker` busy with another client answers a HELLO with (edgellm.worker.relay).
BUSY_PREFIX = b"edgellm worker busy: "
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker said about itself when probed."""

    endpoint: Endpoint
    version: tuple[int, int, int]
    free_bytes: int  # what it offers: `edgellm worker --mem`, or its RAM
    total_bytes: int
    rtt_s: float  # the fastest round trip of the probe: the network's share of every hop


def is_loopback(host: str, *, localhost_names: bool = False) -> bool:
    """Whether `host` (an address, [v6] or not, or a name) is this machine only. Other names may
    resolve to anything, so they are not. `localhost_names`: *.localhost too (RFC 6761), for the
    Host header a browser sends (it never resolves those through DNS); the one rule for workers,
    serve's bind address and its Host check."""
    host = host.strip("[]")
    if host == "localhost" or (localhost_names and host.endswith(".localhost")):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_endpoint(text: str) -> Endpoint:
    """`HOST:PORT` (or `HOST`, port 50052) into an Endpoint, or a one-line error.
    llama.cpp parses the address with std::stoi and aborts on what it cannot use."""
    raw = text.strip()
    if not raw:
        raise WorkerError("--rpc: empty worker address", hint="give HOST:PORT, e.g. --rpc 192.168.1.20:50052")
    if not raw.isascii():
        # Python's resolver would IDNA-normalise '１２７.0.0.1' to 127.0.0.1; llama.cpp's would not.
        raise WorkerError(f"--rpc: {ascii(text)} is not all ASCII; llama.cpp takes worker addresses in ASCII only",
                          hint="type the address in ASCII, e.g. --rpc 192.168.1.20:50052")
    if raw.startswith("[") or _is_ipv6(raw):
        # llama.cpp's client splits at the first ':' and resolves with gethostbyname: IPv4 only.
        raise WorkerError(f"--rpc: '{text}' is an IPv6 address; llama.cpp's RPC client speaks IPv4 only",
                          hint="give the worker's IPv4 address or a host name")
    if raw.count(":") > 1:
        raise WorkerError(f"--rpc: '{text}' is not a worker address", hint="give HOST:PORT, e.g. --rpc 192.168.1.20:50052")
    host, port_text = raw, ""
    if ":" in raw:
        host, port_text = raw.split(":")
    if not host or any(c.isspace() or not c.isprintable() or c in "/,@" for c in host):
        raise WorkerError(f"--rpc: '{text}' is not a worker address", hint="give HOST:PORT, e.g. --rpc 192.168.1.20:50052")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise WorkerError(f"--rpc: '{text}' has no valid port (1-65535)", hint="give HOST:PORT, e.g. --rpc 192.168.1.20:50052")
        port = int(port_text)
    return Endpoint(host, port)


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def parse_endpoints(text: str | None) -> list[Endpoint]:
    """`--rpc A:1,B:2` into endpoints, in order (the order of the layers), each once. None (no
    --rpc): none; an empty --rpc is an error, not a plan without workers."""
    if text is None:
        return []
    if not text.strip():
        raise WorkerError("--rpc: no worker address given", hint="give HOST:PORT, e.g. --rpc 192.168.1.20:50052, or leave --rpc out")
    endpoints = [parse_endpoint(part) for part in text.split(",")]
    seen: set[tuple[str, int]] = set()
    for endpoint in endpoints:
        key = ("loopback" if endpoint.loopback else endpoint.host.lower(), endpoint.port)
        if key in seen:
            raise WorkerError(f"--rpc: worker {endpoint} is named twice", hint="name each worker once")
        seen.add(key)
    if len(endpoints) > MAX_DEVICES:
        raise WorkerError(f"--rpc: {len(endpoints)} workers; llama.cpp takes at most {MAX_DEVICES}")
    return endpoints


class _Connection:
    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self.endpoint = endpoint
        try:
            self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        except socket.gaierror as exc:
            raise WorkerError(f"worker {endpoint}: unknown host ({exc.strerror})", hint="check the address in --rpc") from None
        except TimeoutError:
            raise WorkerError(f"worker {endpoint}: no answer within {timeout:g} s (host down, or a firewall drops the port)",
                              hint=_START_HINT) from None
        except OSError as exc:
            raise WorkerError(f"worker {endpoint} is not reachable: {exc.strerror or exc}", hint=_START_HINT) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, command: int, payload: bytes, what: str) -> bytes:
        try:
            self.sock.sendall(struct.pack("<BQ", command, len(payload)) + payload)
            size = struct.unpack("<Q", self._receive(8, what))[0]
            if size > 4096:  # every answer the probe asks for is a few bytes
                raise WorkerError(f"worker {self.endpoint}: malformed answer to {what} ({size} bytes)", hint=_NOT_A_WORKER)
            return self._receive(size, what)
        except TimeoutError:
            raise WorkerError(
                f"worker {self.endpoint} accepted the connection but did not answer {what}: "
                "it is busy with another client (a worker serves one at a time) or hung",
                hint="stop the other edgellm using it, or restart `edgellm worker` there") from None
        except ConnectionError as exc:
            raise WorkerError(f"worker {self.endpoint} closed the connection during {what} ({exc.strerror or exc})",
                              hint=_NOT_A_WORKER) from None

    def _receive(self, size: int, what: str) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionResetError(0, "end of stream")
            data += chunk
        return bytes(data)

    def close(self) -> None:
        self.sock.close()


_START_HINT = "start it there with `edgellm worker --allow-lan --host 0.0.0.0` (or check the address in --rpc)"
_NOT_A_WORKER = ("is it an `edgellm worker` (or llama.cpp rpc-server) of the same llama.cpp version? An older "
                 f"worker speaks an older protocol; this edgellm speaks v{'.'.join(map(str, PROTOCOL_VERSION))}")


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT_S) -> WorkerInfo:
    """Say hello to a worker and ask its free memory (device 0: a CPU worker has one device).
    The connection closes before llama.cpp opens its own: a worker serves one client at a time."""
    started = time.perf_counter()
    connection = _Connection(endpoint, timeout)
    try:
        hello = connection.call(CMD_HELLO, bytes(CONN_CAPS_SIZE), "the handshake")
        rtt = time.perf_counter() - started
        if hello.startswith(BUSY_PREFIX):
            said = hello.removeprefix(BUSY_PREFIX).decode("ascii", "replace")
            raise WorkerError(f"worker {endpoint} is busy: {said}",
                              hint="stop the other edgellm using it, or start another worker for this board")
        if len(hello) != 4 + CONN_CAPS_SIZE:
            raise WorkerError(f"worker {endpoint}: unexpected handshake ({len(hello)} bytes)", hint=_NOT_A_WORKER)
        version = (hello[0], hello[1], hello[2])
        if version[0] != PROTOCOL_VERSION[0] or version[1] > PROTOCOL_VERSION[1]:
            raise WorkerError(
                f"worker {endpoint} speaks RPC protocol v{'.'.join(map(str, version))}, this edgellm's llama.cpp "
                f"v{'.'.join(map(str, PROTOCOL_VERSION))}: refusing it (llama.cpp would abort)",
                hint="install the same edgellm and llama-cpp-python version on every board")
        started = time.perf_counter()
        count_raw = connection.call(CMD_DEVICE_COUNT, b"", "the device count")
        rtt = min(rtt, time.perf_counter() - started)
        count = struct.unpack("<I", count_raw)[0] if len(count_raw) == 4 else -1
        if not 0 < count <= MAX_DEVICES:
            raise WorkerError(f"worker {endpoint}: reports {count} devices", hint=_NOT_A_WORKER)
        started = time.perf_counter()
        memory = connection.call(CMD_GET_DEVICE_MEMORY, struct.pack("<I", 0), "the memory query")
        rtt = min(rtt, time.perf_counter() - started)
        if len(memory) != 16:
            raise WorkerError(f"worker {endpoint}: malformed memory answer ({len(memory)} bytes)", hint=_NOT_A_WORKER)
        free, total = struct.unpack("<QQ", memory)
    finally:
        connection.close()
    return WorkerInfo(endpoint, version, free, total, rtt)


def let_idle_threads_sleep() -> None:
    """In a split model each board computes its layers, then waits for the others, most of every
    token. llama.cpp's OpenMP threads spin while they wait: heat and power on a worker board, and,
    with workers on one machine, CPU taken from the board that computes (measured here, 1.5B on
    loopback: 2.8 tokens/s spinning vs 10.2 sleeping). Must run before llama_cpp is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def probe_all(endpoints: list[Endpoint], timeout: float = PROBE_TIMEOUT_S) -> list[WorkerInfo]:
    return [probe(endpoint, timeout) for endpoint in endpoints]
