"""The models on this board's disk as serve sees them: every GGUF in the Hugging Face cache is a
model loaded when a request asks for it (serve without -m); a client's pull adds one through
edgellm's own download code (Ollama's /api/pull), a delete removes one (/api/delete).

Each model is planned when it joins (the planner says whether it fits, and with which context),
and named as `edgellm ls` names it, plus owner/repo:QUANT, its catalog name and its Ollama names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgellm import ui
from edgellm.errors import EdgeLLMError, ModelNotFoundError
from edgellm.loader import PlanOptions, Prepared, open_model, prepare
from edgellm.plan import resolve as store
from edgellm.serve.models import Candidate
from edgellm.store.cache import Downloaded, list_downloaded, remove
from edgellm.store.catalog import find_entry
from edgellm.store.refs import ModelRef, parse_spec

# What a client may name in a pull: catalog and Ollama names, owner/repo[:QUANT], owner/repo/file.gguf.
# Nothing that reads as a path on this machine (a name is looked up on disk before the hub).
_PULLABLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


def names_of(item: Downloaded) -> list[str]:
    """A downloaded model's other names: owner/repo:QUANT, its catalog name, its Ollama names."""
    entry = find_entry(item.catalog_name) if item.catalog_name else None
    names = ([f"{item.repo}:{item.quant}"] if item.quant else []) + ([entry.name, *entry.ollama] if entry else [])
    return [name for name in names if name.casefold() != item.name.casefold()]


@dataclass
class Library:
    """The Hugging Face cache, planned with serve's options."""

    plan_options: PlanOptions

    # -- what is here --

    def candidates(self, skip: Path | None = None, taken: Iterable[str] = ()) -> list[tuple[Candidate, Prepared]]:
        """Every downloaded model that can be served, planned now (with its Prepared); `skip`:
        -m's file; `taken`: names already in use (a name names one model)."""
        used = {name.casefold() for name in taken}
        found: list[tuple[Candidate, Prepared]] = []
        for item in list_downloaded():
            if skip is not None and item.path.resolve() == skip.resolve():
                continue  # -m's (its names: names_of)
            try:
                made = self.candidate(item, used)
            except EdgeLLMError as exc:
                ui.warn(f"not serving {item.name}: {exc.message}")
                continue
            found.append(made)
        return found

    def candidate(self, item: Downloaded, used: set[str]) -> tuple[Candidate, Prepared]:
        """One downloaded model as a serve Candidate, planned now; its names join `used`."""
        prepared = prepare(str(item.path), self.plan_options, download=False, loading=True)
        aliases = [name for name in names_of(item) if name.casefold() not in used]
        used.update(name.casefold() for name in (item.name, *aliases))
        options = self.plan_options

        def load() -> tuple[Any, Any]:
            loaded = open_model(prepared, options, sequences=prepared.plan.parallel)
            return loaded.engine, loaded.reload

        return Candidate(item.name, aliases, prepared.model, prepared.plan, load), prepared

    @staticmethod
    def items() -> list[Downloaded]:
        """The cache's models now (`edgellm ls`)."""
        return list_downloaded()

    def downloaded(self, path: Path) -> Downloaded | None:
        """The cache entry of a file serve knows by path (None: not in the cache, e.g. -m FILE)."""
        try:
            wanted = path.resolve()
        except (OSError, RuntimeError):
            return None
        return next((item for item in list_downloaded() if item.path.resolve() == wanted), None)

    # -- a pull --

    @staticmethod
    def parse(name: str) -> ModelRef:
        """A pull's name as a hub model; never a path on this machine."""
        text = name.strip()
        if not _PULLABLE.match(text) or ".." in text:
            raise ModelNotFoundError(f"'{text[:100]}' is not a model name: pull takes a catalog or Ollama name "
                                     "(qwen2.5:0.5b), owner/repo:QUANT or owner/repo/file.gguf")
        try:
            parsed = parse_spec(text)
        except ModelNotFoundError:
            raise ModelNotFoundError(f"'{text[:100]}' is not a model edgellm knows",
                                     hint="pull a catalog or Ollama name (`edgellm models` on the board lists them), or "
                                          "owner/repo:QUANT from Hugging Face") from None
        if isinstance(parsed, Path):
            raise ModelNotFoundError(f"'{text[:100]}' is not a model name edgellm knows",
                                     hint="see `edgellm models` for names, or pass owner/repo:QUANT")
        return parsed

    def locate(self, ref: ModelRef) -> store.Located:
        """Which file the pull means here (the planner picks the quant when none is named); may
        ask the hub for its listing."""
        from edgellm.device.profiles import this_device  # noqa: PLC0415  (detection reads sysfs: only pulls pay)

        device, profile, _ = this_device(self.plan_options.sysroot, self.plan_options.profile)
        return store.locate(ref, device, profile, ctx=self.plan_options.ctx, mem_budget=self.plan_options.mem_budget,
                            for_pull=True)

    @staticmethod
    def download(located: store.Located, say: Callable[[str], None], progress_factory: Any) -> Path:
        """Fetch the located file into the cache: resumed, sha256-verified, never asking."""
        return store.fetch(located, yes=True, say=say, progress_factory=progress_factory)

    # -- a delete --

    @staticmethod
    def delete(item: Downloaded) -> int:
        """Delete a downloaded model's file; returns the bytes freed."""
        return remove([item])
