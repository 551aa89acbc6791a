"""How every failure leaves the CLI: one line on stderr and an exit code, never a traceback
(EDGELLM_DEBUG=1 shows it).

Attached once, to the root command group (`FunnelledGroup`), so every command and sub-command,
present and future, runs inside it. The table is ordered: the first type that matches wins.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperGroup

from edgellm import ui
from edgellm.errors import EdgeLLMError, Interrupted, OutputError, debug_enabled


def quiet_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so Python's exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _edgellm_error(exc: EdgeLLMError) -> int:
    ui.error(exc.message, exc.hint)
    if isinstance(exc, OutputError):
        quiet_stdout()  # Python's exit flush would fail on the same stdout again
    return exc.exit_code


def _stopped_part_way(exc: Interrupted) -> int:
    sys.stdout.flush()  # what was generated stays: written before the note
    sys.stderr.write("\n")
    ui.info(exc.message)
    return exc.exit_code


def _closed_pipe(_: BrokenPipeError) -> int:
    quiet_stdout()  # `edgellm run ... | head -1`: the reader has what it wanted
    return 0


def _interrupted(_: KeyboardInterrupt) -> int:
    sys.stderr.write("\n")
    ui.info("interrupted")
    return 130


def _unexpected(exc: Exception) -> int:
    ui.error(f"unexpected {type(exc).__name__}: {exc}", hint="run again with EDGELLM_DEBUG=1 to see the traceback, and report it")
    return 1


# (exception type, handler returning the exit code, traceback under EDGELLM_DEBUG). Order matters:
# Interrupted and OutputError are EdgeLLMErrors, BrokenPipeError an OSError, and Exception catches the rest.
FAILURES: tuple[tuple[type[BaseException], Callable[[Any], int], bool], ...] = (
    (Interrupted, _stopped_part_way, False),
    (EdgeLLMError, _edgellm_error, True),
    (BrokenPipeError, _closed_pipe, False),
    (KeyboardInterrupt, _interrupted, True),
    (Exception, _unexpected, True),
)


def is_typers_own(exc: BaseException) -> bool:
    """Typer's exceptions (usage errors, typer.Exit, --help's exit): Typer reports them. They live in
    `typer` (which vendors click since 0.2x) or, with older Typer, in `click`."""
    return type(exc).__module__.split(".")[0] in ("typer", "click")


def exit_code_for(exc: BaseException) -> int | None:
    """Report `exc` as its table entry says and return the exit code; None: not ours to report."""
    if is_typers_own(exc):
        return None
    for kind, handle, show_traceback in FAILURES:
        if isinstance(exc, kind):
            if show_traceback and debug_enabled():
                traceback.print_exception(exc)
            return handle(exc)
    return None  # SystemExit, GeneratorExit: not failures


class FunnelledGroup(TyperGroup):
    """The root command group: every command runs inside the funnel."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BaseException as exc:  # noqa: BLE001  (the table decides; what is not ours is raised again)
            code = exit_code_for(exc)
            if code is None:
                raise
            raise typer.Exit(code) from None
