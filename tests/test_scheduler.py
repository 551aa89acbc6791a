"""The batching scheduler's logic on a scripted backend (tests/fake_engine.py): slots, batches,
prefix reuse, chunked prompts, the queue, cancellation, stop sequences and the reasoning split.
The real-model layer of the same behaviour is tests/test_serve_batching.py; the reply's own
state machine (edgellm.runtime.reply) alone is tests/test_reply.py."""

from __future__ import annotations

import pytest
from fake_engine import FakeEngine, collect, run_until_idle

from edgellm.runtime.batch import Finished, SequenceRequest
from edgellm.runtime.response import Response
from edgellm.runtime.types import GenerationInterrupted, GenerationStats, Prompt, SamplingParams, TextEvent
from edgellm.text.reasoning import ANSWER


def submit(engine: FakeEngine, text: str, params: SamplingParams | None = None) -> tuple[SequenceRequest, list]:
    events: list = []
    request = SequenceRequest(engine.prompt_from_text(text), params or SamplingParams(), events.append)
    engine.scheduler.submit(request)
    return request, events


def test_each_sequence_gets_its_own_reply_from_one_batch() -> None:
    engine = FakeEngine(lambda prompt: f"<{prompt[-1]}>", slots=2)
    _, a = submit(engine, "prompt A")
    _, b = submit(engine, "prompt B")
    run_until_idle(engine.scheduler)
    assert collect(a).answer == "<A>" and collect(b).answer == "<B>"
    # After both prompts went in (one batch), every step decoded one token of each sequence.
    generating = [batch for batch in engine.backend.batches if batch == [(0, 1), (1, 1)]]
    assert len(generating) >= 3
    assert isinstance(a[-1], Finished) and a[-1].error is None


def test_a_request_goes_to_the_slot_holding_its_prefix_and_evaluates_only_the_rest() -> None:
    engine = FakeEngine("ok", slots=2)
    history = "system: be brief\nuser: " + "x" * 100
    _, first = submit(engine, history)
    _, other = submit(engine, "something else entirely")
    run_until_idle(engine.scheduler)
    _, second = submit(engine, history + "ok\nuser: and then?")
    run_until_idle(engine.scheduler)
    stats = collect(second).stats
    assert stats.prompt_tokens == len(history + "ok\nuser: and then?")
    # Only the new turn was evaluated (the backend asserts every position written follows on).
    assert stats.prompt_tokens_evaluated == len("\nuser: and then?")
    assert collect(first).stats.prompt_tokens_evaluated == len(history)


def test_a_long_prompt_is_chunked_and_never_stalls_a_generating_sequence() -> None:
    engine = FakeEngine(lambda prompt: "y" * 40 if prompt.startswith("short") else "done", slots=2, n_batch=16)
    _, short = submit(engine, "short")
    engine.scheduler.step()  # the short prompt is in; it generates from here on
    _, long = submit(engine, "L" * 100)
    run_until_idle(engine.scheduler)
    assert collect(long).answer == "done" and collect(short).answer == "y" * 40
    with_long_prompt = [batch for batch in engine.backend.batches if (1, 1) not in batch and any(seq == 1 for seq, _ in batch)]
    assert len(with_long_prompt) >= 6  # 100 tokens in chunks of at most 15 beside the other's token
    for batch in with_long_prompt[:6]:
        assert (0, 1) in batch, batch  # the generating sequence had its token in every one of them
        assert sum(n for _, n in batch) <= 16


def test_requests_beyond_the_slots_wait_first_come_first_served() -> None:
    engine = FakeEngine(lambda prompt: prompt[-1] * 3, slots=2)
    first, a = submit(engine, "p1")
    second, b = submit(engine, "p2")
    third, c = submit(engine, "p3")
    engine.scheduler.step()
    assert engine.scheduler.busy == 2 and engine.scheduler.waiting == 1
    run_until_idle(engine.scheduler)
    assert [collect(x).answer for x in (a, b, c)] == ["111", "222", "333"]
    assert engine.backend.prompts == ["p1", "p2", "p3"]


def test_max_tokens_ends_with_length() -> None:
    engine = FakeEngine("a long reply that goes on", slots=1)
    _, events = submit(engine, "hi", SamplingParams(max_tokens=5))
    run_until_idle(engine.scheduler)
    response = collect(events)
    assert response.answer == "a lon" and response.finish_reason == "length" and response.generated_tokens == 5


def test_a_stop_sequence_split_across_tokens_ends_the_reply_at_once() -> None:
    engine = FakeEngine("abc</end>" + "never written " * 20, slots=1)
    _, events = submit(engine, "hi", SamplingParams(stop=["</end>"]))
    run_until_idle(engine.scheduler)
    response = collect(events)
    assert response.answer == "abc" and response.finish_reason == "stop"
    assert response.generated_tokens == len("abc</end>")  # nothing generated past the stop
    texts = [e.text for e in events if isinstance(e, TextEvent)]
    assert "".join(texts) == "abc" and not any("<" in t for t in texts)


def test_text_held_as_a_possible_stop_is_released_when_it_was_not_one() -> None:
    engine = FakeEngine("abc</en", slots=1)
    _, events = submit(engine, "hi", SamplingParams(stop=["</end>"]))
    run_until_idle(engine.scheduler)
    assert collect(events).answer == "abc</en" and collect(events).finish_reason == "stop"


def test_stop_sequences_apply_to_the_answer_not_the_reasoning() -> None:
    engine = FakeEngine("<think>one\n\ntwo</think>\n\nanswer\n\ntail", slots=1, thinks=True)
    _, events = submit(engine, "hi", SamplingParams(stop=["\n\n"]))
    run_until_idle(engine.scheduler)
    response = collect(events)
    assert response.reasoning == "one\n\ntwo" and response.answer == "answer"


def test_a_reply_that_skips_thinking_streams_from_its_first_token() -> None:
    # The R1 template form that does not open <think>, and a reply that never writes it.
    engine = FakeEngine("Paris is the capital.", slots=1, thinks=True)
    _, events = submit(engine, "hi")
    engine.scheduler.step()  # the prompt, and the first token sampled
    engine.scheduler.step()
    first = [e for e in events if isinstance(e, TextEvent)]
    assert first and first[0].kind == ANSWER and "".join(e.text for e in first) == "Pa"


def test_cancel_while_everything_is_held_stops_within_one_step() -> None:
    # A reasoning model writing only blank space: the splitter cannot yet tell reasoning from
    # answer, so nothing is emitted; 0.1 checked cancellation only when it emitted something.
    engine = FakeEngine(" " * 5000, slots=2, thinks=True)
    request, events = submit(engine, "hi")
    for _ in range(20):
        engine.scheduler.step()
    assert not any(isinstance(e, TextEvent) for e in events)
    request.cancel()
    decodes = engine.backend.decodes
    engine.scheduler.step()
    assert isinstance(events[-1], Finished) and events[-1].error is None
    assert engine.backend.decodes == decodes  # it stopped before decoding anything more
    assert collect(events).finish_reason == "interrupted"
    assert engine.scheduler.busy == 0


def test_cancelling_one_of_four_lets_the_others_finish_and_the_slot_is_reused() -> None:
    engine = FakeEngine(lambda prompt: prompt[-1] * 30, slots=4)
    requests = [submit(engine, f"p{i}") for i in range(4)]
    for _ in range(5):
        engine.scheduler.step()
    requests[1][0].cancel()
    late, late_events = submit(engine, "p9")
    run_until_idle(engine.scheduler)
    assert [collect(events).answer for _, events in requests if _ is not requests[1][0]] == ["0" * 30, "2" * 30, "3" * 30]
    assert collect(requests[1][1]).finish_reason == "interrupted"
    assert collect(late_events).answer == "9" * 30


def test_a_prompt_longer_than_a_slot_fails_alone() -> None:
    engine = FakeEngine("ok", slots=2, n_ctx=200)
    _, ok = submit(engine, "fine")
    _, too_long = submit(engine, "x" * 150)  # the context holds 200, a slot 100
    run_until_idle(engine.scheduler)
    assert collect(ok).answer == "ok"
    assert isinstance(too_long[-1], Finished) and "a slot holds 100" in str(too_long[-1].error)


# --- Response: stream once, replay, Ctrl-C ----------------------------------------------------


def test_response_streams_once_then_replays() -> None:
    def events():
        yield TextEvent("reasoning", "hmm")
        yield TextEvent("answer", "Hi")
        yield TextEvent("answer", "!")
        yield GenerationStats(generated_tokens=3)

    response = Response(events())
    assert [e.text for e in response] == ["hmm", "Hi", "!"]
    assert [e.text for e in response] == ["hmm", "Hi", "!"]  # replayed, not regenerated
    assert response.answer == "Hi!" and response.reasoning == "hmm" and response.finish_reason == "stop"
    assert response.to_json()["stats"]["generated_tokens"] == 3


def test_response_folds_an_interrupted_generation_into_a_partial_result() -> None:
    def events():
        yield TextEvent("answer", "partial")
        raise GenerationInterrupted(GenerationStats(generated_tokens=2, finish_reason="interrupted"), [TextEvent("answer", " </")])

    response = Response(events())
    assert [e.text for e in response] == ["partial", " </"]
    assert response.interrupted and response.answer == "partial </" and response.generated_tokens == 2


def test_response_interrupt_between_events_stops_the_source() -> None:
    closed = []

    def events():
        try:
            yield TextEvent("answer", "a")
            yield TextEvent("answer", "b")
        except KeyboardInterrupt:
            closed.append(True)
            raise GenerationInterrupted(GenerationStats(generated_tokens=1, finish_reason="interrupted")) from None

    response = Response(events())
    for event in response:
        assert event.text == "a"
        break
    assert response.interrupt() == []
    assert closed and response.interrupted and response.answer == "a"


def test_bad_stop_lists_are_refused() -> None:
    from edgellm.text.stops import check_stops, unescape

    with pytest.raises(ValueError, match="at most 4"):
        check_stops(["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="at most 256"):
        check_stops(["x" * 300])
    assert check_stops(["", "END"]) == ["END"]
    assert unescape(r"\n\nUser:") == "\n\nUser:" and unescape(r"a\qb") == r"a\qb" and unescape("\\") == "\\"


def test_prompt_and_opens_think_from_the_fake_template() -> None:
    engine = FakeEngine(template_opens_think=True)
    assert engine.prompt_from_messages([{"role": "user", "content": "x"}]) == Prompt([ord(c) for c in "user: x\nassistant:<think>"], True)


def test_the_generation_thread_lets_its_compute_threads_go_each_time_it_goes_idle() -> None:
    """serve's generation thread (Scheduler.run): idle once at the start and after each request;
    never while a request generates (issue 27: a thread keeps an OpenMP team while it decodes)."""
    import threading
    import time

    engine = FakeEngine("Hi there.", slots=1)
    backend = engine.backend
    thread = threading.Thread(target=engine.scheduler.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while backend.idle_releases < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for round_number in (1, 2):
        request, events = submit(engine, "hello")
        while not any(isinstance(event, Finished) for event in events):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while backend.idle_releases < round_number + 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert backend.decodes > 1  # released between requests, not once per decode
    time.sleep(0.05)
    assert backend.idle_releases == 3
    engine.scheduler.stop()
    thread.join(10)


def test_a_batch_starting_from_idle_waits_briefly_for_requests_still_being_prepared() -> None:
    """Two clients at once: the second request is still being tokenized when the first arrives.
    Its prompt joins the first batch instead of waiting for the other's prompt decode."""
    import threading
    import time

    engine = FakeEngine("Hi.", slots=2)
    preparing = [1]
    engine.scheduler.coming = lambda: preparing[0]
    thread = threading.Thread(target=engine.scheduler.run, daemon=True)
    thread.start()
    first, first_events = submit(engine, "one")
    time.sleep(0.02)  # the second one's preparation, under the gather window
    preparing[0] = 0
    second, second_events = submit(engine, "two")
    deadline = time.monotonic() + 10
    while not all(any(isinstance(e, Finished) for e in events) for events in (first_events, second_events)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    engine.scheduler.stop()
    thread.join(10)
    assert {seq_id for seq_id, _ in engine.backend.batches[0]} == {0, 1}  # both prompts in the first decode


def test_a_preparation_that_never_ends_does_not_hold_the_batch() -> None:
    import threading
    import time

    engine = FakeEngine("Hi.", slots=2)
    engine.scheduler.coming = lambda: 1  # a preparation that never ends (a huge schema, a client gone)
    thread = threading.Thread(target=engine.scheduler.run, daemon=True)
    thread.start()
    started = time.monotonic()
    _, events = submit(engine, "one")
    while not any(isinstance(e, Finished) for e in events):
        assert time.monotonic() - started < 10
        time.sleep(0.005)
    engine.scheduler.stop()
    thread.join(10)
    assert engine.backend.decodes >= 1  # it waited out the gather window, then generated
