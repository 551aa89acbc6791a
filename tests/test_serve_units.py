"""serve's parts without HTTP: request translation (edgellm.serve.translate) on the scripted
engine, and the engine host's capacity() snapshot, job admission, unload and reload
(edgellm.serve.host). test_serve_inprocess.py and test_serve*.py cover them through HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from fake_engine import FakeEngine, run_until_idle

from edgellm.errors import ContextOverflowError
from edgellm.runtime.types import Prompt, SamplingParams
from edgellm.serve.config import ServerConfig
from edgellm.serve.errors import APIError
from edgellm.serve.host import EngineHost
from edgellm.serve.metrics import Metrics
from edgellm.serve.schemas import ChatCompletionRequest, CompletionRequest
from edgellm.serve.translate import Translator, check_size, fit_history, template_variables

USER = [{"role": "user", "content": "hi"}]


def chat_body(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": USER, **fields}, strict=True)


def refusal(call: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        call()
    return caught.value


# --- translation ----------------------------------------------------------------------------------


def test_sampling_takes_the_request_values_and_the_server_limit() -> None:
    translate = Translator(ServerConfig(model_id="m", max_tokens_limit=100))
    body = chat_body(temperature=0.0, top_k=5, seed=7, stop="END", max_tokens=20)
    params = translate.sampling(body, body.max_tokens)
    assert (params.max_tokens, params.temperature, params.top_k, params.seed, params.stop) == (20, 0.0, 5, 7, ["END"])
    assert params.top_p == SamplingParams().top_p  # not sent: the default
    assert translate.sampling(chat_body(), None).max_tokens == 100  # no max_tokens: the server's limit
    too_many = refusal(lambda: translate.sampling(chat_body(), 101))
    assert (too_many.status, too_many.param) == (400, "max_tokens")


def test_sampling_refuses_another_model_and_unsupported_fields() -> None:
    translate = Translator(ServerConfig(model_id="m"))
    other = refusal(lambda: translate.sampling(chat_body(model="other"), None))
    assert (other.status, other.code) == (404, "model_not_found")
    bias = refusal(lambda: translate.sampling(chat_body(logit_bias={"1": 1.0}), None))
    assert (bias.param, bias.code) == ("logit_bias", "unsupported_parameter")


def test_unknown_fields_are_noted_once_each() -> None:
    translate = Translator(ServerConfig(model_id="m"))
    translate.sampling(chat_body(mirostat=2), None)
    translate.sampling(chat_body(mirostat=2, typical_p=0.5), None)
    assert translate.ignored_fields == {"mirostat", "typical_p"}


def test_chat_input_checks_the_combinations_and_names_the_grammar_field() -> None:
    engine = FakeEngine(slots=1)
    translate = Translator(ServerConfig(model_id="m", think_budget=50))
    chat = translate.chat(chat_body(reasoning_effort="low"), engine, 4096, engine.max_piece_bytes)
    assert chat.messages == USER and chat.param == "grammar"
    assert chat.params.think_budget == 256 and not chat.params.no_think
    assert translate.chat(chat_body(), engine, 4096, 4).params.think_budget == 50  # the server's budget
    json_reply = translate.chat(chat_body(response_format={"type": "json_object"}), engine, 4096, 4)
    assert json_reply.param == "response_format" and json_reply.params.grammar_is_answer and json_reply.params.grammar
    both = refusal(lambda: translate.chat(chat_body(response_format={"type": "json_object"}, grammar='root ::= "a"'), engine, 4096, 4))
    assert (both.status, both.param) == (400, "grammar")
    effort = refusal(lambda: translate.chat(chat_body(reasoning_effort="huge"), engine, 4096, 4))
    assert effort.param == "reasoning_effort"


def test_chat_input_refuses_what_cannot_fit_before_any_template_work() -> None:
    engine = FakeEngine(slots=1)
    translate = Translator(ServerConfig(model_id="m"))
    big = chat_body(messages=[{"role": "user", "content": "x" * 100}])
    refused = refusal(lambda: translate.chat(big, engine, 16, 4))  # 100 characters > 16 tokens x 4 bytes
    assert (refused.param, refused.code) == ("messages", "context_length_exceeded")
    with pytest.raises(APIError, match="3 messages cannot fit a context of 3 tokens"):
        check_size(3, 3, "messages", 3, 4)


def test_template_variables_keep_the_templates_own_inputs() -> None:
    assert template_variables({"enable_thinking": False}) == {"enable_thinking": False}
    assert template_variables(None) == {}
    assert refusal(lambda: template_variables({"messages": "x"})).param == "chat_template_kwargs"


def test_completion_takes_one_prompt_and_keeps_the_tags() -> None:
    translate = Translator(ServerConfig(model_id="m"))
    text, params = translate.completion(CompletionRequest.model_validate({"prompt": ["Once"]}, strict=True), 4096, 4)
    assert text == "Once" and params.split_reasoning is False
    assert refusal(lambda: translate.completion(CompletionRequest.model_validate({"prompt": ""}), 4096, 4)).param == "prompt"
    echo = refusal(lambda: translate.completion(CompletionRequest.model_validate({"prompt": "a", "echo": True}), 4096, 4))
    assert echo.code == "unsupported_parameter"


def test_fit_history_drops_the_oldest_turns_and_keeps_the_system_prompt() -> None:
    engine = FakeEngine(slots=1)
    messages = [{"role": "system", "content": "be brief"}]
    for turn in range(10):
        messages += [{"role": "user", "content": f"question {turn} " + "x" * 40},
                     {"role": "assistant", "content": f"answer {turn} " + "y" * 40}]
    prompt, dropped = fit_history(engine, messages, slot_ctx=400, max_tokens=100)
    assert dropped > 0 and dropped % 2 == 0  # whole turns, restarting at a user message
    text = "".join(chr(token) for token in prompt.tokens)
    assert text.startswith("system: be brief\nuser: question ") and "question 9" in text
    assert len(prompt.tokens) <= 400 - 100  # room for the reply
    kept, none = fit_history(engine, messages[:3], slot_ctx=400, max_tokens=100)
    assert none == 0 and isinstance(kept, Prompt)
    with pytest.raises(ContextOverflowError, match="a slot holds 400"):
        fit_history(engine, messages, slot_ctx=400, max_tokens=100, drop_oldest=False)


def test_translator_fit_follows_truncate() -> None:
    engine = FakeEngine(slots=1)
    long_chat = chat_body(messages=[{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": "again"}], max_tokens=50)
    for truncate, expected in (("oldest", 2), ("error", None)):
        translate = Translator(ServerConfig(model_id="m", truncate=truncate))
        chat = translate.chat(long_chat, engine, 200, 4)
        if expected is None:
            with pytest.raises(ContextOverflowError):
                translate.fit(chat, engine, 200)
        else:
            assert translate.fit(chat, engine, 200)[1] == expected


# --- the engine host ------------------------------------------------------------------------------


def test_capacity_is_a_frozen_snapshot_of_the_scheduler() -> None:
    engine = FakeEngine(slots=2, n_ctx=1024)
    host = EngineHost(engine, queue_size=1, metrics=Metrics())
    room = host.capacity()
    assert (room.loaded, room.slots, room.slot_ctx, room.busy, room.waiting, room.jobs) == (True, 2, 512, 0, 0, 0)
    assert room.heartbeat_age is not None and 0 <= room.heartbeat_age < 60
    assert host.capacity(now=engine.scheduler.heartbeat + 3.0).heartbeat_age == pytest.approx(3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        room.busy = 1  # type: ignore[misc]
    engine.close()


def test_start_job_counts_in_capacity_and_refuses_beyond_slots_plus_queue() -> None:
    engine = FakeEngine("hello", slots=1)
    metrics = Metrics()
    host = EngineHost(engine, queue_size=0, metrics=metrics)

    async def scenario() -> None:
        job = host.start_job(Prompt([ord("a")], False, False), SamplingParams(max_tokens=4), "req-1")
        assert host.capacity().waiting == 1 and host.capacity().jobs == 1
        full = refusal(lambda: host.start_job(Prompt([ord("b")], False, False), SamplingParams(max_tokens=4)))
        assert (full.status, full.code, full.headers["Retry-After"]) == (503, "queue_full", "5")
        run_until_idle(engine.scheduler)  # the generation thread's work, here in this thread
        await job.wait_finished()
        assert job.result.answer == "hell"
        room = host.capacity()
        assert (room.busy, room.waiting, room.jobs) == (0, 0, 0)
        host.drain()
        draining = refusal(lambda: host.start_job(Prompt([ord("c")], False, False), SamplingParams()))
        assert (draining.status, draining.code) == (503, "shutting_down")

    asyncio.run(scenario())
    assert metrics.generations == 1 and metrics.generated_tokens == 4
    engine.close()


def test_idle_unload_frees_the_engine_and_a_request_loads_it_again() -> None:
    first = FakeEngine(slots=2)
    loads: list[FakeEngine] = []

    def load() -> FakeEngine:
        loads.append(FakeEngine(slots=2))
        return loads[-1]

    host = EngineHost(first, queue_size=1, metrics=Metrics(), load_engine=load, idle_unload_s=0.01)  # type: ignore[arg-type]

    async def scenario() -> None:
        host.start()
        host.last_used = time.monotonic() - 1
        assert host.should_unload(time.monotonic())
        await host.unload()
        room = host.capacity()
        assert (room.loaded, room.slots, room.busy, room.waiting, room.heartbeat_age) == (False, 2, 0, 0, None)
        assert host.describe_slots() == []
        with pytest.raises(APIError, match="not loaded"):
            _ = host.loaded_engine
        async with host.in_use():
            assert host.loaded_engine is loads[0] and host.capacity().loaded
            assert not host.should_unload(time.monotonic() + 10)  # a request is using it
        await host.close()

    asyncio.run(scenario())
    assert host.metrics.model_unloads == 1 and host.metrics.model_reloads == 1
    assert first.backend.closed and loads[0].backend.closed


def test_the_servers_reasoning_budget_is_the_profiles_whatever_model_it_started_with() -> None:
    """Without -m the budget came from the first model's plan, which has none for a model that does
    not reason: a reasoning model served beside it then reasoned without a budget."""
    from edgellm.cli.options import serve_thinking
    from edgellm.device.profiles import load_profiles

    pi = next(profile for profile in load_profiles() if profile.name == "raspberry-pi-5")
    assert pi.think_budget == 512
    assert serve_thinking(pi, None, None)["think_budget"] == 512
    assert serve_thinking(pi, 64, None)["think_budget"] == 64
