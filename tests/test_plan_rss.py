"""The plan's memory estimate against the peak RSS the real runtime reaches (-15%/+20%)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import run_cli

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
    print(f"ctx={ctx} plan={plan['total_bytes']} rss={stats['peak_rss_bytes']} ratio={ratio:.3f}", file=sys.stderr)
    assert 0.85 <= ratio <= 1.20
