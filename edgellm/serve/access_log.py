"""One stderr line per request (ASGI middleware), and the request counters of /metrics."""

from __future__ import annotations

import time
import traceback
from typing import Any

from edgellm import ui
from edgellm.errors import debug_enabled, one_line
from edgellm.serve.metrics import Metrics

KNOWN_PATHS = frozenset({
    "/health", "/metrics", "/slots", "/v1/models", "/v1/chat/completions", "/v1/completions",
    # Ollama's API (edgellm.serve.ollama)
    "/", "/api/version", "/api/tags", "/api/ps", "/api/show", "/api/chat", "/api/generate", "/api/pull", "/api/delete",
})


class RequestLog:
    """ASGI middleware: one stderr line per request (method, path, status, tokens, tok/s, time)."""

    def __init__(self, app: Any, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 0}

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        failure: BaseException | None = None
        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:  # noqa: BLE001  (already answered with a 500 body; log one line, not a traceback)
            failure = exc
            if debug_enabled():
                traceback.print_exc()
        finally:
            line = request_log_line(scope, status["code"], time.perf_counter() - started)
            if self.metrics is not None:
                # Known paths only: a scanner's random URLs must not grow the label set without end.
                known = scope["path"] in KNOWN_PATHS
                self.metrics.request(scope["path"] if known else "other", status["code"] or 500)
            if failure is not None:
                line += " | error: " + one_line(f"{type(failure).__name__}: {failure}", 500)
            ui.info(line)


MAX_LOGGED_PATH = 200  # characters of a request path in the log


def request_log_line(scope: dict[str, Any], status: int, seconds: float) -> str:
    note = scope.get("state", {}).get("edgellm", {})
    parts = [f"{one_line(str(scope['method']), 16)} {one_line(scope['path'], MAX_LOGGED_PATH)} {status or '-'}"]
    if "tokens" in note:
        parts.append(f"{note['tokens']} tokens")
        if note.get("tps"):
            parts.append(f"{note['tps']:.1f} tok/s")
    parts.append(f"{seconds:.2f}s")
    if note.get("note"):
        parts.append(one_line(note["note"], 500))
    if note.get("disconnected"):
        parts.append("client disconnected: generation stopped")
    return " | ".join(parts)


