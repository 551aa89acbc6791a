"""A local HTTP server on 127.0.0.1 that answers like the Hugging Face hub, for download tests.

It speaks the part of the protocol huggingface_hub and edgellm use (see ../shared/REFERENCE.md):
HEAD/GET `/{repo}/resolve/{rev}/{file}` with X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size and
Range -> 206; `/api/models/{repo}[/revision/{rev}]` with siblings and lfs.sha256;
`/api/models/{repo}/tree/{rev}`; 401 for gated repos without the right token; 404 with X-Error-Code
for missing repos, revisions and files. Switches let a test cut a connection mid-file, advertise a
wrong sha256, or play a malicious mirror that lies about names (file names, commit ids and LFS
hashes with `../` in them). Files are real GGUFs made by edgellm.store.synthetic.

Run it by hand for a demo (serves a tiny model under the real DeepSeek-R1 repo and file names):
    python tests/hubserver.py --port 8765
    HF_ENDPOINT=http://127.0.0.1:8765 HF_HUB_DISABLE_XET=1 edgellm pull deepseek-r1-1.5b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024


@dataclass
class HostedFile:
    path: Path
    size: int
    sha256: str
    advertised_sha256: str  # what the hub claims; differs from sha256 to simulate corruption


@dataclass
class HostedRepo:
    repo_id: str
    commit: str
    files: dict[str, HostedFile] = field(default_factory=dict)
    gated: bool = False


@dataclass
class Lie:
    """What a malicious mirror claims about one hosted file; None keeps the truth."""

    rfilename: str | None = None
    commit: str | None = None
    sha256: str | None = None


@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    authorization: str | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FakeHub:
    """The hub's state plus the switches tests flip; serve() starts it on a free port."""

    def __init__(self, token: str = "hf_test_token") -> None:
        self.repos: dict[str, HostedRepo] = {}
        self.token = token
        self.requests: list[RequestRecord] = []
        # Cut the connection after this many body bytes, for the next `cuts_left` file transfers.
        self.cut_after_bytes: int | None = None
        self.cuts_left = 0
        # Seconds to wait before each 64 KiB chunk of a file: a slow link, so a test can leave mid-transfer.
        self.chunk_delay_s = 0.0
        # repo id -> (hosted file name, what the API says about it); every download then gets
        # that file whatever name it asks for, as a malicious mirror would answer.
        self.lies: dict[str, tuple[str, Lie]] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- state -----------------------------------------------------------------------------------

    def add_file(self, repo_id: str, filename: str, source: Path, *, gated: bool = False, wrong_sha256: bool = False) -> HostedFile:
        repo = self.repos.get(repo_id)
        if repo is None:
            commit = hashlib.sha1(repo_id.encode()).hexdigest()
            repo = self.repos[repo_id] = HostedRepo(repo_id, commit, gated=gated)
        repo.gated = repo.gated or gated
        digest = _sha256(source)
        advertised = hashlib.sha256(b"not the file " + digest.encode()).hexdigest() if wrong_sha256 else digest
        hosted = HostedFile(source, source.stat().st_size, digest, advertised)
        repo.files[filename] = hosted
        return hosted

    def lie_about(self, repo_id: str, filename: str, *, rfilename: str | None = None, commit: str | None = None,
                  sha256: str | None = None) -> None:
        """Answer /api/models for `repo_id` with these names for `filename` (which must be hosted),
        at any revision asked for."""
        assert filename in self.repos[repo_id].files
        self.lies[repo_id] = (filename, Lie(rfilename, commit, sha256))

    def cut_connections(self, after_bytes: int, times: int = 1) -> None:
        with self.lock:
            self.cut_after_bytes, self.cuts_left = after_bytes, times

    def file_requests(self, filename: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)]

    # --- server ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, port: int = 0) -> FakeHub:
        hub = self

        class Handler(_HubHandler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
API_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/.*)?$")
API_REVISION = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>.+)$")  # refs/pr/1 is a revision too
API_MODEL = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)$")


class _HubHandler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass  # keep test output clean

    # --- helpers ---------------------------------------------------------------------------------

    def _record(self) -> str:
        path = unquote(urlsplit(self.path).path)
        self.fake.requests.append(RequestRecord(self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
        return path

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _repo(self, repo_id: str, revision: str | None) -> HostedRepo | None:
        """The repo if this request may see it, else an error has been sent and None returned."""
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and self.headers.get("Authorization") != f"Bearer {self.fake.token}":
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it.")
            return None
        if revision is not None and revision not in ("main", repo.commit) and repo_id not in self.fake.lies:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    # --- endpoints -------------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._resolve(self._record(), send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        path = self._record()
        for pattern, handler in ((API_TREE, self._tree), (API_REVISION, self._info), (API_MODEL, self._info)):
            match = pattern.match(path)
            if match:
                handler(match.group("repo"), match.groupdict().get("rev"))
                return
        self._resolve(path, send_body=True)

    def _info(self, repo_id: str, revision: str | None) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        lied_file, lie = self.fake.lies.get(repo_id, ("", Lie()))
        siblings = []
        for name, f in sorted(repo.files.items()):
            told = lie if name == lied_file else Lie()
            sha256 = told.sha256 or f.advertised_sha256
            siblings.append({"rfilename": told.rfilename or name, "size": f.size, "blobId": hashlib.sha1(sha256.encode()).hexdigest(),
                             "lfs": {"sha256": sha256, "size": f.size, "pointerSize": 134}})
        commit = lie.commit or repo.commit
        self._json({"_id": repo.commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                    "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                    "tags": ["gguf"], "siblings": siblings})

    def _tree(self, repo_id: str, revision: str | None) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        self._json([
            {"type": "file", "oid": hashlib.sha1(f.advertised_sha256.encode()).hexdigest(), "size": f.size, "path": name,
             "lfs": {"oid": f.advertised_sha256, "size": f.size, "pointerSize": 134}}
            for name, f in sorted(repo.files.items())
        ])

    def _lied_file(self) -> tuple[HostedRepo, HostedFile] | None:
        """A lying mirror's file, for any download request: the URL a client builds from `../`
        names has its dot segments folded away, so it may name no repo at all."""
        if not self.fake.lies:
            return None
        repo_id, (filename, _) = next(iter(self.fake.lies.items()))
        repo = self.fake.repos[repo_id]
        return repo, repo.files[filename]

    def _requested_file(self, path: str) -> tuple[HostedRepo, HostedFile] | None:
        """The repo and file a resolve URL names, or None once the hub's 404/401 is sent."""
        match = RESOLVE.match(path)
        if not match:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        repo = self._repo(match.group("repo"), match.group("rev"))
        if repo is None:
            return None
        hosted = repo.files.get(match.group("file"))
        if hosted is None:
            self._error(404, "EntryNotFound", f"{match.group('file')} does not exist on \"{match.group('rev')}\"", commit=repo.commit)
            return None
        return repo, hosted

    def _resolve(self, path: str, *, send_body: bool) -> None:
        found = self._lied_file() or self._requested_file(path)
        if found is None:
            return
        repo, hosted = found
        start = 0
        range_header = self.headers.get("Range")
        range_match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if range_match and send_body:
            start = int(range_match.group(1))
            if start >= hosted.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{hosted.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(hosted.size - start))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{hosted.size - 1}/{hosted.size}")
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{hosted.advertised_sha256}"')
        self.send_header("X-Linked-Etag", f'"{hosted.advertised_sha256}"')
        self.send_header("X-Linked-Size", str(hosted.size))
        self.end_headers()
        if not send_body:
            return
        with self.fake.lock:
            cut_at = self.fake.cut_after_bytes if self.fake.cuts_left > 0 else None
            if cut_at is not None:
                self.fake.cuts_left -= 1
        sent = 0
        with hosted.path.open("rb") as handle:
            handle.seek(start)
            while chunk := handle.read(CHUNK):
                if self.fake.chunk_delay_s:
                    time.sleep(self.fake.chunk_delay_s)
                if cut_at is not None and sent + len(chunk) > cut_at:
                    self.wfile.write(chunk[: max(cut_at - sent, 0)])
                    self.wfile.flush()
                    # Drop the TCP connection mid-body, as a flaky network or a proxy would.
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                sent += len(chunk)


# --- demo entry point --------------------------------------------------------------------------


def build_demo_models(directory: Path) -> dict[str, Path]:
    """Tiny real GGUFs (Q4_K_M and Q4_K_S) to serve under the real R1-1.5B file names."""
    from edgellm.runtime import native
    from edgellm.store import synthetic

    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "tiny-F32.gguf"
    if not source.exists():
        synthetic.write_tiny_model(source)
    out = {}
    for quant in ("Q4_K_M", "Q4_K_S"):
        target = directory / f"tiny-{quant}.gguf"
        if not target.exists():
            native.quantize_model(source, target, quant)
        out[quant] = target
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve tiny GGUFs under the real DeepSeek-R1 repo names, like the Hugging Face hub.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/edgellm-fake-hub"))
    args = parser.parse_args()
    models = build_demo_models(args.models_dir)
    hub = FakeHub()
    repo = "bartowski/DeepSeek-R1-Distill-Qwen-1.5B-GGUF"
    for quant, path in models.items():
        hub.add_file(repo, f"DeepSeek-R1-Distill-Qwen-1.5B-{quant}.gguf", path)
    hub.serve(args.port)
    print(f"fake hub at {hub.url} serving {repo}: {', '.join(models)} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.close()


if __name__ == "__main__":
    main()
