"""llama.cpp itself: importing it once (a broken install is a one-line error), its build's features,
its quantizer, and the process-level settings (cores, peak memory) its threads inherit."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from edgellm.errors import EdgeLLMError, RuntimeUnavailableError

# llama.cpp's llama_ftype values for the quantizations edgellm makes (llama.h, enum llama_ftype).
FTYPE_BY_QUANT: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q8_0": 7,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
}



@functools.lru_cache(maxsize=1)
def load_llama_cpp() -> ModuleType:
    """Import llama_cpp once, turning a broken install into a one-line error."""
    try:
        import llama_cpp  # noqa: PLC0415  (lazy on purpose)
    except Exception as exc:  # ImportError, OSError from a missing shared library, ...
        raise RuntimeUnavailableError(
            f"llama-cpp-python is not usable: {exc}",
            hint="reinstall it: pip install --force-reinstall --no-cache-dir llama-cpp-python",
        ) from exc
    return llama_cpp



@functools.lru_cache(maxsize=1)
def system_info() -> str:
    """llama.cpp's compile-time feature line, e.g. 'CPU : NEON = 1 | ARM_FMA = 1 | ...'."""
    raw: Any = load_llama_cpp().llama_print_system_info()
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)



def quantize_model(source: Path, destination: Path, quant: str, threads: int = 0) -> None:
    """Quantize a GGUF file with llama.cpp's own quantizer (the one `llama-quantize` uses)."""
    quant = quant.upper()
    if quant not in FTYPE_BY_QUANT:
        raise EdgeLLMError(
            f"cannot quantize to {quant}",
            hint="choose one of: " + ", ".join(FTYPE_BY_QUANT),
        )
    llama_cpp = load_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPE_BY_QUANT[quant]
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(destination).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise EdgeLLMError(f"llama.cpp could not quantize {source} to {quant} (status {status})")



def build_has_amx(info: str | None = None) -> bool:
    """True when the installed llama.cpp carries the AMX kernels that segfault (llama.cpp #20824)."""
    return "AMX_INT8 = 1" in (system_info() if info is None else info)



def peak_rss_bytes() -> int:
    """The process's peak resident set size so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(usage if sys.platform == "darwin" else usage * 1024)



def pin_to_cores(cores: list[int]) -> list[int] | None:
    """Restrict this process to `cores` before llama.cpp starts its threads (they inherit it).

    Returns the cores actually applied, or None where the OS has no affinity API (macOS) or the
    plan's cores are not a strict subset of what we may use.
    """
    if not cores or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    wanted = set(cores) & allowed
    if not wanted or wanted == allowed:
        return None
    os.sched_setaffinity(0, wanted)
    # Threads that already exist keep their old mask: llama.cpp's OpenMP pool is started when the
    # library loads, before any plan. Linux takes thread ids here, so pin each of them too.
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(task), wanted)
    return sorted(wanted)



# The OpenMP runtimes llama.cpp's CPU backend may be built with (GCC's on Linux, LLVM's elsewhere).
OPENMP_LIBRARIES = ("libgomp.so.1", "libomp.so.5", "libomp.so", "libomp.dylib")
OMP_PAUSE_HARD = 2  # omp_pause_resource_t: free the threads, not just let them sleep


@functools.cache
def _openmp() -> Any:
    """The OpenMP runtime llama.cpp already loaded (never loads one itself), or None."""
    for name in OPENMP_LIBRARIES:
        with contextlib.suppress(OSError, AttributeError):
            library = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            pause = library.omp_pause_resource_all
            pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
            return pause
    return None


def release_compute_threads() -> None:
    """Free the calling thread's OpenMP worker threads (llama.cpp's compute threads for decodes
    run from this thread); its next decode starts new ones, in well under a millisecond.

    Why: every thread that has decoded keeps its own OpenMP team, and once a process holds more
    OpenMP threads than it has cores, libgomp stops spinning at barriers and sleeps instead; a
    decode crosses hundreds of barriers, so serve's generation thread ran ~30% slower than `run`
    after one decode elsewhere (the warm-up on the main thread). A thread that stops decoding
    calls this, so only the threads decoding now hold a team.
    """
    if not _loaded_llama_cpp():
        return
    pause = _openmp()
    if pause is not None:
        pause(OMP_PAUSE_HARD)


def _loaded_llama_cpp() -> bool:
    return "llama_cpp" in sys.modules


@contextlib.contextmanager
def _overriding_defaults(llama_cpp: ModuleType, function: str, **fields: Any) -> Iterator[None]:
    """While Llama() loads, make llama.cpp's `function` (a default-params constructor) return
    params with `fields` set: llama-cpp-python's Llama() has no parameter for them."""
    if not fields:
        yield
        return
    module = llama_cpp.llama_cpp
    original = getattr(module, function)

    def patched() -> Any:
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    setattr(module, function, patched)
    try:
        yield
    finally:
        setattr(module, function, original)
