"""The worker's second process: llama.cpp's RPC server in a child (`python -m
edgellm.worker.backend`) on a private loopback port, started again if it dies; edgellm.worker.host
relays each client to it through edgellm.worker.relay."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgellm.device.sysfs import format_cpu_list
from edgellm.device.workers import PROTOCOL_VERSION, Endpoint, let_idle_threads_sleep
from edgellm.errors import EdgeLLMError, WorkerError
from edgellm.units import format_size
from edgellm.worker.relay import IDLE_S

BACKEND_READY_S = 120.0  # importing llama_cpp from an SD card
BACKEND_EXIT_CANNOT_LISTEN = 3
MAX_START_ATTEMPTS = 3


@dataclass
class WorkerPlan:
    """What `edgellm worker` offers and where: decided by edgellm.worker.host.plan_worker."""

    endpoint: Endpoint
    offer_bytes: int
    threads: int
    cores: list[int]
    profile: str
    warnings: list[str]
    idle_s: float = IDLE_S

    def listening_line(self) -> str:
        version = ".".join(map(str, PROTOCOL_VERSION))
        return (f"worker listening on {self.endpoint}: offers {format_size(self.offer_bytes)}, {self.threads} threads on "
                f"CPUs {format_cpu_list(self.cores)} ({self.profile}), RPC protocol v{version}, one client at a time "
                f"(idle ones dropped after {self.idle_s:g} s); stop with Ctrl-C")


class Backend:
    """llama.cpp's RPC server in a child process (`python -m edgellm.worker.backend`) on a private loopback
    port, started again whenever it ends while the worker runs."""

    def __init__(self, plan: WorkerPlan, warn: Callable[[str], None]) -> None:
        self.plan = plan
        self.warn = warn
        self.verbose = bool(os.environ.get("EDGELLM_LLAMA_LOG"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.stopping = False
        self.failure: EdgeLLMError | None = None
        self.on_failure: Callable[[], None] = lambda: None
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._reader: threading.Thread | None = None
        self._ready_at = 0.0

    def address(self) -> tuple[str, int]:
        """Where llama.cpp's server listens now (waits while it is being started again)."""
        self.ready.wait(BACKEND_READY_S)
        return "127.0.0.1", self.port

    def start(self) -> None:
        """Start the child and wait until its server listens; then watch it. A one-line error
        (the child's own, when it printed one) if it cannot start."""
        self._launch()
        threading.Thread(target=self._watch, name="rpc-backend-watch", daemon=True).start()

    def _launch(self) -> None:
        for _ in range(MAX_START_ATTEMPTS):
            self.ready.clear()
            self.port = _free_loopback_port()
            self._stderr.clear()
            arguments = json.dumps({"port": self.port, "offer": self.plan.offer_bytes, "threads": self.plan.threads,
                                    "cores": self.plan.cores, "quiet": not self.verbose})
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgellm.worker.backend", arguments],
                stdin=subprocess.PIPE, stdout=2 if self.verbose else subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C is for this process; the child ends when its stdin does
            )
            self._reader = threading.Thread(target=self._read_stderr, args=(self.process,), name="rpc-backend-log", daemon=True)
            self._reader.start()
            deadline = time.monotonic() + BACKEND_READY_S
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                except OSError:
                    time.sleep(0.05)
                    continue
                self._ready_at = time.monotonic()
                self.ready.set()
                return
            if self.process.poll() is None:
                self._end_process()
                raise WorkerError(f"llama.cpp's RPC server did not start within {BACKEND_READY_S:g} s")
            self._ended()
            if self.process.returncode != BACKEND_EXIT_CANNOT_LISTEN:
                break  # its private port was taken meanwhile: try another; otherwise it will not start
        raise WorkerError(f"llama.cpp's RPC server did not start: {self._reason()}",
                          hint=self._said("hint: ") or "run with EDGELLM_LLAMA_LOG=1 to see llama.cpp's log")

    def _watch(self) -> None:
        while True:
            process = self.process
            assert process is not None
            process.wait()
            if self.stopping:
                return
            self.ready.clear()
            self._ended()
            self.warn(f"llama.cpp's RPC server stopped ({self._reason()}); starting it again "
                      "(the client it served must connect again)")
            if time.monotonic() - self._ready_at < 5.0:
                time.sleep(1.0)  # a server that dies at once is not restarted in a tight loop
            try:
                self._launch()
            except EdgeLLMError as exc:
                if not self.stopping:
                    self.failure = exc
                    self.on_failure()
                return

    def _ended(self) -> None:
        """After the child ended: its last lines read (its stderr ends with it)."""
        assert self.process is not None
        self.process.wait()
        if self._reader is not None:
            self._reader.join(2.0)

    def _read_stderr(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if self.verbose:
                print(line, file=sys.stderr, flush=True)
            if line.strip():
                self._stderr.append(line.strip())

    def _reason(self) -> str:
        """Why the child ended, in a few words: its own error line, llama.cpp's, or the signal."""
        process = self.process
        code = process.returncode if process is not None else None
        said = self._said("error: ")
        said = said or next((line for line in reversed(self._stderr) if "what():" in line or "terminate called" in line), None)
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                signal_name = signal.Signals(-code).name
                return f"{signal_name}: {said}" if said else signal_name
        if said:
            return said[:300]
        return f"exit code {code}" if code is not None else "unknown"

    def _said(self, prefix: str) -> str | None:
        """The child's last line starting with `prefix` (its one-line error and hint), without it."""
        return next((line.removeprefix(prefix) for line in reversed(self._stderr) if line.startswith(prefix)), None)

    def _end_process(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()  # the child's cue to leave
        try:
            process.wait(2.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        self.stopping = True
        self._end_process()



def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])



def _serve_backend(arguments: dict[str, Any]) -> None:
    """The child: llama.cpp's RPC server on 127.0.0.1:PORT until the parent closes our stdin."""

    def leave_with_parent() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=leave_with_parent, name="rpc-backend-parent", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    let_idle_threads_sleep()
    endpoint = Endpoint("127.0.0.1", int(arguments["port"]))
    try:
        from edgellm.runtime import rpc  # noqa: PLC0415  (loads llama_cpp)
        from edgellm.runtime.native import pin_to_cores  # noqa: PLC0415  (loads llama_cpp)

        rpc.require()
        pin_to_cores([int(core) for core in arguments["cores"]])
        rpc.serve(endpoint, offer_bytes=int(arguments["offer"]), threads=int(arguments["threads"]), quiet=bool(arguments["quiet"]))
    except EdgeLLMError as exc:
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr, flush=True)
        os._exit(1)
    print(f"error: llama.cpp's RPC server could not listen on {endpoint}", file=sys.stderr, flush=True)
    os._exit(BACKEND_EXIT_CANNOT_LISTEN)


if __name__ == "__main__":
    _serve_backend(json.loads(sys.argv[1]))
