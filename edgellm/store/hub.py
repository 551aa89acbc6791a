"""Hugging Face downloads into huggingface_hub's cache: resumable, sha256-verified, disk-checked.

huggingface_hub (2.x) names the files and talks to the hub (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE),
and its cache layout (models--owner--repo/blobs, snapshots/<commit>/<file>, refs/<revision>) is kept
so `hf` and other tools see edgellm's downloads. The transfer itself is edgellm's: hf_hub_download
deletes its partial file when a transfer dies and does not check sha256, and a 4.6 GB model on a Pi's
Wi-Fi must survive both. The partial file is blobs/<sha256>.incomplete and a later pull resumes it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgellm.errors import DownloadError, ModelNotFoundError, NotOnHubError, UsageError
from edgellm.files import read_regular_file
from edgellm.units import format_size

DEFAULT_REVISION = "main"
CONFIRM_ABOVE_BYTES = 1024**3
# Kept free beyond the file itself, so a pull never fills the disk to the last byte.
DISK_MARGIN_BYTES = 64 * 1024**2
RETRIES = 5
# Seconds before the first retry of a dropped transfer; doubles per failed attempt (tests set 0).
RETRY_DELAY_S = 0.5
HASH_READ_BYTES = 8 * 1024**2

_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
REPO_ID = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
# Names the hub answers become cache paths (snapshots/<commit>/<file>, blobs/<sha256>), so each
# is checked before use: a mirror answering `../` would otherwise write outside the cache.
COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
BLOB_ID = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")  # a git object id: sha1, or sha256 repos


def is_safe_relative_path(name: str) -> bool:
    """Whether `name` is a relative POSIX path that stays below the directory it is joined to:
    no absolute part, no `.`/`..`/empty component, no backslash, NUL or control character."""
    if not name or name.startswith("/") or any(char == "\\" or ord(char) < 0x20 or char == "\x7f" for char in name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def check_revision(revision: str) -> str:
    """A --revision names refs/<revision> and snapshots/<revision> in the cache: refuse `..` and the like."""
    if not is_safe_relative_path(revision):
        raise UsageError(f"--revision {revision!r}: not a branch, tag or commit name", hint="e.g. --revision main")
    return revision


def _unsafe_answer(repo: str, what: str, value: object) -> DownloadError:
    return DownloadError(
        f"the hub answered an unsafe {what} {value!r} for {repo}; nothing was written",
        hint=f"{hub_endpoint()} is not behaving like Hugging Face: check HF_ENDPOINT",
    )


def check_listing_names(listing: RepoListing) -> RepoListing:
    """Refuse a listing whose commit, file names or hashes could not be cache paths."""
    if not COMMIT_ID.match(listing.commit):
        raise _unsafe_answer(listing.repo, "commit id", listing.commit)
    for remote in listing.files.values():
        if not is_safe_relative_path(remote.filename):
            raise _unsafe_answer(listing.repo, "file name", remote.filename)
        if remote.sha256 is not None and not SHA256.match(remote.sha256):
            raise _unsafe_answer(listing.repo, "sha256", remote.sha256)
        if remote.blob_id is not None and not BLOB_ID.match(remote.blob_id):
            raise _unsafe_answer(listing.repo, "blob id", remote.blob_id)
    return listing


# --- where things are ------------------------------------------------------------------------------


def hub_endpoint() -> str:
    """Read at call time (not at import, as huggingface_hub.constants does) so tests and callers can set it."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_cache_dir() -> Path:
    """huggingface_hub's cache: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def repo_folder(repo: str) -> Path:
    return hub_cache_dir() / ("models--" + repo.replace("/", "--"))


def cached_file(repo: str, filename: str, revision: str = DEFAULT_REVISION) -> Path | None:
    """The downloaded file for repo@revision, or None. Works offline (reads refs/ and snapshots/)."""
    if not (is_safe_relative_path(filename) and is_safe_relative_path(revision)):
        return None
    folder = repo_folder(repo)
    commit = _read_ref(folder, revision) or revision
    candidate = folder / "snapshots" / commit / filename
    return candidate if candidate.is_file() else None


def _read_ref(folder: Path, revision: str) -> str | None:
    """The commit refs/<revision> holds; None when there is none or it is not a commit id."""
    try:
        commit = read_regular_file(folder / "refs" / revision, 256).decode("ascii", "replace").strip()
    except OSError:
        return None
    return commit if COMMIT_ID.match(commit) else None


def cached_files(repo: str) -> dict[str, Path]:
    """Every downloaded file of a repo by name (newest snapshot wins), for offline quant listing."""
    snapshots = repo_folder(repo) / "snapshots"
    found: dict[str, Path] = {}
    if not snapshots.is_dir():
        return found
    for snapshot in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime):
        for path in snapshot.rglob("*"):
            if path.is_file():
                found[path.relative_to(snapshot).as_posix()] = path
    return found


# --- hub queries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    filename: str
    size: int
    sha256: str | None  # None for files not in LFS (small text files): checked by size only
    blob_id: str | None


@dataclass(frozen=True)
class RepoListing:
    repo: str
    revision: str
    commit: str
    files: dict[str, RemoteFile]


def _has_token() -> bool:
    from huggingface_hub import get_token  # noqa: PLC0415  (huggingface_hub takes ~0.3 s to import: only downloads pay)

    return get_token() is not None


@contextmanager
def hub_errors(repo: str, revision: str, filename: str | None = None, *, network: bool = True) -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into one-line DownloadErrors with a next step."""
    import httpx2  # noqa: PLC0415  (huggingface_hub takes ~0.3 s to import: only downloads pay)
    from huggingface_hub.errors import (  # noqa: PLC0415  (only downloads pay for the import)
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise DownloadError(
            f"{repo} is gated: accept its terms on {hub_endpoint()}/{repo} and authenticate",
            hint="export HF_TOKEN=hf_... (a token from huggingface.co/settings/tokens) or run `hf auth login`, then try again",
        ) from None
    except RepositoryNotFoundError:
        private = "" if _has_token() else " (or it is private: set HF_TOKEN or run `hf auth login`)"
        raise NotOnHubError(
            f"no repo {repo} on {hub_endpoint()}{private}",
            hint="check the name; `edgellm models` lists the models edgellm knows",
        ) from None
    except RevisionNotFoundError:
        raise NotOnHubError(f"{repo} has no revision '{revision}'", hint="drop --revision to use main") from None
    except RemoteEntryNotFoundError:
        raise NotOnHubError(f"{repo} has no file {filename} at {revision}", hint=f"list the quants with: edgellm pull {repo}:?") from None
    except OfflineModeIsEnabled:
        raise offline_error(repo) from None
    except HfHubHTTPError as exc:  # before OSError: HfHubHTTPError is an OSError too
        status = exc.response.status_code if exc.response is not None else "?"
        raise DownloadError(f"{hub_endpoint()} answered HTTP {status} for {repo}", hint="the hub may be busy: try again in a minute") from None
    except (httpx2.TransportError, OSError) as exc:
        # network=False: the caller retries transport errors itself (mid-transfer drops).
        if not network or (isinstance(exc, OSError) and not _is_network_oserror(exc)):
            raise
        raise DownloadError(
            f"cannot reach {hub_endpoint()}: {_short(exc)}",
            hint="check the network connection (or set HF_ENDPOINT to a mirror), then run the command again",
        ) from None


def _is_network_oserror(exc: OSError) -> bool:
    return exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def offline_error(what: str) -> DownloadError:
    return DownloadError(
        f"HF_HUB_OFFLINE is set and {what} is not downloaded",
        hint="unset HF_HUB_OFFLINE to download it, or see `edgellm ls` for the models on this machine",
    )


def list_repo(repo: str, revision: str = DEFAULT_REVISION) -> RepoListing:
    """The repo's files with sizes and LFS sha256 (one /api/models call)."""
    if offline():
        raise offline_error(repo)
    from huggingface_hub import HfApi  # noqa: PLC0415  (huggingface_hub takes ~0.3 s to import: only downloads pay)

    with hub_errors(repo, revision):
        info = HfApi(endpoint=hub_endpoint()).model_info(repo, revision=revision, files_metadata=True)
    files = {}
    for sibling in info.siblings or []:
        lfs = sibling.lfs
        size = lfs.size if lfs is not None else (sibling.size or 0)
        files[sibling.rfilename] = RemoteFile(sibling.rfilename, int(size), lfs.sha256 if lfs is not None else None, sibling.blob_id)
    if not info.sha:
        raise DownloadError(f"the hub's answer for {repo} at {revision} has no commit id",
                            hint=f"{hub_endpoint()} is not behaving like Hugging Face: check HF_ENDPOINT")
    return check_listing_names(RepoListing(repo, revision, info.sha, files))


# --- progress --------------------------------------------------------------------------------------


class Progress(Protocol):
    """What a transfer reports to: ui.TransferProgress (plain lines) or ui.DownloadProgress (Rich),
    made by the caller's progress factory (the CLI passes ui.download_progress)."""

    def update(self, n_bytes: int) -> None: ...
    def reset(self, done: int) -> None: ...
    def close(self) -> None: ...


class _Silent:
    """No progress shown: a library caller that passed no progress factory."""

    def update(self, n_bytes: int) -> None: ...
    def reset(self, done: int) -> None: ...
    def close(self) -> None: ...


def _silent_progress(label: str, total: int, initial: int = 0) -> Progress:
    return _Silent()


# --- the transfer ----------------------------------------------------------------------------------


def check_disk_space(directory: Path, needed: int) -> None:
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + DISK_MARGIN_BYTES:
        raise DownloadError(
            f"not enough disk space: the download needs {format_size(needed)} but {probe} has {format_size(free)} free",
            hint="free some space (`edgellm ls`, `edgellm rm MODEL`) or point HF_HOME at a larger disk",
        )


def _hash_existing(path: Path) -> Any:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_READ_BYTES):
            digest.update(block)
    return digest


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def download(
    repo: str,
    remote: RemoteFile,
    *,
    revision: str = DEFAULT_REVISION,
    commit: str,
    progress_factory: Callable[[str, int, int], Progress] | None = None,
) -> Path:
    """Fetch one file into the hub cache (resuming a partial one), verify it, link it into the snapshot."""
    # Callers pass list_repo's checked names; checked again here because each one becomes a path.
    check_listing_names(RepoListing(repo, check_revision(revision), commit, {remote.filename: remote}))
    folder = repo_folder(repo)
    pointer = folder / "snapshots" / commit / remote.filename
    if pointer.is_file():
        _write_ref(folder, revision, commit)
        return pointer
    blob = folder / "blobs" / (remote.sha256 or remote.blob_id or f"{commit}-{remote.filename.replace('/', '_')}")
    if not blob.is_file():
        partial = blob.with_name(blob.name + ".incomplete")
        partial.parent.mkdir(parents=True, exist_ok=True)
        have = partial.stat().st_size if partial.exists() else 0
        if have > remote.size:
            partial.unlink()
            have = 0
        check_disk_space(partial.parent, remote.size - have)
        from huggingface_hub.utils import WeakFileLock  # noqa: PLC0415  (huggingface_hub takes ~0.3 s to import: only downloads pay)

        # One pull per file at a time: two processes appending to one partial file would corrupt it.
        with WeakFileLock(str(partial) + ".lock"):
            actual = _transfer(repo, remote, revision, partial, progress_factory or _silent_progress)
            _verify(repo, remote, partial, actual)
            os.replace(partial, blob)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except FileExistsError:
        pass
    except OSError:
        # No symlinks (some Windows setups, FAT-formatted SD cards): keep the file in the snapshot.
        shutil.move(str(blob), pointer)
    _write_ref(folder, revision, commit)
    return pointer


def _write_ref(folder: Path, revision: str, commit: str) -> None:
    if revision != commit:
        ref = folder / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        if _read_ref(folder, revision) != commit:
            ref.write_text(commit)


def _transfer(repo: str, remote: RemoteFile, revision: str, partial: Path,
              progress_factory: Callable[[str, int, int], Progress]) -> str:
    """Stream the file into `partial` from where it stops, retrying dropped connections.

    Returns the sha256 of the whole file, hashed as the bytes arrive (a resumed file's first part
    is hashed from disk first), so a 4.6 GB model is not read back a second time.
    """
    import httpx2  # noqa: PLC0415  (huggingface_hub takes ~0.3 s to import: only downloads pay)
    from huggingface_hub import hf_hub_url  # noqa: PLC0415  (huggingface_hub takes ~0.3 s to import: only downloads pay)
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status  # noqa: PLC0415  (huggingface_hub takes ~0.3 s to import: only downloads pay)

    url = hf_hub_url(repo, remote.filename, revision=revision, endpoint=hub_endpoint())
    headers = build_hf_headers()
    have = partial.stat().st_size if partial.exists() else 0
    digest = _hash_existing(partial) if have else hashlib.sha256()
    progress = progress_factory(remote.filename, remote.size, have)
    attempts_left = RETRIES
    try:
        while have < remote.size:
            request_headers = dict(headers, **({"Range": f"bytes={have}-"} if have else {}))
            before = have
            try:
                with hub_errors(repo, revision, remote.filename, network=False):
                    with get_session().stream("GET", url, headers=request_headers, follow_redirects=True, timeout=30) as response:
                        hf_raise_for_status(response)
                        if have and response.status_code != 206:
                            # The server ignored Range: start over rather than append a second copy.
                            have, digest = 0, hashlib.sha256()
                            progress.reset(0)
                        with partial.open("r+b" if partial.exists() else "wb") as handle:
                            handle.seek(have)
                            handle.truncate()
                            # No chunk size: keep whatever arrived before a drop (httpx would buffer it away).
                            for chunk in response.iter_bytes():
                                handle.write(chunk)
                                digest.update(chunk)
                                have += len(chunk)
                                progress.update(len(chunk))
            except httpx2.TransportError as exc:
                # A connection that made progress earns a fresh set of retries.
                attempts_left = RETRIES if have > before else attempts_left - 1
                if attempts_left <= 0:
                    raise DownloadError(
                        f"download of {remote.filename} stopped: {_short(exc)} "
                        f"({format_size(have)} of {format_size(remote.size)} kept)",
                        hint="check the network connection, then run the same command again to resume",
                    ) from None
                time.sleep(min(RETRY_DELAY_S * 2 ** (RETRIES - attempts_left - 1), 8.0))
                continue
            if have < remote.size and have == before:
                attempts_left -= 1
                if attempts_left <= 0:
                    raise DownloadError(f"{remote.filename}: the server stopped at {format_size(have)} of {format_size(remote.size)}",
                                        hint="run the same command again to resume")
    except OSError as exc:
        if _disk_full(exc):
            raise DownloadError(
                f"disk full while writing {partial}: {format_size(have)} of {format_size(remote.size)} written",
                hint="free some space (`edgellm rm MODEL`), then run the same command again to resume",
            ) from None
        raise
    finally:
        progress.close()
    return digest.hexdigest()


def _verify(repo: str, remote: RemoteFile, partial: Path, actual_sha256: str) -> None:
    size = partial.stat().st_size
    if size != remote.size:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{remote.filename}: got {size:,} bytes but the hub says {remote.size:,}; the file was deleted",
                            hint="run the same command again")
    if remote.sha256 is not None and actual_sha256 != remote.sha256.lower():
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"{remote.filename}: sha256 mismatch (got {actual_sha256[:12]}..., the hub's LFS hash is {remote.sha256[:12]}...); the file was deleted",
            hint=f"run the same command again; if it repeats, the copy on {hub_endpoint()}/{repo} or a proxy on the way is corrupt",
        )


def not_a_model(spec: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"'{spec}' is not a model file, a catalog name or a Hugging Face repo",
        hint="see `edgellm models` for names, or pass owner/repo:QUANT or a path to a .gguf file",
    )
