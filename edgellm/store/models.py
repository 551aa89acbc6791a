"""The model store: what `-m`, `pull`, `models`, `ls` and `rm` accept, and where the files are.

One resolver for every command: a local path, a catalog name (`deepseek-r1-1.5b[:Q4_K_S]`),
`owner/repo[:QUANT]` (llama.cpp/Ollama style) or `owner/repo/file.gguf`. Without a quant the
planner picks one for this device (catalog.choose_quant). Downloads live in huggingface_hub's cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgellm import ui
from edgellm.device.hardware import Device, read_regular_file
from edgellm.device.profiles import Profile
from edgellm.errors import DownloadError, ModelNotFoundError, UsageError
from edgellm.store import hub as download
from edgellm.store.catalog import (
    CatalogEntry,
    QuantCandidate,
    choose_quant,
    entry_for_repo,
    find_entry,
    load_catalog,
    quant_of_filename,
    quants_in_files,
    rank_quants,
)
from edgellm.store.gguf import GGUF_MAGIC, GGUF_MIN_BYTES, ModelInfo, read_gguf
from edgellm.units import format_size

_HUB_FILE = re.compile(rf"^{download._REPO_PART}/{download._REPO_PART}/.+\.gguf$", re.IGNORECASE)
_HUB_REPO = re.compile(rf"^(?P<repo>{download._REPO_PART}/{download._REPO_PART})(?::(?P<quant>[A-Za-z0-9_.-]+))?$")
_CATALOG = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?::(?P<quant>[A-Za-z0-9_.-]+))?$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed `-m` value that names a hub model (local paths never become a ModelRef)."""

    spec: str
    repo: str
    revision: str
    quant: str | None = None
    filename: str | None = None
    entry: CatalogEntry | None = None

    @property
    def label(self) -> str:
        return self.entry.name if self.entry else self.repo


def parse_spec(spec: str, revision: str | None = None) -> ModelRef | Path:
    """Path for local files, else a ModelRef; ModelNotFoundError for anything else."""
    text = spec.strip()
    if revision is not None:
        download.check_revision(revision)
    path = Path(text).expanduser()
    # is_symlink: a dangling link or a loop is still the user's file, and read_gguf says what is wrong.
    if path.exists() or path.is_symlink() or text.startswith(("/", "./", "../", "~", ".\\")):
        return path
    if _HUB_FILE.match(text):
        owner, name, filename = text.split("/", 2)
        if not download.is_safe_relative_path(filename):
            raise ModelNotFoundError(f"'{text}': {filename!r} is not a file name inside the repo",
                                     hint="name the file as the repo lists it: owner/repo/file.gguf")
        repo_id = f"{owner}/{name}"
        entry = entry_for_repo(repo_id)
        return ModelRef(text, repo_id, revision or (entry.revision if entry else download.DEFAULT_REVISION),
                        quant_of_filename(filename), filename, entry)
    if text.lower().endswith(".gguf"):
        return path  # a local file name that does not exist: read_gguf says so
    match = _CATALOG.match(text)
    if match and "/" not in text:
        entry = find_entry(match.group("name"))
        if entry is None:
            raise ModelNotFoundError(
                f"'{text}' is not a model file or a model edgellm knows",
                hint="see `edgellm models` for names, or pass owner/repo:QUANT or a path to a .gguf file",
            )
        return ModelRef(text, entry.repo, revision or entry.revision, _quant(match.group("quant")), None, entry)
    match = _HUB_REPO.match(text)
    if match:
        entry = entry_for_repo(match.group("repo"))
        return ModelRef(text, match.group("repo"), revision or (entry.revision if entry else download.DEFAULT_REVISION),
                        _quant(match.group("quant")), None, entry)
    raise download.not_a_model(spec)


def _quant(tag: str | None) -> str | None:
    return tag.upper() if tag else None


# --- locating the file -----------------------------------------------------------------------------


@dataclass
class Located:
    """Which file a ModelRef means here, and whether it is on disk."""

    ref: ModelRef
    quant: str | None
    filename: str
    size: int
    path: Path | None
    reason: str
    remote: download.RemoteFile | None = None
    commit: str | None = None
    candidates: list[QuantCandidate] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.ref.label}:{self.quant}" if self.quant else f"{self.ref.repo}/{self.filename}"


def _candidates_from_catalog(entry: CatalogEntry, revision: str) -> list[QuantCandidate]:
    return [
        QuantCandidate(q, f.filename, f.size, download.cached_file(entry.repo, f.filename, revision) is not None, entry.model_info(q))
        for q, f in entry.files.items()
    ]


def _candidates_from_listing(ref: ModelRef, files: dict[str, int]) -> list[QuantCandidate]:
    out = []
    for quant, filename in quants_in_files(list(files)).items():
        size = files[filename]
        model = ref.entry.model_info(quant, size) if ref.entry else None
        out.append(QuantCandidate(quant, filename, size, download.cached_file(ref.repo, filename, ref.revision) is not None, model))
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
    lookup_remote: bool = True,
) -> Located:
    """Pick the file (planner's quant choice when none is given) and find it in the cache.

    Goes to the hub only when it must: a quant or file the catalog does not name, or the sha256
    and size for a download of a file that is not here (unless lookup_remote is False).
    """
    listing: download.RepoListing | None = None

    def fetch_listing() -> download.RepoListing:
        nonlocal listing
        if listing is None:
            listing = download.list_repo(ref.repo, ref.revision)
        return listing

    if ref.filename:
        quant, filename, reason = ref.quant, ref.filename, "file named explicitly"
        size = ref.entry.files[quant].size if ref.entry and quant in ref.entry.files and ref.entry.files[quant].filename == filename else 0
        candidates: list[QuantCandidate] = []
    else:
        if ref.entry and (ref.quant is None or ref.quant in ref.entry.files):
            candidates = _candidates_from_catalog(ref.entry, ref.revision)
        elif download.offline():
            cached = {name: path.stat().st_size for name, path in download.cached_files(ref.repo).items()}
            candidates = _candidates_from_listing(ref, cached)
            if not candidates:
                raise download.offline_error(ref.spec)
        else:
            candidates = _candidates_from_listing(ref, {f.filename: f.size for f in fetch_listing().files.values()})
            if not candidates:
                raise DownloadError(f"{ref.repo} has no single-file GGUF models", hint="edgellm runs GGUF files; try a -GGUF repo, e.g. bartowski/...-GGUF")
        if ref.quant:
            chosen = next((c for c in candidates if c.quant == ref.quant), None)
            if chosen is None:
                raise DownloadError(
                    f"{ref.label} has no {ref.quant} file; it has: {_quant_list(rank_quants(candidates, profile.quant_preference))}",
                    hint=f"edgellm pull {ref.label}:{rank_quants(candidates, profile.quant_preference)[0].quant}" if candidates else None,
                )
            reason = f"{ref.quant} asked for"
        else:
            choice = choose_quant(candidates, device, profile, ctx=ctx, mem_budget=mem_budget, prefer_downloaded=not for_pull)
            if choice.chosen is None and not lookup_remote and candidates:
                # Only looking (plan): show the preferred quant's plan, which says why it does not fit.
                choice.chosen = rank_quants(candidates, profile.quant_preference)[0]
            if choice.chosen is None:
                raise DownloadError(
                    f"{ref.label}: {choice.reason}",
                    hint=f"pick a quant yourself (edgellm pull {ref.label}:QUANT; quants: {_quant_list(candidates)}) or raise --mem-budget",
                )
            chosen, reason = choice.chosen, choice.reason
        quant, filename, size = chosen.quant, chosen.filename, chosen.size

    path = download.cached_file(ref.repo, filename, ref.revision)
    located = Located(ref, quant, filename, size, path, reason, candidates=candidates)
    if path is not None:
        located.size = path.stat().st_size
    if path is None and lookup_remote:
        if download.offline():
            raise download.offline_error(f"{ref.label}:{quant}" if quant else ref.spec)
        remote_listing = fetch_listing()
        remote = remote_listing.files.get(filename)
        if remote is None:
            available = quants_in_files(list(remote_listing.files))
            raise DownloadError(
                f"{ref.repo} has no file {filename} at {ref.revision}; quants there: {', '.join(available) or 'none'}",
                hint=f"edgellm pull {ref.repo}:{next(iter(available))}" if available else "check the file name",
            )
        located.remote, located.commit, located.size = remote, remote_listing.commit, remote.size
    return located


# --- pulling ---------------------------------------------------------------------------------------


def fetch(located: Located, *, yes: bool = False, progress_factory: Any = None) -> Path:
    """Download a located file (asking first on a terminal when it is over 1 GB, unless yes)."""
    if located.path is not None:
        return located.path
    if located.remote is None or located.commit is None:
        raise DownloadError(f"{located.name}: no download information", hint=f"edgellm pull {located.ref.spec}")
    size = located.remote.size
    if size > download.CONFIRM_ABOVE_BYTES and not yes and ui.interactive():
        if not ui.confirm(f"Download {located.name} ({format_size(size)}) from {located.ref.repo}?"):
            raise DownloadError("download cancelled", hint=f"edgellm pull {located.ref.spec} --yes")
    ui.info(f"pulling {located.name} ({format_size(size)}) from {download.hub_endpoint()}/{located.ref.repo} [{located.reason}]")
    return download.download(located.ref.repo, located.remote, revision=located.ref.revision, commit=located.commit,
                             progress_factory=progress_factory)


def resolve(
    spec: str,
    device: Device,
    profile: Profile,
    *,
    yes: bool = False,
    fetch_missing: bool = True,
    ctx: int | None = None,
    mem_budget: int | None = None,
) -> ModelInfo:
    """`-m` to a ModelInfo: read the GGUF header when the file is here, else pull it (fetch_missing),
    else describe it from the catalog shape so the planner can size it before any download."""
    parsed = parse_spec(spec)
    if isinstance(parsed, Path):
        return read_gguf(parsed)
    located = locate(parsed, device, profile, ctx=ctx, mem_budget=mem_budget, lookup_remote=fetch_missing)
    if located.path is None and not fetch_missing:
        if parsed.entry and located.quant in parsed.entry.files:
            return parsed.entry.model_info(located.quant)
        raise DownloadError(f"{located.name} is not downloaded and edgellm does not know its shape", hint=f"edgellm pull {spec}")
    path = fetch(located, yes=yes) if located.path is None else located.path
    info = read_gguf(path)
    info.name = info.name or located.name
    return info


# --- ls and rm -------------------------------------------------------------------------------------


@dataclass
class Downloaded:
    repo: str
    filename: str
    quant: str | None
    size: int
    path: Path
    commit: str
    catalog_name: str | None

    @property
    def name(self) -> str:
        base = self.catalog_name or self.repo
        return f"{base}:{self.quant}" if self.quant else f"{self.repo}/{self.filename}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "repo": self.repo, "file": self.filename, "quant": self.quant, "size": self.size,
                "path": str(self.path), "commit": self.commit, "catalog_name": self.catalog_name}


def list_downloaded(*, include_broken: bool = False) -> list[Downloaded]:
    """Every .gguf in the hub cache (edgellm's or another tool's), newest snapshot per file.

    Links whose blob is gone and files that cannot be GGUF (empty, truncated to nothing, another
    format) are not models; include_broken lists them too (size 0 for a dangling link), for `rm`.
    """
    out: dict[tuple[str, ...], Downloaded] = {}
    root = download.hub_cache_dir()
    if not root.is_dir():
        return []
    for folder in sorted(root.glob("models--*")):
        repo = folder.name[len("models--"):].replace("--", "/", 1)
        entry = entry_for_repo(repo)
        snapshots = folder / "snapshots"
        if not snapshots.is_dir():
            continue
        for snapshot in sorted(snapshots.iterdir(), key=_mtime):
            for path in sorted(snapshot.rglob("*.gguf")):
                usable = _looks_like_gguf(path)
                if path.is_dir() or not (usable or include_broken):
                    continue
                filename = path.relative_to(snapshot).as_posix()
                quant = (entry.quant_for_file(filename) if entry else None) or quant_of_filename(filename)
                # A broken entry never hides the working copy of the same file in another snapshot.
                key = (repo, filename) if usable else (repo, filename, snapshot.name)
                out[key] = Downloaded(repo, filename, quant, _size(path), path, snapshot.name,
                                                   entry.name if entry else None)
    return sorted(out.values(), key=lambda d: (d.name.lower()))


def _looks_like_gguf(path: Path) -> bool:
    """Whether the file (through its link) can be a GGUF model: its magic and a full fixed header."""
    try:
        return read_regular_file(path, 4) == GGUF_MAGIC and path.stat().st_size >= GGUF_MIN_BYTES
    except OSError:
        return False  # a dangling link, a loop, a FIFO, unreadable


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # a dangling link frees nothing but itself


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _target(path: Path) -> Path | None:
    """Where a snapshot entry's links lead, or None for a loop."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13 on a symlink loop
        return None


def match_downloaded(spec: str) -> list[Downloaded]:
    """The downloaded files a `rm` argument means: NAME (all quants), NAME:QUANT, owner/repo[:QUANT], owner/repo/file.

    Broken entries (dangling links, files that are not GGUF) match too: they are the user's clutter.
    """
    parsed = parse_spec(spec)
    if isinstance(parsed, Path):
        raise UsageError(f"{spec}: `edgellm rm` deletes downloaded models only; delete your own files yourself",
                         hint="see `edgellm ls` for downloaded models")
    found = []
    for item in list_downloaded(include_broken=True):
        if item.repo.lower() != parsed.repo.lower():
            continue
        if parsed.filename and item.filename != parsed.filename:
            continue
        if parsed.quant and item.quant != parsed.quant:
            continue
        found.append(item)
    return found


def remove(items: list[Downloaded]) -> int:
    """Delete snapshot links and the blobs no other snapshot uses; returns bytes freed."""
    freed = 0
    for item in items:
        pointer = item.path
        blob = _target(pointer)
        folder = download.repo_folder(item.repo)
        pointer.unlink()
        if blob is not None and blob != pointer and blob.exists():
            still_used = any(
                _target(p) == blob for p in (folder / "snapshots").rglob("*") if p.is_symlink() or p.is_file()
            )
            if not still_used:
                freed += blob.stat().st_size
                blob.unlink()
        else:
            freed += item.size  # a file kept in the snapshot itself (no symlinks); 0 for a dangling link
        _prune_empty(pointer.parent, folder / "snapshots")
    return freed


def _prune_empty(directory: Path, stop: Path) -> None:
    while directory != stop and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent


# --- catalog listing -------------------------------------------------------------------------------


def catalog_rows(device: Device, profile: Profile, *, ctx: int | None = None, mem_budget: int | None = None) -> list[dict[str, Any]]:
    """One dict per catalog model: quants with size, downloaded, fits, and the planner's choice."""
    rows = []
    for entry in load_catalog().values():
        candidates = _candidates_from_catalog(entry, entry.revision)
        choice = choose_quant(candidates, device, profile, ctx=ctx, mem_budget=mem_budget)
        quants = []
        for candidate in rank_quants(candidates, profile.quant_preference):
            plan = choice.plans.get(candidate.quant)
            path = download.cached_file(entry.repo, candidate.filename, entry.revision)
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
