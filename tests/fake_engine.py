"""A scripted engine for in-process tests of the scheduler's logic and of the serve app.

The real Scheduler (edgellm.runtime.batch) runs on a ScriptedBackend instead of llama.cpp, so
slot choice, prefix reuse, chunked prompts, queueing, cancellation, stop sequences, the
reasoning split and the SSE layer are tested exactly as they run, in milliseconds, with the
backend checking every position the scheduler writes. Tokens are characters (id = code point;
0 ends generation). Each reply is scripted: `reply(prompt_text)` says what the model writes, as
a string (one token per character) or a list of strings (one token each, for text that a real
vocabulary splits across tokens in its own places).
The real-GGUF process tests (test_serve*.py) stay the end-to-end layer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from edgellm.errors import ContextOverflowError, EmptyPromptError
from edgellm.runtime.batch import Scheduler
from edgellm.runtime.types import Prompt, SamplingParams
from edgellm.text.grammar import check_grammar
from edgellm.text.toolcalls.formats import GENERIC, ToolFormat, ToolUse
from edgellm.text.toolcalls.spec import ToolChoice

EOG = 0


def encode(text: str) -> list[int]:
    return [ord(char) for char in text]


def decode(tokens: list[int]) -> str:
    return "".join(chr(token) for token in tokens)


@dataclass
class ScriptedSampler:
    params: SamplingParams
    grammar: str | None = None
    script: list[int] | None = None  # set at the first sample, from the prompt the sequence holds
    next: int = 0


MULTI_BASE = 0x110000  # ids above every code point: tokens of several characters


@dataclass
class ScriptedBackend:
    """Stands in for LlamaBackend. `step_seconds` is the time one decode takes; `paused` holds
    decoding (a test opens it when ready), so a test can act between two steps."""

    reply: Callable[[str], str | list[str]]
    n_ctx: int = 4096
    n_batch: int = 64
    n_ctx_seq: int = 4096  # one sequence's share, as llama.cpp reports it
    step_seconds: float = 0.0
    kv: dict[int, list[int]] = field(default_factory=dict)
    decodes: int = 0
    batches: list[list[tuple[int, int]]] = field(default_factory=list)  # per decode: (seq_id, tokens in it)
    prompts: list[str] = field(default_factory=list)  # the prompt each sampler saw, in order
    paused: threading.Event = field(default_factory=threading.Event)
    closed: bool = False
    idle_releases: int = 0  # times the scheduler's thread went idle and let its compute threads go

    def __post_init__(self) -> None:
        self.paused.set()  # set = running
        self._rows: list[tuple[int, int, int, bool]] = []
        self._logits: dict[int, int] = {}  # row -> seq_id, for the last decode
        self._multi: list[str] = []  # text of token MULTI_BASE + i
        self.samplers: list[ScriptedSampler] = []  # every sampler made, in order
    def clear(self) -> None:
        self.kv.clear()

    def release_threads(self) -> None:
        self.idle_releases += 1

    def keep_prefix(self, seq_id: int, keep: int) -> None:
        self.kv[seq_id] = self.kv.get(seq_id, [])[:keep]

    def put(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        cells = self.kv.setdefault(seq_id, [])
        assert pos == len(cells), f"sequence {seq_id}: token at position {pos}, but it holds {len(cells)}"
        assert len(self._rows) < self.n_batch, "more tokens than the batch holds"
        cells.append(token)
        self._rows.append((token, pos, seq_id, logits))
        return len(self._rows) - 1

    def decode(self) -> int:
        self.paused.wait()
        if self.step_seconds:
            time.sleep(self.step_seconds)
        counts: dict[int, int] = {}
        for _, _, seq_id, _ in self._rows:
            counts[seq_id] = counts.get(seq_id, 0) + 1
        self.batches.append(sorted(counts.items()))
        self._logits = {row: seq_id for row, (_, _, seq_id, logits) in enumerate(self._rows) if logits}
        self._rows = []
        self.decodes += 1
        return 0

    def new_sampler(self, params: SamplingParams, grammar: str | None) -> ScriptedSampler:
        sampler = ScriptedSampler(params, grammar)
        self.samplers.append(sampler)
        return sampler

    def token_for(self, text: str) -> int:
        if len(text) == 1:
            return ord(text)
        self._multi.append(text)
        return MULTI_BASE + len(self._multi) - 1

    def tokenize(self, text: str) -> list[int]:
        return encode(text)

    def free_sampler(self, sampler: ScriptedSampler) -> None:
        pass

    def sample(self, sampler: ScriptedSampler, row: int) -> int:
        seq_id = self._logits[row]
        if sampler.script is None:
            prompt = self.text_of(self.kv[seq_id])
            self.prompts.append(prompt)
            reply = self.reply(prompt)
            sampler.script = encode(reply) if isinstance(reply, str) else [self.token_for(piece) for piece in reply]
        if sampler.next >= len(sampler.script):
            return EOG if not sampler.params.ignore_eos else ord(".")
        token = sampler.script[sampler.next]
        sampler.next += 1
        return token

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def piece(self, token: int) -> bytes:
        return self.text_of([token]).encode("utf-8")

    def text_of(self, tokens: list[int]) -> str:
        return "".join(self._multi[t - MULTI_BASE] if t >= MULTI_BASE else chr(t) for t in tokens)

    def close(self) -> None:
        self.closed = True


class FakeEngine:
    """What serve and the scheduler ask of an Engine, over a ScriptedBackend.

    The chat "template" is `role: content` lines ending in `assistant:` (plus `<think>` when
    `template_opens_think`, as the newer R1 templates do)."""

    def __init__(self, reply: Callable[[str], str | list[str]] | str = "Hello there.", *, slots: int = 2, n_ctx: int = 4096,
                 n_batch: int = 64, step_seconds: float = 0.0, thinks: bool = False, template_opens_think: bool = False,
                 fim: bool = False) -> None:
        script = reply if callable(reply) else (lambda _prompt, text=reply: text)
        self.backend = ScriptedBackend(script, n_ctx=n_ctx, n_batch=n_batch, n_ctx_seq=n_ctx // slots, step_seconds=step_seconds)
        self.sequences = slots
        self.n_ctx = n_ctx
        self.load_s = 0.0
        self.max_piece_bytes = 4  # one code point, UTF-8
        # What serve reads of a ModelInfo and a Plan (Ollama's /api/tags, /api/show, /api/ps describe them).
        self.model = SimpleNamespace(thinks=thinks, name="fake", arch="fake", n_params=1234, quant="F32", file_size=4096,
                                     path=None, chat_template="{{ messages }}", context_length=n_ctx, n_layers=1, n_embd=8,
                                     n_ff=16, n_head=1, n_head_kv=1, head_dim_k=8, head_dim_v=8, n_vocab=0x110000)
        self.plan = SimpleNamespace(total_bytes=1 << 20)
        # Fill in the middle (Ollama's generate with a suffix): markers as text, when `fim`.
        self.fim_tokens: tuple[int, int, int] | None = (1, 2, 3) if fim else None
        self.tool_format: ToolFormat = GENERIC  # the Hermes layout, as a template without tool support gets
        self.template_opens_think = template_opens_think
        self.scheduler = Scheduler(self, slots, backend=self.backend)

    def format_messages(self, messages: list[dict[str, Any]], *, tool_use: ToolUse | None = None,
                        template_kwargs: dict[str, Any] | None = None) -> str:
        active = tool_use is not None and tool_use.active
        if active or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):  # as Engine does
            fmt = tool_use.format if tool_use is not None else self.tool_format
            messages = fmt.template_messages(messages, tool_use.tools if active and tool_use else [],
                                             tool_use.choice if active and tool_use else ToolChoice("none"))
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return text + "<think>" if self.template_opens_think else text

    def prompt_from_messages(self, messages: list[dict[str, Any]], *, check: bool = True, tool_use: ToolUse | None = None,
                             template_kwargs: dict[str, Any] | None = None, no_think: bool = False) -> Prompt:
        text = self.format_messages(messages, tool_use=tool_use)
        if no_think and self.model.thinks:
            from edgellm.runtime.engine import without_thinking

            text = without_thinking(text)
        return self.prompt_from_text(text, check=check)

    def tool_grammar(self, use: ToolUse) -> str:
        use.grammar = f"call grammar for {len(use.tools)} tools"  # the scripted model writes valid calls itself
        return use.grammar

    def prompt_from_text(self, text: str, *, check: bool = True) -> Prompt:
        tokens = encode(text)
        if check:
            self.check_prompt(tokens)
        return Prompt(tokens, text.endswith("<think>"), text.rstrip().endswith("</think>"))

    def fim_prompt(self, prefix: str, suffix: str, *, check: bool = True) -> Prompt:
        return self.prompt_from_text(f"<PRE>{prefix}<SUF>{suffix}<MID>", check=check)

    def check_prompt(self, tokens: list[int]) -> None:
        if not tokens:
            raise EmptyPromptError("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx} (n_ctx)")

    def grammar_text(self, params: SamplingParams) -> str | None:
        if params.grammar:
            check_grammar(params.grammar)  # the same refusals as the real engine, before any slot
            return params.grammar
        return None

    def close(self) -> None:
        self.scheduler.close()


def run_until_idle(scheduler: Scheduler, limit: int = 10_000) -> int:
    """Step a scheduler in this thread until nothing is left; returns the steps taken."""
    steps = 0
    while scheduler.step():
        steps += 1
        assert steps < limit, "the scheduler never went idle"
    return steps


def collect(events: list[Any]) -> Any:
    """A Response over events a request received (TextEvents, stats; Finished ignored)."""
    from edgellm.runtime.response import Response

    response = Response()
    for event in events:
        response.add(event)
    return response
