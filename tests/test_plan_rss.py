"""The plan's memory estimate against the peak RSS the real runtime reaches (-15%/+20%)."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
from conftest import run_cli
from test_serve import ServerProcess


def cpu_name() -> str:
    """The CPU the measurement ran on (hosts differ in what a process holds before any model)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def peak_rss_of(pid: int) -> int:
    """VmHWM (peak resident set size) of a running process."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize("ctx", [1024, 2048])
def test_plan_total_is_within_bounds_of_measured_peak_rss(mid_model: Path, ctx: int) -> None:
    plan = json.loads(run_cli("plan", str(mid_model), "--ctx", str(ctx), "--json").stdout)
    # The plan is for a full context: fill most of it (the tiny BPE makes ~3 tokens of "word ").
    prompt = " ".join(["word"] * int(ctx * 0.8 / 3)).encode()
    result = run_cli("run", "-m", str(mid_model), "--ctx", str(ctx), "--json", "-n", "8", "--seed", "1", input=prompt)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["stats"]
    assert stats["prompt_tokens"] > 0.6 * ctx
    ratio = plan["total_bytes"] / stats["peak_rss_bytes"]
    print(f"ctx={ctx} plan={plan['total_bytes']} rss={stats['peak_rss_bytes']} ratio={ratio:.3f} on {cpu_name()}", file=sys.stderr)
    assert 0.85 <= ratio <= 1.20


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's VmHWM from /proc")
def test_plan_total_is_within_bounds_of_serve_peak_rss_with_every_slot_full(mid_model: Path, tmp_path: Path) -> None:
    ctx, parallel = 1024, 2  # per slot: the KV cache holds 2048 cells
    plan = json.loads(run_cli("plan", str(mid_model), "--ctx", str(ctx), "--parallel", str(parallel), "--json").stdout)
    assert plan["n_ctx"] == ctx * parallel
    server = ServerProcess(mid_model, "--parallel", str(parallel), home=tmp_path, ctx=str(ctx))
    try:
        used: dict[int, int] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(parallel)

        def ask(index: int) -> None:
            # Each slot's own words (no shared prefix), ~80% of a slot (~3 tokens a word here).
            words = ["word", "hello", "sea"][index:] + ["word", "hello", "sea"][:index]
            prompt = f"Request {index}: " + " ".join(words[i % 3] for i in range(int(ctx * 0.8 / 3)))
            try:
                barrier.wait()
                reply = server.client(api_key="unused").completions.create(
                    model="", prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
                assert reply.usage is not None
                used[index] = reply.usage.prompt_tokens
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert not errors, errors
        assert len(used) == parallel and all(0.6 * ctx < tokens < ctx for tokens in used.values()), used
        peak = peak_rss_of(server.process.pid)
    finally:
        assert server.stop() == 0
    ratio = plan["total_bytes"] / peak
    print(f"parallel={parallel} ctx={ctx} plan={plan['total_bytes']} rss={peak} ratio={ratio:.3f} on {cpu_name()}", file=sys.stderr)
    assert 0.85 <= ratio <= 1.20
