"""Issue 30, item 2: what a client can send an `edgellm worker` must not take it down, hold its
memory or lock other clients out. Each case against a real worker process, with the bytes a
hostile client would send (the RPC wire format: u8 command, u64 little-endian size, payload).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import cli_env, run_cli
from test_rpc import CHOOSING_GRAMMAR, MAIN_BUDGET, RUN_ARGS, Worker, grammar_file, rpc_arg, workers  # noqa: F401  (workers: a fixture, used by name)

from edgellm.device import workers as rpc
from edgellm.errors import WorkerError

MiB = 1024**2
OFFER = 64 * MiB  # test_rpc.WORKER_MEM
HELLO = struct.pack("<BQ", rpc.CMD_HELLO, rpc.CONN_CAPS_SIZE) + bytes(rpc.CONN_CAPS_SIZE)
SET_TENSOR, GRAPH_COMPUTE = 6, 10
ALLOC_BUFFER, BUFFER_GET_BASE, INIT_TENSOR = 0, 3, 12


def started(*args: str) -> Worker:
    worker = Worker(*args)
    worker.wait_listening()
    return worker


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def say_hello(worker: Worker) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", worker.port), timeout=10)
    sock.sendall(HELLO)
    reply = receive(sock, 8 + 4 + rpc.CONN_CAPS_SIZE)
    assert tuple(reply[8:11]) == rpc.PROTOCOL_VERSION
    return sock


def call(sock: socket.socket, command: int, payload: bytes) -> bytes:
    sock.sendall(struct.pack("<BQ", command, len(payload)) + payload)
    return receive(sock, struct.unpack("<Q", receive(sock, 8))[0])


def seconds_until_closed(sock: socket.socket, within: float) -> float | None:
    """How long until the worker closed this connection; None if it did not within `within` s."""
    start = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def tree_rss(pid: int) -> int:
    """The worker's memory: its own process and its children's (llama.cpp's server)."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def stderr_of(worker: Worker) -> str:
    worker.stop()
    assert worker.process.stderr is not None
    return worker.process.stderr.read().decode()


def assert_serves(worker: Worker) -> None:
    info = rpc.probe(rpc.parse_endpoint(worker.endpoint))
    assert info.version == rpc.PROTOCOL_VERSION and info.free_bytes == OFFER


def hit_with_a_huge_length(worker: Worker, command: int, size: int) -> None:
    sock = say_hello(worker)
    sock.sendall(struct.pack("<BQ", command, size))
    assert seconds_until_closed(sock, 5) is not None, "the worker kept the connection open"
    sock.close()


def hit_with_an_assert(worker: Worker) -> None:
    """A tensor placed outside its buffer: llama.cpp's server checks it with GGML_ASSERT, which
    aborts the process. Through the relay: llama.cpp's server is started again."""
    sock = say_hello(worker)
    remote, _ = struct.unpack("<QQ", call(sock, ALLOC_BUFFER, struct.pack("<IQ", 0, 4096)))
    base = struct.unpack("<Q", call(sock, BUFFER_GET_BASE, struct.pack("<Q", remote)))[0]
    # struct rpc_tensor (ggml-rpc.cpp): id, type, buffer, ne[4], nb[4], op, op_params[16], flags,
    # src[10], view_src, view_offs, data, name[64], use_count: 296 bytes.
    tensor = struct.pack("<QIQ4I4II16ii10QQQQ64si", 1, 0, remote, 16, 1, 1, 1, 4, 64, 64, 64, 0, *[0] * 16, 0,
                         *[0] * 10, 0, 0, base + MiB, b"", 0)
    sock.sendall(struct.pack("<BQ", INIT_TENSOR, len(tensor)) + tensor)
    assert seconds_until_closed(sock, 10) is not None
    sock.close()


@pytest.mark.parametrize(("command", "size", "name"), [
    (SET_TENSOR, 2**63, "SET_TENSOR"), (SET_TENSOR, 2**64 - 1, "SET_TENSOR"),
    (GRAPH_COMPUTE, 2**63, "GRAPH_COMPUTE"), (GRAPH_COMPUTE, 2**64 - 1, "GRAPH_COMPUTE"),
])
def test_a_huge_length_prefix_is_refused_and_the_worker_stays(command: int, size: int, name: str) -> None:
    # Before: llama.cpp's recv_msg resized a vector to `size`; std::length_error, uncaught, ended
    # the worker with a C++ backtrace.
    worker = started()
    try:
        hit_with_a_huge_length(worker, command, size)
        time.sleep(0.5)
        assert worker.process.poll() is None, "the worker died"
        assert_serves(worker)
    finally:
        err = stderr_of(worker)
    assert "refused 127.0.0.1:" in err and f"declared {size} bytes for {name}, more than the 64.00 MiB offered" in err, err
    assert "terminate called" not in err and "Traceback" not in err


def test_a_declared_size_beyond_the_offer_is_refused_before_any_memory_is_taken() -> None:
    # Before: 512 MiB declared and no data sent made the worker commit 512 MiB while it waited.
    worker = started()
    try:
        before = tree_rss(worker.process.pid)
        sock = say_hello(worker)
        sock.sendall(struct.pack("<BQ", SET_TENSOR, 512 * MiB))
        peak, closed_after = before, None
        deadline = time.monotonic() + 3
        sock.settimeout(0.1)
        while time.monotonic() < deadline and closed_after is None:
            peak = max(peak, tree_rss(worker.process.pid))
            try:
                if sock.recv(16) == b"":
                    closed_after = 3 - (deadline - time.monotonic())
            except TimeoutError:
                pass
        assert closed_after is not None, "the worker waited for the 512 MiB"
        assert peak - before < 64 * MiB, f"the worker's memory grew by {(peak - before) // MiB} MiB"
        assert_serves(worker)
    finally:
        err = stderr_of(worker)
    assert "declared 536870912 bytes for SET_TENSOR, more than the 64.00 MiB offered" in err, err


def test_an_idle_client_is_dropped_and_another_is_told_it_is_busy_meanwhile() -> None:
    # Before: a client that said HELLO and went quiet held the worker forever; the next waited.
    worker = started("--idle-timeout", "2")
    try:
        idle = say_hello(worker)
        since = time.monotonic()
        asked = time.monotonic()
        with pytest.raises(WorkerError, match=rf"worker {worker.endpoint} is busy: serving another client for \d+ s"):
            rpc.probe(rpc.parse_endpoint(worker.endpoint))
        assert time.monotonic() - asked < 3, "the busy answer should come at once, not after the probe's timeout"
        assert seconds_until_closed(idle, 10) is not None, "the idle client was not dropped"
        assert 1.5 < time.monotonic() - since < 6
        assert_serves(worker)  # the next client is served
    finally:
        err = stderr_of(worker)
    assert "turned away 127.0.0.1:" in err and "busy with another client" in err, err
    assert "dropped 127.0.0.1:" in err and "idle for 2 s" in err, err


def test_a_client_that_stops_part_way_through_a_message_is_dropped() -> None:
    # 32 MiB declared (within the offer: llama.cpp takes it) and 1 KiB sent: llama.cpp would wait for the rest forever.
    worker = started("--idle-timeout", "2")
    try:
        sock = say_hello(worker)
        sock.sendall(struct.pack("<BQ", SET_TENSOR, 32 * MiB) + bytes(1024))
        waited = seconds_until_closed(sock, 10)
        assert waited is not None and 1.5 < waited < 6, waited
        assert_serves(worker)
    finally:
        err = stderr_of(worker)
    assert "stopped part-way through a SET_TENSOR message" in err, err


def test_a_connection_that_never_finishes_its_hello_holds_nothing() -> None:
    # A port scanner, or a client that sends one byte: the next client is served at once.
    worker = started()
    try:
        lingering = socket.create_connection(("127.0.0.1", worker.port), timeout=10)
        lingering.sendall(HELLO[:3])
        time.sleep(0.2)
        asked = time.monotonic()
        assert_serves(worker)
        assert time.monotonic() - asked < 2
        lingering.close()
    finally:
        worker.stop()


def test_a_request_llama_cpp_aborts_on_restarts_its_server_not_the_worker() -> None:
    # Before: GGML_ASSERT in llama.cpp's server ended the worker ("error: the worker stopped").
    worker = started()
    try:
        hit_with_an_assert(worker)
        assert worker.process.poll() is None, "the worker died"
        assert_serves(worker)
    finally:
        err = stderr_of(worker)
    assert "llama.cpp's RPC server stopped (GGML_ASSERT(" in err and "starting it again" in err, err


def test_a_worker_killed_leaves_no_process_behind() -> None:
    worker = started()
    try:
        children = psutil.Process(worker.process.pid).children(recursive=True)
        assert children, "llama.cpp's server runs in a child process"
    finally:
        worker.stop()  # SIGKILL: no chance to clean up
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {alive}"


def test_workers_hit_by_every_case_still_serve_a_split_run(mid_model: Path, tmp_path: Path, workers: list[Worker]) -> None:  # noqa: F811  (the fixture)
    hit_with_a_huge_length(workers[0], SET_TENSOR, 2**63)
    hit_with_a_huge_length(workers[1], GRAPH_COMPUTE, 2**64 - 1)
    hit_with_a_huge_length(workers[0], SET_TENSOR, 512 * MiB)
    hit_with_an_assert(workers[1])
    grammar = grammar_file(tmp_path, CHOOSING_GRAMMAR)
    split = run_cli("run", "-m", str(mid_model), "hello", "--grammar", grammar, *RUN_ARGS,
                    "--mem-budget", MAIN_BUDGET, "--rpc", rpc_arg(workers))
    assert split.returncode == 0, split.stderr.decode()
    assert len(split.stdout.strip()) >= 30


IDLE_MAIN_SCRIPT = """
import sys, time
from edgellm.runtime import engine as runtime
from edgellm import loader as session
from edgellm.device.workers import parse_endpoints
from edgellm.units import parse_size

model, budget, workers = sys.argv[1:4]
prepared = session.prepare(model, session.PlanOptions(ctx=1024, mem_budget=parse_size(budget), rpc=parse_endpoints(workers)), loading=True)
llm = runtime.Engine(prepared.model, prepared.plan).llm
llm.eval(llm.tokenize(b"hello"))
time.sleep(8)  # serve between requests, chat while its user reads
llm.eval(llm.tokenize(b" again"))
print("answered after idling")
"""


def test_a_main_board_that_idles_keeps_its_workers(mid_model: Path) -> None:
    # The workers drop clients quiet for 3 s; the main board says something every second.
    pair = [started("--idle-timeout", "3"), started("--idle-timeout", "3")]
    try:
        result = subprocess.run([sys.executable, "-c", IDLE_MAIN_SCRIPT, str(mid_model), MAIN_BUDGET, rpc_arg(pair)],
                                capture_output=True, env=cli_env(EDGELLM_RPC_HEARTBEAT_S="1"), timeout=120, check=False)
    finally:
        errs = [stderr_of(worker) for worker in pair]
    assert result.returncode == 0, result.stderr.decode()[-2000:] + "".join(errs)
    assert b"answered after idling" in result.stdout
    assert not any("dropped" in err for err in errs), errs
