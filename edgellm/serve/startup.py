"""Binding, the refusal to expose a model without a key, the key file, the warm-up, and running
uvicorn until a signal."""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Callable
from typing import Any

from edgellm import files
from edgellm.device.workers import is_loopback
from edgellm.errors import UsageError
from edgellm.runtime.protocol import GenerationEngine
from edgellm.serve import guards
from edgellm.serve.app import SHUTDOWN_GRACE_SECONDS, Server
from edgellm.serve.config import ServerConfig
from edgellm.serve.sdnotify import Notifier


def allowed_hosts(bind_host: str, extra: list[str]) -> list[str] | None:
    """The Host values to answer: on loopback, loopback names plus `extra`; elsewhere any (None),
    unless `extra` names some (then loopback names plus those)."""
    if is_loopback(bind_host) or extra:
        return list(extra)
    return None


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to expose the model beyond this machine without a key (or an explicit --insecure)."""
    if is_loopback(host) or api_key or insecure:
        return
    raise UsageError(
        f"refusing to listen on {host} without an API key: anyone who can reach it could use the model",
        hint=f"edgellm serve --host {host} --api-key \"$(openssl rand -hex 16)\"  (or add --insecure on a trusted network)",
    )


def pulls_allowed(host: str, api_key: str | None, allow_pull: bool) -> bool:
    """Whether clients may pull and delete models: on loopback, or with a key (a client that has
    it may), or when the owner allowed it (--allow-pull) on a trusted network."""
    return is_loopback(host) or bool(api_key) or allow_pull


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen before the model loads, so a taken port fails fast with a clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, IndexError) as exc:
        raise UsageError(f"cannot listen on {host}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint=f"pick another port: edgellm serve --port {port + 1 if port else 8080}",
        ) from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


# An API key file may be at most this long (a key is a line; this is not the place for a PEM).
MAX_KEY_FILE_BYTES = 4096


def read_api_key_file(path: str) -> str:
    """The key in `path` (its first line), refusing a file others can read or an empty one.

    systemd's LoadCredential= hands the service a 0400 copy; a key file written by hand must be
    chmod 600 (ssh refuses a world-readable private key for the same reason).
    """
    try:
        fd = files.open_regular_file(path)
    except FileNotFoundError:
        raise UsageError(f"--api-key-file {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"--api-key-file {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o077:
            raise UsageError(f"--api-key-file {path} can be read by others (mode {stat.S_IMODE(mode):04o})",
                             hint=f"chmod 600 {path}")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise UsageError(f"--api-key-file {path}: more than {MAX_KEY_FILE_BYTES} bytes; it should hold one key on one line")
    lines = data.decode("utf-8", "replace").splitlines()
    key = lines[0].strip() if lines else ""
    if not key or not key.isprintable() or any(c.isspace() for c in key):
        raise UsageError(f"--api-key-file {path}: the first line must be the key (printable, no spaces)")
    return key


def warm_up(engine: GenerationEngine) -> None:
    """One real decode and sample before the service says it is ready: a model that loads but
    cannot generate (a broken build, a bad file) fails here, not on the first user's request."""
    from edgellm.runtime.types import SamplingParams  # noqa: PLC0415

    for _ in engine.generate_from_prompt("Hello", SamplingParams(max_tokens=1, seed=0)):
        pass
    engine.forget_cache()


def serve(engine: GenerationEngine | None, config: ServerConfig, sock: socket.socket, *, notifier: Notifier | None = None,
          load_engine: Callable[[], GenerationEngine] | None = None, **models: Any) -> list[int]:
    """Serve until SIGTERM or Ctrl-C; uvicorn drains in-flight requests, then we cancel the rest.
    `models`: Server's candidates, budget, keep_alive_s and keep_alive_given.

    Returns the signals that stopped it.
    """
    import uvicorn  # noqa: PLC0415

    edge = Server(engine, config, notifier=notifier, load_engine=load_engine, **models)
    edge.ready_status = f"{edge.ready_status} at {url_of(sock)}"

    class SignalAwareServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            edge.begin_shutdown()

    uv_config = uvicorn.Config(
        edge.app(),
        log_level="warning",
        access_log=False,  # RequestLog writes one line per request instead
        lifespan="on",
        # A backstop: begin_shutdown cancels generation after the grace period, ending responses.
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS + 10,
        # No connection limit: uvicorn counts silent connections against it, so 63 idle sockets
        # shut everyone out. Connections that send no request head in time are closed instead,
        # and the generation queue bounds the real work.
        limit_concurrency=None,
        http=guards.head_deadline_protocol(),
    )
    server = SignalAwareServer(uv_config)
    received: list[int] = []
    # uvicorn re-raises the signal that stopped it once it is done; catch that here so that a
    # SIGTERM ends with exit code 0 after a clean shutdown instead of killing the process.
    previous = {sig: signal.signal(sig, lambda number, _frame: received.append(number)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received
