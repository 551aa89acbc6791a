"""The model store: what `-m`, `pull`, `models`, `ls` and `rm` accept, and where the files are.

One resolver for every command: a local path, a catalog name (`deepseek-r1-1.5b[:Q4_K_S]`),
`owner/repo[:QUANT]` (llama.cpp/Ollama style) or `owner/repo/file.gguf`. Without a quant the
planner picks one for this device (catalog.choose_quant). Downloads live in huggingface_hub's cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgellm.errors import ModelNotFoundError
from edgellm.store import hub
from edgellm.store.catalog import CatalogEntry, entry_for_ollama, entry_for_repo, find_entry, quant_of_filename

_HUB_FILE = re.compile(rf"^{hub._REPO_PART}/{hub._REPO_PART}/.+\.gguf$", re.IGNORECASE)
_HUB_REPO = re.compile(rf"^(?P<repo>{hub._REPO_PART}/{hub._REPO_PART})(?::(?P<quant>[A-Za-z0-9_.-]+))?$")
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
        hub.check_revision(revision)
    path = Path(text).expanduser()
    # is_symlink: a dangling link or a loop is still the user's file, and read_gguf says what is wrong.
    if path.exists() or path.is_symlink() or text.startswith(("/", "./", "../", "~", ".\\")):
        return path
    if _HUB_FILE.match(text):
        owner, name, filename = text.split("/", 2)
        if not hub.is_safe_relative_path(filename):
            raise ModelNotFoundError(f"'{text}': {filename!r} is not a file name inside the repo",
                                     hint="name the file as the repo lists it: owner/repo/file.gguf")
        repo_id = f"{owner}/{name}"
        entry = entry_for_repo(repo_id)
        return ModelRef(text, repo_id, revision or (entry.revision if entry else hub.DEFAULT_REVISION),
                        quant_of_filename(filename), filename, entry)
    if text.lower().endswith(".gguf"):
        return path  # a local file name that does not exist: read_gguf says so
    ollama = entry_for_ollama(text) if "/" not in text else None
    if ollama is not None:  # Ollama's library name ("qwen2.5:0.5b", "llama3.2"): the planner picks the quant
        return ModelRef(text, ollama.repo, revision or ollama.revision, None, None, ollama)
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
        return ModelRef(text, match.group("repo"), revision or (entry.revision if entry else hub.DEFAULT_REVISION),
                        _quant(match.group("quant")), None, entry)
    raise hub.not_a_model(spec)


def _quant(tag: str | None) -> str | None:
    return tag.upper() if tag else None


# --- locating the file -----------------------------------------------------------------------------


# --- pulling ---------------------------------------------------------------------------------------


# --- ls and rm -------------------------------------------------------------------------------------


# --- catalog listing -------------------------------------------------------------------------------


