"""Real Citadel servers: the tests' PostgreSQL (fresh database) and Redis, Qdrant Edge, and a local
Hugging Face mirror (tests/support/fake_hub.py) so models really download over HTTP."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cross_encoders import RERANKER, cross_encoder_dir, reranker_catalog  # noqa: F401  (fixture)
from tests.support.databases import create_database, drop_database
from tests.support.fake_hub import DEFAULT_REPO, HUB_MODEL, FakeHub
from tests.support.models import built_once
from tests.support.server import ARTIFACTS, LiveServer
from tests.support.services import redis_url, redis_url_in_use

BUNDLED = "sentence-transformers/all-MiniLM-L6-v2"


ONNX_MODEL = "local/all-MiniLM-L6-v2-onnx"
SESSION_TAG = uuid.uuid4().hex[:8]


def shared_redis_env() -> dict[str, str]:
    """The tests' Redis, with cache keys under a prefix this session removes when it ends."""
    return {
        "CITADEL_REDIS_URL": redis_url(),
        "CITADEL_CACHE__KEY_PREFIX": f"citadel-test-{SESSION_TAG}-{uuid.uuid4().hex[:6]}:",
        # A loaded 2-core CI machine can take longer than the default to answer; the cache would
        # then be skipped by design, and these tests are about hits.
        "CITADEL_CACHE__TIMEOUT_MS": "5000",
    }


def bundled_server(data_dir: Path, database_url: str, log_name: str, **env: str) -> LiveServer:
    """A server (not started) on the bundled model, the tests' Redis, a database of its own, and a
    fresh log in test-artifacts/."""
    log = ARTIFACTS / log_name
    log.unlink(missing_ok=True)
    return LiveServer(
        env={
            "CITADEL_DATA_DIR": str(data_dir),
            "CITADEL_DATABASE_URL": database_url,
            **shared_redis_env(),
            "CITADEL_DEFAULT_MODEL": BUNDLED,
            "HF_HUB_OFFLINE": "1",
            **env,
        },
        log_path=log,
    )


@contextlib.asynccontextmanager
async def reranker_server(tmp_dir: Path, name: str, cross_encoder_dir: Path, admin: str) -> AsyncIterator[LiveServer]:
    """A started server with keys required (`admin` the admin key), the test cross-encoder as the
    default reranker (at most 20 documents a call), loaded through downloadModel; its database is
    dropped afterwards."""

    from tests.support.polling import poll

    database = await create_database(f"citadel_{name}")
    live = bundled_server(
        tmp_dir,
        database,
        f"{name}-server.log",
        CITADEL_MODELS=json.dumps(reranker_catalog(cross_encoder_dir)),
        CITADEL_DEFAULT_RERANKER=RERANKER,
        CITADEL_LIMITS__MAX_RERANK_DOCUMENTS="20",
        CITADEL_AUTH__REQUIRED="true",
        CITADEL_AUTH__ADMIN_KEY=admin,
    )
    live.start()
    try:
        headers = {"authorization": f"Bearer {admin}"}

        def graphql(query: str, variables: dict) -> dict:
            return live.http.post(live.url + "/graphql", json={"query": query, "variables": variables},
                              headers=headers, timeout=120).json()  # fmt: skip

        started = graphql("mutation($n: String!) { downloadModel(name: $n) { state } }", {"n": RERANKER})
        assert "errors" not in started, started
        state = "query($n: String!) { model(name: $n) { state lastError } }"
        poll(lambda: graphql(state, {"n": RERANKER})["data"]["model"]["state"] == "READY", "the reranker loads")
        yield live
    finally:
        live.stop()
        await drop_database(database)


@pytest.fixture(scope="session", autouse=True)
def remove_cache_keys():
    yield
    import redis

    url = redis_url_in_use()
    if url is None:  # no server of this session used Redis
        return
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"citadel-test-{SESSION_TAG}-*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


def hub_env(endpoint: str, onnx_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """Settings for a server whose catalog has a model served by the local mirror (and, given a
    directory made by `citadel models export-onnx`, the bundled model on the fastembed backend)."""
    catalog: dict[str, dict] = {HUB_MODEL: {"repo_id": DEFAULT_REPO, "dimensions": 384, "fallback": BUNDLED}}
    if onnx_dir is not None:
        catalog[ONNX_MODEL] = {"backend": "fastembed", "path": str(onnx_dir), "dimensions": 384}
    return {
        "CITADEL_MODELS": json.dumps(catalog),
        "CITADEL_HF_ENDPOINT": endpoint,
        "CITADEL_HF_OFFLINE": "false",
        "HF_HUB_OFFLINE": "0",
        "CITADEL_DOWNLOADS__RETRY_DELAY_SECONDS": "0.3",
        "CITADEL_DOWNLOADS__PROGRESS_INTERVAL_SECONDS": "0.1",
        "CITADEL_DOWNLOADS__MIN_FREE_DISK_MB": "1",
        **extra,
    }


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory) -> Path:
    """The bundled model exported to ONNX by the real CLI command (once for all workers)."""

    def export(folder: Path) -> Path:
        out = folder / "minilm"
        done = subprocess.run(
            [sys.executable, "-m", "app", "models", "export-onnx", "-o", str(out)],
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return out

    return built_once(tmp_path_factory, "onnx-cli", export)


@pytest.fixture(scope="session")
def fake_hub():
    with FakeHub() as hub:
        yield hub


@pytest.fixture(scope="session")
async def e2e_database():
    url = await create_database("citadel_e2e")
    yield url
    await drop_database(url)


class DownloadingServer(LiveServer):
    """The browser test's hook: start a real download of a hub model, slowed so it can be watched."""

    hub: FakeHub | None = None
    download_model = HUB_MODEL

    def start_download(self, name: str) -> dict:
        if self.hub is not None:  # ~10 ms per 64 KiB of the weights: a few seconds of visible progress
            self.hub.add_fault("slow", file="*.safetensors", delay=0.01)
        body = self.graphql("mutation($n: String!) { downloadModel(name: $n) { name state } }", {"n": name})
        assert "errors" not in body, body
        return body["data"]["downloadModel"]


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, e2e_database, fake_hub, onnx_dir, cross_encoder_dir):
    env = hub_env(
        fake_hub.url,
        onnx_dir,
        CITADEL_DATA_DIR=str(tmp_path_factory.mktemp("citadel-e2e")),
        CITADEL_DATABASE_URL=e2e_database,
        **shared_redis_env(),
        CITADEL_DEFAULT_MODEL=BUNDLED,
        CITADEL_DEFAULT_RERANKER=RERANKER,  # a cross-encoder built from the bundled weights
    )
    env["CITADEL_MODELS"] = json.dumps({**json.loads(env["CITADEL_MODELS"]), **reranker_catalog(cross_encoder_dir)})
    server = DownloadingServer(env=env, log_path=ARTIFACTS / "e2e-server.log")
    server.hub = fake_hub
    server.start()
    try:
        yield server
    finally:
        server.stop()


# Access control: a server with keys required (tests/e2e/access_support.py).
from tests.e2e.access_support import access_database, access_server  # noqa: E402,F401
