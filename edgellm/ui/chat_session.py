"""`edgellm chat`: the interactive REPL.

On a terminal, input goes through prompt_toolkit (line editing, arrow-key history, bracketed
paste); otherwise one line is one turn and replies are plain text, so scripts and tests can drive
it. Answers go to stdout; reasoning, status lines and command output go to stderr.

The engine keeps the KV cache of the previous turn, so each turn only evaluates the tokens after
the longest common prefix (llama-cpp-python's prefix matching); this module just has to keep the
history's text stable from turn to turn (it never rewrites earlier messages).
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from edgellm import ui
from edgellm.device.heat import cpu_temperature
from edgellm.device.sysfs import format_cpu_list
from edgellm.errors import EdgeLLMError, UsageError
from edgellm.files import read_regular_file
from edgellm.runtime.protocol import GenerationEngine
from edgellm.runtime.response import Response
from edgellm.runtime.types import Event, GenerationStats, SamplingParams
from edgellm.text.history import fewest_to_drop, history_room, turn_starts
from edgellm.text.jsondepth import max_depth
from edgellm.text.reasoning import ANSWER

PROMPT = ">>> "
CONTINUATION_PROMPT = "... "
BLOCK_QUOTE = '"""'
TRANSCRIPT_FORMAT = "edgellm-chat"
TRANSCRIPT_VERSION = 1
NO_LIMIT_WORDS = ("none", "off", "default", "random")
MAX_TRANSCRIPT_BYTES = 64 * 1024**2  # a context's worth of text is well under 1 MiB
MAX_TRANSCRIPT_DEPTH = 16  # a transcript nests 3 deep (the file, its messages, a message)

COMMAND_HELP: dict[str, str] = {
    "/help": "show this help",
    "/system [TEXT]": "set the system prompt (alone: show it)",
    "/clear": "forget the conversation (the system prompt stays)",
    "/save FILE": "write the conversation to a JSON transcript",
    "/load FILE": "replace the conversation with a saved transcript",
    "/stats": "details of the last reply, the context and the settings",
    "/think [show|stderr|hide|off|on|budget N]": "where the reasoning goes (inline, dimmed on stderr, hidden); off skips it, "
                                                  "on lets the model reason, budget N ends it after N tokens",
    "/set temp|top_p|max_tokens|seed VALUE": "change sampling (alone: show the values)",
    "/exit": "leave (also /bye, Ctrl-D)",
}
COMMAND_NAMES = [usage.split()[0] for usage in COMMAND_HELP]
ALIASES = {"/?": "/help", "/bye": "/exit", "/quit": "/exit", "/q": "/exit"}


class TranscriptError(EdgeLLMError):
    """A chat transcript file that cannot be read or is not in the expected shape."""


# --- conversation --------------------------------------------------------------------------------


@dataclass
class Conversation:
    """The system prompt and the user/assistant messages, as the chat template will see them.

    Assistant messages may carry a "reasoning" key: saved in transcripts, never sent back to the
    model (R1's template drops earlier reasoning too) and never mixed into "content".
    """

    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def for_model(self, user_text: str | None = None) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.extend({"role": m["role"], "content": m["content"]} for m in self.messages)
        if user_text is not None:
            out.append({"role": "user", "content": user_text})
        return out

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "user")

    def to_json(self, model_name: str = "") -> dict[str, Any]:
        return {
            "format": TRANSCRIPT_FORMAT,
            "version": TRANSCRIPT_VERSION,
            "model": model_name,
            "system": self.system,
            "messages": self.messages,
        }


def conversation_from_json(data: Any, source: str) -> Conversation:
    """An edgellm transcript, or a bare OpenAI-style list of {role, content} messages."""
    if isinstance(data, dict):
        if data.get("format", TRANSCRIPT_FORMAT) != TRANSCRIPT_FORMAT:
            raise TranscriptError(f"{source}: not an edgellm chat transcript (format {data.get('format')!r})")
        system = data.get("system")
        raw_messages = data.get("messages")
    else:
        system, raw_messages = None, data
    if system is not None and not isinstance(system, str):
        raise TranscriptError(f"{source}: 'system' must be text")
    if not isinstance(raw_messages, list):
        raise TranscriptError(f"{source}: expected a 'messages' list", hint="save one with /save FILE inside edgellm chat")
    messages: list[dict[str, str]] = []
    for index, raw in enumerate(raw_messages):
        role = raw.get("role") if isinstance(raw, dict) else None
        content = raw.get("content") if isinstance(raw, dict) else None
        if role == "system" and index == 0 and isinstance(content, str) and system is None:
            system = content
            continue
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise TranscriptError(f"{source}: message {index + 1} needs a role of user or assistant and text content")
        message = {"role": role, "content": content}
        reasoning = raw.get("reasoning")
        if role == "assistant" and isinstance(reasoning, str) and reasoning:
            message["reasoning"] = reasoning
        messages.append(message)
    return Conversation(system=system or None, messages=messages)


def load_transcript(path: Path) -> Conversation:
    try:
        data = read_regular_file(path.expanduser(), MAX_TRANSCRIPT_BYTES + 1)
        if len(data) > MAX_TRANSCRIPT_BYTES:
            raise TranscriptError(f"{path}: larger than {MAX_TRANSCRIPT_BYTES // 1024**2} MiB; not a chat transcript")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TranscriptError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if max_depth(text) > MAX_TRANSCRIPT_DEPTH:  # json.loads would recurse until a RecursionError
        raise TranscriptError(f"{path}: nests more than {MAX_TRANSCRIPT_DEPTH} levels deep; not a chat transcript")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return conversation_from_json(data, str(path))


def save_transcript(conversation: Conversation, path: Path, model_name: str) -> None:
    target = path.expanduser()
    try:
        target.write_text(json.dumps(conversation.to_json(model_name), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise TranscriptError(f"{path}: cannot write: {exc.strerror or exc}") from None


def fit_to_context(
    conversation: Conversation, user_text: str, count_tokens: Callable[[list[dict[str, str]]], int], limit: int
) -> tuple[int, int]:
    """Drop the oldest turns until the prompt with `user_text` is at most `limit` tokens.

    Returns (turns dropped, prompt tokens). Leaves `conversation` untouched and raises when even
    the system prompt plus the new message alone are too long.
    """
    messages = conversation.messages
    starts = turn_starts(messages) + [len(messages)] if messages else [0]  # the last: no history at all
    counted: dict[int, int] = {}

    def tokens_from(cut: int) -> int:
        if cut not in counted:
            counted[cut] = count_tokens(Conversation(conversation.system, messages[cut:]).for_model(user_text))
        return counted[cut]

    dropped = fewest_to_drop(starts, lambda cut: tokens_from(cut) <= limit)
    tokens = tokens_from(starts[dropped])
    if tokens > limit:
        raise UsageError(
            f"this message is too long: with the system prompt it takes {tokens} tokens, and the context "
            f"leaves {limit} after room for the reply",
            hint="send a shorter message, or restart with a larger --ctx (or /set max_tokens lower)",
        )
    conversation.messages[:] = messages[starts[dropped]:]
    return dropped, tokens


# --- input ---------------------------------------------------------------------------------------


class LineReader(Protocol):
    def read(self, continuation: bool = False) -> str:
        """One line without its newline; EOFError at the end, KeyboardInterrupt on Ctrl-C."""
        ...


class PlainReader:
    """stdin line by line: for pipes, files and terminals without prompt_toolkit.

    Lines are read as bytes and decoded here, so a line that is not UTF-8 is one warning (its
    bad bytes become U+FFFD, as `run` does) instead of an error that ends the script.
    """

    def __init__(self, stream: IO[str], show_prompt: bool) -> None:
        self.stream = stream
        self.binary: IO[bytes] | None = getattr(stream, "buffer", None)
        self.show_prompt = show_prompt
        self.line_number = 0

    def read(self, continuation: bool = False) -> str:
        if self.show_prompt:
            sys.stderr.write(CONTINUATION_PROMPT if continuation else PROMPT)
            sys.stderr.flush()
        self.line_number += 1
        if self.binary is None:
            line = self.stream.readline()
        else:
            raw = self.binary.readline()
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                ui.warn(f"stdin line {self.line_number} is not valid UTF-8: undecodable bytes were replaced with U+FFFD")
        if not line:
            raise EOFError
        return line.rstrip("\r\n")


class TerminalReader:
    """prompt_toolkit input: editing keys, arrow-key history kept across sessions, pasted blocks."""

    def __init__(self, history_file: Path | None) -> None:
        from prompt_toolkit import PromptSession  # noqa: PLC0415  (only on a terminal)
        from prompt_toolkit.history import FileHistory, History, InMemoryHistory  # noqa: PLC0415
        from prompt_toolkit.key_binding import KeyBindings  # noqa: PLC0415

        history: History = InMemoryHistory()
        if history_file is not None:
            try:
                history_file.parent.mkdir(parents=True, exist_ok=True)
                history_file.touch(exist_ok=True)
                history = FileHistory(str(history_file))
            except OSError:
                pass
        bindings = KeyBindings()

        @bindings.add("c-c")
        def _interrupt(event: Any) -> None:
            # Ctrl-C with text clears the line (as in Ollama); on an empty line it means "leave".
            buffer = event.current_buffer
            if buffer.text:
                buffer.reset()
            else:
                event.app.exit(exception=KeyboardInterrupt())

        self.session: Any = PromptSession(history=history, key_bindings=bindings, enable_suspend=True)

        self.prefill = ""  # keys typed while the last reply streamed

    def read(self, continuation: bool = False) -> str:
        default, self.prefill = self.prefill, ""
        return str(self.session.prompt(CONTINUATION_PROMPT if continuation else PROMPT, default=default))


class ReplyKeys:
    """While a reply streams on a terminal, Ctrl-D stops it, as Ctrl-D at the prompt leaves.

    The terminal is switched to non-canonical mode without echo, signals kept (Ctrl-C still
    interrupts); a thread watches stdin, and on Ctrl-D sends this process SIGINT, which the
    reply's existing interrupt path handles (partial reply kept). Other keys typed meanwhile are
    kept for the next prompt instead of being lost. Does nothing when stdin is not a terminal.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.eof = False
        self.typed = b""
        self._saved: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ReplyKeys:  # noqa: PYI034  (typing.Self needs Python 3.11; 3.10 is supported)
        if not self.enabled:
            return self
        try:
            import termios  # noqa: PLC0415  (POSIX only)

            fd = sys.stdin.fileno()
            self._saved = termios.tcgetattr(fd)
            quiet = termios.tcgetattr(fd)
            quiet[3] &= ~(termios.ICANON | termios.ECHO)
            termios.tcsetattr(fd, termios.TCSANOW, quiet)
        except (ImportError, OSError, ValueError):
            self._saved = None
            return self
        self._thread = threading.Thread(target=self._watch, args=(fd,), daemon=True, name="edgellm-keys")
        self._thread.start()
        return self

    def _watch(self, fd: int) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
                data = os.read(fd, 1024) if ready else b""
            except OSError:
                return
            if b"\x04" in data:
                self.typed += data[: data.index(b"\x04")]
                self.eof = True
                os.kill(os.getpid(), signal.SIGINT)
                return
            self.typed += data

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._saved is not None:
            import termios  # noqa: PLC0415

            try:
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSANOW, self._saved)
            except (OSError, ValueError):
                pass

    def typed_text(self) -> str:
        """What was typed, as one line for the next prompt (no newlines or control keys)."""
        text = self.typed.decode("utf-8", "replace")
        return "".join(char for char in text if char.isprintable())


def read_message(reader: LineReader) -> str:
    """One message: a line, or a `\"\"\"` block up to the line that ends with `\"\"\"`."""
    first = reader.read()
    stripped = first.strip()
    if not stripped.startswith(BLOCK_QUOTE):
        return first
    body = stripped[len(BLOCK_QUOTE):]
    if body.endswith(BLOCK_QUOTE) and body:
        return body[: -len(BLOCK_QUOTE)]
    lines = [body] if body else []
    while True:
        try:
            line = reader.read(continuation=True)
        except EOFError:
            break  # Ctrl-D / end of input ends the block: send what was typed
        if line.rstrip().endswith(BLOCK_QUOTE):
            last = line.rstrip()[: -len(BLOCK_QUOTE)]
            if last:
                lines.append(last)
            break
        lines.append(line)
    return "\n".join(lines)


# --- the REPL ------------------------------------------------------------------------------------


@dataclass
class ChatOptions:
    think: str  # a ui.THINK_MODES value: show (inline on stdout), stderr or hide
    interactive: bool  # a person at a terminal: Ctrl-C stops a reply and the session goes on
    sysroot: str = "/"
    history_file: Path | None = None
    # grow(messages): a new Engine whose context holds these messages and their reply when this one
    # cannot (memory and the model's training permitting), None when it is not needed or there is no
    # larger one; raises a ContextOverflowError saying what fits.
    grow: Callable[[list[dict[str, str]]], Any] | None = None


@dataclass
class SessionTotals:
    replies: int = 0
    generated_tokens: int = 0


class ChatSession:
    """The loop: read a message or a command, generate, render, keep the history."""

    def __init__(
        self, engine: GenerationEngine, conversation: Conversation, sampling: SamplingParams, options: ChatOptions, out: IO[str]
    ) -> None:
        self.engine = engine
        self.conversation = conversation
        self.sampling = sampling
        self.options = options
        self.out = out
        self.last_stats: GenerationStats | None = None
        self.totals = SessionTotals()
        self.model_name = engine.model.name or (engine.model.path.name if engine.model.path else "model")
        self.failures = 0  # turns and commands that ended in an error (a script's exit code says so)
        self.leave = False  # Ctrl-D during a reply: leave once it has stopped
        self.typed_ahead = ""  # keys typed while a reply streamed, for the next prompt
        self.stopped_by_ctrl_d = False  # the last reply was stopped by Ctrl-D rather than Ctrl-C

    # loop --------------------------------------------------------------------------------------

    def run(self, reader: LineReader) -> None:
        interrupt_armed = False
        while True:
            if self.typed_ahead and isinstance(reader, TerminalReader):
                reader.prefill, self.typed_ahead = self.typed_ahead, ""
            try:
                text = read_message(reader)
            except EOFError:
                if self.options.interactive:
                    sys.stderr.write("\n")
                return
            except KeyboardInterrupt:
                if not self.options.interactive:
                    raise  # a script's Ctrl-C stops the script (the CLI exits 130)
                if interrupt_armed:
                    return
                # Asked once: a second Ctrl-C meant for a reply that just ended should not end the session.
                ui.info("(press Ctrl-C again to exit, or Ctrl-D, or /exit)")
                interrupt_armed = True
                continue
            interrupt_armed = False
            if not text.strip():
                continue
            if text.lstrip().startswith("/"):
                if not self.command(text.strip()):
                    return
                continue
            try:
                self.turn(text)
            except KeyboardInterrupt:
                if not self.options.interactive:
                    raise  # a script's Ctrl-C stops the script (the CLI exits 130)
                sys.stderr.write("\n")
                ui.info("interrupted")
            if self.leave:
                return

    # commands ----------------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        name, _, argument = line.partition(" ")
        name = ALIASES.get(name.lower(), name.lower())
        argument = argument.strip()
        try:
            if name == "/exit":
                return False
            if name == "/help":
                ui.chat_help(COMMAND_HELP)
            elif name == "/system":
                self._system(argument)
            elif name == "/clear":
                self.conversation.messages.clear()
                ui.info("conversation cleared" + (" (the system prompt stays)" if self.conversation.system else ""))
            elif name == "/save":
                self._save(argument)
            elif name == "/load":
                self._load(argument)
            elif name == "/stats":
                self._stats()
            elif name == "/think":
                self._think(argument)
            elif name == "/set":
                self._set(argument)
            else:
                self.failures += 1
                ui.error(f"unknown command {name}; the commands are: {' '.join(COMMAND_NAMES)}", hint="/help")
        except EdgeLLMError as exc:
            self.failures += 1
            ui.error(exc.message, exc.hint)
        return True

    def _system(self, text: str) -> None:
        if not text:
            ui.info(f"system prompt: {self.conversation.system}" if self.conversation.system else "no system prompt; set one with /system TEXT")
            return
        self.conversation.system = text
        ui.info("system prompt set")

    def _save(self, argument: str) -> None:
        if not argument:
            raise UsageError("/save needs a file name", hint="/save chat.json")
        save_transcript(self.conversation, Path(argument), self.model_name)
        ui.info(f"saved {len(self.conversation.messages)} messages to {argument}")

    def _load(self, argument: str) -> None:
        if not argument:
            raise UsageError("/load needs a file name", hint="/load chat.json")
        loaded = load_transcript(Path(argument))
        self.conversation.system = loaded.system
        self.conversation.messages[:] = loaded.messages
        ui.info(f"loaded {len(loaded.messages)} messages ({loaded.turns} turns) from {argument}")

    def _think(self, argument: str) -> None:
        choice, _, value = argument.lower().partition(" ")
        sampling = self.sampling
        if not choice:
            ui.info(f"reasoning is {self._shown_where()}, {self._thinking_summary()}; "
                    "change it with /think show|stderr|hide|off|on|budget N")
            return
        if choice in ui.THINK_MODES:
            self.options.think = choice
            ui.info(f"reasoning will be {self._shown_where()}")
            return
        if choice == "off":
            sampling.no_think = True
        elif choice == "on":
            sampling.no_think = False
        elif choice == "budget":
            budget = None if value.strip() in NO_LIMIT_WORDS else _number(value.strip(), "/think budget", int, 0, None)
            sampling.no_think = budget == 0
            sampling.think_budget = budget or None
        else:
            raise UsageError(f"/think takes show, stderr, hide, off, on or budget N, not '{argument}'")
        ui.info(f"reasoning: {self._thinking_summary()}")

    def _shown_where(self) -> str:
        return {"show": "shown inline", "stderr": "shown on stderr", "hide": "hidden"}[self.options.think]

    def _thinking_summary(self) -> str:
        sampling = self.sampling
        if sampling.no_think:
            return "off (the answer starts at once)"
        if sampling.think_budget is not None:
            return f"at most {sampling.think_budget} tokens"
        return "on, no budget (the model decides how long)"

    def _set(self, argument: str) -> None:
        key, _, value = argument.partition(" ")
        key, value = key.lower().replace("-", "_"), value.strip()
        if not key:
            ui.info(self._sampling_summary())
            return
        if not value:
            raise UsageError(f"/set {key} needs a value", hint="/set temp 0.7")
        if key in ("temp", "temperature"):
            self.sampling.temperature = _number(value, key, float, 0.0, None)
        elif key == "top_p":
            self.sampling.top_p = _number(value, key, float, 0.0, 1.0)
        elif key == "max_tokens":
            self.sampling.max_tokens = None if value.lower() in NO_LIMIT_WORDS else _number(value, key, int, 1, None)
        elif key == "seed":
            self.sampling.seed = None if value.lower() in NO_LIMIT_WORDS else _number(value, key, int, None, None)
        else:
            raise UsageError(f"/set cannot change '{key}'; it changes: temp, top_p, max_tokens, seed")
        ui.info(self._sampling_summary())

    def _sampling_summary(self) -> str:
        s = self.sampling
        return (f"temp {s.temperature:g}, top_p {s.top_p:g}, max_tokens {s.max_tokens or 'none'}, "
                f"seed {s.seed if s.seed is not None else 'random'}")

    def _stats(self) -> None:
        engine, plan = self.engine, self.engine.plan
        rows = [
            ("model", f"{self.model_name} ({engine.model.quant})" + (f", {engine.model.path}" if engine.model.path else "")),
            ("context", f"{engine.tokens_in_context} / {engine.n_ctx} tokens in the KV cache ({plan.kv_type})"),
            ("history", f"{self.conversation.turns} turns, {len(self.conversation.messages)} messages, "
                        f"system prompt {'set' if self.conversation.system else 'none'}"),
            ("threads", f"{plan.threads} generation, {plan.threads_batch} prompt, cores {format_cpu_list(plan.cores)}"),
            ("sampling", self._sampling_summary()),
            ("reasoning", f"{self._shown_where()}, {self._thinking_summary()}"),
            ("session", f"{self.totals.replies} replies, {self.totals.generated_tokens} tokens generated, "
                        f"model load {engine.load_s:.2f}s"),
        ]
        if self.last_stats is not None:
            rows.insert(2, ("last reply", ui.chat_status_line(self.last_stats, cpu_temperature(self.options.sysroot))))
        ui.chat_table(rows)

    # a turn ------------------------------------------------------------------------------------

    def turn(self, user_text: str) -> None:
        try:
            self._make_room_for(user_text)
            engine = self.engine
            limit = engine.n_ctx - history_room(engine.n_ctx, self.sampling.max_tokens)
            before = self.conversation.turns
            dropped, _ = fit_to_context(self.conversation, user_text, self._count_tokens, limit)
            if dropped:
                ui.info(f"context full: dropped the oldest {_plural(dropped, 'turn')} of {before} "
                        f"(the system prompt stays)")
            self.conversation.messages.append({"role": "user", "content": user_text})
            events = engine.generate(self.conversation.for_model(), self.sampling)
            reply = self._stream(events)
        except EdgeLLMError as exc:
            self._forget_unanswered(user_text)
            self.failures += 1
            ui.error(exc.message, exc.hint)
            return
        except KeyboardInterrupt:
            # Ctrl-C before the reply started (tokenizing a long history): as if never sent.
            self._forget_unanswered(user_text)
            raise
        self._remember(reply)

    def _make_room_for(self, user_text: str) -> None:
        """A message that does not fit the context even alone (a long paste): reload the model with
        a context sized to it, as `run` sizes it to its input; the history is evaluated again."""
        if self.options.grow is None:
            return
        bigger = self.options.grow(Conversation(self.conversation.system, []).for_model(user_text))
        if bigger is not None:
            self.engine = bigger

    def _forget_unanswered(self, user_text: str) -> None:
        messages = self.conversation.messages
        if messages and messages[-1] == {"role": "user", "content": user_text}:
            messages.pop()

    def _count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.engine.tokenize(self.engine.format_messages(messages)))

    def _stream(self, events: Iterator[Event]) -> Response:
        keys = ReplyKeys(enabled=self.options.interactive and sys.stdin.isatty())
        try:
            with keys:
                response = Response(events)
                render = ui.ReplyRenderer(self.out, self.options.think, terminal=self.options.interactive)
                # Ctrl-C (or Ctrl-D, which ReplyKeys turns into SIGINT) stops the reply; what was
                # said stays, as in a real conversation.
                response.finish(lambda event: render.answer(event.text) if event.kind == ANSWER else render.reasoning(event.text))
                render.finish(response.interrupted)
                self.stopped_by_ctrl_d = keys.eof
                return response
        finally:
            self.typed_ahead = keys.typed_text()
            if keys.eof:
                self.leave = True

    def _remember(self, reply: Response) -> None:
        message = {"role": "assistant", "content": reply.answer}
        reasoning = reply.reasoning
        if reasoning:
            message["reasoning"] = reasoning
        # Kept even when interrupted: what was said stays in the history, as in a real conversation.
        self.conversation.messages.append(message)
        if reply.stats is not None:
            self.last_stats = reply.stats
            self.totals.replies += 1
            self.totals.generated_tokens += reply.stats.generated_tokens
        if reply.interrupted and not self.options.interactive:
            raise KeyboardInterrupt  # a script's Ctrl-C stops the script (the CLI exits 130)
        if reply.interrupted:
            how = "stopped by Ctrl-D" if self.stopped_by_ctrl_d else "interrupted"
            ui.info(f"{how}; the partial reply stays in the history")
        if reply.stats is not None:
            ui.chat_status(reply.stats, cpu_temperature(self.options.sysroot))


def _number(value: str, key: str, kind: type, low: float | None, high: float | None) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise UsageError(f"/set {key}: '{value}' is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(number):  # float("nan") and float("inf") parse, and compare false to any bound
        raise UsageError(f"/set {key}: '{value}' is not a finite number")
    if low is not None and (number < low or (high is not None and number > high)):
        bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise UsageError(f"/set {key} must be {bounds}")
    return number


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def run_chat(engine: GenerationEngine, conversation: Conversation, sampling: SamplingParams, options: ChatOptions) -> int:
    """Run the REPL until /exit, Ctrl-D or end of input; returns how many turns or commands failed."""
    session = ChatSession(engine, conversation, sampling, options, sys.stdout)
    reader: LineReader
    if options.interactive and sys.stdout.isatty():
        reader = TerminalReader(options.history_file)
    else:
        reader = PlainReader(sys.stdin, show_prompt=options.interactive)
    if options.interactive:
        ui.chat_banner(session.model_name, engine.model.quant, engine.n_ctx, engine.plan.threads,
                       format_cpu_list(engine.plan.cores), engine.plan.profile, conversation.turns)
    session.run(reader)
    return session.failures
