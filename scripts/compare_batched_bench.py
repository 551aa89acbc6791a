#!/usr/bin/env python3
"""Compare `edgellm bench --parallel` with llama.cpp's `llama-batched-bench` on the same model.

llama-batched-bench is built from the llama.cpp sources vendored in the sdist of the installed
llama-cpp-python (without the AMX kernels) and cached, as compare_llama_server.py builds
llama-server. Each round runs edgellm first or second in turn, then llama-batched-bench with the
settings edgellm's run reported (context, batch, ubatch, threads, KV type, flash attention): the
same prompt length per sequence (not shared), the same generated tokens and sequence counts.
Printed: aggregate generation speed S_TG and prompt speed S_PP per sequence count, medians of
the rounds, and edgellm / llama-batched-bench as the median of the per-round ratios.

Usage:
    python scripts/compare_batched_bench.py MODEL.gguf [--parallel 1,2,4] [-p 128] [-n 32] [--rounds 3] [-t THREADS]
    python scripts/compare_batched_bench.py --synthetic deepseek-r1-1.5b
Environment: LLAMA_BATCHED_BENCH_CACHE (default ~/.cache/edgellm/llama-batched-bench), JOBS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_llama_server import build_llama_tool, say  # noqa: E402


def edgellm_run(model: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "edgellm", "bench", "-m", model, "--parallel", args.parallel, "-p", str(args.prompt),
               "-n", str(args.gen), "-r", "1", "--json"] + (["-t", str(args.threads)] if args.threads else [])
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def llama_run(binary: Path, model: str, report: dict, args: argparse.Namespace) -> dict[int, dict]:
    result = report["results"][0]
    command = [str(binary), "-m", model, "-c", str(report["n_ctx"]), "-b", str(report["n_batch"]), "-ub", str(report["n_ubatch"]),
               "-t", str(result["threads"]), "-tb", str(result["threads_batch"]), "-ctk", report["kv_type"], "-ctv", report["kv_type"],
               "-fa", "on" if report["flash_attn"] else "off", "-npp", str(args.prompt), "-ntg", str(args.gen),
               "-npl", args.parallel, "--output-format", "jsonl", "-ngl", "0"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {row["pl"]: row for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--synthetic", help="a catalog shape, e.g. deepseek-r1-1.5b (built once, cached)")
    parser.add_argument("--parallel", default="1,2,4")
    parser.add_argument("-p", "--prompt", type=int, default=128)
    parser.add_argument("-n", "--gen", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-t", "--threads", type=int)
    args = parser.parse_args()

    binary = build_llama_tool("llama-batched-bench", "LLAMA_BATCHED_BENCH_CACHE")
    say(f"llama-batched-bench: {binary}")
    if args.synthetic:
        from edgellm.store.synthetic import synthetic_model_path  # noqa: PLC0415

        model = str(synthetic_model_path(args.synthetic))
    elif args.model:
        model = args.model
    else:
        raise SystemExit("give MODEL.gguf or --synthetic NAME")

    ours: dict[int, list[tuple[float, float]]] = {}
    theirs: dict[int, list[tuple[float, float]]] = {}
    report: dict = {}
    for round_index in range(args.rounds):
        # edgellm first in even rounds, second in odd ones (the first run also tells the settings).
        if round_index % 2 == 1 and report:
            llama = llama_run(binary, model, report, args)
            report = edgellm_run(model, args)
        else:
            report = edgellm_run(model, args)
            llama = llama_run(binary, model, report, args)
        for result in report["results"]:
            n = result["sequences"]
            ours.setdefault(n, []).append((result["tps_mean"], result["pp_tps_mean"] or 0.0))
            theirs.setdefault(n, []).append((llama[n]["speed_tg"], llama[n]["speed_pp"]))
            say(f"round {round_index + 1}/{args.rounds} x{n}: edgellm S_TG {result['tps_mean']:.2f} S_PP {result['pp_tps_mean'] or 0:.2f}"
                f" | llama-batched-bench S_TG {llama[n]['speed_tg']:.2f} S_PP {llama[n]['speed_pp']:.2f}")

    first = report["results"][0]
    print(f"\n{Path(model).name}: pp {args.prompt} + tg {args.gen} per sequence, n_ctx {report['n_ctx']}, batch {report['n_batch']}/"
          f"{report['n_ubatch']}, {first['threads']} threads, median of {args.rounds} alternating rounds")
    print("| sequences | edgellm S_TG | llama-batched-bench S_TG | ratio | edgellm S_PP | llama-batched-bench S_PP | ratio |")
    print("|---|---|---|---|---|---|---|")
    for n in sorted(ours):
        tg_ratio = statistics.median(a[0] / b[0] for a, b in zip(ours[n], theirs[n], strict=True))
        pp_ratio = statistics.median(a[1] / b[1] for a, b in zip(ours[n], theirs[n], strict=True) if b[1])
        print(f"| {n} | {statistics.median(r[0] for r in ours[n]):.2f} | {statistics.median(r[0] for r in theirs[n]):.2f} | {tg_ratio:.3f} "
              f"| {statistics.median(r[1] for r in ours[n]):.2f} | {statistics.median(r[1] for r in theirs[n]):.2f} | {pp_ratio:.3f} |")


if __name__ == "__main__":
    main()
