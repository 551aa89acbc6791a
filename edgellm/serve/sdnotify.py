"""systemd's service notification protocol (sd_notify), without a dependency: one datagram.

systemd starts a `Type=notify` service with NOTIFY_SOCKET set to a unix datagram socket (a
path, or "@name" in the abstract namespace) and, with `WatchdogSec=`, WATCHDOG_USEC. The
service sends newline-separated assignments: READY=1 once it serves, WATCHDOG=1 at least every
WATCHDOG_USEC, STATUS=... for `systemctl status`, STOPPING=1 when it begins to stop. Outside
systemd (no NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping

# sockaddr_un's sun_path is 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH = 107
# A STATUS line longer than this is cut: systemctl shows one line, and a datagram has limits.
MAX_STATUS_CHARS = 200


class Notifier:
    """Sends notifications to systemd when it asked for them; never raises."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_seconds(env)
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self.failed: str | None = None  # why the last send failed (for a one-time warning)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.sendto(message, self.address)
            except OSError as exc:
                self.failed = f"cannot notify systemd at {self.address!r}: {exc.strerror or exc}"
                return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", status_line(status))

    def status(self, status: str) -> bool:
        return self.send(status_line(status))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", status_line(status))

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def status_line(text: str) -> str:
    flat = " ".join(text.split())
    return "STATUS=" + flat[:MAX_STATUS_CHARS]


def _socket_address(value: str) -> str | bytes | None:
    """NOTIFY_SOCKET as sendto() wants it, or None when unset or not a unix socket address."""
    if not value or len(value.encode()) > MAX_SOCKET_PATH or "\x00" in value:
        return None
    if value.startswith("@"):
        return b"\x00" + value[1:].encode()  # the abstract namespace
    if value.startswith("/"):
        return value
    return None  # systemd also knows vsock: addresses (VMs); not used on these boards


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog period systemd asked for, if it asked this process (WATCHDOG_PID)."""
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if 0 < usec < 2**63 else None
