"""The `edgellm` command line: parse, call, render; the Typer app, one module per command group
(device, generate, bench, models, serve, worker), the shared options (options) and the error
funnel (funnel). The work happens in the other packages.

Imports of llama_cpp happen only inside commands that load a model (through edgellm.runtime.engine),
so `edgellm --help`, `detect` and `profiles` stay fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from edgellm import __version__, ui
from edgellm.cli import bench, device, generate, models, serve, worker
from edgellm.cli.funnel import FunnelledGroup

app = typer.Typer(
    name="edgellm",
    cls=FunnelledGroup,  # the error funnel, attached once for every command
    help="Run quantized GGUF language models on edge hardware, with settings picked for the device.\n\n"
    "Example: edgellm chat",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(device.profiles_app, name="profiles")


# Shared options -------------------------------------------------------------------------------------


def _version_callback(value: bool) -> None:
    if value:
        print(f"edgellm {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Run quantized GGUF language models on edge hardware."""


app.add_typer(bench.bench_app, name="bench")


app.add_typer(serve.service_app, name="service")


# The commands, in the order --help lists them (the groups: profiles, bench, service above).
app.command()(device.detect)
app.command()(device.plan)
app.command()(generate.run)
app.command()(generate.chat)
app.command()(models.pull)
app.command()(models.models)
app.command(name="ls")(models.list_downloaded)
app.command(name="rm")(models.remove)
app.command()(serve.serve)
app.command()(worker.worker)


def main() -> None:
    """Console-script entry point."""
    ui.guard_stdout()
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C while parsing or importing, outside any command
        sys.stderr.write("\n")
        sys.exit(130)
