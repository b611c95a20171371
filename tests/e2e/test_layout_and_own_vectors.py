"""createCollection(layout:) and DocumentInput.vectorBase64 over real HTTP."""

from __future__ import annotations

import base64
import uuid

import numpy as np

CREATE = """mutation($n: String!, $l: CollectionLayoutInput) {
  createCollection(name: $n, layout: $l) { name dimensions } }"""
INGEST = """mutation($c: String!, $d: [DocumentInput!]!) {
  ingest(collection: $c, documents: $d) { inserted failed errors { index code message } } }"""
SEARCH = """query($c: String!, $v: [Float!]) { search(collection: $c, vector: $v, limit: 3) { hits { id score } } }"""


def test_int8_collection_loaded_with_own_vectors_finds_them(live_server):
    name = f"own_{uuid.uuid4().hex[:8]}"
    body = live_server.graphql(CREATE, {"n": name, "l": {"quantization": "INT8", "onDiskVectors": True}})
    assert "errors" not in body, body
    vectors = np.random.default_rng(5).standard_normal((40, 384)).astype("<f4")
    docs = [
        {"id": f"d{i}", "text": f"text {i}", "vectorBase64": base64.b64encode(v.tobytes()).decode()}
        for i, v in enumerate(vectors)
    ]
    docs.append({"id": "short", "text": "x", "vector": [0.5] * 10})
    report = live_server.graphql(INGEST, {"c": name, "d": docs})["data"]["ingest"]
    assert report["inserted"] == 40 and report["failed"] == 1
    assert report["errors"][0]["code"] == "BAD_INPUT" and "384" in report["errors"][0]["message"]
    hits = live_server.graphql(SEARCH, {"c": name, "v": vectors[17].tolist()})["data"]["search"]["hits"]
    assert hits[0]["id"] == "d17" and abs(hits[0]["score"] - 1.0) < 1e-4


def test_an_impossible_layout_is_bad_input(live_server):
    body = live_server.graphql(CREATE, {"n": f"bad_{uuid.uuid4().hex[:8]}", "l": {"replicationFactor": 1, "writeConsistencyFactor": 3}})
    assert body["errors"][0]["extensions"]["code"] == "BAD_INPUT", body
