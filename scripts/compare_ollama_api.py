#!/usr/bin/env python3
"""Ollama's API against OpenAI's on the same `edgellm serve`: the same generation, both ways.

Part 1 (issue 28's target: within 5%): one server, one model; each round sends the same
streamed chat through `/api/chat` (the `ollama` client, as Home Assistant calls it) and through
`/v1/chat/completions` (the `openai` client), in alternating order, each with a prompt of its
own (no prefix shared with the other API's request), --tokens tokens forced by a grammar (random
weights write noise; the grammar keeps both at the same length). TTFT is the time to the first
streamed token (reasoning or answer); tok/s the tokens after the first over the time after it.
Medians of the rounds and the median of the per-round ratios (Ollama / OpenAI) are printed.

Part 2: a Home-Assistant-shaped conversation: a ~1,500-token system prompt and 10 tools, one
short user line per turn, through `/api/chat`. Turn 2's TTFT must be <= 10% of turn 1's: the
prompt prefix (system prompt and tools) is reused across requests.

Usage:
    python scripts/compare_ollama_api.py --synthetic deepseek-r1-1.5b [--rounds 5] [--tokens 48]
    python scripts/compare_ollama_api.py MODEL.gguf
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import ollama
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_llama_server import Server, free_port, model_of  # noqa: E402  (the same start-up and health wait)
from hostinfo import host_line  # noqa: E402

WORDS = ["river", "stone", "lamp", "garden", "window", "signal", "copper", "meadow", "harbor", "engine"]


def forced(tokens: int) -> str:
    """A grammar that writes exactly `tokens` words of ' the' (one token each in these vocabularies)."""
    return "root ::= " + " ".join(['" the"'] * tokens)


def prompt_for(api: str, round_index: int) -> str:
    """A prompt of its own per request, so neither API reuses the other's cached prefix."""
    words = " ".join(WORDS[(round_index * 3 + i) % len(WORDS)] for i in range(12))
    return f"[{api} {round_index}] Write about: {words}."


def via_ollama(client: ollama.Client, model: str, prompt: str, tokens: int, **extra: Any) -> tuple[float, float, int, int]:
    """(TTFT s, tok/s after the first, tokens, prompt tokens) of one streamed /api/chat."""
    started, first, last, count, prompt_count = time.perf_counter(), None, 0.0, 0, 0
    messages = extra.pop("messages", [{"role": "user", "content": prompt}])
    options: dict[str, Any] = {"num_predict": tokens, "temperature": 0}
    if "tools" not in extra:  # with tools the reply is the model's (a grammar and tools do not mix)
        options["grammar"] = forced(tokens)
    for part in client.chat(model=model, messages=messages, stream=True, think=False, options=options, **extra):
        now = time.perf_counter()
        if part.message.content or part.message.thinking or part.message.tool_calls or part.done:
            first = now if first is None else first
            last = now
        if part.done:
            count, prompt_count = part.eval_count or 0, part.prompt_eval_count or 0
    assert first is not None, "no token streamed"
    return first - started, (count - 1) / (last - first) if last > first else 0.0, count, prompt_count


def via_openai(client: openai.OpenAI, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(TTFT s, tok/s after the first, tokens) of one streamed /v1/chat/completions."""
    started, first, last, count = time.perf_counter(), None, 0.0, 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=True, max_tokens=tokens, temperature=0,
        stream_options={"include_usage": True}, extra_body={"grammar": forced(tokens), "thinking_budget_tokens": 0})
    for chunk in stream:
        now = time.perf_counter()
        if chunk.choices and (chunk.choices[0].delta.content or getattr(chunk.choices[0].delta, "reasoning_content", None)):
            first = now if first is None else first
            last = now
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
    assert first is not None, "no token streamed"
    return first - started, (count - 1) / (last - first) if last > first else 0.0, count


def home_assistant_turns(client: ollama.Client, model: str) -> tuple[float, float, int]:  # TTFT 1, TTFT 2, prompt tokens
    """Turn 1 and turn 2 TTFT of a conversation shaped like Home Assistant's (~1,500-token system prompt, 10 tools)."""
    devices = "\n".join(f"- light.room_{i}: {WORDS[i % 10]} room light, state off, brightness 0, area {WORDS[(i + 3) % 10]}"
                        for i in range(40))
    system = ("You are a voice assistant for Home Assistant. Answer questions about the world truthfully. "
              "Answer in plain text. Keep it simple and to the point.\nAn overview of the areas and the devices "
              f"in this smart home:\n{devices}\n")
    tools = [{"type": "function", "function": {
        "name": f"Hass{name}", "description": f"{name} a device or an area (Home Assistant intent)",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}, "area": {"type": "string"},
                                                        "domain": {"type": "array", "items": {"type": "string"}}}}}}
        for name in ["TurnOn", "TurnOff", "Toggle", "LightSet", "ClimateSetTemperature", "MediaPause", "MediaUnpause",
                     "SetVolume", "GetState", "GetWeather"]]
    history: list[dict[str, Any]] = [{"role": "system", "content": system}, {"role": "user", "content": "Is the garden light on?"}]
    first, _, _, prompt_tokens = via_ollama(client, model, "", 8, messages=list(history), tools=tools, keep_alive=-1)
    history += [{"role": "assistant", "content": " the" * 8}, {"role": "user", "content": "And the kitchen?"}]
    second, _, _, _ = via_ollama(client, model, "", 8, messages=list(history), tools=tools, keep_alive=-1)
    return first, second, prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--synthetic", help="a catalog name: the model's shape with random weights (edgellm.store.synthetic)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--ctx", type=int, default=16384)
    args = parser.parse_args()
    model_path = model_of(args)
    port = free_port()
    server = Server("edgellm serve", [sys.executable, "-m", "edgellm", "serve", "-m", str(model_path), "--port", str(port),
                                      "--ctx", str(args.ctx), "--parallel", "1", "--alias", "bench"], port)
    try:
        api = ollama.Client(host=f"http://127.0.0.1:{port}", timeout=600)
        v1 = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600)
        via_ollama(api, "bench", "warm up", 4)
        via_openai(v1, "bench", "warm up", 4)
        rows: dict[str, list[tuple[float, ...]]] = {"ollama": [], "openai": []}
        for index in range(args.rounds):
            order = ["ollama", "openai"] if index % 2 == 0 else ["openai", "ollama"]
            for which in order:
                prompt = prompt_for(which, index)
                rows[which].append(via_ollama(api, "bench", prompt, args.tokens) if which == "ollama"
                                   else via_openai(v1, "bench", prompt, args.tokens))
        print(f"{host_line()}; model {model_path.name}; {args.rounds} rounds of {args.tokens} tokens, alternating")
        for which in ("ollama", "openai"):
            ttft = statistics.median(r[0] for r in rows[which])
            tps = statistics.median(r[1] for r in rows[which])
            print(f"  {'/api/chat' if which == 'ollama' else '/v1/chat/completions':22} TTFT {ttft:.3f} s   {tps:.2f} tok/s"
                  f"   tokens {sorted({int(r[2]) for r in rows[which]})}")
        ttft_ratio = statistics.median(a[0] / b[0] for a, b in zip(rows["ollama"], rows["openai"], strict=True))
        tps_ratio = statistics.median(a[1] / b[1] for a, b in zip(rows["ollama"], rows["openai"], strict=True))
        print(f"  ratio Ollama/OpenAI (median of the rounds): TTFT {ttft_ratio:.3f}, tok/s {tps_ratio:.3f}"
              f" -> {'within' if abs(ttft_ratio - 1) <= 0.05 and abs(tps_ratio - 1) <= 0.05 else 'OUTSIDE'} 5%")
        first, second, prompt_tokens = home_assistant_turns(api, "bench")
        print(f"  Home-Assistant-shaped conversation ({prompt_tokens}-token first prompt, 10 tools): turn 1 TTFT {first:.2f} s, turn 2 TTFT {second:.2f} s"
              f" ({second / first:.1%} of turn 1; target <= 10%)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
