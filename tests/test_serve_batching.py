"""Continuous batching in `edgellm serve --parallel N`: the real server, the real openai client.

Random weights write noise, so grammars that leave exactly one path force each sequence's text:
if two sequences read each other's logits rows, their forced texts could not both come out.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from test_serve import API_KEY, USER, ServerProcess, http, wait_idle

LONG = 2000  # more tokens than any test lets a generation run, within a slot (--ctx 2048)


@pytest.fixture(scope="module")
def model(tiny_8k: Path) -> Path:
    return tiny_8k


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(model, "--api-key", API_KEY, "--parallel", "4", "--queue", "2", home=tmp_path_factory.mktemp("home"), ctx="2048")
    yield process
    process.stop()


def forced(index: int) -> str:
    return f"Sequence {index} says " + " ".join(["hello"] * (index + 2)) + "."


def run_threads(work: list[threading.Thread]) -> None:
    for thread in work:
        thread.start()
    for thread in work:
        thread.join(timeout=300)


def test_four_streams_each_get_their_own_forced_text(server: ServerProcess) -> None:
    texts: dict[int, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def ask(index: int) -> None:
        try:
            barrier.wait()
            parts = []
            for chunk in server.client().chat.completions.create(
                model="", messages=USER, stream=True, extra_body={"grammar": f'root ::= "</think>{forced(index)}"'}
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
            texts[index] = "".join(parts)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    run_threads([threading.Thread(target=ask, args=(i,)) for i in range(4)])
    assert not errors
    assert texts == {i: forced(i) for i in range(4)}


def test_json_mode_and_free_text_share_a_batch(server: ServerProcess) -> None:
    results: dict[str, object] = {}

    def json_mode() -> None:
        schema = {"type": "object", "properties": {"n": {"const": 7}}, "required": ["n"]}
        reply = server.client().chat.completions.create(
            model="", messages=USER, max_tokens=60,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        results["json"] = json.loads(reply.choices[0].message.content or "")

    def free() -> None:
        reply = server.client().chat.completions.create(model="", messages=USER, max_tokens=200, extra_body={"ignore_eos": True})
        results["free"] = reply.usage.completion_tokens if reply.usage else None

    run_threads([threading.Thread(target=json_mode), threading.Thread(target=free)])
    assert results == {"json": {"n": 7}, "free": 200}


def test_cancelling_one_of_four_lets_the_others_finish_and_frees_its_slot(server: ServerProcess) -> None:
    wait_idle(server)
    done: list[int] = []
    errors: list[BaseException] = []

    def steady() -> None:
        try:
            reply = server.client().chat.completions.create(model="", messages=USER, max_tokens=300, extra_body={"ignore_eos": True})
            done.append(reply.usage.completion_tokens if reply.usage else -1)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    others = [threading.Thread(target=steady) for _ in range(3)]
    stream = server.client().chat.completions.create(model="", messages=USER, max_tokens=LONG, stream=True, extra_body={"ignore_eos": True})
    with stream:
        chunks = iter(stream)
        next(chunks)
        for thread in others:
            thread.start()
        for _ in range(3):
            next(chunks)
    for thread in others:
        thread.join(timeout=300)
    assert not errors and done == [300, 300, 300]
    line = server.wait_for_line(r"client disconnected")
    assert int(line.split(" tokens")[0].rsplit("|", 1)[1]) < LONG
    health = wait_idle(server)
    assert health["slots"] == 4 and health["slots_busy"] == 0


def test_beyond_slots_and_queue_is_503(mid_model: Path, tmp_path: Path) -> None:
    # The mid-size model: four long streams keep all four slots busy for seconds.
    target = ServerProcess(mid_model, "--parallel", "4", "--queue", "2", home=tmp_path, ctx="4096")
    client = target.client(api_key="unused")
    streams = [client.chat.completions.create(model="", messages=USER, max_tokens=1000, stream=True, extra_body={"ignore_eos": True})
               for _ in range(4)]
    queued: list[threading.Thread] = []
    try:
        for stream in streams:
            next(iter(stream))  # four slots generating
        queued = [threading.Thread(target=lambda: client.chat.completions.create(model="", messages=USER, max_tokens=2,
                                                                              extra_body={"ignore_eos": True})) for _ in range(2)]
        for thread in queued:
            thread.start()
        deadline = time.monotonic() + 60
        while True:  # until both hold their places in the queue
            health = json.loads(http("GET", target.root + "/health")[2])
            if health["queued"] == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert health["slots_busy"] == 4 and health["queued"] == 2
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="", messages=USER, max_tokens=2)
        assert raised.value.status_code == 503 and raised.value.body["code"] == "queue_full"  # type: ignore[index]
    finally:
        for stream in streams:
            stream.close()
        for thread in queued:
            thread.join(timeout=300)
        assert target.stop() == 0


def test_prompt_longer_than_a_slot_is_400(server: ServerProcess) -> None:
    # --ctx 2048: each of the 4 slots holds 2048 tokens.
    long = [{"role": "user", "content": "word " * 2500}]
    with pytest.raises(openai.BadRequestError) as raised:
        server.client().chat.completions.create(model="", messages=long, max_tokens=2)
    assert "a slot holds 2048" in str(raised.value)


def test_no_tracebacks_in_the_log(server: ServerProcess) -> None:
    assert "Traceback" not in server.stderr


def test_a_history_longer_than_a_slot_drops_its_oldest_turns(server: ServerProcess) -> None:
    # Issue 18: a long Open WebUI conversation got 400 context_length_exceeded once it outgrew the context.
    turn = "tell me about the weather and the sea " * 20  # about 200 tokens
    history = [{"role": "system", "content": "You are brief."}]
    for index in range(16):
        history += [{"role": "user", "content": f"{index}: {turn}"}, {"role": "assistant", "content": turn}]
    history.append({"role": "user", "content": "And now?"})
    raw = server.client().chat.completions.with_raw_response.create(model="", messages=history, max_tokens=4,
                                                                     extra_body={"ignore_eos": True})
    dropped = int(raw.headers["x-edgellm-dropped-messages"])
    assert dropped > 0 and dropped % 2 == 0  # whole turns
    reply = raw.parse()
    assert reply.usage is not None and reply.usage.prompt_tokens <= 2048 - 4
    server.wait_for_line(rf"dropped the oldest {dropped} messages")


def test_metrics_and_slots_move_and_need_the_key(server: ServerProcess) -> None:
    def metric(text: str, name: str) -> float:
        match = next(line for line in text.splitlines() if line.startswith(name + " "))
        return float(match.split()[-1])

    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert http("GET", server.root + "/metrics")[0] == 401
    assert http("GET", server.root + "/slots")[0] == 401
    before = http("GET", server.root + "/metrics", headers=auth)[2].decode()
    server.client().chat.completions.create(model="", messages=USER, max_tokens=5, extra_body={"ignore_eos": True})
    after = http("GET", server.root + "/metrics", headers=auth)[2].decode()
    assert metric(after, "edgellm_generated_tokens_total") == metric(before, "edgellm_generated_tokens_total") + 5
    assert metric(after, "edgellm_time_to_first_token_seconds_count") == metric(before, "edgellm_time_to_first_token_seconds_count") + 1
    assert 'edgellm_requests_total{path="/v1/chat/completions",status="200"}' in after
    assert metric(after, "edgellm_slots") == 4
    status, _, raw = http("GET", server.root + "/slots", headers=auth)
    slots = json.loads(raw)
    assert status == 200 and [slot["id"] for slot in slots] == [0, 1, 2, 3]
    assert all(slot["state"] == "idle" for slot in slots) and any(slot["cached_tokens"] > 0 for slot in slots)


def test_slots_within_the_training_context_raise_no_overflow_warning(mid_model: Path, tmp_path: Path) -> None:
    # 0.1's unified cache made llama.cpp compare the TOTAL context of all slots (8192) with the
    # model's training context (4096) and warn "possible training context overflow" at start.
    process = ServerProcess(mid_model, "--parallel", "2", home=tmp_path, ctx="4096")
    try:
        process.wait_for_line(r"^serving ")
        assert "2 slots of 4096 tokens" in process.stderr
        assert "n_ctx_train" not in process.stderr, process.stderr
        slots = json.loads(http("GET", process.root + "/slots")[2])
        assert len(slots) == 2
    finally:
        process.stop()


def test_a_long_prompt_admitted_while_three_stream_does_not_stop_them(server: ServerProcess) -> None:
    """A 1,500-token prompt arrives while three requests stream: it is evaluated in chunks beside
    their tokens, so they keep going. Reports the inter-token gaps (no timing is asserted)."""
    wait_idle(server)
    arrivals: dict[int, list[float]] = {0: [], 1: [], 2: []}
    errors: list[BaseException] = []
    started = threading.Barrier(4)
    long_sent: list[float] = []
    long_first: list[float] = []

    def stream(index: int) -> None:
        try:
            chunks = server.client().chat.completions.create(model="", messages=USER, max_tokens=400, stream=True,
                                                              extra_body={"ignore_eos": True})
            for chunk in chunks:
                if chunk.choices and (chunk.choices[0].delta.content or getattr(chunk.choices[0].delta, "reasoning_content", None)):
                    arrivals[index].append(time.perf_counter())
                    if len(arrivals[index]) == 20:
                        started.wait(timeout=120)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    started.wait(timeout=120)  # all three are streaming
    prompt = " ".join(["word"] * 500)  # ~1,500 tokens with the tiny tokenizer
    long_sent.append(time.perf_counter())
    for chunk in server.client().completions.create(model="", prompt=prompt, max_tokens=4, stream=True, extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].text and not long_first:
            long_first.append(time.perf_counter())
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    # Each stream went on after the long request was sent (chunks may carry several tokens).
    assert all(times and times[-1] > long_first[0] for times in arrivals.values())
    usage_line = server.wait_for_line(r"POST /v1/completions 200")
    assert "4 tokens" in usage_line
    gaps = [b - a for times in arrivals.values() for a, b in zip(times, times[1:], strict=False)]
    during = [b - a for times in arrivals.values() for a, b in zip(times, times[1:], strict=False) if long_sent[0] <= b <= long_first[0] + 0.05]
    gaps.sort()
    print(f"\ninter-token gap of the three streams: median {1000 * gaps[len(gaps) // 2]:.1f} ms, "
          f"largest while the 1,500-token prompt went in {1000 * max(during, default=0.0):.1f} ms "
          f"(prompt to first token {1000 * (long_first[0] - long_sent[0]):.0f} ms)")
    # They were not held until the long prompt was done: tokens kept arriving while it went in.
    assert all(any(long_sent[0] <= t <= long_first[0] for t in times) for times in arrivals.values())


def test_a_reply_that_skips_thinking_streams_over_sse_as_it_is_decoded(tiny_no_prefill: Path, tmp_path: Path) -> None:
    # The R1 template form that does not open <think>, and a reply that never writes it (forced).
    # 0.1 held such a reply until its end and sent it in one piece.
    process = ServerProcess(tiny_no_prefill, home=tmp_path, ctx="2048")
    try:
        deltas = []
        for chunk in process.client().chat.completions.create(model="", messages=USER, stream=True, max_tokens=300,
                                                               extra_body={"grammar": 'root ::= [a-z]+ " " root'}):
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
        assert len(deltas) > 30, deltas[:5]  # streamed in pieces, not released at the end
        assert len(deltas[0]) <= 24, deltas[0]  # the first piece is a token or a few, not the reply
        assert len("".join(deltas).split()) > 30
    finally:
        process.stop()
