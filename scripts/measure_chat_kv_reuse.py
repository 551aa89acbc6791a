#!/usr/bin/env python3
"""Measure what chat's KV-cache reuse buys: time to first token of the next turn after ~1,500 tokens of
history, with the cache kept from the previous turn (as `edgellm chat` does) versus re-evaluating the
whole history (a fresh cache, as a REPL without prefix reuse would).

Uses a DeepSeek-R1-Distill-Qwen-1.5B-shaped synthetic model at Q4_K_M (shape decides speed; see
REFERENCE.md), built into a cache directory unless a file of the expected size is already there, and
the same Engine and chat.Conversation code the `chat` command runs. Heavy: minutes on 2 cores.

    python scripts/measure_chat_kv_reuse.py                  # 1.5B Q4_K_M, ~1,500 tokens, 2 rounds
    python scripts/measure_chat_kv_reuse.py --model m.gguf --json
    python scripts/measure_chat_kv_reuse.py --serve          # the same through `edgellm serve` over HTTP

With --serve, a chat client of `edgellm serve --parallel 1` asks the next turn right after the
previous one (its slot still holds the history), against the same request after an unrelated
prompt of the same size took the slot (the history is evaluated again).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other scripts

from edgellm.loader import PlanOptions, prepare  # noqa: E402
from edgellm.runtime.engine import Engine  # noqa: E402
from edgellm.runtime.types import GenerationStats, SamplingParams  # noqa: E402
from edgellm.store import synthetic  # noqa: E402
from edgellm.ui.chat_session import Conversation  # noqa: E402

QUESTIONS = [
    "Can you explain how a language model reads a prompt?",
    "What does the model keep in memory between tokens?",
    "Why does a small board run some models faster than others?",
    "How should I pick the number of threads?",
    "What changes when the context gets longer?",
    "What is the cost of a long conversation?",
]
NEXT_QUESTION = "Thanks. So what should I try first on a Raspberry Pi 5?"


def synthetic_model(cache_dir: Path) -> Path:
    """The 1.5B-shaped Q4_K_M file, written once (about a minute and 1.1 GB)."""
    path = cache_dir / "synthetic-1.5b-Q4_K_M.gguf"
    expected = synthetic.expected_file_size(synthetic.QWEN2_1_5B, "Q4_K_M")
    if path.exists() and path.stat().st_size == expected:
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"writing {path} ({expected / 1e9:.2f} GB)", file=sys.stderr)
    return synthetic.write_synthetic_model(path, synthetic.QWEN2_1_5B, "Q4_K_M")


def build_history(engine: Engine, target_tokens: int) -> Conversation:
    """User/assistant turns of plain English until the formatted history reaches `target_tokens`."""
    sentences = [s.strip() + "." for s in " ".join(synthetic.TRAINING_TEXT.split()).split(". ") if s.strip()]
    conversation = Conversation(system="You are a helpful assistant for people running models on small computers.")
    turn = 0
    while next_prompt_tokens(engine, conversation) < target_tokens:
        # Answers of a few sentences (~60 tokens), so the history is many turns, as in a chat.
        answer = " ".join(sentences[(turn * 3 + k) % len(sentences)] for k in range(3))
        conversation.messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
        conversation.messages.append({"role": "assistant", "content": answer})
        turn += 1
    return conversation


def next_prompt_tokens(engine: Engine, conversation: Conversation) -> int:
    """The next turn's prompt: the history with its last answer left to the model, plus a question."""
    previous = Conversation(conversation.system, conversation.messages[:-1])
    return len(engine.tokenize(engine.format_messages(previous.for_model(NEXT_QUESTION))))


def first_token(engine: Engine, messages: list[dict[str, str]]) -> tuple[GenerationStats, str]:
    """Generate a few tokens; return the stats (ttft_s, tokens evaluated) and the answer text."""
    params = SamplingParams(max_tokens=4, temperature=0.0, seed=0, ignore_eos=True)
    answer = []
    stats: GenerationStats | None = None
    for event in engine.generate(messages, params):
        if isinstance(event, GenerationStats):
            stats = event
        elif event.kind == "answer":
            answer.append(event.text)
    assert stats is not None
    return stats, "".join(answer)


def measure(engine: Engine, conversation: Conversation, rounds: int) -> dict[str, Any]:
    reuse: list[GenerationStats] = []
    full: list[GenerationStats] = []
    for round_index in range(rounds):
        # The previous turn, as chat runs it: the last user message of the history is answered, so
        # the cache holds the whole history when the next message comes.
        previous = Conversation(conversation.system, conversation.messages[:-1])
        order = ("reuse", "full") if round_index % 2 == 0 else ("full", "reuse")
        for kind in order:
            engine.forget_cache()  # forget any cached prefix
            _, reply = first_token(engine, previous.for_model())
            turn = Conversation(previous.system, previous.messages + [{"role": "assistant", "content": reply}])
            messages = turn.for_model(NEXT_QUESTION)
            if kind == "full":
                engine.forget_cache()  # re-evaluate the history, as without prefix reuse
            stats, _ = first_token(engine, messages)
            (reuse if kind == "reuse" else full).append(stats)
            print(f"round {round_index + 1} {kind:5}: first token {stats.ttft_s:.2f}s, evaluated "
                  f"{stats.prompt_tokens_evaluated} of {stats.prompt_tokens} prompt tokens", file=sys.stderr)
    ttft_reuse = statistics.median(s.ttft_s for s in reuse)
    ttft_full = statistics.median(s.ttft_s for s in full)
    return {
        "model": str(engine.model.path),
        "quant": engine.model.quant,
        "threads": engine.plan.threads,
        "threads_batch": engine.plan.threads_batch,
        "n_ctx": engine.n_ctx,
        "next_prompt_tokens": reuse[0].prompt_tokens,
        "turns_of_history": conversation.turns,
        "evaluated_with_reuse": reuse[0].prompt_tokens_evaluated,
        "evaluated_without_reuse": full[0].prompt_tokens_evaluated,
        "ttft_with_reuse_s": round(ttft_reuse, 3),
        "ttft_reevaluating_s": round(ttft_full, 3),
        "speedup": round(ttft_full / ttft_reuse, 1) if ttft_reuse > 0 else None,
        "rounds": rounds,
        "ttft_with_reuse_samples_s": [round(s.ttft_s, 3) for s in reuse],
        "ttft_reevaluating_samples_s": [round(s.ttft_s, 3) for s in full],
    }


def measure_serve(path: Path, conversation: Conversation, args: argparse.Namespace) -> dict[str, Any]:
    """The same two first tokens, asked of `edgellm serve` over HTTP by a chat client."""
    import openai  # noqa: PLC0415
    from compare_llama_server import Server, free_port  # noqa: PLC0415  (same start-up and health wait)

    port = free_port()
    command = [sys.executable, "-m", "edgellm", "serve", "-m", str(path), "--port", str(port), "--parallel", "1",
               "--ctx", str(args.ctx)] + (["-t", str(args.threads)] if args.threads else [])
    server = Server("edgellm serve", command, port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=600, max_retries=0)

        def ask(messages: list[dict[str, str]]) -> tuple[float, str]:
            started = time.perf_counter()
            reply = client.chat.completions.create(model="", messages=messages, max_tokens=1, temperature=0.0,  # type: ignore[arg-type]
                                                   extra_body={"ignore_eos": True})
            return time.perf_counter() - started, reply.choices[0].message.content or ""

        previous = Conversation(conversation.system, conversation.messages[:-1])
        other = Conversation(conversation.system, [dict(m, content=m["content"][::-1]) for m in conversation.messages])
        reuse: list[float] = []
        full: list[float] = []
        for round_index in range(args.rounds):
            order = ("reuse", "full") if round_index % 2 == 0 else ("full", "reuse")
            for kind in order:
                _, reply = ask(previous.for_model())  # the previous turn: the slot now holds the history
                turn = Conversation(previous.system, previous.messages + [{"role": "assistant", "content": reply}])
                if kind == "full":
                    ask(other.for_model())  # an unrelated conversation of the same size takes the slot
                seconds, _ = ask(turn.for_model(NEXT_QUESTION))
                (reuse if kind == "reuse" else full).append(seconds)
                print(f"round {round_index + 1} {kind:5}: first token {seconds:.2f}s", file=sys.stderr)
    finally:
        server.stop()
    ttft_reuse, ttft_full = statistics.median(reuse), statistics.median(full)
    return {
        "mode": "serve --parallel 1",
        "ttft_with_reuse_s": round(ttft_reuse, 3),
        "ttft_reevaluating_s": round(ttft_full, 3),
        "reuse_over_reevaluating": round(ttft_reuse / ttft_full, 3) if ttft_full > 0 else None,
        "rounds": args.rounds,
        "ttft_with_reuse_samples_s": [round(x, 3) for x in reuse],
        "ttft_reevaluating_samples_s": [round(x, 3) for x in full],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a .gguf file (default: the 1.5B-shaped synthetic Q4_K_M)")
    parser.add_argument(
        "--cache-dir", type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgellm-synthetic",
        help="where the synthetic model goes (default ~/.cache/edgellm-synthetic)",
    )
    parser.add_argument("--history-tokens", type=int, default=1500, help="size of the history (default 1500)")
    parser.add_argument("--ctx", type=int, default=4096, help="context size (default 4096)")
    parser.add_argument("--threads", type=int, help="threads (default: the profile's)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each kind, alternating (default 2)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--serve", action="store_true", help="measure through `edgellm serve --parallel 1` over HTTP")
    args = parser.parse_args()

    path = args.model or synthetic_model(args.cache_dir)
    prepared = prepare(str(path), PlanOptions(ctx=args.ctx, threads=args.threads, threads_batch=args.threads))
    started = time.perf_counter()
    engine = Engine(prepared.model, prepared.plan)
    print(f"loaded {path.name} in {time.perf_counter() - started:.1f}s: {prepared.plan.threads} threads, "
          f"{prepared.plan.threads_batch} for prompts, n_ctx {engine.n_ctx}", file=sys.stderr)
    try:
        conversation = build_history(engine, args.history_tokens)
        if args.serve:
            tokens = next_prompt_tokens(engine, conversation)
            engine.close()  # the server loads its own
            result = {"next_prompt_tokens": tokens, "turns_of_history": conversation.turns,
                      **measure_serve(path, conversation, args)}
            print(json.dumps(result, indent=2) if args.json else
                  f"serve, next turn of {tokens} prompt tokens: first token {result['ttft_with_reuse_s']:.2f}s with the "
                  f"slot's cache, {result['ttft_reevaluating_s']:.2f}s re-evaluating: "
                  f"{100 * (result['reuse_over_reevaluating'] or 0):.1f}% (target <= 10%)")
            return 0
        result = measure(engine, conversation, args.rounds)
    finally:
        engine.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"next turn after {result['turns_of_history']} turns: {result['next_prompt_tokens']} prompt tokens")
        print(f"  with KV reuse:   first token {result['ttft_with_reuse_s']:.2f}s "
              f"({result['evaluated_with_reuse']} tokens evaluated)")
        print(f"  re-evaluating:   first token {result['ttft_reevaluating_s']:.2f}s "
              f"({result['evaluated_without_reuse']} tokens evaluated)")
        print(f"  speedup:         {result['speedup']}x  (median of {result['rounds']}, {result['threads_batch']} prompt threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
