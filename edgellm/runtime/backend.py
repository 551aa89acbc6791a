"""The llama.cpp side of the batch scheduler (edgellm.runtime.batch): one context, its llama_batch,
per-sequence sampler chains, KV cache edits and token pieces."""

from __future__ import annotations

import random
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from types import ModuleType
from typing import Any

from edgellm.errors import GenerationError
from edgellm.runtime.native import release_compute_threads
from edgellm.runtime.rpc import decode_watch
from edgellm.runtime.types import SamplingParams


class LlamaBackend:
    """The llama.cpp side of the scheduler: one context, its llama_batch, per-sequence sampler
    chains, KV cache edits and token pieces. Nothing else in the scheduler calls llama_cpp."""

    def __init__(self, llama_cpp: ModuleType, llm: Any, piece: Callable[[int, bool], bytes], shown_tokens: AbstractSet[int]) -> None:
        """`llm`: the engine's llama_cpp.Llama; `piece(token, special)`: a token's bytes, as the
        engine writes them; `shown_tokens`: the special tokens written out as text."""
        self.llm = llm
        self._llama = llama = llama_cpp
        self.ctx = llm._ctx.ctx
        self.vocab = llm._model.vocab
        self._piece = piece
        self.memory = llama.llama_get_memory(self.ctx)
        self.n_ctx = int(llama.llama_n_ctx(self.ctx))
        self.n_ctx_seq = int(llama.llama_n_ctx_seq(self.ctx))  # one sequence's KV stream (padded by llama.cpp)
        self.n_batch = int(llama.llama_n_batch(self.ctx))
        self.n_vocab = int(llama.llama_vocab_n_tokens(self.vocab))
        self.batch: Any = llama.llama_batch_init(self.n_batch, 0, 1)
        self.rows = 0
        self._shown_tokens = shown_tokens

    @property
    def closed(self) -> bool:
        return self.batch is None

    def clear(self) -> None:
        """Empty every sequence; llama-cpp-python's own prefix cache no longer describes sequence 0."""
        self._llama.llama_memory_clear(self.memory, True)
        self.llm.reset()

    def keep_prefix(self, seq_id: int, keep: int) -> None:
        """Drop sequence `seq_id`'s cached positions from `keep` on."""
        self._llama.llama_memory_seq_rm(self.memory, seq_id, keep, -1)

    def put(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Add one token to the next batch; returns its row (where its logits will be)."""
        batch, n = self.batch, self.rows
        batch.token[n] = token
        batch.pos[n] = pos
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = seq_id
        batch.logits[n] = logits
        self.rows = n + 1
        return n

    def decode(self) -> int:
        """Decode the batch built by put(); llama_decode's status (0: done)."""
        self.batch.n_tokens, self.rows = self.rows, 0
        with decode_watch(self.batch.n_tokens):
            return int(self._llama.llama_decode(self.ctx, self.batch))

    def new_sampler(self, params: SamplingParams, grammar: str | None) -> Any:
        """The chain llama-cpp-python's Llama._init_sampler builds, for one sequence."""
        llama = self._llama
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())

        def add(sampler: Any) -> None:
            llama.llama_sampler_chain_add(chain, sampler)

        add(llama.llama_sampler_init_penalties(self.n_vocab, params.penalty_last_n,
                                               params.repeat_penalty, params.frequency_penalty, params.presence_penalty))
        if grammar is not None:
            sampler = llama.llama_sampler_init_grammar(self.vocab, grammar.encode("utf-8"), b"root")
            if not sampler:  # checked by grammar_text already; never hand NULL to the chain
                llama.llama_sampler_free(chain)
                raise GenerationError("llama.cpp refused the grammar")
            add(sampler)
        if params.temperature == 0:
            add(llama.llama_sampler_init_greedy())
        else:
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            add(llama.llama_sampler_init_top_k(params.top_k))
            add(llama.llama_sampler_init_typical(params.typical_p, 1))
            add(llama.llama_sampler_init_top_p(params.top_p, 1))
            add(llama.llama_sampler_init_min_p(params.min_p, 1))
            add(llama.llama_sampler_init_temp(params.temperature))
            add(llama.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def free_sampler(self, sampler: Any) -> None:
        self._llama.llama_sampler_free(sampler)

    def sample(self, sampler: Any, row: int) -> int:
        return int(self._llama.llama_sampler_sample(sampler, self.ctx, row))

    def is_eog(self, token: int) -> bool:
        return bool(self._llama.llama_vocab_is_eog(self.vocab, token))

    def tokenize(self, text: str) -> list[int]:
        """Text the engine writes into a sequence itself (a tool call's opening): no BOS, markers parsed."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def piece(self, token: int) -> bytes:
        """The token's bytes; <think>, </think> and <|python_tag|> written out, other special tokens not."""
        return self._piece(token, token in self._shown_tokens)

    @staticmethod
    def release_threads() -> None:
        """Idle: this thread's llama.cpp compute threads go (edgellm.runtime.native.release_compute_threads)."""
        release_compute_threads()

    def close(self) -> None:
        if self.batch is not None:
            self._llama.llama_batch_free(self.batch)
            self.batch = None
