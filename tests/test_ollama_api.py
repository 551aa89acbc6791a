"""Ollama's API on serve's port (edgellm.serve.ollama): the translation alone (pure), the app
in-process on the scripted engine, and a real `edgellm serve` process on tiny GGUF models with real
chat templates, through the real `ollama` client (sync and async, called the way Home Assistant's
integration calls it) and through httpx the way Open WebUI's Ollama connection calls it.

Random weights write noise: where a test needs exact text it constrains the reply (options.grammar,
a `format` schema of enums, a forced tool call with options.tool_choice)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import ollama
import pytest
from fake_engine import FakeEngine
from test_serve import THINK_GRAMMAR, ServerProcess
from test_serve_inprocess import start
from test_toolcalls_models import FAMILIES, model_for

from edgellm.runtime.types import GenerationStats, SamplingParams, TextEvent
from edgellm.serve.config import ServerConfig
from edgellm.serve.errors import APIError
from edgellm.serve.ollama_schemas import OllamaChatRequest, OllamaGenerateRequest, OllamaMessage
from edgellm.serve.ollama_translate import (
    FOREVER,
    Chunks,
    OllamaTranslator,
    metrics,
    names_match,
    ollama_name,
    parse_keep_alive,
    template_messages,
)
from edgellm.text.toolcalls.parser import ToolCallArguments, ToolCallEnd, ToolCallStart

USER = [{"role": "user", "content": "What is six times seven?"}]
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Oslo", "Paris", "Lima"], "description": "The city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
# As Home Assistant sends its tools: OpenAI-shaped function tools (its HassTurnOn and friends).
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now", "parameters": {"type": "object", "properties": {}}}},
]
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
}


def refusal(call: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        call()
    return caught.value


# --- the translation, pure ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    (None, 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("300ms", 0.3), ("1.5s", 1.5), ("-1s", FOREVER), (-1, FOREVER),
    (0, 0.0), ("0", 0.0), ("0s", 0.0), (90, 90.0), (2.5, 2.5), ("300", 300.0), ("-5m", FOREVER),
])
def test_keep_alive_reads_go_durations_seconds_and_forever(value: Any, seconds: float) -> None:
    assert parse_keep_alive(value, 300.0) == seconds


@pytest.mark.parametrize("value", ["forever", "5 minutes", "", "5x", "m", True, "1e400s", "5m3"])
def test_a_bad_keep_alive_is_a_400_that_names_it(value: Any) -> None:
    error = refusal(lambda: parse_keep_alive(value, 300.0))
    assert error.status == 400 and error.param == "keep_alive"


def test_model_names_as_ollama_writes_them() -> None:
    assert ollama_name("tiny-8k") == "tiny-8k:latest"
    assert ollama_name("qwen2.5:0.5b") == "qwen2.5:0.5b"
    assert names_match("tiny-8k:latest", "tiny-8k") and names_match("TINY-8K", "tiny-8k") and names_match("tiny-8k", "tiny-8k")
    assert not names_match("tiny", "tiny-8k") and not names_match("", "tiny-8k") and not names_match("tiny-8k:q4", "tiny-8k")


def chat_body(**fields: Any) -> OllamaChatRequest:
    return OllamaChatRequest.model_validate({"model": "fake", "messages": USER, **fields}, strict=True)


def test_options_become_sampling_params() -> None:
    translate = OllamaTranslator(ServerConfig(model_id="fake", max_tokens_limit=500))
    params, choice = translate.sampling(chat_body(options={
        "num_predict": 20, "temperature": 0, "top_k": 5, "top_p": 0.5, "min_p": 0.1, "typical_p": 0.9, "repeat_penalty": 1.2,
        "repeat_last_n": -1, "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 7, "stop": ["END"], "num_ctx": 8192,
        "tool_choice": "required"}), slot_ctx=1024)
    assert (params.max_tokens, params.temperature, params.top_k, params.top_p, params.min_p, params.typical_p) == (20, 0.0, 5, 0.5, 0.1, 0.9)
    assert (params.repeat_penalty, params.penalty_last_n, params.presence_penalty, params.frequency_penalty) == (1.2, 1024, 0.5, -0.5)
    assert (params.seed, params.stop, choice) == (7, ["END"], "required")
    # Ollama's own defaults for "unset": num_predict -1 (as long as allowed), seed -1 (random); JSON's 8192.0 is 8192.
    params, choice = translate.sampling(chat_body(options={"num_predict": -1, "seed": -1, "stop": "x", "num_ctx": 8192.0}), 1024)
    assert (params.max_tokens, params.seed, params.stop, choice) == (500, None, ["x"], None)
    assert translate.sampling(chat_body(options={"num_predict": 100_000}), 1024)[0].max_tokens == 500  # clamped, as Ollama never refuses it
    defaults = SamplingParams()
    plain = translate.sampling(chat_body(), 1024)[0]
    assert (plain.temperature, plain.top_p, plain.penalty_last_n) == (defaults.temperature, defaults.top_p, 64)


@pytest.mark.parametrize(("options", "name"), [
    ({"temperature": "hot"}, "temperature"), ({"top_k": 1.5}, "top_k"), ({"top_p": 2}, "top_p"), ({"stop": [1]}, "stop"),
    ({"seed": True}, "seed"), ({"num_predict": "10"}, "num_predict"), ({"repeat_last_n": -2}, "repeat_last_n"),
    ({"grammar": 5}, "grammar"), ({"temperature": 1e400}, "temperature"),
])
def test_a_bad_option_is_a_400_that_names_it(options: dict[str, Any], name: str) -> None:
    translate = OllamaTranslator(ServerConfig(model_id="fake"))
    error = refusal(lambda: translate.sampling(chat_body(options=options), 1024))
    assert (error.status, error.param) == (400, f"options.{name}")


def test_unknown_and_ignored_options_are_noted_once_never_refused(capsys: pytest.CaptureFixture[str]) -> None:
    translate = OllamaTranslator(ServerConfig(model_id="fake"))
    for _ in range(3):
        translate.sampling(chat_body(options={"num_thread": 4, "mirostat": 1, "flux_capacitor": 1, "num_ctx": 99999}, extra_field=1), 1024)
    err = capsys.readouterr().err
    assert err.count("options.num_thread (the plan decides the threads)") == 1
    assert err.count("options.mirostat") == 1 and err.count("options.flux_capacitor") == 1
    assert err.count("options.num_ctx 99999 is more than a slot's context (1024 tokens)") == 1
    assert err.count("'extra_field'") == 1


def test_think_maps_to_reasoning_budgets() -> None:
    config = ServerConfig(model_id="fake", think_budget=None, effort_budgets={"low": 11, "medium": 22, "high": 33})
    translate = OllamaTranslator(config)

    def budget(think: Any, *, thinks: bool = True, answer_grammar: bool = False) -> tuple[int | None, bool]:
        params = SamplingParams(grammar_is_answer=answer_grammar)
        translate.thinking(think, params, thinks=thinks, model="m")
        return params.think_budget, params.no_think

    assert budget(None) == (None, False)  # a reasoning model reasons, as Ollama's thinking models do
    assert budget(False) == (None, True) and budget(False, thinks=False) == (None, True)
    assert budget(True) == (None, False) and budget("low") == (11, False) and budget("medium") == (22, False)
    assert budget("high") == (33, False) and budget("max") == (None, False)
    assert budget(True, answer_grammar=True) == (22, False)  # the JSON follows a budgeted reasoning
    assert budget("max", answer_grammar=True) == (33, False)
    assert budget(None, thinks=False) == (None, False)
    assert refusal(lambda: budget(True, thinks=False)).message == '"m" does not support thinking'
    assert refusal(lambda: budget("extreme")).param == "think"
    assert budget(None) == (None, False) and OllamaTranslator(ServerConfig(model_id="m", think_budget=9)).config.think_budget == 9


def test_messages_reach_the_template_in_its_shape() -> None:
    messages = [OllamaMessage.model_validate(m) for m in [
        {"role": "System", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}]},
        {"role": "tool", "content": json.dumps({"data": {"temp": 3}, "error": None}), "tool_name": "get_weather"},
    ]]
    shaped = template_messages(messages)
    assert shaped[0] == {"role": "system", "content": "be brief"}  # roles are lower-cased, as Ollama does
    assert shaped[2] == {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}]}
    assert shaped[3] == {"role": "tool", "content": '{"data": {"temp": 3}, "error": null}', "name": "get_weather"}
    assert refusal(lambda: template_messages([OllamaMessage(role="robot", content="x")])).param == "messages.0.role"
    assert refusal(lambda: template_messages([OllamaMessage(role="user", content="x", images=["aGk="])])).param == "messages.0.images"


def test_events_become_ollama_objects_with_calls_as_objects() -> None:
    chunks = Chunks("m", chat=True)
    assert chunks.pieces(TextEvent("reasoning", "hm")) == [("thinking", "hm")]
    assert chunks.pieces(TextEvent("answer", "Hi")) == [("content", "Hi")]
    assert chunks.pieces(ToolCallStart(0, "call_1", "get_weather")) == []
    assert chunks.pieces(ToolCallArguments(0, '{"city": ')) == [] and chunks.pieces(ToolCallArguments(0, '"Oslo"}')) == []
    [(field, call)] = chunks.pieces(ToolCallEnd(0))
    assert field == "tool_calls" and call == {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}}
    line = chunks.chunk({"content": "Hi", "thinking": "hm"})
    assert line["message"] == {"role": "assistant", "content": "Hi", "thinking": "hm"} and line["done"] is False
    assert line["created_at"].endswith("Z") and line["model"] == "m"
    generated = Chunks("m", chat=False).last({"content": "x"}, "stop", {"eval_count": 1})
    assert (generated["response"], generated["done"], generated["done_reason"], generated["eval_count"]) == ("x", True, "stop", 1)


def test_metrics_are_nanoseconds_and_never_divide_by_zero() -> None:
    stats = GenerationStats(prompt_tokens=26, generated_tokens=10, ttft_s=0.25, gen_tps=20.0)
    counts = metrics(stats, 10, total_s=1.0, load_s=0.125)
    assert counts == {"total_duration": 1_000_000_000, "load_duration": 125_000_000, "prompt_eval_count": 26,
                      "prompt_eval_duration": 250_000_000, "eval_count": 10, "eval_duration": 500_000_000}
    tiny = metrics(GenerationStats(prompt_tokens=3, ttft_s=0.0), 1, total_s=0.0, load_s=0.0)
    assert tiny["prompt_eval_duration"] >= 1 and tiny["eval_duration"] >= 1 and tiny["total_duration"] >= 1


def test_generate_without_fim_tokens_refuses_a_suffix_and_takes_raw_text() -> None:
    translate = OllamaTranslator(ServerConfig(model_id="fake"))
    engine = FakeEngine()

    def body(**fields: Any) -> OllamaGenerateRequest:
        return OllamaGenerateRequest.model_validate({"model": "fake", "prompt": "def f(", **fields}, strict=True)

    error = refusal(lambda: translate.generate(body(suffix="return 1"), engine, 1024, 4))  # type: ignore[arg-type]
    assert error.param == "suffix" and "fill-in-the-middle" in error.message
    assert refusal(lambda: translate.generate(body(images=["aGk="]), engine, 1024, 4)).param == "images"  # type: ignore[arg-type]
    assert refusal(lambda: translate.generate(body(template="{{ .Prompt }}"), engine, 1024, 4)).param == "template"  # type: ignore[arg-type]
    raw = translate.generate(body(raw=True), engine, 1024, 4)  # type: ignore[arg-type]
    assert raw.text == "def f(" and raw.params.split_reasoning is False
    chat = translate.generate(body(system="be brief"), engine, 1024, 4)  # type: ignore[arg-type]
    assert chat.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "def f("}]
    fim = translate.generate(body(suffix="return 1"), FakeEngine(fim=True), 1024, 4)  # type: ignore[arg-type]
    assert fim.fim == ("def f(", "return 1")


# --- in-process, on the scripted engine ---------------------------------------------------------------


def test_the_ollama_client_lists_shows_and_chats_in_process() -> None:
    with start(FakeEngine("Hello there, friend.", slots=2)) as running:
        client = ollama.Client(host=running.url, timeout=30)
        assert [m.model for m in client.list().models] == ["fake:latest"]
        shown = client.show("fake")
        assert shown.capabilities == ["completion", "tools"] and shown.details is not None and shown.details.format == "gguf"
        assert [m.model for m in client.ps().models] == ["fake:latest"]
        parts = list(client.chat(model="fake:latest", messages=USER, stream=True))
        assert "".join(p.message.content or "" for p in parts) == "Hello there, friend."
        assert parts[-1].done and parts[-1].done_reason == "stop" and parts[-1].eval_count == len("Hello there, friend.")
        whole = client.chat(model="fake", messages=USER, options={"stop": [", friend"]})
        assert whole.message.content == "Hello there" and whole.done_reason == "stop"
        assert client.generate(model="fake", prompt="x").response == "Hello there, friend."
        with pytest.raises(ollama.ResponseError) as missing:
            client.chat(model="llama3.2", messages=USER)
        assert missing.value.status_code == 404 and missing.value.error == "model 'llama3.2' not found"
        assert httpx.get(running.url + "/api/version").json() == {"version": "0.12.0"}
        # The server is still serving, and /metrics counts Ollama's paths by name.
        metrics_text = httpx.get(running.url + "/metrics").text
        assert 'path="/api/chat",status="200"' in metrics_text and 'path="/api/chat",status="404"' in metrics_text


def test_fill_in_the_middle_in_process() -> None:
    engine = FakeEngine("    x = 1\n", fim=True)
    with start(engine) as running:
        reply = ollama.Client(host=running.url, timeout=30).generate(model="fake", prompt="def f():\n", suffix="    return x\n")
        assert "insert" in ollama.Client(host=running.url, timeout=30).show("fake").capabilities  # type: ignore[operator]
    assert reply.response == "    x = 1\n"
    assert engine.backend.prompts[-1] == "<PRE>def f():\n<SUF>    return x\n<MID>"


def test_key_host_check_and_body_rules_apply_to_the_ollama_api() -> None:
    with start(FakeEngine("ok"), api_key="sk-test", allowed_hosts=[], max_body_bytes=2048) as running:
        url = running.url
        assert httpx.get(url + "/").text == "Ollama is running"  # probes need no key, as /health
        assert httpx.get(url + "/api/version").status_code == 200
        denied = httpx.get(url + "/api/tags")
        assert denied.status_code == 401 and "API key" in denied.json()["error"]
        keyed = ollama.Client(host=url, headers={"Authorization": "Bearer sk-test"}, timeout=30)
        assert keyed.list().models[0].model == "fake:latest"
        rebinding = httpx.get(url + "/api/tags", headers={"Host": "evil.example", "Authorization": "Bearer sk-test"})
        assert rebinding.status_code == 403 and "not allowed" in rebinding.json()["error"]
        key = {"Authorization": "Bearer sk-test"}
        big = httpx.post(url + "/api/chat", headers=key, json={"model": "fake", "messages": [{"role": "user", "content": "x" * 4000}]})
        assert big.status_code == 413 and "larger than 2048 bytes" in big.json()["error"]
        # curl -d sends Ollama's documented examples as a form: read as JSON, unless a browser sent it.
        body = json.dumps({"model": "fake", "prompt": "hi", "stream": False})
        form = {**key, "Content-Type": "application/x-www-form-urlencoded"}
        assert httpx.post(url + "/api/generate", headers=form, content=body).json()["response"] == "ok"
        page = httpx.post(url + "/api/generate", headers={**form, "Origin": "http://evil.example"}, content=body)
        assert page.status_code == 415 and "Content-Type" in page.json()["error"]


def test_a_client_that_leaves_mid_stream_frees_its_slot() -> None:
    engine = FakeEngine("word " * 400, slots=1, step_seconds=0.01)
    with start(engine) as running:
        with httpx.stream("POST", running.url + "/api/chat", json={"model": "fake", "messages": USER}, timeout=30) as response:
            first = json.loads(next(response.iter_lines()))
            assert first["done"] is False and first["message"]["content"]
        # Gone after one line: the one slot must come free for the next request long before 400 steps.
        started = time.monotonic()
        reply = ollama.Client(host=running.url, timeout=30).generate(model="fake", prompt="x", options={"num_predict": 3})
        assert reply.eval_count == 3 and time.monotonic() - started < 3.5


def test_a_failure_after_the_stream_began_is_its_last_line() -> None:
    engine = FakeEngine("word " * 50, slots=1)
    original = engine.backend.decode

    def failing() -> int:
        status = original()
        return -1 if engine.backend.decodes > 5 else status  # llama_decode fails a few tokens in

    engine.backend.decode = failing  # type: ignore[method-assign]
    with start(engine) as running:
        with httpx.stream("POST", running.url + "/api/chat", json={"model": "fake", "messages": USER}, timeout=30) as response:
            assert response.status_code == 200
            lines = [json.loads(line) for line in response.iter_lines() if line]
        assert lines[0]["message"]["content"] and "llama_decode failed" in lines[-1]["error"]
        assert not any(line.get("done") for line in lines)
        with pytest.raises(ollama.ResponseError, match="llama_decode failed"):
            list(ollama.Client(host=running.url, timeout=30).chat(model="fake", messages=USER, stream=True))


def test_keep_alive_zero_keeps_a_model_that_cannot_be_loaded_again(capsys: pytest.CaptureFixture[str]) -> None:
    with start(FakeEngine("ok")) as running:  # no load_engine: an unload could not be undone
        client = ollama.Client(host=running.url, timeout=30)
        assert client.generate(model="fake", keep_alive=0).done_reason == "unload"
        assert client.chat(model="fake", messages=USER, keep_alive=0).message.content == "ok"
        assert [m.model for m in client.ps().models] == ["fake:latest"]
    assert capsys.readouterr().err.count("this server cannot load it again") == 1


# --- a real `edgellm serve` process: the tiny R1-template model ------------------------------------------


@pytest.fixture(scope="module")
def served(tiny_8k: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tiny_8k, "--queue", "4", home=tmp_path_factory.mktemp("home"), ctx="4096")
    yield process
    assert process.stop() == 0, process.stderr


@pytest.fixture()
def client(served: ServerProcess) -> ollama.Client:
    return ollama.Client(host=served.root, timeout=120)


def alive(server: ServerProcess) -> None:
    assert httpx.get(server.root + "/api/version", timeout=30).json() == {"version": "0.12.0"}


def test_list_show_and_ps_describe_the_gguf(client: ollama.Client, served: ServerProcess, tiny_8k: Path) -> None:
    import hashlib

    [listed] = client.list().models
    assert listed.model == "tiny-8k:latest" and listed.size == tiny_8k.stat().st_size
    assert listed.digest == hashlib.sha256(tiny_8k.read_bytes()).hexdigest()
    assert listed.details is not None and (listed.details.format, listed.details.family, listed.details.quantization_level) == ("gguf", "qwen2", "F32")
    assert listed.details.parameter_size and listed.details.parameter_size[-1] in "KMB"
    raw = httpx.get(served.root + "/api/tags").json()["models"][0]
    assert raw["name"] == raw["model"] == "tiny-8k:latest"  # Open WebUI needs both
    shown = client.show("tiny-8k:latest")
    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert shown.template and "<｜Assistant｜>" in shown.template
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "qwen2"
    assert shown.modelinfo["qwen2.context_length"] == 8192 and shown.parameters and "num_ctx" in shown.parameters
    [running] = client.ps().models
    assert running.model == "tiny-8k:latest" and running.size_vram == 0 and running.context_length == 4096
    assert running.expires_at is not None and running.expires_at.year > 2100  # no --idle-unload: never
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("llama3.2")
    assert missing.value.status_code == 404


def test_help_and_the_start_line_say_where_ollamas_api_is(served: ServerProcess) -> None:
    from conftest import run_cli

    result = run_cli("serve", "--help", COLUMNS="200")
    assert result.returncode == 0
    assert b"Ollama's API on the same port" in result.stdout and b"--port 11434" in result.stdout
    assert f"{served.root}/api (Ollama's API, as tiny-8k:latest)" in served.stderr


def test_streamed_chat_ends_with_ollamas_metrics(client: ollama.Client) -> None:
    parts = list(client.chat(model="tiny-8k", messages=USER, stream=True, options={"num_predict": 12, "seed": 1}))
    *pieces, last = parts
    assert pieces and all(not p.done for p in pieces) and last.done
    assert last.done_reason == "length" and last.eval_count == 12
    assert last.prompt_eval_count and last.prompt_eval_count > 5
    assert last.total_duration and last.eval_duration and last.prompt_eval_duration and last.load_duration is not None
    assert last.total_duration >= last.eval_duration  # nanoseconds, all of them
    # The template opened <think> and think was not sent: a reasoning model reasons, into `thinking`.
    assert "".join((p.message.thinking or "") + (p.message.content or "") for p in pieces)


def test_think_true_puts_the_reasoning_in_thinking(client: ollama.Client) -> None:
    reply = client.chat(model="tiny-8k", messages=USER, think=True, options={"grammar": THINK_GRAMMAR})
    assert (reply.message.thinking, reply.message.content, reply.done_reason) == ("Thinking it over.", "The answer is 42.", "stop")
    streamed = list(client.chat(model="tiny-8k", messages=USER, think=True, stream=True, options={"grammar": THINK_GRAMMAR}))
    assert "".join(p.message.thinking or "" for p in streamed) == "Thinking it over."
    assert "".join(p.message.content or "" for p in streamed) == "The answer is 42."
    assert not any(p.message.thinking and p.message.content for p in streamed)  # never both in one object


def test_think_false_skips_the_reasoning(client: ollama.Client) -> None:
    ask = {"model": "tiny-8k", "messages": USER, "options": {"num_predict": 24, "seed": 3, "temperature": 0}}
    thought = client.chat(**ask, think=True)  # type: ignore[arg-type]
    skipped = client.chat(**ask, think=False)  # type: ignore[arg-type]
    # 24 noise tokens rarely close <think>: with think they are reasoning; without, all of it is the answer.
    assert thought.message.thinking and not skipped.message.thinking
    assert skipped.message.content and skipped.eval_count == 24
    low = client.chat(**ask, think="low")  # type: ignore[arg-type]
    assert low.message.thinking


def test_format_schema_answers_json_that_validates(client: ollama.Client) -> None:
    reply = client.chat(model="tiny-8k", messages=[{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
                        format=ANSWER_SCHEMA, options={"seed": 5, "num_predict": 200})
    jsonschema.validate(json.loads(reply.message.content or ""), ANSWER_SCHEMA)
    assert not reply.message.thinking  # the JSON is the answer: no budget, no reasoning first
    # Greedy: for this prompt (as test_serve.py's JSON mode) the random-weight model closes its object.
    anything = client.generate(model="tiny-8k", prompt="What is two plus two?", format="json", options={"temperature": 0, "num_predict": 400})
    assert isinstance(json.loads(anything.response or ""), dict)


def test_generate_applies_the_template_and_raw_does_not(client: ollama.Client) -> None:
    reply = client.generate(model="tiny-8k", prompt="hi", system="be brief", options={"grammar": THINK_GRAMMAR})
    assert (reply.thinking, reply.response) == ("Thinking it over.", "The answer is 42.")
    raw = client.generate(model="tiny-8k", prompt="hi", raw=True, options={"grammar": THINK_GRAMMAR})
    assert raw.response == "Thinking it over.</think>The answer is 42." and not raw.thinking  # the text as written
    streamed = list(client.generate(model="tiny-8k", prompt="hi", stream=True, options={"num_predict": 5}))
    assert streamed[-1].done and streamed[-1].eval_count == 5 and streamed[-1].done_reason == "length"
    with pytest.raises(ollama.ResponseError) as fim:
        client.generate(model="tiny-8k", prompt="def f(", suffix="return 1")
    assert fim.value.status_code == 400 and "fill-in-the-middle" in fim.value.error


def test_async_client_as_home_assistant_calls_it(served: ServerProcess) -> None:
    async def run() -> tuple[list[str], str, str]:
        client = ollama.AsyncClient(host=served.root, timeout=120)
        names = [m.model or "" for m in (await client.list()).models]
        stream = await client.chat(model="tiny-8k:latest", messages=USER, tools=TOOLS, stream=True, keep_alive="-1s",
                                   options={"num_ctx": 8192, "grammar": THINK_GRAMMAR, "tool_choice": "none"}, think=True)
        thinking, content = "", ""
        async for part in stream:
            thinking += part.message.thinking or ""
            content += part.message.content or ""
        return names, thinking, content

    names, thinking, content = asyncio.run(run())
    assert names == ["tiny-8k:latest"] and (thinking, content) == ("Thinking it over.", "The answer is 42.")
    assert "options.num_ctx 8192 is more than a slot's context (4096 tokens)" in served.stderr


def test_open_webui_calls(served: ServerProcess) -> None:
    root = served.root
    assert httpx.get(root + "/api/version").json()["version"].count(".") == 2
    assert [m["model"] for m in httpx.get(root + "/api/tags").json()["models"]] == ["tiny-8k:latest"]
    assert [m["name"] for m in httpx.get(root + "/api/ps").json()["models"]] == ["tiny-8k:latest"]
    body = {"model": "tiny-8k:latest", "messages": [{"role": "system", "content": "You are helpful."}, *USER], "stream": True,
            "keep_alive": "5m", "think": True, "format": None,
            "options": {"num_ctx": 2048, "num_predict": 100, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "min_p": 0.05,
                        "repeat_penalty": 1.1, "stop": ["<|im_end|>"], "grammar": THINK_GRAMMAR}}
    lines = []
    with httpx.stream("POST", root + "/api/chat", json=body, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert all(line["model"] == "tiny-8k:latest" and "created_at" in line for line in lines)
    assert [line["done"] for line in lines].count(True) == 1 and lines[-1]["done"]
    assert "".join(line["message"].get("thinking", "") for line in lines) == "Thinking it over."
    assert "".join(line["message"]["content"] for line in lines) == "The answer is 42."


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"model": "llama3.2", "messages": USER}, 404, "model 'llama3.2' not found"),
    ({"messages": USER}, 400, "model is required"),
    ({"model": "tiny-8k", "messages": USER, "keep_alive": "forever"}, 400, "keep_alive 'forever' is not a duration"),
    ({"model": "tiny-8k", "messages": USER, "keep_alive": True}, 400, "keep_alive"),
    ({"model": "tiny-8k", "messages": "hello"}, 400, "messages"),
    ({"model": "tiny-8k", "messages": [{"content": "no role"}]}, 400, "missing field 'messages.0.role'"),
    ({"model": "tiny-8k", "messages": [{"role": "robot", "content": "x"}]}, 400, "role must be system, user, assistant or tool"),
    ({"model": "tiny-8k", "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ({"model": "tiny-8k", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, 400, "this model reads text only"),
    ({"model": "tiny-8k", "messages": USER, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, 400, "function.name"),
    ({"model": "tiny-8k", "messages": USER, "format": "xml"}, 400, "format must be"),
    ({"model": "tiny-8k", "messages": USER, "format": {"type": "object", "patternProperties": {"a": {}}}}, 400, "schema"),
    ({"model": "tiny-8k", "messages": USER, "think": "extreme"}, 400, "think must be"),
    ({"model": "tiny-8k", "messages": USER, "options": {"temperature": "hot"}}, 400, "options.temperature"),
    ({"model": "tiny-8k", "messages": USER, "options": {"grammar": "root ::= nope"}}, 400, "grammar"),
    ({"model": "tiny-8k", "messages": USER, "tools": TOOLS, "format": "json", "options": {"tool_choice": "required"}}, 400,
     "use either tools or format"),
    ({"model": "tiny-8k", "messages": [{"role": "user", "content": "x" * 200_000}]}, 400, "cannot fit"),
])
def test_bad_input_is_a_clear_error_and_the_server_lives(served: ServerProcess, body: dict[str, Any], status: int, words: str) -> None:
    response = httpx.post(served.root + "/api/chat", json=body, timeout=120)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and words in error, error
    alive(served)


def test_bad_bodies_anywhere_are_clear_errors(served: ServerProcess) -> None:
    root = served.root
    cases = [
        ("/api/chat", b"[1, 2]", 400), ("/api/chat", b"{not json", 400), ("/api/generate", b'{"model": "tiny-8k", "prompt": 5}', 400),
        ("/api/show", b"{}", 400), ("/api/show", b'{"model": 7}', 400), ("/api/chat", b"[" * 100 + b"]" * 100, 400),
        ("/api/pull", b'{"model": "no-such-model"}', 404), ("/api/pull", b'{"model": "../x.gguf"}', 404),
        ("/api/create", b"{}", 501), ("/api/embed", b'{"model": "tiny-8k"}', 501),
        ("/api/embeddings", b"{}", 501), ("/api/copy", b"{}", 501), ("/api/push", b"{}", 501), ("/api/blobs/sha256:00", b"", 501),
    ]
    for path, raw, status in cases:
        response = httpx.post(root + path, content=raw, headers={"Content-Type": "application/json"}, timeout=60)
        assert response.status_code == status, (path, raw[:40], response.text)
        assert isinstance(response.json()["error"], str) and response.json()["error"]
    deleted = httpx.request("DELETE", root + "/api/delete", json={"model": "tiny-8k"})
    assert deleted.status_code == 400 and "not a downloaded model" in deleted.json()["error"]
    alive(served)


def test_pull_of_the_served_model_succeeds_at_once(client: ollama.Client) -> None:
    assert client.pull("tiny-8k").status == "success"
    assert [p.status for p in client.pull("tiny-8k:latest", stream=True)] == ["pulling manifest", "success"]
    with pytest.raises(ollama.ResponseError) as offline:  # the server runs offline (HF_HUB_OFFLINE): a clear error
        client.pull("llama3.2")
    assert offline.value.status_code == 500 and "HF_HUB_OFFLINE is set" in offline.value.error, offline.value.error


def test_keep_alive_zero_unloads_and_the_next_request_loads(client: ollama.Client, served: ServerProcess) -> None:
    loaded = client.generate(model="tiny-8k")
    assert loaded.done and loaded.done_reason == "load"
    assert client.generate(model="tiny-8k", keep_alive=0).done_reason == "unload"
    deadline = time.monotonic() + 30
    while client.ps().models:
        assert time.monotonic() < deadline, "keep_alive 0 did not unload the model"
        time.sleep(0.2)
    served.wait_for_line(r"a request asked \(keep_alive 0\): model unloaded")
    reply = client.chat(model="tiny-8k", messages=USER, options={"grammar": THINK_GRAMMAR}, keep_alive=-1)
    assert reply.message.content == "The answer is 42." and reply.load_duration and reply.load_duration > 0
    assert [m.model for m in client.ps().models] == ["tiny-8k:latest"]
    # A chat that asks keep_alive 0 is answered, then the model goes once idle.
    assert client.chat(model="tiny-8k", messages=USER, options={"grammar": THINK_GRAMMAR}, keep_alive="0s").done
    deadline = time.monotonic() + 30
    while client.ps().models:
        assert time.monotonic() < deadline, "keep_alive 0 on a chat did not unload the model"
        time.sleep(0.2)
    assert client.generate(model="tiny-8k").done_reason == "load"


# --- tool calls on each call format's real template ---------------------------------------------------


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerProcess]]:
    path = model_for(models_dir, request.param)
    server = ServerProcess(path, home=tmp_path_factory.mktemp("home"), ctx="4096")
    yield request.param, server
    assert server.stop() == 0, server.stderr


def calls_of(parts: list[ollama.ChatResponse]) -> list[Any]:
    return [call for part in parts for call in (part.message.tool_calls or [])]


@pytest.mark.parametrize("seed", [1, 2])
def test_forced_tool_calls_stream_with_object_arguments_that_validate(family: tuple[str, ServerProcess], seed: int) -> None:
    name, server = family
    client = ollama.Client(host=server.root, timeout=120)
    model = server.model_id
    # Home Assistant's call: streamed, tools, keep_alive -1s, num_ctx 8192 (think only where the model reasons).
    parts = list(client.chat(model=model, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS, stream=True,
                             keep_alive="-1s", options={"num_ctx": 8192, "tool_choice": "required", "seed": seed, "num_predict": 300},
                             think=None))
    calls = calls_of(parts)
    assert calls, [p.message for p in parts]
    for call in calls:
        assert isinstance(call.function.arguments, dict)  # an object, as Ollama sends it
        if call.function.name == "get_weather":
            jsonschema.validate(dict(call.function.arguments), WEATHER)
        else:
            assert call.function.name == "get_time"
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert not "".join(p.message.content or "" for p in parts)  # a required call: nothing before it


def test_a_tool_round_trip_with_a_data_error_result(family: tuple[str, ServerProcess]) -> None:
    name, server = family
    client = ollama.Client(host=server.root, timeout=120)
    model = server.model_id
    question = {"role": "user", "content": "Weather in Oslo?"}
    first = client.chat(model=model, messages=[question], tools=TOOLS,
                        options={"tool_choice": "get_weather", "seed": 4, "num_predict": 300}, keep_alive="-1s")
    [call] = first.message.tool_calls or []
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    jsonschema.validate(dict(call.function.arguments), WEATHER)
    # Home Assistant sends the call back as the model wrote it, then the result as {"data", "error"}.
    history = [
        question,
        ollama.Message(role="assistant", content=first.message.content, thinking=first.message.thinking, tool_calls=[
            ollama.Message.ToolCall(function=ollama.Message.ToolCall.Function(name=call.function.name, arguments=call.function.arguments))]),
        ollama.Message(role="tool", content=json.dumps({"data": {"temperature": 3, "unit": "celsius"}, "error": None})),
    ]
    second = client.chat(model=model, messages=history, tools=TOOLS, keep_alive="-1s",
                         options={"tool_choice": "none", "grammar": 'root ::= "It is 3 degrees in Oslo."'},
                         think=False if name == "r1" else None)
    assert second.message.content == "It is 3 degrees in Oslo." and not second.message.tool_calls
    # The same history through OpenAI-style arguments (JSON text) and Ollama's tool_name.
    history[1] = {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": json.dumps(dict(call.function.arguments))}}]}
    history[2] = {"role": "tool", "content": '{"data": null, "error": "offline"}', "tool_name": "get_weather"}
    third = httpx.post(server.root + "/api/chat", timeout=120, json={
        "model": model, "messages": history, "tools": TOOLS, "stream": False,
        "options": {"tool_choice": "none", "grammar": 'root ::= "Sorry."'}, "think": False if name == "r1" else None})
    assert third.status_code == 200, third.text
    assert third.json()["message"]["content"] == "Sorry."


def test_langchain_chat_ollama_binds_tools_and_gets_object_arguments(family: tuple[str, ServerProcess]) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_ollama import ChatOllama

    name, server = family
    # validate_model_on_init: LangChain looks the model up in /api/tags first.
    llm = ChatOllama(model=server.model_id, base_url=server.root, validate_model_on_init=True, num_ctx=8192,
                     reasoning=False if name == "r1" else None)
    bound = llm.bind_tools(TOOLS)
    question = HumanMessage("Weather in Oslo?")
    answer = bound.invoke([question], options={"tool_choice": "get_weather", "seed": 2, "num_predict": 300})
    [call] = answer.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER)
    reply = bound.invoke([question, answer, ToolMessage(json.dumps({"data": {"temperature": 3}, "error": None}), tool_call_id=call["id"] or "")],
                         options={"tool_choice": "none", "grammar": 'root ::= "3 degrees."'})
    assert reply.content == "3 degrees."


def test_think_on_a_model_that_does_not_reason_is_refused_as_ollama_does(family: tuple[str, ServerProcess]) -> None:
    name, server = family
    client = ollama.Client(host=server.root, timeout=120)
    if name == "r1":
        assert "thinking" in (client.show(server.model_id).capabilities or [])
        return
    assert "thinking" not in (client.show(server.model_id).capabilities or [])
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model=server.model_id, messages=USER, think=True)
    assert refused.value.status_code == 400 and "does not support thinking" in refused.value.error
    assert client.chat(model=server.model_id, messages=USER, think=False, options={"num_predict": 4}).done


def test_nanosecond_fields_are_integers(client: ollama.Client) -> None:
    reply = client.chat(model="tiny-8k", messages=USER, options={"num_predict": 3})
    for field in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration", "prompt_eval_count", "eval_count"):
        value = getattr(reply, field)
        assert isinstance(value, int) and not math.isnan(value), field


# --- fill in the middle on a real vocabulary ------------------------------------------------------------


@pytest.fixture(scope="module")
def coder(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A Qwen2.5-template model whose vocabulary has Qwen2.5-Coder's FIM tokens (llama.cpp finds them by their text)."""
    import gguf

    from edgellm.store import synthetic

    tokens = synthetic.ChatTokens(
        synthetic.QWEN25_TOKENS.specials + tuple((text, int(gguf.TokenType.CONTROL)) for text in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")),
        bos="<|endoftext|>", eos="<|im_end|>")
    path = models_dir / "coder-fim.gguf"
    if not path.exists():
        template = (Path(__file__).parent / "data" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
        synthetic.write_tiny_model(path, chat_template=template, chat_tokens=tokens)
    server = ServerProcess(path, home=tmp_path_factory.mktemp("home"), ctx="2048")
    yield server
    assert server.stop() == 0, server.stderr


def test_suffix_fills_in_the_middle_where_the_vocabulary_has_fim_tokens(coder: ServerProcess) -> None:
    client = ollama.Client(host=coder.root, timeout=120)
    assert "insert" in (client.show(coder.model_id).capabilities or [])
    # Continue's call for code completion: prompt before the cursor, suffix after it.
    reply = client.generate(model=coder.model_id, prompt="def f():\n", suffix="    return x\n",
                            options={"grammar": 'root ::= "    x = 1\\n"', "temperature": 0})
    assert reply.response == "    x = 1\n" and reply.done_reason == "stop"
    streamed = list(client.generate(model=coder.model_id, prompt="", suffix="return x", stream=True, options={"num_predict": 4}))
    assert streamed[-1].done and streamed[-1].eval_count == 4  # an empty prefix is a completion too, not a load


# --- the digest ------------------------------------------------------------------------------------------


def test_the_digest_is_the_blob_name_in_the_hub_cache_or_hashed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from edgellm.store import digest

    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path / "home"))
    blob = tmp_path / "models--o--r" / "blobs" / ("ab" * 32)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"not what the name says")
    link = tmp_path / "models--o--r" / "snapshots" / "c0ffee" / "m.gguf"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    assert digest.file_sha256(link) == "ab" * 32  # the hub's name for it, not hashed again
    plain = tmp_path / "m.gguf"
    plain.write_bytes(b"weights")
    assert digest.file_sha256(plain) == hashlib.sha256(b"weights").hexdigest()
    remembered = json.loads(digest.digests_file().read_text())
    assert remembered[str(plain.resolve())]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    remembered[str(plain.resolve())]["sha256"] = "cd" * 32  # what a later start reads, without hashing
    digest.digests_file().write_text(json.dumps(remembered))
    assert digest.file_sha256(plain) == "cd" * 32
    plain.write_bytes(b"other weights")  # another size: hashed again
    assert digest.file_sha256(plain) == hashlib.sha256(b"other weights").hexdigest()
