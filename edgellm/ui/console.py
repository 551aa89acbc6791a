"""The two consoles, one-line messages (error, warning, info), JSON and plain text on stdout, and a
stdout whose failures are one line.

Convention (as in Simon Willison's `llm`): the answer goes to stdout; everything else (tables
meant for people are the exception: they are the answer of `detect`, `profiles`, `plan`),
progress, warnings, stats and errors go to stderr. `--json` output is written with plain
`sys.stdout.write` so nothing decorates it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_json_line(data: Any) -> None:
    """One JSON object on one line (--jsonl): flushed, so a reader sees each as it is made."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
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


def interactive() -> bool:
    """A person can answer a question: stdin and stderr are both a terminal."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def confirm(question: str) -> bool:
    """Ask on stderr; Enter means yes."""
    import typer  # noqa: PLC0415  (Typer's prompt; only when there is a question)

    return bool(typer.confirm(question, default=True, err=True))


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
        sys.stdout = ClosedStdout()
    elif not isinstance(sys.stdout, (GuardedStdout, ClosedStdout)):
        sys.stdout = GuardedStdout(sys.stdout)


def require_stdout() -> None:
    """Fail before any work when stdout was closed: the work's result could not be written."""
    if getattr(sys.stdout, "closed_at_start", False):
        raise closed_stdout_error()


def no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def dim_escape(text: str) -> str:
    """Dim text for a raw terminal write (live lines Rich does not manage), unless NO_COLOR."""
    return text if no_color() else f"\x1b[2m{text}\x1b[0m"
