"""Decide how to run a model on a device before loading it. Pure: no I/O, no llama_cpp.

Memory model (what `edgellm run` then really reaches in peak RSS):
  weights (every tensor is touched on the first forward pass, mmap or not)
+ KV cache (n_ctx x layers x kv heads x (k dim + v dim) x bytes per element; with serve's N slots,
  N streams of the per-slot context, as llama-server -np makes them)
+ compute buffer (llama.cpp's scratch graph for one n_ubatch batch; a token attends over its own
  slot's stream only, so attention scales with the per-slot context, not the total)
+ runtime overhead (Python, llama.cpp's code and the output buffers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgellm.hardware import Device, format_cpu_list
from edgellm.modelinfo import ModelInfo
from edgellm.profiles import Profile
from edgellm.units import format_size

MIN_CTX = 512
MAX_AUTO_PARALLEL = 4  # serve's default slots at most: beyond, each user waits longer for little gain
CTX_STEP = 256
# Python + numpy + llama.cpp's code and small buffers, measured as the RSS of `edgellm run`
# before the model loads plus llama.cpp's fixed allocations (see scripts/check_plan_rss.py).
RUNTIME_OVERHEAD_BYTES = 80 * 1024**2


@dataclass
class Plan:
    profile: str
    model: str
    quant: str
    fits: bool
    n_ctx: int
    kv_type: str
    flash_attn: bool
    cores: list[int]
    threads: int
    threads_batch: int
    n_batch: int
    n_ubatch: int
    use_mmap: bool
    use_mlock: bool
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    total_bytes: int
    budget_bytes: int | None
    predicted_tg_tps: float | None
    parallel: int = 1  # sequences generated at once (serve's slots), one KV stream each; n_ctx is their total
    n_ctx_per_slot: int = 0
    reasons: dict[str, str] = field(default_factory=dict)
    refusal: str | None = None
    # A reasoning model: the profile's thinking budget (None: unbounded) and the worst-case
    # seconds to a whole answer at the predicted speed (budget + ANSWER_TOKENS); None: unknown or unbounded.
    think_budget: int | None = None
    worst_answer_s: float | None = None
    warnings: list[str] = field(default_factory=list)  # settings edgellm changed from what was asked

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compute_buffer_bytes(model: ModelInfo, n_ctx: int, n_ubatch: int, flash_attn: bool) -> int:
    """The part of llama.cpp's CPU compute buffer that a full prompt batch really touches.

    llama.cpp reserves logits for n_ubatch outputs, but generation asks for one, so those pages
    are never touched. What is touched: the attention scores (n_ctx x n_ubatch x heads, f32; flash
    attention never materialises them) or, when larger, the FFN activations, as the graph
    allocator reuses memory between the two; plus a few hidden-state sized scratch tensors.
    Checked against peak RSS by tests/test_plan_rss.py and scripts/check_plan_rss.py.
    """
    attention = 0 if flash_attn else n_ctx * n_ubatch * model.n_head * 4
    ffn = n_ubatch * max(model.n_ff, model.n_embd) * 4 * 2
    scratch = n_ubatch * model.n_embd * 4 * 4 + model.n_vocab * 4
    return int(max(attention, ffn) + scratch)


def select_cores(device: Device, profile: Profile) -> list[int]:
    clusters = device.clusters
    if profile.cores == "all" or not clusters:
        return sorted(cpu for c in clusters for cpu in c.cpus) or list(range(device.cpu_count or 1))
    if profile.cores == "performance":
        # Every core but the in-order efficiency ones: an all-big-core phone (Dimensity 9300,
        # Snapdragon 8 Elite) has none, so it runs on all of them.
        return sorted(cpu for c in clusters for cpu in c.cpus if not c.efficiency)
    return list(device.big_cores or clusters[0].cpus)


def memory_budget(device: Device, profile: Profile, mem_budget: int | None = None) -> tuple[int | None, str]:
    """The bytes a model may use here, and why: what is free now minus what the OS needs (the
    profile's reserve), capped by --mem-budget. None: memory size unknown, so not checked."""
    available = device.mem_available_bytes if device.mem_available_bytes is not None else device.mem_total_bytes
    budget: int | None = None
    reason = "memory size unknown: not checked"
    if available is not None:
        budget = max(available - profile.os_reserve_bytes, 0)
        reason = f"{format_size(available)} available minus {format_size(profile.os_reserve_bytes)} reserved for the OS ({profile.name})"
    if mem_budget is not None and (budget is None or mem_budget < budget):
        budget, reason = mem_budget, f"--mem-budget {format_size(mem_budget)}"
    return budget, reason


def make_plan(
    model: ModelInfo,
    device: Device,
    profile: Profile,
    *,
    ctx: int | None = None,
    mem_budget: int | None = None,
    threads: int | None = None,
    threads_batch: int | None = None,
    build_repacks: bool = False,
    parallel: int = 1,
) -> Plan:
    """Choose context, KV type, cores, threads and batch so the model fits the memory budget.

    `build_repacks`: the installed llama.cpp repacks weights at load (system info `REPACK = 1`).
    `parallel`: sequences served at once; each gets the context chosen here in its own KV stream
    (the KV cache holds all of them: n_ctx is the total), and attends over its own stream only.
    """
    parallel = max(parallel, 1)
    reasons: dict[str, str] = {}

    budget, reasons["budget"] = memory_budget(device, profile, mem_budget)

    # Context: what was asked (or the profile default), no more than the model was trained for.
    wanted = ctx or profile.default_ctx
    reasons["n_ctx"] = f"--ctx {ctx}" if ctx else f"profile default {profile.default_ctx}"
    if not ctx and wanted > profile.max_ctx:
        wanted = profile.max_ctx
    if wanted > model.context_length:
        wanted = model.context_length
        reasons["n_ctx"] += f", capped at the model's trained context {model.context_length}"
    if wanted % CTX_STEP:
        wanted = -(-wanted // CTX_STEP) * CTX_STEP  # llama.cpp pads the context to a multiple of 256

    n_ubatch = min(profile.n_batch, 512)
    fixed = model.weights_bytes + RUNTIME_OVERHEAD_BYTES

    def total_for(n_ctx: int, kv_type: str) -> tuple[int, int, int]:
        flash = kv_type != "f16"
        cells = n_ctx * parallel  # every slot's stream
        kv = int(model.kv_bytes_per_token(kv_type) * cells)
        # One ubatch holds tokens of several slots, each attending over its own stream's n_ctx
        # cells (the runtime's kv_unified=False): the scores are n_ctx x n_ubatch x heads in all.
        compute = compute_buffer_bytes(model, n_ctx, min(n_ubatch, cells), flash)
        return fixed + kv + compute, kv, compute

    def fits(n_ctx: int, kv_type: str) -> bool:
        return budget is None or total_for(n_ctx, kv_type)[0] <= budget

    # Prefer the full context with a smaller KV cache over a shorter context; shrink the
    # context only when no KV type makes the wanted one fit.
    kv_options = [profile.kv_type]
    if profile.allow_kv_q8 and profile.kv_type == "f16":
        kv_options.append("q8_0")
    kv_type, n_ctx = profile.kv_type, wanted
    reasons["kv_type"] = f"profile default {kv_type}"
    chosen = next((kv for kv in kv_options if fits(wanted, kv)), None)
    if chosen is not None and chosen != profile.kv_type:
        kv_type = chosen
        reasons["kv_type"] = f"q8_0 halves the KV cache so {wanted} tokens of context fit"
    elif chosen is None:
        for kv in kv_options:
            largest = max(
                (c for c in range(wanted // CTX_STEP * CTX_STEP, MIN_CTX - 1, -CTX_STEP) if fits(c, kv)),
                default=None,
            )
            if largest is not None:
                kv_type, n_ctx = kv, largest
                reasons["n_ctx"] = f"{largest}: the largest context that fits (wanted {wanted})"
                if kv != profile.kv_type:
                    reasons["kv_type"] = "q8_0 to fit more context"
                break
        else:
            n_ctx = min(wanted, MIN_CTX)

    total, kv_bytes, compute = total_for(n_ctx, kv_type)
    fits_budget = budget is None or total <= budget

    cores = select_cores(device, profile)
    physical = device.physical_core_count(cores) or len(cores) or 1
    n_threads = threads or profile.threads or physical
    n_threads_batch = threads_batch or profile.threads_batch or physical
    usable = max(len(cores), 1)
    warnings: list[str] = []
    for option, asked in (("--threads", threads), ("--threads-batch", threads_batch)):
        if asked and asked > usable:
            # More threads than CPUs only makes llama.cpp's threads wait for each other.
            warnings.append(f"{option} {asked} is more than the {usable} CPUs this plan runs on: using {usable}")
    n_threads = min(n_threads, usable)
    n_threads_batch = min(n_threads_batch, usable)
    cluster_names = ", ".join(f"{c.name} {format_cpu_list(c.cpus)}" for c in device.clusters if set(c.cpus) & set(cores))
    reasons["cores"] = f"profile cores={profile.cores}: {cluster_names or cores}"
    reasons["threads"] = (
        f"--threads {threads}, capped at the {usable} CPUs" if threads and threads > usable else
        f"--threads {threads}" if threads else
        f"profile sets {profile.threads}" if profile.threads else
        f"one per physical core of the chosen cores ({physical})"
    )
    reasons["threads_batch"] = (
        f"--threads-batch {threads_batch}" if threads_batch else
        f"profile sets {profile.threads_batch}" if profile.threads_batch else
        f"one per physical core ({physical})"
    )

    if parallel > 1:
        reasons["parallel"] = f"{parallel} slots of {n_ctx} tokens: {parallel} KV streams, {n_ctx * parallel} cells in all"
    n_ctx_per_slot, n_ctx = n_ctx, n_ctx * parallel
    n_batch = min(profile.n_batch, n_ctx)
    use_mlock = profile.mlock and fits_budget
    use_mmap = profile.mmap and not build_repacks
    if profile.mmap and build_repacks:
        # A mapped file keeps its pages resident next to the repacked copy of the same tensors.
        reasons["mmap"] = "off: this llama.cpp repacks weights at load, and a mapped file would hold them twice"
    else:
        reasons["mmap"] = f"profile sets mmap={'on' if profile.mmap else 'off'}"
    predicted = None
    if profile.mem_bandwidth_gbps:
        # At depth 0 the KV cache adds nothing to the bytes read per token.
        predicted = round(profile.mem_bandwidth_gbps * 1e9 / max(model.bytes_per_token, 1), 1)
        reasons["predicted_tg_tps"] = (
            f"{profile.mem_bandwidth_gbps} GB/s effective bandwidth / {format_size(model.bytes_per_token)} read per token"
        )

    think_budget, worst_answer_s = None, None
    if model.thinks:
        think_budget = profile.think_budget
        if think_budget is not None and predicted:
            worst_answer_s = round((think_budget + ANSWER_TOKENS) / predicted, 1)
            reasons["worst_answer_s"] = (f"at most {think_budget} reasoning tokens (profile think_budget) + a "
                                         f"{ANSWER_TOKENS}-token answer at ~{predicted:g} tokens/s")
        elif predicted:
            example = UNBOUNDED_EXAMPLE_TOKENS / predicted
            took = f"{example / 60:.0f} min" if example >= 120 else f"{example:.0f} s"
            reasons["worst_answer_s"] = (f"no thinking budget: this model may reason for thousands of tokens "
                                         f"({UNBOUNDED_EXAMPLE_TOKENS} take {took} at ~{predicted:g} tokens/s); "
                                         "cap it with --think-budget")

    refusal = None
    if not fits_budget and budget is not None:
        refusal = (
            f"{model.name or 'model'} {model.quant} needs {format_size(total)} "
            f"(weights {format_size(model.weights_bytes)} + KV {format_size(kv_bytes)} at {n_ctx} tokens"
            + (f" in {parallel} slots" if parallel > 1 else "")
            + f" + {format_size(compute + RUNTIME_OVERHEAD_BYTES)} runtime) but the budget is {format_size(budget)}"
        )
    return Plan(
        profile=profile.name,
        model=str(model.path) if model.path else model.name,
        quant=model.quant,
        fits=fits_budget,
        n_ctx=n_ctx,
        kv_type=kv_type,
        flash_attn=kv_type != "f16",
        cores=cores,
        threads=n_threads,
        threads_batch=n_threads_batch,
        n_batch=n_batch,
        n_ubatch=min(n_ubatch, n_batch),
        use_mmap=use_mmap,
        use_mlock=use_mlock,
        weights_bytes=model.weights_bytes,
        kv_bytes=kv_bytes,
        compute_bytes=compute,
        overhead_bytes=compute + RUNTIME_OVERHEAD_BYTES,
        total_bytes=total,
        budget_bytes=budget,
        predicted_tg_tps=predicted,
        parallel=parallel,
        n_ctx_per_slot=n_ctx_per_slot,
        reasons=reasons,
        refusal=refusal,
        warnings=warnings,
        think_budget=think_budget,
        worst_answer_s=worst_answer_s,
    )


ANSWER_TOKENS = 256  # the answer after the reasoning, for the worst-case time to an answer
UNBOUNDED_EXAMPLE_TOKENS = 4000  # a long R1 reasoning, to show what "no budget" can mean


REFUSAL_HINT = "try a smaller quant (Q4_K_S), a smaller --ctx, or a larger --mem-budget"


def auto_parallel(plan_for: Any) -> int:
    """Serve's default slots: the most (up to MAX_AUTO_PARALLEL) that fit the budget at the context
    one slot would get alone. `plan_for(parallel)` makes the plan."""
    alone = plan_for(1)
    for parallel in range(MAX_AUTO_PARALLEL, 1, -1):
        plan = plan_for(parallel)
        if plan.fits and plan.n_ctx_per_slot >= alone.n_ctx_per_slot:
            return parallel
    return 1
