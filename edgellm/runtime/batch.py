"""Continuous batching: several sequences in one llama.cpp context, one llama_decode per step.

Each step builds ONE llama_batch with the next token of every generating sequence and a chunk of
prompt tokens for sequences being admitted (chunked, so a long prompt does not stall the
others), decodes it, and samples each sequence from its own logits row with its own sampler
chain (penalties, grammar, top-k/typical/top-p/min-p, temperature, seed), the chain
llama-cpp-python builds for one sequence. End of generation, max_tokens, the reasoning split
and the grammar are per sequence. A request goes to the free slot whose cached tokens share
the longest prefix with its prompt; only the rest is evaluated (llama_memory_seq_rm drops the
tail), so a chat client's next turn costs its new tokens only.

The scheduler is driven by `run()` in one worker thread (serve); front ends never touch
llama_cpp. Events reach a request through its `emit` callback, from that thread: TextEvent
pieces, then the GenerationStats, then `Finished`; a failure comes as `Finished(error=...)`.

Everything the scheduler asks of llama.cpp goes through `LlamaBackend` (batch, decode, sampler
chains, cache edits, pieces), so tests can run the same slot, queue, stop and cancel logic on
a scripted backend (tests/fake_engine.py) in-process, without a model.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgellm.errors import GenerationError
from edgellm.runtime.native import peak_rss_bytes
from edgellm.runtime.types import GenerationStats, Prompt, SamplingParams, TextEvent
from edgellm.text.grammar import GrammarTextDecoder
from edgellm.text.reasoning import ANSWER, CLOSE_TAG, REASONING, ReasoningSplitter
from edgellm.text.stops import StopFilter
from edgellm.text.toolcalls.parser import ToolCallParser

# Generated tokens remembered with their text, to take back the ones that wrote a tool call's
# opener (the longest opener is a few dozen tokens of text in a vocabulary without it).
RECENT_TOKENS = 64
# With a required call, reasoning ends this many tokens before max_tokens (or the slot's end), so the call fits.
CALL_ROOM_TOKENS = 256
_SAME_SAMPLER = object()  # _write: keep the sequence's sampler chain
# The idle generation loop wakes this often to show it is alive (serve's systemd watchdog).
HEARTBEAT_SECONDS = 1.0


@dataclass
class Finished:
    """The last thing a request receives; `error` is set when it failed."""

    error: BaseException | None = None


@dataclass
class SequenceRequest:
    """One generation asked of the scheduler. `emit` is called from the scheduler's thread."""

    prompt: Prompt
    params: SamplingParams
    emit: Callable[[Any], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)
    id: str = ""  # the front end's name for it (serve: the response id)

    def cancel(self) -> None:
        self.cancelled.set()


class _Slot:
    """One sequence of the context: its cached tokens and, while busy, the request it serves."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []  # tokens whose K/V this sequence holds, positions 0..n-1
        self.request: SequenceRequest | None = None
        self.pending: list[int] = []  # prompt tokens still to evaluate
        self.next_token = -1  # sampled, not yet decoded
        self.sampler: Any = None
        self.decoder: Any = None
        self.splitter: ReasoningSplitter | None = None
        self.stop = StopFilter()
        self.calls: ToolCallParser | None = None  # tool calling: the parser of this reply's calls
        self.tool_grammar: str | None = None  # the call grammar, until the call starts
        self.reason_until = 0  # with a required call: reasoning is closed at this many tokens
        self.think_budget: int | None = None  # reasoning tokens allowed before the engine closes it
        self.answer_grammar: str | None = None  # with a budget, the request's grammar waits for the answer
        self.recent: deque[tuple[int, str]] = deque(maxlen=RECENT_TOKENS)  # generated (token, text), newest last
        self.stats = GenerationStats()
        self.generated = 0
        self.max_tokens = 0
        self.stop_at_eog = True
        self.started = 0.0
        self.first_at = 0.0

    @property
    def busy(self) -> bool:
        return self.request is not None


class Scheduler:
    """Runs SequenceRequests on `slots` sequences of one Engine's context.

    `engine` supplies the checks (check_prompt, grammar_text), `model.thinks` and `load_s`;
    `backend` does the llama.cpp work (edgellm.runtime.backend.LlamaBackend over the engine's
    context; tests/fake_engine.py's scripted backend in unit tests).
    """

    def __init__(self, engine: Any, slots: int, backend: Any) -> None:
        if slots < 1 or slots > engine.sequences:
            raise ValueError(f"the engine's context holds {engine.sequences} sequences, not {slots}")
        self.engine = engine
        self.backend = backend
        self.n_ctx = self.backend.n_ctx
        # Each sequence's share of the KV cache: its own stream of cells.
        self.slot_ctx = min(self.n_ctx // slots, self.backend.n_ctx_seq)
        self.n_batch = self.backend.n_batch
        self.slots = [_Slot(seq_id) for seq_id in range(slots)]
        self._waiting: deque[SequenceRequest] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self.backend.clear()
        self.steps = 0
        # When the loop last came round (time.monotonic()): a watchdog reads it, so a decode
        # that never returns stops the heartbeat. The idle loop beats every HEARTBEAT_SECONDS.
        self.heartbeat = time.monotonic()

    # -- submitting (any thread) --

    def submit(self, request: SequenceRequest) -> None:
        with self._wake:
            self._waiting.append(request)
            self._wake.notify()

    @property
    def waiting(self) -> int:
        with self._wake:
            return sum(1 for r in self._waiting if not r.cancelled.is_set())

    @property
    def busy(self) -> int:
        return sum(1 for slot in self.slots if slot.busy)

    def describe(self) -> list[dict[str, Any]]:
        """Each slot's state for GET /slots (read from another thread: a snapshot, not a lock)."""
        now = time.perf_counter()
        out = []
        for slot in self.slots:
            request = slot.request
            state = "idle" if request is None else "prompt" if slot.pending else "generating"
            elapsed = now - slot.first_at if request is not None and slot.generated > 1 else 0.0
            out.append({
                "id": slot.seq_id, "state": state, "cached_tokens": len(slot.cached),
                "request": request.id if request is not None else None,
                "generated_tokens": slot.generated if request is not None else 0,
                "tps": round((slot.generated - 1) / elapsed, 2) if elapsed > 0 else 0.0,
            })
        return out

    def forget(self) -> None:
        """Drop every slot's cache bookkeeping (the context was used directly, or cleared)."""
        self.backend.clear()
        for slot in self.slots:
            slot.cached = []

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()

    def close(self) -> None:
        for slot in self.slots:
            self._free_sampler(slot)
        self.backend.close()

    # -- the loop (one thread) --

    def run(self) -> None:
        """Step until stop(); sleeps while there is nothing to do. Ends every request it holds."""
        try:
            while True:
                with self._wake:
                    while not self._stopping and not self._waiting and not any(s.busy for s in self.slots):
                        self.heartbeat = time.monotonic()
                        self._wake.wait(HEARTBEAT_SECONDS)
                    if self._stopping:
                        break
                self.heartbeat = time.monotonic()
                self.step()
        finally:
            for slot in self.slots:
                if slot.busy:
                    self._finish(slot, "length", GenerationError("the server is shutting down"))
            with self._wake:
                left = list(self._waiting)
                self._waiting.clear()
            for request in left:
                request.emit(Finished(GenerationError("the server is shutting down")))

    def step(self) -> bool:
        """Admit, decode one batch, sample. False when there was nothing to do (or it is closed)."""
        if self.backend.closed:
            return False
        self._drop_cancelled()
        self._admit()
        rows = self._fill_batch()
        if not rows:
            return False
        status = self.backend.decode()
        self.steps += 1
        if status != 0:
            # 1: no room in the KV cache (should not happen: slots are kept to their share); <0: error.
            error = GenerationError(f"llama_decode failed (status {status})")
            for slot, _ in rows:
                self._finish(slot, "stop", error)
            return True
        now = time.perf_counter()
        for slot, index in rows:
            if index is not None:
                self._sample(slot, index, now)
        return True

    # -- admission --

    def _drop_cancelled(self) -> None:
        for slot in self.slots:
            if slot.request is not None and slot.request.cancelled.is_set():
                self._finish(slot, "interrupted")
        with self._wake:
            gone = [r for r in self._waiting if r.cancelled.is_set()]
            for request in gone:
                self._waiting.remove(request)
        for request in gone:
            request.emit(Finished())

    def _admit(self) -> None:
        while True:
            free = [slot for slot in self.slots if not slot.busy]
            with self._wake:
                if not free or not self._waiting:
                    return
                request = self._waiting.popleft()
            tokens = request.prompt.tokens
            # The free slot that already holds the longest prefix of this prompt.
            slot = max(free, key=lambda s: (_common_prefix(s.cached, tokens), -s.seq_id))
            try:
                self._start(slot, request)
            except BaseException as exc:  # noqa: BLE001  (a bad grammar, a prompt too long for a slot: the request fails, not the loop)
                slot.request = None
                self._free_sampler(slot)
                request.emit(Finished(exc))

    def _start(self, slot: _Slot, request: SequenceRequest) -> None:
        tokens = request.prompt.tokens
        params = request.params
        self.engine.check_prompt(tokens)
        if len(tokens) >= self.slot_ctx:
            from edgellm.errors import ContextOverflowError  # noqa: PLC0415

            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but a slot holds {self.slot_ctx}",
                hint="shorten the input, or serve with fewer --parallel slots or a larger --ctx",
            )
        grammar = self.engine.grammar_text(params)
        keep = min(_common_prefix(slot.cached, tokens), len(tokens) - 1)  # the last one gives the logits
        self.backend.keep_prefix(slot.seq_id, keep)
        slot.cached = list(tokens[:keep])
        slot.pending = list(tokens[keep:])
        slot.request = request
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        split = params.split_reasoning
        slot.splitter = ReasoningSplitter(opened_by_template=request.prompt.opens_think and split,
                                          thinks=self.engine.model.thinks and split and not request.prompt.closes_think)
        slot.stop = StopFilter(params.stop)
        slot.recent.clear()
        use = params.tool_use
        slot.calls = ToolCallParser(use.format, must_call=use.must_call) if use is not None and use.active else None
        tool_grammar = self.engine.tool_grammar(use) if slot.calls is not None and use is not None else None
        if slot.calls is not None and use is not None and use.must_call and slot.splitter.in_answer:
            # No reasoning to wait for: the call starts with the reply, constrained from its first token.
            forced = self.backend.tokenize(use.format.forced_start)
            slot.pending += forced
            grammar, tool_grammar = tool_grammar, None
            slot.calls.start_calls()
        slot.tool_grammar = tool_grammar  # switched on when the call starts
        constrained = grammar is not None
        reasons = not slot.splitter.in_answer
        slot.think_budget = params.think_budget if reasons else None
        slot.answer_grammar = None
        if grammar is not None and params.think_budget is not None and reasons and slot.tool_grammar is None:
            # With a thinking budget the reply reasons first; the grammar applies to the answer.
            slot.answer_grammar, grammar = grammar, None
        slot.sampler = self.backend.new_sampler(params, grammar)
        if grammar is not None:
            slot.decoder = GrammarTextDecoder()
        room = self.slot_ctx - len(slot.cached) - len(slot.pending)
        slot.max_tokens = min(params.max_tokens, room) if params.max_tokens else room
        slot.reason_until = slot.max_tokens - min(CALL_ROOM_TOKENS, slot.max_tokens // 2)
        slot.stop_at_eog = not params.ignore_eos or constrained
        slot.generated = 0
        slot.next_token = -1
        slot.started = slot.first_at = time.perf_counter()
        slot.stats = GenerationStats(prompt_tokens=len(tokens), prompt_tokens_evaluated=len(slot.pending),
                                     load_s=self.engine.load_s, n_ctx=self.slot_ctx)

    # -- one batch --

    def _fill_batch(self) -> list[tuple[_Slot, int | None]]:
        """Next tokens of generating slots first, then prompt chunks; (slot, logits row or None)."""
        put = self.backend.put
        rows: list[tuple[_Slot, int | None]] = []
        n = 0
        for slot in self.slots:
            if slot.busy and not slot.pending and slot.next_token >= 0:
                rows.append((slot, put(slot.next_token, len(slot.cached), slot.seq_id, True)))
                slot.cached.append(slot.next_token)
                slot.next_token = -1
                n += 1
        for slot in self.slots:
            if not slot.busy or not slot.pending or n >= self.n_batch:
                continue
            take = slot.pending[: self.n_batch - n]
            del slot.pending[: len(take)]
            row = -1
            for index, token in enumerate(take):
                last = not slot.pending and index == len(take) - 1
                row = put(token, len(slot.cached), slot.seq_id, last)
                slot.cached.append(token)
            n += len(take)
            rows.append((slot, row if not slot.pending else None))
        return rows

    def _sample(self, slot: _Slot, index: int, now: float) -> None:
        request = slot.request
        assert request is not None and slot.splitter is not None
        token = self.backend.sample(slot.sampler, index)
        if slot.generated == 0:
            slot.first_at = now
        if slot.stop_at_eog and self.backend.is_eog(token):
            if self._call_still_owed(slot):
                # The model would end while still reasoning, but a call is required: the reasoning
                # ends here instead, and the call follows.
                self._end_reasoning(slot, None)
                return
            self._finish(slot, "stop")
            return
        slot.generated += 1
        text = slot.decoder.decode(self.backend.piece(token))
        if slot.calls is not None or slot.answer_grammar is not None:
            slot.recent.append((token, text))
        if text:
            self._emit(slot, slot.splitter.feed(text))
            if slot.stop.stopped:  # a stop sequence: the reply ends here, without its text
                self._finish(slot, "stop")
                return
        if slot.splitter.in_reasoning:
            slot.stats.reasoning_tokens += 1
            if slot.think_budget is not None and slot.stats.reasoning_tokens >= slot.think_budget:
                self._end_reasoning(slot, token, bridge=True)  # the budget is spent: answer now
                return
        if self._call_still_owed(slot) and (slot.generated >= slot.reason_until
                                            or len(slot.cached) + 2 + CALL_ROOM_TOKENS >= self.slot_ctx):
            self._end_reasoning(slot, token)  # keep room for the required call
            return
        if slot.generated >= slot.max_tokens or len(slot.cached) + 1 >= self.slot_ctx:
            self._finish(slot, "length")
            return
        if slot.calls is not None and slot.tool_grammar is not None and self._call_starts(slot):
            self._start_call(slot)
            return
        if slot.answer_grammar is not None and slot.splitter.in_answer:
            self._start_call(slot, answer_grammar=True)  # the model closed its reasoning: the grammar takes the answer
            return
        slot.next_token = token

    # -- reasoning budget, tool calls, answer grammars: the engine writing into a reply --

    def _call_starts(self, slot: _Slot) -> bool:
        """The model wrote an opener (auto), or its reasoning is over and a call is required."""
        request, calls, splitter = slot.request, slot.calls, slot.splitter
        assert request is not None and calls is not None and splitter is not None
        use = request.params.tool_use
        if calls.triggered is not None:
            return True
        return use is not None and use.must_call and splitter.in_answer

    def _call_owed(self, slot: _Slot) -> bool:
        """A call is required and has not started (its grammar is still waiting)."""
        if slot.tool_grammar is None:  # the common case, first: no tools, or the call is under way
            return False
        use = slot.request.params.tool_use if slot.request is not None else None
        return use is not None and use.must_call

    def _call_still_owed(self, slot: _Slot) -> bool:
        """A call is owed and the model is still reasoning."""
        return self._call_owed(slot) and slot.splitter is not None and not slot.splitter.in_answer

    def _end_reasoning(self, slot: _Slot, newest: int | None, *, bridge: bool = False) -> None:
        """Close the reasoning now: write the closing tag (after the bridge line when the budget
        ran out), then what the answer starts with (a required call's opening), and switch on the
        grammar the answer has. `newest`: the token just sampled (None: it was an end of
        generation, dropped); every earlier token stays."""
        request, splitter = slot.request, slot.splitter
        assert request is not None and splitter is not None
        params = request.params
        reasoning, pieces = splitter.close_reasoning()
        self._emit(slot, pieces)
        text = ""
        if reasoning:
            message = params.think_message if bridge else ""
            if message:
                request.emit(TextEvent(REASONING, message))
            text = message + "\n" + CLOSE_TAG + "\n\n"
        grammar: str | None | object = _SAME_SAMPLER
        if self._call_owed(slot):
            assert params.tool_use is not None and slot.calls is not None
            text += params.tool_use.format.forced_start
            grammar, slot.tool_grammar = slot.tool_grammar, None
            slot.calls.start_calls()
        elif slot.answer_grammar is not None:
            grammar, slot.answer_grammar = slot.answer_grammar, None
        written = self.backend.tokenize(text) if text else []
        self._write(slot, ([newest] if newest is not None else []) + written, len(written), grammar)

    def _start_call(self, slot: _Slot, *, answer_grammar: bool = False) -> None:
        """Take back the tokens from the opener on (or everything after </think>), write the format's
        own opening instead and switch the call grammar on: the model continues at the first name.
        `answer_grammar`: no call, the answer began and its grammar starts after </think>.

        The opener may end inside a token, with text after it that the grammar would not allow;
        writing the opening ourselves makes the grammar start at a known place, token-aligned."""
        request, calls = slot.request, slot.calls
        assert request is not None
        recent = list(slot.recent)
        raw = "".join(text for _, text in recent)
        if calls is not None and calls.triggered is not None and not answer_grammar:
            cut = raw.rfind(calls.triggered)
            lead = ""
            if cut < 0:  # not among the remembered tokens (cannot happen: openers are short): keep them all
                cut = len(raw)
        else:
            end_think = raw.rfind(CLOSE_TAG)
            if end_think >= 0:
                cut, lead = end_think + len(CLOSE_TAG), "\n\n"
            else:  # no reasoning in this reply: the call is the whole of it
                cut, lead = (0 if len(recent) == slot.generated else len(raw)), ""
        cut = max(cut, 0)
        # Tokens ending at or before the cut stay; the first one past it is written again up to the cut.
        kept, start, pre = len(recent), 0, ""
        for index, (_, text) in enumerate(recent):
            if start + len(text) > cut:
                kept, pre = index, text[: cut - start]
                break
            start += len(text)
        dropped = len(recent) - kept
        # The newest token was sampled, not decoded: it is not in the cache yet.
        in_cache = max(dropped - 1, 0)
        if in_cache:
            del slot.cached[len(slot.cached) - in_cache:]
            self.backend.keep_prefix(slot.seq_id, len(slot.cached))
        if answer_grammar:
            grammar, slot.answer_grammar = slot.answer_grammar, None
            text = pre + lead
        else:
            assert calls is not None and request.params.tool_use is not None
            grammar, slot.tool_grammar = slot.tool_grammar, None
            text = pre + lead + request.params.tool_use.format.forced_start
            calls.start_calls()
        newest = [recent[-1][0]] if dropped == 0 and recent else []
        written = self.backend.tokenize(text) if text else []
        slot.generated -= dropped
        self._write(slot, newest + written, len(written), grammar)

    def _write(self, slot: _Slot, tokens: list[int], written: int, grammar: str | None | object) -> None:
        """Continue the sequence with `tokens` (evaluated, not sampled; `written` of them are the
        engine's text) and, unless _SAME_SAMPLER, a new sampler chain with `grammar`."""
        request = slot.request
        assert request is not None
        slot.pending = tokens
        slot.next_token = -1  # the engine's text takes context, not the reply's max_tokens (which counts sampled tokens)
        slot.recent.clear()
        if grammar is not _SAME_SAMPLER:
            assert grammar is None or isinstance(grammar, str)
            self._free_sampler(slot)
            slot.sampler = self.backend.new_sampler(request.params, grammar)
            if grammar is not None:
                slot.decoder = GrammarTextDecoder()  # text under a grammar, read as the grammar reads it
        if not tokens:
            self._finish(slot, "stop")
        elif len(slot.cached) + len(tokens) + 1 >= self.slot_ctx or slot.generated >= slot.max_tokens:
            self._finish(slot, "length")

    def _emit(self, slot: _Slot, pieces: list[tuple[str, str]]) -> None:
        """Send split pieces; answer text goes through the stop filter, nothing after a stop."""
        request = slot.request
        assert request is not None
        for kind, chunk in pieces:
            if slot.stop.stopped:
                return
            if kind == ANSWER and slot.calls is not None:
                self._emit_answer(slot, slot.calls.feed(chunk))
                continue
            if kind == ANSWER:
                chunk = slot.stop.feed(chunk)
            if chunk:
                request.emit(TextEvent(kind, chunk))

    def _emit_answer(self, slot: _Slot, events: list[Any]) -> None:
        """Answer text through the tool call parser: content through the stop filter, calls as they are."""
        request = slot.request
        assert request is not None
        for event in events:
            if slot.stop.stopped:
                return
            if isinstance(event, str):
                event = slot.stop.feed(event)
                if event:
                    request.emit(TextEvent(ANSWER, event))
            else:
                request.emit(event)

    def _finish(self, slot: _Slot, reason: str, error: BaseException | None = None) -> None:
        request = slot.request
        if request is not None and error is None and not slot.stop.stopped:
            # What the decoder and the splitter still hold is the reply's end; then what the stop
            # filter held as a possible stop sequence (it was not one, unless this text completed it).
            assert slot.splitter is not None and slot.decoder is not None
            self._emit(slot, slot.splitter.feed(slot.decoder.decode(b"", final=True)) + slot.splitter.finish())
            if slot.calls is not None:
                self._emit_answer(slot, slot.calls.finish())
            rest = slot.stop.flush()
            if rest and not slot.stop.stopped:
                request.emit(TextEvent(ANSWER, rest))
        slot.request = None
        slot.pending = []
        self._free_sampler(slot)
        if request is None:
            return
        if error is not None:
            self.backend.keep_prefix(slot.seq_id, 0)  # its cache may be half written
            slot.cached = []
            request.emit(Finished(error))
            return
        stats = slot.stats
        ended = time.perf_counter()
        stats.generated_tokens = slot.generated
        stats.ttft_s = max(slot.first_at - slot.started, 0.0)
        stats.prompt_tps = stats.prompt_tokens_evaluated / stats.ttft_s if stats.ttft_s > 0 else 0.0
        stats.gen_tps = (slot.generated - 1) / (ended - slot.first_at) if slot.generated > 1 and ended > slot.first_at else 0.0
        stats.peak_rss_bytes = peak_rss_bytes()
        stats.finish_reason = "stop" if slot.stop.stopped else reason
        if slot.calls is not None and slot.calls.all_complete and not slot.stop.stopped:
            stats.finish_reason = "tool_calls"
        stats.context_used = len(slot.cached)
        request.emit(stats)
        request.emit(Finished())

    def _free_sampler(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            self.backend.free_sampler(slot.sampler)
            slot.sampler = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
