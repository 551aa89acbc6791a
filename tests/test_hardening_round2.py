"""Issue 30 (hardening, second round) against the real `edgellm serve`, the CLI and, for the
preparation pool's logic, the app on the scripted engine. Each test reproduces one red-team case;
the comment says what main (c16aaaa) did with it.

Items 2 (the worker) and 8's --rpc part are in test_rpc_hardening.py, item 6 (the unit) in
test_service_unit.py, item 9 in test_rpc.py; the converter itself in test_schema_grammar.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import psutil
import pytest
from conftest import run_cli
from fake_engine import FakeEngine
from test_serve import USER, ServerProcess, http
from test_serve_inprocess import start

from edgellm.runtime.types import Prompt

JSON = {"Content-Type": "application/json"}
HUGE = 1_000_000_000


@pytest.fixture(scope="module")
def server(tiny_8k: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tiny_8k, "--queue", "4", home=tmp_path_factory.mktemp("home"))  # no key: the default loopback server
    yield process
    process.stop()


def post(server: ServerProcess, body: object, path: str = "/chat/completions") -> tuple[int, dict[str, Any]]:
    status, _, raw = http("POST", server.base_url + path, json.dumps(body).encode(), JSON)
    return status, json.loads(raw)


def rss(server: ServerProcess) -> int:
    return int(psutil.Process(server.process.pid).memory_info().rss)


def still_answers(server: ServerProcess) -> None:
    status, reply = post(server, {"messages": USER, "max_tokens": 2, "ignore_eos": True})
    assert status == 200 and reply["usage"]["completion_tokens"] == 2, reply


def tool(parameters: Any, name: str = "f") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


# --- 1. one schema exhausted the board's memory ---------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [tool({"type": "object", "properties": {"s": {"type": "string", "maxLength": HUGE}}})], "tool_choice": "required"}, "tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "maxLength": HUGE}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/d"}}, "$defs": {"d": {"type": "array", "minItems": HUGE}}}}}},
     "response_format"),
])
def test_a_huge_repetition_count_is_a_400_naming_it_and_memory_stays(server: ServerProcess, body: dict[str, Any], param: str) -> None:
    before = rss(server)
    status, reply = post(server, {"messages": USER, "max_tokens": 4, **body})
    # main: serve grew to 21.9 GB and the kernel's OOM killer ended it
    assert status == 400, reply
    assert reply["error"]["param"] == param
    assert "1000000000 is more than the grammar allows (1000)" in reply["error"]["message"]
    assert rss(server) - before < 64 * 1024**2
    still_answers(server)


# --- 3. calls that did not parse or validate ------------------------------------------------------


@pytest.mark.parametrize("parameters", [
    {"items": {"type": "integer"}},  # main: arguments '[{"a": 2}' with finish_reason tool_calls
    {"anyOf": [{"type": "integer"}]},  # main: '21}\n</tool_call>...'
    {"type": "object", "enum": [1, 2]},
    {"$ref": "#/$defs/s", "$defs": {"s": {"type": "integer"}}},
])
def test_tool_parameters_that_are_not_an_object_schema_are_refused(server: ServerProcess, parameters: Any) -> None:
    status, reply = post(server, {"messages": USER, "tools": [tool(parameters)], "tool_choice": "required"})
    assert status == 400, reply
    assert reply["error"]["param"] == "tools" and reply["error"]["code"] == "invalid_tools"
    assert "('f')" in reply["error"]["message"]  # the tool is named


@pytest.mark.parametrize(("parameters", "words"), [
    ({"type": "object", "properties": {"s": {"type": "string", "minLength": 5, "maxLength": 2}}}, "'minLength' 5 is more than 'maxLength' 2"),
    ({"type": "object", "properties": {"s": {"type": "string", "pattern": "^a+$", "maxLength": 2}}}, "'maxLength' beside 'pattern'"),
    ({"type": "object", "properties": {}, "required": ["q"]}, "'required' names 'q', which is not among its properties"),
    ({"type": "object", "allOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"a": {"const": "x"}}}]},
     "'allOf' gives property 'a' two different schemas"),
])
def test_what_the_converter_silently_dropped_is_a_400_naming_the_keyword(server: ServerProcess, parameters: Any, words: str) -> None:
    status, reply = post(server, {"messages": USER, "tools": [tool(parameters)], "tool_choice": "required"})
    assert status == 400 and words in reply["error"]["message"], reply


def test_same_names_in_defs_and_definitions_give_calls_that_validate(server: ServerProcess) -> None:
    # main: $defs/s and definitions/s shared one rule, so {"a": 1, "b": 2} came back where b must be "p" or "q"
    parameters = {"type": "object", "properties": {"a": {"$ref": "#/$defs/s"}, "b": {"$ref": "#/definitions/s"},
                                                   'say "hi"\n': {"type": "boolean"}, "$ref": {"const": 1}},
                  "required": ["a", "b", 'say "hi"\n', "$ref"],
                  "$defs": {"s": {"type": "integer", "minimum": 0, "maximum": 9}}, "definitions": {"s": {"enum": ["p", "q"]}}}
    checked = 0
    for seed in range(3):
        status, reply = post(server, {"messages": USER, "tools": [tool(parameters)], "tool_choice": {"type": "function", "function": {"name": "f"}},
                                      "parallel_tool_calls": False, "seed": seed, "max_tokens": 200})
        assert status == 200, reply
        for call in reply["choices"][0]["message"].get("tool_calls") or []:
            jsonschema.validate(json.loads(call["function"]["arguments"]), parameters)
            checked += 1
    assert checked >= 2


# --- 4. deep JSON in the history ------------------------------------------------------------------


@pytest.mark.parametrize("arguments", ["[" * 3000, '{"a":' * 1500])
def test_deep_arguments_in_the_history_are_a_400(server: ServerProcess, arguments: str) -> None:
    history = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    status, reply = post(server, {"messages": history, "tools": [tool({"type": "object", "properties": {}})]})
    assert status == 400, reply  # main: 500 generation failed: RecursionError
    assert "nests more than 64 levels deep" in reply["error"]["message"]
    still_answers(server)


def test_a_deep_chat_transcript_is_one_line(tiny_q4km: Path, tmp_path: Path) -> None:
    transcript = tmp_path / "deep.json"
    transcript.write_text("[" * 100_000 + "]" * 100_000)
    done = run_cli("chat", "-m", str(tiny_q4km), "--load", str(transcript), input=b"")
    err = done.stderr.decode()
    assert done.returncode != 0 and "Traceback" not in err, err  # main: a RecursionError traceback
    assert "nests more than 16 levels deep" in err


# --- 5. one request held the single preparer ------------------------------------------------------


def test_a_chain_grammar_is_refused_at_once() -> None:
    from edgellm.errors import GrammarError
    from edgellm.text.grammar import check_grammar

    # main: 4.5-10 s to refuse a 3,000-rule chain (an O(n^2) emptiness pass); the server's only
    # preparer was held meanwhile. Linear now: milliseconds; 2 s is a bound, not a target.
    for shape in ('r{i} ::= r{j}', 'r{i} ::= "x" | r{j}'):
        text = "\n".join(["root ::= r0", *(shape.format(i=i, j=i + 1) for i in range(3000)), 'r3000 ::= "a"?'])
        started = time.perf_counter()
        with pytest.raises(GrammarError):
            check_grammar(text)
        assert time.perf_counter() - started < 2.0


def test_a_repetition_that_expands_past_half_a_million_elements_is_refused() -> None:
    from edgellm.errors import GrammarError
    from edgellm.text.grammar import check_grammar

    with pytest.raises(GrammarError, match="expands the grammar past 500,000 elements"):
        check_grammar('root ::= "' + "a" * 100_000 + '"{0,2000}')  # main: 31 s, then 200M elements in llama.cpp


def test_tools_count_in_the_size_check_before_any_tokenizer_work(server: ServerProcess) -> None:
    # main: a 3.6 MB tool description was templated and tokenized (7 s on Gemma's vocabulary) before the 400
    described = {"type": "function", "function": {"name": "f", "description": "word " * 700_000, "parameters": {"type": "object"}}}
    status, reply = post(server, {"messages": USER, "tools": [described]})
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded", reply
    assert "characters of input cannot fit" in reply["error"]["message"]


class HeldEngine(FakeEngine):
    """Preparing a prompt that says 'hold' waits until released: a slow preparation, on demand."""

    def __init__(self) -> None:
        super().__init__("ok", slots=2)
        self.release = threading.Event()
        self.prepared: list[str] = []

    def prompt_from_messages(self, messages: list[dict[str, Any]], **kwargs: Any) -> Prompt:
        text = messages[-1]["content"]
        if text.startswith("hold"):
            self.release.wait(30)
        self.prepared.append(text)
        return super().prompt_from_messages(messages, **kwargs)


def test_a_slow_preparation_does_not_hold_up_the_next_request() -> None:
    engine = HeldEngine()
    with start(engine) as running:
        slow = threading.Thread(target=lambda: running.client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hold"}], max_tokens=2), daemon=True)
        slow.start()
        time.sleep(0.3)
        reply = running.client.chat.completions.create(model="fake", messages=USER, max_tokens=2)  # main: waited for 'hold'
        assert reply.choices[0].message.content
        assert engine.prepared == [USER[-1]["content"]]
        engine.release.set()
        slow.join(30)


def test_a_preparation_whose_client_left_is_dropped() -> None:
    engine = HeldEngine()
    with start(engine) as running:
        holders = [threading.Thread(target=lambda n=n: running.client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": f"hold {n}"}], max_tokens=2), daemon=True) for n in range(2)]
        for holder in holders:
            holder.start()
        time.sleep(0.3)  # both preparers are held now; the next request waits for one
        with pytest.raises(httpx.TimeoutException):
            httpx.post(running.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "gone"}]}, timeout=0.5)
        time.sleep(0.6)  # the server notices the client left (it polls every 0.25 s)
        engine.release.set()
        for holder in holders:
            holder.join(30)
        time.sleep(0.3)
        assert "gone" not in engine.prepared  # main: prepared (and templated, tokenized) for nobody


# --- 7. unknown fields in the log -------------------------------------------------------------------


def test_unknown_field_names_are_logged_clipped_and_escaped(server: ServerProcess) -> None:
    start_line = server.line_count()
    before = rss(server)
    for index in range(30):
        status, _ = post(server, {"messages": USER, "max_tokens": 1, f"{index:02d}" + "x" * 2 * 1024**2: 1})
        assert status == 200
    status, _ = post(server, {"messages": USER, "max_tokens": 1, "name\nPOST /v1/chat/completions 200 | 999 tokens | FORGED": 1})
    assert status == 200
    server.wait_for_line("999 tokens", start_line)
    logged = server.stderr.splitlines()[start_line:]
    # main: each 2 MiB name was kept and logged whole (RSS +74 MiB, log +61 MB for 30 requests)
    assert sum(len(line) for line in logged) < 64 * 1024
    assert rss(server) - before < 32 * 1024**2
    # main: the '\n' in the name wrote a forged access-log line
    assert not any(line.startswith("POST /v1/chat/completions 200 | 999 tokens") for line in logged)
    assert any("name\\nPOST" in line for line in logged)


def test_a_path_with_a_newline_is_logged_on_one_line(server: ServerProcess) -> None:
    start_line = server.line_count()
    http("GET", server.root + "/x%0AGET%20/health%20200%20|%20FORGED", None, {})  # the server decodes %0A to a newline
    line = server.wait_for_line("FORGED", start_line)
    assert line.startswith("GET /x\\nGET /health 200 | FORGED 404")  # main: two lines, the second forged


# --- found by scripts/soak_serve.py: a reply that is not streamed, dropped by its client ------------


def test_a_dropped_request_that_is_not_streamed_stops_generating(server: ServerProcess) -> None:
    import socket

    host, port = server.root.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"messages": USER, "max_tokens": 4000, "ignore_eos": True, "seed": 1, "stream": False}).encode()
    start_line = server.line_count()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.5)
    line = server.wait_for_line(r"POST /v1/chat/completions", start_line)
    # main: "200 | 4000 tokens", the slot busy for seconds after the client had gone
    assert "client disconnected: generation stopped" in line, line
    assert int(line.split(" tokens")[0].rsplit("| ", 1)[1]) < 4000
