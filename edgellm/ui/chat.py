"""What `edgellm chat` shows besides the reply: the banner, the status line after each reply,
/help and /stats tables. All on stderr, so stdout holds only the answers."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from edgellm.ui.console import stderr
from edgellm.units import format_size


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
