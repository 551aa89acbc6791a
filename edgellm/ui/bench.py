"""`edgellm bench` as people read it: the results table and its summary lines, the CSV and markdown
views, the merged table of `bench report`, and the progress bar.

Every view reads the report's JSON (`BenchReport.to_json()`, or a file `bench report` loaded), so a
report from another device renders the same as one made here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from edgellm.device.sysfs import format_cpu_list
from edgellm.ui.console import stderr, stdout
from edgellm.units import format_size

# Right-aligned bench columns; the speeds never wrap (a "±" split over two lines misreads).
BENCH_NUMERIC = ("threads", "seqs", "t/s", "predicted t/s", "gen t/s (all)", "t/s each", "prompt t/s")
BENCH_NO_WRAP = ("test", "t/s", "gen t/s (all)", "prompt t/s")


def render_bench_report(report: dict[str, Any]) -> None:
    table = Table(title=report_title(report), title_justify="left")
    for header in result_headers(report):
        numeric = header in BENCH_NUMERIC
        table.add_column(header, justify="right" if numeric else "left", no_wrap=header in BENCH_NO_WRAP)
    for cells in result_rows(report):
        table.add_row(*cells)
    stdout.print(table)
    for line in summary_lines(report):
        stdout.print(line, style="dim", markup=False)


def report_title(report: dict[str, Any]) -> str:
    return "edgellm bench" + (" — SYNTHETIC model (random weights)" if report.get("synthetic") else "")


def is_parallel(report: dict[str, Any]) -> bool:
    """A --parallel report: its rows are llama-batched-bench's tests, not llama-bench's."""
    return bool(report.get("parallel"))


RESULT_HEADERS = ["test", "threads", "cores", "t/s", "predicted t/s", "temp °C", "freq drop", "throttled"]
# --parallel: generation t/s of all sequences together (S_TG) and of each, prompt t/s of all (S_PP)
PARALLEL_HEADERS = ["test", "seqs", "threads", "cores", "gen t/s (all)", "t/s each", "prompt t/s",
                    "temp °C", "freq drop", "throttled"]


def result_headers(report: dict[str, Any]) -> list[str]:
    return PARALLEL_HEADERS if is_parallel(report) else RESULT_HEADERS


def _temp_text(heat: dict[str, Any]) -> str:
    if heat.get("temp_max_c") is None:
        return "-"
    return f"{heat.get('temp_before_c')}→{heat.get('temp_after_c')} (max {heat['temp_max_c']})"


def _mean_std(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.2f} ± {std or 0.0:.2f}"


def _heat_cells(heat: dict[str, Any]) -> list[str]:
    return [
        _temp_text(heat),
        f"{heat['freq_drop_pct']:.0f}%" if heat.get("freq_drop_pct") is not None else "-",
        ", ".join(heat.get("throttled") or []) or "-",
    ]


def result_rows(report: dict[str, Any]) -> list[list[str]]:
    """The cells of the per-test table shared by the terminal table and markdown."""
    if is_parallel(report):
        return [
            [
                row["test"], str(row["sequences"]), str(row["threads"]),
                row.get("cores_choice") or format_cpu_list(row["cores"]),
                _mean_std(row["tps_mean"], row["tps_std"]),
                f"{row['tps_per_sequence']:.2f}",
                _mean_std(row.get("pp_tps_mean"), row.get("pp_tps_std")),
                *_heat_cells(row.get("thermal") or {}),
            ]
            for row in report["results"]
        ]
    rows = []
    for row in report["results"]:
        heat = row.get("thermal") or {}
        predicted = row.get("predicted_tps")
        rows.append([
            row["test"], str(row["threads"]), row.get("cores_choice") or format_cpu_list(row["cores"]),
            f"{row['tps_mean']:.2f} ± {row['tps_std']:.2f}",
            f"{predicted:g}" if predicted else "-",
            *_heat_cells(heat),
        ])
    return rows


def summary_lines(report: dict[str, Any]) -> list[str]:
    # On use: every command imports edgellm.ui, and importing edgellm.bench.runner costs ~30 ms.
    from edgellm.bench.reports import device_label, model_label  # noqa: PLC0415

    lines = [
        f"model: {model_label(report)}, {format_size(report.get('model_size_bytes'))}"
        + (" — SYNTHETIC: random weights, real shapes and quant types; speed is the real model's, text is noise" if report.get("synthetic") else ""),
        (f"device: {device_label(report['device'])} ({report['device'].get('cpu_model')}, {report['device'].get('cpu_count')} CPUs),"
        f" profile {report['profile']}, cores {report.get('cores_choice')}"),
        (f"load {report['load_s']:.2f} s, first token {report['ttft_s'] if report['ttft_s'] is not None else '-'} s,"
        f" peak RSS {format_size(report['peak_rss_bytes'])}, n_ctx {report['n_ctx']}, batch {report['n_batch']}/{report['n_ubatch']},"
        f" KV {report['kv_type']}{', flash attention' if report['flash_attn'] else ''}"),
    ]
    thermal = report.get("thermal") or {}
    if not thermal.get("sensors"):
        lines.append("thermal: no temperature sensors found")
    soak_report = report.get("soak")
    if soak_report:
        change = soak_report.get("change_pct")
        lines.append(
            f"soak {soak_report['duration_s']:.0f} s: first minute {soak_report['first_minute_tps']} t/s,"
            f" sustained (last {soak_report['sustained_window_s']:.0f} s) {soak_report['sustained_tps']} t/s"
            + (f" ({change:+}%)" if change is not None else "")
        )
    if is_parallel(report):
        lines += parallel_summary_lines(report)
    lines.append(f"llama.cpp: {report.get('llama_cpp_system_info', '')}")
    return lines


def parallel_summary_lines(report: dict[str, Any]) -> list[str]:
    """How the --parallel numbers were measured, and the answer: how many sequences pay off."""
    info = report.get("parallel") or {}
    lines = [
        "parallel: as llama-batched-bench: per test, on an empty KV cache, one prompt of -p random tokens per"
        " sequence (not shared), then -n steps that each decode one token of every sequence in one batch;"
        " gen t/s (all) = sequences x n / generation time"
        + (f"; KV cache for {info.get('n_seq_max')} sequences, "
           + ("unified" if info.get("kv_unified") else "one stream each (llama-batched-bench's default)")
           if (info.get("n_seq_max") or 1) > 1 else "")
    ]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in report["results"]:
        groups.setdefault((row["n_prompt"], row["n_gen"], row.get("threads_batch"), row.get("cores_choice")), []).append(row)
    for rows in groups.values():
        if len(rows) < 2:
            continue
        best = max(rows, key=lambda r: r["tps_mean"])
        single = next((r for r in rows if r["sequences"] == 1), None)
        gain = f", {best['tps_mean'] / single['tps_mean']:.2f}x one sequence" if single and single["tps_mean"] else ""
        where = f"pp{best['n_prompt']}+tg{best['n_gen']}" if best["n_prompt"] else f"tg{best['n_gen']}"
        lines.append(
            f"most generation throughput ({where}, {best['threads']} thread{'s' if best['threads'] != 1 else ''}):"
            f" {best['sequences']} sequence{'s' if best['sequences'] != 1 else ''},"
            f" {best['tps_mean']:.2f} t/s in all, {best['tps_per_sequence']:.2f} t/s each{gain}"
        )
    return lines


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def bench_markdown(report: dict[str, Any]) -> str:
    out = [f"**edgellm bench** {report['edgellm_version']}" + (" — synthetic model" if report.get("synthetic") else ""), ""]
    out += [f"- {line}" for line in summary_lines(report)]
    headers = result_headers(report)
    out += ["", _md_row(headers), _md_row(["---"] * len(headers))]
    out += [_md_row(cells) for cells in result_rows(report)]
    return "\n".join(out) + "\n"


def merged_markdown(merged: dict[str, Any]) -> str:
    """`bench report --markdown`: the table bench.reports.merge_reports made."""
    lines = [_md_row(merged["headers"]), _md_row(["---"] * len(merged["headers"]))]
    lines += [_md_row(row) for row in merged["rows"]]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("model", "quant", "synthetic", "device", "test", "threads", "cores", "n_prompt", "n_gen", "depth",
              "reps", "tps_mean", "tps_std", "predicted_tps", "temp_before_c", "temp_after_c", "temp_max_c",
              "freq_drop_pct", "throttled")
PARALLEL_CSV_FIELDS = ("model", "quant", "synthetic", "device", "test", "sequences", "threads", "threads_batch", "cores",
                       "n_prompt", "n_gen", "n_kv", "reps", "tps_mean", "tps_std", "tps_per_sequence", "pp_tps_mean",
                       "pp_tps_std", "total_tps_mean", "temp_before_c", "temp_after_c", "temp_max_c", "freq_drop_pct",
                       "throttled")
# The --parallel result keys that are CSV columns as they are.
_PARALLEL_ROW_FIELDS = ("test", "sequences", "threads", "threads_batch", "n_prompt", "n_gen", "n_kv", "reps", "tps_mean",
                        "tps_std", "tps_per_sequence", "pp_tps_mean", "pp_tps_std", "total_tps_mean")
_HEAT_FIELDS = ("temp_before_c", "temp_after_c", "temp_max_c", "freq_drop_pct")


def _blank(value: Any) -> Any:
    return "" if value is None else value


def bench_csv(report: dict[str, Any]) -> str:
    """One line per test, the report's own fields (CSV_FIELDS, or PARALLEL_CSV_FIELDS with --parallel)."""
    from edgellm.bench.reports import device_label  # noqa: PLC0415  (on use, as in summary_lines)

    buffer = io.StringIO()
    parallel = is_parallel(report)
    writer = csv.DictWriter(buffer, fieldnames=PARALLEL_CSV_FIELDS if parallel else CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in report["results"]:
        heat = row.get("thermal") or {}
        fields = ({k: _blank(row.get(k)) for k in _PARALLEL_ROW_FIELDS} if parallel else {
            "test": row["test"], "threads": row["threads"], "n_prompt": row["n_prompt"], "n_gen": row["n_gen"],
            "depth": row.get("depth", 0), "reps": row["reps"], "tps_mean": row["tps_mean"], "tps_std": row["tps_std"],
            "predicted_tps": _blank(row.get("predicted_tps")),
        })
        writer.writerow({
            "model": report["model"], "quant": report["quant"], "synthetic": str(report["synthetic"]).lower(),
            "device": device_label(report["device"]), "cores": format_cpu_list(row["cores"]),
            **fields,
            **{k: _blank(heat.get(k)) for k in _HEAT_FIELDS},
            "throttled": "; ".join(heat.get("throttled") or []),
        })
    return buffer.getvalue()


class BenchProgress:
    """A transient progress bar on stderr while benchmark tests run (nothing when not a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> BenchProgress:  # noqa: PYI034  (typing.Self needs Python 3.11; 3.10 is supported)
        if self._enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                      TimeElapsedColumn(), console=stderr, transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("loading", total=None)
        return self

    def update(self, label: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=label, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
