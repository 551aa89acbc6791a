"""All terminal rendering; the only package that uses Rich.

- `console`: the two consoles, error/warn/info lines, JSON and text on stdout, guarded stdout;
- `output`: the one switch between --json (csv, markdown) and what people read;
- `tables`: detect, profiles, plan, models and ls;
- `stream`: a reply as it streams (--think modes), the stats line;
- `chat`: chat's banner, status line and tables;
- `progress`: download progress;
- `bench`: bench's results table, summary and markdown/CSV views, its progress bar.

The rest of edgellm imports `ui` and calls `ui.info(...)`, `ui.Output(...)`: the names below.
"""

from edgellm.ui.bench import BenchProgress, bench_csv, bench_markdown, merged_markdown, render_bench_report
from edgellm.ui.chat import chat_banner, chat_help, chat_status, chat_status_line, chat_table
from edgellm.ui.console import (
    ClosedStdout,
    GuardedStdout,
    confirm,
    dim_escape,
    error,
    guard_stdout,
    info,
    interactive,
    no_color,
    print_json,
    print_json_line,
    print_text,
    require_stdout,
    stderr,
    stderr_is_terminal,
    stdout,
    warn,
)
from edgellm.ui.output import Output
from edgellm.ui.progress import DownloadProgress, TransferProgress, download_progress
from edgellm.ui.stream import (
    THINK_MODES,
    ReplyRenderer,
    StreamWriter,
    ThinkingStatus,
    print_stats,
    stats_line,
    think_mode,
    write_reasoning,
)
from edgellm.ui.tables import (
    catalog_text,
    downloaded_text,
    format_table,
    render_device,
    render_plan,
    render_profile,
    render_profiles,
    render_table,
)

__all__ = [
    "THINK_MODES", "BenchProgress", "ClosedStdout", "DownloadProgress", "GuardedStdout", "Output", "ReplyRenderer",
    "StreamWriter", "ThinkingStatus", "TransferProgress", "catalog_text", "chat_banner", "chat_help", "chat_status",
    "chat_status_line", "chat_table", "confirm", "interactive", "dim_escape", "download_progress", "downloaded_text", "error", "format_table",
    "guard_stdout", "info", "no_color", "print_json", "print_json_line", "print_stats", "print_text", "render_bench_report",
    "render_device", "render_plan", "render_profile", "render_profiles", "render_table", "require_stdout", "stats_line",
    "stderr", "stderr_is_terminal", "stdout", "think_mode", "warn", "write_reasoning",
    "bench_csv", "bench_markdown", "merged_markdown",
]

