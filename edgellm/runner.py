"""`edgellm run`: one-shot generation for shells and scripts.

The answer streams to stdout as it is generated; reasoning goes where `--think` says; stats,
warnings and errors go to stderr. `--json` prints one object, `--jsonl` one line per stdin line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import IO, Any

from edgellm import ui
from edgellm.errors import UsageError
from edgellm.reasoning import ANSWER, REASONING
from edgellm.response import Response
from edgellm.runtime import GenerationInterrupted, GenerationStats, TextEvent

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


class StreamWriter:
    """Writes text events to the terminal or pipe as they arrive: the answer to `out`, the
    reasoning where --think says (inside <think> tags with show, dimmed on stderr with stderr)."""

    def __init__(self, think: str, out: IO[str]) -> None:
        self.think = think
        self.out = out
        self.in_reasoning = False
        # Hidden reasoning can take minutes: on a terminal, one live line says how far it is.
        self.status = ui.ThinkingStatus() if think == "hide" and ui.stderr_is_terminal() else None

    def write(self, event: TextEvent) -> None:
        out = self.out
        if event.kind == ANSWER:
            if self.status is not None:
                self.status.clear()
            if self.in_reasoning and self.think == "show":
                out.write("\n</think>\n\n")
            self.in_reasoning = False
            out.write(event.text)
            out.flush()
        elif event.kind == REASONING:
            if self.think == "show":
                if not self.in_reasoning:
                    out.write("<think>\n")
                out.write(event.text)
                out.flush()
            elif self.think == "stderr":
                ui.write_reasoning(event.text)
            elif self.status is not None:
                self.status.step()
            self.in_reasoning = True

    def finish(self) -> None:
        if self.status is not None:
            self.status.clear()
        if self.in_reasoning and self.think == "show":
            self.out.write("\n</think>\n")
        if self.in_reasoning and self.think == "stderr":
            sys.stderr.write("\n")
        self.out.flush()


def run_one(engine: Any, request: RunRequest, prompt: str) -> int:
    """Generate one reply; returns the exit code. On Ctrl-C what was generated is still written
    (with --json: the partial reply, finish_reason "interrupted"), then GenerationInterrupted rises."""
    response = Response(engine.generate(messages_for(prompt, request.system), request.sampling))
    if request.json_output:
        try:
            response.finish()
        finally:
            ui.print_json(response.to_json())
    else:
        writer = StreamWriter(resolve_think(request.think), sys.stdout)
        response.finish(writer.write)
        writer.finish()
        calls = response.complete_calls
        if calls and response.answer and not response.answer.endswith("\n"):
            sys.stdout.write("\n")
        for call in calls:  # one JSON object per line, for shell agents
            sys.stdout.write(json.dumps(call.to_json(), ensure_ascii=False) + "\n")
        if not calls and not response.interrupted and sys.stdout.isatty() and not response.answer.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    _raise_if_interrupted(response)
    if request.show_stats and response.stats is not None:
        ui.print_stats(response.stats)
    return 0


def run_jsonl(engine: Any, request: RunRequest, lines: str) -> int:
    """One JSON line per non-empty input line, in order; the model stays loaded throughout.
    On Ctrl-C the current line's partial reply is written too, finish_reason "interrupted"."""
    count = 0
    for line in lines.splitlines():
        if not line.strip():
            continue
        prompt = build_prompt(request.prompt, line)
        response = Response(engine.generate(messages_for(prompt, request.system), request.sampling))
        try:
            response.finish()
        finally:
            sys.stdout.write(json.dumps({"prompt": line, **response.to_json()}, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        _raise_if_interrupted(response)
        count += 1
        if request.show_stats and response.stats is not None:
            ui.print_stats(response.stats)
    if count == 0:
        raise UsageError("--jsonl reads one prompt per stdin line, and stdin had none")
    return 0


def _raise_if_interrupted(response: Response) -> None:
    """The CLI turns this into "interrupted after N tokens" and exit 130."""
    if response.interrupted:
        raise GenerationInterrupted(response.stats or GenerationStats(finish_reason="interrupted"))
