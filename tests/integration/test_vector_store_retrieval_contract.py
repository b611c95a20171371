"""The retrieval part of the VectorStore contract, on every adapter (Qdrant Edge, qdrant-client's
local mode, a real server when CITADEL_TEST_QDRANT_URL is set): BM25 sparse vectors, KEYWORD and
HYBRID queries (RRF, DBSF), chunk points deleted per document, facets, and keyword indexes added
to existing collections."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from app.domain.vectors import stored_point_ids
from app.adapters.bm25 import bm25
from app.domain.filters import parse_filter
from app.domain.vectors import Fusion, SearchMode, StoreQuery, VectorPoint, payload_key
from app.errors import BadInput
from tests.integration.test_vector_store_contract import store, store_kind  # noqa: F401  (fixtures)
from app.domain.filter_matcher import matches
from tests.support.vectors import collection_name, point_id, random_vectors

TEXTS = [
    "Replace the filter cartridge QX-4471-B every six months.",
    "The cat sat on the warm mat near the window.",
    "Connection failed with ECONNREFUSED on port 5432.",
    "Dogs love long walks in the park on sunny days.",
    "Order the drive belt ZK-9120-A for older dryers.",
    "Our support team answers questions within one day.",
    "The cat and the dog share a basket by the stove.",
    "Alice Okonkwo confirmed the refund by email.",
]
TOPICS = ["parts", "pets", "errors", "pets", "parts", "support", "pets", "support"]


async def keyword_collection(store, chunked_docs: bool = False) -> tuple[str, np.ndarray]:
    name = collection_name()
    await store.create_collection(name, 8, "cosine", indexed_fields=["topic"], keyword_index=True)
    vectors = random_vectors(len(TEXTS), 8, seed=21)
    sparse = await bm25().documents(TEXTS)
    points = [
        VectorPoint(
            id=point_id(i),
            vector=vectors[i].tolist(),
            payload={"doc_id": f"doc-{i}", "metadata": {"topic": TOPICS[i], "n": i, "tags": ["a", "b"][: i % 3]}},
            sparse=sparse[i],
        )
        for i in range(len(TEXTS))
    ]
    await store.upsert(name, points)
    return name, vectors


def keyword(text: str, **kwargs) -> StoreQuery:
    return StoreQuery(SearchMode.KEYWORD, sparse=bm25().query(text), **kwargs)


async def test_keyword_search_ranks_by_bm25_and_honours_filter_threshold_and_offset(store):
    name, _ = await keyword_collection(store)
    try:
        hits = await store.search(name, None, limit=5, query=keyword("QX-4471-B"))
        assert [h.payload["doc_id"] for h in hits] == ["doc-0"]  # no other text has these terms
        cats = await store.search(name, None, limit=5, query=keyword("cat"))
        assert {h.payload["doc_id"] for h in cats} == {"doc-1", "doc-6"}
        assert all(a.score >= b.score for a, b in zip(cats, cats[1:]))
        only_pets = parse_filter({"topic": {"eq": "pets"}})
        dogs = await store.search(name, None, limit=5, filter=only_pets, query=keyword("dog walks"))
        assert [h.payload["doc_id"] for h in dogs][0] == "doc-3"
        assert all(h.payload["metadata"]["topic"] == "pets" for h in dogs)
        second = await store.search(name, None, limit=1, offset=1, query=keyword("cat"))
        assert [h.id for h in second] == [cats[1].id]
        above = await store.search(name, None, limit=5, score_threshold=cats[0].score - 1e-6, query=keyword("cat"))
        assert [h.id for h in above] == [cats[0].id]
    finally:
        await store.delete_collection(name)


@pytest.mark.parametrize("fusion", list(Fusion))
async def test_hybrid_fuses_both_rankings_under_the_filter(store, fusion):
    name, vectors = await keyword_collection(store)
    try:
        # The dense side points at doc-5, the keyword side at doc-2: both are fused in.
        query = StoreQuery(SearchMode.HYBRID, dense=vectors[5].tolist(), sparse=bm25().query("ECONNREFUSED"), fusion=fusion)
        hits = await store.search(name, None, limit=3, query=query)
        top_two = {h.payload["doc_id"] for h in hits[:2]}
        assert top_two == {"doc-5", "doc-2"}, hits
        where = parse_filter({"topic": {"ne": "errors"}})
        filtered = await store.search(name, None, limit=8, filter=where, query=query)
        assert filtered and all(h.payload["metadata"]["topic"] != "errors" for h in filtered)
        assert filtered[0].payload["doc_id"] == "doc-5"
    finally:
        await store.delete_collection(name)


async def test_hybrid_rrf_keyword_weight_and_least_score(store):
    name, vectors = await keyword_collection(store)
    try:
        dense = vectors[7].tolist()
        semantic = await store.search(name, dense, limit=8)
        muted = StoreQuery(SearchMode.HYBRID, dense=dense, sparse=bm25().query("cat dog"), keyword_weight=0.0)
        hits = await store.search(name, None, limit=8, query=muted)
        assert [h.id for h in hits] == [h.id for h in semantic]  # weight 0: the dense ranking alone

        cats = await store.search(name, None, limit=8, query=keyword("cat dog"))
        assert len(cats) >= 2 and cats[1].score < cats[0].score * 0.99
        strict = StoreQuery(
            SearchMode.HYBRID, dense=dense, sparse=bm25().query("cat dog"), keyword_min_score=cats[0].score * 0.99
        )
        fused = await store.search(name, None, limit=2, query=strict)
        # Only the best keyword match joins the fusion: it and the dense top are first.
        assert {h.id for h in fused} == {cats[0].id, semantic[0].id}
    finally:
        await store.delete_collection(name)


async def test_queries_need_the_vectors_of_their_mode(store):
    name, vectors = await keyword_collection(store)
    try:
        with pytest.raises(BadInput):
            await store.search(name, None, limit=1, query=StoreQuery(SearchMode.KEYWORD))
        with pytest.raises(BadInput):
            await store.search(name, None, limit=1, query=StoreQuery(SearchMode.HYBRID, dense=vectors[0].tolist()))
    finally:
        await store.delete_collection(name)


async def test_delete_documents_removes_every_chunk_point(store):
    name = collection_name()
    await store.create_collection(name, 4, "dot")
    try:
        vectors = random_vectors(12, 4, seed=5)
        points = [
            VectorPoint(
                id=point_id(f"{d}-{c}"),
                vector=vectors[d * 3 + c].tolist(),
                payload={"doc_id": f"doc-{d}", "metadata": {}, "chunk": {"index": c, "start": c * 10, "end": c * 10 + 9}},
            )
            for d in range(4)
            for c in range(3)
        ]
        await store.upsert(name, points)
        await store.delete_documents(name, ["doc-1", "doc-3", "never-stored"])
        left = await stored_point_ids(store, name)
        assert left == {point_id(f"{d}-{c}") for d in (0, 2) for c in range(3)}
    finally:
        await store.delete_collection(name)


@pytest.mark.parametrize("field", ["topic", "tags", "n"])  # indexed, a list, unindexed
@pytest.mark.parametrize("raw_filter", [None, {"n": {"gte": 2}}, {"topic": {"ne": "pets"}}])
async def test_facets_count_documents_like_python(store, field, raw_filter):
    name, vectors = await keyword_collection(store)
    try:
        # Chunks beyond the first of a document never count twice.
        extra = VectorPoint(
            id=point_id("doc-1-chunk-1"),
            vector=vectors[0].tolist(),
            payload={"doc_id": "doc-1", "metadata": {"topic": "pets", "n": 1, "tags": ["a"]}, "chunk": {"index": 1, "start": 5, "end": 9}},
        )
        first = VectorPoint(
            id=point_id(1),
            vector=vectors[1].tolist(),
            payload={"doc_id": "doc-1", "metadata": {"topic": "pets", "n": 1, "tags": ["a"]}, "chunk": {"index": 0, "start": 0, "end": 5}},
        )
        await store.upsert(name, [extra, first])
        metadata = [{"topic": TOPICS[i], "n": i, "tags": ["a", "b"][: i % 3]} for i in range(len(TEXTS))]
        node = parse_filter(raw_filter) if raw_filter else None
        expected: Counter = Counter()
        for md in metadata:
            if node is None or matches(node, md):
                value = md[field]
                expected.update(set(value) if isinstance(value, list) else {value})
        got = await store.facet(name, payload_key(field), node, limit=100)
        assert {f.value: f.count for f in got} == dict(expected)
        assert [f.count for f in got] == sorted((f.count for f in got), reverse=True)
        top = await store.facet(name, payload_key(field), node, limit=1)
        assert len(top) == min(1, len(expected)) and (not top or top[0].count == max(expected.values()))
    finally:
        await store.delete_collection(name)


async def test_a_keyword_index_is_added_to_an_existing_collection(store):
    name = collection_name()
    await store.create_collection(name, 8, "cosine")  # no keyword index
    try:
        vectors = random_vectors(len(TEXTS), 8, seed=8)
        await store.upsert(
            name,
            [VectorPoint(id=point_id(i), vector=vectors[i].tolist(), payload={"doc_id": f"doc-{i}", "metadata": {}}) for i in range(len(TEXTS))],
        )
        await store.add_keyword_index(name)
        await store.add_keyword_index(name)  # idempotent
        sparse = await bm25().documents(TEXTS)
        await store.set_sparse_vectors(name, [(point_id(i), sparse[i]) for i in range(len(TEXTS))])
        hits = await store.search(name, None, limit=3, query=keyword("ZK-9120-A"))
        assert [h.payload["doc_id"] for h in hits] == ["doc-4"]
        # Dense vectors and payloads are as they were.
        [dense_hit] = await store.search(name, vectors[6].tolist(), limit=1)
        assert dense_hit.id == point_id(6) and dense_hit.payload == {"doc_id": "doc-6", "metadata": {}}
        assert dense_hit.score == pytest.approx(1.0, abs=1e-5)
    finally:
        await store.delete_collection(name)
