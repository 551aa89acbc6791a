#!/usr/bin/env python3
"""What splitting a model across RPC workers costs: `edgellm bench` on this board alone, then the
same bench with the layers split across N `edgellm worker`s on loopback, alternately, ROUNDS times.

On loopback the network is nearly free, so the ratio split/local is the cost of llama.cpp's RPC
hops themselves (a round trip per worker per token, hidden states and logits copied through
sockets); across boards, 1 GbE's latency comes on top (the planner's predicted_tg_tps counts it).

Usage:
  scripts/compare_rpc_split.py MODEL.gguf [--workers 2] [--worker-mem 600MiB] [--mem-budget 700MiB]
                               [-p 64] [-n 32] [-r 3] [--rounds 3] [-t THREADS]
Prints, per test (pp, tg), the median tokens/s of each and the ratio split/local, and the plan's
split (`edgellm plan --rpc --json`: devices and predicted_tg_tps).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def workers(count: int, mem: str, threads: str | None) -> Iterator[list[str]]:
    processes, endpoints = [], []
    try:
        for _ in range(count):
            port = free_port()
            extra = ["--threads", threads] if threads else []
            processes.append(subprocess.Popen([sys.executable, "-m", "edgellm", "worker", "--port", str(port), "--mem", mem, *extra],
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            line = processes[-1].stdout.readline().decode().strip()  # type: ignore[union-attr]
            print(f"  {line}", file=sys.stderr)
            endpoints.append(f"127.0.0.1:{port}")
        time.sleep(1)
        yield endpoints
    finally:
        for process in processes:
            process.kill()
            process.wait()


def bench(model: str, args: argparse.Namespace, rpc: list[str] | None) -> dict[str, float]:
    command = [sys.executable, "-m", "edgellm", "bench", "-m", model, "-p", str(args.p), "-n", str(args.n), "-r", str(args.r), "--json"]
    if args.t:
        command += ["-t", args.t]
    if rpc:
        command += ["--rpc", ",".join(rpc), "--mem-budget", args.mem_budget]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)}: {result.stderr.strip().splitlines()[-1:]}")
    return {row["test"]: row["tps_mean"] for row in json.loads(result.stdout)["results"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-mem", default="600MiB", help="what each worker offers")
    parser.add_argument("--mem-budget", default="700MiB", help="this board's budget in the split run")
    parser.add_argument("-p", type=int, default=64)
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("-r", type=int, default=3)
    parser.add_argument("-t", default=None, help="threads for bench and the workers")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(f"starting {args.workers} workers offering {args.worker_mem} each", file=sys.stderr)
    with workers(args.workers, args.worker_mem, args.t) as endpoints:
        planned = subprocess.run([sys.executable, "-m", "edgellm", "plan", args.model, "--rpc", ",".join(endpoints),
                                  "--mem-budget", args.mem_budget, "--json"], capture_output=True, text=True, check=False)
        if planned.returncode != 0:
            sys.exit(f"error: the split does not plan: {planned.stderr.strip()}")
        plan = json.loads(planned.stdout)
        local_plan = json.loads(subprocess.run([sys.executable, "-m", "edgellm", "plan", args.model, "--json"],
                                               capture_output=True, text=True, check=False).stdout or "{}")
        time.sleep(0.5)
        runs: dict[str, dict[str, list[float]]] = {"local": {}, "split": {}}
        for round_ in range(args.rounds):
            for kind in ("local", "split") if round_ % 2 == 0 else ("split", "local"):
                speeds = bench(args.model, args, endpoints if kind == "split" else None)
                for test, tps in speeds.items():
                    runs[kind].setdefault(test, []).append(tps)
                print(f"round {round_ + 1} {kind}: " + ", ".join(f"{t} {v:.2f}" for t, v in speeds.items()), file=sys.stderr)
                time.sleep(0.5)  # a worker serves one client: let the last connection close

    print(f"model: {args.model}")
    print("split: " + ", ".join(f"{d['name']} {d['layers']} layers ({d['weights_bytes'] / 2**20:.0f} MiB)" for d in plan["devices"]))
    print(f"predicted tg t/s: local {local_plan.get('predicted_tg_tps')}, split {plan['predicted_tg_tps']}")
    print(f"{'test':8} {'local t/s':>10} {'split t/s':>10} {'split/local':>12}   (medians of {args.rounds} rounds, alternated)")
    for test in runs["local"]:
        local = statistics.median(runs["local"][test])
        split = statistics.median(runs["split"][test])
        print(f"{test:8} {local:10.2f} {split:10.2f} {split / local:12.3f}")


if __name__ == "__main__":
    main()
