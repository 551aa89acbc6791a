"""Hardware detection: pure parsers over a sysroot directory.

Everything is read from files below `sysroot` (normally "/"), so tests and bug reports can feed
captures of real devices. A missing or unreadable file degrades to "unknown"; nothing here raises
for bad or absent data. The small readers are in device/sysfs.py, the heat readers in
device/heat.py; macOS has no /proc: device/macos.py reads `sysctl` output instead.
"""

from __future__ import annotations

import os
import platform
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgellm.device.heat import read_thermal
from edgellm.device.macos import detect_macos, parse_sysctl_text, run_sysctl
from edgellm.device.sysfs import MAX_CPUS, format_cpu_list, parse_cpu_list, parse_cpuinfo, parse_meminfo, read_int, read_text, split_nul
from edgellm.device.types import UNKNOWN, Cluster, Device, assign_big_little

# ARM "CPU part" ids (implementer 0x41 = Arm) for the cores found on edge boards and phones,
# ranked by single-core performance. The rank only orders clusters that no measured fact
# (cpu_capacity, clock) tells apart, and the name labels them: clusters are never formed from it.
ARM_PARTS: dict[str, tuple[str, int]] = {
    "0xc07": ("Cortex-A7", 3),
    "0xd03": ("Cortex-A53", 10),
    "0xd04": ("Cortex-A35", 5),
    "0xd05": ("Cortex-A55", 12),
    "0xd46": ("Cortex-A510", 14),
    "0xd80": ("Cortex-A520", 15),
    "0xd07": ("Cortex-A57", 20),
    "0xd08": ("Cortex-A72", 30),
    "0xd09": ("Cortex-A73", 32),
    "0xd0a": ("Cortex-A75", 35),
    "0xd0b": ("Cortex-A76", 40),
    "0xd0d": ("Cortex-A77", 45),
    "0xd41": ("Cortex-A78", 50),
    "0xd4b": ("Cortex-A78C", 50),
    "0xd44": ("Cortex-X1", 60),
    "0xd47": ("Cortex-A710", 55),
    "0xd4d": ("Cortex-A715", 58),
    "0xd81": ("Cortex-A720", 62),
    "0xd87": ("Cortex-A725", 64),
    "0xd48": ("Cortex-X2", 70),
    "0xd4e": ("Cortex-X3", 75),
    "0xd82": ("Cortex-X4", 80),
    "0xd85": ("Cortex-X925", 85),
    "0xd0c": ("Neoverse-N1", 42),
    "0xd40": ("Neoverse-V1", 55),
    "0xd49": ("Neoverse-N2", 58),
    "0xd4f": ("Neoverse-V2", 70),
}

# Other implementers' cores, keyed by (implementer, part): the same part number means different
# cores at different vendors (Qualcomm 0x001 is Oryon, Samsung 0x001 is Exynos M1).
VENDOR_PARTS: dict[tuple[str, str], tuple[str, int]] = {
    ("0x51", "0x001"): ("Oryon", 85),
    ("0x51", "0x800"): ("Kryo 2xx Gold", 32),
    ("0x51", "0x801"): ("Kryo 2xx Silver", 10),
    ("0x51", "0x802"): ("Kryo 3xx Gold", 35),
    ("0x51", "0x803"): ("Kryo 3xx Silver", 12),
    ("0x51", "0x804"): ("Kryo 4xx Gold", 40),
    ("0x51", "0x805"): ("Kryo 4xx Silver", 12),
    ("0x53", "0x001"): ("Exynos M1", 30),
    ("0x53", "0x002"): ("Exynos M3", 40),
    ("0x53", "0x003"): ("Exynos M4", 45),
    ("0x53", "0x004"): ("Exynos M5", 50),
    ("0x48", "0xd01"): ("TaiShan v110", 40),
    ("0x48", "0xd02"): ("TaiShan v120", 45),
}
IMPLEMENTERS: dict[str, str] = {
    "0x41": "Arm", "0x42": "Broadcom", "0x43": "Cavium", "0x46": "Fujitsu", "0x48": "HiSilicon",
    "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x53": "Samsung", "0x61": "Apple", "0x6d": "Microsoft",
    "0xc0": "Ampere",
}
# In-order efficiency designs: the cluster made of them is `little_cores`. A slowest cluster of
# any other known core (Cortex-A720 on an all-big-core Dimensity) is not an efficiency cluster.
EFFICIENCY_PARTS: frozenset[tuple[str, str]] = frozenset(
    {("0x41", part) for part in ("0xc07", "0xd03", "0xd04", "0xd05", "0xd46", "0xd80")}
    | {("0x51", part) for part in ("0x801", "0x803", "0x805")}
)

# Two classes of core are told apart by a clock or capacity at least this much lower (a gap
# between neighbours once sorted). Below it are the "favoured" cores that turbo a few percent
# higher (Intel Turbo Boost Max 3.0, AMD preferred cores) and RK3588's A76 pairs on separate
# clocks; above it, Intel E-cores vs P-cores (>=19%), Zen5c vs Zen5 (~35%), Oryon's two tiers (18%).
CLASS_GAP = 0.15

# ARM /proc/cpuinfo "Features" flags -> edgellm's feature names (the vocabulary of `detect --json`).
ARM_FEATURES: dict[str, str] = {
    "asimd": "neon",
    "neon": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    "sme": "sme",
}

# x86 kernel flags that change which llama.cpp kernels run.
# x86 kernel flags (their /proc/cpuinfo spelling) that llama.cpp's x86 CPU variants key on
# (ggml/src/CMakeLists.txt GGML_CPU_ALL_VARIANTS, ggml-cpu/arch/x86/cpu-feats.cpp), reported
# whether or not the installed build uses them. llama.cpp's "AVX512" is F+CD+VL+DQ+BW.
X86_FEATURES: tuple[str, ...] = (
    "sse3", "ssse3", "sse4_1", "sse4_2", "avx", "f16c", "fma", "bmi2", "avx2", "avx_vnni",
    "avx512f", "avx512cd", "avx512dq", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
)

# Substrings of device-tree "compatible" entries that name a SoC, most specific first.
KNOWN_SOCS: tuple[tuple[str, str], ...] = (
    ("rockchip,rk3588s", "RK3588S"),
    ("rockchip,rk3588", "RK3588"),
    ("rockchip,rk3576", "RK3576"),
    ("rockchip,rk3568", "RK3568"),
    ("rockchip,rk3566", "RK3566"),
    ("brcm,bcm2712", "BCM2712"),
    ("brcm,bcm2711", "BCM2711"),
    ("brcm,bcm2837", "BCM2837"),
)


# ---------------------------------------------------------------------------------------------
# small readers


# ---------------------------------------------------------------------------------------------
# pieces of detection


def _cpu_ids(root: Path, processors: list[dict[str, str]]) -> tuple[list[int], int]:
    online = parse_cpu_list(read_text(root, "sys/devices/system/cpu/online"))
    possible = parse_cpu_list(read_text(root, "sys/devices/system/cpu/possible"))
    from_cpuinfo = sorted(cpu for cpu in {int(p["processor"]) for p in processors} if cpu < MAX_CPUS)
    cpus = online or from_cpuinfo
    return cpus, max(len(possible), len(cpus))


def _max_freq_khz(root: Path, cpu: int) -> int | None:
    # sysfs cpuN/cpufreq is usually a symlink into cpufreq/policyN; when a capture lost the
    # link, find the policy whose related_cpus lists this CPU.
    value = read_int(root, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq")
    if value is not None:
        return value
    policies = root / "sys/devices/system/cpu/cpufreq"
    try:
        entries = sorted(policies.glob("policy*"))
    except OSError:
        return None
    for policy in entries:
        related = parse_cpu_list(read_text(policy, "related_cpus") or read_text(policy, "affected_cpus"))
        if cpu in related:
            return read_int(policy, "cpuinfo_max_freq")
    return None


def _x86_core_types(root: Path) -> dict[int, str]:
    """Intel hybrid chips list P-cores and E-cores under /sys/devices/cpu_core and cpu_atom."""
    kinds: dict[int, str] = {}
    for directory, name in (("cpu_core", "P-core"), ("cpu_atom", "E-core")):
        for cpu in parse_cpu_list(read_text(root, f"sys/devices/{directory}/cpus")):
            kinds[cpu] = name
    return kinds


def build_clusters(
    cpus: list[int],
    parts: dict[int, str],
    capacities: dict[int, int | None],
    freqs: dict[int, int | None],
    core_kinds: dict[int, str] | None = None,
    *,
    is_arm: bool = True,
    identities: dict[int, tuple[str, str, str, str]] | None = None,
    threads_per_core: dict[int, int] | None = None,
    cache_kb: dict[int, int] | None = None,
) -> list[Cluster]:
    """Group CPUs into clusters by whatever differs between them, fastest first.

    The signals, in order, each splitting the groups the previous ones left:
    1. Intel's own lists of P-cores and E-cores (/sys/devices/cpu_core, cpu_atom), or on ARM the
       core's identity from /proc/cpuinfo: implementer, part, variant and revision;
    2. cpu_capacity where every CPU has one and they differ, else the maximum clock: a gap of CLASS_GAP or more
       between neighbouring values starts a new class (Oryon's two tiers, Zen5 vs Zen5c, Meteor
       Lake's low-power E-cores), smaller steps do not (favoured cores, RK3588's A76 pairs);
    3. on x86, when neither Intel's lists nor clocks are there (a bare /proc/cpuinfo): Hyper-
       Threading on some cores only (P-cores), then a last-level cache several times smaller
       (Meteor Lake's low-power E-cores have no L3).
    A part table never forms a cluster; it names clusters and orders those no fact tells apart.
    Each cluster's `signal` says what split it off, for `detect`.
    """
    core_kinds = core_kinds or {}
    identities = identities or {}
    threads_per_core = threads_per_core or {}
    groups: list[tuple[list[int], list[str]]] = [(list(cpus), [])] if cpus else []

    if cpus and all(cpu in core_kinds for cpu in cpus):
        groups = _split(groups, core_kinds.__getitem__, _kind_signal)
    elif cpus and all(cpu in identities for cpu in cpus):
        groups = _split(groups, identities.__getitem__, _identity_signal(identities, groups[0][0]))
    elif cpus and all(cpu in parts for cpu in cpus):
        groups = _split(groups, parts.__getitem__, lambda part: f"CPU part {part}")

    # A capacity every CPU shares (1024 everywhere: x86 kernels, ARM boards without
    # capacity-dmips-mhz) says nothing; the clocks may.
    if all(capacities.get(cpu) for cpu in cpus) and len({capacities[cpu] for cpu in cpus}) > 1:
        groups = _split_by_gap(groups, capacities, "cpu_capacity", str)
    else:
        groups = _split_by_gap(groups, freqs, "max clock", _ghz)

    cache_kb = cache_kb or {}
    clocks_known = bool(cpus) and all(freqs.get(cpu) for cpu in cpus)
    if not is_arm and not core_kinds and not clocks_known:
        if threads_per_core:
            groups = _split(groups, lambda cpu: threads_per_core.get(cpu, 1),
                            lambda n: f"{n} thread{'s' if n > 1 else ''} per core")
        if all(cache_kb.get(cpu) for cpu in cpus):
            groups = _split_by_gap(groups, cache_kb, "last-level cache", lambda kb: f"{kb} KB", gap=0.75)

    clusters = [_cluster(members, signals, parts, capacities, freqs, core_kinds, identities, is_arm)
                for members, signals in groups]
    kind_rank = {"P-core": 2, "E-core": 1}

    def speed(cluster: Cluster) -> tuple[int, ...]:
        # Intel's lists are the chip's own word; after them measured facts (capacity, then clock)
        # outrank the part table, which does not know every vendor's cores; then hyper-threads
        # and a larger cache (x86). When nothing tells, the smaller cluster is the faster one:
        # SoCs have fewer big cores than small ones (Oryon's prime pair beside six).
        first = cluster.cpus[0]
        return (kind_rank.get(core_kinds.get(first, ""), 0), cluster.capacity or 0, cluster.max_freq_khz or 0,
                _part_rank(identities, parts, first), threads_per_core.get(first, 1), cache_kb.get(first, 0),
                -len(cluster.cpus))

    clusters.sort(key=speed, reverse=True)
    if not clusters:
        return clusters
    clusters[0].fastest = True
    if len(clusters) == 1:
        clusters[0].signal = clusters[0].signal or "one kind of core: nothing Linux reports differs between the CPUs"
        return clusters
    _name_tiers(clusters, is_arm)
    _mark_efficiency(clusters, identities, parts, is_arm)
    return clusters


Signals = list[str]


def _split(groups: list[tuple[list[int], Signals]], key_of: Callable[[int], Any],
           describe: Callable[[Any], str]) -> list[tuple[list[int], Signals]]:
    out: list[tuple[list[int], Signals]] = []
    for members, signals in groups:
        by_key: dict[Any, list[int]] = {}
        for cpu in members:
            by_key.setdefault(key_of(cpu), []).append(cpu)
        if len(by_key) == 1:
            out.append((members, signals))
            continue
        out.extend((sub, [*signals, describe(key)]) for key, sub in by_key.items())
    return out


def _split_by_gap(groups: list[tuple[list[int], Signals]], values: dict[int, int] | dict[int, int | None], what: str,
                  show: Callable[[int], str], gap: float = CLASS_GAP) -> list[tuple[list[int], Signals]]:
    out: list[tuple[list[int], Signals]] = []
    for members, signals in groups:
        known = {cpu: values[cpu] for cpu in members if values.get(cpu)}
        distinct = sorted({v for v in known.values() if v}, reverse=True)
        classes: list[list[int]] = [distinct[:1]] if distinct else []
        for value in distinct[1:]:
            if value < classes[-1][-1] * (1 - gap):
                classes.append([value])
            else:
                classes[-1].append(value)
        if len(classes) < 2 or len(known) < len(members):
            out.append((members, signals))
            continue
        tops = [max(c) for c in classes]
        for index, values_of_class in enumerate(classes):
            sub = [cpu for cpu in members if known[cpu] in values_of_class]
            others = " / ".join(show(t) for i, t in enumerate(tops) if i != index)
            out.append((sub, [*signals, f"{what} {show(tops[index])} vs {others}"]))
    return out


def _ghz(khz: int) -> str:
    return f"{khz / 1e6:.2f} GHz"


def _kind_signal(kind: str) -> str:
    return f"listed in /sys/devices/{'cpu_core' if kind == 'P-core' else 'cpu_atom'}/cpus"


def _identity_signal(identities: dict[int, tuple[str, str, str, str]], cpus: list[int]) -> Callable[[Any], str]:
    """Name what differs: the part (with its vendor when vendors differ), else the variant and
    revision (Oryon's tiers are one part in two variants)."""
    seen = {identities[cpu] for cpu in cpus}
    vendors_differ = len({ident[0] for ident in seen}) > 1
    parts_differ = vendors_differ or len({ident[1] for ident in seen}) > 1

    def describe(identity: tuple[str, str, str, str]) -> str:
        implementer, part, variant, revision = identity
        if vendors_differ:
            return f"CPU implementer {implementer} ({IMPLEMENTERS.get(implementer, 'unknown')}), part {part}"
        if parts_differ:
            return f"CPU part {part}"
        return f"CPU part {part} variant {variant} revision {revision}"

    return describe


def _known_core(implementer: str, part: str | None) -> tuple[str, int] | None:
    """(name, rank) from the part tables: Arm's own by part, other vendors' by (implementer, part)."""
    if not part:
        return None
    return ARM_PARTS.get(part) if implementer == "0x41" else VENDOR_PARTS.get((implementer, part))


def _core_name(implementer: str, part: str | None) -> str | None:
    if not part:
        return None
    known = _known_core(implementer, part)
    return known[0] if known else f"{IMPLEMENTERS.get(implementer, f'implementer {implementer}')} part {part}"


def _implementer(identities: dict[int, tuple[str, str, str, str]], cpu: int) -> str:
    """The CPU's implementer; Arm's own when /proc/cpuinfo names only the part."""
    return (identities[cpu][0] if cpu in identities else "") or "0x41"


def _part_rank(identities: dict[int, tuple[str, str, str, str]], parts: dict[int, str], cpu: int) -> int:
    known = _known_core(_implementer(identities, cpu), parts.get(cpu))
    return known[1] if known else 0


def _cluster(members: list[int], signals: Signals, parts: dict[int, str], capacities: dict[int, int | None],
             freqs: dict[int, int | None], core_kinds: dict[int, str],
             identities: dict[int, tuple[str, str, str, str]], is_arm: bool) -> Cluster:
    caps = [cap for cap in (capacities.get(c) for c in members) if cap]
    clocks = [khz for khz in (freqs.get(c) for c in members) if khz]
    first = members[0]
    part = parts.get(first)
    name = core_kinds.get(first) or _core_name(_implementer(identities, first), part) or "cpu"
    if not is_arm and clocks and len(set(clocks)) > 1:
        # Turbo Boost Max 3.0 / AMD preferred cores: a few cores clock higher, same kind of core.
        favoured = [cpu for cpu in members if freqs.get(cpu) == max(clocks)]
        signals = [*signals, f"cpus {format_cpu_list(favoured)} favoured at {_ghz(max(clocks))}, the rest {_ghz(min(clocks))}"]
    return Cluster(cpus=sorted(members), name=name, max_freq_khz=max(clocks) if clocks else None,
                   capacity=max(caps) if caps else None, part=part, signal="; ".join(signals))


def _name_tiers(clusters: list[Cluster], is_arm: bool) -> None:
    """Tell apart clusters of the same name: a slower E-core class is Meteor Lake's LP E-cores;
    x86 clusters split by clock alone (AMD Zen5 + Zen5c) are performance and efficiency."""
    for index, cluster in enumerate(clusters):
        earlier = [c.name for c in clusters[:index]]
        if cluster.name == "E-core" and "E-core" in earlier:
            cluster.name = "LP E-core"
        elif cluster.name == "cpu" and not is_arm:
            cluster.name = "performance" if index == 0 else "LP efficiency" if "efficiency" in earlier else "efficiency"


def _mark_efficiency(clusters: list[Cluster], identities: dict[int, tuple[str, str, str, str]],
                     parts: dict[int, str], is_arm: bool) -> None:
    """On x86 every cluster but the fastest is efficiency cores (E-cores, compact cores). On ARM
    only the slowest, and only if it is an in-order little design; when the part is not reported
    at all, the slowest of several clusters is taken to be the little one."""
    if not is_arm:
        for cluster in clusters[1:]:
            cluster.efficiency = True
        return
    slowest = clusters[-1]
    cpu = slowest.cpus[0]
    if cpu not in parts:
        slowest.efficiency = True
        return
    slowest.efficiency = (_implementer(identities, cpu), parts[cpu]) in EFFICIENCY_PARTS


def _cache_kb(cpus: list[int], by_id: dict[int, dict[str, str]]) -> dict[int, int]:
    """x86 /proc/cpuinfo "cache size" (the last-level cache a core sees), in KB."""
    sizes: dict[int, int] = {}
    for cpu in cpus:
        match = re.fullmatch(r"(\d{1,9}) KB", by_id.get(cpu, {}).get("cache size", ""), re.ASCII)
        if match:
            sizes[cpu] = int(match.group(1))
    return sizes


def _identity(processor: dict[str, str]) -> tuple[str, str, str, str]:
    """(implementer, part, variant, revision) as /proc/cpuinfo spells them, lower-cased."""
    return tuple(processor.get(f"CPU {key}", "").strip().lower()  # type: ignore[return-value]
                 for key in ("implementer", "part", "variant", "revision"))


def _features(arch: str, processors: list[dict[str, str]]) -> list[str]:
    if not processors:
        return []
    first = processors[0]
    if "flags" in first:
        flags = set(first["flags"].split())
        if "pni" in flags:  # the kernel's name for SSE3
            flags.add("sse3")
        return [name for name in X86_FEATURES if name in flags]
    flags = set(first.get("Features", "").split())
    found = {ARM_FEATURES[flag] for flag in flags if flag in ARM_FEATURES}
    if {"fphp", "asimdhp"} <= flags:
        found.add("fp16")
    if arch == "aarch64" and flags:
        found.add("neon")  # Advanced SIMD is mandatory on ARMv8-A
    order = ["neon", "dotprod", "fp16", "i8mm", "bf16", "sve", "sve2", "sme"]
    return [name for name in order if name in found]


def _arch(root: Path, header: dict[str, str], processors: list[dict[str, str]]) -> str:
    if str(root) == "/":
        machine = platform.machine().lower()
        return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) or UNKNOWN
    if not processors:
        return _arch_from_cpufreq(root)
    first = processors[0]
    if "flags" in first:
        return "x86_64" if " lm " in f" {first['flags']} " else "i686"
    architecture = first.get("CPU architecture", "")
    if architecture.startswith("8") or "AArch64" in first.get("model name", ""):
        return "aarch64"
    if architecture.startswith("7"):
        return "armv7l"
    return UNKNOWN


# cpufreq drivers that exist only on x86 (ARM has cpufreq-dt, cppc_cpufreq, vendor drivers).
X86_CPUFREQ_DRIVERS = ("intel_pstate", "intel_cpufreq", "amd-pstate", "amd-pstate-epp", "acpi-cpufreq")


def _arch_from_cpufreq(root: Path) -> str:
    """A capture without /proc/cpuinfo (bug reports paste sysfs and lscpu): x86 by its cpufreq driver."""
    driver = (read_text(root, "sys/devices/system/cpu/cpu0/cpufreq/scaling_driver", limit=64) or "").strip()
    if driver in X86_CPUFREQ_DRIVERS or (root / "sys/devices/system/cpu/intel_pstate").is_dir():
        return "x86_64"
    return UNKNOWN


def _soc(root: Path, compatible: list[str], header: dict[str, str], parts: dict[int, str], board: str) -> str:
    for entry in compatible:
        for pattern, name in KNOWN_SOCS:
            if entry.lower().startswith(pattern):
                return name
    counts = _part_counts(parts)
    if counts == {"0xd05": 4, "0xd0b": 4}:
        return "RK3588 (from CPU parts)"
    if "Raspberry Pi 5" in board:
        return "BCM2712"  # some Pi 5 kernels report 'Hardware : BCM2835'
    if "Raspberry Pi 4" in board:
        return "BCM2711"
    # /sys/devices/soc0: Qualcomm gives machine "SM8750" and family "Snapdragon" (soc_id is a
    # number); Exynos kernels give soc_id "EXYNOS8890". Arm's SMCCC driver writes "jep106:..." codes.
    machine = _soc0(root, "machine")
    family = _soc0(root, "family")
    if machine:
        return f"{family} {machine}" if family and family.lower() not in machine.lower() else machine
    soc_id = _soc0(root, "soc_id")
    if soc_id:
        return soc_id
    hardware = header.get("Hardware")
    if hardware and not hardware.upper().startswith("BCM2835"):
        return hardware
    if compatible:
        return compatible[-1]
    return UNKNOWN


def _soc0(root: Path, name: str) -> str:
    value = (read_text(root, f"sys/devices/soc0/{name}", limit=256) or "").strip().strip("\x00")
    if not value or value.isdigit() or value.lower().startswith("jep106") or not value.isprintable():
        return ""
    return value


# Android kernels: the GKI release names it ("6.1.75-android14-11-g..."), and AOSP's clang builds it.
_ANDROID_KERNEL = re.compile(r"-android\d*|\(Android \(\d+", re.ASCII)


def _android(root: Path, kernel_version: str) -> str | None:
    """What shows this is Android (a phone, whatever its clusters look like), or None."""
    if _ANDROID_KERNEL.search(kernel_version):
        return f"Android kernel ({kernel_version.split()[2] if len(kernel_version.split()) > 2 else kernel_version[:60]})"
    for marker in ("system/build.prop", "system/bin/app_process64", "system/bin/app_process"):
        if (root / marker).is_file():
            return f"/{marker} exists"
    if str(root) == "/" and os.environ.get("ANDROID_ROOT") and os.environ.get("ANDROID_DATA"):
        return "ANDROID_ROOT and ANDROID_DATA are set (Termux)"
    return None


def _midr_identities(root: Path, cpus: list[int]) -> dict[int, tuple[str, str, str, str]]:
    """(implementer, part, variant, revision) from each CPU's MIDR_EL1 register in sysfs, for
    kernels whose /proc/cpuinfo does not repeat them per processor."""
    found: dict[int, tuple[str, str, str, str]] = {}
    for cpu in cpus:
        text = (read_text(root, f"sys/devices/system/cpu/cpu{cpu}/regs/identification/midr_el1", limit=64) or "").strip()
        try:
            midr = int(text, 16)
        except ValueError:
            continue
        if not 0 < midr < 2**64:
            continue
        found[cpu] = (f"0x{(midr >> 24) & 0xFF:02x}", f"0x{(midr >> 4) & 0xFFF:03x}",
                      f"0x{(midr >> 20) & 0xF:x}", str(midr & 0xF))
    return found


def _part_counts(parts: dict[int, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for part in parts.values():
        counts[part] = counts.get(part, 0) + 1
    return counts


def _board(root: Path, header: dict[str, str]) -> str:
    model = split_nul(read_text(root, "proc/device-tree/model"))
    if model:
        return model[0]
    if header.get("Model"):
        return header["Model"]
    vendor = (read_text(root, "sys/class/dmi/id/sys_vendor") or "").strip()
    product = (read_text(root, "sys/class/dmi/id/product_name") or "").strip()
    if product and product.lower() not in ("to be filled by o.e.m.", "system product name"):
        return product if product.lower().startswith(vendor.lower()) else f"{vendor} {product}".strip()
    return UNKNOWN


def _core_of_cpu(root: Path, cpus: list[int], by_id: dict[int, dict[str, str]]) -> dict[int, str]:
    """Map each CPU to its physical core, so SMT siblings (x86 hyper-threads) count once."""
    cores: dict[int, str] = {}
    for cpu in cpus:
        siblings = read_text(root, f"sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        info = by_id.get(cpu, {})
        if siblings and siblings.strip():
            cores[cpu] = siblings.strip()
        elif "core id" in info:
            cores[cpu] = f"{info.get('physical id', '0')}:{info['core id']}"
    return cores


def _page_size(root: Path) -> int | None:
    if str(root) == "/":
        try:
            return os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    smaps = read_text(root, "proc/self/smaps") or ""
    match = re.search(r"KernelPageSize:\s+(\d{1,12}) kB", smaps, re.ASCII)
    return int(match.group(1)) * 1024 if match else None


# ---------------------------------------------------------------------------------------------
# entry points


def detect(sysroot: Path | str = "/") -> Device:
    """Detect the device whose /proc and /sys are below `sysroot` ("/" is this machine)."""
    root = Path(sysroot)
    if str(root) == "/" and platform.system() == "Darwin":
        return detect_macos(run_sysctl)
    sysctl_capture = read_text(root, "sysctl.txt")
    if sysctl_capture is not None and read_text(root, "proc/cpuinfo") is None:
        # A captured `sysctl -a` from a Mac (bug reports, tests).
        values = parse_sysctl_text(sysctl_capture)
        return detect_macos(lambda keys: values, live=False)
    header, processors = parse_cpuinfo(read_text(root, "proc/cpuinfo"))
    cpus, possible = _cpu_ids(root, processors)
    by_id = {int(p["processor"]): p for p in processors}
    parts = {
        cpu: by_id[cpu]["CPU part"].lower()
        for cpu in cpus
        if cpu in by_id and "CPU part" in by_id[cpu]
    }
    identities = {cpu: _identity(by_id[cpu]) for cpu in cpus if cpu in by_id and "CPU part" in by_id[cpu]}
    if len(identities) < len(cpus):
        from_midr = _midr_identities(root, cpus)
        if len(from_midr) == len(cpus):
            identities = from_midr
            parts = {cpu: identity[1] for cpu, identity in from_midr.items()}
    capacities = {cpu: read_int(root, f"sys/devices/system/cpu/cpu{cpu}/cpu_capacity") for cpu in cpus}
    freqs = {cpu: _max_freq_khz(root, cpu) for cpu in cpus}
    arch = _arch(root, header, processors)
    core_of_cpu = _core_of_cpu(root, cpus, by_id)
    threads_on_core = Counter(core_of_cpu.values())
    threads_per_core = {cpu: threads_on_core[core_of_cpu[cpu]] for cpu in cpus if cpu in core_of_cpu}
    clusters = build_clusters(
        cpus, parts, capacities, freqs, _x86_core_types(root), is_arm=not arch.startswith(("x86", "i686")),
        identities=identities, threads_per_core=threads_per_core, cache_kb=_cache_kb(cpus, by_id),
    )
    meminfo = parse_meminfo(read_text(root, "proc/meminfo"))
    compatible = split_nul(read_text(root, "proc/device-tree/compatible"))
    board = _board(root, header)
    first = processors[0] if processors else {}
    cpu_model = first.get("model name") or (clusters[0].name if clusters and clusters[0].part else UNKNOWN)
    available = meminfo.get("MemAvailable")
    if available is None and "MemFree" in meminfo:
        available = meminfo["MemFree"] + meminfo.get("Cached", 0) + meminfo.get("Buffers", 0)
    kernel_version = (read_text(root, "proc/version", limit=1024) or "").strip()
    if not kernel_version and str(root) == "/":
        kernel_version = f"Linux version {platform.release()}"
    device = Device(
        board=board,
        soc=_soc(root, compatible, header, parts, board) if parts or compatible or header else UNKNOWN,
        arch=arch,
        cpu_model=cpu_model,
        cpu_count=len(cpus),
        cpus_possible=possible,
        clusters=clusters,
        features=_features(arch, processors),
        mem_total_bytes=meminfo.get("MemTotal"),
        mem_available_bytes=available,
        swap_total_bytes=meminfo.get("SwapTotal"),
        swap_free_bytes=meminfo.get("SwapFree"),
        page_size_bytes=_page_size(root),
        thermal=read_thermal(root),
        dt_compatible=compatible,
        cpu_parts=parts,
        core_of_cpu=core_of_cpu,
        system="linux",
        sysroot=str(root),
        kernel=kernel_version.split()[2] if kernel_version.startswith("Linux version ") and len(kernel_version.split()) > 2 else UNKNOWN,
        android=_android(root, kernel_version),
    )
    assign_big_little(device)
    return device


# --- heat: thermal zones, CPU frequency, Raspberry Pi throttling ------------------------------------


# --- macOS --------------------------------------------------------------------------------------


