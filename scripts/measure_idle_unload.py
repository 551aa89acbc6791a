#!/usr/bin/env python3
"""What `edgellm serve --idle-unload` gives back, and what the next request pays for it.

Starts `edgellm serve --idle-unload 5s` on a model (default: the synthetic DeepSeek-R1-Distill-
Qwen-1.5B Q4_K_M), asks once with the openai client, reads the server's RSS, waits for the unload,
reads the RSS again, asks again (the model loads on that request) and prints the server's own
lines about it.

Example: python scripts/measure_idle_unload.py --idle 5s
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import psutil

from edgellm.store.synthetic import synthetic_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the synthetic 1.5B Q4_K_M)")
    parser.add_argument("--idle", default="5s", help="the --idle-unload duration")
    parser.add_argument("--port", type=int, default=8097)
    args = parser.parse_args()
    model = args.model or synthetic_model_path("deepseek-r1-1.5b:Q4_K_M", announce=print)
    process = subprocess.Popen(
        [sys.executable, "-m", "edgellm", "serve", "-m", str(model), "--port", str(args.port), "--idle-unload", args.idle,
         "--parallel", "1", "--ctx", "4096"],
        stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    assert process.stderr is not None
    threading.Thread(target=lambda: [lines.append(line.rstrip()) for line in process.stderr], daemon=True).start()

    def wait_for(pattern: str, deadline: float = 300) -> None:
        end = time.monotonic() + deadline
        while not any(re.search(pattern, line) for line in lines):
            if process.poll() is not None or time.monotonic() > end:
                sys.exit("the server stopped or did not get there:\n" + "\n".join(lines))
            time.sleep(0.2)

    try:
        wait_for(r"serving .* at ")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="none", max_retries=0)
        model_id = client.models.list().data[0].id

        def ask() -> str:
            started = time.perf_counter()
            reply = client.completions.create(model=model_id, prompt="Hi", max_tokens=8)
            return f"{time.perf_counter() - started:.2f}s, {reply.usage.completion_tokens if reply.usage else '?'} tokens"

        def rss() -> str:
            return f"{psutil.Process(process.pid).memory_info().rss / 2**30:.2f} GiB"

        print("first request:", ask())
        print("RSS loaded:", rss())
        wait_for(r"model unloaded")
        print("RSS after the idle unload:", rss())
        print("request after the unload (loads the model):", ask())
        print("RSS loaded again:", rss())
    finally:
        process.terminate()
        process.wait(timeout=60)
    print("\n".join(line for line in lines if "model" in line or "POST" in line))


if __name__ == "__main__":
    main()
