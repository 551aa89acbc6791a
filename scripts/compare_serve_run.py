#!/usr/bin/env python3
"""serve against run on the same model: generation tok/s as each measures its own decode loop.

`edgellm run` and `edgellm serve` share one engine and scheduler; the serve path should cost no
more per token than run's (issue 27: it was ~1.4x as long on a fast CPU). A serve process stays up
(`--parallel 1`); each round runs `edgellm run --json` (a process of its own) and one request to
serve's /api/generate (not streamed: Ollama's eval_count and eval_duration are the server's own
generation timing, as run's stats.gen_tps is), alternating which goes first, the same greedy prompt
and length. Prints both medians and the serve/run ratio (1.00: the same speed), with the host.

    python scripts/compare_serve_run.py --synthetic deepseek-r1-1.5b --rounds 5 --tokens 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_llama_server import Server, free_port, model_of  # noqa: E402  (the same start-up and health wait)
from hostinfo import host_line  # noqa: E402

PROMPT = "Write a long story about the sea, the wind and a lighthouse keeper."


def run_tps(model: Path, ctx: int, tokens: int) -> float:
    result = subprocess.run([sys.executable, "-m", "edgellm", "run", "-m", str(model), "--ctx", str(ctx), "-n", str(tokens),
                             "--temp", "0", "--json", PROMPT], capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout)["stats"]["gen_tps"])


def serve_tps(port: int, tokens: int) -> float:
    body = json.dumps({"model": "m", "prompt": PROMPT, "stream": False,
                       "options": {"num_predict": tokens, "temperature": 0}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        reply = json.loads(response.read())
    return reply["eval_count"] / (reply["eval_duration"] / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--synthetic", help="a catalog shape, e.g. deepseek-r1-1.5b (built once, cached)")
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = model_of(args)
    port = free_port()
    server = Server("edgellm serve", [sys.executable, "-m", "edgellm", "serve", "-m", str(model), "--port", str(port),
                                      "--ctx", str(args.ctx), "--parallel", "1", "--alias", "m"], port)
    runs: list[float] = []
    serves: list[float] = []
    try:
        serve_tps(port, 8)  # warm-up
        for index in range(args.rounds):
            order = [("run", lambda: run_tps(model, args.ctx, args.tokens)), ("serve", lambda: serve_tps(port, args.tokens))]
            for name, measure in order if index % 2 == 0 else order[::-1]:
                tps = measure()
                (runs if name == "run" else serves).append(tps)
                print(f"round {index + 1}/{args.rounds} {name:5s} {tps:7.2f} tok/s", file=sys.stderr, flush=True)
    finally:
        server.stop()
    ratios = [s / r for s, r in zip(serves, runs, strict=True)]
    print(host_line())
    print(f"{model.name}, --ctx {args.ctx}, {args.tokens} tokens, greedy, {args.rounds} alternating rounds")
    print(f"run   {statistics.median(runs):.2f} tok/s   serve {statistics.median(serves):.2f} tok/s   "
          f"serve/run {statistics.median(ratios):.3f} (per round: {' '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
