"""The public contract over real HTTP and WebSocket, against a real server and real stores."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import numpy as np
import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from tests.e2e.conftest import ONNX_MODEL

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def errors_of(body):
    return [(e["extensions"]["code"], e["message"]) for e in body.get("errors", [])]


def test_health_query_reports_every_dependency_ok(live_server):
    body = live_server.graphql("{ health { status version dependencies { name ok latencyMs detail } models { name state } } }")
    health = body["data"]["health"]
    assert health["status"] == "ok", health
    assert {d["name"]: d["ok"] for d in health["dependencies"]} == {"postgres": True, "redis": True, "qdrant": True}
    assert all(d["latencyMs"] is not None and d["latencyMs"] >= 0 for d in health["dependencies"])
    assert {"name": MODEL, "state": "READY"} in health["models"]


def test_queries_also_work_over_get(live_server):
    response = httpx.get(live_server.url + "/graphql", params={"query": "{ health { status } }"})
    assert response.status_code == 200 and response.json()["data"]["health"]["status"] == "ok"
    mutation = httpx.get(live_server.url + "/graphql", params={"query": 'mutation { deleteCollection(name: "x") }'})
    assert mutation.status_code in (400, 405)  # mutations are never run from a GET


def test_liveness_readiness_and_metrics(live_server):
    assert httpx.get(live_server.url + "/healthz").json()["status"] == "ok"
    ready = httpx.get(live_server.url + "/readyz")
    assert ready.status_code == 200
    models = {m["name"]: m for m in ready.json()["models"]}
    assert models[MODEL]["state"] == "READY" and models[MODEL]["maxAttempts"] >= 1
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models[MODEL]["device"].startswith(expected), models[MODEL]  # where its replicas run
    live_server.graphql('{ embed(texts: ["metrics warm-up"]) { dimensions } }')
    metrics = httpx.get(live_server.url + "/metrics").text
    for name in ("citadel_process_rss_bytes", "citadel_process_open_files", "citadel_process_cpu_seconds", "citadel_batch_size"):
        assert name in metrics, name


@pytest.mark.parametrize("model", [MODEL, ONNX_MODEL], ids=["torch", "onnx"])
def test_embed_matches_a_direct_encode_and_is_cached_the_second_time(live_server, reference_model, model):
    tag = uuid.uuid4().hex[:6]  # fresh texts: nothing in the cache yet
    texts = [f"The quick brown fox {tag}", f"A man is playing a guitar {tag}.", f"Stocks fell sharply {tag}."]
    query = "query($t: [String!]!, $m: String) { embed(texts: $t, model: $m, wait: true) { model dimensions embeddings { index vector cached } } }"
    first = live_server.graphql(query, {"t": texts, "m": model})["data"]["embed"]
    assert first["model"] == model and first["dimensions"] == 384
    assert [e["index"] for e in first["embeddings"]] == [0, 1, 2]
    assert [e["cached"] for e in first["embeddings"]] == [False, False, False]
    expected = reference_model.encode(texts, normalize_embeddings=True)
    got = np.array([e["vector"] for e in first["embeddings"]], dtype=np.float32)
    cosines = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.999, cosines
    second = live_server.graphql(query, {"t": texts, "m": model})["data"]["embed"]
    assert [e["cached"] for e in second["embeddings"]] == [True, True, True]
    assert np.allclose(np.array([e["vector"] for e in second["embeddings"]]), got, atol=1e-6)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ('{ embed(texts: ["ok", ""]) { dimensions } }', "BAD_INPUT"),
        ('{ embed(texts: []) { dimensions } }', "BAD_INPUT"),
        ('{ embed(texts: ["x"], model: "no/such-model") { dimensions } }', "NOT_FOUND"),
        ('{ embed(texts: ["x"] { dimensions } }', "GRAPHQL_PARSE_FAILED"),
        ('{ embed(texts: ["x"]) { nope } }', "GRAPHQL_VALIDATION_FAILED"),
        ('{ search(collection: "no_such_collection", query: "x") { tookMs } }', "NOT_FOUND"),
        ('{ model(name: "x") { name } a1: health { status } a2: health { status } a3: health { status } '
         + " ".join(f"b{i}: health {{ status }}" for i in range(40)) + " }", "BAD_INPUT"),
    ],
)
def test_bad_requests_get_their_codes(live_server, query, code):
    body = live_server.graphql(query)
    assert body.get("errors"), body
    assert body["errors"][0]["extensions"]["code"] == code, body
    assert "Traceback" not in str(body)


def test_collection_ingest_search_roundtrip(live_server):
    name = f"e2e_{uuid.uuid4().hex[:8]}"
    created = live_server.graphql(
        'mutation($n: String!) { createCollection(name: $n, indexedFields: ["topic"]) { name model dimensions distance documentCount } }',
        {"n": name},
    )["data"]["createCollection"]
    assert created == {"name": name, "model": MODEL, "dimensions": 384, "distance": "COSINE", "documentCount": 0}
    docs = [
        {"id": "stew", "text": "Slow-cooked beef stew with carrots", "metadata": {"topic": "cooking", "n": 120}},
        {"id": "bike", "text": "Adjusting the rear derailleur of a bicycle", "metadata": {"topic": "bikes", "n": 40}},
        {"id": "soup", "text": "A warming tomato soup for winter evenings", "metadata": {"topic": "cooking", "n": 900}},
    ]
    ingest = "mutation($c: String!, $d: [DocumentInput!]!) { ingest(collection: $c, documents: $d) { ids inserted updated unchanged failed errors { index code } } }"
    first = live_server.graphql(ingest, {"c": name, "d": docs})["data"]["ingest"]
    assert (first["inserted"], first["updated"], first["unchanged"], first["failed"]) == (3, 0, 0, 0)
    again = live_server.graphql(ingest, {"c": name, "d": docs})["data"]["ingest"]
    assert (again["inserted"], again["unchanged"]) == (0, 3)

    search = """query($c: String!, $f: JSON) { search(collection: $c, query: "a hot dinner", limit: 3, filter: $f) {
        model tookMs hits { id score text metadata document { id contentHash createdAt } } } }"""
    result = live_server.graphql(search, {"c": name, "f": None})["data"]["search"]
    assert result["hits"][0]["id"] in {"stew", "soup"} and result["tookMs"] > 0
    assert all(h["document"]["id"] == h["id"] for h in result["hits"])
    filtered = live_server.graphql(search, {"c": name, "f": {"and": [{"topic": {"eq": "cooking"}}, {"n": {"gte": 100, "lt": 900}}]}})
    assert [h["id"] for h in filtered["data"]["search"]["hits"]] == ["stew"]
    bad = live_server.graphql(search, {"c": name, "f": {"n": {"gtx": 1}}})
    assert bad["errors"][0]["extensions"]["code"] == "BAD_INPUT" and "gtx" in bad["errors"][0]["message"]

    removed = live_server.graphql('mutation($c: String!) { deleteDocuments(collection: $c, ids: ["stew"]) }', {"c": name})
    assert removed["data"]["deleteDocuments"] == 1
    after = live_server.graphql(search, {"c": name, "f": None})["data"]["search"]
    assert "stew" not in [h["id"] for h in after["hits"]]
    count = live_server.graphql('query($c: String!) { collection(name: $c) { documentCount } }', {"c": name})
    assert count["data"]["collection"]["documentCount"] == 2
    dup = live_server.graphql('mutation($n: String!) { createCollection(name: $n) { name } }', {"n": name})
    assert dup["errors"][0]["extensions"]["code"] == "CONFLICT"
    assert live_server.graphql('mutation($n: String!) { deleteCollection(name: $n) }', {"n": name})["data"]["deleteCollection"] is True


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_subscription_sends_current_state_first(live_server, protocol):
    transport = WebsocketsTransport(url=live_server.ws_url, subprotocols=[protocol])
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        subscription = gql("subscription($m: String) { modelDownloadProgress(model: $m) { model state attempt maxAttempts bytesDone } }")
        subscription.variable_values = {"m": MODEL}
        stream = session.subscribe(subscription)
        first = await asyncio.wait_for(stream.__anext__(), 30)
        await stream.aclose()
    assert first["modelDownloadProgress"]["model"] == MODEL
    assert first["modelDownloadProgress"]["state"] == "READY"


def test_graphiql_is_served_without_any_cdn(live_server):
    page = httpx.get(live_server.url + "/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    assert "unpkg.com" not in page.text and "jsdelivr" not in page.text and "cdn" not in page.text.lower()


def forward_passes(live_server) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(live_server.url + "/metrics").text):
        if family.name == "citadel_forward_passes":
            total += sum(s.value for s in family.samples if s.name.endswith("_total") and s.labels.get("model") == MODEL)
    return total


async def test_concurrent_http_requests_are_batched_and_cache_hits_skip_the_model(live_server):
    tag = uuid.uuid4().hex[:8]
    query = "query($t: [String!]!) { embed(texts: $t) { embeddings { cached } } }"
    before = forward_passes(live_server)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=120) as client:
        responses = await asyncio.gather(
            *(client.post("/graphql", json={"query": query, "variables": {"t": [f"request {i} {tag}"]}}) for i in range(64))
        )
    bodies = [r.json() for r in responses]
    assert all("errors" not in b for b in bodies), [b for b in bodies if "errors" in b][:2]
    passes = forward_passes(live_server) - before
    assert 1 <= passes <= 16, f"64 concurrent single-text requests took {passes} forward passes"

    before = forward_passes(live_server)
    again = live_server.graphql(query, {"t": [f"request 7 {tag}"]})
    assert again["data"]["embed"]["embeddings"] == [{"cached": True}]
    assert forward_passes(live_server) == before, "a cache hit must not run the model"
