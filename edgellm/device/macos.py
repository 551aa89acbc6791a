"""macOS has no /proc: the Device from `sysctl` values (live, or a captured `sysctl -a`)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable

from edgellm.device.types import UNKNOWN, Cluster, Device, assign_big_little

SysctlReader = Callable[[Iterable[str]], dict[str, str]]



MACOS_KEYS = (
    "hw.perflevel0.physicalcpu", "hw.perflevel1.physicalcpu", "hw.perflevel0.name",
    "hw.perflevel1.name", "hw.perflevel0.cpusperl2", "hw.ncpu", "hw.logicalcpu", "hw.memsize",
    "hw.pagesize", "machdep.cpu.brand_string", "hw.model", "hw.optional.arm.FEAT_DotProd",
    "hw.optional.arm.FEAT_I8MM", "hw.optional.arm.FEAT_BF16", "hw.optional.arm.FEAT_FP16",
    "hw.optional.neon", "hw.optional.AdvSIMD", "hw.optional.avx2_0", "hw.optional.avx512f",
    "hw.optional.fma", "hw.cpufrequency_max", "hw.perflevel0.cpufrequency_max",
)



def run_sysctl(keys: Iterable[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key in keys:
        try:
            out = subprocess.run(
                ["sysctl", "-n", key], capture_output=True, text=True, timeout=2, check=False
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            values[key] = out.stdout.strip()
    return values



def parse_sysctl_text(text: str) -> dict[str, str]:
    """Parse `sysctl -a` output ('name: value' lines) into a dict (for captures)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            values[key.strip()] = value.strip()
    return values



def detect_macos(read: SysctlReader, *, live: bool = True) -> Device:
    """Detect an Apple machine from sysctl values (perflevel0 = performance cores, listed first)."""
    values = read(MACOS_KEYS)

    def number(key: str) -> int | None:
        try:
            return int(values[key])
        except (KeyError, ValueError):
            return None

    perf = number("hw.perflevel0.physicalcpu")
    eff = number("hw.perflevel1.physicalcpu") or 0
    total = number("hw.ncpu") or number("hw.logicalcpu") or ((perf or 0) + eff)
    clusters: list[Cluster] = []
    if perf:
        # macOS numbers efficiency cores first on Apple Silicon; the ids are only labels here
        # because macOS offers no CPU affinity.
        clusters.append(Cluster(cpus=list(range(eff, eff + perf)), name="performance", fastest=True))
        if eff:
            clusters.append(Cluster(cpus=list(range(eff)), name="efficiency", efficiency=True))
    elif total:
        clusters.append(Cluster(cpus=list(range(total)), name="cpu", fastest=True))
    is_arm = values.get("hw.optional.arm.FEAT_DotProd") is not None or "Apple" in values.get(
        "machdep.cpu.brand_string", ""
    )
    features: list[str] = []
    if is_arm:
        features.append("neon")
        for key, name in (
            ("hw.optional.arm.FEAT_DotProd", "dotprod"),
            ("hw.optional.arm.FEAT_FP16", "fp16"),
            ("hw.optional.arm.FEAT_I8MM", "i8mm"),
            ("hw.optional.arm.FEAT_BF16", "bf16"),
        ):
            if values.get(key) == "1":
                features.append(name)
    else:
        for key, name in (("hw.optional.fma", "fma"), ("hw.optional.avx2_0", "avx2"), ("hw.optional.avx512f", "avx512f")):
            if values.get(key) == "1":
                features.append(name)
    available_bytes: int | None = None
    if live:
        try:
            import psutil  # noqa: PLC0415  (only needed on a live Mac)

            available_bytes = int(psutil.virtual_memory().available)
        except Exception:  # noqa: BLE001  (psutil on an unknown platform: the size is simply unknown)
            available_bytes = None
    device = Device(
        board=values.get("hw.model", UNKNOWN),
        soc=values.get("machdep.cpu.brand_string", UNKNOWN),
        arch="arm64" if is_arm else "x86_64",
        cpu_model=values.get("machdep.cpu.brand_string", UNKNOWN),
        cpu_count=total,
        cpus_possible=total,
        clusters=clusters,
        features=features,
        mem_total_bytes=number("hw.memsize"),
        mem_available_bytes=available_bytes,
        page_size_bytes=number("hw.pagesize"),
        system="darwin",
    )
    assign_big_little(device)
    return device
