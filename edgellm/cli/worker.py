"""`edgellm` commands: worker: lend this board's memory and cores to another board's --rpc."""

from __future__ import annotations

from typing import Annotated

import typer

from edgellm import ui
from edgellm.cli.options import ProfileOpt, SysrootOpt, ThreadsOpt, size_option


def worker(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (IPv4). Other than loopback needs --allow-lan.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")] = 50052,
    mem: Annotated[str | None, typer.Option("--mem", help="Memory offered to the main board, e.g. 3GiB (default: what this board can hold: available memory minus the profile's OS reserve).")] = None,
    threads: ThreadsOpt = None,
    allow_lan: Annotated[bool, typer.Option("--allow-lan", help="Allow a non-loopback --host. The worker has no authentication: anyone who reaches the port can use it. Trusted LANs only.")] = False,
    idle_timeout: Annotated[float | None, typer.Option("--idle-timeout", help="Drop a client that has sent nothing for this many seconds while it waits for no reply (default: 300; an edgellm main board that idles keeps its connection alive).")] = None,
    profile: ProfileOpt = None,
    sysroot: SysrootOpt = "/",
) -> None:
    """Lend this board's CPU and memory to another board's edgellm (llama.cpp's RPC backend).

    On the main board, --rpc HOST:PORT on plan, run, chat, serve and bench splits the model's layers across it and the workers, by what each offers. The worker runs on the profile's big cores and prints one line saying where it listens and how much memory it offers. It serves one main board at a time, refuses requests larger than what it offers, and drops idle clients. It has no authentication: run it on a trusted LAN only.

    Example (on the worker board): edgellm worker --host 0.0.0.0 --allow-lan --mem 3GiB

    Example (on the main board): edgellm run -m deepseek-r1-7b --rpc 192.168.1.21:50052 "Hello"
    """
    from edgellm.worker import host as rpc_worker

    plan_ = rpc_worker.plan_worker(host, port, mem=size_option(mem), threads=threads, allow_lan=allow_lan,
                                   profile=profile, sysroot=sysroot, idle_s=idle_timeout)
    rpc_worker.run_worker(plan_, say=ui.print_text, warn=ui.warn)
