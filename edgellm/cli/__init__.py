"""The `edgellm` command line (the Typer app is in app.py, one module per command group).

`main` stays here, as the console script `edgellm.cli:main` has named it since the first release:
an editable install made before the layout moved keeps working after a `git pull`.
"""


def main() -> None:
    from edgellm.cli.app import main as run_app  # noqa: PLC0415  (importing the package stays cheap)

    run_app()
