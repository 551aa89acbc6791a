"""`edgellm` commands: detect, profiles and plan: what this device is and what a model would get on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgellm import ui
from edgellm.cli import options
from edgellm.cli.options import CtxOpt, JsonOpt, MemBudgetOpt, ProfileOpt, RpcOpt, SysrootOpt, ThinkBudgetOpt, ThreadsOpt
from edgellm.errors import PlanError

profiles_app = typer.Typer(
    help="List device profiles, or show one.\n\nExample: edgellm profiles show rk3588",
    invoke_without_command=True,
    no_args_is_help=False,
)


def detect(
    json_output: JsonOpt = False,
    sysroot: SysrootOpt = "/",
    profile: ProfileOpt = None,
) -> None:
    """Show the hardware edgellm sees and the device profile that matches it.

    Example: edgellm detect --json | jq .big_cores
    """
    from edgellm.device.profiles import this_device
    from edgellm.loader import build_warnings, llama_build_info

    device, chosen, reason = this_device(sysroot, profile)
    live = Path(sysroot).resolve() == Path("/")
    build = llama_build_info() if live else None
    warnings = build_warnings(device, build) if live else []
    data = {**device.to_json(), "profile": chosen.name, "profile_reason": reason, "llama_cpp_system_info": build,
            "warnings": warnings}
    ui.Output.choose(json=json_output).emit(data, lambda: ui.render_device(device, chosen.name, reason, build, warnings))


@profiles_app.callback()
def profiles_list(
    ctx: typer.Context,
    json_output: JsonOpt = False,
    sysroot: SysrootOpt = "/",
) -> None:
    """List device profiles; * marks the one matching this device."""
    if ctx.invoked_subcommand is not None:
        return
    from edgellm.device.hardware import detect as detect_device
    from edgellm.device.profiles import load_profiles, select_profile

    profiles = load_profiles()
    matched, _ = select_profile(detect_device(sysroot), None, profiles)
    rows = [{"name": p.name, "matches": p.name == matched.name, "description": p.description, "source": p.source}
            for p in profiles]
    ui.Output.choose(json=json_output).emit(rows, lambda: ui.render_profiles(rows))


@profiles_app.command("show")
def profiles_show(
    name: Annotated[str, typer.Argument(help="Profile name or .toml file.")],
    json_output: JsonOpt = False,
) -> None:
    """Print one profile's settings.

    Example: edgellm profiles show raspberry-pi-5 --json
    """
    from edgellm.device.profiles import find_profile, load_profile_file, load_profiles

    profile = load_profile_file(Path(name)) if name.endswith(".toml") else find_profile(name, load_profiles())
    ui.Output.choose(json=json_output).emit(profile.to_json(), lambda: ui.render_profile(profile.to_json()))


def plan(
    model: Annotated[str, typer.Argument(help="A .gguf file, a catalog name (deepseek-r1-7b[:Q4_K_S]) or owner/repo:QUANT; not downloaded by plan.")],
    ctx: CtxOpt = None,
    mem_budget: MemBudgetOpt = None,
    threads: ThreadsOpt = None,
    profile: ProfileOpt = None,
    sysroot: SysrootOpt = "/",
    parallel: Annotated[int | None, typer.Option("--parallel", "-np", min=1, max=64, help="Plan for serve with N slots, each with --ctx tokens (the KV cache holds them all).")] = None,
    rpc: RpcOpt = None,
    think_budget: ThinkBudgetOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Decide how to run MODEL here (context, KV cache, cores, threads, memory) without loading it.

    With --rpc, the layers are split across this board and the workers by what each can hold (each worker is asked); `devices` in --json says which part goes where.

    Example: edgellm plan model.gguf --mem-budget 1.5GiB --json

    Example: edgellm plan deepseek-r1-7b --rpc 192.168.1.21:50052
    """
    from edgellm.loader import prepare
    from edgellm.plan.planner import refusal_hint

    plan_options = options.plan_options(profile, ctx, mem_budget, threads, rpc, sysroot=sysroot, parallel=parallel or 1,
                                        think_budget=think_budget)
    prepared = prepare(model, plan_options, download=False)
    result = prepared.plan
    ui.Output.choose(json=json_output).emit(result.to_json, lambda: ui.render_plan(result))
    if not result.fits:
        raise PlanError(result.refusal or "the model does not fit", hint=refusal_hint(result))
