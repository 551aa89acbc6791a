"""edgellm bench: real tiny models through llama.cpp, the real CLI, and the report views.

No timing thresholds: speeds are only checked to be positive and consistent with their samples.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import statistics
from pathlib import Path
from typing import Any

import gguf
import pytest
from conftest import run_cli

from edgellm.bench import reports
from edgellm.bench import runner as bench
from edgellm.cli import options
from edgellm.device import heat
from edgellm.errors import UsageError
from edgellm.runtime import native
from edgellm.store import synthetic
from edgellm.ui import bench as views
from edgellm.units import parse_duration

RESULT_KEYS = {"test", "threads", "cores", "tps_mean", "tps_std", "n_prompt", "n_gen", "reps"}
TOP_KEYS = {"results", "device", "profile", "model", "quant", "llama_cpp_system_info", "edgellm_version",
            "load_s", "ttft_s", "peak_rss_bytes", "thermal", "synthetic"}


def bench_json(*args: str, **env: str) -> dict[str, Any]:
    proc = run_cli("bench", *args, "--json", **env)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)  # stdout is nothing but the JSON


def check_consistent(row: dict[str, Any]) -> None:
    samples = row["samples_tps"]
    assert len(samples) == row["reps"]
    assert all(s > 0 for s in samples)
    assert row["tps_mean"] == pytest.approx(statistics.fmean(samples), rel=1e-3)
    assert row["tps_std"] >= 0
    if len(samples) > 1:
        assert row["tps_std"] == pytest.approx(statistics.stdev(samples), rel=1e-2, abs=1e-3)
    # avg_ns is the mean time of a repetition: tokens / mean time lies within the samples' range
    n_tokens = row["n_prompt"] + row["n_gen"]
    assert min(samples) * 0.999 <= 1e9 * n_tokens / row["avg_ns"] <= max(samples) * 1.001


@pytest.fixture(scope="module")
def report(tiny_q4km: Path) -> dict[str, Any]:
    return bench_json("-m", str(tiny_q4km), "-p", "32", "-n", "8", "-r", "3")


# --- the real thing ---------------------------------------------------------------------------------


def test_json_report_has_llama_bench_results(report: dict[str, Any], tiny_q4km: Path) -> None:
    assert TOP_KEYS <= report.keys()
    assert [r["test"] for r in report["results"]] == ["pp32", "tg8"]
    for row in report["results"]:
        assert RESULT_KEYS <= row.keys()
        assert row["reps"] == 3
        assert row["threads"] >= 1
        check_consistent(row)
    pp, tg = report["results"]
    assert (pp["n_prompt"], pp["n_gen"], tg["n_prompt"], tg["n_gen"]) == (32, 0, 0, 8)
    assert report["quant"] == "Q4_K_M"
    assert report["synthetic"] is False
    assert report["load_s"] > 0 and report["ttft_s"] > 0
    assert report["peak_rss_bytes"] > tiny_q4km.stat().st_size
    assert "CPU :" in report["llama_cpp_system_info"]
    assert report["device"]["cpu_count"] >= 1
    # the planner's prediction sits next to the generation measurement only
    assert tg["predicted_tps"] == report["predicted_tg_tps"]
    assert pp["predicted_tps"] is None
    assert set(report["thermal"]) >= {"sensors", "temp_start_c", "temp_end_c", "temp_max_c"}


def test_json_report_is_a_bench_report_in_schema_order(report: dict[str, Any]) -> None:
    assert list(report) == [f.name for f in dataclasses.fields(bench.BenchReport)][:-3]  # no soak, no parallel, no devices (--rpc)
    assert report["schema"] == bench.SCHEMA
    assert list(report["device"]) == list(bench.DEVICE_KEYS)
    assert all(list(cluster) == list(bench.CLUSTER_KEYS) for cluster in report["device"]["clusters"])
    again = bench.BenchReport.from_json(json.loads(json.dumps(report))).to_json()
    assert json.dumps(again) == json.dumps(report)  # same keys, same order, same values


def test_thread_and_depth_sweep(tiny_q4km: Path) -> None:
    data = bench_json("-m", str(tiny_q4km), "-p", "16", "-n", "4", "-t", "1,2", "--depth", "0,24", "-r", "2")
    names = [(r["test"], r["threads"]) for r in data["results"]]
    assert names == [
        ("pp16", 1), ("tg4", 1), ("pp16 @ d24", 1), ("tg4 @ d24", 1),
        ("pp16", 2), ("tg4", 2), ("pp16 @ d24", 2), ("tg4 @ d24", 2),
    ]
    for row in data["results"]:
        check_consistent(row)
    assert {r["depth"] for r in data["results"]} == {0, 24}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs and affinity")
def test_cores_sweep_runs_each_choice_pinned(tiny_q4km: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    data = bench_json("-m", str(tiny_q4km), "-p", "16", "-n", "4", "-r", "1", "-t", "1", "--cores", str(cpu), "--cores", "all")
    by_choice = {r["cores_choice"]: r for r in data["results"] if r["test"] == "tg4"}
    assert by_choice[str(cpu)]["cores"] == [cpu]
    assert next(v for k, v in by_choice.items() if k.startswith("all"))["cores"] == []


def test_soak_reports_first_minute_and_sustained(tiny_q4km: Path) -> None:
    data = bench_json("-m", str(tiny_q4km), "--duration", "2s", "-t", "1")
    soak = data["soak"]
    assert soak["samples"] and soak["tokens"] > 0
    assert soak["first_minute_tps"] > 0 and soak["sustained_tps"] > 0
    assert soak["samples"][-1]["t_s"] >= 2.0
    assert data["results"][0]["test"] == "tg soak 2s"


def test_csv_and_markdown_outputs(tiny_q4km: Path) -> None:
    proc = run_cli("bench", "-m", str(tiny_q4km), "-p", "16", "-n", "4", "-r", "2", "--csv")
    assert proc.returncode == 0, proc.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(proc.stdout.decode())))
    assert [r["test"] for r in rows] == ["pp16", "tg4"]
    assert all(float(r["tps_mean"]) > 0 and r["synthetic"] == "false" for r in rows)
    proc = run_cli("bench", "-m", str(tiny_q4km), "-p", "16", "-n", "4", "-r", "2", "--markdown")
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| test | threads | cores | t/s")
    assert len(table) == 4 and table[2].startswith("| pp16 |")


def test_terminal_table_by_default(tiny_q4km: Path) -> None:
    proc = run_cli("bench", "-m", str(tiny_q4km), "-p", "16", "-n", "4", "-r", "1", COLUMNS="160")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "pp16" in out and "tg4" in out and "peak RSS" in out


def test_synthetic_model_is_built_once_cached_and_labelled(tmp_path: Path) -> None:
    home = Path(os.environ["EDGELLM_HOME"])
    data = bench_json("--synthetic", "tiny:Q4_K_S", "-p", "16", "-n", "4", "-r", "1")
    built = home / "synthetic" / "tiny-Q4_K_S-synthetic.gguf"
    assert built.stat().st_size == synthetic.expected_file_size(synthetic.TINY, "Q4_K_S", name="tiny (synthetic)")
    assert data["synthetic"] is True and "synthetic" in data["model"]
    assert data["quant"] == "Q4_K_S"
    mtime = built.stat().st_mtime_ns
    proc = run_cli("bench", "--synthetic", "tiny:Q4_K_S", "-p", "16", "-n", "4", "-r", "1", "--markdown")
    assert proc.returncode == 0
    assert built.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert "synthetic" in proc.stdout.decode().lower()
    # the file passed with -m is still reported as synthetic (its general.name says so)
    assert bench_json("-m", str(built), "-p", "0", "-n", "4", "-r", "1")["synthetic"] is True


def test_synthetic_matches_llama_cpp_quantizer_for_a_small_shape(tmp_path: Path) -> None:
    """Same tensor types and byte sizes as llama.cpp's own quantizer gives random F16 weights."""
    shape = synthetic.ModelShape(n_layers=4, n_embd=256, n_head=4, n_head_kv=2, n_ff=512,
                                 n_vocab=len(synthetic.tiny_tokenizer()))
    made = synthetic.write_synthetic_model(tmp_path / "synthetic.gguf", shape, "Q4_K_M")
    f16 = synthetic.write_tiny_model(tmp_path / "f16.gguf", shape=shape, dtype="F16")
    native.quantize_model(f16, tmp_path / "quantized.gguf", "Q4_K_M")

    def tensors(path: Path) -> dict[str, tuple[int, int]]:
        return {t.name: (int(t.tensor_type), int(t.n_bytes)) for t in gguf.GGUFReader(path).tensors}

    assert tensors(made) == tensors(tmp_path / "quantized.gguf")
    real = (tmp_path / "quantized.gguf").stat().st_size
    assert abs(made.stat().st_size - real) / real < 0.01


def test_synthetic_catalog_shapes_have_the_published_size() -> None:
    """A 1.5B Q4_K_M synthetic file is within 1% of the published 1.12 GB (computed, not written)."""
    name, quant, shape = synthetic.synthetic_spec("deepseek-r1-1.5b")
    size = synthetic.expected_file_size(shape, quant, name=f"{name} (synthetic)")
    assert abs(size - 1_117_318_304) / 1_117_318_304 < 0.01
    _, _, shape7 = synthetic.synthetic_spec("deepseek-r1-7b:Q4_K_M")
    size7 = synthetic.expected_file_size(shape7, "Q4_K_M", name="deepseek-r1-7b (synthetic)")
    assert abs(size7 - 4_683_073_504) / 4_683_073_504 < 0.01


# --- --parallel: llama-batched-bench's aggregate throughput --------------------------------------

PARALLEL_KEYS = RESULT_KEYS | {"sequences", "threads_batch", "n_kv", "samples_tps", "tps_per_sequence", "pp_tps_mean",
                               "pp_tps_std", "pp_samples_tps", "total_tps_mean", "t_pp_s", "t_tg_s", "thermal"}


@pytest.fixture(scope="module")
def parallel_report(tiny_q4km: Path) -> dict[str, Any]:
    return bench_json("-m", str(tiny_q4km), "--parallel", "1,2", "-p", "16", "-n", "4", "-r", "2")


def test_parallel_reports_aggregate_throughput_per_sequence_count(parallel_report: dict[str, Any]) -> None:
    data = parallel_report
    assert TOP_KEYS <= data.keys()
    info = data["parallel"]
    assert (info["sequences"], info["shared_prompt"], info["n_seq_max"], info["method"]) == ([1, 2], False, 2, "llama-batched-bench")
    assert isinstance(info["kv_unified"], bool)  # read back from the context, whichever the Engine chose
    assert data["n_ctx"] >= 2 * (16 + 4)  # room for every sequence's prompt and generated tokens
    assert [(r["test"], r["sequences"]) for r in data["results"]] == [("pp16+tg4 x1", 1), ("pp16+tg4 x2", 2)]
    for row in data["results"]:
        npl = row["sequences"]
        assert PARALLEL_KEYS <= row.keys()
        assert (row["n_prompt"], row["n_gen"], row["depth"], row["reps"]) == (16, 4, 0, 2)
        assert row["n_kv"] == npl * (16 + 4)  # llama-batched-bench's N_KV
        assert row["threads"] >= 1 and row["threads_batch"] >= 1
        for samples, mean in ((row["samples_tps"], row["tps_mean"]), (row["pp_samples_tps"], row["pp_tps_mean"])):
            assert len(samples) == 2 and all(s > 0 for s in samples)
            assert mean == pytest.approx(statistics.fmean(samples), rel=1e-3)
        assert row["tps_std"] >= 0 and row["pp_tps_std"] >= 0
        assert row["tps_per_sequence"] == pytest.approx(row["tps_mean"] / npl, rel=1e-3)
        assert row["total_tps_mean"] > 0 and row["t_pp_s"] > 0 and row["t_tg_s"] > 0
        # S_TG = npl * tg / t_tg: the tokens of all sequences over the mean generation time lies
        # within the repetitions' range (likewise the prompts)
        assert min(row["samples_tps"]) * 0.999 <= npl * 4 / row["t_tg_s"] <= max(row["samples_tps"]) * 1.001
        assert min(row["pp_samples_tps"]) * 0.999 <= npl * 16 / row["t_pp_s"] <= max(row["pp_samples_tps"]) * 1.001
        assert row["predicted_tps"] is None
    assert reports.report_shape_problem(data) is None  # `bench report` can merge it


def test_parallel_views_csv_markdown_and_merge(parallel_report: dict[str, Any], tmp_path: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(views.bench_csv(parallel_report))))
    assert [(r["test"], r["sequences"]) for r in rows] == [("pp16+tg4 x1", "1"), ("pp16+tg4 x2", "2")]
    assert all(float(r["tps_mean"]) > 0 and float(r["pp_tps_mean"]) > 0 for r in rows)
    table = [line for line in views.bench_markdown(parallel_report).splitlines() if line.startswith("|")]
    assert table[0].startswith("| test | seqs | threads | cores | gen t/s (all) | t/s each | prompt t/s")
    assert len(table) == 4 and table[3].startswith("| pp16+tg4 x2 | 2 |")
    summary = "\n".join(views.summary_lines(parallel_report))
    assert "llama-batched-bench" in summary and "most generation throughput" in summary
    path = tmp_path / "parallel.json"
    path.write_text(json.dumps(parallel_report))
    merged = json.loads(run_cli("bench", "report", str(path), "--json").stdout)
    assert merged["headers"][4:6] == ["pp16+tg4 x1", "pp16+tg4 x2"]


def test_parallel_without_prompt_through_every_output(tiny_q4km: Path) -> None:
    """-p 0: generation only (no prompt speed); -t sets the threads of both kinds of batch."""
    proc = run_cli("bench", "-m", str(tiny_q4km), "--parallel", "2,1", "-p", "0", "-n", "4", "-r", "1", "-t", "1", "--csv")
    assert proc.returncode == 0, proc.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(proc.stdout.decode())))
    assert [(r["test"], r["threads"], r["threads_batch"]) for r in rows] == [("tg4 x2", "1", "1"), ("tg4 x1", "1", "1")]
    assert all(float(r["tps_mean"]) > 0 and r["pp_tps_mean"] == "" and r["n_kv"] == str(4 * int(r["sequences"])) for r in rows)
    proc = run_cli("bench", "-m", str(tiny_q4km), "--parallel", "1,2", "-p", "8", "-n", "2", "-r", "1", COLUMNS="200")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "gen t/s (all)" in out and "pp8+tg2 x2" in out and "most generation throughput" in out


def test_parallel_larger_than_the_context_is_refused(tiny_q4km: Path) -> None:
    proc = run_cli("bench", "-m", str(tiny_q4km), "--parallel", "2", "-p", "4000", "-n", "4")
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert err.startswith("error: ") and "context" in err.splitlines()[0] and "Traceback" not in err


# --- report merge --------------------------------------------------------------------------------


def test_report_merges_devices_into_one_table(report: dict[str, Any], tmp_path: Path) -> None:
    pi = json.loads(json.dumps(report))
    pi["device"].update(board="Raspberry Pi 5 Model B Rev 1.0", soc="bcm2712")
    pi["results"][1]["tps_mean"] = 12.5
    a, b = tmp_path / "here.json", tmp_path / "pi5.json"
    a.write_text(json.dumps(report))
    b.write_text(json.dumps(pi))
    proc = run_cli("bench", "report", str(a), str(b), "--markdown")
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [line for line in proc.stdout.decode().splitlines() if line.startswith("|")]
    assert lines[0] == "| device | model | threads | cores | pp32 | tg8 | max °C |"
    assert len(lines) == 4
    assert "Raspberry Pi 5" in lines[3] and "12.50 ±" in lines[3]
    merged = json.loads(run_cli("bench", "report", str(a), str(b), "--json").stdout)
    assert len(merged["rows"]) == 2
    terminal = run_cli("bench", "report", str(a), str(b), COLUMNS="200")
    assert terminal.returncode == 0 and "Raspberry Pi 5" in terminal.stdout.decode()


def test_report_rejects_files_that_are_not_results(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    for path in (junk, tmp_path / "missing.json"):
        proc = run_cli("bench", "report", str(path))
        err = proc.stderr.decode()
        assert proc.returncode == 2
        assert err.startswith("error: ") and "Traceback" not in err


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    ((), "no model"),
    (("--synthetic", "gpt-9"), "no synthetic shape"),
    (("--synthetic", "tiny:Q3_XYZ"), "unsupported quantization"),
    (("--synthetic", "tiny", "-p", "lots"), "-p 'lots'"),
    (("--synthetic", "tiny", "--json", "--csv"), "choose one of"),
    (("--synthetic", "tiny", "--duration", "soon"), "--duration"),
    (("--synthetic", "tiny", "--cores", "x-y"), "--cores"),
    (("-m", "/nonexistent/model.gguf"), "model.gguf"),
    (("--synthetic", "tiny", "--parallel", "1,2,x"), "--parallel '1,2,x': expected numbers"),
    (("--synthetic", "tiny", "--parallel", "0"), "--parallel '0': every value must be at least 1"),
    (("--synthetic", "tiny", "--parallel", ""), "--parallel ''"),
    (("--synthetic", "tiny", "--parallel", "1,-2"), "--parallel '1,-2'"),
    (("--synthetic", "tiny", "--parallel", "300"), "at most 256 sequences"),
    (("--synthetic", "tiny", "--parallel", "2", "-n", "0"), "-n must be at least 1"),
    (("--synthetic", "tiny", "--parallel", "2", "--duration", "1m"), "--parallel and --duration"),
    (("--synthetic", "tiny", "--parallel", "2", "--depth", "16"), "--parallel and --depth"),
])
def test_bad_input_is_one_line_error(args: tuple[str, ...], message: str) -> None:
    proc = run_cli("bench", *args)
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert err.startswith("error: ") and message in err.splitlines()[0]
    assert "Traceback" not in err and proc.stdout == b""


def test_tests_larger_than_the_context_are_refused(tiny_q4km: Path) -> None:
    proc = run_cli("bench", "-m", str(tiny_q4km), "-p", "4000", "-n", "0")
    assert proc.returncode == 1
    assert "context" in proc.stderr.decode().splitlines()[0]


def test_help_has_an_example() -> None:
    for args in (("bench", "--help"), ("bench", "report", "--help")):
        proc = run_cli(*args, COLUMNS="200")
        assert proc.returncode == 0 and "Example: edgellm bench" in proc.stdout.decode()
    help_text = " ".join(run_cli("bench", "--help", COLUMNS="400").stdout.decode().split())
    assert "--parallel 1,2,4" in help_text and "llama-batched-bench" in help_text


# --- logic (no model) ----------------------------------------------------------------------------


def test_list_and_duration_parsing() -> None:
    assert options.parse_int_list("1,2,4", "-t") == [1, 2, 4]
    assert options.parse_int_list("1-7+2", "-t") == [1, 3, 5, 7]
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45 and parse_duration("90s") == 90
    assert bench.parse_cpu_list("4-7") == [4, 5, 6, 7] and bench.parse_cpu_list("0,2") == [0, 2]
    for bad in ("", "a", "1,,2"):
        with pytest.raises(UsageError):
            options.parse_int_list(bad, "-t")
    with pytest.raises(UsageError):
        options.parse_int_list("0", "-t", minimum=1)
    with pytest.raises(UsageError):
        parse_duration("10 parsecs")


def test_parallel_parsing_and_test_order() -> None:
    assert options.parse_parallel("1,2,4") == [1, 2, 4] and options.parse_parallel("1-8+3") == [1, 4, 7]
    for bad in ("0", "1,2,x", "", "257", "4,,8"):
        with pytest.raises(UsageError):
            options.parse_parallel(bad)
    config = bench.BenchConfig(synthetic="tiny", prompts=[0, 64], gens=[0, 8], parallel=[1, 4], threads=[1, 2])
    assert [(t.name, t.threads, t.threads_batch) for t in config.parallel_tests(3, 4)] == [
        ("tg8 x1", 1, 1), ("tg8 x4", 1, 1), ("pp64+tg8 x1", 1, 1), ("pp64+tg8 x4", 1, 1),
        ("tg8 x1", 2, 2), ("tg8 x4", 2, 2), ("pp64+tg8 x1", 2, 2), ("pp64+tg8 x4", 2, 2),
    ]  # llama-batched-bench's order (pp, tg, npl) per thread count; -n 0 is skipped
    default = bench.BenchConfig(synthetic="tiny", prompts=[64], gens=[8], parallel=[1, 4]).parallel_tests(3, 4)
    # one sequence generates with the one-token threads, 2+ sequences' steps are batches
    assert [(t.generation_threads, t.n_kv) for t in default] == [(3, 72), (4, 288)]


def test_parallel_result_is_llama_batched_bench_arithmetic() -> None:
    spec = bench.ParallelSpec(n_prompt=100, n_gen=10, sequences=4, threads=2, threads_batch=2)
    # t_pp 0.5 s and 1.0 s, t_tg 2.0 s and 4.0 s
    row = bench.ParallelResult(spec, [0], [500_000_000, 1_000_000_000], [2_000_000_000, 4_000_000_000],
                               bench.HeatRecord()).to_json()
    assert row["samples_tps"] == [20.0, 10.0]  # S_TG = 4 * 10 / t_tg
    assert row["pp_samples_tps"] == [800.0, 400.0]  # S_PP = 4 * 100 / t_pp
    assert row["tps_mean"] == 15.0 and row["tps_per_sequence"] == 3.75
    assert row["total_tps_mean"] == pytest.approx(statistics.fmean([440 / 2.5, 440 / 5.0]), abs=1e-3)  # S
    assert (row["t_pp_s"], row["t_tg_s"], row["n_kv"]) == (0.75, 3.0, 440)


def test_float_options_must_be_finite_and_meaningful() -> None:
    for bad in ({"cool_to_c": float("nan")}, {"cool_to_c": float("inf")}, {"cool_to_c": -5.0}, {"cool_to_c": 500.0},
                {"cooldown_s": float("nan")}, {"cooldown_s": -1.0}, {"duration_s": float("inf")}, {"duration_s": 0.0}):
        with pytest.raises(UsageError):
            bench.BenchConfig(synthetic="tiny", **bad)  # type: ignore[arg-type]
    assert bench.BenchConfig(synthetic="tiny", cool_to_c=60.0, cooldown_s=30.0, duration_s=60.0).cool_to_c == 60.0


def test_report_shape_problems_name_the_field() -> None:
    row = {"test": "tg8", "threads": 2, "tps_mean": 1.0, "tps_std": 0.0}
    assert reports.report_shape_problem({"device": {}, "results": [row]}) is None
    assert reports.report_shape_problem({"device": {}, "results": [dict(row, threads=True)]}) == "results[0].threads is true, not a whole number"
    assert reports.report_shape_problem({"device": {}, "results": [dict(row, cores_choice=["big"])]}) == "results[0].cores_choice is a list, not a string"
    assert reports.report_shape_problem(None) == "the top level is null, not an object"


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_heat_probe_reads_zones_frequency_and_pi_throttling(tmp_path: Path) -> None:
    zone = _write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "55000\n")
    _write(tmp_path, "sys/class/thermal/thermal_zone1/temp", "48500\n")
    freq0 = _write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "2400000\n")
    _write(tmp_path, "sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq", "1000000\n")
    _write(tmp_path, "sys/devices/platform/soc/soc:firmware/get_throttled", "0x50005\n")
    probe = heat.HeatProbe(tmp_path, cpus=[0])
    assert probe.celsius() == 55.0
    assert probe.mean_freq_khz() == 2_400_000  # only the benchmarked CPU
    assert heat.decode_throttled(probe.throttled() or 0) == [
        "under-voltage", "throttled", "under-voltage has occurred", "throttling has occurred"]
    sampler = bench.HeatSampler(probe, interval_s=60)
    with sampler:
        zone.write_text("81250\n")
        freq0.write_text("1800000\n")
    record = sampler.record
    assert (record.temp_before_c, record.temp_after_c, record.temp_max_c) == (55.0, 81.2, 81.2)
    assert (record.freq_start_mhz, record.freq_min_mhz, record.freq_drop_pct) == (2400.0, 1800.0, 25.0)
    assert "throttled" in record.throttled


def test_one_thermal_reader_for_detect_chat_and_bench(tmp_path: Path) -> None:
    """Zones in the kernel's numeric order; a broken sensor's reading (about -274 °C) is listed by
    detect as read but is never the hottest zone."""
    for zone, temp in (("thermal_zone10", "40000"), ("thermal_zone2", "-274000"), ("thermal_zone0", "hot")):
        _write(tmp_path, f"sys/class/thermal/{zone}/temp", temp + "\n")
    _write(tmp_path, "sys/class/thermal/cooling_device0/type", "fan\n")
    assert [(z.zone, z.celsius) for z in heat.read_thermal(tmp_path)] == [
        ("thermal_zone0", None), ("thermal_zone2", -274.0), ("thermal_zone10", 40.0)]
    assert heat.cpu_temperature(tmp_path) == 40.0 == heat.HeatProbe(tmp_path).celsius()
    (tmp_path / "sys/class/thermal/thermal_zone10/temp").write_text("-273150\n")
    assert heat.cpu_temperature(tmp_path) is None and heat.HeatProbe(tmp_path).celsius() is None
    assert heat.HeatProbe(tmp_path).has_temperature


def test_heat_probe_without_sensors(tmp_path: Path) -> None:
    probe = heat.HeatProbe(tmp_path)
    assert probe.celsius() is None and probe.mean_freq_khz() is None and probe.throttled() is None
    with bench.HeatSampler(probe) as sampler:
        pass
    assert sampler.record.temp_max_c is None and sampler.record.freq_drop_pct is None


def test_soak_summary_compares_first_minute_with_the_end() -> None:
    samples = [{"t_s": float(t), "tps": 10.0 if t <= 60 else 8.0, "tokens": 100 if t <= 60 else 80, "temp_c": 60 + t / 60}
               for t in range(10, 1810, 10)]
    summary = bench.summarize_soak(samples, 1800.0, sum(s["tokens"] for s in samples))
    assert summary["first_minute_tps"] == 10.0
    assert summary["sustained_tps"] == 8.0
    assert summary["sustained_window_s"] == 300.0
    assert summary["change_pct"] == -20.0
    assert summary["temp_max_c"] == pytest.approx(90.0)
