"""The Engine: a model loaded with its plan (templates, tokens, grammars, checks), generating on
its batch scheduler (edgellm.runtime.batch). llama_cpp is imported lazily (runtime/native.py).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from edgellm.device.workers import parse_endpoint
from edgellm.errors import (
    ContextOverflowError,
    EmptyPromptError,
    GenerationError,
    GrammarError,
    ModelFileError,
)
from edgellm.plan.planner import Plan
from edgellm.runtime.native import (
    _overriding_defaults,
    build_has_amx,
    load_llama_cpp,
    pin_to_cores,
    release_compute_threads,
)
from edgellm.runtime.rpc import attach_workers, decode_watch, keep_alive_worker_sockets
from edgellm.runtime.types import Event, GenerationInterrupted, GenerationStats, Prompt, SamplingParams, TextEvent
from edgellm.store.gguf import ModelInfo
from edgellm.text.grammar import check_grammar
from edgellm.text.schema_grammar import SchemaError, SchemaGrammar
from edgellm.text.toolcalls.formats import ToolFormat, ToolUse, detect_format
from edgellm.text.toolcalls.spec import ToolChoice

# ------------------------------------------------------------------------------------------------
# Loading and generation


GGML_TYPE_IDS = {"f16": 1, "q8_0": 8, "q4_0": 2}
# Real schemas (tools, structured replies) are a few KiB; llama-cpp-python's converter is slow on huge ones.
MAX_SCHEMA_CHARS = 64 * 1024


class Engine:
    """A model loaded with a plan. `generate()` is the one streaming generator everything uses."""

    def __init__(self, model: ModelInfo, plan: Plan, *, sequences: int = 1) -> None:
        """`sequences`: how many sequences the context holds at once (serve's --parallel)."""
        if model.path is None:
            raise ModelFileError("the model has no file to load")
        llama_cpp = load_llama_cpp()
        amx = build_has_amx()
        self.model = model
        self.plan = plan
        self.pinned_cores = pin_to_cores(plan.cores)
        started = time.perf_counter()
        if plan.rpc:
            attach_workers([parse_endpoint(e) for e in plan.rpc])
        try:
            # use_extra_bufts=false keeps llama.cpp off its AMX buffer type (only when the build has
            # AMX; it also drops ARM repacking). n_seq_max: `sequences` KV streams of n_ctx/sequences
            # cells each, as llama-server -np makes them: a token attends over its own sequence's
            # cells only (a unified cache attends over every slot's, masked: 4x the work with 4 full
            # slots), and llama.cpp checks each slot's share against the training context.
            with _overriding_defaults(llama_cpp, "llama_model_default_params", **({"use_extra_bufts": False} if amx else {})), \
                    _overriding_defaults(llama_cpp, "llama_context_default_params",
                                         **({"n_seq_max": sequences, "kv_unified": False} if sequences > 1 else {})):
                self.llm = llama_cpp.Llama(
                    model_path=str(model.path),
                    n_ctx=plan.n_ctx,
                    n_batch=plan.n_batch,
                    n_ubatch=plan.n_ubatch,
                    n_threads=plan.threads,
                    n_threads_batch=plan.threads_batch,
                    type_k=GGML_TYPE_IDS[plan.kv_type],
                    type_v=GGML_TYPE_IDS[plan.kv_type],
                    flash_attn=plan.flash_attn,
                    use_mmap=plan.use_mmap,
                    use_mlock=plan.use_mlock,
                    # A split model (--rpc): the workers' layers and the output layer, in the
                    # planner's proportions; otherwise all on this board's CPU.
                    n_gpu_layers=plan.n_gpu_layers,
                    tensor_split=plan.tensor_split or None,
                    verbose=bool(os.environ.get("EDGELLM_LLAMA_LOG")),
                )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelFileError(f"{model.path}: llama.cpp could not load the model: {exc}") from None
        if plan.rpc:
            keep_alive_worker_sockets()
        self.load_s = time.perf_counter() - started
        self.sequences = sequences
        self._set_up(llama_cpp)

    def _set_up(self, llama_cpp: ModuleType) -> None:
        self._vocab = self.llm._model.vocab
        self._llama_cpp = llama_cpp
        self._piece_buffer = ctypes.create_string_buffer(256)
        self._formatter = self._make_formatter()
        self._grammar_cache: dict[str, None] = {}  # grammars already checked, oldest first
        self._grammar_lock = threading.Lock()  # serve checks grammars outside the generation thread

    @classmethod
    def tokenizer_only(cls, model: ModelInfo) -> Engine:
        """The model's vocabulary and chat template, no weights (a fraction of a second): to count a
        prompt's tokens before planning the context it needs. Only prompts and tokens; no generation."""
        if model.path is None:
            raise ModelFileError("the model has no file to load")
        llama_cpp = load_llama_cpp()
        engine = cls.__new__(cls)
        engine.model = model
        engine.sequences = 1
        engine.load_s = 0.0
        try:
            engine.llm = _VocabOnly(llama_cpp, str(model.path))
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelFileError(f"{model.path}: llama.cpp could not read the vocabulary: {exc}") from None
        engine._set_up(llama_cpp)
        return engine

    # --- prompt formatting -----------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", "replace")

    def _piece(self, token: int, special: bool) -> bytes:
        buffer = self._piece_buffer
        n = self._llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        if n < 0:  # piece longer than the buffer: grow once and retry
            self._piece_buffer = buffer = ctypes.create_string_buffer(-n + 1)
            n = self._llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:n]

    def _make_formatter(self) -> Any:
        template = self.model.chat_template
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415

        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(self.llm.token_eos()),
            bos_token=self._token_text(self.llm.token_bos()),
            add_generation_prompt=True,
        )

    @functools.cached_property
    def tool_format(self) -> ToolFormat:
        """How this model writes tool calls, read from its chat template."""
        return detect_format(self.model.chat_template)

    def format_messages(self, messages: list[dict[str, Any]], *, tool_use: ToolUse | None = None,
                        template_kwargs: dict[str, Any] | None = None) -> str:
        """The model's chat template applied to `messages`, ending with the assistant's turn.

        Tool calls and results in the history are shaped the way this model's template wants
        them; `tool_use` (when active) also shows the template the tools. `template_kwargs` are
        extra template variables (serve's chat_template_kwargs, e.g. enable_thinking).
        """
        fmt = tool_use.format if tool_use is not None else self.tool_format
        active = tool_use is not None and tool_use.active
        if active or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
            assert fmt is not None
            messages = fmt.template_messages(messages, tool_use.tools if active and tool_use else [],
                                             tool_use.choice if active and tool_use else ToolChoice("none"))
        if self._formatter is None:
            # No template in the file: a plain transcript the model can continue.
            lines = [f"{m['role'].capitalize()}: {m.get('content') or ''}" for m in messages]
            return "\n".join(lines) + "\nAssistant:"
        variables: dict[str, Any] = {"enable_thinking": True, **(template_kwargs or {})}
        if active and tool_use is not None and fmt.template_renders_tools:
            variables["tools"] = [tool.to_openai() for tool in tool_use.tools]
        try:
            return str(self._formatter(messages=messages, **variables).prompt)
        except Exception as exc:  # noqa: BLE001  (jinja2 errors from a model's own template)
            raise GenerationError(f"the model's chat template failed: {_first_line(exc)}") from None

    def tokenize(self, text: str) -> list[int]:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise GenerationError("the text is not valid Unicode (it holds an unpaired surrogate)") from None
        # The template already wrote the BOS token when the model wants one.
        return list(self.llm.tokenize(data, add_bos=self._formatter is None, special=True))

    def prompt_from_messages(self, messages: list[dict[str, Any]], *, check: bool = True, tool_use: ToolUse | None = None,
                             template_kwargs: dict[str, Any] | None = None, no_think: bool = False) -> Prompt:
        """`no_think`: a reasoning model skips its reasoning (the prompt ends with an empty block)."""
        if no_think and self.model.thinks:
            template_kwargs = {**(template_kwargs or {}), "enable_thinking": False}
        text = self.format_messages(messages, tool_use=tool_use, template_kwargs=template_kwargs)
        if no_think and self.model.thinks:
            text = without_thinking(text)
        return self.prompt_from_text(text, check=check)

    def prompt_from_text(self, text: str, *, check: bool = True) -> Prompt:
        """Tokenize, and (check) refuse what cannot be generated from: empty, or longer than the context.

        Safe to call from another thread while this engine generates (serve does it, so template
        and tokenizer work never holds the generation slot)."""
        tokens = self.tokenize(text)
        if check:
            self.check_prompt(tokens)
        return Prompt(tokens, _opens_think(text), _closes_think(text))

    @functools.cached_property
    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The vocabulary's fill-in-the-middle tokens (prefix, suffix, middle); None: it has none."""
        llama_cpp = self._llama_cpp
        ids = tuple(int(read(self._vocab)) for read in (llama_cpp.llama_vocab_fim_pre, llama_cpp.llama_vocab_fim_suf,
                                                         llama_cpp.llama_vocab_fim_mid))
        return (ids[0], ids[1], ids[2]) if all(token >= 0 for token in ids) else None

    def fim_prompt(self, prefix: str, suffix: str, *, check: bool = True) -> Prompt:
        """The prompt that asks for the text between `prefix` and `suffix`, as llama-server's
        /infill writes it (prefix, suffix, middle). The texts are tokenized as text: a marker
        written in them is not a special token. Needs fim_tokens."""
        if self.fim_tokens is None:
            raise GenerationError("this model's vocabulary has no fill-in-the-middle tokens")
        pre, suf, mid = self.fim_tokens
        tokens = [int(self.llm.token_bos())] if self._llama_cpp.llama_vocab_get_add_bos(self._vocab) else []
        for marker, text in ((pre, prefix), (suf, suffix)):
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:
                raise GenerationError("the text is not valid Unicode (it holds an unpaired surrogate)") from None
            tokens += [marker, *self.llm.tokenize(data, add_bos=False, special=False)]
        tokens.append(mid)
        if check:
            self.check_prompt(tokens)
        return Prompt(tokens)

    def check_prompt(self, tokens: list[int]) -> None:
        if not tokens:
            raise EmptyPromptError("the prompt is empty", hint="give the model some text to continue")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx} (n_ctx)",
                hint="shorten the input or raise --ctx (the planner checks it fits in memory)",
            )

    @functools.cached_property
    def max_piece_bytes(self) -> int:
        """The longest token's text in bytes: a text of N bytes is at least N / this many tokens."""
        return max((len(self._piece(token, special=True)) for token in range(self.llm.n_vocab())), default=1) or 1

    @property
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())

    @property
    def tokens_in_context(self) -> int:
        if "scheduler" in self.__dict__:
            return max(len(slot.cached) for slot in self.scheduler.slots)
        return int(self.llm.n_tokens)

    # --- generation ------------------------------------------------------------------------------

    def generate(self, messages: list[dict[str, Any]], params: SamplingParams | None = None) -> Iterator[Event]:
        """Stream TextEvents (and tool call events) for `messages`, then one GenerationStats.
        Reuses the KV cache prefix."""
        params = params or SamplingParams()
        if params.tool_use is not None and params.tool_use.active:
            self.tool_grammar(params.tool_use)
        prompt = self.prompt_from_messages(messages, tool_use=params.tool_use, no_think=params.skips_reasoning)
        yield from self.generate_prompt(prompt, params)

    def generate_from_prompt(self, prompt: str, params: SamplingParams | None = None) -> Iterator[Event]:
        yield from self.generate_prompt(self.prompt_from_text(prompt), params or SamplingParams())

    def generate_prompt(self, prompt: Prompt, params: SamplingParams) -> Iterator[Event]:
        yield from self.generate_tokens(prompt.tokens, params, opened_by_template=prompt.opens_think,
                                        closes_think=prompt.closes_think)

    def generate_tokens(
        self, tokens: list[int], params: SamplingParams, *, opened_by_template: bool = False, closes_think: bool = False
    ) -> Iterator[Event]:
        """Generate on the engine's scheduler (edgellm.runtime.batch), stepped in this thread.

        One core for every front end: run and chat go through the same batch, sampler chains,
        reasoning split and prefix reuse as serve. Ctrl-C becomes a flag the step loop checks
        (a KeyboardInterrupt raised in the middle of a step could leave the cache's bookkeeping
        half done), then GenerationInterrupted with the stats and the text the splitter held.
        """
        from edgellm.runtime.batch import Finished, SequenceRequest  # noqa: PLC0415

        self.check_prompt(tokens)
        scheduler = self.scheduler
        events: collections.deque[Any] = collections.deque()
        request = SequenceRequest(Prompt(list(tokens), opened_by_template, closes_think), params, events.append)
        held: list[TextEvent] = []  # text that arrives once Ctrl-C was seen: handed over with the stats
        final: list[GenerationStats] = []

        def take(event: Any) -> Any:
            """Sort one event; returns what to yield (None: nothing), or Finished."""
            if isinstance(event, GenerationStats):
                final.append(event)
                return None if request.cancelled.is_set() else event
            if isinstance(event, TextEvent) and request.cancelled.is_set():
                held.append(event)
                return None
            return event

        def interrupted() -> GenerationInterrupted:
            stats = final[-1] if final else GenerationStats(prompt_tokens=len(tokens), finish_reason="interrupted")
            stats.finish_reason = "interrupted"
            return GenerationInterrupted(stats, held)

        def drain() -> None:
            request.cancel()
            while True:
                while events:
                    if isinstance(take(events.popleft()), Finished):
                        return
                if not scheduler.step() and not events:
                    return  # closed (the engine went first), or nothing left to do

        scheduler.submit(request)
        try:
            with _sigint_sets(request.cancelled):
                while True:
                    scheduler.step()
                    while events:
                        event = take(events.popleft())
                        if isinstance(event, Finished):
                            if event.error is not None:
                                raise event.error
                            if request.cancelled.is_set():
                                raise interrupted()
                            return
                        if event is not None:
                            yield event
        except KeyboardInterrupt:
            # Thrown in at a yield (chat hands over a Ctrl-C that landed while it wrote a token).
            drain()
            raise interrupted() from None
        except GeneratorExit:
            drain()  # the consumer stopped reading: free the sequence
            raise
        finally:
            # This thread stops decoding: its compute threads go, so that a decode on another
            # thread (serve's, after the warm-up here) is not slowed by them.
            release_compute_threads()

    @functools.cached_property
    def scheduler(self) -> Any:
        from edgellm.runtime.batch import Scheduler  # noqa: PLC0415

        return Scheduler(self, self.sequences, self.new_backend())

    def new_backend(self) -> Any:
        """A LlamaBackend over this engine's context (the scheduler's; tests make their own)."""
        from edgellm.runtime.backend import LlamaBackend  # noqa: PLC0415

        return LlamaBackend(self._llama_cpp, self.llm, self._piece, self._shown_special_tokens)

    def forget_cache(self) -> None:
        """Something else (bench) used the context directly: no slot's cached tokens are valid now."""
        if "scheduler" in self.__dict__:
            self.scheduler.forget()

    def grammar_text(self, params: SamplingParams) -> str | None:
        """The GBNF text for params (a JSON Schema converted), checked so llama.cpp cannot crash on it.

        Raises GrammarError with a one-line reason. Callers that can (serve) call this before a
        generation slot is taken; generate_tokens calls it again and gets the cached answer.
        """
        if params.grammar and params.json_schema:
            raise GrammarError("use either a grammar or a JSON schema, not both")
        if params.json_schema:
            return self._schema_grammar(params.json_schema)
        if params.grammar:
            return self._checked_grammar(params.grammar)
        return None

    def _schema_grammar(self, schema_text: str) -> str:
        if len(schema_text) > MAX_SCHEMA_CHARS:
            raise GrammarError(f"invalid JSON schema: it is larger than {MAX_SCHEMA_CHARS // 1024} KiB")
        try:
            schema = json.loads(schema_text)
        except (ValueError, RecursionError) as exc:
            raise GrammarError(f"the JSON schema is not valid JSON: {_first_line(exc)}") from None
        builder = SchemaGrammar()
        try:
            builder.add(schema, "root")
        except SchemaError as exc:
            raise GrammarError(f"unsupported JSON schema: {exc.message}") from None
        try:
            return self._checked_grammar(builder.text())
        except GrammarError as exc:
            raise GrammarError(f"unsupported JSON schema: the grammar made from it is unusable ({exc.message})") from None

    def tool_grammar(self, use: ToolUse) -> str:
        """GBNF for `use`'s calls (what follows the format's forced start), checked so llama.cpp
        cannot crash on it; kept on `use`. Raises GrammarError naming the tool at fault."""
        if use.grammar is not None:
            return use.grammar
        builder = SchemaGrammar(reserved=use.format.rule_names(len(use.tools)))
        rules = []
        for index, tool in enumerate(use.tools):
            try:
                rules.append(builder.add(tool.parameters, f"tc-args-{index}", require_object=True))
            except SchemaError as exc:
                raise GrammarError(f"tool '{tool.name}': parameters {exc.message}") from None
        text = use.format.grammar(use.tools, rules, builder.text(), use.choice, use.parallel)
        try:
            use.grammar = self._checked_grammar(text)
        except GrammarError as exc:
            raise GrammarError(f"the tools' parameters make an unusable grammar ({exc.message})") from None
        return use.grammar

    def _checked_grammar(self, text: str) -> str:
        with self._grammar_lock:
            if text in self._grammar_cache:
                return text
        parsed = check_grammar(text)
        for token in parsed.tokens:
            ids = self.llm.tokenize(token.encode("utf-8"), add_bos=False, special=True)  # llama.cpp tokenizes it with the brackets
            if len(ids) != 1:
                raise GrammarError(f"invalid grammar: {token} is not one token of this model's vocabulary")
        # The last word is llama.cpp's own: a grammar it cannot use comes back as NULL, which must
        # never reach the sampler chain.
        sampler = self._llama_cpp.llama_sampler_init_grammar(self._vocab, text.encode("utf-8"), b"root")
        if not sampler:
            raise GrammarError("invalid grammar: llama.cpp refused it (see its message above)")
        self._llama_cpp.llama_sampler_free(sampler)
        with self._grammar_lock:
            if len(self._grammar_cache) >= 16:
                self._grammar_cache.pop(next(iter(self._grammar_cache)))
            self._grammar_cache[text] = None
        return text

    @functools.cached_property
    def _shown_special_tokens(self) -> frozenset[int]:
        """Special tokens whose text the reply shows: <think> and </think> (R1's vocabulary), and
        <|python_tag|>, with which Llama 3.x starts a tool call."""
        found = set()
        for tag in ("<think>", "</think>", "<|python_tag|>"):
            ids = self.llm.tokenize(tag.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                found.add(ids[0])
        return frozenset(found)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if "scheduler" in self.__dict__:
                self.scheduler.close()  # its batch and samplers, before the context they belong to
            self.llm.close()


class _VocabOnly:
    """What the Engine's prompt code asks of a Llama, from a vocabulary-only load: no context is
    made (llama-cpp-python's Llama(vocab_only=True) makes one, and llama.cpp warns about it)."""

    def __init__(self, llama_cpp: ModuleType, path: str) -> None:
        from llama_cpp._internals import LlamaModel  # noqa: PLC0415

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = LlamaModel(path_model=path, params=params, verbose=bool(os.environ.get("EDGELLM_LLAMA_LOG")))

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return list(self._model.tokenize(text, add_bos, special))

    def token_bos(self) -> int:
        return int(self._model.token_bos())

    def token_eos(self) -> int:
        return int(self._model.token_eos())

    def n_vocab(self) -> int:
        return int(self._model.n_vocab())

    def close(self) -> None:
        self._model.close()


@contextlib.contextmanager
def _sigint_sets(flag: threading.Event) -> Iterator[None]:
    """While generating in the main thread, SIGINT (Ctrl-C, or chat's Ctrl-D) sets `flag`
    instead of raising wherever the interpreter happens to be."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# llama-cpp-python's converter lets raw control characters into strings, which JSON forbids
# (json.loads refuses them); llama.cpp's own converter excludes them, as here.
def _opens_think(prompt: str) -> bool:
    return prompt.rstrip().endswith("<think>")


def without_thinking(prompt: str) -> str:
    """The prompt with an empty reasoning block prefilled: `<think>\\n\\n</think>\\n\\n`, the known way to
    make the R1 distills answer at once, whether or not the template opened <think> itself."""
    if _closes_think(prompt):
        return prompt if prompt.endswith("\n\n") else prompt.rstrip("\n") + "\n\n"
    if _opens_think(prompt):
        return prompt.rstrip("\n") + "\n\n</think>\n\n"
    return prompt + "<think>\n\n</think>\n\n"


def _closes_think(prompt: str) -> bool:
    """The prompt ends with a closed reasoning block (an R1 template asked for no thinking)."""
    return prompt.rstrip().endswith("</think>")


# ------------------------------------------------------------------------------------------------
# Benchmark primitives (edgellm bench). They do what llama.cpp's llama-bench does (test_prompt,
# test_gen in tools/llama-bench): decode random tokens straight through llama_decode, no sampling,
# end-of-sequence ignored, so the numbers compare with llama-bench's. A separate class over an Engine,
# so the Engine class stays as it is.


class BenchContext:
    """An Engine's llama.cpp context set up for benchmark decoding: one reusable token buffer, one
    single-token batch, and a numpy view to fill prompt batches without a Python loop per token."""

    def __init__(self, engine: Engine) -> None:
        import numpy as np  # noqa: PLC0415

        llama_cpp = load_llama_cpp()
        self.engine = engine
        self._llama_cpp = llama_cpp
        self.ctx = engine.llm._ctx.ctx
        vocab = llama_cpp.llama_model_get_vocab(llama_cpp.llama_get_model(self.ctx))
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.bos: int | None = int(llama_cpp.llama_vocab_bos(vocab)) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        self.n_batch = int(llama_cpp.llama_n_batch(self.ctx))
        self.n_ubatch = int(llama_cpp.llama_n_ubatch(self.ctx))
        self._tokens = (llama_cpp.llama_token * self.n_batch)()
        self._token_view = np.ctypeslib.as_array(self._tokens)
        self._one = (llama_cpp.llama_token * 1)()
        self._one_batch = llama_cpp.llama_batch_get_one(self._one, 1)
        self._rng = np.random.default_rng(0)

    def clear(self) -> None:
        """Empty the KV cache (llama-bench's llama_memory_clear before each repetition)."""
        self._llama_cpp.llama_memory_clear(self._llama_cpp.llama_get_memory(self.ctx), False)
        self.engine.llm.reset()  # so llama-cpp-python's own prefix matching does not trust the old tokens
        self.engine.forget_cache()  # nor the scheduler's

    def set_threads(self, threads: int) -> None:
        self._llama_cpp.llama_set_n_threads(self.ctx, threads, threads)

    def prompt(self, n_prompt: int) -> None:
        """Decode n_prompt random tokens in n_batch chunks (BOS first when the model adds one)."""
        llama_cpp = self._llama_cpp
        done = 0
        while done < n_prompt:
            n = min(n_prompt - done, self.n_batch)
            self._token_view[:n] = self._rng.integers(0, self.n_vocab, n, dtype=self._token_view.dtype)
            if done == 0 and self.bos is not None:
                self._tokens[0] = self.bos
            with decode_watch(n):
                status = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(self._tokens, n))
            if status != 0:
                raise GenerationError(f"llama_decode failed on a {n}-token prompt batch (status {status})")
            done += n
        llama_cpp.llama_synchronize(self.ctx)

    def generate(self, n_gen: int) -> None:
        """Decode n_gen tokens one at a time, each with its logits computed, as generation does."""
        llama_cpp = self._llama_cpp
        decode, synchronize, ctx, batch, one = llama_cpp.llama_decode, llama_cpp.llama_synchronize, self.ctx, self._one_batch, self._one
        upcoming = self._rng.integers(0, self.n_vocab, n_gen).tolist()
        one[0] = self.bos if self.bos is not None else upcoming[0]
        with decode_watch(n_gen):  # the whole timed loop: nothing added per token
            for i in range(n_gen):
                status = decode(ctx, batch)
                if status != 0:
                    raise GenerationError(f"llama_decode failed on generated token {i} (status {status})")
                synchronize(ctx)
                one[0] = upcoming[i]

    @property
    def tokens_in_context(self) -> int:
        llama_cpp = self._llama_cpp
        return int(llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(self.ctx), 0)) + 1


def json_grammar() -> str:
    """llama.cpp's GBNF grammar for a JSON object (what response_format json_object asks for)."""
    load_llama_cpp()
    from llama_cpp.llama_grammar import JSON_GBNF  # noqa: PLC0415

    return str(JSON_GBNF)
