"""What every model command does before generating: detect, pick a profile, resolve, plan.

Kept apart from the CLI so chat, bench and serve call the same steps, and apart from the
planner so the planner stays pure.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgellm.device.hardware import detect
from edgellm.device.profiles import Profile, select_profile, this_device
from edgellm.device.types import Device
from edgellm.device.workers import Endpoint, WorkerInfo, let_idle_threads_sleep, probe_all
from edgellm.errors import (
    ContextOverflowError,
    DownloadError,
    ModelNotFoundError,
    PlanError,
)
from edgellm.paths import llama_build_cache_file
from edgellm.plan.planner import Plan, auto_parallel, largest_context, make_plan, refusal_hint
from edgellm.plan.resolve import resolve as resolve_spec
from edgellm.store import measured as measurements
from edgellm.store.gguf import ModelInfo

if TYPE_CHECKING:
    from edgellm.runtime.engine import Engine


def _quiet(message: str) -> None:
    """A library caller that passed no notices hears nothing."""


@dataclass(frozen=True)
class Notices:
    """How the loader speaks to its user, given by the front end (the CLI passes ui.notices());
    the loader itself never prints."""

    info: Callable[[str], None] = _quiet
    warn: Callable[[str], None] = _quiet
    confirm: Callable[[str], bool] | None = None  # asks before a large download; None: nobody to ask
    progress: Callable[[str, int, int], Any] | None = None  # a download's progress display


QUIET = Notices()


@dataclass
class PlanOptions:
    profile: str | None = None
    ctx: int | None = None
    mem_budget: int | None = None
    threads: int | None = None
    threads_batch: int | None = None
    sysroot: str = "/"
    parallel: int | None = 1  # sequences at once (serve); None: as many as fit, at most 4
    rpc: list[Endpoint] = dataclasses.field(default_factory=list)  # workers to split the layers across (--rpc)
    think_budget: int | None = None  # --think-budget (None: the profile's)
    notices: Notices = QUIET


@dataclass
class Prepared:
    device: Device
    profile: Profile
    profile_reason: str
    model: ModelInfo
    plan: Plan
    workers: list[WorkerInfo] = dataclasses.field(default_factory=list)  # as probed, for replans


def resolve_model(
    spec: str,
    *,
    yes: bool = False,
    download: bool = True,
    device: Device | None = None,
    profile: Profile | None = None,
    ctx: int | None = None,
    mem_budget: int | None = None,
    notices: Notices = QUIET,
) -> ModelInfo:
    """Turn `-m` into a model: a local .gguf path, a catalog name (`deepseek-r1-1.5b[:Q4_K_S]`),
    `owner/repo[:QUANT]` or `owner/repo/file.gguf` (edgellm.store.refs.parse_spec).

    A hub model not downloaded yet is pulled (asking on a terminal above 1 GB unless `yes`); with
    download=False it is described from the catalog's shape instead, so plans work before downloads.
    Without a quant, the planner picks the one that fits `device` under `profile`.
    """
    if device is None:
        device = detect("/")
    if profile is None:
        profile, _ = select_profile(device, None)
    return resolve_spec(spec, device, profile, yes=yes, download=download, ctx=ctx, mem_budget=mem_budget,
                          say=notices.info, confirm=notices.confirm, progress_factory=notices.progress)


def measured_here(device: Device) -> measurements.Measured | None:
    """What `edgellm bench` measured on this device (the planner predicts speed from it)."""
    return measurements.load(device.identity)


def prepare(spec: str | None, options: PlanOptions, *, download: bool = True, loading: bool = False, yes: bool = False) -> Prepared:
    """Detect, select the profile, resolve the model (no spec: the profile's default model) and
    plan. `loading`: the caller loads the model next, so asking llama.cpp for its build facts
    costs nothing extra."""
    device, profile, reason = this_device(options.sysroot, options.profile)
    # Each worker's version and free memory, before llama.cpp meets it, and before a download that
    # would be wasted on a worker that is down.
    workers = probe_all(options.rpc)
    if workers:
        let_idle_threads_sleep()
    # download=False (plan) only looks: a catalog model is sized from its shape, and a plan that
    # does not fit is shown rather than refused.
    resolve = functools.partial(resolve_model, yes=yes, download=download, device=device, profile=profile,
                                ctx=options.ctx, mem_budget=options.mem_budget, notices=options.notices)
    if spec:
        model = resolve(spec)
    else:
        try:
            model = resolve(profile.default_model)
        except (ModelNotFoundError, DownloadError) as exc:
            hint = (exc.hint + "; " if exc.hint else "") + "or pass a file with -m ~/models/model.gguf"
            raise type(exc)(
                f"no -m given, so edgellm wants the {profile.name} profile's model {profile.default_model}: {exc.message}",
                hint=hint,
            ) from None
    repacks = _build_repacks(options.sysroot, loading)
    measured = measured_here(device)  # what edgellm bench measured on this device, if anything

    def plan_for(parallel: int) -> Plan:
        return make_plan(model, device, profile, ctx=options.ctx, mem_budget=options.mem_budget, threads=options.threads,
                         threads_batch=options.threads_batch, build_repacks=repacks, parallel=parallel, workers=workers,
                         think_budget=options.think_budget, measured=measured)

    plan = plan_for(options.parallel if options.parallel is not None else auto_parallel(plan_for))
    if download and not plan.fits:
        raise PlanError(plan.refusal or "the model does not fit", hint=refusal_hint(plan))
    if loading:
        for warning in plan.warnings:
            options.notices.warn(warning)
        if plan.rpc:
            options.notices.info("layers: " + ", ".join(f"{'this board' if d.name == 'local' else d.name} {d.layers}" for d in plan.devices)
                    + f" (+ the output layer on {plan.devices[-1].name})")
    return Prepared(device, profile, reason, model, plan, workers)


def _build_repacks(sysroot: str, loading: bool) -> bool:
    if Path(sysroot).resolve() != Path("/"):
        return False  # another device's build is unknown
    if loading:
        from edgellm.runtime.native import system_info  # noqa: PLC0415  (llama_cpp is about to load anyway)

        info: str | None = system_info()
    else:
        info = llama_build_info()
    return bool(info and "REPACK = 1" in info)


# --- llama.cpp build facts, without importing llama_cpp in this process ------------------------


def _library_fingerprint() -> str | None:
    spec = importlib_util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    stamps = []
    for lib in sorted((package / "lib").glob("*")):
        try:
            stat = lib.stat()
        except OSError:
            continue
        stamps.append(f"{lib.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("|".join(stamps).encode()).hexdigest()[:16] if stamps else None


def llama_build_info() -> str | None:
    """llama.cpp's system-info line for the installed build, cached per library file.

    `detect` must stay fast and must not load the native library (shell scripts call it in
    loops), so the first call asks a child process and later calls read the cache.
    """
    fingerprint = _library_fingerprint()
    if fingerprint is None:
        return None
    cache = llama_build_cache_file()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("fingerprint") == fingerprint:
            return str(cached["system_info"])
    except (OSError, ValueError, KeyError):
        pass
    try:
        result = subprocess.run(
            [sys.executable, "-c", "from edgellm.runtime.native import system_info; print(system_info())"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    info = result.stdout.strip()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"fingerprint": fingerprint, "system_info": info}))
    except OSError:
        pass
    return info


# Features llama.cpp needs compiled in to use what the CPU offers: device feature -> build flag.
# detect's feature names -> the flag llama.cpp's system info prints when a build uses it
# (ggml-cpu.cpp ggml_backend_cpu_get_features). AMX is left out: edgellm builds without it.
BUILD_FLAGS = {
    "dotprod": "DOTPROD", "i8mm": "MATMUL_INT8", "sve": "SVE", "fp16": "FP16_VA", "sme": "SME",
    "sse3": "SSE3", "ssse3": "SSSE3", "avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "bmi2": "BMI2",
    "avx_vnni": "AVX_VNNI", "avx512f": "AVX512", "avx512vbmi": "AVX512_VBMI", "avx512_vnni": "AVX512_VNNI",
    "avx512_bf16": "AVX512_BF16",
}
BUILD_WHY = {
    "dotprod": "prompt processing runs about 2x slower without it",
    "i8mm": "int8 matrix multiply speeds up prompt processing",
    "avx2": "most x86 kernels need it",
}


def build_warnings(device: Device, info: str | None) -> list[str]:
    """Where the CPU has a feature the installed llama.cpp was not compiled with, or AMX is on."""
    if not info:
        return []
    warnings = []
    for feature in device.features:
        flag = BUILD_FLAGS.get(feature)
        if flag and f"{flag} = 1" not in info:
            why = BUILD_WHY.get(feature, "llama.cpp's faster kernels for it are not used")
            warnings.append(
                f"the CPU has {feature} but llama.cpp was built without {flag}: {why}; "
                "rebuild with: pip install --force-reinstall --no-cache-dir llama-cpp-python"
            )
    if "AMX_INT8 = 1" in info:
        warnings.append(
            "this llama.cpp build has Intel AMX kernels, which crash on prompts (llama.cpp issue 20824); "
            "edgellm loads models without them, but rebuild: CMAKE_ARGS=\"-DCMAKE_C_FLAGS=-mno-amx-tile\\ -mno-amx-int8\\ -mno-amx-bf16 "
            "-DCMAKE_CXX_FLAGS=-mno-amx-tile\\ -mno-amx-int8\\ -mno-amx-bf16\" pip install --force-reinstall --no-cache-dir llama-cpp-python"
        )
    return warnings


# A reply's room when run sizes the context to its input: the answer (when no --max-tokens) and a
# reasoning model's reasoning (when no --think-budget).
ANSWER_ROOM_TOKENS = 1024
REASONING_ROOM_TOKENS = 2048
TEMPLATE_SLACK_TOKENS = 64  # what a chat template adds around the text, at most, for the quick check


def reply_room(model: ModelInfo, max_tokens: int | None, think_budget: int | None, no_think: bool) -> int:
    """Tokens to leave after the prompt: the answer, plus the reasoning's budget for a reasoning model."""
    room = max_tokens or ANSWER_ROOM_TOKENS
    if model.thinks and not no_think:
        room += think_budget if think_budget is not None else REASONING_ROOM_TOKENS
    return room


def context_for(prepared: Prepared, options: PlanOptions, messages: list[dict[str, str]], sampling: Any,
                count: Callable[[list[dict[str, str]]], int] | None = None) -> Prepared:
    """`prepared` with a context sized to `messages` and their reply (long piped input, a long paste
    in chat) when the current one would not hold them. `count` gives the prompt's tokens (default:
    counted with the model's vocabulary alone, no weights). A prompt whose bytes, plus what a
    template adds, fit already is never counted: a token holds at least one byte."""
    room = reply_room(prepared.model, sampling.max_tokens, sampling.think_budget, sampling.skips_reasoning)
    size = sum(len((m.get("content") or "").encode("utf-8", "replace")) for m in messages)
    if options.ctx is not None or size + TEMPLATE_SLACK_TOKENS + room <= prepared.plan.n_ctx:
        return prepared
    if count is None:
        from edgellm.runtime.engine import Engine  # noqa: PLC0415

        counter = Engine.tokenizer_only(prepared.model)
        try:
            tokens = len(counter.prompt_from_messages(messages, check=False, no_think=sampling.skips_reasoning).tokens)
        finally:
            counter.close()
    else:
        tokens = count(messages)
    return fit_prompt(prepared, options, tokens, room)


def fit_prompt(prepared: Prepared, options: PlanOptions, prompt_tokens: int, room: int) -> Prepared:
    """`prepared` with a context that holds the prompt and `room` tokens of reply, as far as the
    memory budget and the model's trained context allow: run sizes the context to its input. Unchanged
    when it fits already or --ctx was given; a ContextOverflowError saying what fits when memory cannot."""
    plan, model = prepared.plan, prepared.model
    if options.ctx is not None or prompt_tokens + room <= plan.n_ctx:
        return prepared
    trained = model.context_length
    if prompt_tokens >= trained:
        raise ContextOverflowError(
            f"the prompt is {prompt_tokens} tokens but {model.name or 'the model'} is trained for {trained}",
            hint="shorten the input",
        )
    wanted = min(prompt_tokens + room, trained)
    repacks = _build_repacks(options.sysroot, True)

    measured = measured_here(prepared.device)  # read once: plan_at runs for each size tried

    def plan_at(n_ctx: int) -> Plan:
        return make_plan(model, prepared.device, prepared.profile, ctx=n_ctx, mem_budget=options.mem_budget,
                         threads=options.threads, threads_batch=options.threads_batch, build_repacks=repacks,
                         workers=prepared.workers, think_budget=options.think_budget, measured=measured)

    larger = plan_at(wanted)
    holds = larger.n_ctx if larger.fits else 0
    if holds < wanted:
        # The largest context memory holds at its best KV type (the planner shrinks the context
        # before it tries q8_0 for a shorter one), counted down from what was wanted.
        holds = largest_context(model, prepared.device, prepared.profile, wanted, mem_budget=options.mem_budget,
                                workers=prepared.workers, least=plan.n_ctx + 1) or plan.n_ctx
        larger = plan_at(holds)
    if holds <= plan.n_ctx and prompt_tokens < plan.n_ctx:
        return prepared  # no larger context to be had (the model's training caps it); the prompt fits
    if holds <= prompt_tokens:
        raise ContextOverflowError(
            f"the prompt is {prompt_tokens} tokens, but memory holds a context of at most {holds} tokens"
            f" ({larger.reasons.get('budget', 'the memory budget')})",
            hint=f"shorten the input to under {max(holds - room, 1)} tokens, or raise --mem-budget",
        )
    options.notices.info(f"context {plan.n_ctx} -> {larger.n_ctx} tokens, to hold the {prompt_tokens}-token prompt and its reply"
            + (f" ({larger.reasons['n_ctx']})" if "largest" in larger.reasons.get("n_ctx", "") else ""))
    for warning in larger.warnings:
        options.notices.warn(warning)
    return dataclasses.replace(prepared, plan=larger)


# --- opening a model ---------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A model open for generation: its plan and its Engine. The one way run, chat, serve and bench
    open a model; `grow_to` and `reload` replace the engine in place, with the same options."""

    prepared: Prepared
    options: PlanOptions
    engine: Engine
    sequences: int = 1

    def grow_to(self, messages: list[dict[str, str]], sampling: Any) -> bool:
        """A larger context when `messages` and their reply do not fit this one (chat's long paste):
        the engine is replaced and True returned; False when this context holds them already."""
        engine = self.engine
        bigger = context_for(self.prepared, self.options, messages, sampling,
                             count=lambda m: len(engine.tokenize(engine.format_messages(m))))
        if bigger is self.prepared:
            return False
        engine.close()
        self.prepared, self.engine = bigger, _new_engine(bigger, self.sequences)
        return True

    def reload(self) -> Engine:
        """The model loaded again with the same plan (serve, after --idle-unload freed it)."""
        self.engine = _new_engine(self.prepared, self.sequences)
        return self.engine

    def close(self) -> None:
        self.engine.close()


def open_model(prepared: Prepared, options: PlanOptions, *, sequences: int = 1,
               fit: tuple[list[dict[str, str]], Any] | None = None) -> Loaded:
    """Load the prepared model. `fit` (messages, sampling): first size the context to hold them and
    their reply (run's piped input), as far as memory allows."""
    if fit is not None:
        prepared = context_for(prepared, options, *fit)
    return Loaded(prepared, options, _new_engine(prepared, sequences), sequences)


def _new_engine(prepared: Prepared, sequences: int) -> Engine:
    from edgellm.runtime.engine import Engine  # noqa: PLC0415  (loads llama.cpp: only when a model opens)

    return Engine(prepared.model, prepared.plan, sequences=sequences)
