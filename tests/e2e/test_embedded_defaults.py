"""The README's first command: nothing configured, embedded PostgreSQL, Redis and Qdrant Edge."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import httpx

from tests.e2e.conftest import ARTIFACTS
from tests.support.server import ROOT, LiveServer, processes_mentioning

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


def test_keys_and_documents_commands_work_beside_the_running_server(tmp_path):
    """`citadel keys` and `citadel documents` while `citadel serve` owns the embedded PostgreSQL:
    they use that server's database (no second PostgreSQL, no "in use" refusal), and a key created
    this way is accepted by the running server at once."""
    data_dir = tmp_path / "data"
    env = {"CITADEL_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "CITADEL_AUTH__REQUIRED": "true", "CITADEL_AUTH__ADMIN_KEY": ADMIN_SECRET}  # fmt: skip
    server = LiveServer(env=env, log_path=ARTIFACTS / "embedded-cli-server.log").start()
    try:
        assert server.process is not None
        postgres_before = _postgres_pids(data_dir)
        assert len(postgres_before) == 1, "the server's own embedded PostgreSQL"
        beside = f"using the embedded PostgreSQL of the running Citadel server (pid {server.process.pid})"

        created = citadel("keys", "create", "--name", "frontend", "--scope", "READ", env=env)
        assert created.returncode == 0, created.stderr
        assert beside in created.stderr, created.stderr
        made = json.loads(created.stdout)
        secret, key_id = made["secret"], made["key"]["id"]

        listed = citadel("keys", "list", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert [(k["id"], k["name"], k["scopes"]) for k in json.loads(listed.stdout)] == [(key_id, "frontend", ["READ"])]

        document = "query Frontend { collections { name } }"
        manifest = tmp_path / "persisted-documents.json"
        manifest.write_text(json.dumps({hashlib.sha256(document.encode()).hexdigest(): document}))
        added = citadel("documents", "add", str(manifest), env=env)
        assert added.returncode == 0, added.stderr
        documents = citadel("documents", "list", "--json", env=env)
        assert documents.returncode == 0, documents.stderr
        assert [d["document"] for d in json.loads(documents.stdout)] == [document]

        # The running server accepts the key the CLI created, and still requires one.
        me = httpx.post(server.url + "/graphql", json={"query": "{ me { id name scopes } }"},
                        headers={"Authorization": f"Bearer {secret}"}, timeout=60)  # fmt: skip
        assert me.status_code == 200, me.text
        assert me.json()["data"]["me"] == {"id": key_id, "name": "frontend", "scopes": ["READ"]}
        assert httpx.post(server.url + "/graphql", json={"query": "{ me { id } }"}, timeout=60).status_code == 401
        assert _postgres_pids(data_dir) == postgres_before, "the commands started no PostgreSQL of their own"
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()
    assert processes_mentioning(data_dir) == []

    # With no server running, a command starts the embedded PostgreSQL itself, and stops it.
    alone = citadel("keys", "list", "--json", env=env)
    assert alone.returncode == 0, alone.stderr
    assert "running Citadel server" not in alone.stderr
    assert [k["id"] for k in json.loads(alone.stdout)] == [key_id]
    assert processes_mentioning(data_dir) == []


ADMIN_SECRET = "test-admin-" + "0c5e7a9b1d3f5e7a9c1b3d5f7e9a1c3b"


def citadel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _postgres_pids(data_dir) -> list[int]:
    return sorted(p.pid for p in processes_mentioning(data_dir) if p.name() == "postgres" and "-D" in (p.cmdline() or []))
