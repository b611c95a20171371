"""Qdrant Edge builds its HNSW index in the background once a collection passes the threshold.

Real Qdrant Edge shards, a threshold of 2,000 points (CITADEL_VECTORS__EXACT_BELOW_POINTS in a
server): below it searches equal numpy's exact neighbours; above it the graph is built by one
pass beside the live shard while searches and writes go on, then searches go through it.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np

from app.adapters.qdrant_edge import QdrantEdgeStore
from app.domain.filters import parse_filter
from app.domain.vectors import AnnIndex, VectorPoint

DIMS = 64
THRESHOLD = 2_000
SIZE = 3_000
TOPICS = 10
K = 10


def embedding_like(count: int, seed: int) -> np.ndarray:
    """Clustered vectors of a low intrinsic dimension, unit length (like sentence embeddings)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(11).standard_normal((40, 16)).astype(np.float32) * 2.0
    projection = np.random.default_rng(12).standard_normal((16, DIMS)).astype(np.float32) / math.sqrt(16)
    latent = centers[rng.integers(0, 40, count)] + rng.standard_normal((count, 16)).astype(np.float32)
    vectors = latent @ projection + 0.3 * rng.standard_normal((count, DIMS)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def point_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"index/{i}"))


def points(vectors: np.ndarray, start: int, stop: int) -> list[VectorPoint]:
    return [
        VectorPoint(id=point_id(i), vector=vectors[i], payload={"doc_id": f"d{i}", "metadata": {"topic": f"t{i % TOPICS}"}})
        for i in range(start, stop)
    ]


def exact_top(vectors: np.ndarray, query: np.ndarray, allowed: np.ndarray | None = None) -> list[str]:
    scores = vectors @ query
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    return [point_id(int(i)) for i in np.argsort(-scores)[:K]]


async def recall(store: QdrantEdgeStore, vectors: np.ndarray, queries: np.ndarray, topic: int | None = None) -> float:
    allowed = None if topic is None else (np.arange(len(vectors)) % TOPICS == topic)
    where = None if topic is None else parse_filter({"topic": {"eq": f"t{topic}"}})
    found = 0
    for q in queries:
        hits = await store.search("big", q.tolist(), limit=K, filter=where)
        found += len({h.id for h in hits} & set(exact_top(vectors, q, allowed)))
    return found / (K * len(queries))


async def test_a_collection_over_the_threshold_gets_its_graph_in_the_background(tmp_path: Path) -> None:
    index = AnnIndex(m=16, ef_construct=100, hnsw_ef=128, exact_below=THRESHOLD)
    # Any change makes a pass due, so the points written during the build are folded in by the
    # next pass (by default that waits for a share of the collection).
    store = QdrantEdgeStore(tmp_path, optimize_changed_share=0.0, optimize_min_changes=1, index=index)
    vectors = embedding_like(SIZE + 200, seed=1)
    queries = embedding_like(50, seed=2)
    try:
        await store.create_collection("big", DIMS, "cosine", indexed_fields=["topic"])
        for start in range(0, THRESHOLD - 100, 250):
            await store.upsert("big", points(vectors, start, min(start + 250, THRESHOLD - 100)))
        await store.wait_for_maintenance()  # compactions below the threshold (no graph)
        small = await store.vector_index("big")
        assert (small.points, small.indexed_points, small.optimizing) == (THRESHOLD - 100, 0, False)
        # Below the threshold: exact, the same neighbours as numpy.
        for q in queries[:10]:
            hits = await store.search("big", q.tolist(), limit=K)
            assert [h.id for h in hits] == exact_top(vectors[: THRESHOLD - 100], q)

        for start in range(THRESHOLD - 100, SIZE, 250):
            await store.upsert("big", points(vectors, start, min(start + 250, SIZE)))
        entry = store._shards["big"]
        assert entry.busy, "crossing the threshold starts a build"
        assert (await store.vector_index("big")).optimizing
        # During the build searches answer (exactly: the graph is not there yet), and writes go on.
        served = 0
        while entry.busy:
            q = vectors[served % SIZE]
            hits = await store.search("big", q.tolist(), limit=K)
            assert len(hits) == K and hits[0].id == point_id(served % SIZE)
            if served < 200:  # written during the build: kept in the journal, replayed at the swap
                await store.upsert("big", points(vectors, SIZE + served, SIZE + served + 1))
            served += 1
        assert served > 0
        total = SIZE + min(served, 200)

        await store.wait_for_maintenance()  # the pass running now and any it makes due (the points written meanwhile)
        status = await store.vector_index("big")
        assert (status.points, status.indexed_points, status.optimizing) == (total, total, False), status
        assert store.graphs_built >= 1
        assert entry.graph
        every = vectors[:total]
        # The points written during the build were not lost at the swap.
        late = await store.search("big", vectors[total - 1].tolist(), limit=1)
        assert late[0].id == point_id(total - 1) and abs(late[0].score - 1.0) < 1e-4
        assert await recall(store, every, queries) >= 0.98
        assert await recall(store, every, queries, topic=3) >= 0.98
    finally:
        await store.close()


async def test_an_index_survives_a_restart_and_close_stops_a_build(tmp_path: Path) -> None:
    index = AnnIndex(exact_below=500)
    store = QdrantEdgeStore(tmp_path, index=index)
    vectors = embedding_like(1_000, seed=3)
    await store.create_collection("big", DIMS, "cosine")
    await store.upsert("big", points(vectors, 0, 1_000))
    await store.wait_for_maintenance()
    assert (await store.vector_index("big")).indexed_points == 1_000
    await store.close()

    reopened = QdrantEdgeStore(tmp_path, index=index)
    try:
        status = await reopened.vector_index("big")
        assert (status.points, status.indexed_points, status.optimizing) == (1_000, 1_000, False)
        hits = await reopened.search("big", vectors[42].tolist(), limit=1)
        assert hits[0].id == point_id(42)
        assert not list(tmp_path.glob(".build-*")) and not list(tmp_path.glob(".retired-*"))
    finally:
        await reopened.close()
