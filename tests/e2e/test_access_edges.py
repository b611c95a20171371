"""The edges of access control over real HTTP and WebSocket, on two replicas of one cluster (machine
PostgreSQL and Redis, Qdrant Edge, the bundled model): a revoked key's running subscriptions end on
every replica, and the legacy graphql-ws protocol runs every operation under the same rules."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from gql import Client, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.access_support import ADMIN_KEY, AccessServer, create_key, serving

pytestmark = [pytest.mark.timeout(300)]

# The bound: a revoked key's subscription ends within this, on every replica.
REVOCATION_BOUND_S = 5.0
START = {"graphql-transport-ws": "subscribe", "graphql-ws": "start"}
PROGRESS = {"query": "subscription { modelDownloadProgress { model } }"}
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) }"


@pytest.fixture(scope="module")
def other_replica(tmp_path_factory, access_database):
    """A second replica of the access server's cluster (same database, so the same Redis namespace)."""
    data_dir = tmp_path_factory.mktemp("citadel-access-edges")
    yield from serving(str(data_dir), access_database, "e2e-access-edges-replica.log", wait_ready=False,
                       CITADEL_LOAD_MODELS_AT_STARTUP="false")  # fmt: skip


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
