"""The worker's front door: edgellm's own listener on the worker's address, relaying one client at
a time to llama.cpp's RPC server, which listens on a private loopback port. Pure Python.

llama.cpp's server believes what it reads. A request's header declares its payload size and the
server allocates that much before a byte of it arrives: 2^63 throws std::length_error, which it
does not catch (the process ends with a C++ backtrace), and 512 MiB with no data behind it is
committed while it waits. It waits forever, for one client at a time, so a client that says hello
and goes quiet locks every other client out. The relay reads each header first and:

- refuses a declared size beyond what the worker offers (plus a little for the protocol's own
  fields): the connection closes, llama.cpp never sees it. A size within the offer goes on (the
  offer is what the worker lends), and is held for at most `stall_s` if the rest does not come.
  Buffers are not checked against the offer: llama.cpp's own may exceed a planner's estimate by
  several percent;
- drops a client that has sent nothing for `idle_s` while the worker owes it no reply, one that
  stops part-way through a message for `stall_s`, and one that stops reading replies for `idle_s`.
  A client waiting for a reply is never cut: that is llama.cpp computing for it;
- serves one client at a time; another gets a one-line busy answer to its HELLO (edgellm's probe
  prints it) after a short grace, so a connection that is just closing does not turn away the next.

Wire format (ggml/src/ggml-rpc/ggml-rpc.cpp, protocol v7.0.0), little-endian:
  request  | u8 command | u64 payload size | payload |     the first one: HELLO, 24 bytes
  reply    | u64 payload size | payload |                  only to the commands in REPLIED
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgellm.device.workers import BUSY_PREFIX, CMD_HELLO, CONN_CAPS_SIZE
from edgellm.units import format_size

COMMANDS = ("ALLOC_BUFFER", "GET_ALIGNMENT", "GET_MAX_SIZE", "BUFFER_GET_BASE", "FREE_BUFFER", "BUFFER_CLEAR",
            "SET_TENSOR", "SET_TENSOR_HASH", "GET_TENSOR", "COPY_TENSOR", "GRAPH_COMPUTE", "GET_DEVICE_MEMORY",
            "INIT_TENSOR", "GET_ALLOC_SIZE", "HELLO", "DEVICE_COUNT", "GRAPH_RECOMPUTE", "MEMSET_TENSOR")
CMD_SET_TENSOR, CMD_GRAPH_COMPUTE = 6, 10
# The commands llama.cpp's server answers; the others (tensor data in, a graph to compute, frees)
# have no reply.
REPLIED = frozenset({0, 1, 2, 3, 7, 8, 9, 11, 13, 14, 15})
# The requests whose payload the client sizes: tensor data and a graph. Every other request is a
# fixed struct of at most 4 + 11 * 296 bytes (GET_ALLOC_SIZE: a tensor and its ten sources).
VARIABLE = frozenset({CMD_SET_TENSOR, CMD_GRAPH_COMPUTE})
FIXED_MAX = 4096
# SET_TENSOR carries a tensor's description and offset before its data; GRAPH_COMPUTE a graph
# (~300 bytes per tensor, a few MB for the largest models): room for those above the offer.
PROTOCOL_SLACK = 16 * 1024**2
HEADER = struct.Struct("<BQ")
HELLO_BYTES = HEADER.size + CONN_CAPS_SIZE
HELLO_ANSWER_BYTES = 8 + 4 + CONN_CAPS_SIZE  # size, version (3 bytes and padding), capabilities

IDLE_S = 300.0  # edgellm's main boards say something every HEARTBEAT_S (runtime.rpc) while they idle
STALL_S = 30.0  # part-way through a message: a client sends each message in one go
HANDSHAKE_S = 10.0
BUSY_GRACE_S = 1.0  # llama.cpp's client closes and reopens its connection while a model loads
MAX_CONNECTIONS = 16  # the served client and those waiting for their HELLO or a busy answer
CHUNK = 1024 * 1024
UPSTREAM_CONNECT_S = 30.0  # llama.cpp's server may be starting again
_ACCEPT_AGAIN = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED})


@dataclass(frozen=True)
class Limits:
    offer_bytes: int
    idle_s: float = IDLE_S
    stall_s: float = STALL_S
    handshake_s: float = HANDSHAKE_S

    @property
    def max_payload(self) -> int:
        return self.offer_bytes + PROTOCOL_SLACK

    @property
    def poll_s(self) -> float:
        return min(1.0, self.idle_s / 4, self.stall_s / 4)


def command_name(command: int) -> str:
    return COMMANDS[command] if command < len(COMMANDS) else f"command {command}"


class Requests:
    """The client's byte stream read as requests, header by header, as it passes (payloads are
    not copied). `feed` says why a chunk must not go on, or None."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.header = bytearray()
        self.command = CMD_HELLO
        self.remaining = 0  # payload bytes of the current request still to come
        self.replies_due = 0

    @property
    def mid_message(self) -> bool:
        return bool(self.header) or self.remaining > 0

    def feed(self, data: memoryview) -> str | None:
        at, end = 0, len(data)
        while at < end:
            if self.remaining:
                take = min(self.remaining, end - at)
                at += take
                self.remaining -= take
                continue
            take = min(HEADER.size - len(self.header), end - at)
            self.header += data[at:at + take]
            at += take
            if len(self.header) < HEADER.size:
                break
            self.command, size = HEADER.unpack(self.header)
            self.header.clear()
            if refusal := self.check(self.command, size):
                return refusal
            if self.command in REPLIED:
                self.replies_due += 1
            self.remaining = size
        return None

    def check(self, command: int, size: int) -> str | None:
        """Why this header must not reach llama.cpp, or None."""
        if command >= len(COMMANDS) or command == CMD_HELLO:
            return f"sent {command_name(command)}, which is not a request after the handshake"
        limit = self.limits.max_payload if command in VARIABLE else FIXED_MAX
        if size > limit:
            what = f"the {format_size(self.limits.offer_bytes)} offered" if command in VARIABLE else f"{FIXED_MAX} bytes"
            return f"declared {size} bytes for {command_name(command)}, more than {what}"
        return None


class Replies:
    """llama.cpp's replies as they pass: counts the whole ones."""

    def __init__(self) -> None:
        self.header = bytearray()
        self.remaining = 0

    def feed(self, data: memoryview) -> int:
        done, at, end = 0, 0, len(data)
        while at < end:
            if self.remaining:
                take = min(self.remaining, end - at)
                at += take
                self.remaining -= take
                done += not self.remaining
                continue
            take = min(8 - len(self.header), end - at)
            self.header += data[at:at + take]
            at += take
            if len(self.header) == 8:
                self.remaining = struct.unpack("<Q", self.header)[0]
                self.header.clear()
                done += not self.remaining
        return done


def busy_answer(seconds: float) -> bytes:
    """The reply to a HELLO while another client is served: not a HELLO reply's 28 bytes, so
    llama.cpp's own client refuses it; edgellm's probe reads the text."""
    text = BUSY_PREFIX + f"serving another client for {seconds:.0f} s; a worker serves one at a time".encode()
    return struct.pack("<Q", len(text)) + text


class Relay:
    """Accepts on `listener`; each client that says HELLO is relayed to `upstream()` (where
    llama.cpp's server listens now), one at a time. `note` gets one line per refusal or drop."""

    def __init__(self, listener: socket.socket, upstream: Callable[[], tuple[str, int]], limits: Limits,
                 note: Callable[[str], None]) -> None:
        self.listener = listener
        self.upstream = upstream
        self.limits = limits
        self.note = note
        self._slot = threading.Lock()
        self._serving_since = 0.0
        self._connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        """Accept until `stop()`; a failing accept (the listener closed) ends it."""
        while not self._stopped.is_set():
            try:
                conn, peer = self.listener.accept()
            except OSError as exc:
                if self._stopped.is_set():
                    return
                if exc.errno in _ACCEPT_AGAIN:  # out of descriptors or memory for a moment
                    time.sleep(0.1)
                    continue
                raise
            if not self._connections.acquire(blocking=False):
                conn.close()  # a flood of connections: the served one and the queue are enough
                continue
            try:
                threading.Thread(target=self._handle, args=(conn, _name(peer)), name="rpc-relay", daemon=True).start()
            except RuntimeError:  # no thread to be had: as for a flood
                conn.close()
                self._connections.release()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self.listener.close()

    def _handle(self, conn: socket.socket, peer: str) -> None:
        try:
            hello = self._read_hello(conn, peer)
            if hello is None:
                return
            if not self._slot.acquire(timeout=BUSY_GRACE_S):
                self._answer_busy(conn, peer)
                return
            try:
                self._serving_since = time.monotonic()
                Session(self, conn, peer).run(hello)
            finally:
                self._slot.release()
        except OSError:
            pass  # the client went away: nothing to tell anyone
        except Exception as exc:  # noqa: BLE001  (one client must not end the worker: said in one line)
            self.note(f"dropped {peer}: unexpected {type(exc).__name__}: {exc}")
        finally:
            conn.close()
            self._connections.release()

    def _read_hello(self, conn: socket.socket, peer: str) -> bytes | None:
        deadline = time.monotonic() + self.limits.handshake_s
        data = bytearray()
        while len(data) < HELLO_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                if data:
                    self.note(f"dropped {peer}: no handshake within {self.limits.handshake_s:g} s")
                return None
            conn.settimeout(left)
            try:
                chunk = conn.recv(HELLO_BYTES - len(data))
            except TimeoutError:
                continue
            if not chunk:
                return None  # connected and closed: a port check
            data += chunk
            if len(data) >= HEADER.size:
                command, size = HEADER.unpack_from(data)
                if command != CMD_HELLO or size != CONN_CAPS_SIZE:
                    self.note(f"refused {peer}: not an RPC client of protocol v7 (it began with {command_name(command)}, {size} bytes)")
                    return None
        return bytes(data)

    def _answer_busy(self, conn: socket.socket, peer: str) -> None:
        self.note(f"turned away {peer}: busy with another client")
        conn.settimeout(2.0)
        conn.sendall(busy_answer(time.monotonic() - self._serving_since))
        conn.shutdown(socket.SHUT_WR)
        # Until the client closes (closing first could reset the answer away), for 2 s at most.
        deadline = time.monotonic() + 2.0
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline and conn.recv(4096):
                pass


class Session:
    """One client relayed to llama.cpp's server: requests checked on their way in by this thread,
    replies passed back by a second one."""

    def __init__(self, relay: Relay, client: socket.socket, peer: str) -> None:
        self.relay = relay
        self.limits = relay.limits
        self.client = client
        self.peer = peer
        self.requests = Requests(self.limits)
        self.replies_done = 0  # written by the reply thread only; replies_due by this one only
        self.last_heard = time.monotonic()
        self.ended = threading.Event()

    def run(self, hello: bytes) -> None:
        connected = self._connect_upstream(hello)
        if connected is None:
            return
        upstream, answer = connected
        replies = threading.Thread(target=self._pass_replies, args=(upstream,), name="rpc-relay-replies", daemon=True)
        try:
            self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.client.sendall(answer)
            replies.start()
            self._pass_requests(upstream)
        finally:
            self.ended.set()
            for sock in (self.client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            if replies.is_alive():
                replies.join()
            upstream.close()

    def _connect_upstream(self, hello: bytes) -> tuple[socket.socket, bytes] | None:
        """A connection to llama.cpp's server that has answered `hello`, and its answer. Waits
        while the server is being started again: one that died a moment ago may still accept."""
        deadline = time.monotonic() + UPSTREAM_CONNECT_S
        while True:
            upstream = None
            try:
                upstream = socket.create_connection(self.relay.upstream(), timeout=UPSTREAM_CONNECT_S)
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                upstream.sendall(hello)
                answer = bytearray()
                while len(answer) < HELLO_ANSWER_BYTES:
                    chunk = upstream.recv(HELLO_ANSWER_BYTES - len(answer))
                    if not chunk:
                        raise ConnectionResetError(0, "closed before answering")
                    answer += chunk
                upstream.settimeout(None)
                return upstream, bytes(answer)
            except OSError as exc:
                if upstream is not None:
                    upstream.close()
                if time.monotonic() > deadline:
                    self.relay.note(f"dropped {self.peer}: llama.cpp's RPC server does not answer ({exc.strerror or exc})")
                    return None
                time.sleep(0.1)

    def _pass_requests(self, upstream: socket.socket) -> None:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        self.client.settimeout(self.limits.poll_s)
        while not self.ended.is_set():
            try:
                n = self.client.recv_into(buffer)
            except TimeoutError:
                if reason := self._quiet_too_long():
                    self.relay.note(f"dropped {self.peer}: {reason}")
                    return
                continue
            except OSError:
                return
            if not n:
                return
            self.last_heard = time.monotonic()
            if refusal := self.requests.feed(view[:n]):
                self.relay.note(f"refused {self.peer}: it {refusal}")
                return
            try:
                upstream.sendall(view[:n])
            except OSError:
                return  # llama.cpp closed the connection (it refused a request, or its server stopped)

    def _quiet_too_long(self) -> str | None:
        if self.requests.replies_due > self.replies_done:
            return None  # llama.cpp is working for this client: its wait is never cut
        quiet = time.monotonic() - self.last_heard
        if self.requests.mid_message and quiet > self.limits.stall_s:
            return f"stopped part-way through a {command_name(self.requests.command)} message for {quiet:.0f} s"
        if quiet > self.limits.idle_s:
            return f"idle for {quiet:.0f} s"
        return None

    def _pass_replies(self, upstream: socket.socket) -> None:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        replies = Replies()
        client: socket.socket | None = None
        try:
            # A second handle on the client's socket, for sending with a deadline while the other
            # thread reads (one Python socket object holds one timeout).
            client = socket.socket(fileno=os.dup(self.client.fileno()))
            client.settimeout(self.limits.poll_s)
            while True:
                try:
                    n = upstream.recv_into(buffer)
                except OSError:
                    return
                if not n:
                    return
                done = replies.feed(view[:n])
                if not self._send(client, view[:n]):
                    return
                self.last_heard = time.monotonic()
                self.replies_done += done
        except OSError:
            pass  # the session is over
        except Exception as exc:  # noqa: BLE001  (one client must not end the worker: said in one line)
            self.relay.note(f"dropped {self.peer}: unexpected {type(exc).__name__}: {exc}")
        finally:
            if client is not None:
                client.close()
            with contextlib.suppress(OSError):
                self.client.shutdown(socket.SHUT_RDWR)  # wakes the request thread

    def _send(self, client: socket.socket, data: memoryview) -> bool:
        progress = time.monotonic()
        while data:
            try:
                sent = client.send(data)
            except TimeoutError:
                if self.ended.is_set():
                    return False
                if time.monotonic() - progress > self.limits.idle_s:
                    self.relay.note(f"dropped {self.peer}: it stopped reading replies for {self.limits.idle_s:g} s")
                    return False
                continue
            except OSError:
                return False
            data = data[sent:]
            progress = time.monotonic()
        return True


def _name(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
