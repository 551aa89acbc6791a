"""Where edgellm keeps its own files: one home directory, and the places inside it.

Model weights are not here: they live in the Hugging Face cache (`download.py`), shared with
other tools. This is for what only edgellm writes or reads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def edgellm_home() -> Path:
    """$EDGELLM_HOME, else the platform's config dir (~/.config/edgellm, ~/Library/Application Support/edgellm)."""
    if os.environ.get("EDGELLM_HOME"):
        return Path(os.environ["EDGELLM_HOME"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "edgellm"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgellm"


def user_profiles_dir() -> Path:
    """User profiles: new names, or overrides of built-in ones."""
    return edgellm_home() / "profiles"


def synthetic_models_dir() -> Path:
    """Random-weight models of real shapes, built once by `bench --synthetic`."""
    return edgellm_home() / "synthetic"


def chat_history_file() -> Path:
    """prompt_toolkit's input history for `edgellm chat`."""
    return edgellm_home() / "history" / "chat"


def llama_build_cache_file() -> Path:
    """llama.cpp's system-info line, cached per installed build."""
    return edgellm_home() / "cache" / "llama-build.json"


def user_api_key_file() -> Path:
    """The API key of a `service install --user` server."""
    return edgellm_home() / "api-key"
