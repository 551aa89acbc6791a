"""The downloaded models (`edgellm ls`, `edgellm rm`): GGUF files in the Hugging Face cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgellm.errors import UsageError
from edgellm.files import read_regular_file
from edgellm.store import hub
from edgellm.store.catalog import entry_for_repo, quant_of_filename
from edgellm.store.gguf import GGUF_MAGIC, GGUF_MIN_BYTES
from edgellm.store.refs import parse_spec


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
    root = hub.hub_cache_dir()
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
        folder = hub.repo_folder(item.repo)
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
