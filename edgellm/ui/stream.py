"""A reply as it streams: the answer, the reasoning where --think says, the live "thinking…"
line while hidden reasoning runs, and the stats line after it.

One --think vocabulary for `run` and `chat` (THINK_MODES):
- show: the reasoning inline with the answer, between <think> tags, on stdout;
- stderr: the reasoning dimmed on stderr, so stdout holds the answer alone;
- hide: not shown (on a terminal, one live line counts its tokens).
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from rich.text import Text

from edgellm.errors import UsageError
from edgellm.text.reasoning import ANSWER, REASONING
from edgellm.ui.console import dim_escape, stderr
from edgellm.units import format_size

if TYPE_CHECKING:
    from edgellm.runtime.types import TextEvent

THINK_MODES = ("hide", "show", "stderr")


def think_mode(requested: str | None, terminal: bool, option: str = "--think") -> str:
    """The --think value checked; by default stderr when a person watches (`terminal`), else hide."""
    if requested is None:
        return "stderr" if terminal else "hide"
    if requested not in THINK_MODES:
        raise UsageError(f"{option} must be one of {', '.join(THINK_MODES)}, not '{requested}'",
                         hint="show: inline in <think> tags on stdout; stderr: dimmed on stderr; hide: not shown")
    return requested


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
        sys.stderr.write("\r\x1b[K" + dim_escape(f"thinking… {self.tokens} tokens · {now - self.started:.0f} s"))
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


class StreamWriter:
    """Writes text events to the terminal or pipe as they arrive: the answer to `out`, the
    reasoning where --think says (inside <think> tags with show, dimmed on stderr with stderr)."""

    def __init__(self, think: str, out: IO[str]) -> None:
        self.think = think
        self.out = out
        self.in_reasoning = False
        # Hidden reasoning can take minutes: on a terminal, one live line says how far it is.
        self.status = ThinkingStatus() if think == "hide" and sys.stderr.isatty() else None

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
                write_reasoning(event.text)
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

    def end_answer(self, answer: str, calls: list[dict[str, Any]], interrupted: bool) -> None:
        """After the answer: each tool call as one JSON line (for shell agents), and on a terminal
        a final newline so the prompt does not land after the text."""
        out = self.out
        if calls and answer and not answer.endswith("\n"):
            out.write("\n")
        for call in calls:
            out.write(json.dumps(call, ensure_ascii=False) + "\n")
        if not calls and not interrupted and out.isatty() and not answer.endswith("\n"):
            out.write("\n")
        out.flush()


class ReplyRenderer:
    """Writes a chat reply as it streams: the answer to `out`; the reasoning where the think mode
    says (inline in <think> tags on `out`, dimmed on stderr, or hidden behind a live "thinking…" line)."""

    def __init__(self, out: IO[str], think: str, terminal: bool) -> None:
        self.out = out
        self.think = think
        self.terminal = terminal
        self.in_reasoning = False
        self.status: ThinkingStatus | None = None
        self.answer_started = False
        self.last_char = "\n"
        self.last_stream: IO[str] | None = None

    def reasoning(self, text: str) -> None:
        if self.think == "show":
            self.out.write(("" if self.in_reasoning else "<think>\n") + text)
            self.out.flush()
            self.last_stream, self.last_char = self.out, text[-1]
        elif self.think == "stderr":
            write_reasoning(text)
            self.last_stream, self.last_char = sys.stderr, text[-1]
        elif self.terminal:
            # Hidden reasoning can take minutes on a Pi: say that something is happening, and how much.
            if self.status is None:
                self.status = ThinkingStatus()
            self.status.step()
        self.in_reasoning = True

    def answer(self, text: str) -> None:
        if not self.answer_started:
            text = text.lstrip("\n") if self.in_reasoning else text
            if not text:
                return
            self.answer_started = True
            if self.status is not None:
                self.status.clear()
            elif self.in_reasoning and self.think == "show":
                self.out.write(("\n" if self.last_char != "\n" else "") + "</think>\n\n")
            elif self.in_reasoning and self.think == "stderr":
                # A blank line between the dimmed reasoning and the answer.
                sys.stderr.write("\n\n" if self.last_char != "\n" else "\n")
                sys.stderr.flush()
        self.out.write(text)
        self.out.flush()
        self.last_stream, self.last_char = self.out, text[-1]

    def finish(self, interrupted: bool = False) -> None:
        if self.status is not None:
            self.status.clear()
        if interrupted and self.last_stream is None and self.terminal:
            sys.stderr.write("\n")  # after the terminal's ^C echo, before the "interrupted" line
        if self.last_stream is not None and self.last_char != "\n":
            self.last_stream.write("\n")
            self.last_stream.flush()
        if self.in_reasoning and self.think == "show" and not self.answer_started:
            self.out.write("</think>\n")  # reasoning that never reached an answer still closes
            self.out.flush()
        if not self.answer_started and not self.terminal:
            # Plain-text mode keeps one output line per turn, even for an empty answer.
            self.out.write("\n")
            self.out.flush()
