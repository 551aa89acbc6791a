"""Which quant of a model to use here: rank the candidates by the profile's preference and pick
the best that fits the device (sized by the planner). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from edgellm.device.profiles import Profile
from edgellm.device.types import Device
from edgellm.plan.planner import RUNTIME_OVERHEAD_BYTES, Plan, make_plan, memory_budget
from edgellm.store.gguf import ModelInfo
from edgellm.units import format_size


@dataclass(frozen=True)
class QuantCandidate:
    """One file the user could get: its quant, size, whether it is on disk, and its shape if known."""

    quant: str
    filename: str
    size: int
    downloaded: bool = False
    model: ModelInfo | None = None



@dataclass
class QuantChoice:
    chosen: QuantCandidate | None
    reason: str
    fits: dict[str, bool] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)



def _size_only_fits(size: int, device: Device, profile: Profile, mem_budget: int | None) -> bool:
    """For repos outside the catalog (shape unknown): the file plus runtime plus a 10% allowance
    for KV cache and buffers must fit what the planner would budget."""
    budget, _ = memory_budget(device, profile, mem_budget)
    return budget is None or size + size // 10 + RUNTIME_OVERHEAD_BYTES <= budget



def rank_quants(candidates: Sequence[QuantCandidate], preference: Sequence[str]) -> list[QuantCandidate]:
    """The profile's preference order first, then every other quant from the largest (best) down."""
    order = [q.upper() for q in preference]
    preferred = sorted((c for c in candidates if c.quant in order), key=lambda c: order.index(c.quant))
    others = sorted((c for c in candidates if c.quant not in order), key=lambda c: -c.size)
    return preferred + others



def choose_quant(
    candidates: Sequence[QuantCandidate],
    device: Device,
    profile: Profile,
    *,
    ctx: int | None = None,
    mem_budget: int | None = None,
    prefer_downloaded: bool = False,
) -> QuantChoice:
    """The first quant in the profile's preference order whose plan fits this device.

    With prefer_downloaded, a quant already on disk that fits wins over a better one that would
    have to be downloaded (so `run -m NAME` never surprises with a download when a copy exists).
    """
    ranked = rank_quants(candidates, profile.quant_preference)
    fits: dict[str, bool] = {}
    plans: dict[str, Plan] = {}
    for candidate in ranked:
        if candidate.model is not None:
            plan = make_plan(candidate.model, device, profile, ctx=ctx, mem_budget=mem_budget)
            plans[candidate.quant] = plan
            fits[candidate.quant] = plan.fits
        else:
            fits[candidate.quant] = _size_only_fits(candidate.size, device, profile, mem_budget)
    fitting = [c for c in ranked if fits[c.quant]]
    if prefer_downloaded:
        on_disk = [c for c in fitting if c.downloaded]
        if on_disk:
            return QuantChoice(on_disk[0], f"{on_disk[0].quant} is already downloaded and fits", fits, plans)
    if fitting:
        best = fitting[0]
        skipped = [c.quant for c in ranked[: ranked.index(best)]]
        why = f"profile {profile.name} prefers {', '.join(profile.quant_preference)}"
        if skipped:
            why += f"; {', '.join(skipped)} would not fit"
        return QuantChoice(best, f"{best.quant}: {why}", fits, plans)
    if not ranked:
        return QuantChoice(None, "no single-file GGUF quants found", fits, plans)
    smallest = min(ranked, key=lambda c: c.size)
    smallest_plan = plans.get(smallest.quant)
    needs = format_size(smallest_plan.total_bytes) if smallest_plan else format_size(smallest.size)
    budget = format_size(smallest_plan.budget_bytes) if smallest_plan else "the memory budget"
    return QuantChoice(None, f"no quant fits this device: even {smallest.quant} needs {needs} of {budget}", fits, plans)
