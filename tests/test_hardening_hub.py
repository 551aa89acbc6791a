"""A malicious HF_ENDPOINT through the real `edgellm pull` (issue 16): names from the hub become cache
paths, so a file name, commit id or LFS hash with `../` in it must be refused before anything is
written, and nothing may appear outside the Hugging Face cache.

The hub is tests/hubserver.py with its lying switch (`FakeHub.lie_about`): the API answers the
crafted names and every download gets the real file, as a malicious mirror would serve it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from hubserver import FakeHub

REPO = "liar/evil-GGUF"
FILE = "model-Q4_K_M.gguf"
TIMEOUT_S = 60


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory whose only legitimate content is the HF cache at tree/hf; five `..` from a
    snapshot file (hf/hub/models--x/snapshots/COMMIT/) land in tree itself."""
    root = tmp_path / "tree"
    (root / "hf").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path / "edgellm-home"))
    return root


@pytest.fixture
def hub(tiny_q4km: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add_file(REPO, FILE, tiny_q4km)
    fake.serve()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield fake
    fake.close()


def outside_the_cache(tree: Path) -> list[str]:
    """Every file, directory or link below `tree` that is not inside tree/hf, and every link in
    the cache that leads out of it."""
    cache = tree / "hf"
    found = []
    for directory, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = Path(directory) / name
            if path != cache and cache not in path.parents:
                found.append(str(path.relative_to(tree)))
            elif path.is_symlink() and cache not in Path(os.path.realpath(path)).parents:
                found.append(f"{path.relative_to(tree)} -> {os.readlink(path)}")
    return found


def one_line_error(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert "Traceback" not in stderr.decode()
    assert len(lines) in (1, 2) and lines[0].startswith("error: ") and all(line.startswith("hint: ") for line in lines[1:]), lines
    return lines[0]


def test_an_honest_answer_downloads_inside_the_cache(hub: FakeHub, tree: Path) -> None:
    result = run_cli("pull", f"{REPO}:Q4_K_M", timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr.decode()
    assert outside_the_cache(tree) == []


LIES = {
    "dotdot-file": ("rfilename", "../../../../../evil-Q4_K_M.gguf"),  # was: a symlink outside the cache, exit 0
    "absolute-file": ("rfilename", "{tree}/evil-Q4_K_M.gguf"),  # inside the tree, so a regression shows
    "backslash-file": ("rfilename", "sub\\..\\..\\evil-Q4_K_M.gguf"),
    "empty-component": ("rfilename", "a//evil-Q4_K_M.gguf"),
    "newline-file": ("rfilename", "evil\nerror: fake-Q4_K_M.gguf"),  # would forge a second error line
    "dotdot-commit": ("commit", "../../../../x"),  # was: a directory and a symlink outside, exit 0
    "short-commit": ("commit", "0" * 39),
    "dotdot-sha256": ("sha256", "../../../../y"),  # was: a lock file outside
}
WHAT = {"rfilename": "file name", "commit": "commit id", "sha256": "sha256"}


@pytest.mark.parametrize("case", list(LIES))
def test_unsafe_names_from_the_hub_are_refused_before_writing(hub: FakeHub, tree: Path, case: str) -> None:
    field, value = LIES[case]
    value = value.replace("{tree}", str(tree))
    hub.lie_about(REPO, FILE, **{field: value})
    result = run_cli("pull", f"{REPO}:Q4_K_M", timeout=TIMEOUT_S)
    assert result.returncode == 1, result.stderr.decode()
    line = one_line_error(result.stderr)
    assert line == f"error: the hub answered an unsafe {WHAT[field]} {value!r} for {REPO}; nothing was written", line
    assert outside_the_cache(tree) == []
    assert not [r for r in hub.requests if "/resolve/" in r.path]  # not a byte was asked for


def test_unsafe_revision_is_refused(hub: FakeHub, tree: Path) -> None:
    hub.lie_about(REPO, FILE)  # a mirror that answers for any revision
    result = run_cli("pull", f"{REPO}:Q4_K_M", "--revision", "../../../../z", timeout=TIMEOUT_S)
    assert result.returncode == 2
    assert one_line_error(result.stderr) == "error: --revision '../../../../z': not a branch, tag or commit name"
    assert outside_the_cache(tree) == [] and hub.requests == []


def test_a_branch_with_a_slash_is_still_a_revision(hub: FakeHub, tree: Path) -> None:
    hub.lie_about(REPO, FILE)  # answers any revision with the true names
    result = run_cli("pull", f"{REPO}:Q4_K_M", "--revision", "refs/pr/1", timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr.decode()
    assert (tree / "hf/hub/models--liar--evil-GGUF/refs/refs/pr/1").is_file()
    assert outside_the_cache(tree) == []


def test_a_file_spec_that_climbs_out_of_the_repo_is_refused(hub: FakeHub, tree: Path) -> None:
    result = run_cli("pull", f"{REPO}/../../../../../evil.gguf", timeout=TIMEOUT_S)
    assert result.returncode == 1
    assert "is not a file name inside the repo" in one_line_error(result.stderr)
    assert outside_the_cache(tree) == []
