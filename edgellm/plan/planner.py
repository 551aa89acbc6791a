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

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

from edgellm.device.hardware import Device, format_cpu_list
from edgellm.device.profiles import Profile
from edgellm.device.workers import WorkerInfo
from edgellm.store.gguf import ModelInfo
from edgellm.units import format_size

MIN_CTX = 512
MAX_AUTO_PARALLEL = 4  # serve's default slots at most: beyond, each user waits longer for little gain
CTX_STEP = 256
# Python + numpy + llama.cpp's code and small buffers, measured as the RSS of `edgellm run`
# before the model loads plus llama.cpp's fixed allocations (see scripts/check_plan_rss.py):
# 80 MiB on an Intel Xeon host, ~40 MB more on another CI host; a plan may err high, not low.
RUNTIME_OVERHEAD_BYTES = 96 * 1024**2
# The network between boards, for the time activations take per token (--rpc): gigabit Ethernet's
# TCP payload rate, and a conservative rate for loopback (workers on this same machine).
LAN_BYTES_PER_S = 117e6
LOOPBACK_BYTES_PER_S = 2e9
# llama.cpp's own work per worker per token beyond the wire (the graph sent, the worker's threads
# woken, its output copied back): about 4 ms measured per worker with two workers on this 2-core
# machine's loopback (scripts/compare_rpc_split.py), where they also share its CPU; less apart.
RPC_HOP_OVERHEAD_S = 0.002


@dataclass
class DeviceShare:
    """One device's part of a model split across boards: `local` (this board) or a worker."""

    name: str
    layers: int  # repeating layers (blk.N); the output layer sits on the last device besides
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    total_bytes: int
    budget_bytes: int | None  # what it can hold: this board's budget, or what the worker offers
    first_layer: int = 0


def split_layers(layer_costs: list[int], rooms: list[float], min_layers: list[int], *, capped: bool = True) -> list[int] | None:
    """Contiguous layer counts per device, in device order, each within its room and at least its
    minimum, the boundaries as close as they can be to the rooms' proportions. None: no split fits.
    capped=False: the proportional split alone, rooms or not (to show what a refused plan needed).
    """
    n, k = len(layer_costs), len(rooms)
    prefix = list(itertools.accumulate(layer_costs, initial=0))
    limit = rooms if capped else [float("inf")] * k
    if capped:
        earliest = _earliest_starts(prefix, rooms, min_layers)
        if earliest is None:
            return None
    else:
        earliest = [0] * k + [n]  # any start: only the minimums bound the split
    weights = [max(r, 0.0 if capped else 1.0) for r in rooms]
    total_weight = sum(weights) or 1.0
    counts, start = [], 0
    for j in range(k):
        end = n
        if j < k - 1:
            goal = prefix[n] * sum(weights[:j + 1]) / total_weight
            target = min(range(start, n + 1), key=lambda e: abs(prefix[e] - goal))
            most = max((e for e in range(start, n + 1) if prefix[e] - prefix[start] <= limit[j]), default=start)
            most = min(most, n - sum(min_layers[j + 1:]))
            least = max(earliest[j + 1], start + min_layers[j])
            if least > most:
                return None
            end = min(max(target, least), most)
        counts.append(end - start)
        start = end
    return counts


def _earliest_starts(prefix: list[int], rooms: list[float], min_layers: list[int]) -> list[int] | None:
    """earliest[j]: the first layer from which devices j.. can hold all the rest, each as much as
    fits from the back (leaving the devices before j their minimums); None when even that fails."""
    n, k = len(prefix) - 1, len(rooms)
    earliest = [n] * (k + 1)
    for j in range(k - 1, -1, -1):
        end = start = earliest[j + 1]
        if rooms[j] < 0:
            return None
        floor = sum(min_layers[:j])
        while start > floor and prefix[end] - prefix[start - 1] <= rooms[j]:
            start -= 1
        if end - start < min_layers[j]:
            return None
        earliest[j] = start
    return earliest if earliest[0] == 0 else None


def network_seconds_per_token(model: ModelInfo, workers: list[WorkerInfo]) -> float:
    """Per token, each worker's part ends in a round trip (llama.cpp reads its output back before
    the next device goes on), its hidden state crosses the link in and out, the last worker
    returns the logits (n_vocab floats), and llama.cpp spends RPC_HOP_OVERHEAD_S on each hop."""
    seconds = 0.0
    for index, worker in enumerate(workers):
        link = LOOPBACK_BYTES_PER_S if worker.endpoint.loopback else LAN_BYTES_PER_S
        payload = 2 * model.n_embd * 4 + (model.n_vocab * 4 if index == len(workers) - 1 else 0)
        seconds += worker.rtt_s + payload / link + RPC_HOP_OVERHEAD_S
    return seconds


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
    devices: list[DeviceShare] = field(default_factory=list)  # local first, then each --rpc worker

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rpc(self) -> list[str]:
        """The workers (HOST:PORT) the layers are split across, in layer order; [] for one board."""
        return [d.name for d in self.devices[1:]]

    @property
    def n_gpu_layers(self) -> int:
        """llama.cpp's n_gpu_layers for this split: the workers' layers plus the output layer."""
        return sum(d.layers for d in self.devices[1:]) + 1 if self.rpc else 0

    @property
    def tensor_split(self) -> list[float]:
        """llama.cpp's tensor_split: each worker's share of the offloaded layers, as counts (exact:
        llama.cpp gives offloaded layer k to the first device whose cumulative share exceeds k/n)."""
        counts = [float(d.layers) for d in self.devices[1:]]
        if counts:
            counts[-1] += 1  # the output layer
        return counts


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


def thread_count(device: Device, cores: list[int], asked: int | None, profile_threads: int | None) -> int:
    """Threads on `cores`: what was asked, else the profile's, else one per physical core; never
    more than the CPUs (more only makes llama.cpp's threads wait for each other)."""
    physical = device.physical_core_count(cores) or len(cores) or 1
    return min(asked or profile_threads or physical, max(len(cores), 1))


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
    workers: list[WorkerInfo] | None = None,
) -> Plan:
    """Choose context, KV type, cores, threads and batch so the model fits the memory budget.

    `build_repacks`: the installed llama.cpp repacks weights at load (system info `REPACK = 1`).
    `parallel`: sequences served at once; each gets the context chosen here in its own KV stream
    (the KV cache holds all of them: n_ctx is the total), and attends over its own stream only.
    `workers`: RPC workers (probed) to split the layers across, after this board's, in order.
    """
    parallel = max(parallel, 1)
    workers = workers or []
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

    input_bytes, layer_bytes, output_bytes = model.layer_layout()
    other_bytes = max(model.weights_bytes - input_bytes - sum(layer_bytes) - output_bytes, 0)  # rope tables and the like

    def shares_for(n_ctx: int, kv_type: str) -> tuple[list[DeviceShare], bool]:
        """Each device's part at this context, and whether every part fits its device."""
        total, kv, compute = total_for(n_ctx, kv_type)
        if not workers:
            local = DeviceShare("local", model.n_layers, model.weights_bytes, kv, compute, total, budget)
            return [local], budget is None or total <= budget
        kv_per_layer = kv / max(model.n_layers, 1)
        fixed = [input_bytes + other_bytes + compute + RUNTIME_OVERHEAD_BYTES] + [compute] * len(workers)
        fixed[-1] += output_bytes
        offers = [float(w.free_bytes) for w in workers]
        # This board's memory unknown: weigh it as the workers' average.
        capacities = [float(budget) if budget is not None else sum(offers) / len(offers), *offers]
        rooms = [cap - f for cap, f in zip(capacities, fixed, strict=True)]
        costs = [int(b + kv_per_layer) for b in layer_bytes]
        counts = split_layers(costs, rooms, [0] + [1] * len(workers))
        ok = counts is not None
        if counts is None:  # show the proportional split it would need
            counts = split_layers(costs, rooms, [0] + [1] * len(workers), capped=False) or [model.n_layers] + [0] * len(workers)
        shares, first = [], 0
        names = ["local"] + [str(w.endpoint) for w in workers]
        limits = [budget] + [w.free_bytes for w in workers]
        for index, count in enumerate(counts):
            weights = sum(layer_bytes[first:first + count]) + (input_bytes + other_bytes if index == 0 else 0) + \
                (output_bytes if index == len(counts) - 1 else 0)
            layer_kv = int(kv_per_layer * count)
            part_total = weights + layer_kv + compute + (RUNTIME_OVERHEAD_BYTES if index == 0 else 0)
            shares.append(DeviceShare(names[index], count, weights, layer_kv, compute, part_total, limits[index], first))
            first += count
        return shares, ok

    def fits(n_ctx: int, kv_type: str) -> bool:
        return shares_for(n_ctx, kv_type)[1]

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
    devices, fits_budget = shares_for(n_ctx, kv_type)
    if workers:
        total = devices[0].total_bytes  # this board's part: what its budget must hold
        reasons["devices"] = ("layers split by what each device can hold (this board: its budget; each worker: "
                              "the memory it offers): " + ", ".join(f"{d.name} {d.layers}" for d in devices)
                              + f"; the output layer on {devices[-1].name}")
        alone = total_for(n_ctx, kv_type)[0]
        if budget is not None and alone <= budget:
            # Layers on different boards take turns on each token: a split is never faster.
            reasons["devices"] += (f"; the model would fit this board alone ({format_size(alone)}), where it "
                                   "runs without the network's time per token")

    cores = select_cores(device, profile)
    physical = device.physical_core_count(cores) or len(cores) or 1
    n_threads = thread_count(device, cores, threads, profile.threads)
    n_threads_batch = thread_count(device, cores, threads_batch, profile.threads_batch)
    usable = max(len(cores), 1)
    warnings: list[str] = []
    for option, asked in (("--threads", threads), ("--threads-batch", threads_batch)):
        if asked and asked > usable:
            # More threads than CPUs only makes llama.cpp's threads wait for each other.
            warnings.append(f"{option} {asked} is more than the {usable} CPUs this plan runs on: using {usable}")
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
        unrounded = profile.mem_bandwidth_gbps * 1e9 / max(model.bytes_per_token, 1)
        predicted = round(unrounded, 1)
        reasons["predicted_tg_tps"] = (
            f"{profile.mem_bandwidth_gbps} GB/s effective bandwidth / {format_size(model.bytes_per_token)} read per token"
        )
        if workers:
            # The devices take their turns on each token, so the weights' time adds up as on one
            # board (workers assumed as fast as this one); the network's time comes on top.
            network = network_seconds_per_token(model, workers)
            predicted = round(1 / (1 / unrounded + network), 1)
            links = ", ".join(f"{w.endpoint} {w.rtt_s * 1e3:.2f} ms" for w in workers)
            reasons["predicted_tg_tps"] += (
                f", workers assumed as fast as this board; plus {network * 1e3:.1f} ms of network per token: "
                f"a round trip to each worker (measured {links}) and ~{RPC_HOP_OVERHEAD_S * 1e3:g} ms of llama.cpp's handling, "
                f"its hidden state in and out and the logits back "
                f"({format_size(model.n_vocab * 4)}) over "
                + ("loopback" if all(w.endpoint.loopback for w in workers) else "an assumed 1 Gb/s link"))

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
    if not fits_budget and workers:
        offered = [budget] + [w.free_bytes for w in workers]
        need = sum(d.total_bytes for d in devices)
        refusal = (
            f"{model.name or 'model'} {model.quant} needs {format_size(need)} across the devices (weights "
            f"{format_size(model.weights_bytes)} + KV {format_size(kv_bytes)} at {n_ctx} tokens + runtime) but this board "
            f"and {len(workers)} worker{'s' if len(workers) > 1 else ''} cannot hold it: "
            + ", ".join(f"{d.name} offers {format_size(o)}" for d, o in zip(devices, offered, strict=True)))
    elif not fits_budget and budget is not None:
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
        devices=devices,
    )


ANSWER_TOKENS = 256  # the answer after the reasoning, for the worst-case time to an answer
UNBOUNDED_EXAMPLE_TOKENS = 4000  # a long R1 reasoning, to show what "no budget" can mean


REFUSAL_HINT = "try a smaller quant (Q4_K_S), a smaller --ctx, or a larger --mem-budget"
SPLIT_REFUSAL_HINT = "add a worker to --rpc, let a worker offer more (edgellm worker --mem), or try a smaller quant or --ctx"


def refusal_hint(plan: Plan) -> str:
    return SPLIT_REFUSAL_HINT if plan.rpc else REFUSAL_HINT


def auto_parallel(plan_for: Any) -> int:
    """Serve's default slots: the most (up to MAX_AUTO_PARALLEL) that fit the budget at the context
    one slot would get alone. `plan_for(parallel)` makes the plan."""
    alone = plan_for(1)
    for parallel in range(MAX_AUTO_PARALLEL, 1, -1):
        plan = plan_for(parallel)
        if plan.fits and plan.n_ctx_per_slot >= alone.n_ctx_per_slot:
            return parallel
    return 1


MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: a context holds at most this many sequences
