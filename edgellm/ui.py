"""All terminal rendering. The only module that uses Rich.

Convention (as in Simon Willison's `llm`): the answer goes to stdout; everything else (tables
meant for people are the exception: they are the answer of `detect`, `profiles`, `plan`),
progress, warnings, stats and errors go to stderr. `--json` output is written with plain
`print` so nothing decorates it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgellm import hardware
from edgellm.units import format_size

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_text(text: str) -> None:
    """Text for stdout as it is (a unit file, a tool's output): no markup, no wrapping."""
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stdout.flush()


def error(message: str, hint: str | None = None) -> None:
    stderr.print(Text("error: ", style="bold red") + Text(message))
    if hint:
        stderr.print(Text("hint: ", style="yellow") + Text(hint))


def warn(message: str) -> None:
    stderr.print(Text("warning: ", style="yellow") + Text(message))


def info(message: str) -> None:
    stderr.print(Text(message, style="dim"))


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


# --- stdout that fails with one line ----------------------------------------------------------------


class GuardedStdout:
    """sys.stdout whose write errors (a full disk, /dev/full, a revoked terminal) become one
    OutputError line instead of "unexpected OSError". A closed pipe stays BrokenPipeError: the
    funnel ends quietly then, as `edgellm run ... | head -1` should."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _output_error(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _output_error(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class ClosedStdout:
    """Stands in for a stdout that was closed before edgellm started (`edgellm run ... >&-`)."""

    encoding = "utf-8"
    closed_at_start = True

    def write(self, text: str) -> int:
        raise closed_stdout_error()

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError("stdout is closed")


def _output_error(exc: OSError) -> Exception:
    from edgellm.errors import OutputError  # noqa: PLC0415

    return OutputError(f"cannot write to stdout: {exc.strerror or exc}", hint="check where stdout goes (disk space, the file or device)")


def closed_stdout_error() -> Exception:
    from edgellm.errors import OutputError  # noqa: PLC0415

    return OutputError("stdout is closed, so there is nowhere to write the output",
                       hint="redirect it to a file, or to /dev/null to discard it")


def guard_stdout() -> None:
    """Install GuardedStdout (or ClosedStdout) as sys.stdout; called once by the CLI's main()."""
    if sys.stdout is None:
        sys.stdout = ClosedStdout()  # type: ignore[assignment]
    elif not isinstance(sys.stdout, (GuardedStdout, ClosedStdout)):
        sys.stdout = GuardedStdout(sys.stdout)  # type: ignore[assignment]


def require_stdout() -> None:
    """Fail before any work when stdout was closed: the work's result could not be written."""
    if getattr(sys.stdout, "closed_at_start", False):
        raise closed_stdout_error()


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
        table.add_row("cluster", f"{cluster.name}: cpus {_cpus(cluster.cpus)}{threads}{clock}{cap}{kind}{mark}{why}")
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


def _cpus(cpus: list[int]) -> str:
    return hardware.format_cpu_list(cpus)


# --- profiles -------------------------------------------------------------------------------------


def render_profiles(rows: list[tuple[str, bool, str, str]]) -> None:
    table = Table(title=None)
    table.add_column("")
    table.add_column("profile", style="bold")
    table.add_column("description")
    table.add_column("source", style="dim")
    for name, matched, description, source in rows:
        table.add_row("*" if matched else "", name, description, source)
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
    table.add_row("cores", _cpus(plan.cores), r.get("cores", ""))
    table.add_row("threads", f"{plan.threads} generation, {plan.threads_batch} prompt", r.get("threads", ""))
    table.add_row("batch", str(plan.n_batch), "")
    table.add_row("mmap", "on" if plan.use_mmap else "off", r.get("mmap", ""))
    table.add_row("memory", f"{format_size(plan.total_bytes)} of {format_size(plan.budget_bytes)}",
                  f"weights {format_size(plan.weights_bytes)} + KV {format_size(plan.kv_bytes)} + runtime {format_size(plan.overhead_bytes)}; budget: {r.get('budget', '')}")
    if plan.predicted_tg_tps:
        table.add_row("predicted", f"~{plan.predicted_tg_tps:g} tokens/s generation", r.get("predicted_tg_tps", ""))
    if plan.worst_answer_s is not None:
        table.add_row("answer in", f"≤ {plan.worst_answer_s:g} s", r.get("worst_answer_s", ""))
    elif "worst_answer_s" in r:
        table.add_row("answer in", "unbounded", r["worst_answer_s"])
    verdict = "[green]fits[/green]" if plan.fits else "[red]does not fit[/red]"
    table.add_row("verdict", verdict, "")
    console.print(table)


# --- generation -----------------------------------------------------------------------------------


def write_reasoning(text: str) -> None:
    """Reasoning shown on stderr, dimmed when it is a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\x1b[2m{text}\x1b[0m")
    else:
        sys.stderr.write(text)
    sys.stderr.flush()


def stats_line(stats: Any, temperature: float | None = None) -> str:
    parts = [
        f"{stats.generated_tokens} tokens" + (f" ({stats.reasoning_tokens} reasoning)" if stats.reasoning_tokens else ""),
        f"{stats.gen_tps:.1f} tok/s",
        f"prompt {stats.prompt_tokens_evaluated} tok at {stats.prompt_tps:.1f} tok/s",
        f"first token {stats.ttft_s:.2f}s",
        f"load {stats.load_s:.2f}s",
        f"context {stats.context_used}/{stats.n_ctx}",
        f"RSS {format_size(stats.peak_rss_bytes)}",
    ]
    if temperature is not None:
        parts.append(f"{temperature:.0f} C")
    if stats.finish_reason != "stop":
        parts.append(stats.finish_reason)
    return " | ".join(parts)


def print_stats(stats: Any, temperature: float | None = None) -> None:
    stderr.print(Text(stats_line(stats, temperature), style="dim"))


def no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


# --- chat -----------------------------------------------------------------------------------------


def _dim_escape(text: str) -> str:
    return text if no_color() else f"\x1b[2m{text}\x1b[0m"


def chat_status_line(stats: Any, temperature: float | None = None) -> str:
    """One line after each chat reply: speed, first-token latency, KV reuse, context, memory, heat."""
    cached = stats.prompt_tokens - stats.prompt_tokens_evaluated
    parts = [f"{stats.generated_tokens} tokens" + (f" ({stats.reasoning_tokens} reasoning)" if stats.reasoning_tokens else "")]
    if stats.generated_tokens:  # stopped during the prompt: no speed or first token to report
        parts += [f"{stats.gen_tps:.1f} tok/s", f"first token {stats.ttft_s:.2f}s"]
    parts += [
        f"prompt {stats.prompt_tokens_evaluated} new + {cached} cached",
        f"context {stats.context_used}/{stats.n_ctx}",
        f"RSS {format_size(stats.peak_rss_bytes)}",
    ]
    if temperature is not None:
        parts.append(f"CPU {temperature:.0f} C")
    if stats.finish_reason not in ("stop", "interrupted"):
        parts.append(f"stopped: {stats.finish_reason}")
    return " · ".join(parts)


def chat_status(stats: Any, temperature: float | None = None) -> None:
    stderr.print(Text(chat_status_line(stats, temperature), style="dim"))


def chat_banner(model: str, quant: str, n_ctx: int, threads: int, cores: str, profile: str, loaded_turns: int) -> None:
    stderr.print(Text.assemble(
        ("edgellm chat", "bold"), " · ", (model, "cyan"), f" ({quant}) · context {n_ctx} · "
        f"{threads} threads on cores {cores} · profile {profile}",
    ))
    if loaded_turns:
        stderr.print(Text(f"continuing a saved conversation of {loaded_turns} turns", style="dim"))
    stderr.print(Text('/help for commands, """ for multi-line input, Ctrl-C stops a reply, Ctrl-D exits', style="dim"))


def chat_help(commands: dict[str, str]) -> None:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(style="dim")
    for usage, text in commands.items():
        table.add_row(usage, text)
    table.add_row('"""', 'start a multi-line message; end it with """')
    stderr.print(table)


def chat_table(rows: list[tuple[str, str]]) -> None:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    stderr.print(table)


class ThinkingStatus:
    """One live line on stderr while hidden reasoning runs (`thinking… 312 tokens · 41 s`), rewritten
    at most a few times a second and erased when the answer starts. Only for a terminal's stderr."""

    REFRESH_SECONDS = 0.25

    def __init__(self) -> None:
        self.tokens = 0
        self.started = time.monotonic()
        self.shown = False
        self._drawn_at = 0.0

    def step(self, tokens: int = 1) -> None:
        self.tokens += tokens
        now = time.monotonic()
        if self.shown and now - self._drawn_at < self.REFRESH_SECONDS:
            return
        self._drawn_at = now
        sys.stderr.write("\r\x1b[K" + _dim_escape(f"thinking… {self.tokens} tokens · {now - self.started:.0f} s"))
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


# --- downloads ------------------------------------------------------------------------------------


class DownloadProgress:
    """A Rich progress bar with size, speed and ETA on a terminal's stderr.

    Same interface as download.TransferProgress (the plain-line version used in pipes and logs).
    """

    def __init__(self, label: str, total: int, initial: int = 0) -> None:
        from rich.progress import (  # noqa: PLC0415  (only when a download starts)
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.label, self.total, self.done = label, total, initial
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=stderr, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, completed=initial)
        self._started_bytes = initial
        import time  # noqa: PLC0415

        self._clock = time.monotonic
        self._started = self._clock()
        if initial:
            info(f"resuming {label} at {format_size(initial)} of {format_size(total)}")

    def update(self, n_bytes: int) -> None:
        self.done += n_bytes
        self._progress.update(self._task, advance=n_bytes)

    def reset(self, done: int) -> None:
        self.done = self._started_bytes = done
        self._started = self._clock()
        self._progress.reset(self._task, total=self.total, completed=done)

    def close(self) -> None:
        self._progress.stop()
        elapsed = self._clock() - self._started
        speed = (self.done - self._started_bytes) / elapsed if elapsed > 0 else 0.0
        info(f"{self.label}: {format_size(self.done)} in {elapsed:.1f}s ({format_size(speed)}/s)")


# --- bench ----------------------------------------------------------------------------------------


# Right-aligned bench columns; the speeds never wrap (a "±" split over two lines misreads).
BENCH_NUMERIC = ("threads", "seqs", "t/s", "predicted t/s", "gen t/s (all)", "t/s each", "prompt t/s")
BENCH_NO_WRAP = ("test", "t/s", "gen t/s (all)", "prompt t/s")


def render_bench_report(title: str, headers: list[str], rows: list[list[str]], summary: list[str]) -> None:
    table = Table(title=title, title_justify="left")
    for header in headers:
        numeric = header in BENCH_NUMERIC
        table.add_column(header, justify="right" if numeric else "left", no_wrap=header in BENCH_NO_WRAP)
    for cells in rows:
        table.add_row(*cells)
    stdout.print(table)
    for line in summary:
        stdout.print(line, style="dim", markup=False)


def render_table(headers: list[str], rows: list[list[str]]) -> None:
    table = Table()
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    stdout.print(table)


class BenchProgress:
    """A transient progress bar on stderr while benchmark tests run (nothing when not a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> BenchProgress:
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
