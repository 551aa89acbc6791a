"""The serve app in-process on the scripted engine (tests/fake_engine.py), through real HTTP and
the real openai client: SSE framing, the queue's 503, disconnects freeing slots, stop sequences,
streaming a reply that skips thinking. Fast and exact; test_serve*.py repeat the behaviour that
matters on real GGUF models in a real `edgellm serve` process."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
import uvicorn
from fake_engine import FakeEngine

from edgellm.serve import ServerConfig, create_app

USER = [{"role": "user", "content": "hi"}]


@dataclass
class Running:
    engine: FakeEngine
    url: str
    client: openai.OpenAI


@contextlib.contextmanager
def start(engine: FakeEngine, **config: object) -> Iterator[Running]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    app = create_app(engine, ServerConfig(model_id="fake", **config))  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    try:
        yield Running(engine, url, openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_streamed_chat_arrives_in_order_with_usage() -> None:
    with start(FakeEngine("Hello there, friend.", slots=2)) as running:
        stream = running.client.chat.completions.create(model="fake", messages=USER, stream=True,
                                                        stream_options={"include_usage": True})
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, friend."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len("Hello there, friend.")


def test_stop_sequence_through_the_api() -> None:
    with start(FakeEngine("one two THREE four", slots=1)) as running:
        reply = running.client.chat.completions.create(model="fake", messages=USER, stop=[" THR"])
        streamed = running.client.completions.create(model="fake", prompt="x", stop=" THR", stream=True)
        streamed_text = "".join(c.choices[0].text for c in streamed if c.choices)
    assert reply.choices[0].message.content == "one two" and reply.choices[0].finish_reason == "stop"
    assert streamed_text == "one two"


def test_bad_stop_is_400() -> None:
    with start(FakeEngine(slots=1)) as running:
        with pytest.raises(openai.BadRequestError, match="at most 4 stop sequences"):
            running.client.chat.completions.create(model="fake", messages=USER, stop=["a", "b", "c", "d", "e"])


def test_queue_full_is_503_with_retry_after() -> None:
    engine = FakeEngine("x" * 500, slots=1, step_seconds=0.01)
    with start(engine, queue_size=0) as running:
        engine.backend.paused.clear()  # hold the first request in its slot, before its first token
        busy = threading.Thread(target=lambda: running.client.chat.completions.create(model="fake", messages=USER, max_tokens=3))
        busy.start()
        deadline = time.monotonic() + 10
        while engine.scheduler.busy == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            response = httpx.post(running.url + "/v1/chat/completions", json={"messages": USER}, timeout=30)
            assert response.status_code == 503
            assert response.headers["retry-after"] and response.json()["error"]["code"] == "queue_full"
        finally:
            engine.backend.paused.set()
            busy.join(timeout=30)


def test_a_client_that_disconnects_frees_its_slot_for_the_next() -> None:
    engine = FakeEngine(" ".join(["word"] * 2000), slots=1, step_seconds=0.005)
    with start(engine) as running:
        stream = running.client.chat.completions.create(model="fake", messages=USER, stream=True)
        for i, _ in enumerate(stream):
            if i == 5:
                break
        stream.close()
        deadline = time.monotonic() + 10
        while engine.scheduler.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.scheduler.busy == 0, "the slot was not freed after the disconnect"
        decodes = engine.backend.decodes
        assert decodes < 1000  # it stopped long before the 4,000-odd tokens of the reply
        slots = httpx.get(running.url + "/slots").json()
        assert slots[0]["state"] == "idle"
        # The freed slot takes the next request at once.
        nxt = running.client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "next"}], max_tokens=3)
        assert nxt.choices[0].message.content == "wor"


def test_a_reply_that_skips_thinking_reaches_the_sse_stream_within_a_few_tokens() -> None:
    # The R1 template form that does not open <think>; the reply never writes it.
    engine = FakeEngine("Paris. " * 100, slots=1, thinks=True, step_seconds=0.02)
    with start(engine) as running:
        with httpx.stream("POST", running.url + "/v1/chat/completions", json={"messages": USER, "stream": True}, timeout=30) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    decoded_before_first_byte = engine.backend.decodes
                    break
    # One step for the prompt, then one per token; a few steps of slack for the event loop.
    assert decoded_before_first_byte <= 6, decoded_before_first_byte


def test_four_streams_share_batches_and_each_gets_its_own_text() -> None:
    engine = FakeEngine(lambda prompt: prompt.split("user: ")[-1].split("\n")[0] * 20, slots=4, step_seconds=0.002)
    with start(engine) as running:
        results: dict[str, str] = {}

        def ask(word: str) -> None:
            stream = running.client.chat.completions.create(model="fake", messages=[{"role": "user", "content": word}], stream=True)
            results[word] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        threads = [threading.Thread(target=ask, args=(w,)) for w in ("ab", "cd", "ef", "gh")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert results == {w: w * 20 for w in ("ab", "cd", "ef", "gh")}
    assert any(len(batch) >= 3 for batch in engine.backend.batches)  # decoded together


def test_a_long_history_drops_the_fewest_oldest_turns_in_a_few_template_runs() -> None:
    engine = FakeEngine("ok", slots=1, n_ctx=4096)
    runs = []
    original = engine.prompt_from_messages

    def counting(messages, *, check=True, **options):  # type: ignore[no-untyped-def]
        runs.append(len(messages))
        return original(messages, check=check, **options)

    engine.prompt_from_messages = counting  # type: ignore[method-assign]
    turns = []
    for i in range(400):  # 400 turns of ~40 characters (tokens) each: 4x what a slot holds
        turns += [{"role": "user", "content": f"question {i:04d} " + "q" * 10}, {"role": "assistant", "content": "a" * 10}]
    messages = [{"role": "system", "content": "be brief"}, *turns]
    with start(engine) as running:
        response = httpx.post(running.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 8}, timeout=30)
    assert response.status_code == 200, response.text
    dropped = int(response.headers["x-edgellm-dropped-messages"])
    assert dropped % 2 == 0  # whole turns: the history restarts at a user message
    kept = [messages[0], *turns[dropped:]]
    limit = 4096 - 8
    assert len(engine.format_messages(kept)) <= limit < len(engine.format_messages([messages[0], *turns[dropped - 2:]]))
    assert engine.backend.prompts[-1] == engine.format_messages(kept)  # the system prompt stayed
    assert len(runs) <= 12, len(runs)  # a binary search, not one template run per dropped turn
