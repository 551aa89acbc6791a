"""Tables meant for people: the answers of detect, profiles, plan, models and ls.

Rich tables for the detect/profiles/plan views; plain aligned text for models and ls, which
people also grep.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgellm.device.sysfs import format_cpu_list
from edgellm.ui.console import stdout, warn
from edgellm.units import format_size

# --- detect ---------------------------------------------------------------------------------------


def _freq(khz: int | None) -> str:
    return f"{khz / 1e6:.2f} GHz" if khz else "-"


def render_device(device: Any, profile_name: str, reason: str, build: str | None, warnings: list[str]) -> None:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("board", device.board)
    table.add_row("SoC", device.soc)
    table.add_row("arch", device.arch)
    table.add_row("CPU", f"{device.cpu_model}, {device.cpu_count} online" + (f" of {device.cpus_possible}" if device.cpus_possible > device.cpu_count else ""))
    for cluster in device.clusters:
        mark = "  [green]<- fastest[/green]" if cluster.fastest else ""
        cap = f", capacity {cluster.capacity}" if cluster.capacity else ""
        cores = device.physical_core_count(cluster.cpus)
        threads = f" ({cores} cores)" if cores != len(cluster.cpus) else ""
        named = "efficiency" in cluster.name or "E-core" in cluster.name
        kind = ", efficiency cores" if cluster.efficiency and not named else ""
        why = f" · {cluster.signal}" if cluster.signal else ""
        clock = f", {_freq(cluster.max_freq_khz)}" if cluster.max_freq_khz else ""
        table.add_row("cluster", f"{cluster.name}: cpus {format_cpu_list(cluster.cpus)}{threads}{clock}{cap}{kind}{mark}{why}")
    table.add_row("features", " ".join(device.features) or "-")
    table.add_row("RAM", f"{format_size(device.mem_total_bytes)} total, {format_size(device.mem_available_bytes)} available")
    if device.swap_total_bytes is not None:
        table.add_row("swap", f"{format_size(device.swap_total_bytes)} total, {format_size(device.swap_free_bytes)} free")
    table.add_row("page size", format_size(device.page_size_bytes) if device.page_size_bytes else "unknown")
    if device.thermal:
        temps = ", ".join(f"{z.type} {z.celsius:.1f} C" if z.celsius is not None else f"{z.type} ?" for z in device.thermal)
        table.add_row("thermal", temps)
    else:
        table.add_row("thermal", "no sensors")
    if build is not None:
        table.add_row("llama.cpp build", build or "unknown")
    table.add_row("profile", f"[bold cyan]{profile_name}[/bold cyan] ({reason})")
    stdout.print(table)
    for message in warnings:
        warn(message)


# --- profiles -------------------------------------------------------------------------------------


def render_profiles(rows: list[dict[str, Any]]) -> None:
    """`edgellm profiles`: the rows its --json prints (name, matches, description, source)."""
    table = Table(title=None)
    table.add_column("")
    table.add_column("profile", style="bold")
    table.add_column("description")
    table.add_column("source", style="dim")
    for row in rows:
        table.add_row("*" if row["matches"] else "", row["name"], row["description"], row["source"])
    stdout.print(table)
    stdout.print(Text("* matches this device", style="dim"))


def render_profile(data: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in data.items():
        if key == "os_reserve_bytes":
            value = format_size(value)
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    stdout.print(table)


# --- plan -----------------------------------------------------------------------------------------


def render_plan(plan: Any, console: Console | None = None) -> None:
    console = console or stdout
    table = Table(show_header=True, box=None, padding=(0, 2))
    table.add_column("choice", style="bold")
    table.add_column("value")
    table.add_column("why", style="dim")
    r = plan.reasons
    table.add_row("model", f"{plan.model} ({plan.quant})", "")
    table.add_row("profile", plan.profile, "")
    if plan.parallel > 1:
        table.add_row("context", f"{plan.n_ctx_per_slot} per slot, {plan.parallel} slots ({plan.n_ctx} in all)", r.get("parallel", ""))
    else:
        table.add_row("context", str(plan.n_ctx), r.get("n_ctx", ""))
    table.add_row("KV cache", plan.kv_type, r.get("kv_type", ""))
    table.add_row("cores", format_cpu_list(plan.cores), r.get("cores", ""))
    table.add_row("threads", f"{plan.threads} generation, {plan.threads_batch} prompt", r.get("threads", ""))
    table.add_row("batch", str(plan.n_batch), "")
    table.add_row("mmap", "on" if plan.use_mmap else "off", r.get("mmap", ""))
    if plan.rpc:
        table.add_row("devices", f"{len(plan.devices)}: this board + {len(plan.rpc)} worker{'s' if len(plan.rpc) > 1 else ''}", r.get("devices", ""))
        for share in plan.devices:
            last = share.first_layer + share.layers - 1
            layers = f"layers {share.first_layer}-{last}" if share.layers > 1 else f"layer {share.first_layer}" if share.layers else "no layers"
            table.add_row(f"  {share.name}", f"{format_size(share.total_bytes)} of {format_size(share.budget_bytes)}",
                          f"{layers}: weights {format_size(share.weights_bytes)} + KV {format_size(share.kv_bytes)}"
                          + (" (+ embeddings, runtime)" if share.name == "local" else "")
                          + (" (+ output layer)" if share is plan.devices[-1] else ""))
        table.add_row("budget", r.get("budget", ""), "")
    else:
        table.add_row("memory", f"{format_size(plan.total_bytes)} of {format_size(plan.budget_bytes)}",
                      f"weights {format_size(plan.weights_bytes)} + KV {format_size(plan.kv_bytes)} + runtime {format_size(plan.overhead_bytes)}; "
                      f"budget: {r.get('budget', '')}")
    if plan.predicted_tg_tps:
        table.add_row("predicted", f"~{plan.predicted_tg_tps:g} tokens/s generation", r.get("predicted_tg_tps", ""))
    if plan.worst_answer_s is not None:
        table.add_row("answer in", f"≤ {plan.worst_answer_s:g} s", r.get("worst_answer_s", ""))
    elif "worst_answer_s" in r:
        table.add_row("answer in", "unbounded", r["worst_answer_s"])
    verdict = "[green]fits[/green]" if plan.fits else "[red]does not fit[/red]"
    table.add_row("verdict", verdict, "")
    console.print(table)


def render_table(headers: list[str], rows: list[list[str]]) -> None:
    table = Table()
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    stdout.print(table)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns: readable in a terminal and greppable in a pipe."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def catalog_text(rows: list[dict[str, Any]], profile: Any) -> str:
    """`edgellm models`: one line per quant; * marks the one pull would pick here."""
    table = []
    for row in rows:
        for index, quant in enumerate(row["quants"]):
            mark = "*" if quant["quant"] == row["recommended_quant"] else ""
            table.append([
                row["name"] if index == 0 else "", f"{quant['quant']}{mark}", format_size(quant["size"]),
                "yes" if quant["downloaded"] else "-", "yes" if quant["fits"] else "no",
                f"~{quant['predicted_tg_tps']:g}" if quant["predicted_tg_tps"] else "-",
                row["license"] if index == 0 else "",
            ])
    note = f"* the quant `edgellm pull NAME` picks here (profile {profile.name}); default model: {profile.default_model}\n"
    return format_table(["model", "quant", "size", "downloaded", "fits", "tok/s", "license"], table) + note


def downloaded_text(items: list[Any]) -> str:
    """`edgellm ls`: one line per downloaded file, then the total."""
    if not items:
        return ""
    rows = [[d.name, d.quant or "?", format_size(d.size), str(d.path)] for d in items]
    total = sum(d.size for d in items)
    return format_table(["model", "quant", "size", "path"], rows) + f"{len(items)} model(s), {format_size(total)}\n"
