"""Builds with llama.cpp's AMX kernels crash on prompts (llama.cpp #20824): edgellm must not."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgellm.device.hardware import detect
from edgellm.device.profiles import select_profile
from edgellm.loader import build_warnings
from edgellm.plan.planner import make_plan
from edgellm.runtime import engine as runtime
from edgellm.runtime.types import GenerationStats, SamplingParams
from edgellm.store.gguf import read_gguf

AMX_INFO = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 |"


def test_amx_build_is_recognised_and_detect_warns() -> None:
    assert runtime.build_has_amx(AMX_INFO)
    assert not runtime.build_has_amx(AMX_INFO.replace("AMX_INT8 = 1", ""))
    warnings = build_warnings(detect("/"), AMX_INFO)
    assert any("AMX" in w and "-mno-amx-int8" in w and "--no-cache-dir" in w for w in warnings)


def test_the_installed_build_has_no_amx_kernels() -> None:
    # scripts/install.sh builds without them; this is what keeps users away from the segfault.
    assert not runtime.build_has_amx()


def test_loading_without_extra_buffer_types_only_while_asked() -> None:
    llama_cpp = runtime.load_llama_cpp()
    defaults = llama_cpp.llama_cpp.llama_model_default_params
    with runtime._overriding_defaults(llama_cpp, "llama_model_default_params", use_extra_bufts=False):
        assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is False
    assert llama_cpp.llama_cpp.llama_model_default_params is defaults
    assert defaults().use_extra_bufts is True


def test_engine_on_an_amx_build_loads_without_amx_and_generates(tiny_q4km: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "build_has_amx", lambda info=None: True)
    model = read_gguf(tiny_q4km)
    device = detect("/")
    plan = make_plan(model, device, select_profile(device)[0])
    engine = runtime.Engine(model, plan)
    try:
        events = list(engine.generate([{"role": "user", "content": "a prompt of more than a few tokens " * 8}],
                                      SamplingParams(max_tokens=4, seed=1)))
    finally:
        engine.close()
    stats = events[-1]
    assert isinstance(stats, GenerationStats) and stats.prompt_tokens > 32 and stats.generated_tokens >= 1
