#!/usr/bin/env python3
"""Compare `edgellm plan`'s total_bytes with the peak RSS `edgellm run` reaches, for a
1.5B-shaped Q4_K_M model (synthetic weights: same shape, same size, same memory).

Example: python scripts/check_plan_rss.py --ctx 4096 8192
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from edgellm import synthetic
from edgellm.profiles import edgellm_home


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a GGUF file (default: a synthetic DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M)")
    parser.add_argument("--ctx", type=int, nargs="+", default=[4096])
    parser.add_argument("--fill", type=float, default=0.8, help="fraction of the context the prompt fills (the plan is for a full context)")
    args = parser.parse_args()
    model = args.model
    if model is None:
        model = edgellm_home() / "synthetic" / "deepseek-r1-1.5b-Q4_K_M.gguf"
        if not model.exists():
            model.parent.mkdir(parents=True, exist_ok=True)
            synthetic.write_synthetic_model(model, synthetic.QWEN2_1_5B, "Q4_K_M")
    edgellm = [sys.executable, "-m", "edgellm"]
    print(f"model: {model}")
    for ctx in args.ctx:
        plan = json.loads(subprocess.run([*edgellm, "plan", str(model), "--ctx", str(ctx), "--json"],
                                         capture_output=True, check=True).stdout)
        run = subprocess.run([*edgellm, "run", "-m", str(model), "--ctx", str(ctx), "--json", "-n", "16", "--seed", "1"],
                             input=" ".join(["word"] * int(ctx * args.fill / 3)).encode(), capture_output=True, check=True)
        stats = json.loads(run.stdout)["stats"]
        ratio = plan["total_bytes"] / stats["peak_rss_bytes"]
        print(f"ctx {ctx:>6}: plan total {plan['total_bytes'] / 2**20:8.1f} MiB  peak RSS {stats['peak_rss_bytes'] / 2**20:8.1f} MiB  "
              f"ratio {ratio:.3f}  (mmap {'on' if plan['use_mmap'] else 'off'}, prompt {stats['prompt_tokens']} tokens)  "
              f"{'OK' if 0.85 <= ratio <= 1.20 else 'OUT OF BOUNDS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
