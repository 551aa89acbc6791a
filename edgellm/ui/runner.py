"""`edgellm run`: one-shot generation for shells and scripts.

The answer streams to stdout as it is generated; reasoning goes where `--think` says; stats,
warnings and errors go to stderr. `--json` prints one object, `--jsonl` one line per stdin line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO, Any

from edgellm import ui
from edgellm.errors import Interrupted, UsageError
from edgellm.runtime.protocol import GenerationEngine
from edgellm.runtime.response import Response


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


def run_one(engine: GenerationEngine, request: RunRequest, prompt: str) -> int:
    """Generate one reply; returns the exit code. On Ctrl-C what was generated is still written
    (with --json: the partial reply, finish_reason "interrupted"), then Interrupted rises."""
    response = Response(engine.generate(messages_for(prompt, request.system), request.sampling))
    if request.json_output:
        try:
            response.finish()
        finally:
            ui.print_json(response.to_json())
    else:
        writer = ui.StreamWriter(ui.think_mode(request.think, ui.stderr_is_terminal()), sys.stdout)
        response.finish(writer.write)
        writer.finish()
        writer.end_answer(response.answer, [call.to_json() for call in response.complete_calls], response.interrupted)
    _raise_if_interrupted(response)
    if request.show_stats and response.stats is not None:
        ui.print_stats(response.stats)
    return 0


def run_jsonl(engine: GenerationEngine, request: RunRequest, lines: str) -> int:
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
            ui.print_json_line({"prompt": line, **response.to_json()})
        _raise_if_interrupted(response)
        count += 1
        if request.show_stats and response.stats is not None:
            ui.print_stats(response.stats)
    if count == 0:
        raise UsageError("--jsonl reads one prompt per stdin line, and stdin had none")
    return 0


def _raise_if_interrupted(response: Response) -> None:
    """Ctrl-C: what was generated is written; the funnel says how much and exits 130."""
    if response.interrupted:
        raise Interrupted(f"interrupted after {response.stats.generated_tokens if response.stats else 0} tokens")
