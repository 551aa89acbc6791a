"""`edgellm serve` under systemd: a test plays systemd's side of sd_notify (a unix datagram socket
in NOTIFY_SOCKET, WATCHDOG_USEC) against the real server process and a tiny real model; the
idle unload frees memory and the next request (the real openai client) loads the model again."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest
from conftest import run_cli
from test_serve import THINK_GRAMMAR, ServerProcess

from edgellm.serve.lifecycle import heartbeat_fresh, tick_seconds
from edgellm.serve.sdnotify import Notifier, status_line

WATCHDOG_USEC = "2000000"  # 2 s: serve pings every 0.5 s while its loops are alive
# `edgellm serve` with the test-only hook that hangs a decode (EDGELLM_TEST_STALL_DECODE_AFTER).
STALLING_SERVE = [sys.executable, str(Path(__file__).with_name("stalling_serve.py"))]


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: every datagram, with the time it came."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": WATCHDOG_USEC}

    def lines(self) -> list[str]:
        with self._lock:
            return [line for _, message in self.messages for line in message.split("\n")]

    def times_of(self, assignment: str) -> list[float]:
        with self._lock:
            return [at for at, message in self.messages if assignment in message.split("\n")]

    def wait_for(self, assignment: str, count: int = 1, deadline: float = 120) -> None:
        end = time.monotonic() + deadline
        while len(self.times_of(assignment)) < count:
            if time.monotonic() > end:
                pytest.fail(f"{count}x {assignment} not received; got {self.lines()}")
            time.sleep(0.05)

    def wait_for_match(self, pattern: str, deadline: float = 30) -> str:
        end = time.monotonic() + deadline
        while True:
            found = [line for line in self.lines() if re.fullmatch(pattern, line)]
            if found:
                return found[0]
            if time.monotonic() > end:
                pytest.fail(f"no {pattern!r} received; got {self.lines()}")
            time.sleep(0.05)

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture()
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path)
    yield fake
    fake.close()


FORCED = "Thinking it over.</think>The answer is 42."  # what THINK_GRAMMAR lets the model write


def _complete(server: ServerProcess) -> str:
    reply = server.client(api_key="k").completions.create(model=server.model_id, prompt="Hi", max_tokens=8, extra_body={"grammar": THINK_GRAMMAR})
    text = reply.choices[0].text
    assert text and FORCED.startswith(text), text
    return text


def test_ready_then_watchdog_pings_then_stopping_in_order(tiny_q4km: Path, tmp_path: Path, systemd: FakeSystemd) -> None:
    server = ServerProcess(tiny_q4km, "--api-key", "k", "--ctx", "512", home=tmp_path / "home", env=systemd.env())
    try:
        systemd.wait_for("READY=1")
        systemd.wait_for("WATCHDOG=1", count=4)
        _complete(server)
        systemd.wait_for_match(r"STATUS=0 of \d slots busy, 0 queued, 1 requests served")
        systemd.wait_for("WATCHDOG=1", count=6)
        assert server.stop() == 0
    finally:
        server.stop()
    lines = systemd.lines()
    ready, stopping = lines.index("READY=1"), lines.index("STOPPING=1")
    watchdogs = [i for i, line in enumerate(lines) if line == "WATCHDOG=1"]
    # loading status first; READY only once loaded and warmed up; pings between; STOPPING last
    assert lines[0] == "STATUS=loading tiny-Q4_K_M"
    assert ready < watchdogs[0] and watchdogs[-1] < stopping
    assert any(line.startswith("STATUS=serving tiny-Q4_K_M at http://127.0.0.1:") for line in lines)
    statuses = [line for line in lines[ready:stopping] if line.startswith("STATUS=")]
    assert any(re.fullmatch(r"STATUS=0 of \d slots busy, 0 queued, 0 requests served", line) for line in statuses), statuses
    assert re.fullmatch(r"STATUS=0 of \d slots busy, 0 queued, 1 requests served", statuses[-1]), statuses
    # never a gap systemd would count as a hang (WATCHDOG_USEC), a request served in between
    times = systemd.times_of("WATCHDOG=1")
    assert max(b - a for a, b in itertools.pairwise(times)) < 2.0


def test_a_stalled_decode_stops_the_watchdog_pings(tiny_q4km: Path, tmp_path: Path, systemd: FakeSystemd) -> None:
    # The first decode after the warm-up never returns (a test-only hook): the generation loop's
    # heartbeat stops, so the pings stop, and systemd would restart the service.
    env = {**systemd.env(), "EDGELLM_TEST_STALL_DECODE_AFTER": "1"}
    server = ServerProcess(tiny_q4km, "--api-key", "k", "--ctx", "512", home=tmp_path / "home", env=env, entry=STALLING_SERVE)
    try:
        systemd.wait_for("WATCHDOG=1", count=3)
        threading.Thread(target=lambda: _try_complete(server), daemon=True).start()
        time.sleep(2.0)  # the request reaches the hanging decode, and the heartbeat goes stale
        stalled_at = time.monotonic()
        time.sleep(4.0)  # two watchdog periods
        assert server.process.poll() is None  # alive, but hung
        pings_after = [t for t in systemd.times_of("WATCHDOG=1") if t > stalled_at]
        assert pings_after == [], f"{len(pings_after)} pings while the decode hung"
    finally:
        server.process.kill()
        server.process.wait()


def _try_complete(server: ServerProcess) -> None:
    with contextlib.suppress(openai.OpenAIError):  # the server is killed under it
        _complete(server)


def test_no_ready_while_the_warm_up_decode_has_not_succeeded(tiny_q4km: Path, tmp_path: Path, systemd: FakeSystemd) -> None:
    env = {**systemd.env(), "EDGELLM_TEST_STALL_DECODE_AFTER": "0"}  # the warm-up itself hangs
    server = ServerProcess(tiny_q4km, "--ctx", "512", home=tmp_path / "home", env=env, wait=False, entry=STALLING_SERVE)
    try:
        systemd.wait_for("STATUS=loading tiny-Q4_K_M")
        time.sleep(4.0)
        assert server.process.poll() is None
        assert "READY=1" not in systemd.lines() and "WATCHDOG=1" not in systemd.lines()
    finally:
        server.process.kill()
        server.process.wait()


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _health(server: ServerProcess) -> dict[str, object]:
    request = urllib.request.Request(server.root + "/health", headers={"Authorization": "Bearer k"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def _metric(server: ServerProcess, name: str) -> float:
    request = urllib.request.Request(server.root + "/metrics", headers={"Authorization": "Bearer k"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_idle_unload_frees_the_memory_and_the_next_request_is_served(mid_model: Path, tmp_path: Path) -> None:
    server = ServerProcess(mid_model, "--api-key", "k", "--ctx", "2048", "--idle-unload", "2s", home=tmp_path / "home")
    try:
        _complete(server)
        loaded_rss = _rss(server.process.pid)
        assert _health(server)["model_loaded"] is True
        server.wait_for_line(r"model unloaded", deadline=30)
        unloaded_rss = _rss(server.process.pid)
        weights = mid_model.stat().st_size
        assert loaded_rss - unloaded_rss > weights * 0.8, (loaded_rss, unloaded_rss, weights)
        assert _health(server)["model_loaded"] is False
        assert _metric(server, "edgellm_model_loaded") == 0 and _metric(server, "edgellm_model_unloads_total") == 1
        # The next request loads it again, and is answered.
        _complete(server)
        assert _health(server)["model_loaded"] is True
        assert _metric(server, "edgellm_model_reloads_total") == 1
        server.wait_for_line(r"model loaded again in")
    finally:
        assert server.stop() == 0


# --- the protocol's pure parts ----------------------------------------------------------------


def test_notifier_does_nothing_outside_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_s is None and notifier.ready("x") is False


@pytest.mark.parametrize("value, address", [
    ("/run/systemd/notify", "/run/systemd/notify"),
    ("@/org/freedesktop/systemd1/notify/123", b"\x00/org/freedesktop/systemd1/notify/123"),
    ("relative/path", None), ("vsock:2:1234", None), ("/" + "x" * 200, None), ("/a\x00b", None),
])
def test_notify_socket_addresses(value: str, address: object) -> None:
    assert Notifier({"NOTIFY_SOCKET": value}).address == address


@pytest.mark.parametrize("env, seconds", [
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "soon"}, None), ({"WATCHDOG_USEC": "0"}, None), ({}, None),
])
def test_watchdog_period_is_read_for_this_process_only(env: dict[str, str], seconds: float | None) -> None:
    assert Notifier(env).watchdog_s == seconds


def test_a_missing_systemd_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.watchdog() is False and "cannot notify systemd" in (notifier.failed or "")


def test_status_is_one_bounded_line_and_pings_come_twice_a_period() -> None:
    assert status_line("a\nb   c") == "STATUS=a b c" and len(status_line("x" * 1000)) == len("STATUS=") + 200
    assert tick_seconds(Notifier({"WATCHDOG_USEC": "120000000"})) == 1.0
    assert tick_seconds(Notifier({"WATCHDOG_USEC": "1000000"})) == 0.25
    # A step may take nearly the whole period (a long prompt batch on a Pi), less two ticks.
    assert heartbeat_fresh(heartbeat=100.0, watchdog_s=120.0, now=217.0)
    assert not heartbeat_fresh(heartbeat=100.0, watchdog_s=120.0, now=218.5)
    assert heartbeat_fresh(heartbeat=100.0, watchdog_s=1.0, now=100.4)
    assert not heartbeat_fresh(heartbeat=100.0, watchdog_s=1.0, now=100.6)


# --- the API key from a file --------------------------------------------------------------------


@pytest.mark.parametrize("mode, content, message", [
    (0o644, "secret\n", "can be read by others (mode 0644)"),
    (0o600, "\n", "the first line must be the key"),
    (0o600, "two words\n", "the first line must be the key"),
])
def test_a_bad_api_key_file_is_one_line_and_exit_2(tmp_path: Path, tiny_q4km: Path, mode: int, content: str, message: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(content)
    key_file.chmod(mode)
    result = run_cli("serve", "-m", str(tiny_q4km), "--api-key-file", str(key_file))
    assert result.returncode == 2 and message in result.stderr.decode() and b"Traceback" not in result.stderr
    assert len(result.stderr.decode().strip().splitlines()) <= 2  # the error, and perhaps its hint


def test_api_key_file_missing_or_given_with_a_key(tmp_path: Path, tiny_q4km: Path) -> None:
    result = run_cli("serve", "-m", str(tiny_q4km), "--api-key-file", str(tmp_path / "none"))
    assert result.returncode == 2 and b"no such file" in result.stderr
    (tmp_path / "key").write_text("k\n")
    (tmp_path / "key").chmod(0o600)
    result = run_cli("serve", "-m", str(tiny_q4km), "--api-key-file", str(tmp_path / "key"), "--api-key", "x")
    assert result.returncode == 2 and b"not both" in result.stderr


def test_the_key_in_the_file_is_the_one_required(tmp_path: Path, tiny_q4km: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-a-file\n")
    key_file.chmod(0o600)
    server = ServerProcess(tiny_q4km, "--api-key-file", str(key_file), "--ctx", "512", home=tmp_path / "home")
    try:
        with pytest.raises(openai.AuthenticationError):
            server.client(api_key="wrong").models.list()
        assert server.client(api_key="sk-from-a-file").models.list().data[0].id == server.model_id
        assert "sk-from-a-file" not in server.stderr
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("value, message", [
    ("soon", "--idle-unload 'soon': expected e.g. 30m, 90s, 1h or 1h30m"),
    ("0", "--idle-unload must be positive"),
    ("9" * 400, "--idle-unload inf: expected a positive, finite duration"),
])
def test_a_bad_idle_unload_is_refused_before_anything_loads(tiny_q4km: Path, value: str, message: str) -> None:
    result = run_cli("serve", "-m", str(tiny_q4km), "--idle-unload", value)
    assert result.returncode == 2 and message in result.stderr.decode() and b"Traceback" not in result.stderr


def test_a_notify_socket_that_is_not_there_is_one_warning_and_serve_goes_on(tiny_q4km: Path, tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "junk"}
    server = ServerProcess(tiny_q4km, "--api-key", "k", "--ctx", "512", home=tmp_path / "home", env=env)
    try:
        _complete(server)
        assert "warning: cannot notify systemd at" in server.stderr and "Traceback" not in server.stderr
    finally:
        assert server.stop() == 0
