"""Hostile input over real HTTP and WebSocket: every request gets a coded answer, never a 5xx,
a traceback in the server log or a hang, and nothing stored changes."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets

from tests.e2e.conftest import bundled_server
from tests.support.npm import npm_install
from tests.support.databases import temporary_database
from tests.support.server import LiveServer

BODY_LIMIT = 2_000_000
COLLECTION = "hostile"
DOCS = [{"id": f"doc-{i}", "text": f"hostile input test document number {i}", "metadata": {"n": i}} for i in range(3)]
STORED = "query($c: String!) { documents(collection: $c) { items { id text metadata contentHash } } }"


@pytest.fixture(scope="module")
async def hostile_database():
    async with temporary_database("citadel_hostile") as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory, hostile_database):
    live = bundled_server(
        tmp_path_factory.mktemp("citadel-hostile"),
        hostile_database,
        "hostile-input-server.log",
        CITADEL_SERVER__MAX_BODY_BYTES=str(BODY_LIMIT),
        CITADEL_SERVER__WS_INIT_TIMEOUT_SECONDS="1",
        CITADEL_SERVER__MAX_SUBSCRIPTIONS_PER_CONNECTION="2",
        CITADEL_SERVER__MAX_SUBSCRIPTIONS_PER_KEY="3",
    ).start()
    created = live.graphql("mutation($c: String!) { createCollection(name: $c) { name } }", {"c": COLLECTION})
    assert "errors" not in created, created
    ingested = live.graphql(
        "mutation($c: String!, $d: [DocumentInput!]!) { ingest(collection: $c, documents: $d) { inserted } }",
        {"c": COLLECTION, "d": DOCS},
    )
    assert ingested["data"]["ingest"]["inserted"] == len(DOCS), ingested
    live.stored_before = live.graphql(STORED, {"c": COLLECTION})["data"]  # type: ignore[attr-defined]
    try:
        yield live
    finally:
        assert live.stop() == 0


def post_raw(server: LiveServer, body: bytes | str, **headers: str) -> httpx.Response:
    headers = {"content-type": "application/json", **headers}
    return server.http.post(server.url + "/graphql", content=body, headers=headers, timeout=60)


def codes(body: dict) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in body.get("errors", [])]


NUL, SURROGATE = "a\x00b", "a\ud800b"

# (operation, variables, argument the error must name)
ARGUMENT_CASES = [
    ("query($v: String!) { collection(name: $v) { name } }", "name"),
    ("query($v: String!) { search(collection: $v, query: \"x\") { tookMs } }", "collection"),
    ("query($v: String!) { document(collection: $v, id: \"doc-0\") { id } }", "collection"),
    ("query($v: ID!) { document(collection: \"hostile\", id: $v) { id } }", "id"),
    ("query($v: String!) { documents(collection: \"hostile\", after: $v) { nextCursor } }", "after"),
    ("query($v: String!) { search(collection: \"hostile\", query: $v) { tookMs } }", "query"),
    ("query($v: String!) { model(name: $v) { name } }", "name"),
    ("mutation($v: String!) { deleteCollection(name: $v) }", "name"),
    ("mutation($v: String!) { ingest(collection: $v, documents: [{text: \"t\"}]) { inserted } }", "collection"),
    ("mutation($v: ID!) { deleteDocuments(collection: \"hostile\", ids: [\"doc-0\", $v]) }", "ids"),
    ("mutation($v: String!) { deleteDocuments(collection: $v, ids: [\"doc-0\"]) }", "collection"),
    ("mutation($v: String!) { createCollection(name: \"ok\", model: $v) { name } }", "model"),
    ("mutation($v: String!) { downloadModel(name: $v) { name } }", "name"),
]


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
@pytest.mark.parametrize("operation,argument", ARGUMENT_CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(ARGUMENT_CASES)])
def test_unstorable_strings_are_bad_input_naming_the_argument(server, operation, argument, bad):
    # json.dumps escapes a lone surrogate as \ud800, as a hostile client would send it.
    response = post_raw(server, json.dumps({"query": operation, "variables": {"v": bad}}))
    assert response.status_code == 200, response.text
    body = response.json()
    assert codes(body) == ["BAD_INPUT"], body
    assert body["errors"][0]["extensions"]["argument"] == argument, body


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
def test_unstorable_strings_in_literals_filters_and_embed_texts(server, bad):
    escaped = json.dumps(bad)  # a GraphQL string literal with \u escapes
    # The GraphQL lexer itself refuses a lone surrogate escape in a literal.
    literal = "BAD_INPUT" if bad == NUL else "GRAPHQL_PARSE_FAILED"
    literal_query = f"{{ collection(name: {escaped}) {{ name }} }}"
    response = post_raw(server, json.dumps({"query": literal_query}))
    assert response.status_code == 200 and codes(response.json()) == [literal], response.text
    cases = [
        ("query($f: JSON) { search(collection: \"hostile\", query: \"x\", filter: $f) { tookMs } }",
         {"f": {"n": {"eq": bad}}}),
        ("query($f: JSON) { search(collection: \"hostile\", query: \"x\", filter: $f) { tookMs } }",
         {"f": {bad: {"eq": 1}}}),
        ("query($t: [String!]!) { embed(texts: $t) { dimensions } }", {"t": ["fine", bad]}),
    ]
    for query, variables in cases:
        response = post_raw(server, json.dumps({"query": query, "variables": variables}))
        assert response.status_code == 200, response.text
        assert codes(response.json()) == ["BAD_INPUT"], (query, response.text)


def test_too_long_identifiers_are_bad_input(server):
    for query, variables in [
        ("query($v: ID!) { document(collection: \"hostile\", id: $v) { id } }", {"v": "x" * 300}),
        ("query($v: String!) { documents(collection: \"hostile\", after: $v) { nextCursor } }", {"v": "c" * 5000}),
    ]:
        body = server.graphql(query, variables)
        assert codes(body) == ["BAD_INPUT"], body


def test_a_bad_document_fails_alone_in_an_ingest(server):
    docs = [{"id": "bad-nul", "text": "nul\x00"}, {"id": "bad-key", "text": "t", "metadata": {"k\ud800": 1}}]
    ingest = "mutation($d: [DocumentInput!]!) { ingest(collection: \"scratch\", documents: $d) { failed } }"
    body = post_raw(server, json.dumps({"query": ingest, "variables": {"d": docs}})).json()
    assert codes(body) == ["NOT_FOUND"], body  # the collection is checked first; nothing written
    created = server.graphql('mutation { createCollection(name: "scratch") { name } }')
    assert "errors" not in created, created
    docs.append({"id": "good", "text": "a good document"})
    ingest = (
        "mutation($d: [DocumentInput!]!) { ingest(collection: \"scratch\", documents: $d) "
        "{ ids inserted failed errors { index code message } } }"
    )
    body = post_raw(server, json.dumps({"query": ingest, "variables": {"d": docs}})).json()
    result = body["data"]["ingest"]
    assert result["ids"] == ["good"] and result["inserted"] == 1 and result["failed"] == 2, result
    assert [e["code"] for e in result["errors"]] == ["BAD_INPUT", "BAD_INPUT"], result


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"42", "JSON object"),
        (b'"query"', "JSON object"),
        (b"[1, 2]", "JSON object"),
        (b"null", "JSON object"),
        (b'{"query": "{ health { status } }"', "not valid JSON"),
        (b'{"query": "\xff\xfe"}', "UTF-8"),
        (b'{"query": "{ health { status } }", "variables": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        (b'{"query": "{ health { status } }", "variables": {"a": ' + b"[" * 60 + b"]" * 60 + b"}}", "nested"),
        (b'{"query": 42}', "query"),
        (b'{"query": "{ health { status } }", "variables": 7}', "variables"),
    ],
    ids=["number", "string", "array", "null", "truncated", "not-utf8", "deep-100k", "deep-60", "query-number", "variables-number"],
)
def test_bodies_that_are_not_a_graphql_request_get_400_shaped_as_graphql(server, body, reason):
    response = post_raw(server, body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert codes(payload) == ["BAD_INPUT"] and reason in payload["errors"][0]["message"], payload


def test_a_body_over_the_limit_is_refused_with_413(server):
    big = json.dumps({"query": "{ health { status } }", "variables": {"pad": "x" * BODY_LIMIT}})
    declared = post_raw(server, big)
    assert declared.status_code == 413 and codes(declared.json()) == ["BAD_INPUT"], declared.text

    def chunks():  # no Content-Length: the stream is cut once it passes the limit
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024].encode()

    streamed = httpx.post(server.url + "/graphql", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert streamed.status_code == 413, streamed.text
    assert server.graphql("{ health { status } }")["data"]["health"]["status"] == "ok"


def test_a_body_shorter_than_its_content_length_is_dropped_quietly(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
            b'{"query": "{ heal'
        )
        sock.shutdown(socket.SHUT_WR)  # the client goes away with its body unfinished
        sock.settimeout(10)
        try:
            answer = sock.recv(4096)
        except (ConnectionResetError, socket.timeout):
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 5"), answer
    assert server.graphql("{ health { status } }")["data"]["health"]["status"] == "ok"


def test_subscriptions_run_only_over_websocket(server):
    subscription = "subscription { modelDownloadProgress { model } }"
    posted = post_raw(server, json.dumps({"query": subscription}))
    got = httpx.get(server.url + "/graphql", params={"query": subscription}, headers={"accept": "application/json"})
    for response in (posted, got):
        assert response.status_code == 400, response.text
        body = response.json()
        assert codes(body) == ["BAD_INPUT"] and "WebSocket" in body["errors"][0]["message"], body


def test_several_operations_need_an_operation_name(server):
    document = "query A { health { status } } query B { collections { name } }"
    refused = post_raw(server, json.dumps({"query": document}))
    assert refused.status_code == 200 and codes(refused.json()) == ["BAD_INPUT"], refused.text
    chosen = post_raw(server, json.dumps({"query": document, "operationName": "B"})).json()
    assert "errors" not in chosen and "collections" in chosen["data"], chosen


def test_graphql_response_media_type_when_accepted(server):
    accept = {"accept": "application/graphql-response+json, application/json;q=0.9"}
    ok = post_raw(server, json.dumps({"query": "{ health { status } }"}), **accept)
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("application/graphql-response+json")
    assert ok.json()["data"]["health"]["status"] == "ok"
    for document, code in [("{ health { ", "GRAPHQL_PARSE_FAILED"), ("{ nope }", "GRAPHQL_VALIDATION_FAILED")]:
        failed = post_raw(server, json.dumps({"query": document}), **accept)
        assert failed.status_code == 400, failed.text
        assert failed.headers["content-type"].startswith("application/graphql-response+json")
        body = failed.json()
        assert "data" not in body and codes(body) == [code], body
        legacy = post_raw(server, json.dumps({"query": document}))  # application/json: 200, as before
        assert legacy.status_code == 200 and codes(legacy.json()) == [code]
    field_error = post_raw(server, json.dumps({"query": '{ collection(name: "a\\u0000") { name } }'}), **accept)
    assert field_error.status_code == 400 and codes(field_error.json()) == ["BAD_INPUT"]


# Five aliases of 250 texts each, every one within the per-call limit, through a named fragment:
# 1,250 texts in all, over the per-request total (the larger of the texts and documents limits).
FIVE_EMBEDS = "query($t: [String!]!) { ...F } fragment F on Query { " + " ".join(
    f"a{i}: embed(texts: $t) {{ dimensions }}" for i in range(5)
) + " }"
FIVE_INGESTS = "mutation($d: [DocumentInput!]!) { ...M } fragment M on Mutation { " + " ".join(
    f"a{i}: ingest(collection: \"{COLLECTION}\", documents: $d) {{ inserted }}" for i in range(5)
) + " }"
FRAGMENT_CASES = [
    (FIVE_EMBEDS, {"t": [f"text number {i}" for i in range(250)]}, 1250),
    (FIVE_INGESTS, {"d": [{"id": f"through-fragment-{i}", "text": f"fragment document {i}"} for i in range(201)]}, 1005),
]


@pytest.mark.parametrize("operation,variables,total", FRAGMENT_CASES, ids=["embed", "ingest"])
async def test_work_through_named_fragments_counts_against_the_total_over_http_and_websocket(
    server, operation, variables, total
):
    posted = post_raw(server, json.dumps({"query": operation, "variables": variables})).json()
    assert codes(posted) == ["BAD_INPUT"] and posted["data"] is None, posted  # no alias ran
    assert f"{total} texts in all" in posted["errors"][0]["message"], posted
    async with websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"], max_size=None) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": operation, "variables": variables}}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert answer["type"] == "next" and answer["payload"]["data"] is None, answer
    assert codes(answer["payload"]) == ["BAD_INPUT"], answer
    assert server.graphql(STORED, {"c": COLLECTION})["data"] == server.stored_before  # nothing ingested


async def closed_code(socket_: websockets.ClientConnection, timeout: float = 15) -> int:
    try:
        while True:
            await asyncio.wait_for(socket_.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else -1


@pytest.mark.parametrize("protocol,code", [("graphql-transport-ws", 4408), ("graphql-ws", 1002)])
async def test_a_websocket_without_connection_init_is_closed(server, protocol, code):
    async with websockets.connect(server.ws_url, subprotocols=[protocol]) as ws:
        assert await closed_code(ws) == code


@pytest.mark.parametrize(
    "protocol,messages",
    [
        ("graphql-transport-ws", [{"type": "connection_init"}, {"id": "1", "type": "subscribe", "payload": {"query": 42}}]),
        ("graphql-transport-ws", [{"type": "connection_init"}, {"id": "1", "type": "subscribe", "payload": "nope"}]),
        ("graphql-transport-ws", [{"type": "connection_init"}, [1, 2, 3]]),
        ("graphql-transport-ws", [{"type": "connection_init"}, "not json"]),
        ("graphql-ws", [{"type": "connection_init"}, "garbage {"]),
        ("graphql-ws", [{"type": "connection_init"}, 42]),
        ("graphql-ws", [{"type": "connection_init"}, {"type": "bogus"}]),
        ("graphql-ws", [{"type": "connection_init"}, {"id": "1", "type": "start", "payload": {"query": 42}}]),
    ],
    ids=["tws-query-42", "tws-payload-str", "tws-array", "tws-not-json", "ws-garbage", "ws-number", "ws-type", "ws-query-42"],
)
async def test_malformed_websocket_messages_close_with_4400(server, protocol, messages):
    async with websockets.connect(server.ws_url, subprotocols=[protocol]) as ws:
        for message in messages:
            await ws.send(message if isinstance(message, str) else json.dumps(message))
        assert await closed_code(ws) == 4400


async def test_subscriptions_per_connection_are_capped(server):
    async with websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        query = {"query": "subscription { modelDownloadProgress { model } }"}
        for op in ("1", "2", "3"):
            await ws.send(json.dumps({"id": op, "type": "subscribe", "payload": query}))
        refused = None
        while refused is None:
            message = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if message["type"] == "error":
                refused = message
        assert refused["id"] == "3" and "limit" in refused["payload"][0]["message"].lower(), refused


PROGRESS = {"query": "subscription { modelDownloadProgress { model } }"}


async def opened(ws: websockets.ClientConnection, protocol: str, op: str, quiet: float = 1.0) -> dict | None:
    """Start one subscription; None when it runs (nothing refused it within `quiet` s), else the error."""
    kind = "subscribe" if protocol == "graphql-transport-ws" else "start"
    await ws.send(json.dumps({"id": op, "type": kind, "payload": PROGRESS}))
    try:
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), quiet))
            if message.get("type") == "error" and message.get("id") == op:
                return message
    except TimeoutError:
        return None


async def connected(server: LiveServer, protocol: str, secret: str) -> websockets.ClientConnection:
    ws = await websockets.connect(server.ws_url, subprotocols=[protocol])
    await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {secret}"}}))
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    return ws


def error_code(error: dict) -> str | None:
    payload = error["payload"]
    first = payload[0] if isinstance(payload, list) else payload
    return first.get("extensions", {}).get("code")


async def test_subscriptions_per_key_are_capped_across_connections(server):
    # A key of its own, so the other tests' sockets (one client address) do not share its slots.
    created = server.graphql(
        "mutation { createApiKey(input: {name: \"subs\", scopes: [READ]}) { secret } }"
    )
    secret = created["data"]["createApiKey"]["secret"]
    first = await connected(server, "graphql-transport-ws", secret)
    second = await connected(server, "graphql-transport-ws", secret)
    legacy = await connected(server, "graphql-ws", secret)
    try:
        # The per-connection cap is 2 and the per-key cap 3: a second socket does not get past it.
        assert await opened(first, "graphql-transport-ws", "a1") is None
        assert await opened(first, "graphql-transport-ws", "a2") is None
        assert await opened(second, "graphql-transport-ws", "b1") is None
        refused = await opened(second, "graphql-transport-ws", "b2")
        assert refused is not None and error_code(refused) == "RATE_LIMITED", refused
        refused = await opened(legacy, "graphql-ws", "c1")
        assert refused is not None and error_code(refused) == "RATE_LIMITED", refused
        # The socket still works for the key's running operations, and a closed socket gives its
        # slots back: the key may start operations again.
        await first.close()
        accepted = None
        for attempt in range(20):
            accepted = await opened(legacy, "graphql-ws", f"c-retry-{attempt}", quiet=0.5)
            if accepted is None:
                break
        assert accepted is None, accepted
        assert await opened(legacy, "graphql-ws", "c2") is None  # b1 and two on legacy: 3
        refused = await opened(second, "graphql-transport-ws", "b3")  # second runs only b1
        assert refused is not None and error_code(refused) == "RATE_LIMITED", refused
    finally:
        for ws in (first, second, legacy):
            await ws.close()


# -- GraphQL over HTTP: graphql-http's own audit (npm), run against the live server ----------------

AUDIT_SCRIPT = Path(__file__).resolve().parents[1] / "support" / "graphql_http_audit.mjs"


@pytest.fixture(scope="module")
def graphql_http_audit(tmp_path_factory) -> Path:
    """graphql-http installed from npm into a scratch folder, next to a copy of the audit script."""
    folder = npm_install(tmp_path_factory.mktemp("graphql-http"), "graphql-http@1", "graphql@16", what="the graphql-http audit")
    script = folder / AUDIT_SCRIPT.name
    shutil.copy(AUDIT_SCRIPT, script)
    return script


def test_graphql_http_audit_passes_every_must_and_should(server, graphql_http_audit):
    done = subprocess.run(
        ["node", str(graphql_http_audit), server.url + "/graphql"],
        cwd=graphql_http_audit.parent, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) > 30, results  # the audit really ran
    failing = [r for r in results if r["status"] != "ok" and ("MUST" in r["name"] or "SHOULD" in r["name"])]
    assert failing == [], json.dumps(failing, indent=1)


def test_stored_data_is_unchanged_and_the_log_is_clean(server):
    assert server.graphql(STORED, {"c": COLLECTION})["data"] == server.stored_before
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-5000:]
    assert " | ERROR " not in log, [line for line in log.splitlines() if " | ERROR " in line][:5]

