"""The host a measurement ran on, in one line: CPU model, cores, and the SIMD flags llama.cpp's
kernels use (hosts differ: a speed target holds only where it was measured). Run it to print it."""

from __future__ import annotations

import os
from pathlib import Path

# The instruction sets that pick llama.cpp's CPU kernels (x86 and Arm names as /proc/cpuinfo spells them).
KERNEL_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "sve2", "fphp")


def cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(text: str | None = None) -> str:
    for line in (cpuinfo() if text is None else text).splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def kernel_flags(text: str | None = None) -> list[str]:
    for line in (cpuinfo() if text is None else text).splitlines():
        if line.lower().startswith(("flags", "features")):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in KERNEL_FLAGS if flag in present]
    return []


def host_line() -> str:
    text = cpuinfo()
    flags = " ".join(kernel_flags(text)) or "unknown"
    return f"host: {cpu_model(text)}, {os.cpu_count()} cores, flags: {flags}"


if __name__ == "__main__":
    print(host_line())
