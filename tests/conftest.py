"""Shared fixtures: real tiny GGUF models built at test time, and ways to run the real CLI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgellm.runtime import native
from edgellm.store import synthetic

DATA = Path(__file__).parent / "data"
CAPTURES = sorted(p for p in DATA.iterdir() if (p / "expected.json").is_file())

# The R1 template before DeepSeek made it open <think> itself: the model writes the tag.
TEMPLATE_WITHOUT_THINK_PREFILL = synthetic.DEEPSEEK_R1_DISTILL_QWEN_TEMPLATE.replace(
    "{{'<｜Assistant｜><think>\\n'}}", "{{'<｜Assistant｜>'}}"
)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tests away from the user's ~/.config/edgellm and Hugging Face cache."""
    home = tmp_path_factory.mktemp("edgellm-home")
    monkeypatch.setenv("EDGELLM_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("EDGELLM_DEBUG", raising=False)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_f32(models_dir: Path) -> Path:
    return synthetic.write_tiny_model(models_dir / "tiny-F32.gguf")


@pytest.fixture(scope="session")
def tiny_q4km(models_dir: Path, tiny_f32: Path) -> Path:
    out = models_dir / "tiny-Q4_K_M.gguf"
    native.quantize_model(tiny_f32, out, "Q4_K_M")
    return out


@pytest.fixture(scope="session")
def tiny_q4ks(models_dir: Path, tiny_f32: Path) -> Path:
    out = models_dir / "tiny-Q4_K_S.gguf"
    native.quantize_model(tiny_f32, out, "Q4_K_S")
    return out


@pytest.fixture(scope="session")
def tiny_no_prefill(models_dir: Path) -> Path:
    """Same tokenizer, but the chat template does not open <think> (the model must)."""
    return synthetic.write_tiny_model(models_dir / "tiny-noprefill-F32.gguf", chat_template=TEMPLATE_WITHOUT_THINK_PREFILL)


@pytest.fixture(scope="session")
def tiny_8k(models_dir: Path) -> Path:
    """The tiny test model with an 8k context, so a generation can outlast what a test needs."""
    shape = dataclasses.replace(synthetic.TINY, context_length=8192)
    return synthetic.write_tiny_model(models_dir / "tiny-8k.gguf", shape=shape)


# Big enough that weights, KV cache and compute dominate the interpreter's own ~60 MiB, and slow
# enough (a few hundred tokens/s here) that a signal lands mid-generation.
MID_SHAPE = synthetic.ModelShape(n_layers=8, n_embd=1024, n_head=8, n_head_kv=2, n_ff=2816, n_vocab=32000, context_length=4096)


@pytest.fixture(scope="session")
def mid_model(models_dir: Path) -> Path:
    return synthetic.write_synthetic_model(models_dir / "mid-Q4_K_M.gguf", MID_SHAPE, "Q4_K_M")


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("EDGELLM_DEBUG", None)
    env.update(extra)
    return env


def run_cli(*args: str, input: bytes | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[bytes]:  # noqa: A002  (subprocess.run's name)
    """Run `python -m edgellm ARGS` as a real process (pipes, exit codes, signals are real)."""
    return subprocess.run(
        [sys.executable, "-m", "edgellm", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        env=cli_env(**env),
        check=False,
    )


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write {relative path: text} below root (a hand-made sysroot or tree); returns root."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
