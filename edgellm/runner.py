"""`edgellm run`: one-shot generation for shells and scripts.

The answer streams to stdout as it is generated; reasoning goes where `--think` says; stats,
warnings and errors go to stderr. `--json` prints one object, `--jsonl` one line per stdin line.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
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


class StreamWriter:
    """Writes events to the terminal or pipe as they arrive, collecting the reply as it goes."""

    def __init__(self, think: str, out: IO[str]) -> None:
        self.think = think
        self.out = out
        self.reply = Reply()
        self.in_reasoning = False

    def feed(self, event: Any) -> None:
        kind = getattr(event, "kind", None)
        out = self.out
        if kind == ANSWER:
            if self.in_reasoning and self.think == "show":
                out.write("\n</think>\n\n")
            self.in_reasoning = False
            self.reply.answer.append(event.text)
            out.write(event.text)
            out.flush()
        elif kind == REASONING:
            self.reply.reasoning.append(event.text)
            if self.think == "show":
                if not self.in_reasoning:
                    out.write("<think>\n")
                out.write(event.text)
                out.flush()
            elif self.think == "stderr":
                ui.write_reasoning(event.text)
            self.in_reasoning = True
        else:
            self.reply.stats = event

    def finish(self) -> Reply:
        if self.in_reasoning and self.think == "show":
            self.out.write("\n</think>\n")
        if self.in_reasoning and self.think == "stderr":
            sys.stderr.write("\n")
        self.out.flush()
        return self.reply


def stream_reply(events: Iterator[Any], think: str, out: IO[str]) -> Reply:
    """Write an event stream to the terminal/pipe as it arrives; collect the reply."""
    writer = StreamWriter(think, out)
    consume(events, writer.feed)
    return writer.finish()


def collect_reply(events: Iterator[Any]) -> Reply:
    writer = StreamWriter("hide", io.StringIO())
    consume(events, writer.feed)
    return writer.reply


def consume(events: Iterator[Any], feed: Callable[[Any], None]) -> None:
    """Feed every event; on Ctrl-C, feed what the engine still held, then raise GenerationInterrupted.

    Ctrl-C lands either inside llama.cpp (the engine raises GenerationInterrupted) or here,
    between tokens; then it is handed to the engine, which stops and reports the same way.
    """
    from edgellm.runtime import GenerationInterrupted  # noqa: PLC0415  (llama_cpp is loaded already)

    try:
        try:
            for event in events:
                feed(event)
        except KeyboardInterrupt:
            throw = getattr(events, "throw", None)
            if throw is None:
                raise
            throw(KeyboardInterrupt())
            raise  # the engine did not turn it into GenerationInterrupted: stop as plain Ctrl-C
    except GenerationInterrupted as stopped:
        for event in stopped.held:  # text the reasoning splitter held (a possible tag)
            feed(event)
        feed(stopped.stats)
        raise


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
    """Generate one reply; returns the exit code. On Ctrl-C what was generated is still written
    (with --json: the partial reply, finish_reason "interrupted"), then GenerationInterrupted rises."""
    from edgellm.runtime import GenerationInterrupted  # noqa: PLC0415

    events = engine.generate(messages_for(prompt, request.system), request.sampling)
    if request.json_output:
        writer = StreamWriter("hide", io.StringIO())
        try:
            consume(events, writer.feed)
        finally:
            ui.print_json(reply_json(writer.reply))
        reply = writer.reply
    else:
        writer = StreamWriter(resolve_think(request.think), sys.stdout)
        try:
            consume(events, writer.feed)
        except GenerationInterrupted:
            writer.finish()
            raise
        reply = writer.finish()
        if sys.stdout.isatty() and not "".join(reply.answer).endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    if request.show_stats and reply.stats is not None:
        ui.print_stats(reply.stats)
    return 0


def run_jsonl(engine: Any, request: RunRequest, lines: str) -> int:
    """One JSON line per non-empty input line, in order; the model stays loaded throughout.
    On Ctrl-C the current line's partial reply is written too, finish_reason "interrupted"."""
    count = 0
    for line in lines.splitlines():
        if not line.strip():
            continue
        prompt = build_prompt(request.prompt, line)
        writer = StreamWriter("hide", io.StringIO())
        try:
            consume(engine.generate(messages_for(prompt, request.system), request.sampling), writer.feed)
        finally:
            sys.stdout.write(json.dumps(reply_json(writer.reply, prompt=line), ensure_ascii=False) + "\n")
            sys.stdout.flush()
        reply = writer.reply
        count += 1
        if request.show_stats and reply.stats is not None:
            ui.print_stats(reply.stats)
    if count == 0:
        raise UsageError("--jsonl reads one prompt per stdin line, and stdin had none")
    return 0
