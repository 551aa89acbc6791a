"""Batched decoding for `edgellm bench --parallel`: llama.cpp's llama-batched-bench in Python.

For each number of sequences `npl` (llama.cpp's "number of parallel prompts"), on an empty KV cache:

- prompt: `npl` different prompts of `pp` random tokens each (one per sequence, positions 0..pp-1,
  logits only for each sequence's last token), in ONE batch of npl*pp tokens that is decoded in
  n_batch-sized pieces with a single synchronize at the end;
- generation: `tg` steps, each ONE llama_batch holding the next random token of every one of the
  `npl` sequences (position pp+i, logits on), decoded and synchronized.

The caller times the two phases: S_PP = npl*pp / t_pp and S_TG = npl*tg / t_tg (aggregate, all
sequences together), as llama-batched-bench prints them. Random tokens, no BOS and no sampling,
exactly as there: the speed of a decode does not depend on which tokens it holds. The KV cache is
the Engine's (`Engine(..., sequences=N)`: N sequences, in separate KV streams unless the Engine
made them unified; `kv_unified` says which, llama-batched-bench's default being separate).

The batch arrays are owned here (numpy), and each n_batch piece of the prompt is a llama_batch
whose pointers are offsets into them, as llama-batched-bench's `get_sub_batch` views: nothing is
copied between the timed decodes.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from edgellm.errors import GenerationError
from edgellm.runtime.engine import BenchContext, Engine
from edgellm.runtime.rpc import decode_watch

WARMUP_TOKENS = 16  # llama-batched-bench's warm-up: 16 random tokens of sequence 0


class BatchedBench:
    """An Engine's context set up for llama-batched-bench's measurement (see the module docstring)."""

    def __init__(self, engine: Engine, *, max_sequences: int, max_prompt: int) -> None:
        self.base = BenchContext(engine)  # the context, vocabulary size, n_batch and clear()
        self._llama_cpp = self.base._llama_cpp
        self.ctx = self.base.ctx
        self.engine = engine
        self.n_batch = self.base.n_batch
        self.n_ubatch = self.base.n_ubatch
        self.n_vocab = self.base.n_vocab
        self.n_seq_max = int(self._llama_cpp.llama_n_seq_max(self.ctx))
        # llama.h has no getter; llama-cpp-python keeps the parameters the context was made with
        self.kv_unified = bool(getattr(engine.llm.context_params, "kv_unified", False))
        if max_sequences > self.n_seq_max:
            raise GenerationError(f"the context holds {self.n_seq_max} sequences, not {max_sequences}")
        if max_sequences > self.n_batch:
            raise GenerationError(f"{max_sequences} sequences do not fit one batch of {self.n_batch} tokens")
        capacity = max(max_sequences * max_prompt, max_sequences, WARMUP_TOKENS)
        self.capacity = capacity
        self._token = np.zeros(capacity, dtype=np.int32)
        self._pos = np.zeros(capacity, dtype=np.int32)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)
        self._seq = np.zeros(capacity, dtype=np.int32)
        self._logits = np.zeros(capacity, dtype=np.int8)
        # llama_batch.seq_id is one pointer per token, to that token's list of sequence ids: here
        # each points at its own cell of self._seq (every token belongs to exactly one sequence).
        seq_pointer = ctypes.POINTER(ctypes.c_int32)
        seq_base = self._seq.ctypes.data
        self._seq_ptrs = (seq_pointer * capacity)(
            *(ctypes.cast(seq_base + 4 * i, seq_pointer) for i in range(capacity))
        )
        self._rng = np.random.default_rng(0)
        self.warm_up()

    # --- batches ----------------------------------------------------------------------------------

    def _batch(self, start: int, n_tokens: int) -> Any:
        """A llama_batch viewing tokens [start, start + n_tokens) of the arrays (no copy)."""
        llama_cpp = self._llama_cpp
        token_p = ctypes.POINTER(llama_cpp.llama_token)
        pos_p = ctypes.POINTER(llama_cpp.llama_pos)
        int_p = ctypes.POINTER(ctypes.c_int32)
        seq_pp = ctypes.POINTER(ctypes.POINTER(llama_cpp.llama_seq_id))
        logits_p = ctypes.POINTER(ctypes.c_int8)
        return llama_cpp.llama_batch(
            n_tokens=n_tokens,
            token=ctypes.cast(self._token.ctypes.data + 4 * start, token_p),
            embd=None,
            pos=ctypes.cast(self._pos.ctypes.data + 4 * start, pos_p),
            n_seq_id=ctypes.cast(self._n_seq_id.ctypes.data + 4 * start, int_p),
            seq_id=ctypes.cast(ctypes.addressof(self._seq_ptrs) + ctypes.sizeof(ctypes.c_void_p) * start, seq_pp),
            logits=ctypes.cast(self._logits.ctypes.data + start, logits_p),
        )

    def _decode(self, batch: Any, what: str) -> None:
        with decode_watch(int(batch.n_tokens)):
            status = self._llama_cpp.llama_decode(self.ctx, batch)
        if status != 0:
            raise _decode_error(status, what)

    def _random(self, n: int) -> Any:
        return self._rng.integers(0, self.n_vocab, n, dtype=self._token.dtype)

    # --- the measurement ---------------------------------------------------------------------------

    def set_threads(self, threads: int, threads_batch: int) -> None:
        """llama.cpp decodes a one-token batch with `threads` and anything larger with
        `threads_batch`: with 2+ sequences every generation step is a batch."""
        self._llama_cpp.llama_set_n_threads(self.ctx, threads, threads_batch)

    def clear(self) -> None:
        self.base.clear()

    def warm_up(self) -> None:
        """llama-batched-bench's warm-up: WARMUP_TOKENS random tokens of sequence 0, no logits."""
        n = WARMUP_TOKENS
        self._token[:n] = self._random(n)
        self._pos[:n] = range(n)
        self._seq[:n] = 0
        self._logits[:n] = 0
        self.clear()
        self._decode(self._batch(0, n), "the warm-up batch")
        self._llama_cpp.llama_synchronize(self.ctx)
        self.clear()

    def warm_up_step(self, sequences: int) -> None:
        """One untimed generation-shaped step (one token for each of `sequences`), then empty again."""
        self._token[:sequences] = self._random(sequences)
        self._pos[:sequences] = 0
        self._seq[:sequences] = range(sequences)
        self._logits[:sequences] = 1
        self.clear()
        self._decode(self._batch(0, sequences), f"a {sequences}-sequence warm-up step")
        self._llama_cpp.llama_synchronize(self.ctx)
        self.clear()

    def prepare_prompt(self, n_prompt: int, sequences: int) -> None:
        """Fill the arrays with `sequences` different random prompts (untimed, as there)."""
        n = n_prompt * sequences
        if n > self.capacity:
            raise GenerationError(f"{sequences} prompts of {n_prompt} tokens exceed the batch buffer of {self.capacity}")
        self._token[:n] = self._random(n)
        self._pos[:n] = np.tile(np.arange(n_prompt, dtype=np.int32), sequences)
        self._seq[:n] = np.repeat(np.arange(sequences, dtype=np.int32), n_prompt)
        self._logits[:n] = 0
        if n_prompt:
            self._logits[n_prompt - 1:n:n_prompt] = 1  # each sequence's last prompt token

    def prompt(self, n_prompt: int, sequences: int) -> None:
        """Decode what prepare_prompt filled: n_batch pieces, one synchronize at the end (timed)."""
        total = n_prompt * sequences
        for start in range(0, total, self.n_batch):
            n = min(self.n_batch, total - start)
            self._decode(self._batch(start, n), f"a {n}-token prompt batch")
        self._llama_cpp.llama_synchronize(self.ctx)

    def prepare_generation(self, n_gen: int, sequences: int) -> Any:
        """The random tokens of every step (untimed), and the arrays set for one token per sequence."""
        self._seq[:sequences] = range(sequences)
        self._n_seq_id[:sequences] = 1
        self._logits[:sequences] = 1
        return self._random(n_gen * sequences).reshape(n_gen, sequences) if n_gen else None

    def generate(self, upcoming: Any, n_prompt: int, sequences: int) -> None:
        """`len(upcoming)` steps; step i decodes ONE batch with token i of every sequence at
        position n_prompt + i, then synchronizes (timed)."""
        if upcoming is None:
            return
        llama_cpp = self._llama_cpp
        decode, synchronize, ctx = llama_cpp.llama_decode, llama_cpp.llama_synchronize, self.ctx
        batch = self._batch(0, sequences)
        token, pos = self._token, self._pos
        with decode_watch(len(upcoming) * sequences):  # the whole timed loop: nothing added per step
            for i in range(len(upcoming)):
                token[:sequences] = upcoming[i]
                pos[:sequences] = n_prompt + i
                status = decode(ctx, batch)
                if status != 0:
                    raise _decode_error(status, f"generation step {i} of {sequences} sequences")
                synchronize(ctx)


def _decode_error(status: int, what: str) -> GenerationError:
    reason = {1: "no room in the KV cache", 2: "aborted"}.get(status, "llama.cpp refused the batch")
    return GenerationError(f"llama_decode failed on {what} (status {status}: {reason})")
