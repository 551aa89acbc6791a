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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edgellm.device.profiles import Profile
from edgellm.device.sysfs import format_cpu_list
from edgellm.device.types import Device
from edgellm.device.workers import WorkerInfo
from edgellm.store.gguf import ModelInfo
from edgellm.store.measured import Measured
from edgellm.units import format_size

MIN_CTX = 512
MAX_AUTO_PARALLEL = 4  # serve's default slots at most: beyond, each user waits longer for little gain
CTX_STEP = 256  # llama.cpp pads the context (its KV cache's cells) to a multiple of this
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


def network_seconds_per_token(model: ModelInfo, workers: Sequence[WorkerInfo]) -> float:
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


def pad_context(n_ctx: int) -> int:
    """The context llama.cpp makes when asked for `n_ctx`: rounded up to a multiple of CTX_STEP."""
    return -(-n_ctx // CTX_STEP) * CTX_STEP


def micro_batch(profile: Profile) -> int:
    """n_ubatch: the tokens of one forward pass, the profile's batch up to llama.cpp's default 512."""
    return min(profile.n_batch, 512)


def kv_types(profile: Profile) -> list[str]:
    """The KV cache types to try, in order: the profile's, then q8_0 (about half of f16) if it allows."""
    options = [profile.kv_type]
    if profile.allow_kv_q8 and profile.kv_type == "f16":
        options.append("q8_0")
    return options


def choose_context(model: ModelInfo, profile: Profile, ctx: int | None) -> tuple[int, str]:
    """The context per slot to aim for, and why: what was asked (or the profile default, within its
    max), no more than the model was trained for, padded as llama.cpp pads it."""
    wanted = ctx or profile.default_ctx
    reason = f"--ctx {ctx}" if ctx else f"profile default {profile.default_ctx}"
    if not ctx and wanted > profile.max_ctx:
        wanted = profile.max_ctx
    if wanted > model.context_length:
        wanted = model.context_length
        reason += f", capped at the model's trained context {model.context_length}"
    return pad_context(wanted), reason


@dataclass(frozen=True)
class MemoryFit:
    """What decides whether a context fits: the model, its slots (one KV stream each), the tokens
    of one forward pass, this board's budget (None: unknown) and the workers the layers may go to."""

    model: ModelInfo
    budget: int | None
    parallel: int = 1
    n_ubatch: int = 512
    workers: tuple[WorkerInfo, ...] = ()

    def needs(self, n_ctx: int, kv_type: str) -> tuple[int, int, int]:
        """(total, KV, compute) bytes of the whole model on one board at `n_ctx` tokens per slot."""
        cells = n_ctx * self.parallel  # every slot's stream
        kv = int(self.model.kv_bytes_per_token(kv_type) * cells)
        # One ubatch holds tokens of several slots, each attending over its own stream's n_ctx
        # cells (the runtime's kv_unified=False): the scores are n_ctx x n_ubatch x heads in all.
        compute = compute_buffer_bytes(self.model, n_ctx, min(self.n_ubatch, cells), kv_type != "f16")
        return self.model.weights_bytes + RUNTIME_OVERHEAD_BYTES + kv + compute, kv, compute

    def device_shares(self, n_ctx: int, kv_type: str) -> tuple[list[DeviceShare], bool]:
        """Each device's part at this context, and whether every part fits its device."""
        model, budget, workers = self.model, self.budget, self.workers
        total, kv, compute = self.needs(n_ctx, kv_type)
        if not workers:
            local = DeviceShare("local", model.n_layers, model.weights_bytes, kv, compute, total, budget)
            return [local], budget is None or total <= budget
        input_bytes, layer_bytes, output_bytes = model.layer_layout()
        other_bytes = max(model.weights_bytes - input_bytes - sum(layer_bytes) - output_bytes, 0)  # rope tables and the like
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

    def fits(self, n_ctx: int, kv_type: str) -> bool:
        return self.device_shares(n_ctx, kv_type)[1]

    def largest(self, wanted: int, kv_options: list[str], least: int = MIN_CTX) -> int:
        """The largest multiple of CTX_STEP from `wanted` down to `least` (>= 1) that fits at one of
        `kv_options`; 0 when none does."""
        steps = range(wanted // CTX_STEP * CTX_STEP, least - 1, -CTX_STEP)
        return next((c for c in steps if any(self.fits(c, kv) for kv in kv_options)), 0)


def largest_context(model: ModelInfo, device: Device, profile: Profile, wanted: int, *, mem_budget: int | None = None,
                    parallel: int = 1, workers: Sequence[WorkerInfo] | None = None, least: int = MIN_CTX) -> int:
    """The largest context per slot, a multiple of CTX_STEP from `wanted` (no more than the model was
    trained for) down to `least`, that memory holds at one of the profile's KV types: the largest
    `ctx` for which make_plan(ctx=ctx, ...) fits with n_ctx_per_slot == ctx. 0 when none does."""
    budget, _ = memory_budget(device, profile, mem_budget)
    fit = MemoryFit(model, budget, max(parallel, 1), micro_batch(profile), tuple(workers or ()))
    return fit.largest(min(wanted, model.context_length), kv_types(profile), least)


def choose_kv_and_context(fit: MemoryFit, profile: Profile, wanted: int) -> tuple[str, int, str, str | None]:
    """(KV type, context per slot, why that KV type, why a shorter context or None: `wanted` stands).

    Prefers the full context with a smaller KV cache over a shorter context; shrinks the context
    only when no KV type makes the wanted one fit. Nothing fits: MIN_CTX at most, to refuse with."""
    options = kv_types(profile)
    chosen = next((kv for kv in options if fit.fits(wanted, kv)), None)
    if chosen == profile.kv_type:
        return chosen, wanted, f"profile default {chosen}", None
    if chosen is not None:
        return chosen, wanted, f"q8_0 halves the KV cache so {wanted} tokens of context fit", None
    for kv in options:
        largest = fit.largest(wanted, [kv])
        if largest:
            why_kv = f"profile default {kv}" if kv == profile.kv_type else "q8_0 to fit more context"
            return kv, largest, why_kv, f"{largest}: the largest context that fits (wanted {wanted})"
    return profile.kv_type, min(wanted, MIN_CTX), f"profile default {profile.kv_type}", None


def split_reason(fit: MemoryFit, devices: list[DeviceShare], n_ctx: int, kv_type: str) -> str:
    """Where the layers went, and whether this board could have held the model alone."""
    reason = ("layers split by what each device can hold (this board: its budget; each worker: "
              "the memory it offers): " + ", ".join(f"{d.name} {d.layers}" for d in devices)
              + f"; the output layer on {devices[-1].name}")
    alone = fit.needs(n_ctx, kv_type)[0]
    if fit.budget is not None and alone <= fit.budget:
        # Layers on different boards take turns on each token: a split is never faster.
        reason += (f"; the model would fit this board alone ({format_size(alone)}), where it "
                   "runs without the network's time per token")
    return reason


def cores_reason(device: Device, profile: Profile, cores: list[int]) -> str:
    cluster_names = ", ".join(f"{c.name} {format_cpu_list(c.cpus)}" for c in device.clusters if set(c.cpus) & set(cores))
    return f"profile cores={profile.cores}: {cluster_names or cores}"


def threads_for(device: Device, profile: Profile, cores: list[int], threads: int | None,
                threads_batch: int | None) -> tuple[int, int, dict[str, str], list[str]]:
    """(threads, batch threads, their reasons, warnings): a warning for each count asked beyond the CPUs."""
    physical = device.physical_core_count(cores) or len(cores) or 1
    usable = max(len(cores), 1)
    warnings: list[str] = []
    for option, asked in (("--threads", threads), ("--threads-batch", threads_batch)):
        if asked and asked > usable:
            # More threads than CPUs only makes llama.cpp's threads wait for each other.
            warnings.append(f"{option} {asked} is more than the {usable} CPUs this plan runs on: using {usable}")
    reasons = {
        "threads": (
            f"--threads {threads}, capped at the {usable} CPUs" if threads and threads > usable else
            f"--threads {threads}" if threads else
            f"profile sets {profile.threads}" if profile.threads else
            f"one per physical core of the chosen cores ({physical})"
        ),
        "threads_batch": (
            f"--threads-batch {threads_batch}" if threads_batch else
            f"profile sets {profile.threads_batch}" if profile.threads_batch else
            f"one per physical core ({physical})"
        ),
    }
    n_threads = thread_count(device, cores, threads, profile.threads)
    return n_threads, thread_count(device, cores, threads_batch, profile.threads_batch), reasons, warnings


def mmap_choice(profile: Profile, build_repacks: bool) -> tuple[bool, str]:
    """Whether to map the file, and why."""
    if profile.mmap and build_repacks:
        # A mapped file keeps its pages resident next to the repacked copy of the same tensors.
        return False, "off: this llama.cpp repacks weights at load, and a mapped file would hold them twice"
    return profile.mmap and not build_repacks, f"profile sets mmap={'on' if profile.mmap else 'off'}"


def predicted_speed(model: ModelInfo, profile: Profile, workers: Sequence[WorkerInfo],
                    measured: Measured | None = None) -> tuple[float | None, str | None]:
    """Tokens per second generated, and how that was worked out; (None, None): no bandwidth known.
    `measured`: what `edgellm bench` measured on this device, used instead of the profile's estimate."""
    bandwidth = measured.bandwidth_gbps if measured is not None else profile.mem_bandwidth_gbps
    if not bandwidth:
        return None, None
    # At depth 0 the KV cache adds nothing to the bytes read per token.
    unrounded = bandwidth * 1e9 / max(model.bytes_per_token, 1)
    if measured is not None:
        reason = f"{measured.describe()} / {format_size(model.bytes_per_token)} read per token"
    else:
        reason = f"{profile.mem_bandwidth_gbps} GB/s effective bandwidth / {format_size(model.bytes_per_token)} read per token"
    if not workers:
        return round(unrounded, 1), reason
    # The devices take their turns on each token, so the weights' time adds up as on one
    # board (workers assumed as fast as this one); the network's time comes on top.
    network = network_seconds_per_token(model, workers)
    links = ", ".join(f"{w.endpoint} {w.rtt_s * 1e3:.2f} ms" for w in workers)
    reason += (
        f", workers assumed as fast as this board; plus {network * 1e3:.1f} ms of network per token: "
        f"a round trip to each worker (measured {links}) and ~{RPC_HOP_OVERHEAD_S * 1e3:g} ms of llama.cpp's handling, "
        f"its hidden state in and out and the logits back "
        f"({format_size(model.n_vocab * 4)}) over "
        + ("loopback" if all(w.endpoint.loopback for w in workers) else "an assumed 1 Gb/s link"))
    return round(1 / (1 / unrounded + network), 1), reason


def reasoning_budget(profile: Profile, asked: int | None = None) -> int | None:
    """The reasoning budget a reasoning model gets here: --think-budget, else the profile's."""
    return asked if asked is not None else profile.think_budget


def thinking_time(model: ModelInfo, profile: Profile, predicted: float | None,
                  asked: int | None = None) -> tuple[int | None, float | None, str | None]:
    """A reasoning model's thinking budget (`asked`: --think-budget, else the profile's), worst-case
    seconds to a whole answer, and why (None: no reasoning model, or no speed to tell)."""
    if not model.thinks:
        return None, None, None
    think_budget = reasoning_budget(profile, asked)
    source = "--think-budget" if asked is not None else "profile think_budget"
    if not predicted:
        return think_budget, None, None
    if think_budget is not None:
        reason = (f"at most {think_budget} reasoning tokens ({source}) + a "
                  f"{ANSWER_TOKENS}-token answer at ~{predicted:g} tokens/s")
        return think_budget, round((think_budget + ANSWER_TOKENS) / predicted, 1), reason
    example = UNBOUNDED_EXAMPLE_TOKENS / predicted
    took = f"{example / 60:.0f} min" if example >= 120 else f"{example:.0f} s"
    reason = (f"no thinking budget: this model may reason for thousands of tokens "
              f"({UNBOUNDED_EXAMPLE_TOKENS} take {took} at ~{predicted:g} tokens/s); "
              "cap it with --think-budget")
    return think_budget, None, reason


def refusal(plan: Plan, model: ModelInfo) -> str | None:
    """What a plan that does not fit needs against what there is; None when it fits or nothing bounds it."""
    if plan.fits:
        return None
    name = model.name or "model"
    if plan.rpc:
        need = sum(d.total_bytes for d in plan.devices)
        workers = len(plan.rpc)
        return (
            f"{name} {model.quant} needs {format_size(need)} across the devices (weights "
            f"{format_size(model.weights_bytes)} + KV {format_size(plan.kv_bytes)} at {plan.n_ctx} tokens + runtime) but this board "
            f"and {workers} worker{'s' if workers > 1 else ''} cannot hold it: "
            + ", ".join(f"{d.name} offers {format_size(d.budget_bytes)}" for d in plan.devices))
    if plan.budget_bytes is None:
        return None
    return (
        f"{name} {model.quant} needs {format_size(plan.total_bytes)} "
        f"(weights {format_size(model.weights_bytes)} + KV {format_size(plan.kv_bytes)} at {plan.n_ctx} tokens"
        + (f" in {plan.parallel} slots" if plan.parallel > 1 else "")
        + f" + {format_size(plan.overhead_bytes)} runtime) but the budget is {format_size(plan.budget_bytes)}"
    )


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
    think_budget: int | None = None,
    measured: Measured | None = None,
) -> Plan:
    """Choose context, KV type, cores, threads and batch so the model fits the memory budget.

    `build_repacks`: the installed llama.cpp repacks weights at load (system info `REPACK = 1`).
    `parallel`: sequences served at once; each gets the context chosen here in its own KV stream
    (the KV cache holds all of them: n_ctx is the total), and attends over its own stream only.
    `workers`: RPC workers (probed) to split the layers across, after this board's, in order.
    `measured`: what `edgellm bench` measured on this device (edgellm.store.measured), if anything.
    """
    parallel = max(parallel, 1)
    reasons: dict[str, str] = {}  # in the order `edgellm plan` shows them
    budget, reasons["budget"] = memory_budget(device, profile, mem_budget)
    wanted, reasons["n_ctx"] = choose_context(model, profile, ctx)
    n_ubatch = micro_batch(profile)
    fit = MemoryFit(model, budget, parallel, n_ubatch, tuple(workers or ()))
    kv_type, n_ctx, reasons["kv_type"], shorter = choose_kv_and_context(fit, profile, wanted)
    if shorter:
        reasons["n_ctx"] = shorter

    total, kv_bytes, compute = fit.needs(n_ctx, kv_type)
    devices, fits_budget = fit.device_shares(n_ctx, kv_type)
    if fit.workers:
        total = devices[0].total_bytes  # this board's part: what its budget must hold
        reasons["devices"] = split_reason(fit, devices, n_ctx, kv_type)

    cores = select_cores(device, profile)
    reasons["cores"] = cores_reason(device, profile, cores)
    n_threads, n_threads_batch, thread_reasons, warnings = threads_for(device, profile, cores, threads, threads_batch)
    reasons.update(thread_reasons)

    if parallel > 1:
        reasons["parallel"] = f"{parallel} slots of {n_ctx} tokens: {parallel} KV streams, {n_ctx * parallel} cells in all"
    n_ctx_per_slot, n_ctx = n_ctx, n_ctx * parallel
    n_batch = min(profile.n_batch, n_ctx)
    use_mmap, reasons["mmap"] = mmap_choice(profile, build_repacks)
    predicted, speed_reason = predicted_speed(model, profile, fit.workers, measured)
    if speed_reason:
        reasons["predicted_tg_tps"] = speed_reason
    think_budget, worst_answer_s, think_reason = thinking_time(model, profile, predicted, think_budget)
    if think_reason:
        reasons["worst_answer_s"] = think_reason

    plan = Plan(
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
        use_mlock=profile.mlock and fits_budget,
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
        warnings=warnings,
        think_budget=think_budget,
        worst_answer_s=worst_answer_s,
        devices=devices,
    )
    plan.refusal = refusal(plan, model)
    return plan

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
