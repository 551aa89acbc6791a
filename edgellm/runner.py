"""`edgellm run`: one-shot generation for shells and scripts.

The answer streams to stdout as it is generated; reasoning goes where `--think` says; stats,
warnings and errors go to stderr. `--json` prints one object, `--jsonl` one line per stdin line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from edgellm import ui
from edgellm.errors import UsageError
from edgellm.reasoning import ANSWER, REASONING

THINK_MODES = ("hide", "show", "stderr")


@dataclass
class RunRequest:
    prompt: str | None
    system: str | None = None
    think: str | None = None  # None: stderr on a terminal, hide otherwise
    json_output: bool = False
    jsonl: bool = False
    show_stats: bool = False
    sampling: Any = None  # runtime.SamplingParams, built by the CLI


@dataclass
class Reply:
    answer: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    stats: Any = None


def read_stdin(stream: IO[bytes] | None = None) -> tuple[str | None, bool]:
    """Piped stdin as text, and whether bytes had to be replaced (not UTF-8). None on a terminal."""
    if stream is None:
        if sys.stdin is None or sys.stdin.isatty():
            return None, False
        stream = sys.stdin.buffer
    data = stream.read()
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def build_prompt(argument: str | None, piped: str | None) -> str:
    """The prompt argument, then the piped text after it (`cat notes | edgellm run "Summarise:"`)."""
    parts = [p for p in (argument, piped) if p and p.strip()]
    if not parts:
        raise UsageError(
            "no prompt: pass it as an argument or pipe text in",
            hint='edgellm run -m MODEL "Why is the sky blue?"  or  cat notes.txt | edgellm run -m MODEL "Summarise:"',
        )
    return "\n\n".join(p.rstrip("\n") if i == 0 else p for i, p in enumerate(parts))


def messages_for(prompt: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages


def resolve_think(mode: str | None) -> str:
    if mode is None:
        return "stderr" if ui.stderr_is_terminal() else "hide"
    if mode not in THINK_MODES:
        raise UsageError(f"--think must be one of {', '.join(THINK_MODES)}, not '{mode}'")
    return mode


def stream_reply(events: Iterator[Any], think: str, out: IO[str]) -> Reply:
    """Write an event stream to the terminal/pipe as it arrives; collect the reply."""
    reply = Reply()
    in_reasoning = False
    for event in events:
        kind = getattr(event, "kind", None)
        if kind == ANSWER:
            if in_reasoning and think == "show":
                out.write("\n</think>\n\n")
            in_reasoning = False
            reply.answer.append(event.text)
            out.write(event.text)
            out.flush()
        elif kind == REASONING:
            reply.reasoning.append(event.text)
            if think == "show":
                if not in_reasoning:
                    out.write("<think>\n")
                out.write(event.text)
                out.flush()
            elif think == "stderr":
                ui.write_reasoning(event.text)
            in_reasoning = True
        else:
            reply.stats = event
    if in_reasoning and think == "show":
        out.write("\n</think>\n")
    if in_reasoning and think == "stderr":
        sys.stderr.write("\n")
    return reply


def collect_reply(events: Iterator[Any]) -> Reply:
    reply = Reply()
    for event in events:
        kind = getattr(event, "kind", None)
        if kind == ANSWER:
            reply.answer.append(event.text)
        elif kind == REASONING:
            reply.reasoning.append(event.text)
        else:
            reply.stats = event
    return reply


def reply_json(reply: Reply, prompt: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if prompt is not None:
        data["prompt"] = prompt
    data.update(
        answer="".join(reply.answer),
        reasoning="".join(reply.reasoning),
        finish_reason=reply.stats.finish_reason if reply.stats else None,
        stats=reply.stats.to_json() if reply.stats else None,
    )
    return data


def run_one(engine: Any, request: RunRequest, prompt: str) -> int:
    """Generate one reply; returns the exit code."""
    events = engine.generate(messages_for(prompt, request.system), request.sampling)
    if request.json_output:
        reply = collect_reply(events)
        ui.print_json(reply_json(reply))
    else:
        reply = stream_reply(events, resolve_think(request.think), sys.stdout)
        if sys.stdout.isatty() and not "".join(reply.answer).endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    if request.show_stats and reply.stats is not None:
        ui.print_stats(reply.stats)
    return 0


def run_jsonl(engine: Any, request: RunRequest, lines: str) -> int:
    """One JSON line per non-empty input line, in order; the model stays loaded throughout."""
    count = 0
    for line in lines.splitlines():
        if not line.strip():
            continue
        prompt = build_prompt(request.prompt, line)
        reply = collect_reply(engine.generate(messages_for(prompt, request.system), request.sampling))
        sys.stdout.write(json.dumps(reply_json(reply, prompt=line), ensure_ascii=False) + "\n")
        sys.stdout.flush()
        count += 1
        if request.show_stats and reply.stats is not None:
            ui.print_stats(reply.stats)
    if count == 0:
        raise UsageError("--jsonl reads one prompt per stdin line, and stdin had none")
    return 0
