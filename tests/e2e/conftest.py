"""A real Citadel server per session: machine PostgreSQL (fresh database) and Redis, Qdrant Edge."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.databases import create_database, drop_database
from tests.support.server import LiveServer

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
async def e2e_database():
    url = await create_database("citadel_e2e")
    yield url
    await drop_database(url)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, e2e_database):
    ARTIFACTS.mkdir(exist_ok=True)
    server = LiveServer(
        env={
            "CITADEL_DATA_DIR": str(tmp_path_factory.mktemp("citadel-e2e")),
            "CITADEL_DATABASE_URL": e2e_database,
            "CITADEL_REDIS_URL": "redis://127.0.0.1:6379/0",
            "CITADEL_CACHE__KEY_PREFIX": f"citadel-test-{uuid.uuid4().hex[:8]}:",
            "CITADEL_DEFAULT_MODEL": "sentence-transformers/all-MiniLM-L6-v2",
            "HF_HUB_OFFLINE": "1",
        },
        log_path=ARTIFACTS / "e2e-server.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
