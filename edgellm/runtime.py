"""The only module that imports llama_cpp.

Importing llama_cpp loads a native library (a noticeable fraction of a second on a Pi), so every
import here is lazy: `edgellm --help`, `detect` and `profiles` never pay for it.
"""

from __future__ import annotations

import ctypes
import functools
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
