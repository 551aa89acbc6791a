"""`-m` to a file: a model reference located in the catalog, the hub listing or the local cache,
its quant chosen for this device, pulled when asked (say/confirm/progress come from the caller)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgellm.device.profiles import Profile
from edgellm.device.types import Device
from edgellm.errors import DownloadError, NotOnHubError
from edgellm.plan.quant import QuantCandidate, choose_quant, rank_quants
from edgellm.store import hub
from edgellm.store.catalog import CatalogEntry, load_catalog, quants_in_files
from edgellm.store.gguf import ModelInfo, read_gguf
from edgellm.store.refs import ModelRef, parse_spec
from edgellm.units import format_size


@dataclass
class Located:
    """Which file a ModelRef means here, and whether it is on disk."""

    ref: ModelRef
    quant: str | None
    filename: str
    size: int
    path: Path | None
    reason: str
    remote: hub.RemoteFile | None = None
    commit: str | None = None
    candidates: list[QuantCandidate] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.ref.label}:{self.quant}" if self.quant else f"{self.ref.repo}/{self.filename}"



def _candidates_from_catalog(entry: CatalogEntry, revision: str) -> list[QuantCandidate]:
    return [
        QuantCandidate(q, f.filename, f.size, hub.cached_file(entry.repo, f.filename, revision) is not None, entry.model_info(q))
        for q, f in entry.files.items()
    ]



def _candidates_from_listing(ref: ModelRef, files: dict[str, int]) -> list[QuantCandidate]:
    out = []
    for quant, filename in quants_in_files(list(files)).items():
        size = files[filename]
        model = ref.entry.model_info(quant, size) if ref.entry else None
        out.append(QuantCandidate(quant, filename, size, hub.cached_file(ref.repo, filename, ref.revision) is not None, model))
    return out



def _quant_list(candidates: list[QuantCandidate]) -> str:
    return ", ".join(f"{c.quant} ({format_size(c.size)})" for c in candidates) or "none"



def locate(
    ref: ModelRef,
    device: Device,
    profile: Profile,
    *,
    ctx: int | None = None,
    mem_budget: int | None = None,
    for_pull: bool = False,
    download: bool = True,
) -> Located:
    """Pick the file (planner's quant choice when none is given) and find it in the cache.

    Goes to the hub only when it must: a quant or file the catalog does not name, or the sha256
    and size for a download of a file that is not here (unless download is False: no network at all).
    """
    listing: hub.RepoListing | None = None

    def fetch_listing() -> hub.RepoListing:
        nonlocal listing
        if listing is None:
            listing = hub.list_repo(ref.repo, ref.revision)
        return listing

    if ref.filename:
        quant, filename, reason = ref.quant, ref.filename, "file named explicitly"
        size = ref.entry.files[quant].size if ref.entry and quant in ref.entry.files and ref.entry.files[quant].filename == filename else 0
        candidates: list[QuantCandidate] = []
    else:
        if ref.entry and (ref.quant is None or ref.quant in ref.entry.files):
            candidates = _candidates_from_catalog(ref.entry, ref.revision)
        elif hub.offline():
            cached = {name: path.stat().st_size for name, path in hub.cached_files(ref.repo).items()}
            candidates = _candidates_from_listing(ref, cached)
            if not candidates:
                raise hub.offline_error(ref.spec)
        else:
            candidates = _candidates_from_listing(ref, {f.filename: f.size for f in fetch_listing().files.values()})
            if not candidates:
                raise DownloadError(f"{ref.repo} has no single-file GGUF models", hint="edgellm runs GGUF files; try a -GGUF repo, e.g. bartowski/...-GGUF")
        if ref.quant:
            chosen = next((c for c in candidates if c.quant == ref.quant), None)
            if chosen is None:
                raise NotOnHubError(
                    f"{ref.label} has no {ref.quant} file; it has: {_quant_list(rank_quants(candidates, profile.quant_preference))}",
                    hint=f"edgellm pull {ref.label}:{rank_quants(candidates, profile.quant_preference)[0].quant}" if candidates else None,
                )
            reason = f"{ref.quant} asked for"
        else:
            choice = choose_quant(candidates, device, profile, ctx=ctx, mem_budget=mem_budget, prefer_downloaded=not for_pull)
            if choice.chosen is None and not download and candidates:
                # Only looking (plan): show the preferred quant's plan, which says why it does not fit.
                choice.chosen = rank_quants(candidates, profile.quant_preference)[0]
            if choice.chosen is None:
                raise DownloadError(
                    f"{ref.label}: {choice.reason}",
                    hint=f"pick a quant yourself (edgellm pull {ref.label}:QUANT; quants: {_quant_list(candidates)}) or raise --mem-budget",
                )
            chosen, reason = choice.chosen, choice.reason
        quant, filename, size = chosen.quant, chosen.filename, chosen.size

    path = hub.cached_file(ref.repo, filename, ref.revision)
    located = Located(ref, quant, filename, size, path, reason, candidates=candidates)
    if path is not None:
        located.size = path.stat().st_size
    if path is None and download:
        if hub.offline():
            raise hub.offline_error(f"{ref.label}:{quant}" if quant else ref.spec)
        remote_listing = fetch_listing()
        remote = remote_listing.files.get(filename)
        if remote is None:
            available = quants_in_files(list(remote_listing.files))
            raise NotOnHubError(
                f"{ref.repo} has no file {filename} at {ref.revision}; quants there: {', '.join(available) or 'none'}",
                hint=f"edgellm pull {ref.repo}:{next(iter(available))}" if available else "check the file name",
            )
        located.remote, located.commit, located.size = remote, remote_listing.commit, remote.size
    return located



def _quiet(message: str) -> None:
    """A library caller that passed no `say` hears nothing."""



def fetch(located: Located, *, yes: bool = False, say: Callable[[str], None] = _quiet,
          confirm: Callable[[str], bool] | None = None, progress_factory: Any = None) -> Path:
    """Download a located file, asking `confirm` first when it is over 1 GB (unless yes; no
    confirm: nobody to ask, as on a pipe). `say` hears what is pulled from where."""
    if located.path is not None:
        return located.path
    if located.remote is None or located.commit is None:
        raise DownloadError(f"{located.name}: no download information", hint=f"edgellm pull {located.ref.spec}")
    size = located.remote.size
    if size > hub.CONFIRM_ABOVE_BYTES and not yes and confirm is not None:
        if not confirm(f"Download {located.name} ({format_size(size)}) from {located.ref.repo}?"):
            raise DownloadError("download cancelled", hint=f"edgellm pull {located.ref.spec} --yes")
    say(f"pulling {located.name} ({format_size(size)}) from {hub.hub_endpoint()}/{located.ref.repo} [{located.reason}]")
    return hub.download(located.ref.repo, located.remote, revision=located.ref.revision, commit=located.commit,
                             progress_factory=progress_factory)



def resolve(
    spec: str,
    device: Device,
    profile: Profile,
    *,
    yes: bool = False,
    download: bool = True,
    ctx: int | None = None,
    mem_budget: int | None = None,
    say: Callable[[str], None] = _quiet,
    confirm: Callable[[str], bool] | None = None,
    progress_factory: Any = None,
) -> ModelInfo:
    """`-m` to a ModelInfo: read the GGUF header when the file is here, else pull it (download),
    else describe it from the catalog shape so the planner can size it before any download."""
    parsed = parse_spec(spec)
    if isinstance(parsed, Path):
        return read_gguf(parsed)
    located = locate(parsed, device, profile, ctx=ctx, mem_budget=mem_budget, download=download)
    if located.path is None and not download:
        if parsed.entry and located.quant in parsed.entry.files:
            return parsed.entry.model_info(located.quant)
        raise DownloadError(f"{located.name} is not downloaded and edgellm does not know its shape", hint=f"edgellm pull {spec}")
    path = fetch(located, yes=yes, say=say, confirm=confirm, progress_factory=progress_factory) if located.path is None else located.path
    info = read_gguf(path)
    info.name = info.name or located.name
    return info



def catalog_rows(device: Device, profile: Profile, *, ctx: int | None = None, mem_budget: int | None = None) -> list[dict[str, Any]]:
    """One dict per catalog model: quants with size, downloaded, fits, and the planner's choice."""
    rows = []
    for entry in load_catalog().values():
        candidates = _candidates_from_catalog(entry, entry.revision)
        choice = choose_quant(candidates, device, profile, ctx=ctx, mem_budget=mem_budget)
        quants = []
        for candidate in rank_quants(candidates, profile.quant_preference):
            plan = choice.plans.get(candidate.quant)
            path = hub.cached_file(entry.repo, candidate.filename, entry.revision)
            quants.append({
                "quant": candidate.quant, "file": candidate.filename,
                "size": path.stat().st_size if path else candidate.size,
                "downloaded": path is not None, "path": str(path) if path else None,
                "fits": choice.fits.get(candidate.quant, False),
                "needs_bytes": plan.total_bytes if plan else None,
                "predicted_tg_tps": plan.predicted_tg_tps if plan else None,
            })
        rows.append({
            "name": entry.name, "description": entry.description, "repo": entry.repo, "revision": entry.revision,
            "license": entry.license, "thinks": entry.thinks, "default": entry.name == profile.default_model,
            "recommended_quant": choice.chosen.quant if choice.chosen else None, "recommendation": choice.reason,
            "quants": quants,
        })
    return rows
