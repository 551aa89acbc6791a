"""The command line as a user meets it: help, registered commands, laziness, the error funnel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, run_cli
from typer.testing import CliRunner

from edgellm.cli.app import app

COMMANDS = ["detect", "profiles", "plan", "run", "chat", "bench", "pull", "models", "ls", "rm", "serve"]


def test_every_command_is_registered_with_help_and_an_example() -> None:
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in COMMANDS:
        assert command in top.output
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Example" in result.output, command


@pytest.mark.parametrize("args", [["--help"], ["detect"], ["detect", "--json"], ["profiles"], ["profiles", "show", "generic"]])
def test_fast_commands_do_not_import_llama_cpp(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from edgellm.cli.app import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
        "assert 'llama_cpp' not in sys.modules, 'llama_cpp was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr.decode()


def test_python_dash_m_works() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith(b"edgellm ")


def test_errors_are_one_line_unless_debug(tmp_path) -> None:
    result = run_cli("plan", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.decode().startswith("error: ") and b"Traceback" not in result.stderr
    debug = run_cli("plan", str(tmp_path), EDGELLM_DEBUG="1")
    assert b"Traceback" in debug.stderr


def test_bad_option_value_is_a_usage_error() -> None:
    result = run_cli("plan", "x.gguf", "--mem-budget", "lots")
    assert result.returncode == 2 and b"not a size" in result.stderr


def test_unexpected_exceptions_go_through_the_funnel(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from edgellm.cli.funnel import FunnelledGroup
    from edgellm.errors import PlanError

    # The funnel is the root group's: a command added with nothing but @app.command() is inside it.
    probe = typer.Typer(cls=FunnelledGroup)

    @probe.command()
    def boom() -> None:
        """Fails the way a bug would."""
        raise ZeroDivisionError("division by zero")

    @probe.command()
    def refuse() -> None:
        raise PlanError("the model does not fit", hint="try a smaller quant")

    @probe.command()
    def stop() -> None:
        raise KeyboardInterrupt

    @probe.command()
    def done() -> None:
        raise typer.Exit(3)  # Typer's own exit passes through untouched

    runner = CliRunner()
    result = runner.invoke(probe, ["boom"])
    assert result.exit_code == 1
    assert "unexpected ZeroDivisionError: division by zero" in result.output
    assert "EDGELLM_DEBUG=1" in result.output and "Traceback" not in result.output
    result = runner.invoke(probe, ["refuse"])
    assert result.exit_code == 1 and "error: the model does not fit" in result.output and "hint: try a smaller quant" in result.output
    result = runner.invoke(probe, ["stop"])
    assert result.exit_code == 130 and "interrupted" in result.output
    assert runner.invoke(probe, ["done"]).exit_code == 3
    assert runner.invoke(probe, ["--bogus"]).exit_code == 2  # usage errors stay Typer's
    monkeypatch.setenv("EDGELLM_DEBUG", "1")
    result = runner.invoke(probe, ["boom"])
    assert result.exit_code == 1 and "Traceback" in result.output


def test_edgellm_attaches_the_funnel_once_at_the_root() -> None:
    import typer

    from edgellm.cli.app import app
    from edgellm.cli.funnel import FunnelledGroup

    assert isinstance(typer.main.get_command(app), FunnelledGroup)
    for path in Path(__file__).parents[1].joinpath("edgellm", "cli").glob("*.py"):
        if path.name != "funnel.py":
            source = path.read_text()
            assert "error_funnel" not in source and "except Exception" not in source, path.name


def test_help_paragraphs_are_not_broken_by_hand() -> None:
    """Rich keeps a docstring's line breaks: a paragraph wrapped by hand in the source shows broken
    mid-sentence in --help (`service install` printed 'with its models in' / '/var/lib/edgellm').
    Only layouts (an example, the tools call and its output) may span lines."""
    import typer

    def commands(command: object, path: str) -> list[tuple[str, object]]:
        found = [(path, command)]
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            found += commands(sub, f"{path} {name}")
        return found

    broken = []
    for path, command in commands(typer.main.get_command(app), "edgellm"):
        text = (getattr(command, "help", None) or "").split("\f")[0]
        for paragraph in text.strip().split("\n\n"):
            lines = [line for line in paragraph.strip().splitlines() if line.strip()]
            if len(lines) > 1 and not lines[0].startswith(("Example", "Tools:")):
                broken.append(f"{path}: {lines[0][:60]}")
    assert broken == []
