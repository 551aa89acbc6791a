#!/usr/bin/env python3
"""Generation tokens/s of `edgellm run` against a bare llama-cpp-python loop.

Both load the same GGUF with the same plan (context, threads, batch, KV type, mmap) pinned to the
same cores, generate the same number of tokens greedily from the same prompt, and time generation
the same way: from the first token to the last. The rounds alternate (edgellm, bare, edgellm, ...)
so drift on a shared machine hits both; the result is the median of the per-round ratios.
Target: ratio >= 0.98 (edgellm's per-token Python work is only what streaming needs).

Example: python scripts/bench_overhead.py --tokens 128 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

BARE_LOOP = r"""
import json, os, sys, time
import llama_cpp
plan = json.loads(sys.argv[1]); model = sys.argv[2]; n = int(sys.argv[3]); prompt = sys.argv[4]
if hasattr(os, "sched_setaffinity") and set(plan["cores"]) != os.sched_getaffinity(0):
    os.sched_setaffinity(0, plan["cores"])
types = {"f16": 1, "q8_0": 8, "q4_0": 2}
llm = llama_cpp.Llama(model_path=model, n_ctx=plan["n_ctx"], n_batch=plan["n_batch"], n_ubatch=plan["n_ubatch"],
                      n_threads=plan["threads"], n_threads_batch=plan["threads_batch"], type_k=types[plan["kv_type"]],
                      type_v=types[plan["kv_type"]], flash_attn=plan["flash_attn"], use_mmap=plan["use_mmap"], verbose=False)
tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)  # the template wrote BOS
count, first = 0, None
for token in llm.generate(tokens, temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
    count += 1
    if first is None:
        first = time.perf_counter()
    if count >= n:
        break
print(json.dumps({"gen_tps": (count - 1) / (time.perf_counter() - first), "generated": count}))
"""


def synthetic_model() -> Path:
    from edgellm.paths import edgellm_home
    from edgellm.store import synthetic

    path = edgellm_home() / "synthetic" / "deepseek-r1-1.5b-Q4_K_M.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {path} (a 1.5B-shaped Q4_K_M with random weights) ...", file=sys.stderr)
        synthetic.write_synthetic_model(path, synthetic.QWEN2_1_5B, "Q4_K_M")
    return path


def edgellm_tps(model: Path, n: int, prompt: str, threads: int | None) -> float:
    command = [sys.executable, "-m", "edgellm", "run", "-m", str(model), prompt, "-n", str(n), "--temp", "0",
               "--think", "show", "--stats"]
    if threads:
        command += ["--threads", str(threads)]
    # The answer streams through the real stdout path (a pipe), as in `edgellm run ... | cat`.
    result = subprocess.run(command, capture_output=True, check=True)
    match = re.search(r"(\d+) tokens(?: \(\d+ reasoning\))? \| ([\d.]+) tok/s", result.stderr.decode())
    if not match:
        raise SystemExit(f"no stats line in: {result.stderr.decode()[-500:]}")
    if int(match.group(1)) < n:
        raise SystemExit(f"edgellm stopped after {match.group(1)} tokens (end of sequence); use another prompt")
    return float(match.group(2))


def bare_tps(model: Path, plan: dict, n: int, prompt: str) -> float:
    result = subprocess.run([sys.executable, "-c", BARE_LOOP, json.dumps(plan), str(model), str(n), prompt],
                            capture_output=True, check=True)
    return float(json.loads(result.stdout.decode().strip().splitlines()[-1])["gen_tps"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a GGUF file (default: a synthetic DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="generation threads (default: the plan's)")
    parser.add_argument("--prompt", default="Write a long story about a lighthouse keeper.")
    args = parser.parse_args()
    model = args.model or synthetic_model()
    plan_command = [sys.executable, "-m", "edgellm", "plan", str(model), "--json"]
    if args.threads:
        plan_command += ["--threads", str(args.threads)]
    plan = json.loads(subprocess.run(plan_command, capture_output=True, check=True).stdout)
    # edgellm applies the chat template; the bare loop gets the same prompt text already templated.
    from edgellm.store import synthetic  # noqa: F401  (only to fail early if edgellm is not importable)

    templated = subprocess.run(
        [sys.executable, "-c",
         "import sys\nfrom edgellm.loader import prepare, PlanOptions\nfrom edgellm.runtime.engine import Engine\n"
         "p = prepare(sys.argv[1], PlanOptions(), loading=True)\ne = Engine(p.model, p.plan)\n"
         "print(e.format_messages([{'role': 'user', 'content': sys.argv[2]}]), end='')",
         str(model), args.prompt], capture_output=True, check=True).stdout.decode()
    print(f"model {model}\nplan: {plan['threads']} threads on cores {plan['cores']}, ctx {plan['n_ctx']}, "
          f"kv {plan['kv_type']}, mmap {'on' if plan['use_mmap'] else 'off'}; {args.tokens} tokens x {args.rounds} rounds")
    ratios, ours, theirs = [], [], []
    for round_number in range(1, args.rounds + 1):
        a = edgellm_tps(model, args.tokens, args.prompt, args.threads)
        b = bare_tps(model, plan, args.tokens, templated)
        ours.append(a)
        theirs.append(b)
        ratios.append(a / b)
        print(f"round {round_number}: edgellm {a:7.2f} tok/s   bare llama-cpp-python {b:7.2f} tok/s   ratio {a / b:.3f}")
    ratio = statistics.median(ratios)
    print(f"median: edgellm {statistics.median(ours):.2f} tok/s, bare {statistics.median(theirs):.2f} tok/s, "
          f"ratio {ratio:.3f} (target >= 0.98: {'met' if ratio >= 0.98 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
