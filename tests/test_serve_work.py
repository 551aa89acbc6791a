"""serve does no more llama.cpp work per token than `run` (issue 27's guard; it does not depend on
how fast the host is): the same prompt and the same greedy generation, once through run's path
(Engine.generate_from_prompt: the scheduler stepped in this thread) and once through serve
(/v1/completions on the in-process server: its generation thread steps the scheduler), make the
same llama_decode calls with the same batch sizes and the same sampling calls, on one real model.
scripts/compare_llama_server.py measures the speed itself, side by side with llama-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve_inprocess import start

from edgellm.loader import PlanOptions, prepare
from edgellm.runtime.backend import LlamaBackend
from edgellm.runtime.engine import Engine
from edgellm.runtime.types import SamplingParams

PROMPT = "Once upon a time, in a house by the river, there lived"
TOKENS = 24


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[int]]]:
    """Every llama_decode's batch size and every sampling call, as the backend makes them."""
    seen: dict[str, list[int]] = {"decodes": [], "samples": []}
    decode, sample = LlamaBackend.decode, LlamaBackend.sample

    def counted_decode(self: LlamaBackend) -> int:
        seen["decodes"].append(self.rows)
        return decode(self)

    def counted_sample(self: LlamaBackend, sampler: object, row: int) -> int:
        seen["samples"].append(row)
        return sample(self, sampler, row)

    monkeypatch.setattr(LlamaBackend, "decode", counted_decode)
    monkeypatch.setattr(LlamaBackend, "sample", counted_sample)
    yield seen


def test_serve_makes_the_same_llama_cpp_calls_per_token_as_run(tiny_8k: Path, work: dict[str, list[int]]) -> None:
    prepared = prepare(str(tiny_8k), PlanOptions(ctx=4096, parallel=2), loading=True)
    engine = Engine(prepared.model, prepared.plan, sequences=2)  # serve's shape: two slots
    try:
        run_text = "".join(getattr(event, "text", "") for event in engine.generate_from_prompt(
            PROMPT, SamplingParams(max_tokens=TOKENS, temperature=0)))
        run_work = {name: list(calls) for name, calls in work.items()}
        engine.forget_cache()  # serve starts from an empty cache too, not from run's prefix
        for calls in work.values():
            calls.clear()
        with start(engine, max_tokens_limit=TOKENS) as running:  # type: ignore[arg-type]
            reply = running.client.completions.create(model="fake", prompt=PROMPT, max_tokens=TOKENS, temperature=0)
        serve_work = {name: list(calls) for name, calls in work.items()}
    finally:
        engine.close()

    assert reply.choices[0].text == run_text  # the same generation ...
    generated = len(run_work["samples"])
    assert generated >= 2
    # ... made with one decode for the prompt and one per generated token after it, in both
    assert run_work["decodes"][1:] == [1] * (generated - 1) and run_work["decodes"][0] > 1
    assert serve_work == run_work
