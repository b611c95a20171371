"""Frontend-ready GraphQL against two live replicas (one database, one Redis namespace), keys
required and CITADEL_SERVER__TRUSTED_DOCUMENTS=require:

- automatic persisted queries with Apollo Client's own PersistedQueryLink (npm, in Node): the
  hash alone, PersistedQueryNotFound, the retry with the text, then a fresh client on the other
  replica served from the hash alone, over POST and GET; ADMIN keys are exempt from trusted
  documents, so APQ runs for them as anywhere;
- a stored document goes through the same cost rules as one sent whole;
- trusted documents registered with `citadel documents add` (a GraphQL Codegen manifest): a READ
  key runs them by documentId or APQ hash and nothing else (FORBIDDEN, also over WebSocket);
  ADMIN runs anything.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import websockets

from tests.e2e.access_support import ADMIN_KEY, BUNDLED, codes, create_key, serving
from tests.support.npm import npm_install
from tests.support.databases import temporary_database
from tests.support.polling import eventually

APOLLO_SCRIPT = Path(__file__).resolve().parents[1] / "support" / "apq_client.mjs"
SSE_SCRIPT = Path(__file__).resolve().parents[1] / "support" / "sse_client.mjs"
STREAMS_PER_KEY = 2
PROGRESS = "subscription($m: String) { modelDownloadProgress(model: $m) { model replica state } }"
NAMESPACE = f"citadel-test-apq-{uuid.uuid4().hex[:8]}"  # a fresh APQ store for this module
# Unique per run, so no earlier run's stored document answers the first request.
APQ_QUERY = f"query Frontend_{uuid.uuid4().hex[:8]} {{ collections {{ name }} }}"
REGISTERED = "query Models($name: String!) { model(name: $name) { name } }"
NOT_REGISTERED = "query Other { collections { name dimensions } }"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
async def frontend_database():
    async with temporary_database("citadel_frontend") as url:
        yield url


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, frontend_database):
    env = {
        "CITADEL_SERVER__TRUSTED_DOCUMENTS": "require",
        "CITADEL_REDIS_NAMESPACE": NAMESPACE,
        "CITADEL_SERVER__MAX_SUBSCRIPTIONS_PER_KEY": str(STREAMS_PER_KEY),
    }
    first = serving(str(tmp_path_factory.mktemp("frontend-a")), frontend_database, "e2e-frontend-a.log", **env)
    second = serving(str(tmp_path_factory.mktemp("frontend-b")), frontend_database, "e2e-frontend-b.log", **env)
    a = next(first)
    try:
        b = next(second)
        try:
            yield a, b
        finally:
            second.close()
    finally:
        first.close()
        _drop_namespace()


def _drop_namespace() -> None:
    import redis

    from tests.support.services import redis_url

    client = redis.Redis.from_url(redis_url())
    try:
        for key in client.scan_iter(match=f"citadel:{NAMESPACE}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture(scope="module")
def node_clients(tmp_path_factory) -> Path:
    """Apollo Client 3 and graphql-sse from npm in a scratch folder, next to copies of the scripts."""
    folder = npm_install(
        tmp_path_factory.mktemp("node-clients"), "@apollo/client@3", "graphql@16", "graphql-sse@2",
        what="the JavaScript clients",
    )
    for script in (APOLLO_SCRIPT, SSE_SCRIPT):
        shutil.copy(script, folder / script.name)
    return folder


def node(folder: Path, script: Path, arguments: dict) -> dict:
    done = subprocess.run(
        ["node", str(folder / script.name), json.dumps(arguments)], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def registered(replicas, tmp_path_factory, frontend_database) -> str:
    """REGISTERED, added from a manifest as GraphQL Codegen's client preset writes it."""
    manifest = tmp_path_factory.mktemp("manifest") / "persisted-documents.json"
    manifest.write_text(json.dumps({sha256(REGISTERED): REGISTERED}))
    citadel = Path(sys.executable).with_name("citadel")
    env = {**os.environ, "CITADEL_DATABASE_URL": frontend_database}
    done = subprocess.run([str(citadel), "documents", "add", str(manifest)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "registered 1 new of 1 documents" in done.stdout, done.stdout
    listed = subprocess.run([str(citadel), "documents", "list", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert [d["documentId"] for d in json.loads(listed.stdout)] == [f"sha256:{sha256(REGISTERED)}"], listed.stdout
    return sha256(REGISTERED)


def post(server, body: dict, key: str) -> httpx.Response:
    return server.http.post(server.url + "/graphql", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def test_apollo_persisted_query_link_round_trip_across_replicas(replicas, node_clients):
    a, b = replicas
    arguments = {"urls": [a.url + "/graphql", b.url + "/graphql"], "key": ADMIN_KEY, "query": APQ_QUERY}
    runs = node(node_clients, APOLLO_SCRIPT, arguments)
    expected = {"collections": []}

    first = runs["first"]
    assert first["errors"] is None and first["data"] == expected, first
    hashed, full = first["exchanges"]
    sent_text = full["sent"]["query"]  # Apollo prints the document (adding __typename) and hashes that
    assert APQ_QUERY.split("{")[0].strip() in sent_text, sent_text
    digest = sha256(sent_text)
    assert "query" not in hashed["sent"], hashed
    assert hashed["sent"]["extensions"]["persistedQuery"] == {"version": 1, "sha256Hash": digest}
    assert hashed["status"] == 200, hashed
    assert hashed["received"]["errors"][0]["message"] == "PersistedQueryNotFound", hashed
    assert hashed["received"]["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND", hashed
    assert full["sent"]["extensions"]["persistedQuery"]["sha256Hash"] == digest, full
    assert full["received"] == {"data": expected}, full

    for name, method in (("second", "POST"), ("get", "GET")):  # the other replica, a fresh client
        run = runs[name]
        assert run["errors"] is None and run["data"] == expected, run
        [only] = run["exchanges"]
        assert only["method"] == method and "query" not in only["sent"], only
        assert only["received"] == {"data": expected}, only


def test_a_stored_document_meets_the_cost_rules_and_its_hash(replicas):
    a, b = replicas
    costly = "query Costly { " + " ".join(f"a{i}: collections {{ name }}" for i in range(40)) + " }"  # 40 aliases > 32
    extension = {"persistedQuery": {"version": 1, "sha256Hash": sha256(costly)}}
    sent_whole = post(a, {"query": costly, "extensions": extension}, ADMIN_KEY).json()
    assert codes(sent_whole) == ["BAD_INPUT"] and "aliases" in sent_whole["errors"][0]["message"], sent_whole
    by_hash = post(b, {"extensions": extension}, ADMIN_KEY).json()
    assert codes(by_hash) == ["BAD_INPUT"] and "aliases" in by_hash["errors"][0]["message"], by_hash

    wrong = {"persistedQuery": {"version": 1, "sha256Hash": sha256(costly + " ")}}
    mismatch = post(a, {"query": APQ_QUERY, "extensions": wrong}, ADMIN_KEY).json()
    assert codes(mismatch) == ["BAD_INPUT"] and "does not match" in mismatch["errors"][0]["message"], mismatch
    unknown = post(a, {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256("never sent")}}}, ADMIN_KEY)
    assert unknown.status_code == 200 and codes(unknown.json()) == ["PERSISTED_QUERY_NOT_FOUND"], unknown.text


def test_a_read_key_runs_registered_documents_only(replicas, registered):
    a, b = replicas
    read = create_key(a, "frontend", ["READ"])["secret"]
    variables = {"name": BUNDLED}
    expected = {"model": {"name": variables["name"]}}

    by_id = post(b, {"documentId": f"sha256:{registered}", "variables": variables}, read).json()
    assert by_id == {"data": expected}, by_id
    by_hash = post(a, {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": registered}}, "variables": variables}, read)
    assert by_hash.json() == {"data": expected}, by_hash.text
    by_get = httpx.get(
        b.url + "/graphql",
        params={"documentId": f"sha256:{registered}", "variables": json.dumps(variables)},
        headers={"Authorization": f"Bearer {read}", "Accept": "application/json"},
        timeout=120,
    )
    assert by_get.json() == {"data": expected}, by_get.text
    whole = post(a, {"query": REGISTERED, "variables": variables}, read).json()  # its text: the same document
    assert whole == {"data": expected}, whole

    refusals = [
        post(a, {"query": NOT_REGISTERED}, read).json(),
        post(a, {"query": NOT_REGISTERED, "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256(NOT_REGISTERED)}}}, read).json(),
        post(b, {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256(NOT_REGISTERED)}}}, read).json(),
        post(b, {"documentId": f"sha256:{sha256(NOT_REGISTERED)}"}, read).json(),
    ]
    for refused in refusals:
        assert codes(refused) == ["FORBIDDEN"], refused
        assert "not registered" in refused["errors"][0]["message"], refused
        assert refused.get("data") is None, refused

    admin = post(a, {"query": NOT_REGISTERED}, ADMIN_KEY).json()
    assert admin == {"data": {"collections": []}}, admin


async def test_trusted_documents_bind_websocket_operations_too(replicas, registered):
    a, _ = replicas
    read = create_key(a, "frontend-ws", ["READ"])["secret"]
    async with websockets.connect(a.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {read}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": NOT_REGISTERED}}))
        refused = json.loads(await asyncio.wait_for(ws.recv(), 60))
        await ws.send(json.dumps({"id": "2", "type": "subscribe", "payload": {"query": REGISTERED, "variables": {"name": BUNDLED}}}))
        answered = json.loads(await asyncio.wait_for(ws.recv(), 60))
    errors = refused["payload"] if refused["type"] == "error" else refused["payload"].get("errors")
    assert refused["id"] == "1" and [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"], refused
    assert answered == {"id": "2", "type": "next", "payload": {"data": {"model": {"name": BUNDLED}}}}, answered


def test_graphql_sse_client_receives_the_first_download_event(replicas, node_clients, registered):
    a, b = replicas
    first = node(node_clients, SSE_SCRIPT, {"url": b.url + "/graphql", "key": ADMIN_KEY, "query": PROGRESS, "variables": {"m": BUNDLED}})
    assert "error" not in first, first
    event = first["first"]["data"]["modelDownloadProgress"]
    assert event["model"] == BUNDLED and event["state"] == "READY", first
    assert event["replica"].rsplit(":", 1)[-1] in {str(a.port), str(b.port)}, first

    read = create_key(a, "frontend-sse", ["READ"])["secret"]
    refused = node(node_clients, SSE_SCRIPT, {"url": a.url + "/graphql", "key": read, "query": PROGRESS, "variables": {"m": BUNDLED}})
    assert [e["extensions"]["code"] for e in refused["first"]["errors"]] == ["FORBIDDEN"], refused  # not registered
    no_key = node(node_clients, SSE_SCRIPT, {"url": a.url + "/graphql", "key": None, "query": PROGRESS, "variables": {"m": BUNDLED}})
    assert "401" in no_key.get("error", ""), no_key  # refused before the body is read


async def _first_event(lines: AsyncIterator[str]) -> tuple[str, dict]:
    """The first SSE event of a graphql-sse stream's lines: (its name, its data), pings skipped.
    Read with anext, so the caller's iterator (and with it the stream) stays open."""
    name = None
    while (line := await anext(lines, None)) is not None:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name is not None:
            return name, json.loads(line.removeprefix("data: ") or "null")
    raise AssertionError("the stream ended before any event")


async def test_sse_streams_hold_one_of_the_keys_operation_slots(replicas):
    a, _ = replicas
    request = {"query": PROGRESS, "variables": {"m": BUNDLED}}
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Accept": "text/event-stream"}
    async with httpx.AsyncClient(base_url=a.url, headers=headers, timeout=60) as client:

        async def opened() -> tuple[str, dict]:
            async with client.stream("POST", "/graphql", json=request) as response:
                assert response.headers["content-type"].startswith("text/event-stream"), response.headers
                return await _first_event(response.aiter_lines())

        held = [client.stream("POST", "/graphql", json=request) for _ in range(STREAMS_PER_KEY)]
        responses = [await stream.__aenter__() for stream in held]
        lines = [response.aiter_lines() for response in responses]  # kept: a collected iterator closes its stream
        try:
            for stream_lines in lines:  # each is running: its first event came
                name, data = await _first_event(stream_lines)
                assert name == "next" and data["data"]["modelDownloadProgress"]["model"] == BUNDLED, data
            name, refused = await opened()
            assert name == "next" and [e["extensions"]["code"] for e in refused["errors"]] == ["RATE_LIMITED"], refused
        finally:
            for stream in held:
                await stream.__aexit__(None, None, None)

        async def slot_free() -> bool:  # the server sees the client leave, then gives the slot back
            name, data = await opened()
            return "errors" not in data

        await eventually(slot_free, "an SSE stream's slot given back when its client left", attempts=200, every_s=0.1)


def test_both_replicas_logs_are_clean(replicas):
    """Refusals, misses and streams whose clients left are answers, not server errors."""
    for server in replicas:
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-5000:]
        assert " | ERROR " not in log, [line for line in log.splitlines() if " | ERROR " in line][:5]
