"""Small readers of /proc and /sys below a sysroot, bounded and never raising for bad data, and
the kernel's CPU-list format ('0-3,6'). Pure but for the reads."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from edgellm.files import read_regular_file

# The kernel's largest NR_CPUS (arm64 and x86 Kconfig): a CPU id at or beyond it is junk, and
# expanding a range like 0-4000000000 would exhaust memory.
MAX_CPUS = 8192



# /proc/cpuinfo of a 256-core server is ~400 KiB; sysfs attributes are at most a page.
READ_LIMIT_BYTES = 4 * 1024**2



_CPU_ID = re.compile(r"\d{1,4}", re.ASCII)



_CPU_RANGE = re.compile(r"(\d{1,6})(?:-(\d{1,6}))?", re.ASCII)



def read_text(root: Path, relative: str, limit: int = READ_LIMIT_BYTES) -> str | None:
    """Text of root/relative (its first `limit` bytes), or None when it is missing, unreadable or
    not a regular file (never raises, never blocks)."""
    try:
        data = read_regular_file(root / relative.lstrip("/"), limit)
    except (OSError, ValueError):
        return None
    return data.decode("utf-8", errors="replace")



def read_int(root: Path, relative: str) -> int | None:
    text = read_text(root, relative)
    if text is None:
        return None
    try:
        return int(text.strip().strip("\x00").split()[0])
    except (ValueError, IndexError):
        return None



def parse_cpu_list(text: str | None) -> list[int]:
    """Parse the kernel's CPU lists ('0-3,6,8-9', or related_cpus' '0 1 2 3') into sorted ids.

    Junk yields []: anything not a number or range, a reversed range, or an id of MAX_CPUS or more.
    """
    cpus: set[int] = set()
    for part in (text or "").strip().strip("\x00").replace(",", " ").split():
        match = _CPU_RANGE.fullmatch(part)
        if match is None:
            return []
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not low <= high < MAX_CPUS:
            return []
        cpus.update(range(low, high + 1))
    return sorted(cpus)



def format_cpu_list(cpus: Iterable[int]) -> str:
    """CPU ids the way the kernel writes them: '0-3,6,8-9'. No ids (no pinning) is 'all'."""
    ids = sorted(set(cpus))
    if not ids:
        return "all"
    runs: list[str] = []
    start = 0
    for index in range(1, len(ids) + 1):
        if index == len(ids) or ids[index] != ids[index - 1] + 1:
            low, high = ids[start], ids[index - 1]
            runs.append(f"{low}-{high}" if high - low >= 2 else ",".join(map(str, range(low, high + 1))))
            start = index
    return ",".join(runs)



def parse_cpuinfo(text: str | None) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Split /proc/cpuinfo into global fields (Hardware, Model, ...) and per-processor blocks."""
    header: dict[str, str] = {}
    processors: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in (text or "").splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor" and _CPU_ID.fullmatch(value):
            current = {"processor": value}
            processors.append(current)
        elif current is not None and key not in ("Hardware", "Revision", "Serial", "Model"):
            current[key] = value
        else:
            header[key] = value
    return header, processors



def parse_meminfo(text: str | None) -> dict[str, int]:
    """/proc/meminfo values in bytes."""
    values: dict[str, int] = {}
    for line in (text or "").splitlines():
        # At most 20 digits: int() refuses longer numbers, and no machine has that many bytes.
        match = re.match(r"^(\w+(?:\(\w+\))?):\s+(\d{1,20})(?!\d)(?:\s+kB)?", line, re.ASCII)
        if match:
            factor = 1024 if line.rstrip().endswith("kB") else 1
            values[match.group(1)] = int(match.group(2)) * factor
    return values



def split_nul(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split("\x00") if item.strip()]
