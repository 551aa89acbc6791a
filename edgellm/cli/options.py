"""Parsers for the values people type on the command line: lists of numbers, CPU lists, stop
strings, tool and grammar files, the reasoning options. Each checks its value and raises a
UsageError naming the option, before any model loads; none of them uses Typer, so the library
(bench's child process, scripts) can use them too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgellm import ui
from edgellm.errors import UsageError
from edgellm.units import parse_size

if TYPE_CHECKING:
    from edgellm.device.workers import Endpoint

import json
import re

from edgellm.files import read_regular_file
from edgellm.plan.planner import MAX_SEQUENCES, reasoning_budget
from edgellm.text.stops import check_stops, unescape
from edgellm.text.toolcalls import ToolSpecError, parse_tool_choice, parse_tools

MAX_LIST_VALUES = 4096  # -p/-n/-t/--depth lists: far more tests than anyone can wait for
# llama.cpp's GGML_MAX_N_THREADS: more aborts inside ggml.
MAX_THREADS = 512


def check_thinking(budget: int | None, no_think: bool) -> None:
    if no_think and budget:
        raise UsageError("--no-think and --think-budget cannot be combined")


def apply_thinking(sampling: Any, plan: Any, no_think: bool, message: str | None) -> None:
    """--no-think / --think-message, and the plan's thinking budget (the planner resolved
    --think-budget against the profile's: one place), onto SamplingParams."""
    no_think = no_think or plan.think_budget == 0
    sampling.no_think = no_think
    sampling.think_budget = None if no_think else plan.think_budget
    if message is not None:
        sampling.think_message = unescape(message)

def serve_thinking(profile: Any, asked: int | None, message: str | None) -> dict[str, Any]:
    """ServerConfig fields for reasoning: the default budget (--think-budget, else the profile's:
    for every reasoning model served, whichever model the server started with) and the budgets of
    reasoning_effort low / medium / high (the profile's)."""
    from edgellm.runtime.types import DEFAULT_THINK_MESSAGE  # noqa: PLC0415  (the runtime package loads llama_cpp lazily; its constants are cheap)

    return {
        "think_budget": reasoning_budget(profile, asked),
        "effort_budgets": {"low": profile.think_budget_low, "medium": profile.think_budget_medium,
                           "high": profile.think_budget_high},
        "think_message": unescape(message) if message is not None else DEFAULT_THINK_MESSAGE,
    }

def stop_values(values: list[str] | None) -> list[str]:
    """--stop values with the escapes a shell user types (\\n, \\t, \\\\), checked."""
    try:
        return check_stops([unescape(value) for value in values or []])
    except ValueError as exc:
        raise UsageError(f"--stop: {exc}") from None

MAX_CONSTRAINT_FILE_BYTES = 1024 * 1024  # grammars and schemas are KiBs; llama.cpp's limit is far lower


def tools_file(path: Path | None, choice: str | None) -> Any:
    """--tools FILE and --tool-choice as (tools, ToolChoice), checked before any model loads."""
    if path is None:
        if choice is not None:
            raise UsageError("--tool-choice needs --tools FILE")
        return None
    text = read_text_file(path, "--tools") or ""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"--tools {path}: not valid JSON: {str(exc).splitlines()[0][:120]}") from None
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]  # a request body's worth, as people copy it
    try:
        tool_list = parse_tools(data, param="tools")
        named = choice not in (None, "auto", "required", "none")
        chosen = parse_tool_choice({"type": "function", "function": {"name": choice}} if named else choice, tool_list,
                                   param="--tool-choice")
    except ToolSpecError as exc:
        raise UsageError(f"--tools {path}: {exc.message}", hint=exc.hint) from None
    return tool_list, chosen


def read_text_file(path: Path | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        # Only regular files: a FIFO or a device would block or never end.
        data = read_regular_file(path, MAX_CONSTRAINT_FILE_BYTES + 1)
        if len(data) > MAX_CONSTRAINT_FILE_BYTES:
            raise UsageError(f"{option} {path}: larger than {MAX_CONSTRAINT_FILE_BYTES // 1024} KiB")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{option} {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None

def parse_int_list(text: str, option: str, *, minimum: int = 0) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; also accepts llama-bench's 'first-last+step' ranges ('1-8+1')."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?:\+(\d+))?)?", part)
        if not match:
            raise UsageError(f"{option} {text!r}: expected numbers separated by commas, e.g. {option} 1,2,4")
        first, last, step = int(match.group(1)), match.group(2), match.group(3)
        if step is not None and int(step) == 0:
            raise UsageError(f"{option} {part!r}: a range's step must be at least 1")
        span = range(first, int(last) + 1, int(step or 1)) if last else range(first, first + 1)
        if len(values) + len(span) > MAX_LIST_VALUES:  # sized before expanding: 1-4000000000 is 4e9 ints
            raise UsageError(f"{option} {text!r}: more than {MAX_LIST_VALUES} values")
        values.extend(span)
    if not values or min(values) < minimum:
        raise UsageError(f"{option} {text!r}: every value must be at least {minimum}")
    return list(dict.fromkeys(values))


def parse_parallel(text: str) -> list[int]:
    """--parallel '1,2,4' -> [1, 2, 4]: numbers of sequences decoded at once, 1 to MAX_SEQUENCES."""
    values = parse_int_list(text, "--parallel", minimum=1)
    if max(values) > MAX_SEQUENCES:
        raise UsageError(f"--parallel {text!r}: at most {MAX_SEQUENCES} sequences (llama.cpp's limit)",
                         hint="e.g. --parallel 1,2,4")
    return values


def bench_threads(text: str | None) -> list[int] | None:
    """bench -t: thread counts to compare. More than the CPUs is allowed (that is what one measures)
    but said; more than llama.cpp can start is refused."""
    if not text:
        return None
    counts = parse_int_list(text, "-t", minimum=1)
    too_many = [n for n in counts if n > MAX_THREADS]
    if too_many:
        raise UsageError(f"-t {too_many[0]}: llama.cpp runs at most {MAX_THREADS} threads")
    return counts


def oversubscribed_threads(counts: list[int] | None) -> list[str]:
    """Warnings for bench -t counts above the CPUs this process may use (allowed: it is what one measures)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [f"-t {n} is more than the {cpus} CPUs here: the threads will share them" for n in counts or [] if n > cpus]


# Shared Typer options and their converters -----------------------------------------------------


def rpc_endpoints(value: str | None) -> list[Endpoint]:
    from edgellm.device.workers import parse_endpoints

    return parse_endpoints(value)


def size_option(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


ProfileOpt = Annotated[str | None, typer.Option("--profile", help="Profile name or .toml file (default: the one matching this device).")]


MemBudgetOpt = Annotated[str | None, typer.Option("--mem-budget", help="Cap the memory budget, e.g. 1.5GiB or 900MB.")]


CtxOpt = Annotated[int | None, typer.Option("--ctx", min=64, help="Context size in tokens (default: the profile's, shrunk to fit memory).")]


ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", min=1, help="Generation threads (default: from the profile).")]


ThinkBudgetOpt = Annotated[int | None, typer.Option("--think-budget", min=0, help="End the reasoning after this many tokens and answer (0: no reasoning). Default: the profile's (none: the model decides).")]


NoThinkOpt = Annotated[bool, typer.Option("--no-think", help="Skip the reasoning: the answer starts at once.")]


ThinkMessageOpt = Annotated[str | None, typer.Option("--think-message", help="The line written into the reasoning when --think-budget runs out, before it closes.")]


StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="End the reply before this text (repeatable, up to 4; \\n and \\t are understood), e.g. --stop '\\n\\n'.")]


TempOpt = Annotated[float, typer.Option("--temp", min=0.0, help="Sampling temperature (0 = greedy).")]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.")]
MaxTokensOpt = Annotated[int | None, typer.Option("--max-tokens", "-n", min=1, help="Longest reply, in tokens.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed, for repeatable replies.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


RpcOpt = Annotated[str | None, typer.Option("--rpc", help="Split the model's layers across this board and `edgellm worker`s: HOST:PORT[,HOST:PORT...], e.g. --rpc 192.168.1.21:50052.")]


def sysroot_option(value: str) -> str:
    if not Path(value).is_dir():
        raise typer.BadParameter(f"{value} is not a directory (a capture with proc/ and sys/ inside)")
    return value


SysrootOpt = Annotated[str, typer.Option("--sysroot", callback=sysroot_option, help="Read /proc and /sys below this directory (a capture of another device).")]


def terminal_notices() -> Any:
    """The loader's notices on this terminal: info and warnings on stderr, a confirm prompt only
    when someone is there to answer, Rich download progress."""
    from edgellm.loader import Notices

    return Notices(info=ui.info, warn=ui.warn, confirm=ui.confirm if ui.interactive() else None, progress=ui.download_progress)


def plan_options(profile: str | None, ctx: int | None, mem_budget: str | None, threads: int | None, rpc: str | None,
                 **more: Any) -> Any:
    """The loader's PlanOptions from the options every model command shares (--profile, --ctx,
    --mem-budget, --threads, --rpc), with this terminal's notices; `more`: the rest (parallel, sysroot)."""
    from edgellm.loader import PlanOptions

    return PlanOptions(profile=profile, ctx=ctx, mem_budget=size_option(mem_budget), threads=threads, rpc=rpc_endpoints(rpc),
                       notices=terminal_notices(), **more)
