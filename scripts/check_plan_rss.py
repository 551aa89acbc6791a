#!/usr/bin/env python3
"""Compare `edgellm plan`'s total_bytes with the peak RSS the real runtime reaches, for a
1.5B-shaped Q4_K_M model (synthetic weights: same shape, same size, same memory).

--parallel 1 (the default) measures `edgellm run` with one prompt filling --fill of the context.
--parallel N > 1 starts `edgellm serve --parallel N --ctx C` (C tokens per slot), sends N
concurrent completions whose distinct prompts each fill --fill of a slot, so every slot holds
its KV share at once, then reads the server's peak RSS (VmHWM) before stopping it with SIGTERM.
The estimate must stay within -15%/+20% of the measurement: ratio plan / RSS in 0.85..1.20.

Example: python scripts/check_plan_rss.py --ctx 1024 2048 --parallel 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edgellm.paths import edgellm_home
from edgellm.store import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_llama_server import Server, free_port  # noqa: E402  (the same server start-up and health wait)

EDGELLM = [sys.executable, "-m", "edgellm"]
LOW, HIGH = 0.85, 1.20
GENERATE = 16  # tokens each request generates after its prompt
WORDS = ["word", "hello", "the", "answer", "is", "six", "times", "seven", "edge", "model"]


def plan_for(model: Path, ctx: int, parallel: int) -> dict[str, Any]:
    command = [*EDGELLM, "plan", str(model), "--ctx", str(ctx), "--json"]
    if parallel > 1:
        command += ["--parallel", str(parallel)]
    return json.loads(subprocess.run(command, capture_output=True, check=True).stdout)


def measure_run(model: Path, ctx: int, fill: float) -> tuple[int, list[int]]:
    """Peak RSS of `edgellm run` and its prompt's token count."""
    run = subprocess.run([*EDGELLM, "run", "-m", str(model), "--ctx", str(ctx), "--json", "-n", str(GENERATE), "--seed", "1"],
                         input=" ".join(["word"] * int(ctx * fill / 3)).encode(), capture_output=True, check=True)
    stats = json.loads(run.stdout)["stats"]
    return stats["peak_rss_bytes"], [stats["prompt_tokens"]]


def slot_prompts(model: Path, count: int, tokens: int) -> list[str]:
    """`count` prompts of about `tokens` tokens each (the model's own tokenizer counts), each with
    its own first words so no two share a prefix."""
    from edgellm.runtime.native import load_llama_cpp  # llama.cpp only for the tokenizer here

    llama_cpp = load_llama_cpp()
    saved = os.dup(2)  # llama.cpp logs a context warning on stderr even when not verbose
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    finally:
        os.dup2(saved, 2)
        os.close(saved)

    def length(text: str) -> int:
        return len(vocab.tokenize(text.encode(), add_bos=True, special=True))

    prompts = []
    for index in range(count):
        words = WORDS[index % len(WORDS):] + WORDS[:index % len(WORDS)]
        head = f"Request {index} of {count}:"
        per_word = max((length(head + " " + " ".join(words * 10)) - length(head)) / (10 * len(words)), 0.1)
        n = max(int((tokens - length(head)) / per_word), 1)
        text = head + " " + " ".join(words[i % len(words)] for i in range(n))
        while length(text) > tokens and n > 1:  # per_word is an average: trim what it overshot
            n -= 1
            text = head + " " + " ".join(words[i % len(words)] for i in range(n))
        prompts.append(text)
    vocab.close()
    return prompts


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 3600) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def peak_rss_of(pid: int) -> int:
    """VmHWM (the peak resident set size) of a running process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def measure_serve(model: Path, ctx: int, parallel: int, fill: float) -> tuple[int, list[int]]:
    """Peak RSS of `edgellm serve --parallel N` once every slot held a prompt of `fill` x ctx,
    and the prompt token counts the server reported."""
    prompts = slot_prompts(model, parallel, int(ctx * fill))
    port = free_port()
    server = Server("edgellm serve", [*EDGELLM, "serve", "-m", str(model), "--parallel", str(parallel), "--ctx", str(ctx),
                                      "--port", str(port)], port)
    try:
        used: list[int] = [0] * parallel
        errors: list[BaseException] = []
        barrier = threading.Barrier(parallel)

        def ask(index: int) -> None:
            try:
                barrier.wait()
                reply = http_json(f"http://127.0.0.1:{port}/v1/completions", {
                    "prompt": prompts[index], "max_tokens": GENERATE, "ignore_eos": True, "temperature": 0, "seed": index})
                used[index] = int(reply["usage"]["prompt_tokens"])
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"a request failed: {errors[0]!r}")
        peak = peak_rss_of(server.process.pid)
    finally:
        server.stop()  # SIGTERM, as a service manager stops it
    return peak, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a GGUF file (default: a synthetic DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M)")
    parser.add_argument("--ctx", type=int, nargs="+", default=[4096], help="context per sequence (per slot with --parallel)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1], metavar="N",
                        help="1: `edgellm run`; N > 1: `edgellm serve --parallel N` with every slot full")
    parser.add_argument("--fill", type=float, default=0.8, help="fraction of the context (of each slot) the prompt fills (the plan is for a full context)")
    args = parser.parse_args()
    model = args.model
    if model is None:
        model = edgellm_home() / "synthetic" / "deepseek-r1-1.5b-Q4_K_M.gguf"
        if not model.exists():
            model.parent.mkdir(parents=True, exist_ok=True)
            synthetic.write_synthetic_model(model, synthetic.QWEN2_1_5B, "Q4_K_M")
    print(f"model: {model}")
    print(f"{'slots':>5} {'ctx/slot':>8} {'plan MiB':>9} {'(KV':>6} {'compute)':>8} {'peak RSS MiB':>12} {'ratio':>6}  "
          f"{'prompt tokens':<22} verdict")
    failed = False
    for ctx in args.ctx:
        for parallel in args.parallel:
            plan = plan_for(model, ctx, parallel)
            if parallel > 1:
                peak, used = measure_serve(model, ctx, parallel, args.fill)
            else:
                peak, used = measure_run(model, ctx, args.fill)
            ratio = plan["total_bytes"] / peak
            ok = LOW <= ratio <= HIGH
            failed |= not ok
            print(f"{parallel:>5} {ctx:>8} {plan['total_bytes'] / 2**20:>9.1f} {plan['kv_bytes'] / 2**20:>6.1f} "
                  f"{plan['compute_bytes'] / 2**20:>8.1f} {peak / 2**20:>12.1f} {ratio:>6.3f}  "
                  f"{','.join(map(str, used)):<22} {'OK' if ok else 'OUT OF BOUNDS'}"
                  f"  (kv {plan['kv_type']}, mmap {'on' if plan['use_mmap'] else 'off'})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
