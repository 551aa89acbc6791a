"""Detection against real captures from real devices (tests/data/*/SOURCE.md says where from)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import CAPTURES, run_cli

from edgellm.device.hardware import build_clusters, detect
from edgellm.device.macos import detect_macos, parse_sysctl_text
from edgellm.device.profiles import select_profile
from edgellm.device.sysfs import MAX_CPUS, parse_cpu_list, parse_cpuinfo, read_text
from edgellm.plan.planner import select_cores


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.name for c in CAPTURES])
def test_detect_matches_what_the_capture_says(capture: Path) -> None:
    expected = json.loads((capture / "expected.json").read_text())
    # Every capture states the profile, both core lists, the features and the RAM (null: not captured).
    assert {"profile", "big_cores", "little_cores", "features", "mem_total_bytes"} <= set(expected)
    device = detect(capture)
    profile, reason = select_profile(device)
    assert profile.name == expected["profile"], reason
    assert device.features == expected["features"]
    if expected.get("performance_cores") is not None:
        assert select_cores(device, profile) == expected["performance_cores"]
    if expected.get("physical_big_cores") is not None:
        # One thread per physical performance core: hyper-threads slow llama.cpp down.
        assert device.physical_core_count(device.big_cores) == expected["physical_big_cores"]
        plan_cores = select_cores(device, profile)
        assert plan_cores == device.big_cores
    assert device.arch == expected["arch"]
    assert device.cpu_count == expected["cpu_count"]
    if expected.get("big_cores") is not None:
        assert device.big_cores == expected["big_cores"]
        assert device.little_cores == expected["little_cores"]
    if expected.get("big_core_count") is not None:
        assert len(device.big_cores) == expected["big_core_count"]
        assert len(device.little_cores) == expected["little_core_count"]
    assert len(device.clusters) == expected["clusters"]
    assert set(expected["features_include"]) <= set(device.features)
    assert not set(expected["features_exclude"]) & set(device.features)
    if expected.get("mem_total_bytes") is not None:
        assert device.mem_total_bytes == expected["mem_total_bytes"]
    if expected.get("soc_contains"):
        assert expected["soc_contains"].lower() in device.soc.lower()
    if expected.get("board_contains"):
        assert expected["board_contains"] in device.board
    if expected.get("cpus_possible"):
        assert device.cpus_possible == expected["cpus_possible"]


def test_pi5_that_says_bcm2835_is_not_reported_as_bcm2835() -> None:
    device = detect(Path(__file__).parent / "data" / "raspberry-pi-5-bcm2835")
    assert "2835" not in device.soc
    assert device.soc == "BCM2712"


def test_phone_profile_runs_on_all_but_the_efficiency_cluster() -> None:

    capture = Path(__file__).parent / "data" / "android-phone"
    expected = json.loads((capture / "expected.json").read_text())
    device = detect(capture)
    profile, _ = select_profile(device)
    assert select_cores(device, profile) == expected["performance_cores"]


def test_empty_sysroot_degrades_to_unknown(tmp_path: Path) -> None:
    device = detect(tmp_path)
    assert device.board == "unknown" and device.soc == "unknown" and device.arch == "unknown"
    assert device.cpu_count == 0 and device.mem_total_bytes is None and device.thermal == []
    profile, reason = select_profile(device)
    assert profile.name == "generic" and "no profile" in reason


def test_garbage_files_do_not_crash(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_bytes(b"\xff\xfe garbage : : :\nprocessor : x\n")
    (tmp_path / "proc/meminfo").write_text("MemTotal: lots kB\n")
    cpu = tmp_path / "sys/devices/system/cpu"
    cpu.mkdir(parents=True)
    (cpu / "online").write_text("zero-three\n")
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("hot\n")
    device = detect(tmp_path)
    assert device.mem_total_bytes is None
    assert device.thermal[0].celsius is None and device.thermal[0].type == "unknown"


def test_cpufreq_symlink_layout_is_followed(tmp_path: Path) -> None:
    cpu = tmp_path / "sys/devices/system/cpu"
    (cpu / "cpufreq/policy0").mkdir(parents=True)
    (cpu / "cpufreq/policy4").mkdir(parents=True)
    (cpu / "cpufreq/policy0/cpuinfo_max_freq").write_text("1800000\n")
    (cpu / "cpufreq/policy4/cpuinfo_max_freq").write_text("2400000\n")
    for n in range(8):
        (cpu / f"cpu{n}").mkdir()
        os.symlink(f"../cpufreq/policy{0 if n < 4 else 4}", cpu / f"cpu{n}/cpufreq")
    (cpu / "online").write_text("0-7\n")
    device = detect(tmp_path)
    assert device.big_cores == [4, 5, 6, 7]
    assert device.clusters[0].max_freq_khz == 2400000


def test_policy_dirs_without_symlinks_use_related_cpus(tmp_path: Path) -> None:
    cpu = tmp_path / "sys/devices/system/cpu"
    for name, cpus, freq in (("policy0", "0-3", "1800000"), ("policy4", "4-5", "2400000"), ("policy6", "6-7", "3000000")):
        (cpu / "cpufreq" / name).mkdir(parents=True)
        (cpu / "cpufreq" / name / "related_cpus").write_text(_expand(cpus))  # space-separated, as the kernel writes it
        (cpu / "cpufreq" / name / "cpuinfo_max_freq").write_text(freq)
    (cpu / "online").write_text("0-7")
    device = detect(tmp_path)
    # Without part ids, three frequency classes are three clusters; the fastest is 6-7.
    assert device.big_cores == [6, 7] and device.little_cores == [0, 1, 2, 3]


def test_without_part_ids_clocks_a_few_percent_apart_are_one_class() -> None:
    # RK3588's A76 pairs sit on separate clocks (2.256 and 2.304 GHz): one cluster, not two.
    freqs = {0: 1800000, 1: 1800000, 2: 1800000, 3: 1800000, 4: 2256000, 5: 2256000, 6: 2304000, 7: 2304000}
    clusters = build_clusters(list(range(8)), {}, {}, freqs)
    assert [c.cpus for c in clusters] == [[4, 5, 6, 7], [0, 1, 2, 3]]
    assert clusters[1].efficiency and "max clock 1.80 GHz vs 2.30 GHz" in clusters[1].signal


def _expand(cpus: str) -> str:
    low, high = cpus.split("-")
    return " ".join(str(n) for n in range(int(low), int(high) + 1))


def test_rk3588_a76_pairs_on_different_clocks_stay_one_cluster() -> None:
    parts = {n: ("0xd05" if n < 4 else "0xd0b") for n in range(8)}
    freqs = {0: 1800000, 1: 1800000, 2: 1800000, 3: 1800000, 4: 2256000, 5: 2256000, 6: 2304000, 7: 2304000}
    clusters = build_clusters(list(range(8)), parts, {}, freqs)
    assert [c.cpus for c in clusters] == [[4, 5, 6, 7], [0, 1, 2, 3]]
    assert clusters[0].name == "Cortex-A76" and clusters[0].fastest


def test_x86_preferred_core_boost_clocks_do_not_split_the_chip() -> None:
    freqs = {0: 5100000, 1: 4900000, 2: 4700000, 3: 5000000}
    clusters = build_clusters([0, 1, 2, 3], {}, {}, freqs, is_arm=False)
    assert len(clusters) == 1 and clusters[0].cpus == [0, 1, 2, 3]


def test_parse_cpu_list() -> None:
    assert parse_cpu_list("0-3,6,8-9\n") == [0, 1, 2, 3, 6, 8, 9]
    assert parse_cpu_list("4 5 6 7\n") == [4, 5, 6, 7]
    assert parse_cpu_list("") == [] and parse_cpu_list(None) == [] and parse_cpu_list("a-b") == []
    # Beyond the kernel's NR_CPUS maximum a list is junk (expanding 0-4000000000 was a MemoryError).
    assert parse_cpu_list(f"0-{MAX_CPUS - 1}") == list(range(MAX_CPUS))
    assert parse_cpu_list(f"0-{MAX_CPUS}") == [] and parse_cpu_list("0-4000000000") == []
    assert parse_cpu_list("3-1") == [] and parse_cpu_list("-1") == [] and parse_cpu_list("²") == []


def test_read_text_opens_only_regular_files_and_reads_at_most_the_limit(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/dev/zero", tmp_path / "zero")
    (tmp_path / "big").write_bytes(b"x" * 100)
    assert read_text(tmp_path, "fifo") is None and read_text(tmp_path, "zero") is None
    assert read_text(tmp_path, "big", limit=10) == "x" * 10
    assert read_text(Path("/"), "proc/self/status") is not None  # procfs: regular, st_size 0


def test_parse_cpuinfo_keeps_global_fields_apart() -> None:
    header, procs = parse_cpuinfo("processor : 0\nCPU part : 0xd0b\n\nHardware : BCM2835\nModel : Raspberry Pi 5 Model B Rev 1.0\n")
    assert header == {"Hardware": "BCM2835", "Model": "Raspberry Pi 5 Model B Rev 1.0"}
    assert procs == [{"processor": "0", "CPU part": "0xd0b"}]


def test_macos_sysctl_reader_behind_the_same_interface() -> None:
    text = (Path(__file__).parent / "data/macos-apple-m3-max/sysctl.txt").read_text()
    values = parse_sysctl_text(text)
    device = detect_macos(lambda keys: values, live=False)
    assert device.arch == "arm64" and device.system == "darwin"
    assert device.mem_total_bytes == int(values["hw.memsize"])
    assert len(device.big_cores) == int(values["hw.perflevel0.physicalcpu"])


def test_detect_json_schema_from_the_cli() -> None:
    capture = Path(__file__).parent / "data" / "rk3588"
    result = run_cli("detect", "--sysroot", str(capture), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("board", "soc", "arch", "cpu_count", "clusters", "big_cores", "little_cores", "features",
                "mem_total_bytes", "mem_available_bytes", "thermal", "profile", "profile_reason"):
        assert key in data
    assert data["profile"] == "rk3588" and data["big_cores"] == [4, 5, 6, 7]
    assert {"cpus", "name", "max_freq_khz", "capacity"} <= set(data["clusters"][0])
    assert result.stderr == b""


def test_detect_human_output_on_this_machine() -> None:
    result = run_cli("detect")
    assert result.returncode == 0, result.stderr
    assert b"profile" in result.stdout and b"features" in result.stdout


def test_a_mistyped_sysroot_is_a_usage_error() -> None:
    result = run_cli("detect", "--sysroot", "tests/data/no-such-device")
    assert result.returncode == 2 and b"is not a directory" in result.stderr


def test_warns_when_the_build_lacks_a_feature_the_cpu_has() -> None:
    from edgellm.loader import build_warnings

    pi5 = detect(Path(__file__).parent / "data" / "raspberry-pi-5")
    without = "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | OPENMP = 1 | REPACK = 1 |"
    warnings = build_warnings(pi5, without)
    assert len(warnings) == 1 and "dotprod" in warnings[0] and "DOTPROD" in warnings[0] and "2x slower" in warnings[0]
    assert build_warnings(pi5, without.replace("NEON = 1", "NEON = 1 | DOTPROD = 1")) == []


def test_ram_from_this_machines_real_meminfo_agrees_with_psutil() -> None:
    import psutil

    device = detect("/")
    assert device.mem_total_bytes == psutil.virtual_memory().total
    assert 0 < device.mem_available_bytes <= device.mem_total_bytes
    assert abs(device.mem_available_bytes - psutil.virtual_memory().available) < 256 * 1024**2  # it moves


def test_an_avx512_cpu_on_a_build_without_its_kernels_is_warned_about() -> None:
    from edgellm.loader import build_warnings

    xeon = detect(Path(__file__).parent / "data" / "x86-xeon-sapphire-rapids")
    # A wheel built on an AVX2 machine, as this machine's own build prints it.
    avx2_build = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | OPENMP = 1 |"
    missing = {w.split(" but llama.cpp was built without ")[1].split(":")[0] for w in build_warnings(xeon, avx2_build)}
    assert missing == {"AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"}
    native = avx2_build + " AVX_VNNI = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 |"
    assert build_warnings(xeon, native) == []
