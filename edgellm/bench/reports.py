"""`bench report FILE...`: reports from other devices, checked (a file from elsewhere is hostile
until checked), then merged into one table. Needs no model and no llama.cpp."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgellm import files
from edgellm.device.sysfs import format_cpu_list
from edgellm.errors import UsageError

MAX_REPORT_BYTES = 16 * 1024**2  # a report with hundreds of tests is ~1 MiB



def load_reports(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Read `edgellm bench --json` files, refusing (one line, naming the file) anything else:
    FIFOs and devices (only regular files are opened), huge files, non-JSON, the wrong shape."""
    hint = "make it with: edgellm bench -m MODEL --json > FILE"
    reports = []
    for path in paths:
        try:
            raw = files.read_regular_file(path, MAX_REPORT_BYTES + 1)
        except files.NotARegularFileError as exc:
            raise UsageError(f"{path}: is {exc.kind}, not a JSON file", hint=hint) from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if len(raw) > MAX_REPORT_BYTES:
            raise UsageError(f"{path}: larger than {MAX_REPORT_BYTES // 1024**2} MiB, not an `edgellm bench --json` result", hint=hint)
        try:
            data = json.loads(raw)
        except RecursionError:
            raise UsageError(f"{path}: not JSON (nested too deeply)", hint=hint) from None
        except ValueError as exc:
            raise UsageError(f"{path}: not JSON ({exc})", hint=hint) from None
        problem = report_shape_problem(data)
        if problem:
            raise UsageError(f"{path}: not an `edgellm bench --json` result: {problem}", hint=hint)
        reports.append(data)
    if not reports:
        raise UsageError("no result files given", hint="edgellm bench report pi5.json rk3588.json")
    return reports



def report_shape_problem(data: Any) -> str | None:
    """What keeps `data` from being a report merge_reports can read (None: nothing)."""
    if not isinstance(data, dict):
        return f"the top level is {_json_kind(data)}, not an object"
    device, results = data.get("device"), data.get("results")
    if not isinstance(device, dict):
        return "no 'device' object" if device is None else f"'device' is {_json_kind(device)}, not an object"
    for key in ("board", "soc", "cpu_model"):
        if device.get(key) is not None and not isinstance(device[key], str):
            return f"device.{key} is {_json_kind(device[key])}, not a string"
    if not isinstance(results, list):
        return "no 'results' list" if results is None else f"'results' is {_json_kind(results)}, not a list"
    for index, row in enumerate(results):
        where = f"results[{index}]"
        if not isinstance(row, dict):
            return f"{where} is {_json_kind(row)}, not an object"
        for key, valid, expected, required in _RESULT_FIELDS:
            value = row.get(key)
            if value is None and not required:
                continue
            if value is None:
                return f"{where} has no '{key}'"
            if not valid(value):
                return f"{where}.{key} is {_json_kind(value)}, not {expected}"
        temp = (row.get("thermal") or {}).get("temp_max_c")
        if temp is not None and not _is_number(temp):
            return f"{where}.thermal.temp_max_c is {_json_kind(temp)}, not a number"
    return None



def _is_text(value: Any) -> bool:
    return isinstance(value, str)



def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31



def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)  # a 400-digit integer cannot be formatted as t/s
    except OverflowError:
        return False
    return True



def _is_cpu_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_count(cpu) for cpu in value)



def _is_object(value: Any) -> bool:
    return isinstance(value, dict)



# What merge_reports reads from each result: key, check, what it must be, required.
_RESULT_FIELDS: tuple[tuple[str, Callable[[Any], bool], str, bool], ...] = (
    ("test", _is_text, "a string", True),
    ("threads", _is_count, "a whole number", True),
    ("tps_mean", _is_number, "a number", True),
    ("tps_std", _is_number, "a number", True),
    ("cores_choice", _is_text, "a string", False),
    ("cores", _is_cpu_list, "a list of CPU ids", False),
    ("thermal", _is_object, "an object", False),
)



def _json_kind(value: Any) -> str:
    """'a list', 'the number 5', "the string 'fast'" (short: error messages are one line)."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return f"the number {str(value)[:40]}"



def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row per device, model and thread count; one column per test (mean ± std t/s)."""
    tests: list[str] = []
    rows: dict[tuple[str, str, str, str], dict[str, str]] = {}
    maxima: dict[tuple[str, str, str, str], float] = {}
    for report in reports:
        device = device_label(report["device"])
        model = model_label(report)
        for row in report["results"]:
            if row["test"] not in tests:
                tests.append(row["test"])
            key = (device, model, str(row["threads"]), row.get("cores_choice") or format_cpu_list(row.get("cores") or []))
            rows.setdefault(key, {})[row["test"]] = f"{row['tps_mean']:.2f} ± {row['tps_std']:.2f}"
            temp = (row.get("thermal") or {}).get("temp_max_c")
            if temp is not None:
                maxima[key] = max(maxima.get(key, temp), temp)
    headers = ["device", "model", "threads", "cores", *tests, "max °C"]
    table = [
        [*key, *(cells.get(t, "-") for t in tests), f"{maxima[key]:.0f}" if key in maxima else "-"]
        for key, cells in rows.items()
    ]
    return {"headers": headers, "rows": table}



# The names a report goes by are data, not looks: merge_reports keys its rows (`bench report --json`)
# by them; the views in edgellm.ui.bench show the same names.
def device_label(device: dict[str, Any]) -> str:
    """A device's board, else its SoC, else its CPU."""
    board, soc = device.get("board", "unknown"), device.get("soc", "unknown")
    if board not in ("", "unknown"):
        return board
    return soc if soc not in ("", "unknown") else str(device.get("cpu_model", "unknown"))



def model_label(report: dict[str, Any]) -> str:
    name = str(report.get("model", "?"))
    if report.get("synthetic") and "synthetic" not in name.lower():
        name += " (synthetic)"
    return f"{name} {report.get('quant', '')}".strip()
