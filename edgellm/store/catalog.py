"""The models edgellm knows by name (catalog.toml), and the choice of quant for a device.

Pure apart from reading the packaged TOML file: no network, no llama_cpp. A catalog entry's
architecture shape becomes a `ModelInfo`, so the planner can size a model before it is downloaded.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgellm.errors import EdgeLLMError
from edgellm.store.gguf import ModelInfo, ModelShape

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CATALOG_FILE = Path(__file__).with_name("catalog.toml")

# A quant tag as it appears in GGUF file names: Q4_K_M, q4_k_m, IQ4_XS, Q8_0, Q4_0_4_4, BF16...
_QUANT_TOKEN = re.compile(r"(?i)^(I?Q[1-8](?:_[A-Z0-9]+)*|BF16|F16|F32)$")
# Split GGUFs ("-00001-of-00003.gguf") need every part; edgellm handles single-file models only.
_SPLIT_PART = re.compile(r"(?i)-\d{5}-of-\d{5}\.gguf$")
# An Ollama library name: NAME or NAME:TAG, lower case ("llama3.2", "deepseek-r1:1.5b").
_OLLAMA_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[a-z0-9][a-z0-9._-]*)?$")


class CatalogError(EdgeLLMError):
    """catalog.toml is malformed (a packaging bug, reported as one line)."""


@dataclass(frozen=True)
class QuantFile:
    quant: str
    filename: str
    size: int


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    repo: str
    revision: str
    license: str
    shape: ModelShape
    files: dict[str, QuantFile]
    thinks: bool = False
    ollama: tuple[str, ...] = ()  # its names in Ollama's library ("deepseek-r1:1.5b"): aliases for serve

    def model_info(self, quant: str, size: int | None = None) -> ModelInfo:
        """What the planner needs, from the shape: the file size stands in for the weights
        (the header is < 1% of it), and the bytes read per token leave out the embedding table."""
        size = size if size is not None else self.files[quant].size
        shape = self.shape
        bits_per_weight = size * 8 / max(shape.parameter_count(), 1)
        embedding_bytes = int(shape.n_vocab * shape.n_embd * bits_per_weight / 8)
        return ModelInfo(
            arch=shape.arch,
            n_layers=shape.n_layers,
            n_embd=shape.n_embd,
            n_head=shape.n_head,
            n_head_kv=shape.n_head_kv,
            head_dim_k=shape.head_dim,
            head_dim_v=shape.head_dim,
            n_ff=shape.n_ff,
            n_vocab=shape.n_vocab,
            context_length=shape.context_length,
            quant=quant,
            weights_bytes=size,
            bytes_per_token=size if shape.tied_embeddings else size - embedding_bytes,
            name=self.name,
            file_size=size,
            tied_embeddings=shape.tied_embeddings,
            input_bytes=embedding_bytes,
            output_bytes=embedding_bytes,
        )

    def quant_for_file(self, filename: str) -> str | None:
        for quant, file in self.files.items():
            if file.filename == filename:
                return quant
        return None


def quant_of_filename(filename: str) -> str | None:
    """'DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf' -> 'Q4_K_M'; None when the name carries no tag."""
    name = filename.rsplit("/", 1)[-1]
    if not name.lower().endswith(".gguf") or _SPLIT_PART.search(name):
        return None
    for token in reversed(re.split(r"[-.]", name[: -len(".gguf")])):
        if _QUANT_TOKEN.match(token):
            return token.upper()
    return None


def quants_in_files(filenames: Sequence[str]) -> dict[str, str]:
    """Quant -> file name for the single-file GGUFs of a repo listing (first file wins per quant)."""
    found: dict[str, str] = {}
    for filename in sorted(filenames):
        quant = quant_of_filename(filename)
        if quant and quant not in found:
            found[quant] = filename
    return found


def _require(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CatalogError(f"catalog.toml: {where}.{key} must be a {kind.__name__}")
    return value


def parse_catalog(text: str) -> dict[str, CatalogEntry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog.toml: not valid TOML: {exc}") from None
    entries: dict[str, CatalogEntry] = {}
    taken: dict[str, str] = {}  # Ollama name -> the entry it names
    for name, table in data.get("models", {}).items():
        where = f"models.{name}"
        shape_table = _require(table, "shape", dict, where)
        sizes = {key: _require(shape_table, key, int, f"{where}.shape")
                 for key in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "context")}
        shape = ModelShape(
            n_layers=sizes["layers"], n_embd=sizes["hidden"], n_head=sizes["heads"], n_head_kv=sizes["kv_heads"],
            n_ff=sizes["ffn"], n_vocab=sizes["vocab"], context_length=sizes["context"],
            arch=_require(shape_table, "arch", str, f"{where}.shape"),
            tied_embeddings=_require(shape_table, "tied_embeddings", bool, f"{where}.shape"),
        )
        files = {
            quant.upper(): QuantFile(
                quant.upper(),
                _require(spec, "file", str, f"{where}.files.{quant}"),
                _require(spec, "size", int, f"{where}.files.{quant}"),
            )
            for quant, spec in _require(table, "files", dict, where).items()
        }
        entries[name] = CatalogEntry(
            name=name,
            description=str(table.get("description", "")),
            repo=_require(table, "repo", str, where),
            revision=str(table.get("revision", "main")),
            license=str(table.get("license", "")),
            shape=shape,
            files=files,
            thinks=bool(table.get("thinks", False)),
            ollama=_ollama_names(table, where, taken),
        )
    return entries


def _ollama_names(table: dict[str, Any], where: str, taken: dict[str, str]) -> tuple[str, ...]:
    """An entry's `ollama` alias list: Ollama library names, each naming one entry only, never
    with the tag `latest` (NAME alone is NAME:latest)."""
    names = table.get("ollama", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise CatalogError(f"catalog.toml: {where}.ollama must be a list of strings")
    for name in names:
        if not _OLLAMA_NAME.match(name) or name.endswith(":latest"):
            raise CatalogError(f"catalog.toml: {where}.ollama: {name!r} is not an Ollama name (name or name:tag, "
                               "lower case, without :latest)")
        if name in taken:
            raise CatalogError(f"catalog.toml: {where}.ollama: {name!r} already names {taken[name]}")
        taken[name] = where
    return tuple(names)


@functools.lru_cache(maxsize=1)
def load_catalog() -> dict[str, CatalogEntry]:
    return parse_catalog(CATALOG_FILE.read_text(encoding="utf-8"))


def find_entry(name: str) -> CatalogEntry | None:
    return load_catalog().get(name.lower())


def entry_for_ollama(name: str) -> CatalogEntry | None:
    """The entry an Ollama library name means ("qwen2.5:0.5b", "llama3.2", "llama3.2:latest")."""
    wanted = name.strip().lower().removesuffix(":latest")
    return next((entry for entry in load_catalog().values() if wanted in entry.ollama), None)


def entry_for_repo(repo: str) -> CatalogEntry | None:
    """The catalog entry that points at this Hugging Face repo, so owner/repo gets its shape too."""
    for entry in load_catalog().values():
        if entry.repo.lower() == repo.lower():
            return entry
    return None


# --- choosing a quant -----------------------------------------------------------------------------


