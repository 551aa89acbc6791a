"""Ollama's /api/pull and /api/delete through the real `ollama` client against a real `edgellm
serve` process: downloads come from a local server that answers like the hub (tests/hubserver.py,
HF_ENDPOINT), into a temporary Hugging Face cache; nothing touches the internet."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from hubserver import FakeHub
from test_serve import ServerProcess
from test_serve_models import place

SMOLLM = "bartowski/SmolLM2-360M-Instruct-GGUF"  # a catalog model; Ollama calls it smollm2:360m
OTHER = "someone/tiny-GGUF"  # not in the catalog: pulled as owner/repo:QUANT
TWICE = "someone/twice-GGUF"  # pulled by two clients at once
KEY = "pull-test-key"


@pytest.fixture(scope="module")
def hub(tiny_q4km: Path, tiny_q4ks: Path) -> Iterator[FakeHub]:
    fake = FakeHub()
    for quant in ("Q4_K_M", "Q4_K_S", "Q4_0"):  # whichever quant the planner picks is there
        fake.add_file(SMOLLM, f"SmolLM2-360M-Instruct-{quant}.gguf", tiny_q4km)
    fake.add_file(SMOLLM, "SmolLM2-360M-Instruct-Q8_0.gguf", tiny_q4ks)  # other bytes: a blob of its own
    fake.add_file(OTHER, "tiny-model-Q4_K_M.gguf", tiny_q4km)
    fake.add_file(TWICE, "twice-Q4_K_M.gguf", tiny_q4km)
    fake.serve()
    yield fake
    fake.close()


def start(hub: FakeHub, hf: Path, home: Path, *args: str) -> ServerProcess:
    env = {"HF_HOME": str(hf), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    return ServerProcess(None, "--parallel", "1", *args, home=home, ctx="2048", env=env)


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory, tiny_q4km: Path) -> Path:
    """A cache holding one model, so serve starts without -m."""
    folder = tmp_path_factory.mktemp("hf")
    place(folder, "bartowski/Qwen2.5-0.5B-Instruct-GGUF", "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", tiny_q4km)
    return folder


@pytest.fixture(scope="module")
def server(hub: FakeHub, hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start(hub, hf, tmp_path_factory.mktemp("home"))
    yield process
    assert process.stop() == 0, process.stderr


@pytest.fixture
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.root, timeout=120)


def names(client: ollama.Client) -> set[str]:
    return {model.model or "" for model in client.list().models}


def alive(server: ServerProcess) -> None:
    assert httpx.get(server.root + "/api/version").status_code == 200
    assert "Traceback" not in server.stderr


def test_a_pull_streams_progress_then_serves_the_model_under_its_ollama_name(
        server: ServerProcess, client: ollama.Client, hub: FakeHub, tiny_q4km: Path) -> None:
    assert "smollm2:360m" not in names(client)
    lines = list(client.pull("smollm2:360m", stream=True))
    statuses = [line.status for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [line for line in lines if line.digest]
    sha256 = hashlib.sha256(tiny_q4km.read_bytes()).hexdigest()
    assert progress and all(line.digest == f"sha256:{sha256}" and line.status == f"pulling {sha256[:12]}" for line in progress)
    assert all(line.total == tiny_q4km.stat().st_size for line in progress)
    done = [line.completed or 0 for line in progress]
    assert done == sorted(done) and done[-1] == tiny_q4km.stat().st_size
    downloaded = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert len(downloaded) == 1 and SMOLLM in downloaded[0].path

    listed = {model.model: model for model in client.list().models}
    new = next(name for name in listed if name and name.startswith("smollm2-360m:"))
    assert listed[new].digest == sha256 and listed[new].details and listed[new].details.format == "gguf"
    reply = client.chat(model="smollm2:360m", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3})
    assert reply.done and reply.eval_count and reply.eval_count >= 1
    assert [model.model for model in client.ps().models] == [new]
    server.wait_for_line(r"pulled smollm2-360m:\S+ \(.*\) in [\d.]+s for a client")
    # A second pull of what is now served answers at once, without the hub.
    before = len(hub.requests)
    assert [line.status for line in client.pull("smollm2:360m", stream=True)] == ["pulling manifest", "success"]
    assert len(hub.requests) == before
    alive(server)


def test_a_pull_in_one_piece_of_an_owner_repo_name_then_generate(server: ServerProcess, client: ollama.Client) -> None:
    assert client.pull(f"{OTHER}:Q4_K_M").status == "success"  # stream=False: Home Assistant's way
    assert f"{OTHER}:Q4_K_M" in names(client)
    reply = client.generate(model=f"{OTHER}:Q4_K_M", prompt="hello", options={"num_predict": 2})
    assert reply.done
    alive(server)


@pytest.mark.parametrize(("name", "status", "words"), [
    ("no-such-model", 404, "not a model edgellm knows"),
    ("../../etc/passwd", 404, "not a model name"),
    ("/etc/passwd", 404, "not a model name"),
    ("nobody/missing-GGUF:Q4_K_M", 404, "nobody/missing-GGUF"),
    (f"{SMOLLM}:Q2_K", 404, "has no Q2_K file"),
])
def test_a_pull_that_cannot_be_done_is_a_clear_error(server: ServerProcess, client: ollama.Client, name: str, status: int,
                                                     words: str) -> None:
    with pytest.raises(ollama.ResponseError) as failed:
        client.pull(name)
    assert failed.value.status_code == status and words in failed.value.error, failed.value.error
    streamed = httpx.post(server.root + "/api/pull", json={"model": name})  # the error comes before any line
    assert streamed.status_code == status and words in streamed.json()["error"]
    alive(server)


def test_a_client_that_leaves_mid_pull_stops_the_download_and_the_next_pull_resumes_it(
        server: ServerProcess, client: ollama.Client, hub: FakeHub, hf: Path, tiny_q4ks: Path) -> None:
    name, filename = f"{SMOLLM}:Q8_0", "SmolLM2-360M-Instruct-Q8_0.gguf"
    hub.chunk_delay_s = 1.0  # ~14 s for the file
    try:
        with httpx.stream("POST", server.root + "/api/pull", json={"model": name}, timeout=60) as response:
            lines = response.iter_lines()  # held: breaking out of the loop must not close the connection yet
            for line in lines:
                if '"completed"' in line and '"completed":0' not in line:
                    break  # some bytes arrived
            time.sleep(2.5)  # past the listing's look at the disk (every 2 s)
            # Clients poll the list while a pull runs (Home Assistant every 30 s): it answers at once,
            # not when the download is done.
            assert httpx.get(server.root + "/api/tags", timeout=5).status_code == 200
            lines.close()  # leaving: the download stops
        server.wait_for_line(rf"pull of {re.escape(name)} stopped: its client went away")
    finally:
        hub.chunk_delay_s = 0.0
    partial = list((hf / "hub" / "models--bartowski--SmolLM2-360M-Instruct-GGUF" / "blobs").glob("*.incomplete"))
    assert partial and 0 < partial[0].stat().st_size < tiny_q4ks.stat().st_size
    assert name not in names(client)

    assert client.pull(name).status == "success"
    ranges = [request.range for request in hub.file_requests(filename)]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1] and ranges[1].startswith("bytes=")
    assert any(model.startswith("smollm2-360m:Q8_0") for model in names(client))
    alive(server)


def test_two_clients_pulling_one_model_at_once_download_it_once(server: ServerProcess, hub: FakeHub) -> None:
    hub.chunk_delay_s = 0.05
    results: list[str] = []

    def pull() -> None:
        results.append(ollama.Client(host=server.root, timeout=60).pull(f"{TWICE}:Q4_K_M").status or "")

    try:
        threads = [threading.Thread(target=pull) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        hub.chunk_delay_s = 0.0
    assert results == ["success", "success"]
    assert len(hub.file_requests("twice-Q4_K_M.gguf")) == 1
    alive(server)


def test_models_pulled_or_removed_outside_serve_appear_and_go(server: ServerProcess, client: ollama.Client, hf: Path,
                                                               tiny_q4ks: Path) -> None:
    """`edgellm pull` / `edgellm rm` on the board while serve runs: the next listing shows it."""
    place(hf, "someone/later-GGUF", "later-Q4_K_S.gguf", tiny_q4ks)
    wanted = "someone/later-GGUF:Q4_K_S"
    deadline = time.monotonic() + 20
    while wanted not in names(client):
        assert time.monotonic() < deadline, names(client)
        time.sleep(0.5)
    # The log is read from the server's stderr by a thread of the test: wait for the line, not assume it.
    server.wait_for_line(re.escape("serving someone/later-GGUF:Q4_K_S too: it appeared in the Hugging Face cache"))
    assert client.generate(model=wanted, prompt="hi", options={"num_predict": 1}, keep_alive=0).done
    while wanted in [model.model for model in client.ps().models]:  # keep_alive 0: unloaded once answered
        assert time.monotonic() < deadline
        time.sleep(0.2)

    folder = hf / "hub" / "models--someone--later-GGUF"
    for path in [*folder.rglob("*.gguf"), *(folder / "blobs").glob("*")]:
        path.unlink()  # what `edgellm rm` does
    while wanted in names(client):
        assert time.monotonic() < deadline, names(client)
        time.sleep(0.5)
    server.wait_for_line(re.escape("someone/later-GGUF:Q4_K_S is gone from the disk: no longer served"))
    with pytest.raises(ollama.ResponseError) as gone:
        client.generate(model=wanted, prompt="hi")
    assert gone.value.status_code == 404
    alive(server)


def test_delete_unloads_the_model_and_removes_its_file(server: ServerProcess, client: ollama.Client, hf: Path) -> None:
    assert client.pull(f"{OTHER}:Q4_K_M").status == "success"
    client.generate(model=f"{OTHER}:Q4_K_M", prompt="hi", options={"num_predict": 1}, keep_alive=-1)
    assert f"{OTHER}:Q4_K_M" in [model.model for model in client.ps().models]
    files = list((hf / "hub" / "models--someone--tiny-GGUF").rglob("*.gguf"))
    assert files

    assert client.delete(f"{OTHER}:Q4_K_M").status == "success"
    assert f"{OTHER}:Q4_K_M" not in names(client)
    assert f"{OTHER}:Q4_K_M" not in [model.model for model in client.ps().models]
    assert not any(path.exists() for path in files)
    blobs = (hf / "hub" / "models--someone--tiny-GGUF" / "blobs").glob("*")
    assert not [blob for blob in blobs if blob.suffix != ".lock"]  # the blob too (an empty lock file may stay)
    with pytest.raises(ollama.ResponseError) as gone:
        client.generate(model=f"{OTHER}:Q4_K_M", prompt="hi")
    assert gone.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as again:
        client.delete(f"{OTHER}:Q4_K_M")
    assert again.value.status_code == 404
    server.wait_for_line(re.escape("deleted someone/tiny-GGUF:Q4_K_M for a client"))
    alive(server)


def test_a_lan_server_without_a_key_refuses_pulls_and_deletes_unless_allowed(
        hub: FakeHub, hf: Path, tmp_path: Path) -> None:
    lan = start(hub, hf, tmp_path / "lan", "--host", "0.0.0.0", "--insecure")  # noqa: S104  (the point of the test)
    try:
        client = ollama.Client(host=lan.root, timeout=60)
        with pytest.raises(ollama.ResponseError) as pull:
            client.pull(f"{OTHER}:Q4_K_M")
        assert pull.value.status_code == 403 and "--allow-pull" in pull.value.error
        with pytest.raises(ollama.ResponseError) as delete:
            client.delete("qwen2.5:0.5b")
        assert delete.value.status_code == 403 and "--allow-pull" in delete.value.error
        assert client.pull("qwen2.5:0.5b").status == "success"  # already here: nothing changes on disk
        assert any(name.startswith("qwen2.5-0.5b:") for name in names(client))
        alive(lan)
    finally:
        assert lan.stop() == 0
    allowed = start(hub, hf, tmp_path / "allowed", "--host", "0.0.0.0", "--insecure", "--allow-pull")  # noqa: S104
    try:
        with pytest.raises(ollama.ResponseError) as unknown:  # allowed: the name is looked at, not refused
            ollama.Client(host=allowed.root, timeout=60).pull("no-such-model")
        assert unknown.value.status_code == 404
    finally:
        assert allowed.stop() == 0
    keyed = start(hub, hf, tmp_path / "keyed", "--host", "0.0.0.0", "--api-key", KEY)  # noqa: S104
    try:
        assert httpx.post(keyed.root + "/api/pull", json={"model": "no-such-model"}).status_code == 401
        with_key = ollama.Client(host=keyed.root, timeout=60, headers={"Authorization": f"Bearer {KEY}"})
        with pytest.raises(ollama.ResponseError) as unknown:
            with_key.pull("no-such-model")
        assert unknown.value.status_code == 404
    finally:
        assert keyed.stop() == 0


def test_the_model_serve_started_with_is_not_deleted(hub: FakeHub, hf: Path, tmp_path: Path) -> None:
    env = {"HF_HOME": str(hf), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    cached = next((hf / "hub" / "models--bartowski--Qwen2.5-0.5B-Instruct-GGUF").rglob("*.gguf"))
    process = ServerProcess(cached, "--parallel", "1", home=tmp_path, ctx="2048", env=env)
    try:
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=process.root, timeout=60).delete("qwen2.5:0.5b")
        assert refused.value.status_code == 400 and "started with (-m)" in refused.value.error
        assert list((hf / "hub" / "models--bartowski--Qwen2.5-0.5B-Instruct-GGUF").rglob("*.gguf"))
    finally:
        assert process.stop() == 0


def test_serve_on_an_empty_board_starts_and_a_client_pulls_its_first_model(hub: FakeHub, tmp_path: Path) -> None:
    """Ollama's first run, as Home Assistant meets it: nothing downloaded, the client pulls."""
    empty = start(hub, tmp_path / "hf", tmp_path / "home", "--allow-pull")
    try:
        assert "no model downloaded yet: clients pull them" in empty.stderr
        client = ollama.Client(host=empty.root, timeout=60)
        assert client.list().models == [] and client.ps().models == []
        assert client.pull(f"{OTHER}:Q4_K_M").status == "success"
        reply = client.chat(model=f"{OTHER}:Q4_K_M", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2})
        assert reply.done and reply.message.role == "assistant"
        with pytest.raises(openai.BadRequestError):  # /v1 without a model: which one? (400, not a crash)
            empty.client().chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}])
        alive(empty)
    finally:
        assert empty.stop() == 0, empty.stderr
