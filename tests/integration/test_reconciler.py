"""The vector store fails in the middle of an ingest or a delete; after it comes back and the
reconciler runs, PostgreSQL and the store hold exactly the same documents and nothing is lost.

Real stack (PostgreSQL, Redis, the real model, both vector stores); the failure is injected by
FlakyStore, the real store behind a switch that makes it raise as a vanished store would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.domain.vectors import stored_point_ids
from app.adapters.postgres import DocumentWrite
from app.errors import DependencyUnavailable, ModelUnavailable
from app.domain.ids import content_hash, point_id
from tests.support.stack import (
    STORE_KINDS,
    Stack,
    both_sides,
    corpus,
    model_runtime,  # noqa: F401  (session fixture)
    open_stack,
    pg_state,
)

WAIT_S = 120.0  # generous upper bound for background work on a loaded CI machine; never asserted


@pytest.fixture(params=STORE_KINDS)
async def stack(request, model_runtime, tmp_path: Path) -> Any:  # noqa: F811
    async with open_stack(model_runtime, request.param, tmp_path, embed_batch=50) as opened:
        yield opened


def _statuses(state: dict[str, tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, status in state.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


async def _assert_in_sync(stack: Stack, name: str, ids: list[str]) -> None:
    state = await pg_state(stack, name)
    assert sorted(state) == sorted(ids), "PostgreSQL lost or invented documents"
    assert _statuses(state) == {"indexed": len(ids)}
    expected, stored = await both_sides(stack, name)
    assert stored == expected == {point_id(name, i) for i in ids}


async def _pending_collection(stack: Stack, name: str, count: int, seed: int) -> list[dict[str, Any]]:
    """A new collection whose documents all stay pending: the vector store refuses the ingest."""
    await stack.collections.create(name)
    docs = corpus(count, seed=seed)
    stack.store.fail_after_points = 0
    with pytest.raises(DependencyUnavailable):
        await stack.ingest.ingest(name, docs)
    return docs


async def test_store_fails_mid_ingest_then_reconciler_restores_both_sides(stack: Stack) -> None:
    name = "books"
    await stack.collections.create(name, indexed_fields=["topic"])
    docs = corpus(250, seed=21)  # within one ingest call's limit (256)
    ids = [d["id"] for d in docs]

    stack.store.fail_after_points = 120  # chunks of 50: two land, the third fails
    with pytest.raises(DependencyUnavailable, match="reconciler"):
        await stack.ingest.ingest(name, docs)

    state = await pg_state(stack, name)
    assert sorted(state) == sorted(ids)
    assert _statuses(state) == {"indexed": 100, "pending": 150}
    expected, stored = await both_sides(stack, name)
    assert stored == expected and len(stored) == 100
    # Only indexed documents are ever returned while the rest waits.
    hits = (await stack.search.search(name, query="a chef in the kitchen", limit=300)).hits
    assert len(hits) == 100 and all(state[h.id][1] == "indexed" for h in hits)

    # Still down: re-sending the same documents reports them unchanged but still cannot index them.
    with pytest.raises(DependencyUnavailable):
        await stack.ingest.ingest(name, docs)

    stack.store.restore()
    counts = await stack.reconciler.run_once()
    assert (counts.indexed, counts.purged, counts.skipped, counts.failed) == (150, 0, 0, 0)
    await _assert_in_sync(stack, name, ids)
    assert await stack.store.count(name) == 250

    pending_text = docs[200]["text"]
    top = (await stack.search.search(name, query=pending_text, limit=1)).hits[0]
    assert top.id == docs[200]["id"]

    again = await stack.reconciler.run_once()
    assert (again.indexed, again.purged) == (0, 0)


async def test_next_ingest_indexes_rows_a_failed_call_left_pending(stack: Stack) -> None:
    name = "retry"
    docs = await _pending_collection(stack, name, 80, seed=3)
    assert _statuses(await pg_state(stack, name)) == {"pending": 80}

    stack.store.restore()
    report = await stack.ingest.ingest(name, docs)
    assert (report.inserted, report.updated, report.unchanged) == (0, 0, 80)
    await _assert_in_sync(stack, name, [d["id"] for d in docs])


async def test_delete_while_store_is_down_is_hidden_then_finished(stack: Stack) -> None:
    name = "deletes"
    await stack.collections.create(name)
    docs = corpus(30, seed=9)
    await stack.ingest.ingest(name, docs)
    gone = [d["id"] for d in docs[:5]]

    stack.store.fail_deletes = True
    with pytest.raises(DependencyUnavailable):
        await stack.ingest.delete_documents(name, gone)
    assert {i: s for i, (_, s) in (await pg_state(stack, name)).items() if i in gone} == dict.fromkeys(gone, "deleting")
    assert await stack.repo.count_documents(name) == 25
    hits = (await stack.search.search(name, query=docs[0]["text"], limit=30)).hits
    assert len(hits) == 25 and not {h.id for h in hits} & set(gone)

    stack.store.restore()
    counts = await stack.reconciler.run_once()
    assert (counts.indexed, counts.purged) == (0, 5)
    await _assert_in_sync(stack, name, [d["id"] for d in docs[5:]])


async def test_collection_whose_model_revision_changed_is_skipped_not_switched(stack: Stack) -> None:
    spec = await stack.models.ready_spec(None)
    # A collection built with a revision the catalog no longer has, holding pending rows.
    await stack.repo.create_collection("stale", spec.name, "an-older-revision", spec.dimensions, "cosine")
    stale_docs = corpus(12, seed=4)
    await stack.repo.upsert_documents(
        "stale",
        [
            DocumentWrite(
                d["id"], d["text"], d["metadata"], content_hash(d["text"], d["metadata"]), point_id("stale", d["id"])
            )
            for d in stale_docs
        ],
    )
    fresh_docs = await _pending_collection(stack, "fresh", 40, seed=6)
    stack.store.restore()

    counts = await stack.reconciler.run_once()
    assert (counts.indexed, counts.skipped) == (40, 12)
    await _assert_in_sync(stack, "fresh", [d["id"] for d in fresh_docs])
    assert _statuses(await pg_state(stack, "stale")) == {"pending": 12}

    before = await pg_state(stack, "stale")
    with pytest.raises(ModelUnavailable):
        await stack.ingest.ingest("stale", [{"text": "new words"}])
    with pytest.raises(ModelUnavailable):
        await stack.search.search("stale", query="anything")
    assert await pg_state(stack, "stale") == before


def _reconciler_errors() -> float:
    return REGISTRY.get_sample_value("citadel_reconciler_errors_total") or 0.0


async def test_background_reconciler_survives_failures_and_catches_up(stack: Stack) -> None:
    name = "background"
    docs = await _pending_collection(stack, name, 60, seed=8)

    errors = _reconciler_errors()
    stack.reconciler.start()
    try:
        async with asyncio.timeout(WAIT_S):
            while _reconciler_errors() < errors + 2:  # two failed rounds, and still running
                await asyncio.sleep(0.02)
        assert stack.reconciler.running
        assert _statuses(await pg_state(stack, name)) == {"pending": 60}

        stack.store.restore()
        async with asyncio.timeout(WAIT_S):
            while await stack.repo.count_documents(name, "pending"):
                await asyncio.sleep(0.05)
        assert stack.reconciler.running
    finally:
        await stack.reconciler.stop()
    assert not stack.reconciler.running
    await _assert_in_sync(stack, name, [d["id"] for d in docs])


async def test_a_stuck_backlog_does_not_delay_other_collections(stack: Stack, monkeypatch) -> None:
    import app.services.reconciler as reconciler_module

    # A batch smaller than the stuck backlog: read oldest-first across collections, every batch
    # would be the stuck collection's rows and the fresh collection would never be reached.
    monkeypatch.setattr(reconciler_module, "BATCH_ROWS", 5)
    spec = await stack.models.ready_spec(None)
    await stack.repo.create_collection("stuck", spec.name, "an-older-revision", spec.dimensions, "cosine")
    stuck = corpus(12, seed=14)
    await stack.repo.upsert_documents(
        "stuck",
        [DocumentWrite(d["id"], d["text"], d["metadata"], content_hash(d["text"], d["metadata"]), point_id("stuck", d["id"])) for d in stuck],
    )
    fresh = await _pending_collection(stack, "later", 20, seed=15)  # newer rows than the stuck ones
    stack.store.restore()

    counts = await stack.reconciler.run_once()
    assert counts.indexed == 20 and counts.skipped == 5, counts
    await _assert_in_sync(stack, "later", [d["id"] for d in fresh])
    assert _statuses(await pg_state(stack, "stuck")) == {"pending": 12}


async def test_orphan_vectors_are_swept_in_one_round(stack: Stack) -> None:
    from app.domain.vectors import DOC_ID_KEY, METADATA_KEY
    from app.domain.vectors import VectorPoint

    name = "orphans"
    await stack.collections.create(name)
    docs = corpus(10, seed=16)
    await stack.ingest.ingest(name, docs)
    # What an ingest racing a delete of the same id leaves: a vector whose row is gone.
    vector = [0.1] * stack.settings.models[stack.settings.default_model].dimensions
    ghosts = [f"ghost-{i}" for i in range(3)]
    await stack.store.upsert(
        name, [VectorPoint(id=point_id(name, g), vector=vector, payload={DOC_ID_KEY: g, METADATA_KEY: {}}) for g in ghosts]
    )
    assert len(await stored_point_ids(stack.store, name)) == 13

    counts = await stack.reconciler.run_once()
    assert counts.orphans == 3, counts
    await _assert_in_sync(stack, name, [d["id"] for d in docs])


async def test_orphan_chunks_are_swept_and_large_collections_over_several_rounds(stack: Stack, monkeypatch) -> None:
    from app.domain.chunking import Chunking
    from app.domain.vectors import CHUNK_KEY, DOC_ID_KEY, METADATA_KEY, VectorPoint
    from app.services import reconciler as reconciler_module
    from app.domain.ids import chunk_point_id

    name = "orphan-chunks"
    await stack.collections.create(name, chunking=Chunking(max_tokens=32, overlap_tokens=0))
    docs = corpus(6, seed=18)
    await stack.ingest.ingest(name, docs)
    kept = await stored_point_ids(stack.store, name)
    vector = [0.1] * stack.settings.models[stack.settings.default_model].dimensions
    ghosts = [
        VectorPoint(
            id=chunk_point_id(name, f"ghost-{g}", c),
            vector=vector,
            payload={DOC_ID_KEY: f"ghost-{g}", METADATA_KEY: {}, CHUNK_KEY: {"index": c, "start": 0, "end": 1}},
        )
        for g in range(4)
        for c in range(3)
    ]
    await stack.store.upsert(name, ghosts)
    # A round reads at most 5 points of a collection here: the sweep goes on where it stopped.
    monkeypatch.setattr(reconciler_module, "SWEEP_PAGE", 2)
    monkeypatch.setattr(reconciler_module, "SWEEP_POINTS_PER_ROUND", 5)
    total = len(kept) + len(ghosts)
    removed, rounds = 0, 0
    while removed < len(ghosts):
        removed += (await stack.reconciler.run_once()).orphans
        rounds += 1
        assert rounds <= total, "the sweep does not move on between rounds"
    assert rounds > 1, "a bounded round should not have covered the whole collection"
    assert await stored_point_ids(stack.store, name) == kept
    assert (await stack.reconciler.run_once()).orphans == 0


async def test_a_model_becoming_ready_wakes_the_reconciler_at_once(stack: Stack) -> None:
    from types import SimpleNamespace

    from app.adapters.events import DownloadEvent, EventBus
    from app.domain.models import ModelState
    from app.services.reconciler import Reconciler

    name = "woken"
    docs = await _pending_collection(stack, name, 15, seed=17)
    bus = EventBus()
    models = SimpleNamespace(bus=bus, ready_spec=stack.models.ready_spec)
    # An interval longer than the test's patience: only the READY event can start the next round.
    reconciler = Reconciler(stack.repo, stack.store, stack.embedder, 3600.0, stack.settings, models)
    reconciler.start()
    try:
        async with asyncio.timeout(WAIT_S):  # the first round runs at start and fails (store down)
            while await stack.repo.count_documents(name, "pending") != 15 or not reconciler._outage and not reconciler._problems:
                await asyncio.sleep(0.02)
        stack.store.restore()
        await asyncio.sleep(0.2)
        assert await stack.repo.count_documents(name, "pending") == 15  # still waiting for the interval
        bus.publish(DownloadEvent(model=stack.settings.default_model, state=ModelState.READY, attempt=1, max_attempts=1))
        async with asyncio.timeout(WAIT_S):
            while await stack.repo.count_documents(name, "pending"):
                await asyncio.sleep(0.05)
    finally:
        await reconciler.stop()
    await _assert_in_sync(stack, name, [d["id"] for d in docs])
