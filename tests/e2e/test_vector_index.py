"""Collection.vectorIndex over real HTTP: a collection over the index threshold gets its HNSW graph
built in the background and reports it; a small one stays exact (indexedPoints 0)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.e2e.conftest import bundled_server
from tests.support.databases import temporary_database
from tests.support.polling import poll

THRESHOLD = 500
CREATE = """mutation($n: String!) { createCollection(name: $n, indexedFields: ["topic"]) { name dimensions } }"""
INGEST = """mutation($c: String!, $d: [DocumentInput!]!) { ingest(collection: $c, documents: $d) { inserted failed } }"""
STATUS = """query($c: String!) { collection(name: $c) { vectorIndex { points indexedPoints optimizing } } }"""
SEARCH = """query($c: String!, $v: [Float!], $f: JSON) { search(collection: $c, vector: $v, limit: 10, filter: $f) { hits { id score } } }"""


@pytest.fixture(scope="module")
async def index_database():
    async with temporary_database("citadel_vector_index") as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory, index_database):
    live = bundled_server(
        tmp_path_factory.mktemp("citadel-vector-index"),
        index_database,
        "vector-index-server.log",
        CITADEL_VECTORS__EXACT_BELOW_POINTS=str(THRESHOLD),
    ).start()
    try:
        yield live
    finally:
        assert live.stop() == 0


def load(server, name: str, vectors: np.ndarray) -> None:
    assert "errors" not in server.graphql(CREATE, {"n": name})
    for start in range(0, len(vectors), 200):
        docs = [
            {
                "id": f"d{i}",
                "text": f"document number {i}",
                "metadata": {"topic": f"t{i % 10}"},
                "vectorBase64": base64.b64encode(vectors[i].astype("<f4").tobytes()).decode(),
            }
            for i in range(start, min(start + 200, len(vectors)))
        ]
        report = server.graphql(INGEST, {"c": name, "d": docs})["data"]["ingest"]
        assert report == {"inserted": len(docs), "failed": 0}, report


def vector_index(server, name: str) -> dict:
    body = server.graphql(STATUS, {"c": name})
    assert "errors" not in body, body
    return body["data"]["collection"]["vectorIndex"]


def test_vector_index_reports_the_background_build(server) -> None:
    vectors = np.random.default_rng(7).standard_normal((THRESHOLD + 300, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    load(server, "indexed", vectors)
    poll(
        lambda: vector_index(server, "indexed") == {"points": len(vectors), "indexedPoints": len(vectors), "optimizing": False},
        "every point of the collection in its HNSW graph",
    )
    hits = server.graphql(SEARCH, {"c": "indexed", "v": vectors[123].tolist(), "f": None})["data"]["search"]["hits"]
    assert hits[0]["id"] == "d123" and abs(hits[0]["score"] - 1.0) < 1e-4
    filtered = server.graphql(SEARCH, {"c": "indexed", "v": vectors[123].tolist(), "f": {"topic": {"eq": "t3"}}})
    assert [h["id"] for h in filtered["data"]["search"]["hits"]][0] == "d123"
    assert all(int(h["id"][1:]) % 10 == 3 for h in filtered["data"]["search"]["hits"])


def test_a_small_collection_stays_exact(server) -> None:
    vectors = np.random.default_rng(8).standard_normal((THRESHOLD // 2, 384)).astype(np.float32)
    load(server, "small", vectors)
    status = vector_index(server, "small")
    assert status["points"] == len(vectors) and status["indexedPoints"] == 0
