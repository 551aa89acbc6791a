#!/usr/bin/env python3
"""Check that a synthetic model stands in for a real one: same file size (within 1%), same speed (5%).

Builds a synthetic model (random bytes written directly in llama.cpp's per-tensor quantized types)
into a cache directory and, with --reference, a model of the same shape quantized by llama.cpp itself
from random F16 weights. Prints both file sizes and, with --bench, generation tokens/s of both with
the same thread count (alternating runs, best and median of --repeat).

    python scripts/check_synthetic.py                      # size only, 1.5B Q4_K_M
    python scripts/check_synthetic.py --reference --bench  # the full check (minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from edgellm.runtime import native  # noqa: E402
from edgellm.store import synthetic

SHAPES = {"1.5b": synthetic.QWEN2_1_5B, "7b": synthetic.QWEN2_7B, "tiny": synthetic.TINY}


def _mb(n: int) -> str:
    return f"{n:,} bytes ({n / 1e6:,.1f} MB)"


def build_synthetic(path: Path, shape: synthetic.ModelShape, quant: str, force: bool) -> float:
    """Write the synthetic model unless a file of the expected size is there; return seconds taken."""
    if not force and path.exists() and path.stat().st_size == synthetic.expected_file_size(shape, quant):
        return 0.0
    start = time.perf_counter()
    synthetic.write_synthetic_model(path, shape, quant)
    return time.perf_counter() - start


def build_reference(path: Path, shape: synthetic.ModelShape, quant: str, force: bool, threads: int) -> float:
    """Random F16 weights quantized by llama.cpp; the F16 intermediate is deleted afterwards."""
    if not force and path.exists():
        return 0.0
    start = time.perf_counter()
    f16 = path.with_name(path.stem + "-f16.gguf")
    synthetic.write_tiny_model(f16, shape=shape, dtype="F16")
    try:
        native.quantize_model(f16, path, quant, threads=threads)
    finally:
        f16.unlink(missing_ok=True)
    return time.perf_counter() - start


def tokens_per_second(path: Path, threads: int, n_tokens: int, n_ctx: int) -> float:
    """Greedy generation speed, not counting the prompt (timed from the first generated token)."""
    llama_cpp = native.load_llama_cpp()
    llm = llama_cpp.Llama(
        str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0
    )
    prompt = llm.tokenize(b"The quick brown fox jumps over the lazy dog.", add_bos=True)
    first = 0.0
    count = 0
    for _ in llm.generate(prompt, temp=0.0, reset=True):
        count += 1
        if count == 1:
            first = time.perf_counter()
        if count == n_tokens + 1:
            break
    elapsed = time.perf_counter() - first
    del llm
    return n_tokens / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.5b", help="model shape (default 1.5b)")
    parser.add_argument("--quant", default="Q4_K_M", help="quantization (default Q4_K_M)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgellm-synthetic",
        help="where the model files go (default ~/.cache/edgellm-synthetic)",
    )
    parser.add_argument("--reference", action="store_true", help="also build a llama.cpp-quantized model")
    parser.add_argument("--bench", action="store_true", help="measure generation tokens/s")
    parser.add_argument("--threads", type=int, default=2, help="threads for quantizing and generating")
    parser.add_argument("--tokens", type=int, default=48, help="tokens generated per speed run")
    parser.add_argument("--repeat", type=int, default=4, help="speed runs per model")
    parser.add_argument("--n-ctx", type=int, default=512, help="context size for speed runs")
    parser.add_argument("--force", action="store_true", help="rebuild files already in the cache")
    args = parser.parse_args(argv)

    shape = SHAPES[args.shape]
    quant = args.quant.upper()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    syn = args.cache_dir / f"synthetic-{args.shape}-{quant}.gguf"
    ref = args.cache_dir / f"reference-{args.shape}-{quant}.gguf"

    seconds = build_synthetic(syn, shape, quant, args.force)
    expected = synthetic.expected_file_size(shape, quant)
    print(f"synthetic  {syn}: {_mb(syn.stat().st_size)}" + (f", built in {seconds:.1f} s" if seconds else ""))
    print(f"expected   {_mb(expected)}")
    models = {"synthetic": syn}
    if args.reference:
        seconds = build_reference(ref, shape, quant, args.force, args.threads)
        ref_size = ref.stat().st_size
        diff = (syn.stat().st_size - ref_size) / ref_size
        print(f"reference  {ref}: {_mb(ref_size)}" + (f", built in {seconds:.1f} s" if seconds else ""))
        print(f"size difference: {diff:+.3%} ({'OK' if abs(diff) < 0.01 else 'MORE THAN 1%'})")
        models["reference"] = ref

    if args.bench:
        runs: dict[str, list[float]] = {label: [] for label in models}
        for run in range(args.repeat):
            # Alternate models and flip their order each round, so drift and "ran second" affect both.
            order = list(models.items())[:: 1 if run % 2 == 0 else -1]
            for label, path in order:
                tps = tokens_per_second(path, args.threads, args.tokens, args.n_ctx)
                runs[label].append(tps)
                print(f"run {run + 1} {label:<10} {tps:6.2f} tokens/s ({args.threads} threads)")
        for label, values in runs.items():
            print(f"{label:<10} best {max(values):6.2f}  median {statistics.median(values):6.2f} tokens/s")
        if "reference" in runs:
            for stat, fn in (("best", max), ("median", statistics.median)):
                diff = fn(runs["synthetic"]) / fn(runs["reference"]) - 1
                print(f"speed difference ({stat}): {diff:+.2%} ({'OK' if abs(diff) < 0.05 else 'MORE THAN 5%'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
