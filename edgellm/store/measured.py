"""What `edgellm bench` measured on this device, kept for the planner: the effective memory
bandwidth generation reached (tg tokens/s x bytes read per token, which predicts any model's
generation speed here) and the prompt speed by model shape. `plan` uses them instead of the
profile's estimate and says so; `edgellm bench --forget` removes them.

One JSON file in edgellm's home, a record per device (`Device.identity`: board, SoC, CPU model
and core count; a profile covers many devices, a measurement only the one it ran on). Read as hostile: a bad file
is no measurement, never an error.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgellm.paths import edgellm_home

MAX_FILE_BYTES = 1024 * 1024


def measured_file() -> Path:
    return edgellm_home() / "state" / "measured.json"


@dataclass
class Measured:
    """One device's measurements: generation (as bandwidth) and prompt tokens/s by model shape."""

    bandwidth_gbps: float
    tg_tps: float
    model: str
    threads: int
    measured_at: str
    pp_tps: dict[str, float] = field(default_factory=dict)  # model shape -> prompt tokens/s

    def describe(self) -> str:
        return (f"{self.bandwidth_gbps:.3g} GB/s effective bandwidth, measured here by edgellm bench on {self.measured_at[:10]} "
                f"({self.tg_tps:g} tok/s generating {self.model} on {self.threads} threads; edgellm bench --forget drops it)")


def shape_of(arch: str, n_params: int, quant: str) -> str:
    """A model shape as prompt speed depends on it: architecture, size, quantization."""
    return f"{arch} {round(n_params / 1e6)}M {quant}"


def _read() -> dict[str, Any]:
    try:
        path = measured_file()
        if path.stat().st_size > MAX_FILE_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(data: dict[str, Any]) -> None:
    path = measured_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole, then renamed: a bench killed half-way leaves the old file, not a torn one.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".measured-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _parsed(record: object) -> Measured | None:
    """A record as a Measured, or None when it does not read as one."""
    if not isinstance(record, dict):
        return None
    try:
        measured = Measured(
            bandwidth_gbps=float(record["bandwidth_gbps"]), tg_tps=float(record["tg_tps"]), model=str(record["model"])[:200],
            threads=int(record["threads"]), measured_at=str(record["measured_at"])[:40],
            pp_tps={str(k)[:200]: float(v) for k, v in dict(record.get("pp_tps") or {}).items()},
        )
    except (KeyError, TypeError, ValueError):
        return None
    if not 0 < measured.bandwidth_gbps < 10_000 or not 0 < measured.tg_tps < 1e6:
        return None
    return measured


def load(device: str) -> Measured | None:
    """A device's measurements (`device`: its identity), or None (none, or not readable as one)."""
    return _parsed(_read().get(device))


def save(device: str, measured: Measured) -> None:
    """Keep `measured` for this device; prompt speeds of other shapes measured before stay."""
    data = _read()
    earlier = _parsed(data.get(device))
    if earlier is not None:
        measured.pp_tps = {**earlier.pp_tps, **measured.pp_tps}
    data[device] = asdict(measured)
    _write(data)


def forget(device: str) -> Measured | None:
    """Remove this device's measurements; returns what was removed."""
    data = _read()
    record = data.pop(device, None)
    if record is not None:
        _write(data)
    return _parsed(record)
