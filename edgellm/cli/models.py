"""`edgellm` commands: pull, models, ls and rm: the model catalog and the downloaded files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgellm import ui
from edgellm.cli.options import CtxOpt, JsonOpt, MemBudgetOpt, ProfileOpt, SysrootOpt, size_option, terminal_notices
from edgellm.errors import UsageError


def pull(
    model: Annotated[str, typer.Argument(help="A catalog name[:QUANT] (see `edgellm models`), owner/repo[:QUANT] or owner/repo/file.gguf.")],
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit (default: the catalog's pin, else main).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before downloads over 1 GB.")] = False,
    profile: ProfileOpt = None,
    mem_budget: MemBudgetOpt = None,
    ctx: CtxOpt = None,
    sysroot: SysrootOpt = "/",
    json_output: JsonOpt = False,
) -> None:
    """Download a model from Hugging Face into its cache, resuming and verifying it (sha256).

    Without :QUANT the planner picks the best quant that fits this device. Prints the file's path.

    Example: edgellm pull deepseek-r1-1.5b
    """
    from edgellm.device.profiles import this_device
    from edgellm.plan import resolve as store
    from edgellm.store.refs import parse_spec

    parsed = parse_spec(model, revision)
    if isinstance(parsed, Path):
        raise UsageError(f"{model} is a local path; pull takes a model name or a Hugging Face repo",
                         hint="edgellm pull deepseek-r1-1.5b  (see `edgellm models`)")
    device, chosen_profile, _ = this_device(sysroot, profile)
    located = store.locate(parsed, device, chosen_profile, ctx=ctx, mem_budget=size_option(mem_budget), for_pull=True)
    already = located.path is not None
    if already:
        ui.info(f"{located.name} is already downloaded")
    notices = terminal_notices()
    path = store.fetch(located, yes=yes, say=notices.info, confirm=notices.confirm, progress_factory=notices.progress)
    data = {"name": located.name, "repo": parsed.repo, "revision": parsed.revision, "quant": located.quant,
            "file": located.filename, "size": path.stat().st_size, "path": str(path),
            "sha256": located.remote.sha256 if located.remote else None, "reason": located.reason,
            "already_downloaded": already}
    ui.Output.choose(json=json_output).emit(data, lambda: ui.print_text(str(path)))


def models(
    profile: ProfileOpt = None,
    mem_budget: MemBudgetOpt = None,
    ctx: CtxOpt = None,
    sysroot: SysrootOpt = "/",
    json_output: JsonOpt = False,
) -> None:
    """List the models edgellm knows: size per quant, downloaded or not, and whether it fits this device.

    Example: edgellm models --json
    """
    from edgellm.device.profiles import this_device
    from edgellm.plan import resolve as store

    device, chosen_profile, _ = this_device(sysroot, profile)
    rows = store.catalog_rows(device, chosen_profile, ctx=ctx, mem_budget=size_option(mem_budget))
    ui.Output.choose(json=json_output).emit(rows, lambda: ui.print_text(ui.catalog_text(rows, chosen_profile)))


def list_downloaded(json_output: JsonOpt = False) -> None:
    """List downloaded models (GGUF files in the Hugging Face cache) with size, quant and path.

    Example: edgellm ls --json | jq -r '.[].path'
    """
    from edgellm.store import cache as store

    items = store.list_downloaded()
    def show() -> None:
        if items:
            ui.print_text(ui.downloaded_text(items))
        else:
            ui.info("no models downloaded yet: try `edgellm pull deepseek-r1-1.5b` (or see `edgellm models`)")

    ui.Output.choose(json=json_output).emit([item.to_json() for item in items], show)


def remove(
    model: Annotated[str, typer.Argument(help="NAME (every quant), NAME:QUANT, owner/repo[:QUANT] or owner/repo/file.gguf, as `edgellm ls` shows.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Delete a downloaded model from the Hugging Face cache.

    Example: edgellm rm deepseek-r1-1.5b:Q4_K_M
    """
    from edgellm.errors import ModelNotFoundError
    from edgellm.store import cache as store
    from edgellm.units import format_size

    items = store.match_downloaded(model)
    if not items:
        raise ModelNotFoundError(f"{model} is not downloaded", hint="see `edgellm ls` for downloaded models")
    described = ", ".join(f"{item.name} ({format_size(item.size)})" for item in items)
    if not yes:
        if not ui.interactive():
            raise UsageError(f"rm needs confirmation to delete {described}", hint=f"edgellm rm {model} -y")
        if not ui.confirm(f"Delete {described}?"):
            ui.info("nothing deleted")
            raise typer.Exit(1)
    freed = store.remove(items)
    ui.Output.choose(json=json_output).emit({"removed": [item.to_json() for item in items], "freed_bytes": freed},
                                            lambda: ui.info(f"deleted {described}; {format_size(freed)} freed"))
