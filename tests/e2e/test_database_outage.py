"""PostgreSQL down when the gateway starts: it starts anyway, says so, and recovers by itself."""

from __future__ import annotations

import time

from app.adapters.embedded import EmbeddedPostgres
from tests.e2e.conftest import ARTIFACTS, shared_redis_env
from tests.support.server import LiveServer

HEALTH = "{ health { status dependencies { name ok detail } } }"


def postgres_health(server: LiveServer) -> dict:
    deps = server.graphql(HEALTH)["data"]["health"]["dependencies"]
    return next(d for d in deps if d["name"] == "postgres")


def test_starts_without_its_database_then_recovers_when_it_returns(tmp_path):
    database = EmbeddedPostgres(tmp_path / "external-pg")  # a real server we can stop and start
    url = database.start()
    database.stop()  # down before the gateway starts

    server = LiveServer(
        env={
            "CITADEL_DATA_DIR": str(tmp_path / "data"),
            "CITADEL_DATABASE_URL": url,
            **shared_redis_env(),
            "CITADEL_DEFAULT_MODEL": "sentence-transformers/all-MiniLM-L6-v2",
            "HF_HUB_OFFLINE": "1",
        },
        log_path=ARTIFACTS / "database-outage.log",
    ).start(wait_ready=False)
    try:
        down = postgres_health(server)
        assert down["ok"] is False and "unavailable" in down["detail"].lower(), down
        embedded = server.graphql('{ embed(texts: ["still serving"], wait: true) { dimensions } }')
        assert embedded["data"]["embed"]["dimensions"] == 384, embedded  # embedding needs no database
        refused = server.graphql('mutation { createCollection(name: "later") { name } }')
        assert refused["errors"][0]["extensions"]["code"] == "DEPENDENCY_UNAVAILABLE", refused

        database.start()  # PostgreSQL comes back: the schema is migrated in the background
        deadline = time.monotonic() + 60
        while not postgres_health(server)["ok"]:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)
        created = server.graphql('mutation { createCollection(name: "later") { name } }')
        assert created["data"]["createCollection"]["name"] == "later", created
    finally:
        assert server.stop() == 0
        database.stop()
