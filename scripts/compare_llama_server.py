#!/usr/bin/env python3
"""Compare `edgellm serve --parallel` with llama.cpp's `llama-server -np` on the same model.

llama-server is built from the llama.cpp sources vendored in the sdist of the installed
llama-cpp-python (so both run the same ggml code) without the AMX kernels, and cached. For each
number of concurrent clients the two servers (both up, the idle one asleep) take turns, ROUNDS
times each, on the same model, threads, batch sizes, slots and total context. Every client streams one completion of
--tokens tokens (ignore_eos) with a prompt of its own; aggregate tok/s is all generated tokens
over the wall time from the first request to the last token, TTFT the time to a client's first
streamed token. Medians of the rounds are printed side by side, and the ratios
(edgellm/llama-server) as the median of the back-to-back pairs' ratios.

Usage:
    python scripts/compare_llama_server.py MODEL.gguf [--clients 1,2,4,8] [--parallel 4] [--ctx 4096]
        [--tokens 64] [--rounds 3] [-t THREADS]
    python scripts/compare_llama_server.py --synthetic deepseek-r1-1.5b   # the 1.5B shape, random weights
    python scripts/compare_llama_server.py --build-only
Environment: LLAMA_SERVER_CACHE (default ~/.cache/edgellm/llama-server), JOBS (compile jobs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import host_line  # noqa: E402  (scripts/ is not a package)

NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"  # llama.cpp issue 20824: AMX kernels crash on batches


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_llama_tool(target: str, cache_env: str) -> Path:
    """llama.cpp's `target` (llama-server, llama-batched-bench) built from the installed
    llama-cpp-python's sdist without the AMX kernels; cached in $cache_env or ~/.cache/edgellm/target."""
    llama_version = version("llama-cpp-python")
    cache = Path(os.environ.get(cache_env, Path.home() / ".cache/edgellm" / target))
    binary = cache / llama_version / platform.machine() / target
    if binary.is_file():
        return binary
    work = cache / llama_version / "src"
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"llama_cpp_python-{llama_version}"
    if not source.is_dir():
        say(f"downloading the llama-cpp-python {llama_version} sdist")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={llama_version}", "-d", str(work)], check=True)
        with tarfile.open(work / f"llama_cpp_python-{llama_version}.tar.gz") as archive:
            archive.extractall(work, filter="data")
    llama_cpp = source / "vendor" / "llama.cpp"
    build = Path(tempfile.mkdtemp(prefix=f"{target}-build-"))
    flags = NO_AMX if platform.machine() == "x86_64" else ""
    say(f"building {target} from {llama_cpp} (once; cached in {cache})")
    subprocess.run(["cmake", "-S", str(llama_cpp), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
                    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                    "-DLLAMA_BUILD_TOOLS=ON", f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"],
                   check=True, stdout=sys.stderr)
    jobs = os.environ.get("JOBS") or str(os.cpu_count() or 2)
    subprocess.run(["cmake", "--build", str(build), "--target", target, "-j", jobs], check=True, stdout=sys.stderr)
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build / "bin" / target, binary)
    shutil.rmtree(build, ignore_errors=True)
    return binary


def build_llama_server() -> Path:
    return build_llama_tool("llama-server", "LLAMA_SERVER_CACHE")


def model_of(args: argparse.Namespace) -> Path:
    """The model the `model` argument or `--synthetic NAME` names (a synthetic one is built once, cached)."""
    if args.synthetic:
        from edgellm.store.synthetic import synthetic_model_path  # noqa: PLC0415  (only for --synthetic)

        return Path(synthetic_model_path(args.synthetic))
    if args.model:
        return Path(args.model)
    raise SystemExit("give MODEL.gguf or --synthetic NAME")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, name: str, command: list[str], port: int) -> None:
        self.name = name
        self.port = port
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"{name} exited:\n{self.log.read().decode(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200 and json.loads(response.read()).get("status") == "ok":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        raise SystemExit(f"{name} did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def load(port: int, clients: int, tokens: int, round_index: int) -> tuple[float, float, int]:
    """(aggregate tok/s, median TTFT s, tokens) for `clients` concurrent streaming completions."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
    first: list[float] = []
    counts: list[int] = []
    ends: list[float] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def one(index: int) -> None:
        try:
            barrier.wait()
            started = time.perf_counter()
            got = 0
            ttft = None
            # A prompt of its own per client and round: no server may reuse another's cache.
            prompt = f"Client {index} of round {round_index}: write a long story about the sea and the wind."
            for chunk in client.completions.create(model="m", prompt=prompt, max_tokens=tokens, stream=True,
                                                   temperature=0.8, extra_body={"ignore_eos": True}):
                if chunk.choices and chunk.choices[0].text:
                    got += 1
                    if ttft is None:
                        ttft = time.perf_counter() - started
            first.append(ttft if ttft is not None else float("nan"))
            counts.append(got)
            ends.append(time.perf_counter())
        except BaseException as exc:  # noqa: BLE001  (reported by the caller)
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"a client failed: {errors[0]!r}")
    # Chunks may carry more than one token; the usage the servers report is exact, so count tokens
    # as requested: each completion ran to max_tokens (ignore_eos).
    total = tokens * clients
    return total / (max(ends) - started), statistics.median(first), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--synthetic", help="a catalog shape, e.g. deepseek-r1-1.5b (built once, cached)")
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=4096, help="total context, shared by the slots")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-t", "--threads", type=int)
    parser.add_argument("--build-only", action="store_true")
    args = parser.parse_args()

    binary = build_llama_server()
    say(f"llama-server: {binary}")
    if args.build_only:
        return
    model = model_of(args)

    per_slot = args.ctx // args.parallel  # edgellm's --ctx is per slot; llama-server's -c is the total
    plan = json.loads(subprocess.run([sys.executable, "-m", "edgellm", "plan", str(model), "--ctx", str(per_slot),
                                      "--parallel", str(args.parallel), "--json"]
                                     + (["-t", str(args.threads)] if args.threads else []),
                                     capture_output=True, text=True, check=True).stdout)
    threads, n_batch, n_ubatch = plan["threads"], plan["n_batch"], plan["n_ubatch"]
    say(f"model {model.name}: {args.parallel} slots of {plan['n_ctx_per_slot']} tokens, context {plan['n_ctx']} in all, "
        f"{threads} threads, batch {n_batch}/{n_ubatch}")

    def edgellm(port: int) -> Server:
        return Server("edgellm", [sys.executable, "-m", "edgellm", "serve", "-m", str(model), "--port", str(port),
                                  "--ctx", str(per_slot), "-t", str(threads), "--parallel", str(args.parallel),
                                  "--queue", "64", "--alias", "m"], port)

    def llama(port: int) -> Server:
        return Server("llama-server", [str(binary), "-m", str(model), "--port", str(port), "-c", str(plan["n_ctx"]),
                                       "-np", str(args.parallel), "-t", str(threads), "-tb", str(plan["threads_batch"]),
                                       "-b", str(n_batch), "-ub", str(n_ubatch), "-fa", "on" if plan["flash_attn"] else "off",
                                       "-ctk", plan["kv_type"], "-ctv", plan["kv_type"], "--no-webui", "-a", "m"], port)

    clients = [int(n) for n in args.clients.split(",")]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    ratios: dict[int, list[tuple[float, float]]] = {}  # per pair of back-to-back runs: (tok/s, TTFT) ratios
    # Both servers stay up (an idle one sleeps) and take turns on every measurement, the order
    # swapped each round: on a shared machine, drift then hits both sides of each pair alike.
    servers = [edgellm(free_port()), llama(free_port())]
    try:
        for server in servers:
            load(server.port, 1, 8, -1)  # warm-up
        for round_index in range(args.rounds):
            for n in clients:
                order = servers if (round_index + n) % 2 == 0 else servers[::-1]
                pair: dict[str, tuple[float, float]] = {}
                for server in order:
                    tps, ttft, _ = load(server.port, n, args.tokens, round_index)
                    pair[server.name] = (tps, ttft)
                    results.setdefault((server.name, n), []).append((tps, ttft))
                    say(f"round {round_index + 1}/{args.rounds} {server.name:12s} {n} clients: {tps:6.1f} tok/s, median TTFT {ttft:.2f}s")
                ours, theirs = pair["edgellm"], pair["llama-server"]
                ratios.setdefault(n, []).append((ours[0] / theirs[0], ours[1] / theirs[1]))
    finally:
        for server in servers:
            server.stop()

    print(f"\n{host_line()}")
    print(f"{model.name}, {args.parallel} slots, context {plan['n_ctx']}, {threads} threads, {args.tokens} tokens per client, "
          f"median of {args.rounds} rounds, servers alternated on every measurement")
    print("| clients | edgellm tok/s | llama-server tok/s | ratio | edgellm TTFT | llama-server TTFT | TTFT ratio |")
    print("|---|---|---|---|---|---|---|")
    for n in clients:
        ours = results[("edgellm", n)]
        theirs = results[("llama-server", n)]
        tps, ref_tps = statistics.median(r[0] for r in ours), statistics.median(r[0] for r in theirs)
        ttft, ref_ttft = statistics.median(r[1] for r in ours), statistics.median(r[1] for r in theirs)
        # Ratios: the median of the per-pair ratios (each pair ran back to back).
        tps_ratio = statistics.median(r[0] for r in ratios[n])
        ttft_ratio = statistics.median(r[1] for r in ratios[n])
        print(f"| {n} | {tps:.1f} | {ref_tps:.1f} | {tps_ratio:.3f} | {ttft:.2f}s | {ref_ttft:.2f}s | {ttft_ratio:.2f} |")

if __name__ == "__main__":
    main()
