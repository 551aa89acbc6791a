"""The runtime pins the process to the plan's cores before llama.cpp starts its threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

PROBE = r"""
import dataclasses, json, os, sys
from pathlib import Path
from edgellm.loader import PlanOptions, prepare
from edgellm.runtime.engine import Engine
from edgellm.runtime.types import SamplingParams
prepared = prepare(sys.argv[1], PlanOptions(), loading=True)
plan = dataclasses.replace(prepared.plan, cores=json.loads(sys.argv[2]), threads=2, threads_batch=2)
engine = Engine(prepared.model, plan)
threads = {}
# Looked at while it generates: llama.cpp's workers exist only while a thread decodes.
for _ in engine.generate([{"role": "user", "content": "hello " * 20}], SamplingParams(max_tokens=4, seed=1, ignore_eos=True)):
    for task in Path("/proc/self/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                threads[task.name + ":" + (task / "comm").read_text().strip()] = line.split(":", 1)[1].strip()
print(json.dumps({"process": sorted(os.sched_getaffinity(0)), "threads": threads}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and 2 CPUs")
def test_llama_threads_run_only_on_the_plans_cores(tiny_q4km: Path) -> None:
    first = min(os.sched_getaffinity(0))
    result = subprocess.run([sys.executable, "-c", PROBE, str(tiny_q4km), json.dumps([first])],
                            capture_output=True, text=True, env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["process"] == [first]
    assert len(seen["threads"]) > 1  # llama.cpp's workers exist ...
    assert set(seen["threads"].values()) == {str(first)}  # ... and every one is pinned
