"""The planner: budget, context and KV choice, cores and threads, refusals. Pure functions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from edgellm.device.hardware import detect
from edgellm.device.profiles import find_profile, load_profiles, select_profile
from edgellm.plan.planner import make_plan
from edgellm.store.gguf import ModelInfo

DATA = Path(__file__).parent / "data"
GiB = 1024**3
MiB = 1024**2


def r1_15b_q4km() -> ModelInfo:
    """DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M as its header describes it."""
    return ModelInfo(arch="qwen2", n_layers=28, n_embd=1536, n_head=12, n_head_kv=2, head_dim_k=128, head_dim_v=128,
                     n_ff=8960, n_vocab=151936, context_length=131072, quant="Q4_K_M",
                     weights_bytes=1_117_000_000, bytes_per_token=986_000_000, name="r1-1.5b")


def device_with_ram(capture: str, available: int):
    device = detect(DATA / capture)
    device.mem_total_bytes = device.mem_available_bytes = available
    return device


def test_rk3588_runs_on_the_a76_cluster_with_4_threads() -> None:
    device = device_with_ram("rk3588", 8 * GiB)
    profile, _ = select_profile(device)
    plan = make_plan(r1_15b_q4km(), device, profile)
    assert plan.cores == [4, 5, 6, 7] and plan.threads == 4 and plan.threads_batch == 4
    assert plan.fits and plan.n_ctx == 4096 and plan.kv_type == "f16"
    assert plan.kv_bytes == 28 * 1024 * 4096
    assert plan.total_bytes == plan.weights_bytes + plan.kv_bytes + plan.overhead_bytes
    assert set(plan.reasons) >= {"n_ctx", "kv_type", "cores", "threads", "budget"}


def test_predicted_speed_comes_from_bandwidth_and_bytes_per_token() -> None:
    device = device_with_ram("raspberry-pi-5", 8 * GiB)
    profile, _ = select_profile(device)
    plan = make_plan(r1_15b_q4km(), device, profile)
    assert plan.predicted_tg_tps == pytest.approx(profile.mem_bandwidth_gbps * 1e9 / 986_000_000, abs=0.05)
    assert 5 < plan.predicted_tg_tps < 8  # published: ~6.5 tok/s on a Pi 5


def test_kv_switches_to_q8_when_that_makes_the_context_fit() -> None:
    device = device_with_ram("raspberry-pi-5", 8 * GiB)
    profile = replace(find_profile("raspberry-pi-5", load_profiles()), os_reserve_bytes=0)
    model = r1_15b_q4km()
    f16 = make_plan(model, device, profile, ctx=8192)
    budget = f16.total_bytes - f16.kv_bytes // 3  # f16 KV no longer fits, q8_0 (53%) does
    plan = make_plan(model, device, profile, ctx=8192, mem_budget=budget)
    assert plan.fits and plan.n_ctx == 8192 and plan.kv_type == "q8_0" and plan.flash_attn
    assert "q8_0" in plan.reasons["kv_type"]


def test_context_shrinks_to_the_largest_that_fits() -> None:
    device = device_with_ram("raspberry-pi-5", 8 * GiB)
    profile = replace(find_profile("raspberry-pi-5", load_profiles()), allow_kv_q8=False)
    model = r1_15b_q4km()
    plan = make_plan(model, device, profile, mem_budget=int(1.25 * GiB))
    assert plan.fits and 512 <= plan.n_ctx < 4096 and plan.n_ctx % 256 == 0
    assert plan.total_bytes <= 1.25 * GiB
    bigger = make_plan(model, device, profile, ctx=plan.n_ctx + 256, mem_budget=int(1.25 * GiB))
    assert bigger.n_ctx == plan.n_ctx  # the next step up does not fit
    assert "largest context that fits" in plan.reasons["n_ctx"]


def test_refuses_with_needed_vs_available() -> None:
    device = device_with_ram("raspberry-pi-5", 8 * GiB)
    profile, _ = select_profile(device)
    plan = make_plan(r1_15b_q4km(), device, profile, mem_budget=900 * 1000**2)
    assert not plan.fits and plan.refusal
    assert "needs" in plan.refusal and "budget is 858.31 MiB" in plan.refusal


def test_budget_is_available_minus_reserve_capped_by_flag() -> None:
    device = device_with_ram("x86-laptop", 4 * GiB)
    profile, _ = select_profile(device)
    plan = make_plan(r1_15b_q4km(), device, profile)
    assert plan.budget_bytes == 4 * GiB - profile.os_reserve_bytes
    assert make_plan(r1_15b_q4km(), device, profile, mem_budget=2 * GiB).budget_bytes == 2 * GiB
    assert make_plan(r1_15b_q4km(), device, profile, mem_budget=8 * GiB).budget_bytes == 4 * GiB - profile.os_reserve_bytes


def test_context_never_exceeds_what_the_model_was_trained_for() -> None:
    device = device_with_ram("x86-laptop", 16 * GiB)
    profile, _ = select_profile(device)
    model = replace(r1_15b_q4km(), context_length=2048)
    assert make_plan(model, device, profile, ctx=8192).n_ctx == 2048


def test_threads_flag_overrides_profile() -> None:
    device = device_with_ram("rk3588", 8 * GiB)
    profile, _ = select_profile(device)
    plan = make_plan(r1_15b_q4km(), device, profile, threads=2)
    assert plan.threads == 2 and "--threads 2" in plan.reasons["threads"]


def test_plan_cli_json_and_refusal(tiny_q4km: Path) -> None:
    import json

    ok = run_cli("plan", str(tiny_q4km), "--json")
    data = json.loads(ok.stdout)
    for key in ("profile", "model", "quant", "fits", "n_ctx", "kv_type", "cores", "threads", "threads_batch", "n_batch",
                "weights_bytes", "kv_bytes", "overhead_bytes", "total_bytes", "budget_bytes", "predicted_tg_tps", "reasons"):
        assert key in data
    assert ok.returncode == 0 and data["fits"]
    refused = run_cli("plan", str(tiny_q4km), "--json", "--mem-budget", "10MB")
    assert refused.returncode == 1 and json.loads(refused.stdout)["fits"] is False
    lines = refused.stderr.decode().strip().splitlines()
    assert lines[0].startswith("error: ") and "needs" in lines[0] and "budget" in lines[0]
    assert "smaller quant" in lines[1] and "--ctx" in lines[1] and "--mem-budget" in lines[1]


def test_plan_for_a_captured_device(tiny_q4km: Path) -> None:
    import json

    result = run_cli("plan", str(tiny_q4km), "--json", "--sysroot", str(DATA / "rk3588"))
    data = json.loads(result.stdout)
    assert data["profile"] == "rk3588" and data["cores"] == [4, 5, 6, 7]


def test_more_threads_than_cpus_are_capped_with_a_warning() -> None:
    # Issue 16: `--threads 1000` was passed to llama.cpp as it was.
    device = device_with_ram("rk3588", 8 * GiB)
    profile, _ = select_profile(device)
    plan = make_plan(r1_15b_q4km(), device, profile, threads=1000, threads_batch=64)
    assert plan.threads == 4 and plan.threads_batch == 4  # the four A76 cores
    assert plan.warnings == [
        "--threads 1000 is more than the 4 CPUs this plan runs on: using 4",
        "--threads-batch 64 is more than the 4 CPUs this plan runs on: using 4",
    ]
    assert "capped" in plan.reasons["threads"]
    assert make_plan(r1_15b_q4km(), device, profile, threads=3).warnings == []


def test_parallel_slots_each_get_the_context_in_their_own_kv_stream() -> None:
    device = device_with_ram("rk3588", 8 * GiB)
    profile, _ = select_profile(device)
    one = make_plan(r1_15b_q4km(), device, profile, ctx=4096)
    four = make_plan(r1_15b_q4km(), device, profile, ctx=4096, parallel=4)
    assert (four.parallel, four.n_ctx_per_slot, four.n_ctx) == (4, 4096, 16384)
    assert four.kv_bytes == 4 * one.kv_bytes
    # A token attends over its own slot's 4096 cells: the compute buffer is one slot's.
    assert four.compute_bytes == one.compute_bytes
    assert four.total_bytes == one.total_bytes + 3 * one.kv_bytes
    assert "4 slots of 4096 tokens" in four.reasons["parallel"]


@pytest.mark.parametrize(("ctx", "parallel", "n_ubatch", "attention_ctx"), [
    (1024, 1, 512, 1024),
    (256, 1, 256, 256),  # n_ubatch no larger than the context
    (1024, 2, 512, 1024),  # per slot, not the 2048 cells in all
    (2048, 4, 512, 2048),
    (256, 4, 512, 256),  # four slots of 256: a ubatch of 512 tokens spread over them
])
def test_compute_buffer_attends_over_one_slot_with_a_full_ubatch(ctx: int, parallel: int, n_ubatch: int, attention_ctx: int) -> None:
    from edgellm.plan.planner import compute_buffer_bytes

    model = r1_15b_q4km()
    device = device_with_ram("rk3588", 16 * GiB)
    profile, _ = select_profile(device)
    plan = make_plan(model, device, profile, ctx=ctx, parallel=parallel)
    assert not plan.flash_attn
    assert plan.compute_bytes == compute_buffer_bytes(model, attention_ctx, n_ubatch, flash_attn=False)


def test_auto_parallel_takes_as_many_slots_as_fit_at_most_four() -> None:
    from edgellm.plan.planner import auto_parallel

    profile, _ = select_profile(device_with_ram("rk3588", 8 * GiB))

    def slots(ram: int) -> int:
        device = device_with_ram("rk3588", ram)
        return auto_parallel(lambda p: make_plan(r1_15b_q4km(), device, profile, ctx=4096, parallel=p))

    assert slots(16 * GiB) == 4
    # Less memory: fewer slots rather than shorter ones (each keeps the 4096 tokens it would get
    # alone; a q8_0 cache is the planner's usual way to keep a context).
    assert slots(int(1.65 * GiB)) == 3
    assert slots(int(1.6 * GiB)) == 2
    assert slots(int(1.4 * GiB)) == 1
    device = device_with_ram("rk3588", int(1.6 * GiB))
    two = make_plan(r1_15b_q4km(), device, profile, ctx=4096, parallel=2)
    assert two.fits and two.n_ctx_per_slot == 4096


# --- make_plan's stages, one table each ------------------------------------------------------------


@pytest.mark.parametrize(("asked", "made"), [(1, 256), (255, 256), (256, 256), (257, 512), (1000, 1024), (4096, 4096)])
def test_pad_context_rounds_up_to_llama_cpps_step(asked: int, made: int) -> None:
    from edgellm.plan.planner import CTX_STEP, pad_context

    assert pad_context(asked) == made and made % CTX_STEP == 0


@pytest.mark.parametrize(("ctx", "trained", "default_ctx", "max_ctx", "wanted", "why"), [
    (None, 131072, 4096, 8192, 4096, "profile default 4096"),
    (None, 131072, 16384, 8192, 8192, "profile default 16384"),  # the profile's max bounds its own default
    (16384, 131072, 4096, 8192, 16384, "--ctx 16384"),  # ... not what was asked
    (8192, 2048, 4096, 8192, 2048, "--ctx 8192, capped at the model's trained context 2048"),
    (None, 1000, 4096, 8192, 1024, "profile default 4096, capped at the model's trained context 1000"),
    (700, 131072, 4096, 8192, 768, "--ctx 700"),
])
def test_choose_context(ctx: int | None, trained: int, default_ctx: int, max_ctx: int, wanted: int, why: str) -> None:
    from edgellm.plan.planner import choose_context

    profile = replace(find_profile("generic", load_profiles()), default_ctx=default_ctx, max_ctx=max_ctx)
    assert choose_context(replace(r1_15b_q4km(), context_length=trained), profile, ctx) == (wanted, why)


@pytest.mark.parametrize(("kv_type", "allow_q8", "options"), [
    ("f16", True, ["f16", "q8_0"]), ("f16", False, ["f16"]), ("q8_0", True, ["q8_0"]),
])
def test_kv_types_tries_q8_0_after_f16_when_allowed(kv_type: str, allow_q8: bool, options: list[str]) -> None:
    from edgellm.plan.planner import kv_types

    assert kv_types(replace(find_profile("generic", load_profiles()), kv_type=kv_type, allow_kv_q8=allow_q8)) == options


@pytest.mark.parametrize(("mmap", "repacks", "use_mmap", "why"), [
    (True, False, True, "profile sets mmap=on"),
    (True, True, False, "off: this llama.cpp repacks"),
    (False, False, False, "profile sets mmap=off"),
    (False, True, False, "profile sets mmap=off"),
])
def test_mmap_choice(mmap: bool, repacks: bool, use_mmap: bool, why: str) -> None:
    from edgellm.plan.planner import mmap_choice

    chosen, reason = mmap_choice(replace(find_profile("generic", load_profiles()), mmap=mmap), repacks)
    assert chosen is use_mmap and reason.startswith(why)


@pytest.mark.parametrize(("threads", "threads_batch", "expected", "warned"), [
    (None, None, (4, 4), []),  # the rk3588 profile's 4 and 4
    (2, None, (2, 4), []),
    (8, 1, (4, 1), ["--threads"]),
    (8, 16, (4, 4), ["--threads", "--threads-batch"]),
])
def test_threads_for(threads: int | None, threads_batch: int | None, expected: tuple[int, int], warned: list[str]) -> None:
    from edgellm.plan.planner import select_cores, threads_for

    device = device_with_ram("rk3588", 8 * GiB)
    profile = find_profile("rk3588", load_profiles())
    n_threads, n_batch, reasons, warnings = threads_for(device, profile, select_cores(device, profile), threads, threads_batch)
    assert (n_threads, n_batch) == expected and list(reasons) == ["threads", "threads_batch"]
    assert [w.split()[0] for w in warnings] == warned


@pytest.mark.parametrize(("chat_template", "think_budget", "bandwidth", "expected"), [
    (None, 512, 6.5, (None, None, False)),  # not a reasoning model
    ("<think></think>", 512, 0.0, (512, None, False)),  # no speed: no time to tell
    ("<think></think>", 512, 9.86, (512, 76.8, True)),  # (512 + 256 tokens) at 10 tokens/s
    ("<think></think>", None, 9.86, (None, None, True)),  # unbounded: says how long 4000 tokens take
])
def test_thinking_time(chat_template: str | None, think_budget: int | None, bandwidth: float, expected: tuple[Any, ...]) -> None:
    from edgellm.plan.planner import predicted_speed, thinking_time

    model = replace(r1_15b_q4km(), chat_template=chat_template)
    profile = replace(find_profile("generic", load_profiles()), think_budget=think_budget, mem_bandwidth_gbps=bandwidth)
    predicted, _ = predicted_speed(model, profile, [])
    budget, worst, reason = thinking_time(model, profile, predicted)
    assert (budget, worst, reason is not None) == expected


@pytest.mark.parametrize(("profile_budget", "asked", "used"), [(None, None, None), (512, None, 512), (512, 100, 100), (None, 300, 300), (512, 0, 0)])
def test_the_plan_takes_think_budget_over_the_profiles(profile_budget: int | None, asked: int | None, used: int | None) -> None:
    """--think-budget reaches the plan (Plan.think_budget and the worst-case answer time followed the
    profile's budget alone); run, chat and serve take the plan's."""
    device = device_with_ram("raspberry-pi-5", 8 * GiB)
    profile = replace(find_profile("raspberry-pi-5", load_profiles()), think_budget=profile_budget)
    plan = make_plan(replace(r1_15b_q4km(), chat_template="<think></think>"), device, profile, think_budget=asked)
    assert plan.think_budget == used
    if used is not None:
        assert plan.worst_answer_s is not None
        assert ("--think-budget" if asked is not None else "profile think_budget") in plan.reasons["worst_answer_s"]


@pytest.mark.parametrize("budget_gib", [0.9, 1.2, 1.25, 1.4, 2.0, 8.0])
@pytest.mark.parametrize("allow_q8", [True, False])
def test_largest_context_is_the_largest_ctx_make_plan_fits_in_full(budget_gib: float, allow_q8: bool) -> None:
    from edgellm.plan.planner import CTX_STEP, largest_context

    device = device_with_ram("raspberry-pi-5", 8 * GiB)
    profile = replace(find_profile("raspberry-pi-5", load_profiles()), allow_kv_q8=allow_q8)
    model, budget = replace(r1_15b_q4km(), context_length=20000), int(budget_gib * GiB)
    largest = largest_context(model, device, profile, 16000, mem_budget=budget)

    def fits_in_full(ctx: int) -> bool:
        plan = make_plan(model, device, profile, ctx=ctx, mem_budget=budget)
        return plan.fits and plan.n_ctx_per_slot == ctx

    if largest:
        assert largest % CTX_STEP == 0 and largest <= 16000 and fits_in_full(largest)
    assert not any(fits_in_full(c) for c in range(max(largest, 256) + CTX_STEP, 16000, CTX_STEP))
    # Never more than the model was trained for; `least` bounds the search from below.
    assert largest_context(model, device, profile, 99999, mem_budget=budget) == largest_context(model, device, profile, 20000, mem_budget=budget)
    assert largest_context(model, device, profile, 16000, mem_budget=budget, least=largest + 1) == 0


def test_largest_context_matches_the_loaders_count_down() -> None:
    """What loader.fit_prompt computes with make_plan in a loop, largest_context computes directly."""
    from edgellm.plan.planner import largest_context

    device = device_with_ram("rk3588", 8 * GiB)
    profile = find_profile("rk3588", load_profiles())
    model = r1_15b_q4km()
    for budget in (int(1.2 * GiB), int(1.3 * GiB), int(1.6 * GiB), 3 * GiB):
        plan = make_plan(model, device, profile, mem_budget=budget)
        for wanted in (5000, 9000, 30000):
            loop = next((c for c in range(wanted // 256 * 256, plan.n_ctx, -256)
                         if (p := make_plan(model, device, profile, ctx=c, mem_budget=budget)).fits and p.n_ctx >= c), plan.n_ctx)
            direct = largest_context(model, device, profile, wanted, mem_budget=budget, least=plan.n_ctx + 1) or plan.n_ctx
            assert direct == loop, (budget, wanted)


def test_refusal_names_what_the_plan_needs_and_nothing_when_it_fits() -> None:
    from edgellm.plan.planner import refusal

    device = device_with_ram("raspberry-pi-5", 8 * GiB)
    profile, _ = select_profile(device)
    model = r1_15b_q4km()
    fits = make_plan(model, device, profile)
    assert fits.refusal is None and refusal(fits, model) is None
    refused = make_plan(model, device, profile, mem_budget=900 * 1000**2, parallel=2)
    assert refusal(refused, model) == refused.refusal
    assert refused.refusal is not None and refused.refusal.startswith("r1-1.5b Q4_K_M needs ") and " in 2 slots " in refused.refusal
    unbounded = replace(refused, budget_bytes=None)  # memory size unknown: nothing to refuse against
    assert refusal(unbounded, model) is None
