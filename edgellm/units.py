"""Byte sizes and durations as people write them ('1.5GiB', '900MB', '30m', '1h30m') and as
edgellm prints them."""

from __future__ import annotations

import math
import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}


def parse_size(text: str | int) -> int:
    """'1.5GiB' -> 1610612736; plain numbers are bytes. Raises ValueError with the accepted forms."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 900MB, 1.5GiB, 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n_bytes: float | None) -> str:
    """1117318304 -> '1.04 GiB'."""
    if n_bytes is None:
        return "unknown"
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def parse_duration(text: str, option: str = "--duration") -> float:
    """'30m' -> 1800.0; '90s', '1h', '1h30m' and plain seconds ('45') also work."""
    from edgellm.errors import UsageError  # noqa: PLC0415  (units stays importable on its own)

    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
        if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
            raise UsageError(f"{option} {text!r}: expected e.g. 30m, 90s, 1h or 1h30m")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if not math.isfinite(seconds):  # 400 nines parse as a float: infinity
        raise UsageError(f"{option} {seconds}: expected a positive, finite duration", hint=f"e.g. {option} 30m")
    if seconds <= 0:
        raise UsageError(f"{option} must be positive")
    return seconds
