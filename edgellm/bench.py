"""`edgellm bench`: prompt and generation speed measured the way llama.cpp's llama-bench does it,
plus what edge users need: heat and throttling, memory, the profile's choice against alternatives,
long soaks, and full-size synthetic models that answer "how fast would it be here?" before a download.

Measurement (as llama-bench): per test one warm-up, then `reps` repetitions, each on an empty KV
cache (after `depth` untimed tokens when asked), timing pp (a batch of random tokens) and tg (random
tokens decoded one at a time, end-of-sequence ignored). t/s per repetition, then mean and sample
standard deviation. The decoding itself is edgellm.runtime.BenchContext; this module plans the tests,
samples heat, and writes the report (JSON is the source; table, CSV and markdown are views of it).

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

import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgellm import __version__, hardware
from edgellm.errors import EdgeLLMError, ModelNotFoundError, PlanError, UsageError
from edgellm.units import parse_duration  # noqa: F401  (bench --duration; the parser lives with the units)

DEFAULT_PROMPT = 512
DEFAULT_GEN = 128
DEFAULT_REPS = 5
SOAK_WINDOW_S = 10.0  # one t/s and temperature sample per window during a soak
SOAK_CHUNK = 32  # tokens decoded between clock checks during a soak
HEAT_INTERVAL_S = 0.5
COOL_TO_TIMEOUT_S = 600.0
COOL_TO_RANGE_C = (1.0, 150.0)  # below, no CPU gets there under load; above, every sensor already is
MAX_REPORT_BYTES = 16 * 1024**2  # a report with hundreds of tests is ~1 MiB
SCHEMA = "edgellm-bench/1"
MAX_LIST_VALUES = 4096  # -p/-n/-t/--depth lists: far more tests than anyone can wait for
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: a context holds at most this many sequences

# --------------------------------------------------------------------------------------------------
# Argument parsing helpers
# --------------------------------------------------------------------------------------------------


def parse_int_list(text: str, option: str, *, minimum: int = 0) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; also accepts llama-bench's 'first-last+step' ranges ('1-8+1')."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?:\+(\d+))?)?", part)
        if not match:
            raise UsageError(f"{option} {text!r}: expected numbers separated by commas, e.g. {option} 1,2,4")
        first, last, step = int(match.group(1)), match.group(2), match.group(3)
        if step is not None and int(step) == 0:
            raise UsageError(f"{option} {part!r}: a range's step must be at least 1")
        span = range(first, int(last) + 1, int(step or 1)) if last else range(first, first + 1)
        if len(values) + len(span) > MAX_LIST_VALUES:  # sized before expanding: 1-4000000000 is 4e9 ints
            raise UsageError(f"{option} {text!r}: more than {MAX_LIST_VALUES} values")
        values.extend(span)
    if not values or min(values) < minimum:
        raise UsageError(f"{option} {text!r}: every value must be at least {minimum}")
    return list(dict.fromkeys(values))


def parse_parallel(text: str) -> list[int]:
    """--parallel '1,2,4' -> [1, 2, 4]: numbers of sequences decoded at once, 1 to MAX_SEQUENCES."""
    values = parse_int_list(text, "--parallel", minimum=1)
    if max(values) > MAX_SEQUENCES:
        raise UsageError(f"--parallel {text!r}: at most {MAX_SEQUENCES} sequences (llama.cpp's limit)",
                         hint="e.g. --parallel 1,2,4")
    return values


def parse_cpu_list(text: str) -> list[int]:
    """'4-7' or '0,2,4' -> CPU ids (the kernel's CPU-list format, as hardware reads it)."""
    cpus = hardware.parse_cpu_list(text)
    if not cpus:
        raise UsageError(f"--cores {text!r}: expected big, all, or CPU ids like 4-7 or 0,2")
    return cpus


# --------------------------------------------------------------------------------------------------
# Synthetic models
# --------------------------------------------------------------------------------------------------


def _synthetic_shape(name: str) -> Any:
    """A catalog model's architecture, or the test suite's tiny shape."""
    from edgellm import catalog, synthetic

    if name == "tiny":
        return synthetic.TINY
    entry = catalog.find_entry(name)
    return entry.shape if entry is not None else None


def synthetic_spec(spec: str) -> tuple[str, str, Any]:
    """'deepseek-r1-7b:Q4_K_M' -> (name, quant, ModelShape); the quant defaults to Q4_K_M."""
    from edgellm import synthetic

    name, _, quant = spec.partition(":")
    name, quant = name.strip().lower(), (quant.strip() or "Q4_K_M").upper()
    shape = _synthetic_shape(name)
    if shape is None:
        from edgellm import catalog

        raise ModelNotFoundError(
            f"no synthetic shape for '{name}'",
            hint="edgellm bench --synthetic NAME, with a name from `edgellm models`: " + ", ".join(sorted(catalog.load_catalog())),
        )
    try:
        synthetic.quant_types(shape, quant)
    except ValueError as exc:
        raise UsageError(f"--synthetic {spec}: {exc}", hint=f"edgellm bench --synthetic {name}:Q4_K_M") from None
    return name, quant, shape


def synthetic_model_path(spec: str, *, cache_dir: Path | None = None, announce: Callable[[str], None] | None = None) -> Path:
    """Build (once) and return the cached synthetic GGUF for `spec`, e.g. 'deepseek-r1-1.5b:Q4_K_S'."""
    from edgellm import synthetic
    from edgellm.profiles import edgellm_home

    name, quant, shape = synthetic_spec(spec)
    directory = cache_dir or edgellm_home() / "synthetic"
    path = directory / f"{name}-{quant}-synthetic.gguf"
    label = f"{name} (synthetic)"
    expected = synthetic.expected_file_size(shape, quant, name=label)
    if path.is_file() and path.stat().st_size == expected:
        return path
    free = shutil.disk_usage(directory if directory.exists() else directory.anchor or "/").free
    if free < expected:
        from edgellm.units import format_size

        raise EdgeLLMError(
            f"a synthetic {name} {quant} needs {format_size(expected)} on disk but {directory} has {format_size(free)} free",
            hint="free some space, or point EDGELLM_HOME at a larger disk",
        )
    directory.mkdir(parents=True, exist_ok=True)
    if announce:
        announce(f"building synthetic {name} {quant} ({expected / 1e9:.2f} GB, once) in {path}")
    partial = path.with_suffix(".partial")
    try:
        synthetic.write_synthetic_model(partial, shape, quant, name=label)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# Heat: thermal zones, CPU frequency, Raspberry Pi throttling
# --------------------------------------------------------------------------------------------------

# Bits of the Raspberry Pi firmware's get_throttled word (vcgencmd get_throttled).
THROTTLE_BITS = {
    0: "under-voltage",
    1: "arm frequency capped",
    2: "throttled",
    3: "soft temperature limit",
    16: "under-voltage has occurred",
    17: "arm frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}


def decode_throttled(value: int) -> list[str]:
    return [text for bit, text in THROTTLE_BITS.items() if value & (1 << bit)]


class HeatProbe:
    """Reads temperatures, CPU frequencies and Pi throttling from /sys (below `sysroot`)."""

    def __init__(self, sysroot: str | Path = "/", cpus: Sequence[int] | None = None) -> None:
        root = Path(sysroot)
        self.sysroot = root
        self._temp_files = sorted((root / "sys/class/thermal").glob("thermal_zone*/temp"))
        cpufreq = root / "sys/devices/system/cpu"
        wanted = set(cpus) if cpus else None
        self._freq_files = [
            path for path in sorted(cpufreq.glob("cpu[0-9]*/cpufreq/scaling_cur_freq"))
            if wanted is None or int(path.parent.parent.name[3:]) in wanted
        ]
        self._throttled_file = root / "sys/devices/platform/soc/soc:firmware/get_throttled"
        self._vcgencmd = shutil.which("vcgencmd") if root.resolve() == Path("/") else None

    @property
    def has_temperature(self) -> bool:
        return bool(self._temp_files)

    def celsius(self) -> float | None:
        """The hottest zone now (a CPU under load is the hottest thing on these boards)."""
        temps = [v / 1000.0 for v in (_read_int(p) for p in self._temp_files) if v is not None and v > -50_000]
        return round(max(temps), 1) if temps else None

    def mean_freq_khz(self) -> float | None:
        values = [v for v in (_read_int(p) for p in self._freq_files) if v]
        return sum(values) / len(values) if values else None

    def throttled(self) -> int | None:
        """The firmware's throttle word, from sysfs (newer Pi kernels) or `vcgencmd get_throttled`."""
        value = _read_text(self._throttled_file)
        if value is None and self._vcgencmd:
            try:
                out = subprocess.run([self._vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=5, check=False).stdout
            except (OSError, subprocess.SubprocessError):
                out = ""
            value = out.partition("=")[2] or None
        try:
            return int(value.strip(), 16) if value else None
        except ValueError:
            return None


def _read_text(path: Path) -> str | None:
    return hardware.read_text(path.parent, path.name)


def _read_int(path: Path) -> int | None:
    return hardware.read_int(path.parent, path.name)


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

    def __init__(self, probe: HeatProbe, interval_s: float = HEAT_INTERVAL_S) -> None:
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
        record.throttled = decode_throttled(throttled) if throttled else []


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
        all_tps = [1e9 * spec.n_kv / (p + g) for p, g in zip(self.prompt_ns, self.gen_ns)]
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


def cool_down(probe: HeatProbe, seconds: float, target_c: float | None, say: Callable[[str], None]) -> None:
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


def soak(bench_ctx: Any, threads: int, duration_s: float, probe: HeatProbe,
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
# The run
# --------------------------------------------------------------------------------------------------


def _device_json(device: Any) -> dict[str, Any]:
    return {
        "board": device.board,
        "soc": device.soc,
        "arch": device.arch,
        "cpu_model": device.cpu_model,
        "cpu_count": device.cpu_count,
        "big_cores": device.big_cores,
        "mem_total_bytes": device.mem_total_bytes,
        "clusters": [{"name": c.name, "cpus": c.cpus, "max_freq_khz": c.max_freq_khz} for c in device.clusters],
    }


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


def run(config: BenchConfig, progress: ProgressFn | None = None, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Load the model once, run every test (or the soak, or the --parallel tests) and return the JSON report."""
    from edgellm import runtime
    from edgellm.session import PlanOptions, prepare

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
    n_ctx = -(-slot_ctx // 256) * 256  # llama.cpp pads the KV cache to 256 cells anyway
    options = PlanOptions(profile=config.profile, ctx=n_ctx, mem_budget=config.mem_budget,
                          threads=None, sysroot=config.sysroot, parallel=sequences)
    prepared = prepare(model_spec, options, loading=True)
    plan = prepared.plan
    if plan.n_ctx < needed:
        what = f"{sequences} sequences of {needed // sequences} tokens need" if config.parallel else "the tests need"
        raise PlanError(f"{what} {needed} tokens of context but only {plan.n_ctx} fit", hint=too_small_hint)
    cores, cores_label = resolve_cores(config.cores, prepared.device, plan.cores)
    plan = dataclasses.replace(
        plan, cores=cores, n_batch=max(plan.n_batch, min(biggest_batch, 2048, plan.n_ctx)),
    )
    engine = runtime.Engine(prepared.model, plan, sequences=sequences)
    try:
        pinned = engine.pinned_cores or (cores if cores else [])
        probe = HeatProbe(config.sysroot, pinned or None)
        results: list[Any] = []  # TestResult, or ParallelResult with --parallel
        soak_report = None
        parallel_info = None
        thermal_start = probe.celsius()
        throttled_start = probe.throttled()
        if config.parallel:
            from edgellm.runtime.batched_bench import BatchedBench

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
        ttft_s = _time_to_first_token(engine, bench_ctx, config.prompts[0] if config.prompts[0] > 0 else 32)
        info = runtime.system_info()
        report: dict[str, Any] = {
            "schema": SCHEMA,
            "edgellm_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # A synthetic file passed with -m is still synthetic: the builder always names it so.
            "synthetic": bool(config.synthetic) or "synthetic" in (prepared.model.name or "").lower(),
            "model": prepared.model.name or Path(model_spec).name,
            "model_path": str(prepared.model.path),
            "model_size_bytes": prepared.model.file_size,
            "quant": prepared.model.quant,
            "device": _device_json(prepared.device),
            "profile": prepared.profile.name,
            "cores_choice": cores_label,
            "cores": pinned,
            "n_ctx": engine.n_ctx,
            "n_batch": bench_ctx.n_batch,
            "n_ubatch": bench_ctx.n_ubatch,
            "kv_type": plan.kv_type,
            "flash_attn": plan.flash_attn,
            "plan_threads": plan.threads,
            "plan_threads_batch": plan.threads_batch,
            "predicted_tg_tps": plan.predicted_tg_tps,
            "llama_cpp_system_info": info,
            "load_s": round(engine.load_s, 3),
            "ttft_s": round(ttft_s, 4) if ttft_s is not None else None,
            "peak_rss_bytes": runtime.peak_rss_bytes(),
            "results": (
                [r.to_json() for r in results] if soak_report is None
                else [_soak_result_json(results[0], [s["tps"] for s in soak_report["samples"]], soak_report["duration_s"])]
            ),
            "thermal": _thermal_summary(probe, thermal_start, throttled_start, results),
        }
        if soak_report is not None:
            report["soak"] = soak_report
        if parallel_info is not None:
            report["parallel"] = parallel_info
        return report
    finally:
        engine.close()


def _run_tests(bench_ctx: Any, config: BenchConfig, plan: Any, probe: HeatProbe, pinned: list[int],
               progress: ProgressFn | None, say: Callable[[str], None]) -> list[Any]:
    """The llama-bench tests, in order, heat sampled per test."""
    def one(spec: TestSpec, heat: HeatRecord) -> TestResult:
        samples_ns = measure_test(bench_ctx, spec, config.reps)
        predicted = plan.predicted_tg_tps if spec.n_gen and not spec.n_prompt and not spec.depth else None
        return TestResult(spec, pinned, samples_ns, heat, predicted)

    return _each_test(config.tests(plan.threads, plan.threads_batch), lambda spec: spec.threads, one,
                      config, probe, progress, say)


def _run_parallel_tests(batched: Any, specs: list[ParallelSpec], config: BenchConfig, probe: HeatProbe,
                        pinned: list[int], progress: ProgressFn | None, say: Callable[[str], None]) -> list[Any]:
    """The --parallel tests (llama-batched-bench's), in order, heat sampled per test."""
    def one(spec: ParallelSpec, heat: HeatRecord) -> ParallelResult:
        prompt_ns, gen_ns = measure_parallel(batched, spec, config.reps)
        return ParallelResult(spec, pinned, prompt_ns, gen_ns, heat)

    return _each_test(specs, lambda spec: spec.generation_threads, one, config, probe, progress, say)


def _each_test(specs: list[Any], threads_of: Callable[[Any], int], run_one: Callable[[Any, HeatRecord], Any],
               config: BenchConfig, probe: HeatProbe, progress: ProgressFn | None, say: Callable[[str], None]) -> list[Any]:
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
    from edgellm.response import Response
    from edgellm.runtime import SamplingParams

    n_prompt = min(n_prompt, engine.n_ctx - 2)
    if n_prompt < 1:
        return None
    bench_ctx.clear()
    import numpy as np

    tokens = np.random.default_rng(1).integers(0, bench_ctx.n_vocab, n_prompt).tolist()
    if bench_ctx.bos is not None:
        tokens[0] = bench_ctx.bos
    stats = Response(engine.generate_tokens(tokens, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))).finish().stats
    bench_ctx.clear()
    return stats.ttft_s if stats else None


def _thermal_summary(probe: HeatProbe, start_c: float | None, throttled_start: int | None, results: list[TestResult]) -> dict[str, Any]:
    maxima = [r.heat.temp_max_c for r in results if r.heat.temp_max_c is not None]
    drops = [r.heat.freq_drop_pct for r in results if r.heat.freq_drop_pct is not None]
    throttled_end = probe.throttled()
    return {
        "sensors": probe.has_temperature,
        "temp_start_c": start_c,
        "temp_end_c": probe.celsius(),
        "temp_max_c": max(maxima) if maxima else None,
        "freq_drop_max_pct": max(drops) if drops else None,
        "throttled_start": decode_throttled(throttled_start) if throttled_start is not None else None,
        "throttled_end": decode_throttled(throttled_end) if throttled_end is not None else None,
    }


def run_cores_sweep(config: BenchConfig, choices: list[str], say: Callable[[str], None]) -> dict[str, Any]:
    """One child process per cores choice (llama.cpp's worker threads keep the affinity they were
    born with, so a second pinning in one process would not take), merged into one report."""
    reports: list[dict[str, Any]] = []
    for choice in choices:
        say(f"cores {choice}: running in a child process")
        child = dataclasses.replace(config, cores=choice)
        proc = subprocess.run(
            [sys.executable, "-m", "edgellm.bench"],
            input=json.dumps(dataclasses.asdict(child)), capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgeLLMError(f"the benchmark on cores {choice} failed: {last}")
        reports.append(json.loads(proc.stdout))
    merged = dict(reports[0])
    merged["results"] = [dict(row, cores_choice=r["cores_choice"]) for r in reports for row in r["results"]]
    merged["cores_choice"] = ", ".join(r["cores_choice"] for r in reports)
    merged["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in reports)
    return merged


# --------------------------------------------------------------------------------------------------
# Views of the report: CSV, markdown, merge of several reports
# --------------------------------------------------------------------------------------------------

CSV_FIELDS = ("model", "quant", "synthetic", "device", "test", "threads", "cores", "n_prompt", "n_gen", "depth",
              "reps", "tps_mean", "tps_std", "predicted_tps", "temp_before_c", "temp_after_c", "temp_max_c",
              "freq_drop_pct", "throttled")


def device_label(device: dict[str, Any]) -> str:
    board, soc = device.get("board", "unknown"), device.get("soc", "unknown")
    if board not in ("", "unknown"):
        return board
    return soc if soc not in ("", "unknown") else str(device.get("cpu_model", "unknown"))


def model_label(report: dict[str, Any]) -> str:
    name = str(report.get("model", "?"))
    if report.get("synthetic") and "synthetic" not in name.lower():
        name += " (synthetic)"
    return f"{name} {report.get('quant', '')}".strip()


def _cores_text(cores: list[int]) -> str:
    if not cores:
        return "all"
    if len(cores) > 2 and cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


PARALLEL_CSV_FIELDS = ("model", "quant", "synthetic", "device", "test", "sequences", "threads", "threads_batch", "cores",
                       "n_prompt", "n_gen", "n_kv", "reps", "tps_mean", "tps_std", "tps_per_sequence", "pp_tps_mean",
                       "pp_tps_std", "total_tps_mean", "temp_before_c", "temp_after_c", "temp_max_c", "freq_drop_pct",
                       "throttled")


_PARALLEL_ROW_FIELDS = ("test", "sequences", "threads", "threads_batch", "n_prompt", "n_gen", "n_kv", "reps", "tps_mean",
                        "tps_std", "tps_per_sequence", "pp_tps_mean", "pp_tps_std", "total_tps_mean")


def is_parallel(report: dict[str, Any]) -> bool:
    """A --parallel report: its rows are llama-batched-bench's tests, not llama-bench's."""
    return bool(report.get("parallel"))


def _blank(value: Any) -> Any:
    return "" if value is None else value


def to_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    if is_parallel(report):
        writer = csv.DictWriter(buffer, fieldnames=PARALLEL_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in report["results"]:
            heat = row.get("thermal") or {}
            writer.writerow({
                "model": report["model"], "quant": report["quant"], "synthetic": str(report["synthetic"]).lower(),
                "device": device_label(report["device"]), "cores": _cores_text(row["cores"]),
                **{k: _blank(row.get(k)) for k in _PARALLEL_ROW_FIELDS},
                **{k: _blank(heat.get(k)) for k in ("temp_before_c", "temp_after_c", "temp_max_c", "freq_drop_pct")},
                "throttled": "; ".join(heat.get("throttled") or []),
            })
        return buffer.getvalue()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in report["results"]:
        heat = row.get("thermal") or {}
        writer.writerow({
            "model": report["model"], "quant": report["quant"], "synthetic": str(report["synthetic"]).lower(),
            "device": device_label(report["device"]), "test": row["test"], "threads": row["threads"],
            "cores": _cores_text(row["cores"]), "n_prompt": row["n_prompt"], "n_gen": row["n_gen"],
            "depth": row.get("depth", 0), "reps": row["reps"], "tps_mean": row["tps_mean"], "tps_std": row["tps_std"],
            "predicted_tps": row.get("predicted_tps") if row.get("predicted_tps") is not None else "",
            **{k: ("" if heat.get(k) is None else heat.get(k)) for k in ("temp_before_c", "temp_after_c", "temp_max_c", "freq_drop_pct")},
            "throttled": "; ".join(heat.get("throttled") or []),
        })
    return buffer.getvalue()


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _temp_text(heat: dict[str, Any]) -> str:
    if heat.get("temp_max_c") is None:
        return "-"
    return f"{heat.get('temp_before_c')}→{heat.get('temp_after_c')} (max {heat['temp_max_c']})"


def _mean_std(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.2f} ± {std or 0.0:.2f}"


def _heat_cells(heat: dict[str, Any]) -> list[str]:
    return [
        _temp_text(heat),
        f"{heat['freq_drop_pct']:.0f}%" if heat.get("freq_drop_pct") is not None else "-",
        ", ".join(heat.get("throttled") or []) or "-",
    ]


def result_headers(report: dict[str, Any]) -> list[str]:
    return PARALLEL_HEADERS if is_parallel(report) else RESULT_HEADERS


def result_rows(report: dict[str, Any]) -> list[list[str]]:
    """The cells of the per-test table shared by the terminal table and markdown."""
    if is_parallel(report):
        return [
            [
                row["test"], str(row["sequences"]), str(row["threads"]),
                row.get("cores_choice") or _cores_text(row["cores"]),
                _mean_std(row["tps_mean"], row["tps_std"]),
                f"{row['tps_per_sequence']:.2f}",
                _mean_std(row.get("pp_tps_mean"), row.get("pp_tps_std")),
                *_heat_cells(row.get("thermal") or {}),
            ]
            for row in report["results"]
        ]
    rows = []
    for row in report["results"]:
        heat = row.get("thermal") or {}
        predicted = row.get("predicted_tps")
        rows.append([
            row["test"], str(row["threads"]), row.get("cores_choice") or _cores_text(row["cores"]),
            f"{row['tps_mean']:.2f} ± {row['tps_std']:.2f}",
            f"{predicted:g}" if predicted else "-",
            _temp_text(heat),
            f"{heat['freq_drop_pct']:.0f}%" if heat.get("freq_drop_pct") is not None else "-",
            ", ".join(heat.get("throttled") or []) or "-",
        ])
    return rows


RESULT_HEADERS = ["test", "threads", "cores", "t/s", "predicted t/s", "temp °C", "freq drop", "throttled"]
# --parallel: generation t/s of all sequences together (S_TG) and of each, prompt t/s of all (S_PP)
PARALLEL_HEADERS = ["test", "seqs", "threads", "cores", "gen t/s (all)", "t/s each", "prompt t/s",
                    "temp °C", "freq drop", "throttled"]


def summary_lines(report: dict[str, Any]) -> list[str]:
    from edgellm.units import format_size

    lines = [
        f"model: {model_label(report)}, {format_size(report.get('model_size_bytes'))}"
        + (" — SYNTHETIC: random weights, real shapes and quant types; speed is the real model's, text is noise" if report.get("synthetic") else ""),
        (f"device: {device_label(report['device'])} ({report['device'].get('cpu_model')}, {report['device'].get('cpu_count')} CPUs),"
        f" profile {report['profile']}, cores {report.get('cores_choice')}"),
        (f"load {report['load_s']:.2f} s, first token {report['ttft_s'] if report['ttft_s'] is not None else '-'} s,"
        f" peak RSS {format_size(report['peak_rss_bytes'])}, n_ctx {report['n_ctx']}, batch {report['n_batch']}/{report['n_ubatch']},"
        f" KV {report['kv_type']}{', flash attention' if report['flash_attn'] else ''}"),
    ]
    thermal = report.get("thermal") or {}
    if not thermal.get("sensors"):
        lines.append("thermal: no temperature sensors found")
    soak_report = report.get("soak")
    if soak_report:
        change = soak_report.get("change_pct")
        lines.append(
            f"soak {soak_report['duration_s']:.0f} s: first minute {soak_report['first_minute_tps']} t/s,"
            f" sustained (last {soak_report['sustained_window_s']:.0f} s) {soak_report['sustained_tps']} t/s"
            + (f" ({change:+}%)" if change is not None else "")
        )
    if is_parallel(report):
        lines += parallel_summary_lines(report)
    lines.append(f"llama.cpp: {report.get('llama_cpp_system_info', '')}")
    return lines


def parallel_summary_lines(report: dict[str, Any]) -> list[str]:
    """How the --parallel numbers were measured, and the answer: how many sequences pay off."""
    info = report.get("parallel") or {}
    lines = [
        "parallel: as llama-batched-bench: per test, on an empty KV cache, one prompt of -p random tokens per"
        " sequence (not shared), then -n steps that each decode one token of every sequence in one batch;"
        " gen t/s (all) = sequences x n / generation time"
        + (f"; KV cache for {info.get('n_seq_max')} sequences, "
           + ("unified" if info.get("kv_unified") else "one stream each (llama-batched-bench's default)")
           if (info.get("n_seq_max") or 1) > 1 else "")
    ]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in report["results"]:
        groups.setdefault((row["n_prompt"], row["n_gen"], row.get("threads_batch"), row.get("cores_choice")), []).append(row)
    for rows in groups.values():
        if len(rows) < 2:
            continue
        best = max(rows, key=lambda r: r["tps_mean"])
        single = next((r for r in rows if r["sequences"] == 1), None)
        gain = f", {best['tps_mean'] / single['tps_mean']:.2f}x one sequence" if single and single["tps_mean"] else ""
        where = f"pp{best['n_prompt']}+tg{best['n_gen']}" if best["n_prompt"] else f"tg{best['n_gen']}"
        lines.append(
            f"most generation throughput ({where}, {best['threads']} thread{'s' if best['threads'] != 1 else ''}):"
            f" {best['sequences']} sequence{'s' if best['sequences'] != 1 else ''},"
            f" {best['tps_mean']:.2f} t/s in all, {best['tps_per_sequence']:.2f} t/s each{gain}"
        )
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    out = [f"**edgellm bench** {report['edgellm_version']}" + (" — synthetic model" if report.get("synthetic") else ""), ""]
    out += [f"- {line}" for line in summary_lines(report)]
    headers = result_headers(report)
    out += ["", _md_row(headers), _md_row(["---"] * len(headers))]
    out += [_md_row(cells) for cells in result_rows(report)]
    return "\n".join(out) + "\n"


# --- bench report FILE... -------------------------------------------------------------------------


def load_reports(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Read `edgellm bench --json` files, refusing (one line, naming the file) anything else:
    FIFOs and devices (only regular files are opened), huge files, non-JSON, the wrong shape."""
    hint = "make it with: edgellm bench -m MODEL --json > FILE"
    reports = []
    for path in paths:
        try:
            raw = hardware.read_regular_file(path, MAX_REPORT_BYTES + 1)
        except hardware.NotARegularFileError as exc:
            raise UsageError(f"{path}: is {exc.kind}, not a JSON file", hint=hint) from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if len(raw) > MAX_REPORT_BYTES:
            raise UsageError(f"{path}: larger than {MAX_REPORT_BYTES // 1024**2} MiB, not an `edgellm bench --json` result", hint=hint)
        try:
            data = json.loads(raw)
        except RecursionError:
            raise UsageError(f"{path}: not JSON (nested too deeply)", hint=hint) from None
        except ValueError as exc:
            raise UsageError(f"{path}: not JSON ({exc})", hint=hint) from None
        problem = report_shape_problem(data)
        if problem:
            raise UsageError(f"{path}: not an `edgellm bench --json` result: {problem}", hint=hint)
        reports.append(data)
    if not reports:
        raise UsageError("no result files given", hint="edgellm bench report pi5.json rk3588.json")
    return reports


def report_shape_problem(data: Any) -> str | None:
    """What keeps `data` from being a report merge_reports can read (None: nothing)."""
    if not isinstance(data, dict):
        return f"the top level is {_json_kind(data)}, not an object"
    device, results = data.get("device"), data.get("results")
    if not isinstance(device, dict):
        return "no 'device' object" if device is None else f"'device' is {_json_kind(device)}, not an object"
    for key in ("board", "soc", "cpu_model"):
        if device.get(key) is not None and not isinstance(device[key], str):
            return f"device.{key} is {_json_kind(device[key])}, not a string"
    if not isinstance(results, list):
        return "no 'results' list" if results is None else f"'results' is {_json_kind(results)}, not a list"
    for index, row in enumerate(results):
        where = f"results[{index}]"
        if not isinstance(row, dict):
            return f"{where} is {_json_kind(row)}, not an object"
        for key, valid, expected, required in _RESULT_FIELDS:
            value = row.get(key)
            if value is None and not required:
                continue
            if value is None:
                return f"{where} has no '{key}'"
            if not valid(value):
                return f"{where}.{key} is {_json_kind(value)}, not {expected}"
        temp = (row.get("thermal") or {}).get("temp_max_c")
        if temp is not None and not _is_number(temp):
            return f"{where}.thermal.temp_max_c is {_json_kind(temp)}, not a number"
    return None


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)  # a 400-digit integer cannot be formatted as t/s
    except OverflowError:
        return False
    return True


def _is_cpu_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_count(cpu) for cpu in value)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


# What merge_reports reads from each result: key, check, what it must be, required.
_RESULT_FIELDS: tuple[tuple[str, Callable[[Any], bool], str, bool], ...] = (
    ("test", _is_text, "a string", True),
    ("threads", _is_count, "a whole number", True),
    ("tps_mean", _is_number, "a number", True),
    ("tps_std", _is_number, "a number", True),
    ("cores_choice", _is_text, "a string", False),
    ("cores", _is_cpu_list, "a list of CPU ids", False),
    ("thermal", _is_object, "an object", False),
)


def _json_kind(value: Any) -> str:
    """'a list', 'the number 5', "the string 'fast'" (short: error messages are one line)."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return f"the number {str(value)[:40]}"


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row per device, model and thread count; one column per test (mean ± std t/s)."""
    tests: list[str] = []
    rows: dict[tuple[str, str, str, str], dict[str, str]] = {}
    maxima: dict[tuple[str, str, str, str], float] = {}
    for report in reports:
        device = device_label(report["device"])
        model = model_label(report)
        for row in report["results"]:
            if row["test"] not in tests:
                tests.append(row["test"])
            key = (device, model, str(row["threads"]), row.get("cores_choice") or _cores_text(row.get("cores") or []))
            rows.setdefault(key, {})[row["test"]] = f"{row['tps_mean']:.2f} ± {row['tps_std']:.2f}"
            temp = (row.get("thermal") or {}).get("temp_max_c")
            if temp is not None:
                maxima[key] = max(maxima.get(key, temp), temp)
    headers = ["device", "model", "threads", "cores", *tests, "max °C"]
    table = [
        [*key, *(cells.get(t, "-") for t in tests), f"{maxima[key]:.0f}" if key in maxima else "-"]
        for key, cells in rows.items()
    ]
    return {"headers": headers, "rows": table}


def merged_markdown(merged: dict[str, Any]) -> str:
    lines = [_md_row(merged["headers"]), _md_row(["---"] * len(merged["headers"]))]
    lines += [_md_row(row) for row in merged["rows"]]
    return "\n".join(lines) + "\n"


def report_title(report: dict[str, Any]) -> str:
    return "edgellm bench" + (" — SYNTHETIC model (random weights)" if report.get("synthetic") else "")


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
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
