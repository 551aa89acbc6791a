"""`edgellm bench` keeps what it measured on this device and `edgellm plan` predicts from it (issue
27): the effective bandwidth generation reached, so the prediction for the model benchmarked is its
measured speed (and scales by bytes read per token for others); `bench --forget` drops it. Real
processes, the tiny test model, a temporary EDGELLM_HOME (conftest)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli


def plan_json(model: Path) -> dict:
    result = run_cli("plan", str(model), "--json")
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def test_plan_predicts_from_what_bench_measured_until_it_is_forgotten(tiny_q4km: Path) -> None:
    before = plan_json(tiny_q4km)
    assert "measured here" not in before["reasons"]["predicted_tg_tps"]

    bench = run_cli("bench", "-m", str(tiny_q4km), "-p", "16", "-n", "16", "-r", "2", "--json")
    assert bench.returncode == 0, bench.stderr.decode()
    assert b"kept for plan:" in bench.stderr
    report = json.loads(bench.stdout)
    tg = next(row["tps_mean"] for row in report["results"] if row["test"] == "tg16")
    stored = json.loads((Path(os.environ["EDGELLM_HOME"]) / "state" / "measured.json").read_text())
    (record,) = stored.values()
    assert record["tg_tps"] == pytest.approx(tg, rel=0.01) and record["threads"] == report["plan_threads"]
    assert list(record["pp_tps"]) and all(value > 0 for value in record["pp_tps"].values())

    after = plan_json(tiny_q4km)
    assert "measured here by edgellm bench" in after["reasons"]["predicted_tg_tps"]
    # The model benchmarked: predicted from its own measurement (bandwidth kept to 4 digits).
    assert after["predicted_tg_tps"] == pytest.approx(tg, rel=0.01)

    forgot = run_cli("bench", "--forget")
    assert forgot.returncode == 0 and b"forgot" in forgot.stderr
    assert plan_json(tiny_q4km)["reasons"]["predicted_tg_tps"] == before["reasons"]["predicted_tg_tps"]
    again = run_cli("bench", "--forget")
    assert again.returncode == 0 and b"nothing measured on this device" in again.stderr


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", b'{"x": 1}', b"\xff\xfe", json.dumps({"k": {"bandwidth_gbps": "fast"}}).encode(),
])
def test_a_measurement_file_that_does_not_read_is_no_measurement(tiny_q4km: Path, content: bytes) -> None:
    before = plan_json(tiny_q4km)
    path = Path(os.environ["EDGELLM_HOME"]) / "state" / "measured.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    assert plan_json(tiny_q4km)["reasons"]["predicted_tg_tps"] == before["reasons"]["predicted_tg_tps"]


def test_a_record_of_this_device_with_nonsense_values_is_ignored(tiny_q4km: Path) -> None:
    from edgellm.device.hardware import detect
    from edgellm.store import measured

    before = plan_json(tiny_q4km)
    path = measured.measured_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    bad = {"bandwidth_gbps": -3, "tg_tps": 1e12, "model": "x", "threads": 2, "measured_at": "2026"}
    path.write_text(json.dumps({detect("/").identity: bad}))
    assert plan_json(tiny_q4km)["reasons"]["predicted_tg_tps"] == before["reasons"]["predicted_tg_tps"]
