"""pull / ls / rm / run -m NAME against a local fake Hugging Face hub serving tiny real GGUFs.

Every CLI test runs the real `python -m edgellm` process with HF_ENDPOINT pointing at the fake hub
(tests/hubserver.py); nothing touches the internet.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DATA, run_cli
from hubserver import FakeHub

R1_REPO = "bartowski/DeepSeek-R1-Distill-Qwen-1.5B-GGUF"
R1_Q4KM = "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf"
R1_Q4KS = "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_S.gguf"
OTHER_REPO = "someone/tiny-GGUF"
GATED_REPO = "meta-like/gated-GGUF"
BAD_REPO = "broken/corrupt-GGUF"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hub(tiny_q4km: Path, tiny_q4ks: Path) -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add_file(R1_REPO, R1_Q4KM, tiny_q4km)
    fake.add_file(R1_REPO, R1_Q4KS, tiny_q4ks)
    fake.add_file(OTHER_REPO, "tiny-model-Q4_K_M.gguf", tiny_q4km)
    fake.add_file(OTHER_REPO, "tiny-model-q4_k_s.gguf", tiny_q4ks)
    fake.add_file(GATED_REPO, "gated-Q4_K_M.gguf", tiny_q4km, gated=True)
    fake.add_file(BAD_REPO, "corrupt-Q4_K_M.gguf", tiny_q4km, wrong_sha256=True)
    fake.serve()
    yield fake
    fake.close()


@pytest.fixture
def online(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub


def pull(*args: str, **env: str) -> dict:
    result = run_cli("pull", *args, "--json", **env)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Traceback" not in result.stderr
    return json.loads(result.stdout)


def fails(*args: str, **env: str) -> str:
    result = run_cli(*args, **env)
    stderr = result.stderr.decode()
    assert result.returncode != 0, stderr
    assert "Traceback" not in stderr
    assert result.stdout == b""
    return stderr


def test_fresh_download_is_verified_and_cached(online: FakeHub, tiny_q4km: Path) -> None:
    data = pull("deepseek-r1-1.5b", "--yes")
    path = Path(data["path"])
    assert data["quant"] == "Q4_K_M" and data["file"] == R1_Q4KM and not data["already_downloaded"]
    assert sha256_of(path) == sha256_of(tiny_q4km) == data["sha256"]
    assert path.is_symlink() and "snapshots" in path.parts  # huggingface_hub's cache layout
    assert len(online.file_requests(R1_Q4KM)) == 1

    again = pull("deepseek-r1-1.5b")
    assert again["already_downloaded"] and again["path"] == data["path"]
    assert len(online.file_requests(R1_Q4KM)) == 1  # no second transfer

    plain = run_cli("pull", "deepseek-r1-1.5b")
    assert plain.stdout.decode().strip() == data["path"]  # the answer (the path) alone on stdout


def test_connection_cut_mid_file_is_resumed_with_range(online: FakeHub, tiny_q4km: Path) -> None:
    online.cut_connections(after_bytes=100_000, times=2)
    data = pull(f"{R1_REPO}:Q4_K_M", "--yes")
    assert sha256_of(Path(data["path"])) == sha256_of(tiny_q4km)
    ranges = [r.range for r in online.file_requests(R1_Q4KM)]
    assert ranges == [None, "bytes=100000-", "bytes=200000-"]


def hub_folder(repo: str) -> Path:
    return Path(os.environ["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--"))


def test_partial_file_from_an_earlier_run_is_resumed(online: FakeHub, tiny_q4km: Path) -> None:
    digest = sha256_of(tiny_q4km)
    blobs = hub_folder(R1_REPO) / "blobs"
    blobs.mkdir(parents=True)
    half = tiny_q4km.stat().st_size // 2
    (blobs / f"{digest}.incomplete").write_bytes(tiny_q4km.read_bytes()[:half])
    data = pull("deepseek-r1-1.5b:q4_k_m")
    assert sha256_of(Path(data["path"])) == digest
    assert [r.range for r in online.file_requests(R1_Q4KM)] == [f"bytes={half}-"]
    assert not (blobs / f"{digest}.incomplete").exists()


class QuietProgress:
    def __init__(self, label: str, total: int, initial: int = 0) -> None:
        pass

    def update(self, n_bytes: int) -> None:
        pass

    def reset(self, done: int) -> None:
        pass

    def close(self) -> None:
        pass


def test_transfer_that_keeps_failing_keeps_the_partial_file(online: FakeHub, tiny_q4km: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from edgellm.store import cache
    from edgellm.store import hub as download

    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    listing = download.list_repo(R1_REPO)
    remote = listing.files[R1_Q4KM]
    # Every transfer is cut before its first byte: no progress, so the retries run out.
    online.cut_connections(after_bytes=0, times=1000)
    with pytest.raises(download.DownloadError, match="stopped: peer closed connection") as failure:
        download.download(R1_REPO, remote, commit=listing.commit, progress_factory=QuietProgress)  # type: ignore[arg-type]
    assert failure.value.hint is not None and "run the same command again to resume" in failure.value.hint
    assert len(online.file_requests(R1_Q4KM)) == download.RETRIES
    online.cut_connections(after_bytes=0, times=0)
    path = download.download(R1_REPO, remote, commit=listing.commit, progress_factory=QuietProgress)  # type: ignore[arg-type]
    assert sha256_of(path) == sha256_of(tiny_q4km)
    assert [d.path for d in cache.list_downloaded()] == [path]


def test_sha256_mismatch_deletes_the_file(online: FakeHub) -> None:
    stderr = fails("pull", f"{BAD_REPO}:Q4_K_M", "--yes")
    assert "sha256 mismatch" in stderr and "deleted" in stderr
    folder = hub_folder(BAD_REPO)
    assert not [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert json.loads(run_cli("ls", "--json").stdout) == []


def test_missing_repo(online: FakeHub) -> None:
    stderr = fails("pull", "nobody/nothing-GGUF:Q4_K_M")
    assert "no repo nobody/nothing-GGUF" in stderr and "hint:" in stderr


def test_gated_repo_needs_a_token(online: FakeHub) -> None:
    stderr = fails("pull", f"{GATED_REPO}:Q4_K_M")
    assert "gated" in stderr and "HF_TOKEN" in stderr
    data = pull(f"{GATED_REPO}:Q4_K_M", HF_TOKEN=online.token)
    assert Path(data["path"]).is_file()
    assert online.requests[-1].authorization == f"Bearer {online.token}"


def test_missing_quant_lists_the_quants_that_exist(online: FakeHub) -> None:
    stderr = fails("pull", f"{OTHER_REPO}:Q8_0")
    assert "has no Q8_0" in stderr and "Q4_K_M" in stderr and "Q4_K_S" in stderr
    stderr = fails("pull", "deepseek-r1-1.5b:Q2_K")
    assert "has no Q2_K" in stderr and "Q4_K_M" in stderr


def test_quant_tag_matches_file_names_case_insensitively(online: FakeHub, tiny_q4ks: Path) -> None:
    data = pull(f"{OTHER_REPO}:q4_k_s")
    assert data["file"] == "tiny-model-q4_k_s.gguf" and data["quant"] == "Q4_K_S"
    data = pull(f"{OTHER_REPO}/tiny-model-Q4_K_M.gguf")
    assert data["file"] == "tiny-model-Q4_K_M.gguf"


def test_offline_without_and_with_cache(online: FakeHub) -> None:
    stderr = fails("pull", "deepseek-r1-1.5b", HF_HUB_OFFLINE="1")
    assert "HF_HUB_OFFLINE" in stderr and "not downloaded" in stderr
    path = pull("deepseek-r1-1.5b")["path"]
    n_requests = len(online.requests)
    again = pull("deepseek-r1-1.5b", HF_HUB_OFFLINE="1")
    assert again["path"] == path and again["already_downloaded"]
    result = run_cli("run", "-m", "deepseek-r1-1.5b", "-n", "4", "--temp", "0", "Hello", HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr.decode()
    assert len(online.requests) == n_requests  # offline means offline


def test_network_down(online: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    online.close()  # nothing listens on the port any more
    stderr = fails("pull", "deepseek-r1-1.5b")
    assert "cannot reach" in stderr and "network" in stderr


def test_planner_picks_the_quant_for_a_captured_device(online: FakeHub) -> None:
    """Budget between what Q4_K_M and Q4_K_S need on a Pi 5 capture: the planner takes Q4_K_S."""
    from edgellm.device.hardware import detect
    from edgellm.device.profiles import select_profile
    from edgellm.plan.planner import make_plan
    from edgellm.store.catalog import find_entry

    device = detect(DATA / "raspberry-pi-5")
    profile, _ = select_profile(device)
    assert profile.name == "raspberry-pi-5"
    entry = find_entry("deepseek-r1-1.5b")
    assert entry is not None
    # The least a quant can run with (the planner shrinks context and KV cache down to this).
    least = {q: make_plan(entry.model_info(q), device, profile, mem_budget=1).total_bytes for q in ("Q4_K_M", "Q4_K_S")}
    budget = least["Q4_K_S"] + 1024**2
    assert not make_plan(entry.model_info("Q4_K_M"), device, profile, mem_budget=budget).fits
    assert make_plan(entry.model_info("Q4_K_S"), device, profile, mem_budget=budget).fits
    args = ("deepseek-r1-1.5b", "--sysroot", str(DATA / "raspberry-pi-5"), "--mem-budget", str(budget))
    data = pull(*args)
    assert data["quant"] == "Q4_K_S" and "Q4_K_M would not fit" in data["reason"]
    assert pull("deepseek-r1-1.5b", "--sysroot", str(DATA / "raspberry-pi-5"))["quant"] == "Q4_K_M"


def test_ls_and_rm(online: FakeHub) -> None:
    assert run_cli("ls").stdout == b""
    first = pull("deepseek-r1-1.5b")["path"]
    pull("deepseek-r1-1.5b:Q4_K_S")
    listed = json.loads(run_cli("ls", "--json").stdout)
    assert {(d["name"], d["quant"]) for d in listed} == {("deepseek-r1-1.5b:Q4_K_M", "Q4_K_M"), ("deepseek-r1-1.5b:Q4_K_S", "Q4_K_S")}
    table = run_cli("ls").stdout.decode()
    assert "deepseek-r1-1.5b:Q4_K_M" in table and first in table

    stderr = fails("rm", "deepseek-r1-1.5b:Q4_K_M")  # not a terminal and no -y: refuse
    assert "-y" in stderr and Path(first).exists()

    result = run_cli("rm", "deepseek-r1-1.5b:Q4_K_M", "-y", "--json")
    assert result.returncode == 0, result.stderr.decode()
    removed = json.loads(result.stdout)
    assert removed["freed_bytes"] > 0 and [r["quant"] for r in removed["removed"]] == ["Q4_K_M"]
    blob = Path(removed["removed"][0]["path"])
    assert not blob.exists()
    assert [d["quant"] for d in json.loads(run_cli("ls", "--json").stdout)] == ["Q4_K_S"]
    assert run_cli("rm", "deepseek-r1-1.5b", "-y").returncode == 0
    assert json.loads(run_cli("ls", "--json").stdout) == []
    assert "not downloaded" in fails("rm", "deepseek-r1-1.5b", "-y")


def test_models_shows_downloaded_and_fit(online: FakeHub) -> None:
    pull("deepseek-r1-1.5b")
    rows = {r["name"]: r for r in json.loads(run_cli("models", "--json").stdout)}
    quants = {q["quant"]: q for q in rows["deepseek-r1-1.5b"]["quants"]}
    assert quants["Q4_K_M"]["downloaded"] and not quants["Q4_K_S"]["downloaded"]
    tiny = json.loads(run_cli("models", "--json", "--mem-budget", "600MiB", "--sysroot", str(DATA / "raspberry-pi-5")).stdout)
    fit = {r["name"]: r["recommended_quant"] for r in tiny}
    assert fit["deepseek-r1-7b"] is None and fit["qwen2.5-0.5b"] == "Q4_K_M"


def test_run_pulls_on_first_use(online: FakeHub) -> None:
    result = run_cli("run", "-m", "deepseek-r1-1.5b", "-n", "4", "--temp", "0", "--yes", "Hello")
    assert result.returncode == 0, result.stderr.decode()
    assert b"pulling deepseek-r1-1.5b:Q4_K_M" in result.stderr
    assert len(online.file_requests(R1_Q4KM)) == 1


def test_plan_works_before_download_without_network(online: FakeHub) -> None:
    online.close()
    result = run_cli("plan", "deepseek-r1-7b", "--json", "--sysroot", str(DATA / "raspberry-pi-5"))
    assert result.returncode == 0, result.stderr.decode()
    plan = json.loads(result.stdout)
    assert plan["quant"] == "Q4_K_M" and plan["weights_bytes"] == 4683073504


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 300 KiB filesystem (tmpfs), smaller than the model: needs root, as CI has."""
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_too_little_disk_is_refused_before_downloading(online: FakeHub, small_disk: Path) -> None:
    stderr = fails("pull", f"{R1_REPO}:Q4_K_M", "--yes", HF_HOME=str(small_disk / "hf"))
    assert "error: not enough disk space: the download needs 849.00 KiB" in stderr
    assert "HF_HOME" in stderr
    assert online.file_requests(R1_Q4KM) == []  # nothing was transferred


def test_disk_filling_up_mid_transfer_is_one_clear_error(online: FakeHub, small_disk: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from edgellm.store import hub as download

    # The free-space check passes (another program freed space, then took it back): the real
    # filesystem then runs out while writing.
    monkeypatch.setattr(download, "check_disk_space", lambda directory, needed: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(small_disk / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(small_disk / "hf" / "hub"))
    listing = download.list_repo(R1_REPO)
    with pytest.raises(download.DownloadError, match="disk full while writing") as failure:
        download.download(R1_REPO, listing.files[R1_Q4KM], commit=listing.commit, progress_factory=QuietProgress)  # type: ignore[arg-type]
    assert failure.value.hint


def test_names_that_become_cache_paths() -> None:
    from edgellm.errors import UsageError
    from edgellm.store import hub as download

    for good in ("model-Q4_K_M.gguf", "sub/dir/model.gguf", "refs/pr/1", "main", "v1.0", "a..b.gguf"):
        assert download.is_safe_relative_path(good), good
    for bad in ("", "..", "../x", "a/../b", "/abs", "a//b", "a/", "./a", "a\\b", "a\x00b", "a\nb"):
        assert not download.is_safe_relative_path(bad), bad
    with pytest.raises(UsageError):
        download.check_revision("../../x")
