"""The edges of access control over real HTTP and WebSocket, on two replicas of one cluster (machine
PostgreSQL and Redis, Qdrant Edge, the bundled model): a revoked key's running subscriptions end on
every replica, the legacy graphql-ws protocol runs every operation under the same rules, health
shows paths and addresses to ADMIN keys only, and a body is read only from a valid key and only
up to the body limit."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest
from gql import Client, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.settings import LimitSettings
from tests.e2e.access_support import ADMIN_KEY, AccessServer, codes, create_key, serving
from tests.support.polling import wait_until

pytestmark = [pytest.mark.timeout(300)]

# The bound: a revoked key's subscription ends within this, on every replica.
REVOCATION_BOUND_S = 5.0
START = {"graphql-transport-ws": "subscribe", "graphql-ws": "start"}
PROGRESS = {"query": "subscription { modelDownloadProgress { model } }"}
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) }"


BROKEN = "local/broken"  # a catalog model whose files are missing: its error names a path


@pytest.fixture(scope="module")
def other_replica(tmp_path_factory, access_database):
    """A second replica of the access server's cluster (same database, so the same Redis namespace),
    with BROKEN in its catalog."""
    data_dir = tmp_path_factory.mktemp("citadel-access-edges")
    catalog = {BROKEN: {"backend": "fastembed", "path": str(data_dir / "nowhere" / "model"), "dimensions": 384}}
    for server in serving(str(data_dir), access_database, "e2e-access-edges-replica.log", wait_ready=False,
                          CITADEL_LOAD_MODELS_AT_STARTUP="false", CITADEL_MODELS=json.dumps(catalog)):  # fmt: skip
        server.data_dir = str(data_dir)  # type: ignore[attr-defined]
        yield server


def code_of(message: dict[str, Any]) -> str | None:
    payload = message["payload"]
    errors = payload if isinstance(payload, list) else payload.get("errors", [payload])
    return errors[0].get("extensions", {}).get("code")


async def next_message(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if message["type"] != "ka":  # legacy keep-alive
            return message


async def subscribed(server: AccessServer, protocol: str, secret: str) -> ClientConnection:
    """A socket whose subscription runs: its first event has arrived."""
    ws = await connect(server.ws_url, subprotocols=[protocol])
    await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {secret}"}}))
    assert (await next_message(ws))["type"] == "connection_ack"
    await ws.send(json.dumps({"id": "1", "type": START[protocol], "payload": PROGRESS}))
    first = await next_message(ws)
    assert first["type"] in ("next", "data") and first["payload"]["data"]["modelDownloadProgress"], first
    return ws


async def until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    """What the server sends until it closes the socket, and its close code."""
    received = []
    try:
        async for raw in ws:
            received.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return received, ws.close_code


# ---------------------------------------------------------------- revocation


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_revoking_a_key_ends_its_running_subscriptions_on_every_replica(access_server, other_replica, protocol):
    key = create_key(access_server, f"subscribed-when-revoked-{protocol}", ["READ"])
    bystander = create_key(access_server, f"bystander-{protocol}", ["READ"])["secret"]
    logs_before = [len(server.log_path.read_bytes()) for server in (access_server, other_replica)]
    sockets = [await subscribed(server, protocol, key["secret"]) for server in (access_server, other_replica)]
    unrelated = await subscribed(other_replica, protocol, bystander)
    try:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            revoked = await client.post(access_server.url + "/graphql", json={"query": REVOKE, "variables": {"id": key["key"]["id"]}})
        assert revoked.json()["data"] == {"revokeApiKey": True}
        # The other replica caches keys for 120 s and re-checks them as seldom: only the
        # announcement through Redis can end its socket within the bound.
        async with asyncio.timeout(REVOCATION_BOUND_S):
            outcomes = await asyncio.gather(*(until_closed(ws) for ws in sockets))
        for messages, close_code in outcomes:
            errors = [m for m in messages if m["type"] == "error"]
            assert [(m["id"], code_of(m)) for m in errors] == [("1", "UNAUTHENTICATED")], messages
            assert close_code == 4401
        # Another key's socket on the same replica runs on.
        await unrelated.send(json.dumps({"id": "2", "type": START[protocol], "payload": PROGRESS}))
        assert (await next_message(unrelated))["type"] in ("next", "data")
    finally:
        for ws in (*sockets, unrelated):
            await ws.close()
    for server, before in zip((access_server, other_replica), logs_before):
        log = server.log_path.read_bytes()[before:].decode(errors="replace")
        assert "Traceback" not in log and " | ERROR " not in log, log[-5000:]


# ---------------------------------------------------------------- legacy graphql-ws


def legacy_client(server: AccessServer, secret: str) -> Client:
    """gql's WebsocketsTransport speaking only the legacy (Apollo) protocol."""
    transport = WebsocketsTransport(
        url=server.ws_url,
        init_payload={"authorization": f"Bearer {secret}"},
        subprotocols=[WebsocketsTransport.APOLLO_SUBPROTOCOL],
    )
    return Client(transport=transport)


async def refusal(session: Any, document: str) -> list[str]:
    with pytest.raises(TransportQueryError) as refused:
        await session.execute(gql(document))
    return [e["extensions"]["code"] for e in refused.value.errors or []]


async def test_the_legacy_protocol_runs_queries_and_mutations_under_the_same_rules(access_server):
    reader = create_key(access_server, "legacy-reader", ["READ"])
    limited = create_key(access_server, "legacy-limited", ["READ"], rate=0.2)  # one token, then one per 5 s
    log_before = len(access_server.log_path.read_bytes())
    async with legacy_client(access_server, reader["secret"]) as session:
        assert session.transport.subprotocol == "graphql-ws"
        assert await session.execute(gql("{ me { id scopes } }")) == {"me": {"id": reader["key"]["id"], "scopes": ["READ"]}}
        assert await refusal(session, 'mutation { createCollection(name: "legacy-made") { name } }') == ["FORBIDDEN"]
        assert await refusal(session, "{ nope }") == ["GRAPHQL_VALIDATION_FAILED"]
        async for event in session.subscribe(gql("subscription { modelDownloadProgress { model } }")):
            assert event["modelDownloadProgress"]["model"]
            break
    async with legacy_client(access_server, ADMIN_KEY) as session:
        made = await session.execute(gql('mutation { createCollection(name: "legacy-made") { name } }'))
        assert made == {"createCollection": {"name": "legacy-made"}}
    async with legacy_client(access_server, limited["secret"]) as session:
        assert await session.execute(gql("{ me { id } }")) == {"me": {"id": limited["key"]["id"]}}
        assert await refusal(session, "{ me { id } }") == ["RATE_LIMITED"]
    log = access_server.log_path.read_bytes()[log_before:].decode(errors="replace")
    assert "Traceback" not in log and " | ERROR " not in log, log[-5000:]


# ---------------------------------------------------------------- health


@pytest.fixture(scope="module")
async def broken_model(other_replica) -> str:
    """BROKEN has FAILED on the other replica; its last error, as an ADMIN key reads it."""
    started = other_replica.graphql(f'mutation {{ downloadModel(name: "{BROKEN}") {{ state }} }}', ADMIN_KEY)
    assert "errors" not in started, started
    state = f'{{ model(name: "{BROKEN}") {{ state lastError }} }}'

    def failed() -> bool:
        return other_replica.graphql(state, ADMIN_KEY)["data"]["model"]["state"] == "FAILED"

    await wait_until(failed, f"{BROKEN} FAILED", attempts=600, every_s=0.1)
    error = other_replica.graphql(state, ADMIN_KEY)["data"]["model"]["lastError"]
    assert other_replica.data_dir in error, error
    return error


def readyz(server: AccessServer, key: str | None) -> httpx.Response:
    return httpx.get(server.url + "/readyz", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)


HEALTH = "{ health { dependencies { name ok detail } models { name lastError replicas { lastError } } } }"


def test_health_shows_paths_and_addresses_to_admin_keys_only(access_server, other_replica, broken_model):
    reader = create_key(access_server, "health-reader", ["READ"])["secret"]
    database = other_replica.env["CITADEL_DATABASE_URL"]
    for key in (None, "not-a-key", reader):
        for response in (readyz(other_replica, key), httpx.get(other_replica.url + "/healthz", timeout=30)):
            assert other_replica.data_dir not in response.text and "://" not in response.text, response.text
        body = readyz(other_replica, key).json()
        assert [d["detail"] for d in body["dependencies"]] == [None, None, None], body
        broken = next(m for m in body["models"] if m["name"] == BROKEN)
        assert broken["state"] == "FAILED" and "<path>" in broken["lastError"], broken  # the error, without where
    shown = other_replica.graphql(HEALTH, reader)["data"]["health"]
    assert other_replica.data_dir not in json.dumps(shown) and all(d["detail"] is None for d in shown["dependencies"])
    assert "<path>" in next(m for m in shown["models"] if m["name"] == BROKEN)["lastError"]
    listed = other_replica.graphql("{ models { name lastError } }", reader)["data"]["models"]
    assert next(m for m in listed if m["name"] == BROKEN)["lastError"] != broken_model
    # ADMIN sees it all: the path in the error, the database's (masked) address.
    full = readyz(other_replica, ADMIN_KEY).json()
    assert next(m for m in full["models"] if m["name"] == BROKEN)["lastError"] == broken_model
    assert next(d for d in full["dependencies"] if d["name"] == "postgres")["detail"] == database
    admin_health = other_replica.graphql(HEALTH, ADMIN_KEY)["data"]["health"]
    assert next(m for m in admin_health["models"] if m["name"] == BROKEN)["lastError"] == broken_model


async def test_download_events_show_paths_to_admin_keys_only(access_server, other_replica, broken_model):
    reader = create_key(access_server, "progress-reader", ["READ"])["secret"]
    query = {"query": f'subscription {{ modelDownloadProgress(model: "{BROKEN}") {{ state message }} }}'}
    messages = {}
    for name, secret in (("reader", reader), ("admin", ADMIN_KEY)):
        async with connect(other_replica.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {secret}"}}))
            assert (await next_message(ws))["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": query}))
            event = (await next_message(ws))["payload"]["data"]["modelDownloadProgress"]
            assert event["state"] == "FAILED", event
            messages[name] = event["message"]
    assert messages["admin"] == broken_model
    assert other_replica.data_dir not in messages["reader"] and "<path>" in messages["reader"], messages


# ---------------------------------------------------------------- request bodies

BODY_LIMIT = 32 * 1024 * 1024  # the default, which the access server keeps
BODY_PATHS = ["/graphql", "/v1/embeddings"]


def exchange(server: AccessServer, path: str, headers: dict[str, str], body: Iterable[bytes] = ()) -> tuple[int, dict[str, str], Any]:
    """A POST over a raw socket: the head, then as much of the body as `body` yields (no more: a
    request cut short cannot be answered after its whole body was read); status, headers, JSON."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for piece in body:
            sock.sendall(piece)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())


def chunks_past(limit: int, size: int = 1 << 20) -> Iterator[bytes]:
    """A chunked body of limit + 1 bytes without its closing chunk: the stream never ends."""
    left = limit + 1
    while left:
        n = min(size, left)
        yield b"%x\r\n" % n + b"x" * n + b"\r\n"
        left -= n


def error_of(body: dict[str, Any]) -> tuple[str, str]:
    """(code, message) of a GraphQL-shaped or an OpenAI-shaped error body."""
    if "error" in body:
        return body["error"]["code"], body["error"]["message"]
    return body["errors"][0]["extensions"]["code"], body["errors"][0]["message"]


@pytest.mark.parametrize("path", BODY_PATHS)
def test_a_body_over_the_32_mib_limit_is_refused_with_413_without_being_read(access_server, path):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # Declared: answered with nothing of the body sent.
    status, headers, body = exchange(access_server, path, {**admin, "Content-Length": str(50_000_000)})
    code, message = error_of(body)
    assert status == 413 and headers["connection"] == "close", body
    assert code in ("BAD_INPUT", "request_too_large") and f"{BODY_LIMIT} bytes" in message, body
    # Streamed (chunked, no length): answered once it passed the limit, its end never sent.
    status, headers, body = exchange(access_server, path, {**admin, "Transfer-Encoding": "chunked"}, chunks_past(BODY_LIMIT))
    assert status == 413 and f"{BODY_LIMIT} bytes" in error_of(body)[1], body


@pytest.mark.parametrize("path", BODY_PATHS)
@pytest.mark.parametrize("key", [None, "Bearer ctd_000000000000_not-a-key"], ids=["no-key", "bad-key"])
def test_without_a_valid_key_the_body_is_never_read(access_server, path, key):
    auth = {"Authorization": key} if key else {}
    for framing in ({"Content-Length": str(20_000_000)}, {"Transfer-Encoding": "chunked"}):
        # No byte of the body is sent: a server that read it first would never answer.
        status, headers, body = exchange(access_server, path, {**auth, **framing})
        assert status == 401 and headers["connection"] == "close", body
        assert error_of(body)[0] in ("UNAUTHENTICATED", "unauthenticated"), body


def test_the_largest_ingest_the_limits_allow_fits_the_body_limit(access_server):
    limits = LimitSettings()  # the access server keeps the defaults
    ingest = "mutation($c: String!, $d: [DocumentInput!]!) { ingest(collection: $c, documents: $d) { inserted } }"
    text = "\U0001F600" * limits.max_text_chars  # 4 bytes a character in UTF-8: the worst case
    metadata = {"pad": "x" * (limits.max_metadata_bytes - 16)}
    docs = [{"id": f"d{i}", "text": text, "metadata": metadata} for i in range(limits.max_documents_per_ingest)]
    body = json.dumps({"query": ingest, "variables": {"c": "no-such-collection", "d": docs}}, ensure_ascii=False).encode()
    assert len(body) <= BODY_LIMIT
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    read = httpx.post(access_server.url + "/graphql", content=body, headers=admin, timeout=120)
    assert read.status_code == 200 and codes(read.json()) == ["NOT_FOUND"], read.text[:500]  # only the collection is missing
    many = [{"text": "t"}] * (limits.max_documents_per_ingest + 1)
    refused = access_server.graphql(ingest, ADMIN_KEY, {"c": "no-such-collection", "d": many})
    assert codes(refused) == ["BAD_INPUT"] and str(limits.max_documents_per_ingest) in refused["errors"][0]["message"], refused
