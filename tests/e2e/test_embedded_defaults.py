"""The README's first command: nothing configured, embedded PostgreSQL, Redis and Qdrant Edge."""

from __future__ import annotations

from tests.e2e.conftest import ARTIFACTS
from tests.support.server import LiveServer, processes_mentioning

HEALTH = "{ health { status dependencies { name ok detail } } }"


def test_serves_on_embedded_servers_stops_cleanly_and_keeps_its_data(tmp_path):
    data_dir = tmp_path / "data"
    env = {"CITADEL_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    first = LiveServer(env=env, log_path=ARTIFACTS / "embedded-server.log").start()
    try:
        health = first.graphql(HEALTH)["data"]["health"]
        assert health["status"] == "ok", health
        assert {d["name"]: (d["ok"], d["detail"].split()[0]) for d in health["dependencies"]} == {
            "postgres": (True, "embedded"),
            "redis": (True, "embedded"),
            "qdrant": (True, "embedded"),
        }
        created = first.graphql('mutation { createCollection(name: "kept") { name } }')
        assert created["data"]["createCollection"]["name"] == "kept", created
        ingested = first.graphql('mutation { ingest(collection: "kept", documents: [{id: "a", text: "persisted text"}]) { inserted } }')
        assert ingested["data"]["ingest"]["inserted"] == 1, ingested
        assert processes_mentioning(data_dir), "embedded servers should be running under the data dir"
    finally:
        code = first.stop()
    assert code == 0, first.log_tail()
    leftovers = processes_mentioning(data_dir)
    assert leftovers == [], f"left behind after Ctrl-C: {[p.info for p in leftovers]}"

    second = LiveServer(env=env, log_path=ARTIFACTS / "embedded-server.log").start()
    try:
        again = second.graphql('{ collection(name: "kept") { documentCount } search(collection: "kept", query: "persisted") { hits { id } } }')
        assert again["data"]["collection"]["documentCount"] == 1, again
        assert [h["id"] for h in again["data"]["search"]["hits"]] == ["a"], again
    finally:
        assert second.stop() == 0
    assert processes_mentioning(data_dir) == []
