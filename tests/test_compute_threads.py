"""A thread that stops decoding lets its llama.cpp compute threads (its OpenMP team) go.

Every thread that decodes keeps an OpenMP team of its own; once the process holds more OpenMP
threads than cores, libgomp sleeps at barriers instead of spinning, and a decode crosses hundreds
of them. serve decoded once on the main thread (the warm-up), then on its generation thread: the
generation ran ~30% slower than `run` (issue 27). Now `run`'s generation frees its team when it ends,
and serve's generation thread frees its own whenever it goes idle. Counted here in /proc, in a
fresh process: the OS threads, with a model planned for 2 threads (so each team has one worker).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

PROBE = r"""
import dataclasses, json, os, sys, threading, time
from edgellm.loader import PlanOptions, prepare
from edgellm.runtime.batch import Finished, SequenceRequest
from edgellm.runtime.engine import Engine
from edgellm.runtime.types import Prompt, SamplingParams

def tasks():
    return len(os.listdir("/proc/self/task"))

prepared = prepare(sys.argv[1], PlanOptions(), loading=True)
engine = Engine(prepared.model, dataclasses.replace(prepared.plan, threads=2, threads_batch=2))
params = SamplingParams(max_tokens=6, seed=1, ignore_eos=True)
before = tasks()
during = [tasks() for _ in engine.generate_from_prompt("hello " * 8, params)]
after_run = tasks()

# serve's way: the scheduler stepped by a long-lived generation thread, one request, then idle.
scheduler = engine.scheduler
generator = threading.Thread(target=scheduler.run, daemon=True)
generator.start()
done = threading.Event()
seen = []
def emit(event):
    seen.append(tasks())
    if isinstance(event, Finished):
        done.set()
tokens = list(engine.llm.tokenize(b"hello hello hello", add_bos=True))
scheduler.submit(SequenceRequest(Prompt(tokens), params, emit))
assert done.wait(60)
deadline = time.monotonic() + 10
while tasks() > before + 1 and time.monotonic() < deadline:
    time.sleep(0.05)
idle_serve = tasks()
scheduler.stop()
generator.join(10)
print(json.dumps({"before": before, "during": max(during), "after_run": after_run,
                  "serving": max(seen), "idle_serve": idle_serve}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_a_thread_that_stops_decoding_lets_its_compute_threads_go(tiny_q4km: Path) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, str(tiny_q4km)], capture_output=True, text=True,
                            env=cli_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    if counts["during"] == counts["before"]:
        pytest.skip(f"this llama.cpp build starts no compute threads of its own to count: {counts}")
    assert counts["after_run"] == counts["before"], counts  # run's generation ended: its workers are gone
    assert counts["serving"] > counts["before"] + 1, counts  # the generation thread and its workers
    assert counts["idle_serve"] == counts["before"] + 1, counts  # idle: the generation thread alone
