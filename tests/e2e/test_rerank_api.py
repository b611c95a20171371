"""Rerank through a real server: GraphQL `rerank`, Cohere's POST /v1/rerank and TEI's POST /rerank
give CrossEncoder.predict's scores (within 1e-4), best first, topN honoured; a reranked search;
coded errors; and the same keys, scopes and rate limits as /v1/embeddings (keys required)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import reranker_server
from tests.support.cross_encoders import (  # noqa: F401  (a session fixture; cross_encoder_dir: conftest)
    DOCUMENTS,
    QUERY,
    RERANKER,
    reference_cross_encoder,
)

TOLERANCE = 1e-4
ADMIN = "ctd_rerank-e2e-admin-secret"
RERANK = """query($q: String!, $d: [String!]!, $n: Int, $t: Boolean, $r: Boolean, $m: String) {
  rerank(query: $q, documents: $d, topN: $n, returnText: $t, rawScores: $r, model: $m) {
    model tookMs hits { index score text } } }"""


@pytest.fixture(scope="module")
async def server(tmp_path_factory, cross_encoder_dir: Path):
    async with reranker_server(tmp_path_factory.mktemp("citadel-rerank"), "rerank_e2e", cross_encoder_dir, ADMIN) as live:
        yield live


def post(server, path: str, body: object, key: str | None = ADMIN) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return server.http.post(server.url + path, json=body, headers=headers, timeout=120)


def graphql(server, query: str, variables: dict, key: str | None = ADMIN) -> dict:
    return post(server, "/graphql", {"query": query, "variables": variables}, key).json()


@pytest.fixture(scope="module")
def expected(reference_cross_encoder) -> np.ndarray:  # noqa: F811
    return reference_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])


def best_first(expected: np.ndarray, n: int | None = None) -> list[int]:
    return [int(i) for i in np.argsort(-expected, kind="stable")[:n]]


def test_graphql_cohere_and_tei_equal_cross_encoder_predict(server, expected) -> None:
    body = graphql(server, RERANK, {"q": QUERY, "d": DOCUMENTS, "n": 5, "t": True})
    assert "errors" not in body, body
    result = body["data"]["rerank"]
    assert result["model"] == RERANKER and result["tookMs"] > 0
    assert [h["index"] for h in result["hits"]] == best_first(expected, 5)
    for hit in result["hits"]:
        assert abs(hit["score"] - float(expected[hit["index"]])) < TOLERANCE
        assert hit["text"] == DOCUMENTS[hit["index"]]

    documents = [d if i % 2 else {"text": d} for i, d in enumerate(DOCUMENTS)]  # both of Cohere's forms
    cohere = post(server, "/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": documents, "top_n": 4,
                                          "return_documents": True})
    assert cohere.status_code == 200, cohere.text
    answer = cohere.json()
    assert answer["id"] and answer["meta"] == {"billed_units": {"search_units": 1}}
    assert [r["index"] for r in answer["results"]] == best_first(expected, 4)
    for result in answer["results"]:
        assert abs(result["relevance_score"] - float(expected[result["index"]])) < TOLERANCE
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    plain = post(server, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS}).json()  # default reranker
    assert [r["index"] for r in plain["results"]] == best_first(expected) and "document" not in plain["results"][0]

    tei = post(server, "/rerank", {"query": QUERY, "texts": DOCUMENTS, "return_text": True})
    assert tei.status_code == 200, tei.text
    assert [r["index"] for r in tei.json()] == best_first(expected)
    for result in tei.json():
        assert abs(result["score"] - float(expected[result["index"]])) < TOLERANCE
        assert result["text"] == DOCUMENTS[result["index"]]


def test_raw_scores_are_the_logits(server, reference_cross_encoder) -> None:  # noqa: F811
    import torch

    logits = reference_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS], activation_fn=torch.nn.Identity())
    tei = post(server, "/rerank", {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    assert [r["index"] for r in tei] == best_first(logits)
    assert max(abs(r["score"] - float(logits[r["index"]])) for r in tei) < TOLERANCE
    body = graphql(server, RERANK, {"q": QUERY, "d": DOCUMENTS, "r": True, "n": 1})
    assert abs(body["data"]["rerank"]["hits"][0]["score"] - float(np.max(logits))) < TOLERANCE
    assert body["data"]["rerank"]["hits"][0]["text"] is None


def test_reranked_search_orders_its_candidates_by_the_cross_encoder(server, reference_cross_encoder) -> None:  # noqa: F811
    create = graphql(server, 'mutation { createCollection(name: "rr", model: "sentence-transformers/all-MiniLM-L6-v2") { name } }', {})
    assert "errors" not in create, create
    documents = [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCUMENTS) if len(t) < 200]
    ingest = graphql(server, "mutation($d: [DocumentInput!]!) { ingest(collection: \"rr\", documents: $d) { failed } }",
                     {"d": documents})
    assert ingest["data"]["ingest"]["failed"] == 0, ingest
    search = """query($q: String!, $r: RerankInput) { search(collection: "rr", query: $q, limit: 3, rerank: $r) {
        hits { id score text rerankScore } } }"""
    plain = graphql(server, search.replace("limit: 3", "limit: 6"), {"q": QUERY, "r": None})["data"]["search"]["hits"]
    assert all(h["rerankScore"] is None for h in plain)
    reranked = graphql(server, search, {"q": QUERY, "r": {"model": RERANKER, "candidates": 6}})
    assert "errors" not in reranked, reranked
    hits = reranked["data"]["search"]["hits"]
    scores = reference_cross_encoder.predict([(QUERY, h["text"]) for h in plain])
    assert [h["id"] for h in hits] == [plain[i]["id"] for i in best_first(scores, 3)]
    retrieval = {h["id"]: h["score"] for h in plain}
    for hit in hits:
        assert hit["score"] == pytest.approx(retrieval[hit["id"]])
        assert abs(hit["rerankScore"] - float(scores[[h["id"] for h in plain].index(hit["id"])])) < TOLERANCE


def test_errors_are_coded_never_internal(server) -> None:
    embedding_model = graphql(server, RERANK, {"q": QUERY, "d": ["x"], "m": "sentence-transformers/all-MiniLM-L6-v2"})
    assert embedding_model["errors"][0]["extensions"]["code"] == "BAD_INPUT"
    too_many = graphql(server, RERANK, {"q": QUERY, "d": ["x"] * 21})
    assert too_many["errors"][0]["extensions"]["code"] == "BAD_INPUT" and "at most 20" in too_many["errors"][0]["message"]
    embed = graphql(server, 'query($m: String) { embed(texts: ["x"], model: $m) { dimensions } }', {"m": RERANKER})
    assert embed["errors"][0]["extensions"]["code"] == "BAD_INPUT"

    cohere = post(server, "/v1/rerank", {"query": QUERY, "documents": ["x"] * 21})
    assert cohere.status_code == 400 and "at most 20" in cohere.json()["message"]
    assert post(server, "/v1/rerank", {"model": "no/such", "query": "q", "documents": ["x"]}).status_code == 404
    assert post(server, "/v1/rerank", {"query": "q", "documents": [1]}).status_code == 400
    tei = post(server, "/rerank", {"query": QUERY, "texts": ["x"] * 21})
    assert tei.status_code == 422 and tei.json()["error_type"] == "Validation"
    assert post(server, "/rerank", {"query": QUERY}).status_code == 422
    malformed = httpx.post(server.url + "/rerank", content=b"{not json", headers={"authorization": f"Bearer {ADMIN}"})
    assert malformed.status_code == 422


def test_keys_scopes_and_rate_limits_as_for_embeddings(server) -> None:
    body = {"query": QUERY, "documents": DOCUMENTS[:2]}
    for path in ("/v1/rerank", "/rerank"):
        assert post(server, path, body, key=None).status_code == 401
        assert post(server, path, body, key="ctd_not-a-key").status_code == 401
    created = graphql(
        server,
        'mutation { createApiKey(input: {name: "rr-reader", scopes: [READ], ratePerSecond: 0.01}) { secret } }',
        {},
    )
    secret = created["data"]["createApiKey"]["secret"]
    first = post(server, "/v1/rerank", body, key=secret)  # burst: one call (0.01/s x 2 s, at least one)
    assert first.status_code == 200, first.text
    limited = post(server, "/rerank", body, key=secret)
    assert limited.status_code == 429 and "retry-after" in limited.headers
    metrics = httpx.get(server.url + "/metrics", headers={"authorization": f"Bearer {ADMIN}"}).text
    assert f'citadel_rerank_requests_total{{model="{RERANKER}",outcome="ok"}}' in metrics
    assert 'citadel_rerank_requests_total{model="unknown",outcome="NOT_FOUND"}' in metrics
