"""edgellm's exceptions. Each carries a one-line message and, where there is one, the next step.

The CLI's error funnel (funnel.py) turns these into `error: MESSAGE` + `hint: NEXT STEP` on stderr and
the exception's exit code; anything else becomes a one-line 'unexpected error' unless
EDGELLM_DEBUG=1 asks for the traceback.
"""

from __future__ import annotations

import os


def debug_enabled() -> bool:
    """EDGELLM_DEBUG=1: show tracebacks instead of one-line errors (the CLI's funnel, serve's log)."""
    return os.environ.get("EDGELLM_DEBUG", "") not in ("", "0")


def one_line(text: str, limit: int = 40) -> str:
    """A value from outside (a name, a path, a schema's keyword) for a message or a log line: at
    most `limit` characters, control and other unprintable characters escaped, so that it cannot
    break the line or forge another."""
    clipped = text[:limit]
    shown = "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in clipped)
    return shown + ("..." if len(text) > limit else "")


class EdgeLLMError(Exception):
    """Base of every error a user can cause or fix."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(EdgeLLMError):
    """Arguments that do not make sense together."""

    exit_code = 2


class RuntimeUnavailableError(EdgeLLMError):
    """llama-cpp-python is missing, broken, or built in a way that would crash."""


class ProfileError(EdgeLLMError):
    """A device profile file that cannot be used (bad TOML, unknown key, wrong type)."""


class ModelFileError(EdgeLLMError):
    """A model file that is missing, unreadable, not GGUF, truncated or unsupported."""


class PlanError(EdgeLLMError):
    """The model does not fit the memory or thread budget."""


class ContextOverflowError(EdgeLLMError):
    """The prompt is longer than the context window."""


class WorkerError(EdgeLLMError):
    """An RPC worker (--rpc) that cannot be used: unreachable, busy, of another protocol version, or gone."""


class GenerationError(EdgeLLMError):
    """llama.cpp failed while generating."""


class ModelNotFoundError(EdgeLLMError):
    """A model name that is neither a file, a catalog entry nor a Hugging Face repo."""


class DownloadError(EdgeLLMError):
    """A download that failed: network, repo, gated, missing quant, checksum, disk, offline."""


class NotOnHubError(DownloadError):
    """The hub has no such repo, revision, file or quant (a server answers 404 for it)."""


class GrammarError(EdgeLLMError):
    """A GBNF grammar or JSON Schema that llama.cpp would refuse (or crash on)."""


class EmptyPromptError(EdgeLLMError):
    """A prompt with no tokens: there is nothing to generate from."""


class Interrupted(EdgeLLMError):
    """Ctrl-C after part of the result was written (`run`): said as a note, not an error; exit 130."""

    exit_code = 130


class OutputError(EdgeLLMError):
    """stdout cannot be written: closed, a full disk, /dev/full."""
