"""Clusters from whatever differs between the cores: table tests of the pure grouping, and of the
sysroot signals (Intel's core lists, MIDR registers, Android markers) on small hand-made trees.
The real captures are checked in test_hardware.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import write_tree

from edgellm.device.hardware import X86_FEATURES, build_clusters, detect
from edgellm.device.profiles import load_profiles, select_profile
from edgellm.device.sysfs import format_cpu_list
from edgellm.plan.planner import select_cores

ARM = "0x41"


def _same(cpus: range, value: Any) -> dict[int, Any]:
    return dict.fromkeys(cpus, value)


def _ident(implementer: str, part: str, variant: str = "0x0", revision: str = "0") -> tuple[str, str, str, str]:
    return (implementer, part, variant, revision)


# (id, build_clusters arguments, expected [(name, cpus, efficiency)] fastest first)
CASES: list[tuple[str, dict[str, Any], list[tuple[str, list[int], bool]]]] = [
    (
        # Intel 12th-14th gen with Hyper-Threading: 4 P-cores (8 threads), 8 E-cores; two P-cores
        # are favoured (Turbo Boost Max 3.0) and clock 4.8 instead of 4.7 GHz: still one cluster.
        "alder-lake-favoured-cores",
        {"cpus": list(range(16)), "parts": {}, "capacities": {},
             "freqs": {**_same(range(2), 4800000), **_same(range(2, 8), 4700000), **_same(range(8, 16), 3400000)},
             "core_kinds": {**_same(range(8), "P-core"), **_same(range(8, 16), "E-core")}, "is_arm": False},
        [("P-core", list(range(8)), False), ("E-core", list(range(8, 16)), True)],
    ),
    (
        # Meteor Lake: the low-power island's E-cores are listed in cpu_atom with the others.
        "meteor-lake-lp-e-cores",
        {"cpus": list(range(22)), "parts": {}, "capacities": {},
             "freqs": {**_same(range(12), 4800000), **_same(range(12, 20), 3800000), **_same(range(20, 22), 2500000)},
             "core_kinds": {**_same(range(12), "P-core"), **_same(range(12, 22), "E-core")}, "is_arm": False},
        [("P-core", list(range(12)), False), ("E-core", list(range(12, 20)), True), ("LP E-core", [20, 21], True)],
    ),
    (
        # AMD Zen5 + Zen5c: no Intel lists; the compact cores' clock is ~35% lower.
        "zen5-and-zen5c-by-clock",
        {"cpus": list(range(24)), "parts": {}, "capacities": {},
             "freqs": {**{cpu: 5157000 - 40000 * (cpu % 4) for cpu in range(8)}, **_same(range(8, 24), 3300000)},
             "is_arm": False},
        [("performance", list(range(8)), False), ("efficiency", list(range(8, 24)), True)],
    ),
    (
        # Hybrid without clocks or Intel's lists (an old kernel): Hyper-Threading only on P-cores.
        "hyper-threads-only-on-p-cores",
        {"cpus": list(range(12)), "parts": {}, "capacities": {}, "freqs": {},
             "threads_per_core": {**_same(range(8), 2), **_same(range(8, 12), 1)}, "is_arm": False},
        [("performance", list(range(8)), False), ("efficiency", list(range(8, 12)), True)],
    ),
    (
        # A server whose preferred cores spread 10% in small steps: one chip, one cluster.
        "server-preferred-core-spread",
        {"cpus": list(range(16)), "parts": {}, "capacities": {},
             "freqs": {cpu: 5700000 - 35000 * cpu for cpu in range(16)}, "is_arm": False},
        [("cpu", list(range(16)), False)],
    ),
    (
        # Snapdragon 8 Elite: every core is Qualcomm part 0x001; the tiers differ in clock.
        "oryon-two-tiers-by-clock",
        {"cpus": list(range(8)), "parts": _same(range(8), "0x001"), "capacities": {},
             "freqs": {**_same(range(6), 3532800), **_same(range(6, 8), 4320000)},
             "identities": _same(range(8), _ident("0x51", "0x001", "0x4", "4"))},
        [("Oryon", [6, 7], False), ("Oryon", list(range(6)), False)],
    ),
    (
        # The same tiers told apart only by the CPU variant (no cpufreq in the capture).
        "oryon-two-tiers-by-variant",
        {"cpus": list(range(8)), "parts": _same(range(8), "0x001"), "capacities": {}, "freqs": {},
             "identities": {**_same(range(6), _ident("0x51", "0x001", "0x4", "4")),
                         **_same(range(6, 8), _ident("0x51", "0x001", "0x3", "4"))}},
        [("Oryon", [6, 7], False), ("Oryon", list(range(6)), False)],
    ),
    (
        # Dimensity 9300: 1+3 Cortex-X4 (3.25 and 2.85 GHz, one class) + 4 Cortex-A720, no A5xx.
        "dimensity-9300-all-big-cores",
        {"cpus": list(range(8)), "parts": {**_same(range(4), "0xd81"), **_same(range(4, 8), "0xd82")},
             "capacities": {}, "freqs": {**_same(range(4), 2000000), **_same(range(4, 7), 2850000), 7: 3250000},
             "identities": {**_same(range(4), _ident(ARM, "0xd81")), **_same(range(4, 8), _ident(ARM, "0xd82"))}},
        [("Cortex-X4", [4, 5, 6, 7], False), ("Cortex-A720", [0, 1, 2, 3], False)],
    ),
    (
        # cpu_capacity, where every CPU has one, decides over the clock.
        "capacity-decides",
        {"cpus": list(range(8)), "parts": {}, "capacities": {**_same(range(4), 400), **_same(range(4, 8), 1024)},
             "freqs": _same(range(8), 2000000)},
        [("cpu", [4, 5, 6, 7], False), ("cpu", [0, 1, 2, 3], True)],
    ),
    (
        # x86 kernels give every CPU cpu_capacity 1024: no information, so the clocks decide.
        "uniform-capacity-leaves-it-to-the-clocks",
        {"cpus": list(range(8)), "parts": {}, "capacities": _same(range(8), 1024),
         "freqs": {**_same(range(4), 5090910), **_same(range(4, 8), 3506494)}, "is_arm": False},
        [("performance", [0, 1, 2, 3], False), ("efficiency", [4, 5, 6, 7], True)],
    ),
    (
        # Exynos 9810: Samsung's M3 is not in Arm's table; its vendor is told apart, and the A55s
        # are the efficiency cluster.
        "exynos-m3-and-a55",
        {"cpus": list(range(8)), "parts": {**_same(range(4), "0xd05"), **_same(range(4, 8), "0x002")},
             "capacities": {}, "freqs": {**_same(range(4), 1794000), **_same(range(4, 8), 2704000)},
             "identities": {**_same(range(4), _ident(ARM, "0xd05")), **_same(range(4, 8), _ident("0x53", "0x002"))}},
        [("Exynos M3", [4, 5, 6, 7], False), ("Cortex-A55", [0, 1, 2, 3], True)],
    ),
    (
        # A vendor and part nobody has heard of: no crash, a name from the numbers, clusters from clocks.
        "unknown-implementer-and-part",
        {"cpus": list(range(8)), "parts": _same(range(8), "0xabc"), "capacities": {},
             "freqs": {**_same(range(4), 1500000), **_same(range(4, 8), 3000000)},
             "identities": _same(range(8), _ident("0xee", "0xabc"))},
        [("implementer 0xee part 0xabc", [4, 5, 6, 7], False), ("implementer 0xee part 0xabc", [0, 1, 2, 3], False)],
    ),
]


@pytest.mark.parametrize("arguments, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_clusters_from_what_differs(arguments: dict[str, Any], expected: list[tuple[str, list[int], bool]]) -> None:
    clusters = build_clusters(**arguments)
    assert [(c.name, c.cpus, c.efficiency) for c in clusters] == expected
    assert clusters[0].fastest and not any(c.fastest for c in clusters[1:])
    assert all(c.signal for c in clusters)  # detect explains every cluster


def test_each_cluster_says_which_signal_split_it() -> None:
    by_name = {c[0]: c[1] for c in CASES}
    alder = build_clusters(**by_name["alder-lake-favoured-cores"])
    assert alder[0].signal == "listed in /sys/devices/cpu_core/cpus; cpus 0,1 favoured at 4.80 GHz, the rest 4.70 GHz"
    assert alder[1].signal == "listed in /sys/devices/cpu_atom/cpus"
    meteor = build_clusters(**by_name["meteor-lake-lp-e-cores"])
    assert meteor[2].signal == "listed in /sys/devices/cpu_atom/cpus; max clock 2.50 GHz vs 3.80 GHz"
    assert build_clusters(**by_name["oryon-two-tiers-by-variant"])[0].signal == "CPU part 0x001 variant 0x3 revision 4"
    assert build_clusters(**by_name["capacity-decides"])[0].signal == "cpu_capacity 1024 vs 400"
    assert build_clusters(**by_name["exynos-m3-and-a55"])[0].signal.startswith("CPU implementer 0x53 (Samsung), part 0x002")
    assert build_clusters(**by_name["hyper-threads-only-on-p-cores"])[0].signal == "2 threads per core"


def _arm_cpuinfo(cores: list[tuple[str, str, str]], features: str = "fp asimd fphp asimdhp asimddp i8mm bf16") -> str:
    return "".join(
        f"processor\t: {n}\nFeatures\t: {features}\nCPU implementer\t: {impl}\nCPU architecture: 8\n"
        f"CPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: 0\n\n"
        for n, (impl, part, variant) in enumerate(cores)
    )


def test_an_all_big_core_phone_is_a_phone_by_its_android_kernel_and_runs_on_every_core(tmp_path: Path) -> None:
    # Dimensity 9300's layout (4x Cortex-A720 + 4x Cortex-X4): two clusters, no efficiency cores.
    cores = [(ARM, "0xd81", "0x0")] * 4 + [(ARM, "0xd82", "0x0")] * 4
    root = write_tree(tmp_path, {
        "proc/cpuinfo": _arm_cpuinfo(cores),
        "proc/version": "Linux version 6.1.68-android14-11-o-g7a6ad5ffd1a6 (build-user@build-host) "
                        "(Android (10087095, +pgo, +bolt, +lto, -mlgo, based on r487747c) clang version 17.0.2)",
        "sys/devices/system/cpu/online": "0-7\n",
    })
    device = detect(root)
    profile, reason = select_profile(device)
    assert profile.name == "phone-arm" and reason.startswith("Android kernel (6.1.68-android14-11")
    assert device.kernel.startswith("6.1.68-android14") and device.little_cores == []
    assert select_cores(device, profile) == list(range(8))


@pytest.mark.parametrize("files, soc", [
    ({"sys/devices/soc0/family": "Snapdragon\n", "sys/devices/soc0/machine": "SM8750\n",
      "sys/devices/soc0/soc_id": "618\n"}, "Snapdragon SM8750"),
    ({"sys/devices/soc0/soc_id": "EXYNOS9810\n"}, "EXYNOS9810"),
    ({"sys/devices/soc0/family": "jep106:0426\n", "sys/devices/soc0/soc_id": "jep106:0426:8796\n"}, None),
])
def test_a_phone_is_known_by_its_soc0_names(tmp_path: Path, files: dict[str, str], soc: str | None) -> None:
    cores = [(ARM, "0xd05", "0x2")] * 4 + [(ARM, "0xd41", "0x1")] * 4  # two clusters: not a phone by count
    device = detect(write_tree(tmp_path, {"proc/cpuinfo": _arm_cpuinfo(cores), **files}))
    profile, reason = select_profile(device)
    if soc is None:  # Arm's SMCCC codes name no SoC: the device stays unmatched, not misnamed
        assert device.soc == "unknown" and profile.name == "generic"
    else:
        assert device.soc == soc and profile.name == "phone-arm", reason


def test_android_userland_marks_a_phone_even_on_a_plain_kernel(tmp_path: Path) -> None:
    cores = [(ARM, "0xd05", "0x2")] * 4 + [(ARM, "0xd41", "0x1")] * 4
    root = write_tree(tmp_path, {"proc/cpuinfo": _arm_cpuinfo(cores), "system/build.prop": "ro.product.model=X\n"})
    profile, reason = select_profile(detect(root))
    assert profile.name == "phone-arm" and reason == "/system/build.prop exists"


def test_core_identity_from_midr_registers_when_cpuinfo_names_only_one_core(tmp_path: Path) -> None:
    # Older Android kernels print one CPU's ids in /proc/cpuinfo; sysfs has every core's MIDR_EL1.
    files = {"proc/cpuinfo": "Processor\t: AArch64 Processor rev 0 (aarch64)\n" + "".join(
        f"processor\t: {n}\n" for n in range(8)) + "Features\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: 0xd05\n"}
    for cpu in range(8):
        midr = "0x00000000411fd050" if cpu < 4 else "0x00000000532f0020"  # Cortex-A55 r1p0, Exynos M3
        files[f"sys/devices/system/cpu/cpu{cpu}/regs/identification/midr_el1"] = midr + "\n"
    device = detect(write_tree(tmp_path, files))
    assert [(c.name, c.cpus) for c in device.clusters] == [("Exynos M3", [4, 5, 6, 7]), ("Cortex-A55", [0, 1, 2, 3])]
    assert device.little_cores == [0, 1, 2, 3] and device.cpu_parts[4] == "0x002"


def test_a_cpuinfo_that_names_parts_but_no_implementer_is_read_as_arms_cores() -> None:
    parts = {**_same(range(4), "0xd05"), **_same(range(4, 8), "0xd0b")}
    identities = {cpu: ("", part, "", "") for cpu, part in parts.items()}
    clusters = build_clusters(list(range(8)), parts, {}, {}, identities=identities)
    assert [(c.name, c.efficiency) for c in clusters] == [("Cortex-A76", False), ("Cortex-A55", True)]


def test_junk_in_identity_and_soc_files_degrades_and_never_raises(tmp_path: Path) -> None:
    files = {"proc/cpuinfo": _arm_cpuinfo([("0xzz", "junk", "?")] * 4),
             "sys/devices/soc0/machine": "\x00\x01\x02", "proc/version": "\xff" * 5000}
    for cpu in range(4):
        files[f"sys/devices/system/cpu/cpu{cpu}/regs/identification/midr_el1"] = "0xffffffffffffffffff\n"
    device = detect(write_tree(tmp_path, files))
    assert len(device.clusters) == 1 and device.soc == "unknown" and device.android is None


def test_x86_feature_vocabulary_covers_what_llama_cpp_variants_key_on(tmp_path: Path) -> None:
    # The x86 variants in ggml/src/CMakeLists.txt (GGML_CPU_ALL_VARIANTS) and cpu-feats.cpp.
    for needed in ("sse4_2", "avx", "avx2", "avx_vnni", "fma", "f16c", "bmi2", "avx512f", "avx512cd",
                   "avx512dq", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni", "avx512_bf16",
                   "amx_tile", "amx_int8", "amx_bf16"):
        assert needed in X86_FEATURES
    flags = "fpu pni ssse3 sse4_1 sse4_2 avx f16c fma bmi2 avx2 avx512f avx512cd avx512dq avx512bw avx512vl " \
            "avx512vbmi avx512_vbmi2 avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 amx_bf16 lm"
    device = detect(write_tree(tmp_path, {"proc/cpuinfo": f"processor\t: 0\nflags\t\t: {flags}\n"}))
    assert device.features == [f for f in X86_FEATURES if f not in ("avx_vnni", "amx_fp16")]


def test_the_shipped_phone_profile_names_the_socs_of_current_phones() -> None:
    phone = next(p for p in load_profiles() if p.name == "phone-arm")
    assert phone.match.android


def test_format_cpu_list() -> None:
    assert format_cpu_list([]) == "all" and format_cpu_list([5]) == "5" and format_cpu_list([0, 1]) == "0,1"
    assert format_cpu_list([9, 8, 0, 1, 2, 4]) == "0-2,4,8,9" and format_cpu_list(range(12, 20)) == "12-19"
