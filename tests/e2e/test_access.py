"""Access control over real HTTP and WebSocket against real servers (machine PostgreSQL and
Redis, Qdrant Edge, the bundled model): CORS, keys, scopes, grants, tenants, rate limits."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.e2e.access_support import (
    ADMIN_KEY,
    ALLOWED_ORIGIN,
    METRICS_TOKEN,
    AccessServer,
    codes,
    create_key,
)
from tests.support.polling import wait_until

pytestmark = [pytest.mark.timeout(300)]

WS_PROTOCOL = "graphql-transport-ws"
ALL_SCOPES_QUERY = "{ me { id name scopes collections filter ratePerSecond revoked } }"


# ---------------------------------------------------------------- CORS


def test_preflight_from_a_listed_origin_is_answered_and_echoes_only_that_origin(access_server: AccessServer):
    response = httpx.options(
        access_server.url + "/graphql",
        headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"},
    )  # fmt: skip
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers


def test_an_unlisted_origin_gets_no_cors_headers(access_server: AccessServer):
    preflight = httpx.options(
        access_server.url + "/graphql",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    simple = access_server.post("{ __typename }", ADMIN_KEY, headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_clients_without_an_origin_are_unaffected(access_server: AccessServer):
    response = access_server.post("{ health { status } }", ADMIN_KEY)
    assert response.status_code == 200 and response.json()["data"]["health"]["status"] in ("ok", "degraded")
    assert "access-control-allow-origin" not in response.headers


async def test_websocket_upgrade_checks_origin_against_the_list(access_server: AccessServer):
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with connect(access_server.ws_url, subprotocols=[WS_PROTOCOL], origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403

    def refusal_lines() -> list[str]:
        return [line for line in access_server.log_path.read_text(errors="replace").splitlines() if "evil.example" in line]

    await wait_until(lambda: bool(refusal_lines()), "the refused origin logged")
    # The log names the setting an operator sets, and what to put in it, not Strawberry's internals.
    [line] = refusal_lines()
    assert "WARNING" in line and "CITADEL_SERVER__CORS_ORIGINS" in line and "allowed_origins" not in line, line
    assert f"CITADEL_SERVER__CORS_ORIGINS={ALLOWED_ORIGIN},http://evil.example" in line, line
    async with connect(access_server.ws_url, subprotocols=[WS_PROTOCOL], origin=ALLOWED_ORIGIN) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {ADMIN_KEY}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"


def test_a_subscription_over_plain_http_is_told_every_transport_it_can_use(access_server: AccessServer):
    subscription = "subscription { modelDownloadProgress { model state } }"
    refused = access_server.post(subscription, ADMIN_KEY)
    assert refused.status_code == 400, refused.text
    message = refused.text
    # Both WebSocket subprotocols and graphql-sse (with what selects it) are named.
    for transport in ("graphql-transport-ws", "graphql-ws", "graphql-sse", "Accept: text/event-stream"):
        assert transport in message, message
    # The advice works: the same POST with that Accept header streams.
    with httpx.stream(
        "POST", access_server.url + "/graphql", json={"query": subscription},
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Accept": "text/event-stream"}, timeout=60,
    ) as stream:  # fmt: skip
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")


# ---------------------------------------------------------------- authentication


@pytest.mark.parametrize("header", [None, "Bearer not-a-key", "Basic abc", "Bearer"])
def test_no_key_or_a_bad_key_is_unauthenticated(access_server: AccessServer, header):
    headers = {"Authorization": header} if header is not None else {}
    response = httpx.post(access_server.url + "/graphql", json={"query": "{ health { status } }"}, headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert codes(response.json()) == ["UNAUTHENTICATED"] and "data" not in response.json()
    over_get = httpx.get(access_server.url + "/graphql", params={"query": "{ health { status } }"}, headers=headers)
    assert codes(over_get.json()) == ["UNAUTHENTICATED"] and over_get.json()["data"] is None  # GET has no body


def test_health_endpoints_need_no_key_and_metrics_needs_admin_or_token(access_server: AccessServer):
    assert httpx.get(access_server.url + "/healthz").status_code == 200
    assert httpx.get(access_server.url + "/readyz").status_code == 200
    assert httpx.get(access_server.url + "/metrics").status_code == 401
    reader = create_key(access_server, "metrics-reader", ["READ"])["secret"]
    assert httpx.get(access_server.url + "/metrics", headers={"Authorization": f"Bearer {reader}"}).status_code == 401
    for secret in (ADMIN_KEY, METRICS_TOKEN):
        response = httpx.get(access_server.url + "/metrics", headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 200 and "citadel_process_rss_bytes" in response.text


async def _ws_close_code(url: str, init: dict | None, subscribe: bool = True) -> int:
    async with connect(url, subprotocols=[WS_PROTOCOL]) as ws:
        if init is not None:
            await ws.send(json.dumps(init))
        if subscribe:
            await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                      "payload": {"query": "subscription { modelDownloadProgress { model state } }"}}))  # fmt: skip
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 20))
                assert message["type"] not in ("next", "connection_ack"), message  # nothing runs
    return closed.value.rcvd.code


async def test_websocket_without_a_valid_key_is_closed_before_any_subscription(access_server: AccessServer):
    revoked = create_key(access_server, "soon-revoked", ["READ"])
    assert "errors" not in access_server.graphql("mutation($id: ID!) { revokeApiKey(id: $id) }", ADMIN_KEY, {"id": revoked["key"]["id"]})
    for init in (
        {"type": "connection_init"},
        {"type": "connection_init", "payload": {"authorization": "Bearer ctd_000000000000_wrong"}},
        {"type": "connection_init", "payload": {"authorization": f"Bearer {revoked['secret']}"}},
    ):
        assert await _ws_close_code(access_server.ws_url, init, subscribe=False) == 4401, init
    # Subscribing without connection_init is refused too.
    assert await _ws_close_code(access_server.ws_url, None) == 4401


async def test_websocket_key_in_connection_init_or_upgrade_header_subscribes(access_server: AccessServer):
    reader = create_key(access_server, "ws-reader", ["READ"])["secret"]
    subscribe = {"id": "1", "type": "subscribe", "payload": {"query": "subscription { modelDownloadProgress { model state } }"}}
    for headers, payload in (({}, {"authorization": f"Bearer {reader}"}), ({"Authorization": f"Bearer {reader}"}, {})):
        async with connect(access_server.ws_url, subprotocols=[WS_PROTOCOL], additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps(subscribe))
            first = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert first["type"] == "next" and first["payload"]["data"]["modelDownloadProgress"]["model"], first


def test_a_revoked_key_is_refused_at_once_on_this_replica(access_server: AccessServer):
    key = create_key(access_server, "to-revoke", ["READ"])
    assert access_server.graphql("{ me { id } }", key["secret"])["data"]["me"]["id"] == key["key"]["id"]
    assert access_server.graphql("mutation($id: ID!) { revokeApiKey(id: $id) }", ADMIN_KEY, {"id": key["key"]["id"]})["data"] == {"revokeApiKey": True}
    assert codes(access_server.graphql("{ me { id } }", key["secret"])) == ["UNAUTHENTICATED"]
    listed = {k["id"]: k for k in access_server.graphql("{ apiKeys { id revoked } }", ADMIN_KEY)["data"]["apiKeys"]}
    assert listed[key["key"]["id"]]["revoked"] is True


def test_secrets_appear_neither_in_api_keys_nor_in_the_log(access_server: AccessServer):
    key = create_key(access_server, "secretive", ["WRITE"], collections=["c1"], filter={"tenant": {"eq": "t"}}, rate=50.0)
    secret = key["secret"]
    assert secret.startswith(key["key"]["prefix"]) and len(secret) > 40
    me = access_server.graphql(ALL_SCOPES_QUERY, secret)["data"]["me"]
    assert me == {"id": key["key"]["id"], "name": "secretive", "scopes": ["WRITE"], "collections": ["c1"],
                  "filter": {"tenant": {"eq": "t"}}, "ratePerSecond": 50.0, "revoked": False}  # fmt: skip
    listing = access_server.post("{ apiKeys { id name prefix scopes collections filter ratePerSecond createdAt lastUsedAt revoked } }", ADMIN_KEY).text
    assert secret not in listing and secret[len(key["key"]["prefix"]):] not in listing
    log = access_server.log_path.read_text(errors="replace")
    assert secret not in log and ADMIN_KEY not in log
    assert f"created key {key['key']['id']} (secretive)" in log  # the audit line names the key, not its secret


def test_admin_actions_leave_an_audit_line_with_who_and_what(access_server: AccessServer):
    name = f"audited-{uuid.uuid4().hex[:6]}"
    body = access_server.graphql("mutation($n: String!) { createCollection(name: $n) { name } }", ADMIN_KEY, {"n": name})
    assert "errors" not in body, body
    assert "errors" not in access_server.graphql("mutation($n: String!) { deleteCollection(name: $n) }", ADMIN_KEY, {"n": name})
    log = access_server.log_path.read_text(errors="replace")
    assert f"audit: env-admin (CITADEL_AUTH__ADMIN_KEY) created collection {name}" in log
    assert f"audit: env-admin (CITADEL_AUTH__ADMIN_KEY) deleted collection {name}" in log


def test_bad_key_input_is_bad_input(access_server: AccessServer):
    mutation = "mutation($i: ApiKeyInput!) { createApiKey(input: $i) { secret } }"
    for bad in ({"name": "", "scopes": ["READ"]}, {"name": "x", "scopes": []},
                {"name": "x", "scopes": ["READ"], "filter": {"t": {"gtx": 1}}},
                {"name": "x", "scopes": ["READ"], "ratePerSecond": -1},
                {"name": "x", "scopes": ["READ"], "collections": ["not a name!"]}):  # fmt: skip
        assert codes(access_server.graphql(mutation, ADMIN_KEY, {"i": bad})) == ["BAD_INPUT"], bad


# ---------------------------------------------------------------- introspection


def test_introspection_is_off_for_non_admin_keys_only(access_server: AccessServer):
    reader = create_key(access_server, "introspector", ["READ"])["secret"]
    query = "{ __schema { queryType { name } } }"
    assert codes(access_server.graphql(query, reader)) == ["FORBIDDEN"]
    assert codes(access_server.graphql('{ __type(name: "Query") { name } }', reader)) == ["FORBIDDEN"]
    assert access_server.graphql("{ __typename }", reader)["data"] == {"__typename": "Query"}
    assert access_server.graphql(query, ADMIN_KEY)["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_a_key_revoked_while_its_websocket_is_open_ends_it(access_server: AccessServer):
    key = create_key(access_server, "ws-revoked-later", ["READ"])
    query = {"query": "subscription { modelDownloadProgress { model } }"}
    async with connect(access_server.ws_url, subprotocols=[WS_PROTOCOL]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {key['secret']}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": query}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 20))["type"] == "next"
        revoked = access_server.graphql("mutation($id: ID!) { revokeApiKey(id: $id) }", ADMIN_KEY, {"id": key["key"]["id"]})
        assert revoked["data"] == {"revokeApiKey": True}
        errors = []
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if message["type"] == "error":
                    errors.append((message["id"], codes({"errors": message["payload"]})))
        assert errors == [("1", ["UNAUTHENTICATED"])] and closed.value.rcvd.code == 4401
    # tests/e2e/test_access_edges.py: the same on the legacy protocol and on another replica.
