"""Issue 16 against the real `edgellm serve`: hostile and careless requests, raw sockets, the openai client.

Each test reproduces one reported attack; the comment says what the 0.1 server did.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from test_serve import API_KEY, LONG, USER, ServerProcess, http

from edgellm.serve.guards import HEAD_TIMEOUT_S

JSON = {"Content-Type": "application/json"}
AUTH = {**JSON, "Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def model(tiny_8k: Path) -> Path:
    return tiny_8k


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(model, "--api-key", API_KEY, "--queue", "4", home=tmp_path_factory.mktemp("home"))
    yield process
    process.stop()


def post(server: ServerProcess, path: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http("POST", server.base_url + path, raw, AUTH if headers is None else headers)


def error_of(raw: bytes) -> dict[str, str]:
    return json.loads(raw)["error"]


def still_answers(server: ServerProcess) -> None:
    reply = server.client().chat.completions.create(model="", messages=USER, max_tokens=2, extra_body={"ignore_eos": True})
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.root.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


# --- 1. grammars that crashed the server (segfault) -------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER, "grammar": "root ::= ( "}, "grammar"),
        ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": []}}}}, "response_format"),
        ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"anyOf": []}}}}, "response_format"),
    ],
)
def test_bad_grammar_or_schema_is_400_and_the_server_lives(server: ServerProcess, body: dict[str, object], param: str) -> None:
    status, _, raw = post(server, "/chat/completions", body)
    assert status == 400, raw
    assert error_of(raw)["param"] == param and error_of(raw)["code"] == "invalid_grammar"
    still_answers(server)  # 0.1: one such request killed the process (exit 139)


def test_bad_grammar_on_completions_is_400(server: ServerProcess) -> None:
    status, _, raw = post(server, "/completions", {"prompt": "x", "grammar": "root ::= " + "(" * 5000 + '"a"' + ")" * 5000})
    assert status == 400 and "nested deeper" in error_of(raw)["message"]
    still_answers(server)


# --- 4. idle connections and slowloris ----------------------------------------------------------


def test_idle_connections_neither_shut_others_out_nor_stay_open(server: ServerProcess) -> None:
    # 0.1: 63 silent sockets made every request answer 503 (uvicorn's limit), and stayed open forever.
    idle = [socket.create_connection(address(server), timeout=30) for _ in range(70)]
    try:
        time.sleep(0.5)
        still_answers(server)
        status, _, _ = http("GET", server.root + "/health")
        assert status == 200
        deadline = time.monotonic() + HEAD_TIMEOUT_S + 15
        for conn in idle:
            conn.settimeout(max(deadline - time.monotonic(), 0.1))
            assert conn.recv(1024) == b""  # closed by the server, nothing sent
    finally:
        for conn in idle:
            conn.close()


def test_slowloris_connections_are_closed_with_408(server: ServerProcess) -> None:
    # Twenty connections trickle a request head a byte at a time and never finish it.
    slow = {socket.create_connection(address(server), timeout=30): b"" for _ in range(20)}
    trickle = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 500
    try:
        end = time.monotonic() + HEAD_TIMEOUT_S + 15
        sent = 0
        while any(not answer for answer in slow.values()) and time.monotonic() < end:
            readable, _, _ = select.select(list(slow), [], [], 0.2)
            for conn in readable:
                slow[conn] = slow[conn] or conn.recv(1024) or b"closed"
            for conn, answer in slow.items():
                if not answer:
                    try:
                        conn.sendall(trickle[sent : sent + 1])
                    except OSError:  # closed between select and send: the 408 may be lost to the reset
                        slow[conn] = b"reset"
            sent += 1
            if sent == 5:
                still_answers(server)  # others are served while they trickle
        # Every one was closed by the server, within the deadline (and told why, where it could read it).
        assert all(answer.startswith(b"HTTP/1.1 408") or answer == b"reset" for answer in slow.values()), set(slow.values())
        assert any(answer.startswith(b"HTTP/1.1 408") for answer in slow.values())
    finally:
        for conn in slow:
            conn.close()
    still_answers(server)


def test_kept_alive_connection_still_works(server: ServerProcess) -> None:
    # The head deadline re-arms after each response; a prompt second request on the same
    # connection is answered as before.
    with socket.create_connection(address(server), timeout=30) as conn:
        for _ in range(2):
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = b""
            while not response.endswith(b"}"):
                response += conn.recv(4096)
            assert response.startswith(b"HTTP/1.1 200")
            time.sleep(1)


# --- 6. cross-site requests and DNS rebinding ---------------------------------------------------


def test_text_plain_post_is_415(server: ServerProcess) -> None:
    # 0.1 accepted it: a web page could POST to the loopback server without a CORS preflight.
    status, _, raw = post(server, "/chat/completions", {"messages": USER}, {**AUTH, "Content-Type": "text/plain"})
    assert status == 415 and "Content-Type: application/json" in error_of(raw)["message"]
    status, _, _ = post(server, "/completions", {"prompt": "x"}, {"Authorization": AUTH["Authorization"]})
    assert status == 415


def test_foreign_host_is_403_on_loopback(server: ServerProcess) -> None:
    # DNS rebinding: evil.example resolves to 127.0.0.1, and the browser sends Host: evil.example.
    for path in ("/health", "/v1/models"):
        status, _, raw = http("GET", server.root + path, headers={**AUTH, "Host": "evil.example:8080"})
        assert status == 403 and error_of(raw)["code"] == "host_not_allowed"
        assert "--allow-host evil.example" in error_of(raw)["message"]
    for host in ("localhost:1234", "127.0.0.1", "[::1]:80", "app.localhost"):
        status, _, _ = http("GET", server.root + "/health", headers={"Host": host})
        assert status == 200, host


def test_allow_host_and_cors(model: Path, tmp_path: Path) -> None:
    target = ServerProcess(model, "--allow-host", "box.lan", "--cors", "http://localhost:3000", home=tmp_path)
    try:
        status, _, _ = http("GET", target.root + "/health", headers={"Host": "box.lan:8080"})
        assert status == 200
        status, _, _ = http("GET", target.root + "/health", headers={"Host": "other.lan"})
        assert status == 403
        status, headers, _ = http("OPTIONS", target.base_url + "/chat/completions", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert status == 200 and headers.get("access-control-allow-origin") == "http://localhost:3000"
        status, headers, _ = http("GET", target.base_url + "/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in {k.lower() for k in headers}
    finally:
        assert target.stop() == 0


def test_cors_is_off_by_default(server: ServerProcess) -> None:
    status, headers, _ = http("GET", server.base_url + "/models", headers={**AUTH, "Origin": "http://localhost:3000"})
    assert status == 200
    assert "access-control-allow-origin" not in {k.lower() for k in headers}


# --- 7. the queue bound ---------------------------------------------------------------------------


def test_queue_bound_holds_under_simultaneous_requests(model: Path, tmp_path: Path) -> None:
    # 0.1: with --queue 1 and 4 simultaneous requests all 4 were accepted (/health showed queued: 3).
    target = ServerProcess(model, "--queue", "1", "--parallel", "1", home=tmp_path)
    try:
        client = target.client(api_key="unused")
        with client.chat.completions.create(model="", messages=USER, max_tokens=LONG, stream=True,
                                            extra_body={"ignore_eos": True}) as running:
            next(iter(running))  # the slot is taken
            statuses: list[int] = []
            lock = threading.Lock()
            barrier = threading.Barrier(4)

            def ask() -> None:
                barrier.wait()
                try:
                    target.client(api_key="unused").chat.completions.create(model="", messages=USER, max_tokens=2, extra_body={"ignore_eos": True})
                    code = 200
                except openai.APIStatusError as exc:
                    code = exc.status_code
                with lock:
                    statuses.append(code)

            threads = [threading.Thread(target=ask) for _ in range(4)]
            for thread in threads:
                thread.start()
            end = time.monotonic() + 60
            while len(statuses) < 3 and time.monotonic() < end:
                time.sleep(0.05)
            assert sorted(statuses) == [503, 503, 503]
            status, _, raw = http("GET", target.root + "/health")
            assert json.loads(raw)["queued"] == 1
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(statuses) == [200, 503, 503, 503]  # the queued one ran once the stream closed
    finally:
        assert target.stop() == 0


# --- 8. cheap slot hogging --------------------------------------------------------------------------


def test_twenty_thousand_messages_are_refused_without_template_work(server: ServerProcess) -> None:
    # 0.1: a 680 KB body of 20,000 tiny messages held the worker 25 s before its 400.
    messages = [{"role": "user", "content": "hi"}] * 20_000
    status, _, raw = post(server, "/chat/completions", {"messages": messages})
    assert status == 400
    error = error_of(raw)
    assert error["code"] == "context_length_exceeded" and "20000 messages cannot fit" in error["message"]


def test_request_preparation_does_not_wait_for_the_slot(model: Path, tmp_path: Path) -> None:
    # Template, tokenizer and grammar work happen before a request queues: with the only slot
    # busy and no queue, a bad grammar is still told so (400), not "busy" (503).
    target = ServerProcess(model, "--queue", "0", "--parallel", "1", home=tmp_path)
    try:
        client = target.client(api_key="unused")
        with client.chat.completions.create(model="", messages=USER, max_tokens=LONG, stream=True,
                                            extra_body={"ignore_eos": True}) as running:
            next(iter(running))
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model="", messages=USER, extra_body={"grammar": "root ::= ("})
            too_long = [{"role": "user", "content": "word " * 9000}]
            with pytest.raises(openai.BadRequestError) as raised:
                client.chat.completions.create(model="", messages=too_long)
            assert raised.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    finally:
        assert target.stop() == 0


# --- 11. client errors that were 500s --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/completions", b'{"prompt": ""}', "prompt is empty"),  # 0.1: AssertionError, 500
        ("/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "unpaired UTF-16 surrogate"),  # UnicodeEncodeError
        ("/chat/completions", b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", "levels deep"),  # RecursionError
        ("/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "NaN is not a JSON number"),
        ("/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": true}', "max_tokens"),  # was taken as 1
        ("/completions", b'{"prompt": "x", "seed": 1.5}', "seed"),
    ],
)
def test_client_errors_are_400_not_500(server: ServerProcess, path: str, body: bytes, words: str) -> None:
    start = server.line_count()
    status, _, raw = post(server, path, body)
    assert status == 400, raw
    assert words in error_of(raw)["message"]
    line = server.wait_for_line(rf"POST /v1{path} 400", start)
    assert "error:" not in line and " -" not in line


def test_no_negative_token_counts_in_the_log(server: ServerProcess) -> None:
    # 0.1 logged "-812 tokens" for a prompt rejected as too long after an earlier long reply.
    server.client().chat.completions.create(model="", messages=USER, max_tokens=64, extra_body={"ignore_eos": True})
    start = server.line_count()
    status, _, _ = post(server, "/completions", {"prompt": "x", "grammar": "root ::= ("})
    assert status == 400
    line = server.wait_for_line(r"POST /v1/completions 400", start)
    assert " -" not in line


def test_client_leaving_mid_body_is_logged_as_499(server: ServerProcess) -> None:
    # 0.1 logged "500 | error: ClientDisconnect".
    start = server.line_count()
    with socket.create_connection(address(server), timeout=30) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {API_KEY}\r\nContent-Length: 1000\r\n\r\n".encode() + b'{"messages": [')
        time.sleep(0.3)
    line = server.wait_for_line(r"POST /v1/chat/completions", start)
    assert " 499 " in line and "error" not in line


# --- 12. /health ---------------------------------------------------------------------------------


def test_health_without_the_key_reveals_only_liveness(server: ServerProcess, model: Path) -> None:
    status, _, raw = http("GET", server.root + "/health")
    assert status == 200 and json.loads(raw) == {"status": "ok"}
    status, _, raw = http("GET", server.root + "/health", headers={"Authorization": f"Bearer {API_KEY}"})
    assert json.loads(raw)["model"] == model.stem


def test_no_tracebacks_in_the_log(server: ServerProcess) -> None:
    assert "Traceback" not in server.stderr
