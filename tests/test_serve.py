"""`edgellm serve`: the real server process on loopback, a tiny real GGUF, the real openai client."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import cli_env, run_cli

from edgellm.serve import is_loopback
from edgellm.serve.jobs import Admission, QueueFull
from edgellm.text.stops import StopFilter

API_KEY = "sk-edgellm-test"
LONG = 8000  # more tokens than any test lets a generation run: those tests stop it early
# The model follows this grammar exactly: reasoning, the closing tag, then the answer.
THINK_GRAMMAR = 'root ::= "Thinking it over." "</think>" "The answer is 42."'


@pytest.fixture(scope="module")
def long_model(tiny_8k: Path) -> Path:
    return tiny_8k


class ServerProcess:
    """`python -m edgellm serve` on a free loopback port, its stderr collected line by line.
    `entry` runs another front (tests/stalling_serve.py) instead of `python -m edgellm`."""

    def __init__(self, model: Path | None, *args: str, home: Path, ctx: str = "8192", env: dict[str, str] | None = None,
                 wait: bool = True, entry: list[str] | None = None) -> None:
        """`model` None: no -m (serve every model in the Hugging Face cache, HF_HOME in `env`)."""
        self.process = subprocess.Popen(
            [*(entry or [sys.executable, "-m", "edgellm"]), "serve", *(["-m", str(model)] if model else []), "--port", "0",
             "--ctx", ctx, *args],
            # Offline unless a test points HF_ENDPOINT at its own hub: a server never reaches the internet.
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(EDGELLM_HOME=str(home), **{"HF_HUB_OFFLINE": "1", **(env or {})}),
        )
        self._lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not wait:
            return
        line = self.wait_for_line(r"serving .* at (http://\S+)/v1")
        match = re.search(r"at (http://\S+)/v1", line)
        assert match, line
        self.root = match.group(1)
        self.base_url = self.root + "/v1"
        self.model_id = model.stem if model else ""

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def wait_for_line(self, pattern: str, start: int = 0, deadline: float = 120) -> str:
        """The first stderr line from index `start` matching `pattern` (fails if the server exits)."""
        end = time.monotonic() + deadline
        with self._changed:
            while True:
                for line in self._lines[start:]:
                    if re.search(pattern, line):
                        return line
                if self.process.poll() is not None and self._lines_complete():
                    pytest.fail(f"the server exited ({self.process.returncode}):\n" + "\n".join(self._lines))
                if time.monotonic() > end:
                    pytest.fail(f"no line matching {pattern!r} in:\n" + "\n".join(self._lines))
                self._changed.wait(0.2)

    def _lines_complete(self) -> bool:
        return self.process.stderr is None or self.process.stderr.closed or self.process.poll() is not None

    def line_count(self) -> int:
        with self._changed:
            return len(self._lines)

    def client(self, api_key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=120)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture(scope="module")
def server(long_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(long_model, "--api-key", API_KEY, "--queue", "4", home=tmp_path_factory.mktemp("home"))
    yield process
    process.stop()


@pytest.fixture()
def client(server: ServerProcess) -> openai.OpenAI:
    return server.client()


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def wait_idle(server: ServerProcess, deadline: float = 60) -> dict[str, Any]:
    """Poll /health until no generation runs (a deadline for a broken server, not a speed check)."""
    end = time.monotonic() + deadline
    while True:
        status, _, body = http("GET", server.root + "/health", headers={"Authorization": f"Bearer {API_KEY}"})
        health = json.loads(body)
        if status == 200 and not health["busy"] and health["queued"] == 0:
            return health
        assert time.monotonic() < end, f"still busy: {health}"
        time.sleep(0.05)


USER = [{"role": "user", "content": "What is six times seven?"}]


# --- the openai client, as a user would try it ------------------------------------------------------


def test_list_models(client: openai.OpenAI, long_model: Path) -> None:
    assert [m.id for m in client.models.list()] == [long_model.stem]
    assert client.models.retrieve(long_model.stem).owned_by == "edgellm"


def test_chat_non_stream(client: openai.OpenAI, long_model: Path) -> None:
    reply = client.chat.completions.create(
        model=long_model.stem, messages=USER, max_tokens=16, seed=1, extra_body={"ignore_eos": True}
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens == 16
    assert reply.usage.prompt_tokens > 5
    # The template opens <think>, and 16 random tokens rarely close it: the text is reasoning or answer.
    reasoning = (choice.message.model_extra or {}).get("reasoning_content") or ""
    assert reasoning + (choice.message.content or "")


def test_presence_and_frequency_penalties_change_greedy_output(client: openai.OpenAI, long_model: Path) -> None:
    def reply(**penalties: float) -> str:
        answer = client.chat.completions.create(
            model=long_model.stem, messages=USER, max_tokens=40, temperature=0, extra_body={"ignore_eos": True}, **penalties
        ).choices[0].message
        return (answer.model_extra or {}).get("reasoning_content", "") + (answer.content or "")

    # Greedy is repeatable on one path. A request whose prompt a slot holds evaluates only its
    # last token; a fresh one evaluates the whole prompt in one batch, and another matmul shape
    # may round differently and flip a near-tie of the random weights. The first request here
    # may be either (it depends on the tests before), so it only fills the cache: every request
    # compared below then takes the same path, in the same slot.
    reply()
    plain = reply()
    assert reply() == plain
    # A random model repeats tokens greedily; penalising repeats must change what it writes.
    assert reply(presence_penalty=2.0) != plain
    assert reply(frequency_penalty=2.0) != plain


def test_chat_stream(client: openai.OpenAI, long_model: Path) -> None:
    chunks = list(client.chat.completions.create(
        model=long_model.stem, messages=USER, max_tokens=12, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    assert all(c.model == long_model.stem and c.id == chunks[0].id for c in chunks)
    texts = [c.choices[0].delta for c in chunks if c.choices]
    assert len([d for d in texts if d.content or (d.model_extra or {}).get("reasoning_content")]) >= 2


def test_reasoning_goes_to_reasoning_content(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="", messages=USER, extra_body={"grammar": THINK_GRAMMAR})
    message = reply.choices[0].message
    assert message.content == "The answer is 42."
    assert (message.model_extra or {}).get("reasoning_content") == "Thinking it over."
    assert reply.choices[0].finish_reason == "stop"


def test_reasoning_streamed_as_reasoning_content_deltas(client: openai.OpenAI) -> None:
    reasoning, answer = [], []
    for chunk in client.chat.completions.create(model="", messages=USER, stream=True, extra_body={"grammar": THINK_GRAMMAR}):
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
            answer.append(delta.content or "")
            # No delta carries both: the reasoning comes first, then the answer.
            assert not (reasoning[-1] and answer[-1])
    assert "".join(reasoning) == "Thinking it over."
    assert "".join(answer) == "The answer is 42."


def test_stop_sequence_cuts_the_answer(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="", messages=USER, stop=["is 4"], extra_body={"grammar": THINK_GRAMMAR})
    assert reply.choices[0].message.content == "The answer "
    assert reply.choices[0].finish_reason == "stop"


def test_json_object_mode(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "What is two plus two?"}], response_format={"type": "json_object"},
        temperature=0, max_tokens=400,
    )  # greedy: for this prompt (reasoning skipped, as JSON modes do) the random-weight model closes its object
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content or ""), dict)
    # Under a grammar nothing is reasoning, though the template opened <think>.
    assert not (choice.message.model_extra or {}).get("reasoning_content")


def test_json_schema_mode(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}}, "required": ["ok", "n"]}
    reply = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "Reply in JSON."}], max_tokens=400,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    data = json.loads(reply.choices[0].message.content or "")
    assert set(data) == {"ok", "n"} and isinstance(data["ok"], bool) and isinstance(data["n"], int)


def test_completions_endpoint(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="", prompt="Once upon a time", max_tokens=5, extra_body={"ignore_eos": True})
    assert reply.object == "text_completion"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"
    streamed = list(client.completions.create(model="", prompt="Once", max_tokens=4, stream=True, extra_body={"ignore_eos": True}))
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "length"


def test_json_mode_keeps_a_literal_think_tag_inside_the_answer(client: openai.OpenAI) -> None:
    # The grammar owns every token in JSON mode: nothing is split off as reasoning.
    schema = {"type": "object", "properties": {"t": {"const": "a</think>b"}}, "required": ["t"]}
    reply = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "Reply in JSON."}], max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    message = reply.choices[0].message
    assert json.loads(message.content or "") == {"t": "a</think>b"}
    assert not (message.model_extra or {}).get("reasoning_content")


def test_raw_completions_return_the_models_tags_as_written(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="", prompt="Q: 2+2? A:", max_tokens=40,
                                      extra_body={"grammar": 'root ::= "<think>add</think>4"'})
    assert reply.choices[0].text == "<think>add</think>4"


def test_curl_style_request_without_model_field(server: ServerProcess) -> None:
    body = json.dumps({"messages": USER, "max_tokens": 4, "ignore_eos": True}).encode()
    status, headers, raw = http("POST", server.base_url + "/chat/completions", body,
                                {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    assert status == 200, raw
    assert json.loads(raw)["usage"]["completion_tokens"] == 4


# --- security and bad input ---------------------------------------------------------------------


def test_wrong_or_missing_key_is_401_and_generates_nothing(server: ServerProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        server.client(api_key="wrong").chat.completions.create(model="", messages=USER)
    assert raised.value.status_code == 401
    start = server.line_count()
    status, _, raw = http("POST", server.base_url + "/chat/completions", json.dumps({"messages": USER}).encode())
    assert status == 401
    assert json.loads(raw)["error"]["type"] == "authentication_error"
    line = server.wait_for_line(r"POST /v1/chat/completions 401", start)
    assert "tokens" not in line
    status, _, _ = http("GET", server.base_url + "/models")
    assert status == 401


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (json.dumps({"messages": USER, "temperature": "hot"}).encode(), 400, "temperature", "valid number"),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}).encode(),
         400, "messages.0.content", "takes text only"),
        (json.dumps({"messages": USER, "max_tokens": 100_000}).encode(), 400, "max_tokens", "at most"),
        (json.dumps({"messages": USER, "model": "gpt-4o"}).encode(), 404, "model", "not served here"),
        (json.dumps({"messages": []}).encode(), 400, "messages", "messages"),
        (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, "messages.0.role", "role"),
        (json.dumps({"messages": USER, "n": 3}).encode(), 400, "n", "n"),
        (json.dumps({"messages": USER, "tools": [{"type": "function"}]}).encode(), 400, "tools", "tools[0] needs a 'function' object"),
        (json.dumps({"messages": USER, "response_format": {"type": "json_schema"}}).encode(), 400, "response_format", "schema"),
        (json.dumps({"messages": [{"role": "user", "content": "x " * 20000}]}).encode(), 400, "messages", "context"),
        (b"[1, 2]", 400, None, "dictionary"),
    ],
)
def test_bad_requests_get_openai_style_errors(server: ServerProcess, body: bytes, status: int, param: str | None, words: str) -> None:
    got, _, raw = http("POST", server.base_url + "/chat/completions", body,
                       {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    assert got == status, raw
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert words in error["message"]


def test_unknown_fields_are_accepted_and_logged_once(server: ServerProcess, client: openai.OpenAI) -> None:
    # Issue 18: Open WebUI forwards Ollama's options (num_ctx) to OpenAI connections; 0.1 answered 400.
    start = server.line_count()
    for _ in range(2):
        reply = client.chat.completions.create(model="", messages=USER, max_tokens=2,
                                               extra_body={"num_ctx": 8192, "ignore_eos": True})
        assert reply.usage is not None and reply.usage.completion_tokens == 2
    server.wait_for_line(r"ignoring the request field 'num_ctx'", start)
    assert sum("'num_ctx'" in line for line in server.stderr.splitlines()[start:]) == 1


def test_oversized_body_is_413_before_it_is_read(server: ServerProcess) -> None:
    host, port = server.root.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        # Declare 5 MiB and send none of it: the server answers from the headers alone.
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {5 * 1024 * 1024}\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            data = conn.recv(65536)
            if not data:
                break
            response += data
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_unknown_path_is_openai_style_404(server: ServerProcess) -> None:
    status, _, raw = http("GET", server.base_url + "/engines")
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found"


def test_no_tracebacks_in_the_log(server: ServerProcess) -> None:
    assert "Traceback" not in server.stderr


# --- load ---------------------------------------------------------------------------------------


def test_four_concurrent_clients_are_all_answered(server: ServerProcess) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def ask(seed: int) -> None:
        try:
            reply = server.client().chat.completions.create(
                model="", messages=USER, max_tokens=24, seed=seed, extra_body={"ignore_eos": True}
            )
            assert reply.usage is not None
            results.append(reply.usage.completion_tokens)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert results == [24, 24, 24, 24]


def test_disconnect_mid_stream_stops_generation_and_frees_the_slot(server: ServerProcess) -> None:
    wait_idle(server)
    start = server.line_count()
    stream = server.client().chat.completions.create(
        model="", messages=USER, max_tokens=LONG, stream=True, extra_body={"ignore_eos": True}
    )
    with stream:
        chunks = iter(stream)
        for _ in range(3):
            next(chunks)
    line = server.wait_for_line(r"POST /v1/chat/completions 200 .*client disconnected", start)
    tokens = int(re.search(r"(\d+) tokens", line).group(1))  # type: ignore[union-attr]
    assert 0 < tokens < LONG
    wait_idle(server)
    reply = server.client().chat.completions.create(model="", messages=USER, max_tokens=3, extra_body={"ignore_eos": True})
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_full_queue_gets_503_with_retry_after(long_model: Path, tmp_path: Path) -> None:
    busy = ServerProcess(long_model, "--queue", "0", "--parallel", "1", home=tmp_path)
    try:
        client = busy.client(api_key="unused")
        with client.chat.completions.create(
            model="", messages=USER, max_tokens=LONG, stream=True, extra_body={"ignore_eos": True}
        ) as running:
            next(iter(running))  # generating now, and holding the only slot
            with pytest.raises(openai.APIStatusError) as raised:
                client.chat.completions.create(model="", messages=USER, max_tokens=2)
            assert raised.value.status_code == 503
            assert raised.value.response.headers["retry-after"].isdigit()
            assert raised.value.body["code"] == "queue_full"  # type: ignore[index]
        wait_idle(busy)
        reply = client.chat.completions.create(model="", messages=USER, max_tokens=2, extra_body={"ignore_eos": True})
        assert reply.usage is not None and reply.usage.completion_tokens == 2
    finally:
        assert busy.stop() == 0


def test_sigterm_ends_in_flight_stream_cleanly_and_exits_0(long_model: Path, tmp_path: Path) -> None:
    target = ServerProcess(long_model, home=tmp_path)
    try:
        stream = target.client().chat.completions.create(
            model="", messages=USER, max_tokens=LONG, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = iter(stream)
        next(chunks)
        target.process.send_signal(signal.SIGTERM)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        # The stream ends properly (a finish chunk, then [DONE]) whether it finished or was cut short.
        assert finishes == ["length"]
        assert target.process.wait(timeout=120) == 0
        target.wait_for_line(r"^stopped$")
        assert "Traceback" not in target.stderr
    finally:
        target.stop()


# --- the command line ---------------------------------------------------------------------------


def test_refuses_public_bind_without_key(tiny_f32: Path) -> None:
    result = run_cli("serve", "-m", str(tiny_f32), "--host", "0.0.0.0")
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "refusing to listen on 0.0.0.0 without an API key" in err
    assert "--api-key" in err and "Traceback" not in err


def test_taken_port_is_a_clear_error(tiny_f32: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("serve", "-m", str(tiny_f32), "--port", str(port))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_help_has_an_example() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    assert b"Example: edgellm serve" in result.stdout


def test_missing_model_is_a_usage_error() -> None:
    result = run_cli("serve")
    assert result.returncode == 2
    assert b"no model" in result.stderr


# --- logic, without a model ---------------------------------------------------------------------


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


def test_stop_filter_holds_back_a_possible_stop_sequence() -> None:
    stop = StopFilter(["</end>"])
    assert stop.feed("abc</e") == "abc"
    assert stop.feed("nd>more") == ""
    assert stop.stopped
    free = StopFilter(["xyz"])
    assert free.feed("ab") + free.feed("xy") + free.feed("w") + free.flush() == "abxyw"


def test_admission_enforces_slots_plus_queue_at_once() -> None:
    # Issue 16, item 7: the room check and the reservation were split by an await, so with
    # --queue 1 four simultaneous requests were all let in. Entering is synchronous now.
    admission = Admission(slots=2, queue_size=1)
    for _ in range(3):
        admission.enter()
    with pytest.raises(QueueFull):
        admission.enter()
    admission.leave()
    admission.enter()
    assert admission.held == 3
