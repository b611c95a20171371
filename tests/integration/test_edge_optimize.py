"""Qdrant Edge shards reclaim the space of replaced and deleted points, without blocking searches."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np

from app.adapters.qdrant_edge import QdrantEdgeStore
from app.domain.vectors import VectorPoint

DIMS = 384
SIZE = 2000


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def points(rng: np.random.Generator, generation: int) -> list[VectorPoint]:
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"doc-{generation}-{i}")) for i in range(SIZE)]
    vectors = rng.random((SIZE, DIMS), dtype=np.float32)
    return [VectorPoint(id=i, vector=v, payload={"doc": i, "pad": "x" * 400}) for i, v in zip(ids, vectors)]


async def rewrite_all(store: QdrantEdgeStore, rng: np.random.Generator, rounds: int) -> list[VectorPoint]:
    """A steady document count with churn: each round deletes every point and writes new ones."""
    previous: list[VectorPoint] = []
    for generation in range(rounds):
        batch = points(rng, generation)
        for start in range(0, SIZE, 500):
            await store.delete("steady", [p.id for p in previous[start : start + 500]])
            await store.upsert("steady", batch[start : start + 500])
        previous = batch
    return previous


async def segments_after(tmp_path: Path, min_changes: int, rounds: int) -> tuple[int, QdrantEdgeStore, list[VectorPoint]]:
    store = QdrantEdgeStore(tmp_path, optimize_changed_share=0.2, optimize_min_changes=min_changes)
    await store.create_collection("steady", DIMS, "cosine")
    last = await rewrite_all(store, np.random.default_rng(1), rounds)
    await store.wait_for_maintenance()
    return disk_bytes(tmp_path / "steady" / "segments"), store, last


async def test_steady_updates_keep_the_shard_bounded(tmp_path: Path) -> None:
    never, unoptimized, _ = await segments_after(tmp_path / "never", min_changes=10**9, rounds=6)
    await unoptimized.close()
    bounded, store, last = await segments_after(tmp_path / "optimized", min_changes=1000, rounds=6)
    try:
        assert unoptimized.optimizations == 0 and store.optimizations > 0
        assert bounded < never / 2, (bounded, never)  # dead points were dropped
        assert await store.count("steady") == SIZE
        hits = await store.search("steady", last[7].vector, limit=1)
        assert hits[0].id == last[7].id and abs(hits[0].score - 1.0) < 1e-4  # latest vectors, found exactly
    finally:
        await store.close()


async def test_searches_run_while_a_shard_is_optimized(tmp_path: Path) -> None:
    store = QdrantEdgeStore(tmp_path, optimize_changed_share=0.0, optimize_min_changes=10**9)
    await store.create_collection("steady", DIMS, "cosine")
    last = await rewrite_all(store, np.random.default_rng(2), 4)
    store.optimize_min_changes = 1  # the next write starts a pass
    await store.upsert("steady", last[:1])
    entry = store._shards["steady"]
    assert entry.optimizing is not None
    served = 0
    while not entry.optimizing.done():  # searches are answered during the pass
        hits = await store.search("steady", last[3].vector, limit=1)
        assert hits[0].id == last[3].id
        served += 1
        await asyncio.sleep(0)
    await store.wait_for_maintenance()
    assert store.optimizations == 1
    await store.close()


async def test_a_bulk_load_of_new_points_makes_no_pass_due_until_points_are_replaced(tmp_path: Path) -> None:
    """Below the graph's threshold new points are searched exactly whether or not a pass ran, so
    a growing collection is not copied and rebuilt every few thousand points (that took the
    model's CPU during bulk loads); replaced ones take space, and a fifth of them make a pass due."""
    store = QdrantEdgeStore(tmp_path, optimize_changed_share=0.2, optimize_min_changes=100)
    try:
        await store.create_collection("growing", DIMS, "cosine")
        batch = points(np.random.default_rng(2), 0)
        for start in range(0, SIZE, 250):
            await store.upsert("growing", batch[start : start + 250])
        await store.wait_for_maintenance()
        assert (store.optimizations, await store.count("growing")) == (0, SIZE)

        replaced = [VectorPoint(id=p.id, vector=p.vector[::-1].copy(), payload=p.payload) for p in batch[: SIZE // 5]]
        await store.upsert("growing", replaced[: SIZE // 5 - 1])
        await store.wait_for_maintenance()
        assert store.optimizations == 0, "fewer than a fifth replaced: nothing to reclaim yet"
        await store.upsert("growing", replaced[-1:])
        await store.wait_for_maintenance()
        assert (store.optimizations, await store.count("growing")) == (1, SIZE)
        hits = await store.search("growing", replaced[0].vector, limit=1)
        assert hits[0].id == replaced[0].id and abs(hits[0].score - 1.0) < 1e-4
    finally:
        await store.close()
