"""`edgellm serve` without -m: every model in the Hugging Face cache, loaded when a request asks
for it, within the memory budget (a real server process, real GGUF files in a temporary cache)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest
from test_serve import ServerProcess, http

MID_A = "test/mid-a-GGUF:Q4_K_M"
MID_B = "test/mid-b-GGUF:Q4_K_M"
TINY = "qwen2.5-0.5b:Q4_K_M"  # a catalog repo's file name: its catalog name, and Ollama's qwen2.5:0.5b
HI = [{"role": "user", "content": "hi"}]
MB = 1024 * 1024


def place(hf: Path, repo: str, filename: str, source: Path) -> None:
    """A file in the hub cache's layout (what `edgellm pull` leaves): a blob and a snapshot link."""
    folder = hf / "hub" / ("models--" + repo.replace("/", "--"))
    blob = folder / "blobs" / f"{abs(hash((repo, filename))):064x}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, blob)
    link = folder / "snapshots" / "0123456789abcdef0123456789abcdef01234567" / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(blob)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory, mid_model: Path, tiny_q4km: Path) -> Path:
    hf = tmp_path_factory.mktemp("hf")
    place(hf, "test/mid-a-GGUF", "mid-a-Q4_K_M.gguf", mid_model)
    place(hf, "test/mid-b-GGUF", "mid-b-Q4_K_M.gguf", mid_model)
    place(hf, "bartowski/Qwen2.5-0.5B-Instruct-GGUF", "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", tiny_q4km)
    return hf


def start(hf_home: Path, home: Path, *args: str) -> ServerProcess:
    return ServerProcess(None, "--parallel", "1", *args, home=home, ctx="2048", env={"HF_HOME": str(hf_home)})


@pytest.fixture(scope="module")
def server(hf_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start(hf_home, tmp_path_factory.mktemp("home"))
    yield process
    process.stop()


def get(server: ServerProcess, path: str) -> Any:
    status, _, body = http("GET", server.root + path)
    assert status == 200, body
    return json.loads(body)


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, _, raw = http("POST", server.root + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return status, json.loads(raw)


def chat(server: ServerProcess, model: str, **more: Any) -> dict[str, Any]:
    status, reply = post(server, "/api/chat", {"model": model, "messages": HI, "stream": False,
                                                "options": {"num_predict": 3}, **more})
    assert status == 200, reply
    return reply


def loaded(server: ServerProcess) -> list[str]:
    return sorted(model["name"] for model in get(server, "/api/ps")["models"])


def rss(server: ServerProcess) -> int:
    text = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("VmRSS:"))) * 1024


def test_serve_without_m_lists_every_downloaded_model_and_loads_each_when_asked(server: ServerProcess) -> None:
    tags = sorted(model["name"] for model in get(server, "/api/tags")["models"])
    assert tags == sorted([MID_A, MID_B, TINY])
    assert sorted(card["id"] for card in get(server, "/v1/models")["data"]) == tags
    assert loaded(server) == []  # nothing loads until asked for
    for name in tags:  # every name /api/tags lists works in /api/chat unchanged
        assert chat(server, name)["done"] is True
    assert loaded(server) == tags
    slots = get(server, "/slots")
    assert sorted({slot["model"] for slot in slots}) == tags
    _, _, metrics = http("GET", server.root + "/metrics")
    assert f'edgellm_model_loaded{{model="{MID_A}"}} 1' in metrics.decode()
    assert "edgellm_model_loaded 1" in metrics.decode()


def test_a_model_answers_to_its_catalog_ollama_and_hub_names(server: ServerProcess) -> None:
    client = ollama.Client(host=server.root)
    for name in ("qwen2.5:0.5b", "qwen2.5-0.5b:latest", "qwen2.5-0.5b", "bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M",
                 "QWEN2.5-0.5B:Q4_K_M"):
        reply = client.chat(model=name, messages=HI, options={"num_predict": 2})
        assert reply.done, name
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="llama3.2", messages=HI)
    assert missing.value.status_code == 404


def test_v1_requests_are_routed_by_their_model_field(server: ServerProcess) -> None:
    for model in (MID_B, "qwen2.5:0.5b"):
        status, reply = post(server, "/v1/chat/completions", {"model": model, "messages": HI, "max_tokens": 2})
        assert status == 200 and reply["model"] == (MID_B if model == MID_B else TINY), reply
    status, reply = post(server, "/v1/completions", {"model": MID_A, "prompt": "Once", "max_tokens": 2})
    assert status == 200 and reply["model"] == MID_A
    status, reply = post(server, "/v1/chat/completions", {"model": "gpt-4o", "messages": HI})
    assert status == 404 and reply["error"]["code"] == "model_not_found" and MID_A in reply["error"]["message"]
    status, reply = post(server, "/v1/chat/completions", {"messages": HI})  # no -m: no default model
    assert status == 400 and reply["error"]["code"] == "model_required"
    assert get(server, f"/v1/models/{MID_A}")["id"] == MID_A


def test_two_requests_for_an_unloaded_model_load_it_once(hf_home: Path, tmp_path: Path) -> None:
    process = start(hf_home, tmp_path)
    try:
        replies: list[dict[str, Any]] = []
        threads = [threading.Thread(target=lambda: replies.append(chat(process, MID_A))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(replies) == 2
        assert process.stderr.count(f"loaded {MID_A} in") == 1, process.stderr
    finally:
        process.stop()


def test_two_models_alternate_within_a_budget_that_holds_one(hf_home: Path, tmp_path: Path) -> None:
    """--mem-budget 400MB holds one mid model (its plan: ~250 MB with the runtime) and the tiny one,
    never two mid ones: each request unloads the other first. Reports the switch time."""
    process = start(hf_home, tmp_path, "--mem-budget", "400MB")
    try:
        chat(process, MID_A)
        assert loaded(process) == [MID_A]
        one_loaded = rss(process)
        switches = []
        for model in (MID_B, MID_A, MID_B):
            started = time.perf_counter()
            reply = chat(process, model)
            switches.append(time.perf_counter() - started)
            assert loaded(process) == [model]  # never both
            assert rss(process) < one_loaded + 60 * MB  # the other one's memory went back
            assert reply["load_duration"] > 0
        print(f"\nmodel switch (unload + load + 3 tokens) of the {MID_A.split(':')[0]} shape: "
              + ", ".join(f"{s:.2f}s" for s in switches))
        assert process.stderr.count("unloaded to make room for") == 3
        # The tiny model fits beside a mid one: both stay, within the budget.
        chat(process, "qwen2.5:0.5b")
        assert loaded(process) == sorted([MID_B, TINY])
        assert sum(model["size"] for model in get(process, "/api/ps")["models"]) <= 400 * 1000 * 1000
        # The least recently used idle model makes room: mid-b (used before the tiny one).
        chat(process, MID_A)
        assert loaded(process) == sorted([MID_A, TINY])
        # keep_alive 0 unloads once answered: the memory goes back.
        before = rss(process)
        chat(process, MID_A, keep_alive=0)
        deadline = time.monotonic() + 10
        while MID_A in loaded(process) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert loaded(process) == [TINY]
        assert rss(process) < before - 50 * MB, (before, rss(process))
    finally:
        process.stop()


def test_a_model_too_large_for_the_budget_alone_is_a_clear_error(hf_home: Path, tmp_path: Path) -> None:
    process = start(hf_home, tmp_path, "--mem-budget", "150MB")
    try:
        status, reply = post(process, "/api/chat", {"model": MID_A, "messages": HI, "stream": False})
        assert status == 503 and reply["error"].startswith(f"cannot load {MID_A}: ") and "needs" in reply["error"], reply
        status, reply = post(process, "/v1/chat/completions", {"model": MID_A, "messages": HI})
        assert status == 503 and reply["error"]["code"] == "model_too_large"
        assert chat(process, TINY)["done"] is True  # the server is alive, and a model that fits is served
    finally:
        process.stop()


def test_keep_alive_option_unloads_an_idle_model(hf_home: Path, tmp_path: Path) -> None:
    process = start(hf_home, tmp_path, "--keep-alive", "1s")
    try:
        chat(process, TINY)
        ps = get(process, "/api/ps")["models"]
        assert [model["name"] for model in ps] == [TINY] and ps[0]["expires_at"]
        process.wait_for_line(rf"idle for 1s: {TINY} unloaded", deadline=20)
        assert loaded(process) == []
        chat(process, TINY, keep_alive="1h")  # a request's keep_alive overrides --keep-alive
        assert loaded(process) == [TINY]
    finally:
        process.stop()


def test_serve_help_says_it_serves_every_model_without_m_and_names_keep_alive() -> None:
    from conftest import run_cli

    result = run_cli("serve", "--help", COLUMNS="200")
    assert result.returncode == 0
    text = " ".join(result.stdout.decode().split())
    assert "Without -m it serves every model in the Hugging Face cache" in text
    assert "--keep-alive" in text and "edgellm serve --keep-alive 10m" in text


def test_serve_without_m_and_without_models_says_what_to_do(tmp_path: Path) -> None:
    from conftest import run_cli

    for where in (["--host", "127.0.0.1"], ["--host", "0.0.0.0", "--insecure"]):  # noqa: S104
        result = run_cli("serve", "--port", "0", *where, HF_HOME=str(tmp_path / "hf"), EDGELLM_HOME=str(tmp_path / "home"))
        assert result.returncode != 0
        assert b"no model: pass -m FILE.gguf, or download models to serve them all" in result.stderr
        assert b"--allow-pull: start empty" in result.stderr and b"Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["soon", "5x"])
def test_a_bad_keep_alive_option_is_refused(value: str, tmp_path: Path) -> None:
    from conftest import run_cli

    result = run_cli("serve", "--keep-alive", value, "--port", "0", HF_HOME=str(tmp_path / "hf"))
    assert result.returncode != 0 and b"--keep-alive" in result.stderr


def test_with_m_that_model_is_loaded_first_and_the_default_beside_the_downloaded_ones(
        hf_home: Path, tiny_8k: Path, tmp_path: Path) -> None:
    process = ServerProcess(tiny_8k, "--parallel", "1", home=tmp_path, ctx="2048", env={"HF_HOME": str(hf_home)})
    try:
        tags = sorted(model["name"] for model in get(process, "/api/tags")["models"])
        assert tags == sorted(["tiny-8k:latest", MID_A, MID_B, TINY])
        assert loaded(process) == ["tiny-8k:latest"]  # -m's, loaded at the start
        status, reply = post(process, "/v1/chat/completions", {"messages": HI, "max_tokens": 2})  # no model: -m's
        assert status == 200 and reply["model"] == "tiny-8k"
        chat(process, "qwen2.5:0.5b")
        assert loaded(process) == sorted(["tiny-8k:latest", TINY])
        assert "also 3 more models, loaded when asked for" in process.stderr
    finally:
        process.stop()


def test_a_model_that_does_not_fit_waits_until_the_busy_one_is_idle(hf_home: Path, tmp_path: Path) -> None:
    process = start(hf_home, tmp_path, "--mem-budget", "400MB")
    try:
        chat(process, MID_A)
        finished: dict[str, float] = {}

        def long_a() -> None:
            chat(process, MID_A, options={"num_predict": 150, "temperature": 0})
            finished["a"] = time.monotonic()

        def short_b() -> None:
            chat(process, MID_B)
            finished["b"] = time.monotonic()

        first = threading.Thread(target=long_a)
        first.start()
        deadline = time.monotonic() + 30
        while get(process, "/health")["slots_busy"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = threading.Thread(target=short_b)
        second.start()
        seen = []
        while second.is_alive():
            seen.append(tuple(loaded(process)))
            time.sleep(0.05)
        first.join()
        assert finished["b"] >= finished["a"]  # B waited for A's generation, then took its place
        assert all(len(names) <= 1 for names in seen), seen  # never both
        assert loaded(process) == [MID_B]
    finally:
        process.stop()


def test_m_of_a_downloaded_model_answers_to_its_other_names_too(hf_home: Path, tmp_path: Path) -> None:
    path = next((hf_home / "hub").glob("models--bartowski--Qwen2.5-0.5B-Instruct-GGUF/snapshots/*/*.gguf"))
    process = ServerProcess(path, "--parallel", "1", home=tmp_path, ctx="2048", env={"HF_HOME": str(hf_home)})
    try:
        tags = sorted(model["name"] for model in get(process, "/api/tags")["models"])
        assert tags == sorted(["Qwen2.5-0.5B-Instruct-Q4_K_M:latest", MID_A, MID_B])  # listed once
        for name in ("qwen2.5:0.5b", TINY, "bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"):
            assert chat(process, name)["done"] is True
        assert loaded(process) == ["Qwen2.5-0.5B-Instruct-Q4_K_M:latest"]
    finally:
        process.stop()
