#!/usr/bin/env python3
"""Soak test for `edgellm serve`: mixed, hostile and abandoned requests for minutes on end.

Starts `python -m edgellm serve` on a small random-weight GGUF (built here with edgellm.store.synthetic,
or --model) with an API key, or attaches to a running server (--url). Then --clients threads loop
for --minutes over a weighted mix: plain chats (streamed or not), completions, streams the client
drops after a few chunks, requests dropped before their first token, tool calls with
tool_choice required or named (the openai client; every call's arguments are validated with
jsonschema against the tool's parameters), response_format json_schema (the content validated),
raw GBNF grammars (the text checked by a regular expression), and hostile or broken bodies that
must get a 4xx with an OpenAI-style JSON error. It samples the server's RSS every 10 s, records the
time to first token of streamed plain chats. At the end it drops one long non-streamed request on
the idle server and times how long its slot stays busy (a warning, not a failure), then checks that
every slot is idle, that nothing is queued, and that /metrics counted exactly the requests made.

It exits 1 on any transport error, any 5xx, any constrained answer that does not validate, any
unexpected answer (a hostile body accepted, an error without a JSON body, a valid request
refused), a /metrics mismatch, slots not idle at the end, a traceback in the server's log, or a
server (started here) that died or did not exit 0 on SIGTERM.

Example (issue 30's soak: 20 minutes, 4 clients):
    python scripts/soak_serve.py --minutes 20 --clients 4
    python scripts/soak_serve.py --minutes 1 --clients 2 --parallel 2          # a quick look
    python scripts/soak_serve.py --url http://127.0.0.1:8080 --api-key KEY --pid 1234
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import psutil

from edgellm.serve.access_log import KNOWN_PATHS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import host_line  # noqa: E402  (scripts/ is not a package)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
REQUEST_TIMEOUT_S = 120  # a deadline for a hung server, not a speed check
# The server closes a kept-alive connection after 5 s without a new request head (guards.HEAD_TIMEOUT_S,
# as uvicorn's keep-alive). httpx's default expiry is also 5 s, so a pooled connection could be reused
# just as the server closes it: a reset that says nothing about the server. Well-behaved clients drop
# idle connections first.
KEEPALIVE_EXPIRY_S = 3.0
RSS_EVERY_S = 10.0
ABANDONED_TOKENS = 4096  # the server's largest max_tokens: a request nobody reads any more, at its longest
ABANDONED_STOPPED_S = 1.5  # a poll (0.25 s) and a step, with room for a busy machine
SETTLE_S = 60.0  # after the clients stop: how long the server may take to finish what they dropped
MiB = 1024 * 1024

PROMPTS = [
    "What is six times seven?",
    "Write a haiku about a river.",
    "List three prime numbers.",
    "Why is the sky blue?",
    "Translate 'good morning' into French.",
    "Name a city in Norway and say why it is known.",
    "Summarise the plot of a film you like in one sentence.",
    "What is the capital of Australia?",
]

# --- what the constrained requests ask for -----------------------------------------------------------
# Only keywords edgellm's schema converter enforces (edgellm/text/schema_grammar.py): a 'minimum' on a
# 'number' is refused (400), so bounded values here are integers.
PLACE = {"type": "object", "properties": {"lat": {"type": "integer", "minimum": -90, "maximum": 90}, "lon": {"type": "number"}},
         "required": ["lat", "lon"]}
TOOLS: dict[str, dict[str, Any]] = {
    "get_weather": {"type": "object", "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 24},
                                                     "unit": {"enum": ["celsius", "fahrenheit"]}},
                    "required": ["city"], "additionalProperties": False},
    "set_alarm": {"type": "object", "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                                                   "minute": {"type": "integer", "minimum": 0, "maximum": 59},
                                                   "label": {"type": ["string", "null"], "maxLength": 16}},
                  "required": ["hour", "minute"]},
    "add_items": {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string", "maxLength": 10},
                                                             "minItems": 1, "maxItems": 3},
                                                   "urgent": {"type": "boolean"}},
                  "required": ["items"]},
    "route": {"type": "object", "properties": {"from": {"$ref": "#/$defs/place"}, "to": {"$ref": "#/$defs/place"}, "mode": {"const": "walk"}},
              "required": ["from", "to"], "$defs": {"place": PLACE}},
    "tag": {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                                             "kind": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 4}]}},
            "required": ["code", "kind"]},
}
SCHEMAS: list[dict[str, Any]] = [
    *TOOLS.values(),
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 1, "maxItems": 4},
    {"enum": ["red", "green", "blue"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "why": {"oneOf": [{"type": "null"}, {"type": "string", "maxLength": 12}]}},
     "required": ["ok", "why"], "additionalProperties": False},
]


@dataclass(frozen=True)
class Grammar:
    gbnf: str
    answer: re.Pattern[str]  # what a finished ("stop") answer must match in full


GRAMMARS = [
    Grammar(r"root ::= [0-9]{1,12}", re.compile(r"[0-9]{1,12}")),
    Grammar(r'root ::= "yes" | "no"', re.compile(r"yes|no")),
    Grammar(r'root ::= "#" [0-9a-f]{6}', re.compile(r"#[0-9a-f]{6}")),
    Grammar(r'root ::= "[" [0-9]{1,3} ("," [0-9]{1,3}){0,4} "]"', re.compile(r"\[[0-9]{1,3}(,[0-9]{1,3}){0,4}\]")),
]
# The model's chat template opens <think>: a grammar that does not close it first writes reasoning,
# and the answer stays empty. Chat requests put the closing tag in front (as tests/test_serve.py does).
THINK_END = '"</think>" '


# --- counters --------------------------------------------------------------------------------------


@dataclass
class Counters:
    """Everything the clients saw; threads add to it under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    sent: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    # (path, status) as the server's edgellm_requests_total labels them, for requests whose status the
    # client saw; the early disconnects are apart, as the server may record either of two statuses.
    by_path: Counter[tuple[str, int]] = field(default_factory=Counter)
    early_disconnects: Counter[str] = field(default_factory=Counter)  # path -> dropped before any answer
    mid_stream_disconnects: int = 0
    transport_errors: int = 0
    server_errors: int = 0  # 5xx
    unexpected: int = 0  # a hostile body accepted, an error without a JSON body, a valid request refused
    constrained: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, valid|invalid|cut)
    ttft: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, seconds to first token)
    samples: dict[str, list[str]] = field(default_factory=dict)  # the first few of each kind of failure

    def request(self, kind: str) -> None:
        with self.lock:
            self.sent += 1
            self.kinds[kind] += 1

    def answered(self, path: str, status: int, *, mix: bool = True) -> None:
        """A status the client read. `mix=False`: the run's own checks (baseline, polls at the end),
        compared with /metrics like the rest but not part of the mix's figures."""
        with self.lock:
            if mix:
                self.statuses[status] += 1
            self.by_path[(metric_path(path), status)] += 1
            if status >= 500:
                self.server_errors += 1

    def failure(self, what: str, detail: str) -> None:
        with self.lock:
            if what == "transport":
                self.transport_errors += 1
            elif what == "unexpected":
                self.unexpected += 1
            shown = self.samples.setdefault(what, [])
            if len(shown) < 5:
                shown.append(detail[:1500])

    def constrained_answer(self, kind: str, verdict: str, detail: str = "") -> None:
        with self.lock:
            self.constrained[(kind, verdict)] += 1
        if verdict == "invalid":
            self.failure("invalid " + kind, detail)


def metric_path(path: str) -> str:
    """The path label the server gives a request (edgellm/serve/access_log.py: unknown paths are 'other')."""
    path = path.split("?", 1)[0]
    return path if path in KNOWN_PATHS else "other"


# --- the server ----------------------------------------------------------------------------------


class Server:
    """`python -m edgellm serve` started here, or one already running (--url)."""

    def __init__(self, root: str, api_key: str | None, pid: int | None, process: subprocess.Popen[bytes] | None = None,
                 log_path: Path | None = None) -> None:
        self.root = root.rstrip("/")
        self.api_key = api_key
        self.pid = pid
        self.process = process
        self.log_path = log_path
        self.lines: list[str] = []

    @classmethod
    def start(cls, model: Path, api_key: str, parallel: int | None, workdir: Path) -> Server:
        command = [sys.executable, "-m", "edgellm", "serve", "-m", str(model), "--port", "0", "--ctx", "8192",
                   "--queue", "8", "--api-key", api_key]
        if parallel:
            command += ["--parallel", str(parallel)]
        # Its own EDGELLM_HOME: the user's settings and files stay out of the measurement.
        env = {**os.environ, "EDGELLM_HOME": str(workdir / "home")}
        env.pop("EDGELLM_DEBUG", None)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        server = cls("", api_key, process.pid, process, workdir / "serve.log")
        ready = threading.Event()
        threading.Thread(target=server._read_stderr, args=(ready,), daemon=True).start()
        if not ready.wait(300) or not server.root:
            process.kill()
            sys.exit("the server did not start:\n" + "\n".join(server.lines[-40:]))
        return server

    def _read_stderr(self, ready: threading.Event) -> None:
        """Drain the server's stderr (one line per request: a full pipe would stall it) into the log."""
        assert self.process is not None and self.process.stderr is not None and self.log_path is not None
        with self.log_path.open("w", encoding="utf-8") as log:
            for raw in self.process.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                self.lines.append(line)
                match = re.search(r"serving .* at (http://\S+)/v1", line)
                if match and not ready.is_set():
                    self.root = match.group(1)
                    ready.set()
        ready.set()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def alive(self) -> bool:
        """False once the server started here has exited (then the clients stop: nothing to soak)."""
        return self.process is None or self.process.poll() is None

    def rss(self) -> int | None:
        if self.pid is None:
            return None
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return None

    def stop(self) -> int | None:
        """SIGTERM, as systemd stops it; its exit code (None: not ours to stop)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def build_model(workdir: Path) -> Path:
    """The test suite's tiny_8k model (tests/conftest.py): random weights, a real tokenizer and the
    R1 chat template, an 8k context so that --ctx 8192 slots are real."""
    from edgellm.store import synthetic  # numpy and gguf: only when the script builds the model

    shape = dataclasses.replace(synthetic.TINY, context_length=8192)
    return synthetic.write_tiny_model(workdir / "tiny-8k.gguf", shape=shape)


# --- one client ------------------------------------------------------------------------------------


class Client:
    """One client thread: its own connections, its own random stream, the shared counters."""

    def __init__(self, soak: Soak, index: int) -> None:
        self.soak = soak
        self.counters = soak.counters
        self.rng = random.Random(soak.seed * 1000 + index)
        limits = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S)
        self.http = httpx.Client(base_url=soak.server.root, headers=soak.server.headers, timeout=REQUEST_TIMEOUT_S, limits=limits)
        self.openai = openai.OpenAI(base_url=soak.server.root + "/v1", api_key=soak.server.api_key or "none", max_retries=0,
                                    timeout=REQUEST_TIMEOUT_S,
                                    http_client=httpx.Client(limits=limits, timeout=REQUEST_TIMEOUT_S))

    def run(self, until: float) -> None:
        kinds = list(KINDS)
        weights = [KINDS[k][1] for k in kinds]
        while time.monotonic() < until and self.soak.server.alive():
            kind = self.rng.choices(kinds, weights)[0]
            self.counters.request(kind)
            try:
                KINDS[kind][0](self)
            except Exception as exc:  # a bug in this script, or an answer it could not read: shown, and a failure
                self.counters.failure("unexpected", f"{kind}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
        self.http.close()
        self.openai.close()

    # -- helpers --

    def seed(self) -> int:
        return self.rng.randrange(2**31)

    def messages(self) -> list[dict[str, str]]:
        prompt = self.rng.choice(PROMPTS)
        if self.rng.random() < 0.3:  # a follow-up turn: the slot holding this prefix is reused
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": "Let me think."},
                    {"role": "user", "content": "Go on, briefly."}]
        return [{"role": "user", "content": prompt}]

    def chat_body(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.soak.model_id, "messages": self.messages(), "max_tokens": self.rng.randint(8, 64),
                "seed": self.seed(), **extra}

    def post(self, kind: str, path: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response | None:
        """POST and record the status; None on a transport error (counted)."""
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            response = self.http.post(path, content=content, headers={"Content-Type": "application/json", **(headers or {})})
        except httpx.TransportError as exc:
            self.counters.failure("transport", f"{kind}: POST {path}: {type(exc).__name__}: {exc}")
            return None
        self.counters.answered(path, response.status_code)
        return response

    def expect_ok(self, kind: str, response: httpx.Response, body: Any) -> bool:
        if response.status_code == 200:
            return True
        self.counters.failure("5xx" if response.status_code >= 500 else "unexpected",
                              f"{kind}: {response.status_code} {response.text[:500]}\nrequest: {json.dumps(body)[:800]}")
        return False

    def stream(self, kind: str, path: str, body: dict[str, Any]) -> StreamResult | None:
        """A streamed request read to its end: text, reasoning, finish reason, time to first text."""
        started = time.perf_counter()
        result = StreamResult()
        try:
            with self.http.stream("POST", path, json=body) as response:
                self.counters.answered(path, response.status_code)
                if response.status_code != 200:
                    response.read()
                    self.expect_ok(kind, response, body)
                    return None
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line.removeprefix("data: ")
                    if data == "[DONE]":
                        result.done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:  # a failure after the 200: the server's own error, mid-stream
                        self.counters.failure("unexpected", f"{kind}: error event in a 200 stream: {data[:500]}\nrequest: {json.dumps(body)[:800]}")
                        return None
                    for choice in chunk.get("choices") or []:
                        piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                        thought = (choice.get("delta") or {}).get("reasoning_content") or ""
                        if (piece or thought) and result.ttft is None:
                            result.ttft = time.perf_counter() - started
                        result.text += piece
                        result.reasoning += thought
                        result.finish = choice.get("finish_reason") or result.finish
        except httpx.TransportError as exc:
            self.counters.failure("transport", f"{kind}: streamed POST {path}: {type(exc).__name__}: {exc}")
            return None
        if not result.done:
            self.counters.failure("unexpected", f"{kind}: the stream ended without [DONE]\nrequest: {json.dumps(body)[:800]}")
            return None
        return result


def send_raw(server: Server, path: str, body: dict[str, Any]) -> socket.socket:
    """A connection with one whole request on it, for the clients that hang up."""
    url = urllib.parse.urlsplit(server.root)
    conn = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=REQUEST_TIMEOUT_S)
    payload = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json",
            f"Content-Length: {len(payload)}", "Connection: close", *(f"{k}: {v}" for k, v in server.headers.items())]
    conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    return conn


@dataclass
class StreamResult:
    text: str = ""
    reasoning: str = ""
    finish: str | None = None
    ttft: float | None = None
    done: bool = False


# --- the kinds of request --------------------------------------------------------------------------


def plain_chat(client: Client) -> None:
    body = client.chat_body(ignore_eos=client.rng.random() < 0.5)
    response = client.post("chat", CHAT, body)
    if response is not None and client.expect_ok("chat", response, body):
        choice = response.json()["choices"][0]
        if choice["finish_reason"] not in ("stop", "length"):
            client.counters.failure("unexpected", f"chat: finish_reason {choice['finish_reason']!r}: {response.text[:500]}")


def streamed_chat(client: Client) -> None:
    """The time to first token is recorded here only: plain chats, so the figure compares over the run."""
    body = client.chat_body(stream=True, stream_options={"include_usage": True})
    started = time.monotonic() - client.soak.started
    result = client.stream("chat_stream", CHAT, body)
    if result is not None and result.ttft is not None:
        with client.counters.lock:
            client.counters.ttft.append((started, result.ttft))


def completion(client: Client) -> None:
    body = {"model": client.soak.model_id, "prompt": client.rng.choice(PROMPTS), "max_tokens": client.rng.randint(8, 64),
            "seed": client.seed(), "ignore_eos": client.rng.random() < 0.5}
    if client.rng.random() < 0.5:
        client.stream("completion", COMPLETIONS, {**body, "stream": True})
        return
    response = client.post("completion", COMPLETIONS, body)
    if response is not None:
        client.expect_ok("completion", response, body)


def disconnect_mid_stream(client: Client) -> None:
    """Read the status and a few chunks of a long stream, then close the socket (unread data: a reset).
    The server sent its 200 with the first token, so that is the status it records."""
    path = client.rng.choice([CHAT, COMPLETIONS])
    body = client.chat_body(stream=True, max_tokens=512, ignore_eos=True)
    if path == COMPLETIONS:
        body = {"prompt": client.rng.choice(PROMPTS), "stream": True, "max_tokens": 512, "ignore_eos": True, "seed": client.seed()}
    wanted = client.rng.randint(1, 4)
    try:
        conn = send_raw(client.soak.server, path, body)
    except OSError as exc:
        client.counters.failure("transport", f"disconnect_mid_stream: connect/send: {exc}")
        return
    with conn:
        try:
            received = b""
            while b"\r\n" not in received or received.count(b"data: ") < wanted:
                chunk = conn.recv(4096)
                if not chunk:
                    break  # the server finished first: a complete answer
                received += chunk
                if b"\r\n" in received and not received.startswith(b"HTTP/1.1 200"):
                    break
        except OSError as exc:
            client.counters.failure("transport", f"disconnect_mid_stream: before our close: {exc}")
            return
    status_line = received.split(b"\r\n", 1)[0].decode("latin-1")
    match = re.match(r"HTTP/1\.[01] (\d{3})", status_line)
    if not match:
        client.counters.failure("transport", f"disconnect_mid_stream: no status line: {received[:200]!r}")
        return
    client.counters.answered(path, int(match.group(1)))
    with client.counters.lock:
        client.counters.mid_stream_disconnects += 1
    if match.group(1) != "200":
        client.counters.failure("5xx" if match.group(1).startswith("5") else "unexpected",
                                f"disconnect_mid_stream: {status_line}: {received[:500]!r}")


def disconnect_early(client: Client) -> None:
    """Send a whole request and hang up before any answer (at once, or within 0.2 s: in preparation,
    in the queue, or generating). The server records 499 when it notices before answering. Otherwise
    it records 200: a stream's 200 leaves with its first token, and a non-streamed request is noticed
    only when no token came for a disconnect poll (0.25 s), so while tokens flow it is generated to
    the end (see Soak.abandoned_probe). The client cannot tell which happened, so these are compared
    with /metrics as 200 + 499 together (metrics_problems)."""
    path = client.rng.choice([CHAT, COMPLETIONS])
    stream = client.rng.random() < 0.5
    body = client.chat_body(stream=stream, max_tokens=256, ignore_eos=True)
    if path == COMPLETIONS:
        body = {"prompt": client.rng.choice(PROMPTS), "stream": stream, "max_tokens": 256, "ignore_eos": True, "seed": client.seed()}
    try:
        conn = send_raw(client.soak.server, path, body)
    except OSError as exc:
        client.counters.failure("transport", f"disconnect_early: connect/send: {exc}")
        return
    if client.rng.random() < 0.5:
        time.sleep(client.rng.uniform(0, 0.2))
    conn.close()
    with client.counters.lock:
        client.counters.early_disconnects[path] += 1


# Reasoning first takes tokens from the call: mostly none, so that most calls finish and are checked;
# some with a short budget (then the server's bridge line), a few with the server's default.
TOOL_REASONING: list[dict[str, Any]] = [{"reasoning_effort": "none"}, {"thinking_budget_tokens": 8}, {}]


def tool_call(client: Client) -> None:
    """tool_choice required or named, through the openai client; every call's arguments validated."""
    rng = client.rng
    names = rng.sample(sorted(TOOLS), rng.randint(1, 3))
    tools = [{"type": "function", "function": {"name": n, "description": f"the {n.replace('_', ' ')} tool", "parameters": TOOLS[n]}}
             for n in names]
    named = rng.choice(names) if rng.random() < 0.5 else None
    choice: Any = {"type": "function", "function": {"name": named}} if named else "required"
    reasoning = rng.choices(TOOL_REASONING, [6, 3, 1])[0]
    stream = rng.random() < 0.3
    kwargs: dict[str, Any] = {
        "model": client.soak.model_id, "messages": client.messages(), "tools": tools, "tool_choice": choice,
        # More than the other kinds: a call cut by max_tokens checks nothing, and the tools' description
        # in the prompt, a short reasoning and its bridge line, the call's opener and arguments take dozens.
        "max_tokens": rng.randint(48, 128), "seed": client.seed(), "extra_body": reasoning,
    }
    if rng.random() < 0.5:
        kwargs["parallel_tool_calls"] = rng.random() < 0.5
    request = json.dumps({k: v for k, v in kwargs.items() if k != "extra_body"} | reasoning | {"stream": stream})
    try:
        if stream:
            calls, finish = streamed_calls(client.openai.chat.completions.create(stream=True, **kwargs))
        else:
            reply = client.openai.chat.completions.create(**kwargs)
            finish = reply.choices[0].finish_reason
            calls = [(c.function.name, c.function.arguments) for c in reply.choices[0].message.tool_calls or []
                     if c.type == "function"]
    except openai.APIStatusError as exc:
        client.counters.answered(CHAT, exc.status_code)
        client.counters.failure("5xx" if exc.status_code >= 500 else "unexpected", f"tool_call: {exc.status_code} {exc.body}\nrequest: {request[:800]}")
        return
    except (openai.APIConnectionError, httpx.TransportError) as exc:  # httpx's own: a stream cut while read
        client.counters.failure("transport", f"tool_call: {type(exc).__name__}: {exc}")
        return
    client.counters.answered(CHAT, 200)
    check_calls(client, calls, finish, names, named, stream, request)


def streamed_calls(stream: Any) -> tuple[list[tuple[str, str]], str | None]:
    """(name, arguments) per call from delta.tool_calls (index, then name and argument fragments)."""
    calls: dict[int, list[str]] = {}
    finish = None
    with stream:
        for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    entry = calls.setdefault(delta.index, ["", ""])
                    if delta.function and delta.function.name:
                        entry[0] += delta.function.name
                    if delta.function and delta.function.arguments:
                        entry[1] += delta.function.arguments
                finish = choice.finish_reason or finish
    return [(name, arguments) for name, arguments in (calls[i] for i in sorted(calls))], finish


def check_calls(client: Client, calls: list[tuple[str, str]], finish: str | None, names: list[str], named: str | None,
                stream: bool, request: str) -> None:
    if finish == "length":
        # Cut by max_tokens. A non-streamed reply lists complete calls only: those must still validate.
        # A stream's last call may be a fragment, so a cut stream checks nothing.
        problems = [] if stream else [p for name, args in calls if (p := call_problem(name, args, names, named))]
        if problems:
            client.counters.constrained_answer("tool_call", "invalid", f"{problems}\nrequest: {request[:800]}")
        else:
            client.counters.constrained_answer("tool_call", "cut")
        return
    problems = [p for name, args in calls if (p := call_problem(name, args, names, named))]
    if finish != "tool_calls" or not calls:
        problems.append(f"finish_reason {finish!r} with {len(calls)} calls, though tool_choice obliges a call")
    if problems:
        client.counters.constrained_answer("tool_call", "invalid", f"{problems}\ncalls: {calls}\nrequest: {request[:800]}")
    else:
        client.counters.constrained_answer("tool_call", "valid")


def call_problem(name: str, arguments: str, names: list[str], named: str | None) -> str | None:
    if name not in names or (named and name != named):
        return f"call to {name!r}; offered {names}, named {named!r}"
    try:
        jsonschema.validate(json.loads(arguments), TOOLS[name])
    except (ValueError, jsonschema.ValidationError) as exc:
        return f"{name}({arguments!r}): {str(exc).splitlines()[0]}"
    return None


def json_schema_answer(client: Client) -> None:
    """response_format json_schema through the openai client: the content must validate."""
    schema = client.rng.choice(SCHEMAS)
    kwargs: dict[str, Any] = {
        "model": client.soak.model_id, "messages": client.messages(), "max_tokens": client.rng.randint(32, 96), "seed": client.seed(),
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
    }
    request = json.dumps(kwargs)
    try:
        reply = client.openai.chat.completions.create(**kwargs)
    except openai.APIStatusError as exc:
        client.counters.answered(CHAT, exc.status_code)
        client.counters.failure("5xx" if exc.status_code >= 500 else "unexpected", f"json_schema: {exc.status_code} {exc.body}\nrequest: {request[:800]}")
        return
    except openai.APIConnectionError as exc:
        client.counters.failure("transport", f"json_schema: {type(exc).__name__}: {exc}")
        return
    client.counters.answered(CHAT, 200)
    choice = reply.choices[0]
    if choice.finish_reason == "length":
        client.counters.constrained_answer("json_schema", "cut")
        return
    try:
        jsonschema.validate(json.loads(choice.message.content or ""), schema)
    except (ValueError, jsonschema.ValidationError) as exc:
        client.counters.constrained_answer("json_schema", "invalid", f"{str(exc).splitlines()[0]}\ncontent: {choice.message.content!r}"
                                           f" finish {choice.finish_reason!r}\nrequest: {request[:800]}")
        return
    client.counters.constrained_answer("json_schema", "valid")


def grammar_answer(client: Client) -> None:
    """A raw GBNF grammar on chat or completions, streamed or not: the text must match it."""
    grammar = client.rng.choice(GRAMMARS)
    stream = client.rng.random() < 0.3
    if client.rng.random() < 0.5:
        path = CHAT
        body = client.chat_body(grammar=grammar.gbnf.replace("root ::= ", "root ::= " + THINK_END + "(", 1) + ")",
                                max_tokens=client.rng.randint(16, 64))
    else:
        path = COMPLETIONS
        body = {"model": client.soak.model_id, "prompt": client.rng.choice(PROMPTS), "grammar": grammar.gbnf,
                "max_tokens": client.rng.randint(16, 64), "seed": client.seed()}
    if stream:
        result = client.stream("grammar", path, {**body, "stream": True})
        if result is None:
            return
        text, reasoning, finish = result.text, result.reasoning, result.finish
    else:
        response = client.post("grammar", path, body)
        if response is None or not client.expect_ok("grammar", response, body):
            return
        choice = response.json()["choices"][0]
        message = choice.get("message") or {}
        text = choice["text"] if path == COMPLETIONS else message.get("content") or ""
        reasoning, finish = message.get("reasoning_content") or "", choice["finish_reason"]
    if finish == "length":
        client.counters.constrained_answer("grammar", "cut")
    elif grammar.answer.fullmatch(text) and not reasoning:
        client.counters.constrained_answer("grammar", "valid")
    else:
        client.counters.constrained_answer("grammar", "invalid", f"text {text!r} reasoning {reasoning!r} finish {finish!r}\n"
                                           f"request: {json.dumps(body)[:800]}")


@dataclass(frozen=True)
class Hostile:
    """A careless or hostile request and the exact 4xx it must get (with an OpenAI-style error body)."""

    name: str
    path: str
    status: int
    body: Callable[[random.Random], bytes]  # built when chosen: some are large
    headers: dict[str, str] = field(default_factory=dict)


USER = [{"role": "user", "content": "hi"}]


def _js(value: Any) -> bytes:
    return json.dumps(value).encode()


def _tool(parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


def _long_name(rng: random.Random) -> str:
    return "x" * rng.choice([100, 4096, 65536])


HUGE = 1_000_000_000
NON_OBJECT_PARAMETERS = [{"items": {"type": "integer"}}, {"anyOf": [{"type": "integer"}]}, {"type": "object", "enum": [1, 2]},
                         {"$ref": "#/$defs/s", "$defs": {"s": {"type": "integer"}}}]
CHAIN_GRAMMAR = "\n".join(["root ::= r0", *(f"r{i} ::= r{i + 1}" for i in range(3000)), 'r3000 ::= "a"?'])
# The cases of tests/test_serve_hardening.py and tests/test_hardening_round2.py, and a few more.
HOSTILE = [
    Hostile("invalid JSON", CHAT, 400, lambda _: b'{"messages": [{"role": "user", "content": "hi"}'),
    Hostile("deep JSON", CHAT, 400, lambda _: b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    Hostile("NaN", CHAT, 400, lambda _: b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
    Hostile("unpaired surrogate", CHAT, 400, lambda _: b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
    Hostile("huge maxLength schema", CHAT, 400, lambda _: _js({"messages": USER, "max_tokens": 4, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "maxLength": HUGE}}}})),
    Hostile("huge maxLength tool", CHAT, 400, lambda _: _js({"messages": USER, "tool_choice": "required", "tools": [
        _tool({"type": "object", "properties": {"s": {"type": "string", "maxLength": HUGE}}})]})),
    Hostile("huge minItems behind $ref", CHAT, 400, lambda _: _js({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/d"}},
                                "$defs": {"d": {"type": "array", "minItems": HUGE}}}}}})),
    Hostile("non-object tool parameters", CHAT, 400, lambda rng: _js({"messages": USER, "tool_choice": "required",
                                                                      "tools": [_tool(rng.choice(NON_OBJECT_PARAMETERS))]})),
    Hostile("unenforceable keyword", CHAT, 400, lambda _: _js({"messages": USER, "tool_choice": "required", "tools": [
        _tool({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}})]})),
    Hostile("unknown long field in a message", CHAT, 400, lambda rng: _js({"messages": [{"role": "user", "content": "hi", _long_name(rng): 1}]})),
    Hostile("unknown long field in response_format", CHAT, 400, lambda rng: _js({"messages": USER, "response_format": {
        "type": "json_object", _long_name(rng): True}})),
    Hostile("bad type: max_tokens true", CHAT, 400, lambda _: _js({"messages": USER, "max_tokens": True})),
    Hostile("bad type: temperature string", CHAT, 400, lambda _: _js({"messages": USER, "temperature": "hot"})),
    Hostile("bad type: seed 1.5", COMPLETIONS, 400, lambda _: _js({"prompt": "x", "seed": 1.5})),
    Hostile("bad type: messages string", CHAT, 400, lambda _: _js({"messages": "hi"})),
    Hostile("bad value: temperature 9", CHAT, 400, lambda _: _js({"messages": USER, "temperature": 9})),
    Hostile("empty prompt", COMPLETIONS, 400, lambda _: _js({"prompt": ""})),
    Hostile("bad grammar (chat)", CHAT, 400, lambda _: _js({"messages": USER, "grammar": "root ::= ( "})),
    Hostile("bad grammar (completions)", COMPLETIONS, 400, lambda _: _js({"prompt": "x", "grammar": "root ::= " + "(" * 5000 + '"a"' + ")" * 5000})),
    Hostile("chain grammar", COMPLETIONS, 400, lambda _: _js({"prompt": "x", "grammar": CHAIN_GRAMMAR})),
    Hostile("deep history arguments", CHAT, 400, lambda _: _js({"messages": [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[" * 3000}}]}, {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
        "tools": [_tool({"type": "object", "properties": {}})]})),
    Hostile("image part", CHAT, 400, lambda _: _js({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})),
    Hostile("tools and response_format", CHAT, 400, lambda _: _js({"messages": USER, "tool_choice": "required", "tools": [
        _tool({"type": "object"})], "response_format": {"type": "json_object"}})),
    Hostile("logit_bias", CHAT, 400, lambda _: _js({"messages": USER, "logit_bias": {"1": 5}})),
    Hostile("too many messages", CHAT, 400, lambda _: _js({"messages": USER * 20_000})),
    Hostile("another model", CHAT, 404, lambda _: _js({"model": "gpt-4o", "messages": USER})),
    Hostile("unknown path", "/v1/engines/" + "y" * 50, 404, lambda _: _js({"messages": USER})),
    Hostile("text/plain", CHAT, 415, lambda _: _js({"messages": USER}), {"Content-Type": "text/plain"}),
    Hostile("wrong key", CHAT, 401, lambda _: _js({"messages": USER}), {"Authorization": "Bearer wrong"}),
]


def hostile(client: Client) -> None:
    """One broken or hostile body: it must get exactly the 4xx expected, with an OpenAI-style error."""
    cases = [h for h in HOSTILE if client.soak.server.api_key or h.name != "wrong key"]  # no key: anything goes
    case = client.rng.choice(cases)
    body = case.body(client.rng)
    response = client.post("hostile", case.path, body, case.headers)
    if response is None:
        return
    try:
        error = response.json()["error"]
        readable = isinstance(error["message"], str) and bool(error["message"])
    except (ValueError, KeyError, TypeError):
        readable = False
    if response.status_code != case.status or not readable:
        client.counters.failure("5xx" if response.status_code >= 500 else "unexpected",
                                f"hostile '{case.name}': expected {case.status}, got {response.status_code} {response.text[:300]}\n"
                                f"request: {body[:300]!r}")


def tolerated_field(client: Client) -> None:
    """An unknown top-level field with a long name. Not an error: the server ignores such fields by
    design (Open WebUI sends Ollama's num_ctx) and logs each name once, clipped. It must answer 200."""
    body = client.chat_body(**{"x" * client.rng.choice([64, 4096, 65536]) + str(client.rng.randrange(10**6)): 1})
    response = client.post("tolerated_field", CHAT, body)
    if response is not None:
        client.expect_ok("tolerated_field", response, {"...": "a long unknown field"})


def monitoring(client: Client) -> None:
    """What a Prometheus scraper or a health check does meanwhile (counted like everything else)."""
    path = client.rng.choice(["/metrics", "/slots", "/health", "/v1/models"])
    try:
        response = client.http.get(path)
    except httpx.TransportError as exc:
        client.counters.failure("transport", f"GET {path}: {type(exc).__name__}: {exc}")
        return
    client.counters.answered(path, response.status_code)
    client.expect_ok("monitoring", response, path)


# kind -> (function, weight)
KINDS: dict[str, tuple[Callable[[Client], None], int]] = {
    "chat": (plain_chat, 10),
    "chat_stream": (streamed_chat, 12),
    "completion": (completion, 8),
    "disconnect_mid_stream": (disconnect_mid_stream, 7),
    "disconnect_early": (disconnect_early, 6),
    "tool_call": (tool_call, 12),
    "json_schema": (json_schema_answer, 10),
    "grammar": (grammar_answer, 10),
    "hostile": (hostile, 16),
    "tolerated_field": (tolerated_field, 2),
    "monitoring": (monitoring, 3),
}


# --- the run -------------------------------------------------------------------------------------


class ServerDied(Exception):
    """The server started here exited during the run."""


class Soak:
    def __init__(self, server: Server, seed: int) -> None:
        self.server = server
        self.seed = seed
        self.counters = Counters()
        self.started = time.monotonic()
        self.model_id = ""
        self.rss: list[int] = []
        self.http = httpx.Client(base_url=server.root, headers=server.headers, timeout=REQUEST_TIMEOUT_S,
                                 limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S))

    def get(self, path: str, *, counted: bool = True) -> httpx.Response:
        """The run's own GETs; `counted=False` only for the /metrics scrape being compared (the server
        counts a request after answering it, so a scrape never includes itself)."""
        response = self.http.get(path)
        if counted:
            self.counters.answered(path, response.status_code, mix=False)
        return response

    def sample_rss(self, stop: threading.Event) -> None:
        while True:
            rss = self.server.rss()
            if rss is not None:
                self.rss.append(rss)
            if stop.wait(RSS_EVERY_S):
                return

    def run(self, minutes: float, clients: int) -> None:
        # The baseline first: a request counts once answered, so one made before it is in it already.
        self.baseline = parse_requests(self.get("/metrics").text)  # counted: the end scrape includes it
        self.model_id = self.get("/v1/models").json()["data"][0]["id"]
        stop = threading.Event()
        sampler = threading.Thread(target=self.sample_rss, args=(stop,), daemon=True)
        self.started = time.monotonic()
        sampler.start()
        until = self.started + minutes * 60
        threads = [threading.Thread(target=Client(self, i).run, args=(until,), name=f"client-{i}") for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.elapsed = time.monotonic() - self.started
        if not self.server.alive():
            stop.set()
            raise ServerDied()
        self.wait_idle()
        self.abandoned = self.abandoned_probe()
        self.end_state = self.wait_idle()
        self.metrics_check = self.compare_metrics()
        self.http.close()
        stop.set()
        sampler.join()
        rss = self.server.rss()
        if rss is not None:
            self.rss.append(rss)

    def abandoned_probe(self) -> dict[str, float]:
        """On the idle server after the run: a non-streamed request whose client hangs up after 0.3 s.
        Its slot should be free within a disconnect poll (0.25 s). A dropped stream stops at its next
        chunk; a non-streamed request has no chunk to fail on, so only that poll can stop it."""
        before = parse_value(self.get("/metrics").text, "edgellm_generated_tokens_total")
        body = {"model": self.model_id, "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": ABANDONED_TOKENS,
                "ignore_eos": True, "seed": 1}
        with send_raw(self.server, CHAT, body):
            time.sleep(0.3)
        hung_up = time.monotonic()
        with self.counters.lock:
            self.counters.early_disconnects[CHAT] += 1
        self.wait_idle(poll_s=0.05)
        busy_s = time.monotonic() - hung_up
        generated = parse_value(self.get("/metrics").text, "edgellm_generated_tokens_total") - before
        return {"busy_s": busy_s, "generated": generated}

    def wait_idle(self, poll_s: float = 0.5) -> dict[str, Any]:
        """/health until nothing is busy or queued (dropped requests take a poll to notice), then /slots."""
        end = time.monotonic() + SETTLE_S
        while True:
            health = self.get("/health").json()
            if (not health.get("busy") and not health.get("queued")) or time.monotonic() > end:
                break
            time.sleep(poll_s)
        slots = self.get("/slots").json()
        return {"health": health, "slots": slots, "idle": sum(s["state"] == "idle" for s in slots)}

    def compare_metrics(self) -> list[str]:
        """Differences between the server's request counters (since the baseline) and the clients'.
        A request the server is still finishing (a dropped one, waiting for its next disconnect poll)
        is counted when it ends: scrape again for up to SETTLE_S before calling it a mismatch."""
        end = time.monotonic() + SETTLE_S
        while True:
            scraped = parse_requests(self.get("/metrics", counted=False).text)
            delta = Counter({key: scraped[key] - self.baseline.get(key, 0) for key in scraped})
            problems = metrics_problems(delta, self.counters)
            if not problems or time.monotonic() > end:
                self.server_counts = delta
                return problems
            self.counters.answered("/metrics", 200, mix=False)  # that scrape is in the next one
            time.sleep(0.5)


def parse_requests(text: str) -> Counter[tuple[str, int]]:
    """edgellm_requests_total{path="...",status="..."} N (edgellm/serve/metrics.py) -> {(path, status): N}."""
    counts: Counter[tuple[str, int]] = Counter()
    for match in re.finditer(r'^edgellm_requests_total\{path="((?:[^"\\]|\\.)*)",status="(\d+)"\} (\d+)$', text, re.M):
        counts[(match.group(1), int(match.group(2)))] = int(match.group(3))
    return counts


def parse_value(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def metrics_problems(server: Counter[tuple[str, int]], counters: Counters) -> list[str]:
    """The rule: every (path, status) the clients saw matches exactly; for the paths with early
    disconnects, the server's 499s are at most those disconnects, and its 200s are the clients'
    200s plus the disconnects it did not see before its first token (see disconnect_early)."""
    with counters.lock:
        client = Counter(counters.by_path)
        early = Counter(counters.early_disconnects)
    problems = []
    for key in sorted(set(server) | set(client)):
        path, status = key
        if early[path] and status in (200, 499):
            continue
        if server[key] != client[key]:
            problems.append(f"{path} {status}: server {server[key]}, clients {client[key]}")
    for path, dropped in sorted(early.items()):
        server_499, server_200, client_200 = server[(path, 499)], server[(path, 200)], client[(path, 200)]
        if server_499 > dropped or server_200 + server_499 != client_200 + dropped or client[(path, 499)]:
            problems.append(f"{path}: server 200 {server_200} + 499 {server_499}, clients 200 {client_200} + {dropped} dropped early")
    return problems


# --- the report ----------------------------------------------------------------------------------


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}s (n={len(values)})" if values else "n/a (no samples)"


def report(soak: Soak, args: argparse.Namespace, model: str, exit_code: int | None) -> list[str]:
    """Prints the report; returns the reasons the run failed (none: it passed)."""
    c = soak.counters
    failures = []
    print()
    print("=== edgellm serve soak ===")
    print(f"{host_line()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"Python {platform.python_version()}")
    print(f"server: {soak.server.root}, model {soak.model_id} ({model}), {len(soak.end_state['slots'])} slots, seed {args.seed}")
    print(f"ran {soak.elapsed / 60:.1f} min with {args.clients} clients: {c.sent} requests "
          f"({c.sent / max(soak.elapsed, 1e-9):.1f}/s)")
    print("  by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(c.kinds.items())))
    print("  by status (the answers the clients read): " + ", ".join(f"{s} {n}" for s, n in sorted(c.statuses.items())))
    dropped = sum(c.early_disconnects.values())
    server_499 = sum(n for (_, status), n in soak.server_counts.items() if status == 499)
    print(f"  deliberate disconnects: {c.mid_stream_disconnects} mid-stream (server records 200), {dropped} before an answer "
          f"(server recorded 499 for {server_499}, 200 for the {dropped - server_499} it answered anyway)")
    print(f"transport errors: {c.transport_errors}")
    print(f"5xx: {c.server_errors}")
    print(f"unexpected answers: {c.unexpected}")
    verdicts: Counter[str] = Counter()
    for (_, verdict), count in c.constrained.items():
        verdicts[verdict] += count
    print(f"constrained answers: {sum(verdicts.values())}: {verdicts['valid']} valid, {verdicts['invalid']} invalid, "
          f"{verdicts['cut']} cut by max_tokens")
    for kind in ("tool_call", "json_schema", "grammar"):
        print(f"  {kind}: " + ", ".join(f"{v} {c.constrained[(kind, v)]}" for v in ("valid", "invalid", "cut")))
    problems = soak.metrics_check
    pairs = len(soak.server_counts)
    print(f"/metrics vs clients: {'match' if not problems else 'MISMATCH'} ({pairs} path/status pairs, "
          f"{sum(soak.server_counts.values())} requests counted by the server)")
    for line in problems:
        print("  " + line)
    if soak.rss:
        print(f"RSS: start {soak.rss[0] / MiB:.0f} MiB, max {max(soak.rss) / MiB:.0f} MiB, end {soak.rss[-1] / MiB:.0f} MiB "
              f"({len(soak.rss)} samples every {RSS_EVERY_S:.0f} s)")
    else:
        print("RSS: not sampled (attached with --url and no --pid)")
    quarter = soak.elapsed / 4
    first = [t for at, t in c.ttft if at < quarter]
    last = [t for at, t in c.ttft if at >= soak.elapsed - quarter]
    print(f"time to first token, streamed plain chats: first quarter median {median(first)}, last quarter median {median(last)}")
    probe = soak.abandoned
    stopped = probe["busy_s"] < ABANDONED_STOPPED_S
    print(f"a non-streamed request dropped after 0.3 s (max_tokens {ABANDONED_TOKENS}): its slot was busy {probe['busy_s']:.2f} s "
          f"after the hang-up, {probe['generated']:.0f} tokens generated: "
          + ("stopped" if stopped else "FAIL: it generated on for nobody"))
    health, idle, slots = soak.end_state["health"], soak.end_state["idle"], len(soak.end_state["slots"])
    print(f"end: {idle} of {slots} slots idle, busy {health.get('busy')}, queued {health.get('queued')}")
    log_lines = soak.server.lines
    tracebacks = sum("Traceback" in line for line in log_lines)
    if soak.server.process is not None:
        print(f"server: exit code {exit_code} after SIGTERM, {len(log_lines)} log lines, {tracebacks} tracebacks; log: {soak.server.log_path}")
    for what, shown in sorted(c.samples.items()):
        print(f"--- first {what} ({len(shown)} shown) ---")
        for sample in shown:
            print("  " + sample.replace("\n", "\n    "))

    checks = [
        (c.transport_errors > 0, f"{c.transport_errors} transport errors"),
        (c.server_errors > 0, f"{c.server_errors} 5xx answers"),
        (verdicts["invalid"] > 0, f"{verdicts['invalid']} invalid constrained answers"),
        (c.unexpected > 0, f"{c.unexpected} unexpected answers"),
        (bool(problems), "/metrics does not match the clients' counts"),
        (idle != slots or bool(health.get("busy")) or bool(health.get("queued")), "slots not idle at the end"),
        (soak.server.process is not None and exit_code != 0, f"the server exited with {exit_code}"),
        (tracebacks > 0, f"{tracebacks} tracebacks in the server's log"),
        (not stopped, "a dropped request that is not streamed generated on"),
    ]
    failures = [reason for failed, reason in checks if failed]
    print("RESULT: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return failures


def main() -> None:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc[doc.index("Example"):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20, help="how long the clients run (default 20)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    parser.add_argument("--model", type=Path, help="a GGUF to serve (default: a tiny random-weight model built here)")
    parser.add_argument("--parallel", type=int, help="serve --parallel N (default: the server's plan)")
    parser.add_argument("--url", help="attach to a running server (http://HOST:PORT) instead of starting one")
    parser.add_argument("--api-key", help="the key of the --url server (started here: a random one)")
    parser.add_argument("--pid", type=int, help="the --url server's process id, for the RSS samples")
    parser.add_argument("--seed", type=int, default=0, help="the clients' random mix (default 0)")
    args = parser.parse_args()

    if args.url:
        # Its /metrics is compared from a baseline taken here: other clients of that server would show up as a mismatch.
        server = Server(args.url, args.api_key, args.pid)
        model = "already served"
    else:
        workdir = Path(tempfile.mkdtemp(prefix="soak-serve-"))  # the model built here and the server's log
        model_path = args.model or build_model(workdir)
        model = str(model_path)
        print(f"starting edgellm serve on {model_path} (log: {workdir / 'serve.log'})", flush=True)
        server = Server.start(model_path, args.api_key or os.urandom(16).hex(), args.parallel, workdir)
    print(f"soaking {server.root} for {args.minutes:g} min with {args.clients} clients", flush=True)
    soak = Soak(server, args.seed)
    try:
        soak.run(args.minutes, args.clients)
    except ServerDied:
        c = soak.counters
        sys.exit(f"RESULT: FAIL: the server died after {c.sent} requests (exit {server.stop()}), "
                 f"{c.transport_errors} transport errors; its last lines (log: {server.log_path}):\n" + "\n".join(server.lines[-40:]))
    finally:
        exit_code = server.stop()  # SIGTERM, as systemd stops it (a no-op if it is gone or not ours)
    failures = report(soak, args, model, exit_code)
    if not args.model and server.log_path is not None:
        (server.log_path.parent / "tiny-8k.gguf").unlink(missing_ok=True)  # the log stays
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
