"""What stands between the network and `edgellm serve`'s handlers: connection and request guards.

- Request-head deadline: uvicorn keeps a connection that never sends a request open forever, and
  counts it against its concurrency limit, so a few dozen silent sockets shut everyone out. The
  protocol here closes a connection that has not sent a complete request head in time, and
  closes the oldest such connection when too many are waiting.
- Host allow-list: a server on loopback without a key is reachable from any web page the user
  opens, through DNS rebinding (evil.example resolving to 127.0.0.1); its requests carry their
  own Host, so only loopback names (and --allow-host ones) are answered.
- JSON bodies: only `application/json` (a page can POST text/plain across sites without a CORS
  preflight); NaN and Infinity, unpaired surrogates and absurd nesting are refused up front.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from edgellm.device.workers import is_loopback
from edgellm.serve.errors import speaks_ollama
from edgellm.text.jsondepth import max_depth

HEAD_TIMEOUT_S = 5.0  # as long as uvicorn's keep-alive timeout: a real client sends its head at once
MAX_WAITING_FOR_HEAD = 256  # connections that have sent no complete head yet; beyond it the oldest goes
MAX_JSON_DEPTH = 64  # OpenAI request bodies nest about 6 deep (tools' JSON schemas a little more)

_SURROGATE = re.compile("[\ud800-\udfff]")


def head_deadline_protocol(timeout_s: float = HEAD_TIMEOUT_S, max_waiting: int = MAX_WAITING_FOR_HEAD) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for each request head (uvicorn's `http=` setting)."""
    waiting: OrderedDict[HeadDeadline, None] = OrderedDict()  # shared by this server's connections

    class HeadDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _timed_cycle: Any = None
        _bytes_seen = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._bytes_seen = True
            super().data_received(data)
            self._note_new_request()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self._note_new_request() and not self.transport.is_closing():
                self._arm()  # a kept-alive connection waits for its next head under the same rule

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _note_new_request(self) -> bool:
            """True when a request head has arrived since the deadline was armed."""
            if self.cycle is not None and self.cycle is not self._timed_cycle:
                self._timed_cycle = self.cycle
                self._disarm()
                return True
            return False

        def _arm(self) -> None:
            self._disarm()
            self._bytes_seen = False
            self._deadline = self.loop.call_later(timeout_s, self._expire)
            waiting[self] = None
            while len(waiting) > max_waiting:
                oldest = next(iter(waiting))
                oldest._expire()

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            waiting.pop(self, None)

        def _expire(self) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            if self._bytes_seen:  # part of a head arrived: say why, as nginx does
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            if self.conn.our_state not in (h11.ERROR, h11.CLOSED):
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:
                    pass
            self.transport.close()

    return HeadDeadline


# --- Host ----------------------------------------------------------------------------------------


def host_name(header: str) -> str:
    """The name part of a Host header value: 'a.b:80' -> 'a.b', '[::1]:80' -> '::1'."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, _, _port = value.partition(":")
    return name.rstrip(".")


class HostCheck:
    """ASGI middleware: answer 403 to requests whose Host is neither loopback nor allowed."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {host_name(name) for name in allowed}

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True  # HTTP/1.0 without Host: not a browser, so not a rebinding page
        name = host_name(header)
        return is_loopback(name, localhost_names=True) or name in self.allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((value.decode("latin-1") for key, value in scope["headers"] if key == b"host"), None)
        if self.allows(header):
            await self.app(scope, receive, send)
            return
        shown = (header or "")[:100]
        message = (f"Host '{shown}' is not allowed: this server listens on loopback and answers only "
                   f"requests addressed to it (DNS rebinding protection); start it with --allow-host {host_name(shown) or 'NAME'} to allow it")
        error: Any = message if speaks_ollama(scope["path"]) else {
            "message": message, "type": "invalid_request_error", "param": None, "code": "host_not_allowed"}
        body = json.dumps({"error": error}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# --- JSON bodies ---------------------------------------------------------------------------------


class BodyError(ValueError):
    """A request body that is not acceptable JSON; the message says why, in one line."""


def is_json_media_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _refuse_constant(name: str) -> Any:
    raise BodyError(f"{name} is not a JSON number")


def parse_json_body(raw: bytes) -> Any:
    """Parse a request body; BodyError for anything edgellm must not pass on to the handlers."""
    depth = max_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise BodyError(f"the JSON nests {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except BodyError:
        raise
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"not valid JSON: {exc}") from None
    where = _surrogate_path(data)
    if where is not None:
        raise BodyError(f"{where} holds an unpaired UTF-16 surrogate (such as \\ud800), which is not valid Unicode")
    return data


def _surrogate_path(data: Any) -> str | None:
    """Where the first string with a lone surrogate is ('messages.0.content'), or None."""
    todo: list[tuple[str, Any]] = [("body", data)]
    while todo:
        path, node = todo.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return path.removeprefix("body.")
        elif isinstance(node, dict):
            for key, value in node.items():
                if _SURROGATE.search(key):
                    return f"{path.removeprefix('body.')} (a key)"
                todo.append((f"{path}.{key}", value))
        elif isinstance(node, list):
            todo.extend((f"{path}.{index}", value) for index, value in enumerate(node))
    return None
