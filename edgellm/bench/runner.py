"""`edgellm bench`: prompt and generation speed measured the way llama.cpp's llama-bench does it,
plus what edge users need: heat and throttling, memory, the profile's choice against alternatives,
long soaks, and full-size synthetic models (edgellm.store.synthetic) that answer "how fast would it be
here?" before a download.

Measurement (as llama-bench): per test one warm-up, then `reps` repetitions, each on an empty KV
cache (after `depth` untimed tokens when asked), timing pp (a batch of random tokens) and tg (random
tokens decoded one at a time, end-of-sequence ignored). t/s per repetition, then mean and sample
standard deviation. The decoding itself is edgellm.runtime.engine.BenchContext; this module plans the tests,
samples heat (heat.HeatProbe) while they run, and makes the report, a BenchReport: its JSON is
the source, and edgellm.ui.bench's table, CSV and markdown are views of it. `bench report` merges
the JSON of several devices (load_reports, merge_reports: files from elsewhere are checked first).

`--parallel 1,2,4` measures instead as llama.cpp's llama-batched-bench does: for each number of
sequences B (and each -p/-n), on an empty KV cache, B different random prompts of -p tokens decoded
as one batch, then -n steps that each decode ONE batch holding the next token of all B sequences.
Aggregate generation speed S_TG = B * n / t_tg (and S_PP = B * p / t_pp) is what tells how many users
a board can serve at once. Prompts are not shared (llama-batched-bench's default, and what separate
users send). The context is the one `edgellm serve --parallel B` makes (Engine(..., sequences=B),
sized by the planner for B slots); whether its KV cache is unified is read back and reported. The
decoding is edgellm.runtime.batched_bench.BatchedBench.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgellm import __version__
from edgellm.device import heat, sysfs
from edgellm.device.types import Device
from edgellm.device.workers import parse_endpoint
from edgellm.errors import EdgeLLMError, PlanError, UsageError
from edgellm.loader import QUIET, Notices, PlanOptions, open_model, prepare
from edgellm.plan.planner import MAX_SEQUENCES, pad_context
from edgellm.runtime import engine as runtime
from edgellm.runtime import native
from edgellm.runtime.response import Response
from edgellm.runtime.types import SamplingParams
from edgellm.store import measured as measurements
from edgellm.store.synthetic import synthetic_model_path

DEFAULT_PROMPT = 512
DEFAULT_GEN = 128
DEFAULT_REPS = 5
SOAK_WINDOW_S = 10.0  # one t/s and temperature sample per window during a soak
SOAK_CHUNK = 32  # tokens decoded between clock checks during a soak
HEAT_INTERVAL_S = 0.5
COOL_TO_TIMEOUT_S = 600.0
COOL_TO_RANGE_C = (1.0, 150.0)  # below, no CPU gets there under load; above, every sensor already is
SCHEMA = "edgellm-bench/1"

# --------------------------------------------------------------------------------------------------
# Heat over one test (heat.HeatProbe reads it)
# --------------------------------------------------------------------------------------------------


@dataclass
class HeatRecord:
    """Heat over one test: temperature before/after/max, frequency at start vs lowest, throttling."""

    temp_before_c: float | None = None
    temp_after_c: float | None = None
    temp_max_c: float | None = None
    freq_start_mhz: float | None = None
    freq_min_mhz: float | None = None
    freq_drop_pct: float | None = None
    throttled: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class HeatSampler:
    """Samples the probe on a background thread while a test runs (a file read every half second;
    llama.cpp releases the GIL while it decodes, so this costs the benchmark nothing measurable)."""

    def __init__(self, probe: heat.HeatProbe, interval_s: float = HEAT_INTERVAL_S) -> None:
        self.probe = probe
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._temps: list[float] = []
        self._freqs: list[float] = []
        self.record = HeatRecord()

    def _sample(self) -> None:
        temp = self.probe.celsius()
        if temp is not None:
            self._temps.append(temp)
        freq = self.probe.mean_freq_khz()
        if freq is not None:
            self._freqs.append(freq / 1000.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> HeatSampler:  # noqa: PYI034  (typing.Self needs Python 3.11; 3.10 is supported)
        self.record.temp_before_c = self.probe.celsius()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="edgellm-heat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()
        record = self.record
        record.temp_after_c = self.probe.celsius()
        record.temp_max_c = max(self._temps) if self._temps else None
        if self._freqs:
            record.freq_start_mhz = round(self._freqs[0], 1)
            record.freq_min_mhz = round(min(self._freqs), 1)
            record.freq_drop_pct = round(100.0 * (1 - min(self._freqs) / self._freqs[0]), 1) if self._freqs[0] else None
        throttled = self.probe.throttled()
        record.throttled = heat.decode_throttled(throttled) if throttled else []


# --------------------------------------------------------------------------------------------------
# Tests and measurement
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestSpec:
    n_prompt: int
    n_gen: int
    depth: int
    threads: int

    @property
    def name(self) -> str:
        base = f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"
        return f"{base} @ d{self.depth}" if self.depth else base  # llama-bench's names

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen

    @property
    def context_needed(self) -> int:
        return self.depth + self.n_prompt + self.n_gen


@dataclass
class BenchConfig:
    """Everything one `edgellm bench` run needs; JSON-serialisable so a cores sweep can hand it to
    a child process (llama.cpp's threads keep the CPU affinity they were created with)."""

    model: str | None = None
    synthetic: str | None = None
    prompts: list[int] = field(default_factory=lambda: [DEFAULT_PROMPT])
    gens: list[int] = field(default_factory=lambda: [DEFAULT_GEN])
    threads: list[int] | None = None  # None: the plan's (threads_batch for pp, threads for tg)
    depths: list[int] = field(default_factory=lambda: [0])
    reps: int = DEFAULT_REPS
    cores: str | None = None  # None: the profile's; "big", "all" or a CPU list
    cooldown_s: float = 0.0
    cool_to_c: float | None = None
    duration_s: float | None = None  # a soak instead of the tests
    parallel: list[int] | None = None  # numbers of sequences: llama-batched-bench's tests instead
    profile: str | None = None
    mem_budget: int | None = None
    sysroot: str = "/"
    rpc: list[str] = field(default_factory=list)  # workers to split the model across (--rpc HOST:PORT)

    def __post_init__(self) -> None:
        # Float options accept 'nan' and 'inf' (click parses them): sleep(nan) raises after the
        # model has loaded, and a nan temperature target or an infinite soak never ends.
        if not math.isfinite(self.cooldown_s) or self.cooldown_s < 0:
            raise UsageError(f"--cooldown {self.cooldown_s}: expected seconds, 0 or more", hint="e.g. --cooldown 30")
        if self.cool_to_c is not None:
            low, high = COOL_TO_RANGE_C
            if not (math.isfinite(self.cool_to_c) and low <= self.cool_to_c <= high):
                raise UsageError(f"--cool-to {self.cool_to_c}: expected a temperature from {low:.0f} to {high:.0f} °C", hint="e.g. --cool-to 60")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise UsageError(f"--duration {self.duration_s}: expected a positive, finite duration", hint="e.g. --duration 30m")
        if self.parallel is not None:
            if not self.parallel or min(self.parallel) < 1 or max(self.parallel) > MAX_SEQUENCES:
                raise UsageError(f"--parallel: every value must be from 1 to {MAX_SEQUENCES}", hint="e.g. --parallel 1,2,4")
            if self.duration_s is not None:
                raise UsageError("--parallel and --duration cannot be combined", hint="soak one sequence: --duration 30m")
            if any(self.depths):
                raise UsageError("--parallel and --depth cannot be combined (each sequence starts on an empty context)")
            if not any(n > 0 for n in self.gens):
                raise UsageError("--parallel measures generation: -n must be at least 1", hint="e.g. --parallel 1,2,4 -n 128")

    def parallel_tests(self, plan_threads: int, plan_threads_batch: int) -> list[ParallelSpec]:
        """In llama-batched-bench's order (for each -p, each -n, each number of sequences), per -t."""
        return [
            ParallelSpec(p, n, b, threads or plan_threads, threads or plan_threads_batch)
            for threads in self.threads or [0]
            for p in self.prompts
            for n in self.gens if n > 0
            for b in self.parallel or []
        ]

    def tests(self, plan_threads: int, plan_threads_batch: int) -> list[TestSpec]:
        """In llama-bench's order: for each thread count and depth, the pp tests then the tg tests."""
        specs: list[TestSpec] = []
        for threads in self.threads or [0]:
            for depth in self.depths:
                specs += [TestSpec(p, 0, depth, threads or plan_threads_batch) for p in self.prompts if p > 0]
                specs += [TestSpec(0, n, depth, threads or plan_threads) for n in self.gens if n > 0]
        return specs


@dataclass(frozen=True)
class ParallelSpec:
    """One llama-batched-bench test: `sequences` prompts of n_prompt tokens, then n_gen steps."""

    n_prompt: int
    n_gen: int
    sequences: int
    threads: int  # what llama.cpp decodes a one-token batch with (one sequence generating)
    threads_batch: int  # and any larger batch: prompts, and generation steps of 2+ sequences

    @property
    def name(self) -> str:
        base = f"pp{self.n_prompt}+tg{self.n_gen}" if self.n_prompt else f"tg{self.n_gen}"
        return f"{base} x{self.sequences}"

    @property
    def generation_threads(self) -> int:
        return self.threads if self.sequences == 1 else self.threads_batch

    @property
    def n_kv(self) -> int:
        """KV cells the test fills: llama-batched-bench's N_KV (prompts not shared)."""
        return self.sequences * (self.n_prompt + self.n_gen)


@dataclass
class TestResult:
    spec: TestSpec
    cores: list[int]
    samples_ns: list[int]
    heat: HeatRecord
    predicted_tps: float | None = None

    @property
    def samples_tps(self) -> list[float]:
        return [1e9 * self.spec.n_tokens / ns for ns in self.samples_ns]

    def to_json(self) -> dict[str, Any]:
        tps = self.samples_tps
        return {
            "test": self.spec.name,
            "threads": self.spec.threads,
            "cores": self.cores,
            "n_prompt": self.spec.n_prompt,
            "n_gen": self.spec.n_gen,
            "depth": self.spec.depth,
            "reps": len(self.samples_ns),
            "tps_mean": round(statistics.fmean(tps), 3),
            "tps_std": round(statistics.stdev(tps), 3) if len(tps) > 1 else 0.0,
            "avg_ns": int(statistics.fmean(self.samples_ns)),
            "samples_tps": [round(x, 3) for x in tps],
            "predicted_tps": self.predicted_tps,
            "thermal": self.heat.to_json(),
        }


@dataclass
class ParallelResult:
    spec: ParallelSpec
    cores: list[int]
    prompt_ns: list[int]  # per repetition: the prompts of all sequences
    gen_ns: list[int]  # per repetition: the n_gen batched steps
    heat: HeatRecord

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        gen_tps = [1e9 * spec.sequences * spec.n_gen / ns for ns in self.gen_ns]
        pp_tps = [1e9 * spec.sequences * spec.n_prompt / ns for ns in self.prompt_ns] if spec.n_prompt else []
        all_tps = [1e9 * spec.n_kv / (p + g) for p, g in zip(self.prompt_ns, self.gen_ns, strict=True)]
        mean = statistics.fmean(gen_tps)
        return {
            "test": spec.name,
            "threads": spec.generation_threads,
            "threads_batch": spec.threads_batch,
            "cores": self.cores,
            "sequences": spec.sequences,
            "n_prompt": spec.n_prompt,
            "n_gen": spec.n_gen,
            "depth": 0,
            "n_kv": spec.n_kv,
            "reps": len(self.gen_ns),
            # llama-batched-bench's S_TG: generated tokens of all sequences per second of generation
            "tps_mean": round(mean, 3),
            "tps_std": _stdev(gen_tps),
            "samples_tps": [round(x, 3) for x in gen_tps],
            "tps_per_sequence": round(mean / spec.sequences, 3),
            # S_PP: prompt tokens of all sequences per second of prompt processing (None: -p 0)
            "pp_tps_mean": round(statistics.fmean(pp_tps), 3) if pp_tps else None,
            "pp_tps_std": _stdev(pp_tps) if pp_tps else None,
            "pp_samples_tps": [round(x, 3) for x in pp_tps],
            # S: every token (prompts and generated) per second of the whole test
            "total_tps_mean": round(statistics.fmean(all_tps), 3),
            "t_pp_s": round(statistics.fmean(self.prompt_ns) / 1e9, 6),
            "t_tg_s": round(statistics.fmean(self.gen_ns) / 1e9, 6),
            "predicted_tps": None,
            "thermal": self.heat.to_json(),
        }


def _stdev(values: list[float]) -> float:
    return round(statistics.stdev(values), 3) if len(values) > 1 else 0.0


ProgressFn = Callable[[str, int, int], None]  # (label, done, total)


def measure_test(bench_ctx: Any, spec: TestSpec, reps: int) -> list[int]:
    """llama-bench's loop for one test: warm-up, then `reps` timed repetitions on an empty cache."""
    bench_ctx.set_threads(spec.threads)
    bench_ctx.clear()
    if spec.n_prompt:
        bench_ctx.prompt(spec.n_prompt)
    if spec.n_gen:
        bench_ctx.generate(1)
    samples: list[int] = []
    for _ in range(reps):
        bench_ctx.clear()
        if spec.depth:
            bench_ctx.prompt(spec.depth)  # the context already there: untimed
        started = time.perf_counter_ns()
        if spec.n_prompt:
            bench_ctx.prompt(spec.n_prompt)
        if spec.n_gen:
            bench_ctx.generate(spec.n_gen)
        samples.append(time.perf_counter_ns() - started)
    return samples


def measure_parallel(batched: Any, spec: ParallelSpec, reps: int) -> tuple[list[int], list[int]]:
    """llama-batched-bench's test, `reps` times: each on an empty KV cache, the prompts of all
    sequences (one batch, in n_batch pieces) then n_gen steps of one batch with a token of each.
    One untimed generation-shaped step first warms the threads up for this batch shape."""
    batched.set_threads(spec.threads, spec.threads_batch)
    batched.warm_up_step(spec.sequences)
    prompt_ns: list[int] = []
    gen_ns: list[int] = []
    for _ in range(reps):
        batched.clear()
        batched.prepare_prompt(spec.n_prompt, spec.sequences)  # random tokens: untimed, as there
        started = time.perf_counter_ns()
        batched.prompt(spec.n_prompt, spec.sequences)
        prompted = time.perf_counter_ns()
        upcoming = batched.prepare_generation(spec.n_gen, spec.sequences)
        generating = time.perf_counter_ns()
        batched.generate(upcoming, spec.n_prompt, spec.sequences)
        ended = time.perf_counter_ns()
        prompt_ns.append(prompted - started)
        gen_ns.append(ended - generating)
    batched.clear()
    return prompt_ns, gen_ns


def cool_down(probe: heat.HeatProbe, seconds: float, target_c: float | None, say: Callable[[str], None]) -> None:
    """Sleep `seconds`, then (if asked) until the hottest zone is below `target_c` (at most 10 min)."""
    if seconds > 0:
        time.sleep(seconds)
    if target_c is None:
        return
    now = probe.celsius()
    if now is None:
        return
    deadline = time.monotonic() + COOL_TO_TIMEOUT_S
    if now >= target_c:
        say(f"cooling down: {now:.1f} C, waiting for {target_c:.0f} C")
    while now is not None and now >= target_c:
        if time.monotonic() > deadline:
            say(f"still {now:.1f} C after {COOL_TO_TIMEOUT_S / 60:.0f} minutes; going on")
            return
        time.sleep(2)
        now = probe.celsius()


def soak(bench_ctx: Any, threads: int, duration_s: float, probe: heat.HeatProbe,
         progress: ProgressFn | None = None) -> dict[str, Any]:
    """Generate continuously for `duration_s`; a t/s, temperature and frequency sample per window.

    The context is emptied every `n_ctx / 2` tokens so depth stays small and the windows compare.
    """
    bench_ctx.set_threads(threads)
    bench_ctx.clear()
    bench_ctx.generate(1)
    restart_every = max(bench_ctx.engine.n_ctx // 2, SOAK_CHUNK)
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    window_start, window_tokens, in_context, total_tokens = started, 0, 0, 0
    while True:
        if in_context + SOAK_CHUNK > restart_every:
            bench_ctx.clear()  # the clear is outside the window's timed tokens but inside its time:
            in_context = 0     # a cost generation pays too, tiny next to SOAK_WINDOW_S
        bench_ctx.generate(SOAK_CHUNK)
        in_context += SOAK_CHUNK
        window_tokens += SOAK_CHUNK
        now = time.perf_counter()
        if now - window_start >= SOAK_WINDOW_S or now - started >= duration_s:
            freq = probe.mean_freq_khz()
            samples.append({
                "t_s": round(now - started, 1),
                "tps": round(window_tokens / (now - window_start), 3),
                "tokens": window_tokens,
                "temp_c": probe.celsius(),
                "freq_mhz": round(freq / 1000.0, 1) if freq else None,
            })
            total_tokens += window_tokens
            window_start, window_tokens = now, 0
            if progress:
                progress("soak", int(min(now - started, duration_s)), int(duration_s))
        if now - started >= duration_s:
            break
    return summarize_soak(samples, duration_s, total_tokens)


def summarize_soak(samples: list[dict[str, Any]], duration_s: float, total_tokens: int) -> dict[str, Any]:
    """First-minute vs sustained t/s (sustained: the last quarter of the run, at most 5 minutes)."""

    def rate(chosen: list[dict[str, Any]]) -> float | None:
        if not chosen:
            return None
        seconds = sum(s["tokens"] / s["tps"] for s in chosen if s["tps"] > 0)
        return round(sum(s["tokens"] for s in chosen) / seconds, 3) if seconds else None

    elapsed = samples[-1]["t_s"] if samples else 0.0
    first = [s for s in samples if s["t_s"] <= 60.0] or samples[:1]
    tail_s = min(300.0, elapsed / 4)
    sustained = [s for s in samples if s["t_s"] > elapsed - tail_s] or samples[-1:]
    first_tps, sustained_tps = rate(first), rate(sustained)
    temps = [s["temp_c"] for s in samples if s["temp_c"] is not None]
    return {
        "duration_s": round(duration_s, 1),
        "tokens": total_tokens,
        "first_minute_tps": first_tps,
        "sustained_tps": sustained_tps,
        "sustained_window_s": round(tail_s, 1),
        "change_pct": round(100.0 * (sustained_tps / first_tps - 1), 1) if first_tps and sustained_tps else None,
        "temp_max_c": max(temps) if temps else None,
        "samples": samples,
    }


# --------------------------------------------------------------------------------------------------
# The report and the run
# --------------------------------------------------------------------------------------------------


# What a report keeps of `detect --json`: enough to tell devices apart and compare them.
DEVICE_KEYS = ("board", "soc", "arch", "cpu_model", "cpu_count", "big_cores", "mem_total_bytes", "clusters")
CLUSTER_KEYS = ("name", "cpus", "max_freq_khz")


def device_json(device: Device) -> dict[str, Any]:
    data = device.to_json()
    data["clusters"] = [{key: cluster[key] for key in CLUSTER_KEYS} for cluster in data["clusters"]]
    return {key: data[key] for key in DEVICE_KEYS}


@dataclass
class BenchReport:
    """One `edgellm bench` run; `to_json()` is the `--json` schema (SCHEMA), in this field order.

    The parts other tools read field by field stay JSON objects: `device` (DEVICE_KEYS), `results`
    (one TestResult/ParallelResult.to_json() per test), `thermal`, `soak` and `parallel`.
    """

    schema: str
    edgellm_version: str
    created: str
    synthetic: bool
    model: str
    model_path: str
    model_size_bytes: int
    quant: str
    device: dict[str, Any]
    profile: str
    cores_choice: str
    cores: list[int]
    n_ctx: int
    n_batch: int
    n_ubatch: int
    kv_type: str
    flash_attn: bool
    plan_threads: int
    plan_threads_batch: int
    predicted_tg_tps: float | None
    llama_cpp_system_info: str
    load_s: float
    ttft_s: float | None
    peak_rss_bytes: int
    results: list[dict[str, Any]]
    thermal: dict[str, Any]
    soak: dict[str, Any] | None = None  # --duration only
    parallel: dict[str, Any] | None = None  # --parallel only
    devices: list[dict[str, Any]] | None = None  # --rpc only: the plan's split (local, then each worker)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("soak", "parallel", "devices"):  # absent, not null, when not measured
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchReport:
        """A report this edgellm wrote (a cores sweep's child process): unknown keys are a TypeError."""
        return cls(**data)


def parse_cpu_list(text: str) -> list[int]:
    """'4-7' or '0,2,4' -> CPU ids (the kernel's CPU-list format, as hardware reads it)."""
    cpus = sysfs.parse_cpu_list(text)
    if not cpus:
        raise UsageError(f"--cores {text!r}: expected big, all, or CPU ids like 4-7 or 0,2")
    return cpus


def resolve_cores(choice: str | None, device: Any, plan_cores: list[int]) -> tuple[list[int], str]:
    """The CPUs to pin to ([] = no pinning) and how to describe them."""
    if choice is None:
        return plan_cores, "profile"
    if choice == "all":
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        return [], f"all ({len(allowed) or device.cpu_count} CPUs, llama.cpp's default)"
    if choice == "big":
        return list(device.big_cores or plan_cores), "big"
    cpus = parse_cpu_list(choice)
    online = set(range(device.cpu_count)) | {c for cl in device.clusters for c in cl.cpus}
    missing = [c for c in cpus if online and c not in online]
    if missing:
        raise UsageError(f"--cores {choice}: CPU {missing[0]} is not online here", hint="edgellm detect")
    return cpus, choice


def run(config: BenchConfig, progress: ProgressFn | None = None, say: Callable[[str], None] = lambda _: None,
        notices: Notices = QUIET) -> BenchReport:
    """Load the model once, run every test (or the soak, or the --parallel tests) and return the report."""

    if bool(config.model) == bool(config.synthetic):
        raise UsageError("pass either -m FILE.gguf or --synthetic NAME", hint="edgellm bench --synthetic deepseek-r1-1.5b")
    model_spec = config.model or str(synthetic_model_path(config.synthetic or "", announce=say))
    sequences = max(config.parallel) if config.parallel else 1
    if config.parallel:
        # Every sequence needs its prompt and its generated tokens; the planner sizes the KV cache
        # for `sequences` slots of that (n_ctx is their total), as for serve --parallel.
        parallel_tests = config.parallel_tests(1, 1)  # thread counts do not change the context needed
        per_sequence = max(t.n_prompt + t.n_gen for t in parallel_tests)
        needed = sequences * per_sequence
        slot_ctx = max(per_sequence, 64)
        biggest_batch = max([t.sequences * t.n_prompt for t in parallel_tests] + [sequences])
        too_small_hint = "use smaller -p/-n/--parallel values or a larger --mem-budget"
    else:
        provisional = config.tests(1, 1)  # thread counts do not change the context needed
        soak_ctx = 2048 if config.duration_s else 0
        needed = slot_ctx = max([t.context_needed for t in provisional] + [soak_ctx, 64])
        biggest_batch = max([t.n_prompt for t in provisional] + [t.depth for t in provisional] + [1])
        too_small_hint = "use smaller -p/-n/--depth values or a larger --mem-budget"
    n_ctx = pad_context(slot_ctx)  # llama.cpp pads the KV cache anyway
    options = PlanOptions(profile=config.profile, ctx=n_ctx, mem_budget=config.mem_budget,
                          threads=None, sysroot=config.sysroot, parallel=sequences,
                          rpc=[parse_endpoint(e) for e in config.rpc], notices=notices)
    prepared = prepare(model_spec, options, loading=True)
    plan = prepared.plan
    if plan.n_ctx < needed:
        what = f"{sequences} sequences of {needed // sequences} tokens need" if config.parallel else "the tests need"
        raise PlanError(f"{what} {needed} tokens of context but only {plan.n_ctx} fit", hint=too_small_hint)
    cores, cores_label = resolve_cores(config.cores, prepared.device, plan.cores)
    plan = dataclasses.replace(
        plan, cores=cores, n_batch=max(plan.n_batch, min(biggest_batch, 2048, plan.n_ctx)),
    )
    engine = open_model(dataclasses.replace(prepared, plan=plan), options, sequences=sequences).engine
    try:
        pinned = engine.pinned_cores or (cores if cores else [])
        probe = heat.HeatProbe(config.sysroot, pinned or None)
        results: list[Any] = []  # TestResult, or ParallelResult with --parallel
        soak_report = None
        parallel_info = None
        thermal_start = probe.celsius()
        throttled_start = probe.throttled()
        if config.parallel:
            from edgellm.runtime.batched_bench import BatchedBench  # noqa: PLC0415  (only for --parallel)

            specs = config.parallel_tests(plan.threads, plan.threads_batch)
            batched = BatchedBench(engine, max_sequences=sequences,
                                   max_prompt=max(t.n_prompt for t in specs))
            bench_ctx = batched.base
            parallel_info = {
                "sequences": list(config.parallel),
                "shared_prompt": False,
                "kv_unified": batched.kv_unified,
                "n_seq_max": batched.n_seq_max,
                "method": "llama-batched-bench",
            }
            results = _run_parallel_tests(batched, specs, config, probe, pinned, progress, say)
        elif config.duration_s:
            bench_ctx = runtime.BenchContext(engine)
            threads = (config.threads or [plan.threads])[0]
            with HeatSampler(probe) as sampler:
                soak_report = soak(bench_ctx, threads, config.duration_s, probe, progress)
            results = [TestResult(TestSpec(0, soak_report["tokens"], 0, threads), pinned, [], sampler.record,
                                  plan.predicted_tg_tps)]
        else:
            bench_ctx = runtime.BenchContext(engine)
            results = _run_tests(bench_ctx, config, plan, probe, pinned, progress, say)
            if config.cores is None and not plan.rpc:  # the plan's own cores, this board alone: what plan predicts
                _record(prepared, plan, results, say)
        ttft_s = _time_to_first_token(engine, bench_ctx, config.prompts[0] if config.prompts[0] > 0 else 32)
        info = native.system_info()
        return BenchReport(
            schema=SCHEMA,
            edgellm_version=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # A synthetic file passed with -m is still synthetic: the builder always names it so.
            synthetic=bool(config.synthetic) or "synthetic" in (prepared.model.name or "").lower(),
            model=prepared.model.name or Path(model_spec).name,
            model_path=str(prepared.model.path),
            model_size_bytes=prepared.model.file_size,
            quant=prepared.model.quant,
            device=device_json(prepared.device),
            profile=prepared.profile.name,
            cores_choice=cores_label,
            cores=pinned,
            n_ctx=engine.n_ctx,
            n_batch=bench_ctx.n_batch,
            n_ubatch=bench_ctx.n_ubatch,
            kv_type=plan.kv_type,
            flash_attn=plan.flash_attn,
            plan_threads=plan.threads,
            plan_threads_batch=plan.threads_batch,
            predicted_tg_tps=plan.predicted_tg_tps,
            llama_cpp_system_info=info,
            load_s=round(engine.load_s, 3),
            ttft_s=round(ttft_s, 4) if ttft_s is not None else None,
            peak_rss_bytes=native.peak_rss_bytes(),
            results=(
                [r.to_json() for r in results] if soak_report is None
                else [_soak_result_json(results[0], [s["tps"] for s in soak_report["samples"]], soak_report["duration_s"])]
            ),
            thermal=_thermal_summary(probe, thermal_start, throttled_start, results),
            soak=soak_report,
            parallel=parallel_info,
            devices=[dataclasses.asdict(d) for d in plan.devices] if plan.rpc else None,
        )
    finally:
        engine.close()


def _record(prepared: Any, plan: Any, results: list[TestResult], say: Callable[[str], None]) -> None:
    """Keep what generation and prompt speed this device reached (edgellm.store.measured), so
    that `plan` predicts from the measurement instead of the profile's estimate."""
    model = prepared.model
    tg = [r for r in results if r.spec.n_gen and not r.spec.n_prompt and not r.spec.depth and r.spec.threads == plan.threads]
    pp = [r for r in results if r.spec.n_prompt and not r.spec.n_gen and not r.spec.depth and r.spec.threads == plan.threads_batch]
    if not tg or not model.bytes_per_token:
        return
    tg_tps = statistics.fmean(tps for r in tg for tps in r.samples_tps)
    bandwidth = float(f"{tg_tps * model.bytes_per_token / 1e9:.4g}")  # GB/s; 4 digits keep a tiny model's too
    shape = measurements.shape_of(model.arch, model.n_params, model.quant)
    pp_tps = {shape: round(statistics.fmean(tps for r in pp for tps in r.samples_tps), 2)} if pp else {}
    record = measurements.Measured(bandwidth, round(tg_tps, 2), model.name or shape, plan.threads,
                                   time.strftime("%Y-%m-%dT%H:%M:%S%z"), pp_tps)
    try:
        measurements.save(prepared.device.identity, record)
    except OSError as exc:
        say(f"could not keep the measurement for plan: {exc.strerror or exc}")
        return
    say(f"kept for plan: {bandwidth:.3g} GB/s effective bandwidth on this device (plan predicted "
        f"{plan.predicted_tg_tps if plan.predicted_tg_tps is not None else 'no'} tok/s for this model, bench measured "
        f"{tg_tps:.1f}); edgellm bench --forget drops it")


def _run_tests(bench_ctx: Any, config: BenchConfig, plan: Any, probe: heat.HeatProbe, pinned: list[int],
               progress: ProgressFn | None, say: Callable[[str], None]) -> list[Any]:
    """The llama-bench tests, in order, heat sampled per test."""
    def one(spec: TestSpec, heat: HeatRecord) -> TestResult:
        samples_ns = measure_test(bench_ctx, spec, config.reps)
        predicted = plan.predicted_tg_tps if spec.n_gen and not spec.n_prompt and not spec.depth else None
        return TestResult(spec, pinned, samples_ns, heat, predicted)

    return _each_test(config.tests(plan.threads, plan.threads_batch), lambda spec: spec.threads, one,
                      config, probe, progress, say)


def _run_parallel_tests(batched: Any, specs: list[ParallelSpec], config: BenchConfig, probe: heat.HeatProbe,
                        pinned: list[int], progress: ProgressFn | None, say: Callable[[str], None]) -> list[Any]:
    """The --parallel tests (llama-batched-bench's), in order, heat sampled per test."""
    def one(spec: ParallelSpec, heat: HeatRecord) -> ParallelResult:
        prompt_ns, gen_ns = measure_parallel(batched, spec, config.reps)
        return ParallelResult(spec, pinned, prompt_ns, gen_ns, heat)

    return _each_test(specs, lambda spec: spec.generation_threads, one, config, probe, progress, say)


def _each_test(specs: list[Any], threads_of: Callable[[Any], int], run_one: Callable[[Any, HeatRecord], Any],
               config: BenchConfig, probe: heat.HeatProbe, progress: ProgressFn | None, say: Callable[[str], None]) -> list[Any]:
    """Run `run_one` for each test in order: cool-down between tests, progress, heat sampled
    while it runs (`run_one` gets the sampler's record, which the sampler completes as it exits)."""
    results: list[Any] = []
    total = len(specs) * config.reps
    done = 0
    for index, spec in enumerate(specs):
        if index and (config.cooldown_s or config.cool_to_c is not None):
            cool_down(probe, config.cooldown_s, config.cool_to_c, say)
        label = f"{spec.name} t{threads_of(spec)}"
        if progress:
            progress(label, done, total)
        with HeatSampler(probe) as sampler:
            result = run_one(spec, sampler.record)
        results.append(result)
        done += config.reps
        if progress:
            progress(label, done, total)
    return results


def _soak_result_json(result: TestResult, window_tps: list[float], duration_s: float) -> dict[str, Any]:
    return {
        "test": f"tg soak {duration_s:g}s",  # named by duration, so soaks on several devices line up
        "threads": result.spec.threads,
        "cores": result.cores,
        "n_prompt": 0,
        "n_gen": result.spec.n_gen,
        "depth": 0,
        "reps": len(window_tps),
        "tps_mean": round(statistics.fmean(window_tps), 3) if window_tps else 0.0,
        "tps_std": round(statistics.stdev(window_tps), 3) if len(window_tps) > 1 else 0.0,
        "samples_tps": window_tps,
        "predicted_tps": result.predicted_tps,
        "thermal": result.heat.to_json(),
    }


def _time_to_first_token(engine: Any, bench_ctx: Any, n_prompt: int) -> float | None:
    """A real request's first token: a prompt of n_prompt tokens through Engine.generate_tokens."""

    n_prompt = min(n_prompt, engine.n_ctx - 2)
    if n_prompt < 1:
        return None
    bench_ctx.clear()
    import numpy as np  # noqa: PLC0415  (numpy costs ~0.1 s to import; only the first-token test needs it)

    tokens = np.random.default_rng(1).integers(0, bench_ctx.n_vocab, n_prompt).tolist()
    if bench_ctx.bos is not None:
        tokens[0] = bench_ctx.bos
    stats = Response(engine.generate_tokens(tokens, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))).finish().stats
    bench_ctx.clear()
    return stats.ttft_s if stats else None


def _thermal_summary(probe: heat.HeatProbe, start_c: float | None, throttled_start: int | None, results: list[TestResult]) -> dict[str, Any]:
    maxima = [r.heat.temp_max_c for r in results if r.heat.temp_max_c is not None]
    drops = [r.heat.freq_drop_pct for r in results if r.heat.freq_drop_pct is not None]
    throttled_end = probe.throttled()
    return {
        "sensors": probe.has_temperature,
        "temp_start_c": start_c,
        "temp_end_c": probe.celsius(),
        "temp_max_c": max(maxima) if maxima else None,
        "freq_drop_max_pct": max(drops) if drops else None,
        "throttled_start": heat.decode_throttled(throttled_start) if throttled_start is not None else None,
        "throttled_end": heat.decode_throttled(throttled_end) if throttled_end is not None else None,
    }


def run_cores_sweep(config: BenchConfig, choices: list[str], say: Callable[[str], None]) -> BenchReport:
    """One child process per cores choice (llama.cpp's worker threads keep the affinity they were
    born with, so a second pinning in one process would not take), merged into one report."""
    reports: list[BenchReport] = []
    for choice in choices:
        say(f"cores {choice}: running in a child process")
        child = dataclasses.replace(config, cores=choice)
        proc = subprocess.run(
            [sys.executable, "-m", "edgellm.bench.runner"],
            input=json.dumps(dataclasses.asdict(child)), capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgeLLMError(f"the benchmark on cores {choice} failed: {last}")
        reports.append(BenchReport.from_json(json.loads(proc.stdout)))
    return dataclasses.replace(
        reports[0],
        results=[dict(row, cores_choice=r.cores_choice) for r in reports for row in r.results],
        cores_choice=", ".join(r.cores_choice for r in reports),
        peak_rss_bytes=max(r.peak_rss_bytes for r in reports),
    )




# --------------------------------------------------------------------------------------------------
# Child-process entry point for cores sweeps: BenchConfig JSON on stdin, report JSON on stdout
# --------------------------------------------------------------------------------------------------


def _child_main() -> int:
    config = BenchConfig(**json.loads(sys.stdin.read()))
    try:
        report = run(config)
    except EdgeLLMError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 1
    sys.stdout.write(json.dumps(report.to_json()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
