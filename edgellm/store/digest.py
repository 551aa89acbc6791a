"""A model file's sha256, as Ollama's API names models by it (`digest`): computed once per file.

A file in the Hugging Face cache is a link to blobs/<sha256> (the hub names LFS blobs by their
sha256, and edgellm's download checks it), so its name is the answer. Any other file is hashed
once and remembered in EDGELLM_HOME/cache/digests.json by its real path, size and mtime: a GGUF of
a few GB takes tens of seconds to hash on a board, which must not happen on every start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

from edgellm.paths import edgellm_home

_SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK_BYTES = 4 * 1024 * 1024
MAX_REMEMBERED = 64  # files; the oldest are forgotten beyond it


def digests_file() -> Path:
    return edgellm_home() / "cache" / "digests.json"


def file_sha256(path: Path) -> str:
    """The hex sha256 of the file at `path` (links followed)."""
    real = path.resolve()
    if _SHA256.fullmatch(real.name) and real.parent.name == "blobs":
        return real.name
    stat = real.stat()
    key = str(real)
    remembered = _read()
    entry = remembered.get(key)
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns \
            and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"]):
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with real.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    value = digest.hexdigest()
    remembered.pop(key, None)
    remembered[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value}
    _write(dict(list(remembered.items())[-MAX_REMEMBERED:]))
    return value


def _read() -> dict[str, object]:
    try:
        data = json.loads(digests_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(data: dict[str, object]) -> None:
    """Best effort: a read-only home only means hashing again next time."""
    target = digests_file()
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data))
        temporary.replace(target)
