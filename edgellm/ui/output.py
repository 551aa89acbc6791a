"""One output switch for every command: the result as JSON on stdout (--json, also --csv or
--markdown where a command offers them), or rendered for people.

A command builds its result once and hands over both forms; nothing else in the CLI asks which
format was chosen. As in huggingface_hub's CLI (`cli/_output.py`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgellm.errors import UsageError
from edgellm.ui.console import print_json

FORMATS = ("human", "json", "csv", "markdown")


@dataclass(frozen=True)
class Output:
    format: str = "human"

    @classmethod
    def choose(cls, *, json: bool = False, csv: bool | None = None, markdown: bool | None = None) -> Output:
        """The format the flags ask for (None: the command has no such flag); more than one is a usage error."""
        offered = [(name, flag) for name, flag in (("json", json), ("csv", csv), ("markdown", markdown)) if flag is not None]
        chosen = [name for name, flag in offered if flag]
        if len(chosen) > 1:
            names = [f"--{name}" for name, _ in offered]
            raise UsageError(f"choose one of {', '.join(names[:-1])} and {names[-1]}")
        return cls(chosen[0] if chosen else "human")

    @property
    def json(self) -> bool:
        return self.format == "json"

    def emit(self, data: Any, human: Callable[[], None], *, csv: Callable[[], str] | None = None,
             markdown: Callable[[], str] | None = None) -> None:
        """Print the result. `data`: what --json prints (or a function making it, when costly);
        `human`: draws it for people; `csv`/`markdown`: its text in those formats."""
        if self.format == "json":
            print_json(data() if callable(data) else data)
        elif self.format == "csv" and csv is not None:
            sys.stdout.write(csv())
        elif self.format == "markdown" and markdown is not None:
            sys.stdout.write(markdown())
        else:
            human()
