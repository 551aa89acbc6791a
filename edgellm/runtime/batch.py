"""Continuous batching: several sequences in one llama.cpp context, one llama_decode per step.

Each step builds ONE llama_batch with the next token of every generating sequence and a chunk of
prompt tokens for sequences being admitted (chunked, so a long prompt does not stall the
others), decodes it, and samples each sequence from its own logits row with its own sampler
chain (penalties, grammar, top-k/typical/top-p/min-p, temperature, seed), the chain
llama-cpp-python builds for one sequence. End of generation, max_tokens, the reasoning split
and the grammar are per sequence: edgellm.runtime.reply's ReplyState reads each sampled token,
and the scheduler carries out the actions it returns. A request goes to the free slot whose
cached tokens share the longest prefix with its prompt; only the rest is evaluated
(llama_memory_seq_rm drops the tail), so a chat client's next turn costs its new tokens only.

The scheduler is driven by `run()` in one worker thread (serve); front ends never touch
llama_cpp. Events reach a request through its `emit` callback, from that thread: TextEvent
pieces, then the GenerationStats, then `Finished`; a failure comes as `Finished(error=...)`.

Everything the scheduler asks of llama.cpp goes through `LlamaBackend` (batch, decode, sampler
chains, cache edits, pieces), so tests can run the same slot, queue, stop and cancel logic on
a scripted backend (tests/fake_engine.py) in-process, without a model.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgellm.errors import ContextOverflowError, GenerationError
from edgellm.runtime.native import peak_rss_bytes
from edgellm.runtime.reply import Action, Emit, End, Next, ReplyState, TakeBack, UseGrammar, Write
from edgellm.runtime.types import GenerationStats, Prompt, SamplingParams

# The idle generation loop wakes this often to show it is alive (serve's systemd watchdog).
HEARTBEAT_SECONDS = 1.0
# How long a batch starting from idle waits for requests still being prepared (tokenizing a
# prompt takes milliseconds; a prompt decode, a second or more on a board).
GATHER_SECONDS = 0.05


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


class _Inbox:
    """Requests waiting for a slot, handed over from any thread, and the loop's idle wait: it
    wakes for a request, for stop(), and every HEARTBEAT_SECONDS to show it is alive."""

    def __init__(self) -> None:
        self._requests: deque[SequenceRequest] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        # When the loop last came round (time.monotonic()): a watchdog reads it, so a decode
        # that never returns stops the heartbeat.
        self.heartbeat = time.monotonic()

    def put(self, request: SequenceRequest) -> None:
        with self._wake:
            self._requests.append(request)
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()

    def count(self) -> int:
        with self._wake:
            return sum(1 for r in self._requests if not r.cancelled.is_set())

    def gather(self, coming: Callable[[], int], seconds: float) -> None:
        """Wait up to `seconds` while `coming()` requests are still on their way here."""
        deadline = time.monotonic() + seconds
        with self._wake:
            while not self._stopping and coming() > 0 and (left := deadline - time.monotonic()) > 0:
                self._wake.wait(left)  # put() wakes it

    def wait(self, busy: Callable[[], bool]) -> bool:
        """Sleep while there is nothing to do (no request, `busy()` false); False once stopped."""
        with self._wake:
            while not self._stopping and not self._requests and not busy():
                self.heartbeat = time.monotonic()
                self._wake.wait(HEARTBEAT_SECONDS)
            if self._stopping:
                return False
        self.heartbeat = time.monotonic()
        return True

    def take(self) -> SequenceRequest | None:
        with self._wake:
            return self._requests.popleft() if self._requests else None

    def drop_cancelled(self) -> None:
        with self._wake:
            gone = [r for r in self._requests if r.cancelled.is_set()]
            for request in gone:
                self._requests.remove(request)
        for request in gone:
            request.emit(Finished())

    def fail_all(self, error: BaseException) -> None:
        with self._wake:
            left = list(self._requests)
            self._requests.clear()
        for request in left:
            request.emit(Finished(error))


class _Slot:
    """One sequence of the context: its cached tokens and, while busy, the request it serves."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []  # tokens whose K/V this sequence holds, positions 0..n-1
        self.request: SequenceRequest | None = None
        self.pending: list[int] = []  # prompt tokens still to evaluate
        self.next_token = -1  # sampled, not yet decoded
        self.sampler: Any = None
        self.reply: ReplyState | None = None  # the text state of the request's reply
        self.stats = GenerationStats()
        self.generated = 0  # sampled tokens of the reply
        self.max_tokens = 0
        self.started = 0.0
        self.first_at = 0.0

    @property
    def busy(self) -> bool:
        return self.request is not None

    def begin(self, reply: ReplyState, max_tokens: int, stats: GenerationStats) -> None:
        """The request's counters and clocks, once its tokens are in place."""
        self.reply, self.max_tokens, self.stats = reply, max_tokens, stats
        self.generated = 0
        self.next_token = -1
        self.started = self.first_at = time.perf_counter()

    def final_stats(self, reason: str, reasoning_tokens: int) -> GenerationStats:
        """The request's GenerationStats as it ends (its timings, from begin() on)."""
        stats = self.stats
        ended = time.perf_counter()
        stats.generated_tokens = self.generated
        stats.ttft_s = max(self.first_at - self.started, 0.0)
        stats.prompt_tps = stats.prompt_tokens_evaluated / stats.ttft_s if stats.ttft_s > 0 else 0.0
        stats.gen_tps = (self.generated - 1) / (ended - self.first_at) if self.generated > 1 and ended > self.first_at else 0.0
        stats.peak_rss_bytes = peak_rss_bytes()
        stats.reasoning_tokens = reasoning_tokens
        stats.finish_reason = reason
        stats.context_used = len(self.cached)
        return stats

    def describe(self, now: float) -> dict[str, Any]:
        """This slot for GET /slots (read from another thread: a snapshot, not a lock)."""
        request, generated = self.request, self.generated
        state = "idle" if request is None else "prompt" if self.pending else "generating"
        elapsed = now - self.first_at if request is not None and generated > 1 else 0.0
        return {"id": self.seq_id, "state": state, "cached_tokens": len(self.cached),
                "request": request.id if request is not None else None,
                "generated_tokens": generated if request is not None else 0,
                "tps": round((generated - 1) / elapsed, 2) if elapsed > 0 else 0.0}


class Scheduler:
    """Runs SequenceRequests on `slots` sequences of one Engine's context.

    `engine` supplies the checks (check_prompt, grammar_text, tool_grammar), `model.thinks` and
    `load_s`; `backend` does the llama.cpp work (edgellm.runtime.backend.LlamaBackend over the
    engine's context; tests/fake_engine.py's scripted backend in unit tests).
    """

    def __init__(self, engine: Any, slots: int, backend: Any) -> None:
        if slots < 1 or slots > engine.sequences:
            raise ValueError(f"the engine's context holds {engine.sequences} sequences, not {slots}")
        self.engine, self.backend = engine, backend
        self.n_ctx, self.n_batch = backend.n_ctx, backend.n_batch
        # Each sequence's share of the KV cache: its own stream of cells.
        self.slot_ctx = min(self.n_ctx // slots, backend.n_ctx_seq)
        self.slots = [_Slot(seq_id) for seq_id in range(slots)]
        self._inbox = _Inbox()
        self.backend.clear()
        self.steps = 0
        # Requests the front end accepted but is still preparing (serve's host counts them); run has none.
        self.coming: Callable[[], int] = lambda: 0

    # -- from any thread --

    def submit(self, request: SequenceRequest) -> None:
        self._inbox.put(request)

    def stop(self) -> None:
        self._inbox.stop()

    @property
    def waiting(self) -> int:
        return self._inbox.count()

    @property
    def heartbeat(self) -> float:
        return self._inbox.heartbeat

    @property
    def busy(self) -> int:
        return sum(1 for slot in self.slots if slot.busy)

    def describe(self) -> list[dict[str, Any]]:
        """Each slot's state for GET /slots."""
        now = time.perf_counter()
        return [slot.describe(now) for slot in self.slots]

    def forget(self) -> None:
        """Drop every slot's cache bookkeeping (the context was used directly, or cleared)."""
        self.backend.clear()
        for slot in self.slots:
            slot.cached = []

    def close(self) -> None:
        for slot in self.slots:
            self._free_sampler(slot)
        self.backend.close()

    # -- the loop (one thread) --

    def run(self) -> None:
        """Step until stop(); sleeps while there is nothing to do. Ends every request it holds."""
        def busy() -> bool:
            return any(slot.busy for slot in self.slots)

        try:
            while True:
                if not busy() and not self._inbox.count():
                    self.backend.release_threads()  # idle: only a thread that is decoding keeps compute threads
                if not self._inbox.wait(busy):
                    break
                if not busy():
                    # A batch that starts from idle takes the requests that arrived with this one and
                    # are still being prepared: started a step later, each would wait for the
                    # other's prompt (two clients at once: twice the time to the first token).
                    self._inbox.gather(self.coming, GATHER_SECONDS)
                self.step()
        finally:
            for slot in self.slots:  # an idle one has nothing to end
                self._finish(slot, "length", GenerationError("the server is shutting down"))
            self._inbox.fail_all(GenerationError("the server is shutting down"))

    def step(self) -> bool:
        """Admit, decode one batch, sample. False when there was nothing to do (or it is closed)."""
        if self.backend.closed:
            return False
        self._admit()
        rows = self._fill_batch()
        if not rows:
            return False
        status = self.backend.decode()
        self.steps += 1
        now = time.perf_counter()
        for slot, index in rows:
            if status != 0:  # 1: no room in the KV cache (not expected: slots keep to their share); <0: an error
                self._finish(slot, "stop", GenerationError(f"llama_decode failed (status {status})"))
            elif index is not None:
                self._sample(slot, index, now)
        return True

    def _admit(self) -> None:
        """Cancelled requests leave (their slots, the queue), then waiting ones take the free slots."""
        for slot in self.slots:
            if slot.request is not None and slot.request.cancelled.is_set():
                self._finish(slot, "interrupted")
        self._inbox.drop_cancelled()
        while (free := [slot for slot in self.slots if not slot.busy]) and (request := self._inbox.take()):
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
        tokens, params = request.prompt.tokens, request.params
        reply = _reply_for(self.engine, request, self.slot_ctx)
        keep = min(_common_prefix(slot.cached, tokens), len(tokens) - 1)  # the last one gives the logits
        self.backend.keep_prefix(slot.seq_id, keep)
        slot.cached, slot.pending, slot.request = list(tokens[:keep]), list(tokens[keep:]), request
        if reply.opening:  # a required call with no reasoning before it: its start follows the prompt
            slot.pending += self.backend.tokenize(reply.opening)
        slot.sampler = self.backend.new_sampler(params, reply.grammar)
        room = self.slot_ctx - len(slot.cached) - len(slot.pending)
        slot.begin(reply, min(params.max_tokens, room) if params.max_tokens else room, GenerationStats(
            prompt_tokens=len(tokens), prompt_tokens_evaluated=len(slot.pending), load_s=self.engine.load_s, n_ctx=self.slot_ctx))

    def _fill_batch(self) -> list[tuple[_Slot, int | None]]:
        """Next tokens of generating slots first, then prompt chunks; (slot, logits row or None)."""
        put = self.backend.put
        rows: list[tuple[_Slot, int | None]] = []
        for slot in self.slots:
            if slot.busy and not slot.pending and slot.next_token >= 0:
                rows.append((slot, put(slot.next_token, len(slot.cached), slot.seq_id, True)))
                slot.cached.append(slot.next_token)
                slot.next_token = -1
        n = len(rows)
        for slot in self.slots:
            if not slot.busy or not slot.pending or n >= self.n_batch:
                continue
            take = slot.pending[: self.n_batch - n]
            del slot.pending[: len(take)]
            n += len(take)
            row = -1
            for index, token in enumerate(take):
                row = put(token, len(slot.cached), slot.seq_id, not slot.pending and index == len(take) - 1)
                slot.cached.append(token)
            rows.append((slot, row if not slot.pending else None))
        return rows

    def _sample(self, slot: _Slot, index: int, now: float) -> None:
        reply = slot.reply
        assert reply is not None
        token = self.backend.sample(slot.sampler, index)
        if slot.generated == 0:
            slot.first_at = now
        if reply.stops_at_eog and self.backend.is_eog(token):
            self._carry_out(slot, reply.end_of_generation())
            return
        slot.generated += 1
        self._carry_out(slot, reply.feed(token, self.backend.piece(token), generated=slot.generated,
                                         max_tokens=slot.max_tokens, context_left=self.slot_ctx - len(slot.cached)))

    def _carry_out(self, slot: _Slot, actions: list[Action]) -> None:
        """What the reply asks for, in its order (edgellm.runtime.reply lists the actions)."""
        request = slot.request
        assert request is not None
        for action in actions:
            match action:
                case Emit(event):
                    request.emit(event)
                case Next(token):
                    slot.next_token = token
                case End(reason):
                    self._finish(slot, reason)
                case TakeBack(count):
                    if count > 1:  # the newest was sampled, not decoded: it is not in the cache yet
                        del slot.cached[len(slot.cached) - (count - 1):]
                        self.backend.keep_prefix(slot.seq_id, len(slot.cached))
                    slot.generated -= count
                case UseGrammar(grammar):
                    self._free_sampler(slot)
                    slot.sampler = self.backend.new_sampler(request.params, grammar)
                case Write(tokens, text):
                    # Evaluated, not sampled (context, not max_tokens); nothing to write: see _last_again.
                    slot.pending = [*tokens, *(self.backend.tokenize(text) if text else [])] or _last_again(slot, self.backend)
                    slot.next_token = -1
                    if len(slot.cached) + len(slot.pending) + 1 >= self.slot_ctx or slot.generated >= slot.max_tokens:
                        self._finish(slot, "length")

    def _finish(self, slot: _Slot, reason: str, error: BaseException | None = None) -> None:
        request, reply = slot.request, slot.reply
        slot.request, slot.pending, slot.reply = None, [], None
        self._free_sampler(slot)
        if request is None or reply is None:
            return
        if error is not None:
            self.backend.keep_prefix(slot.seq_id, 0)  # its cache may be half written
            slot.cached = []
            request.emit(Finished(error))
            return
        held = reply.finish()  # what the reply still held is its end (it may complete a stop sequence)
        for event in [*held, slot.final_stats(reply.finish_reason(reason), reply.reasoning_tokens), Finished()]:
            request.emit(event)

    def _free_sampler(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            self.backend.free_sampler(slot.sampler)
            slot.sampler = None


def _last_again(slot: _Slot, backend: Any) -> list[int]:
    """The slot's last cached token, out of its cache, to be evaluated again: when an answer grammar
    took over at the first token there is nothing to write, and the new sampler draws it anew."""
    token = slot.cached.pop()
    backend.keep_prefix(slot.seq_id, len(slot.cached))
    return [token]


def _reply_for(engine: Any, request: SequenceRequest, slot_ctx: int) -> ReplyState:
    """The request's checks (a failure is the request's, not the loop's) and its reply's state."""
    tokens, params = request.prompt.tokens, request.params
    engine.check_prompt(tokens)
    if len(tokens) >= slot_ctx:
        raise ContextOverflowError(f"the prompt is {len(tokens)} tokens but a slot holds {slot_ctx}",
                                   hint="shorten the input, or serve with fewer --parallel slots or a larger --ctx")
    grammar = engine.grammar_text(params)
    use = params.tool_use
    tool_grammar = engine.tool_grammar(use) if use is not None and use.active else None
    return ReplyState(request.prompt, params, thinks=engine.model.thinks, grammar=grammar, tool_grammar=tool_grammar)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
