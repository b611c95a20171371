"""Many clients writing the same ids at once, in different orders and with random delays: after
the writes settle, every point in the vector store carries exactly its PostgreSQL row's latest
version (dense, sparse and payload, every chunk), the per-item counts add up exactly, and no
conflict between clients is an error.

Real stack (PostgreSQL, Redis, the bundled model, Qdrant Edge and qdrant-client's local mode).
Interleavings come from concurrency plus random delays in front of the (real) embedder; where
one order must be forced (a slow writer overtaken by a fast one) an event holds the slow one.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.domain.access import Principal, Scope
from app.domain.chunking import Chunking
from app.domain.vectors import VectorPoint, point_ref
from app.errors import CitadelError
from app.domain.ids import point_id
from app.services.ingest import IngestService
from tests.support.stack import (
    STORE_KINDS,
    Stack,
    model_runtime,  # noqa: F401  (session fixture)
    open_stack,
)
from tests.support.vectors import random_vectors

WRITERS = 8
IDS = 30


@pytest.fixture(params=STORE_KINDS)
async def stack(request, model_runtime, tmp_path: Path) -> Any:  # noqa: F811
    async with open_stack(model_runtime, request.param, tmp_path, embed_batch=16) as opened:
        yield opened


class DelayedEmbedder:
    """The stack's real embedder, each call started after a random pause (`before(texts)` may
    hold it for an event instead): how writers interleave differently every round."""

    def __init__(self, inner: Any, rng: random.Random, before: Any = None) -> None:
        self.inner = inner
        self.rng = rng
        self.before = before

    async def _pause(self, texts: list[str]) -> None:
        if self.before is not None:
            await self.before(texts)
        else:
            await asyncio.sleep(self.rng.uniform(0, 0.03))

    async def run(self, request: Any, **kwargs: Any) -> Any:
        await self._pause(list(request.texts))
        return await self.inner.run(request, **kwargs)

    async def document_tokens(self, model: str, texts: list[str]) -> Any:
        await self._pause(texts)
        return await self.inner.document_tokens(model, texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def ingest_service(stack: Stack, embedder: Any) -> IngestService:
    return IngestService(stack.settings, stack.repo, stack.store, embedder, stack.models)


def text_of(writer: str, round_: int, i: int) -> str:
    # A code word per writer, round and id: the keyword index finds the version that won.
    return f"Writer {writer} wrote note {i} in round {round_}; its code is zq{writer}r{round_}n{i}."


async def settle(stack: Stack, name: str) -> None:
    """Let the reconciler finish what is left (bounded: a wrong store never passes anyway)."""
    for _ in range(20):
        await stack.reconciler.run_once()
        if await stack.repo.count_documents(name, "pending") == 0 and await stack.repo.count_documents(name, "deleting") == 0:
            return


async def store_points(stack: Stack, name: str) -> dict[str, list[Any]]:
    """doc_id -> the points the store holds for it."""
    by_doc: dict[str, list[Any]] = {}
    after = None
    row = await stack.repo.get_collection(name)
    store_name = row.store_name if row is not None else name  # a reindexed collection's vectors live elsewhere
    while True:
        page, after = await stack.store.document_points(store_name, after, 500)
        for ref in page:
            by_doc.setdefault(ref.doc_id, []).append(ref)
        if after is None:
            return by_doc


async def assert_written_in_commit_order(stack: Stack, name: str) -> None:
    """Before any reconciler round: the writers alone left every row indexed with its points at
    the row's version (the reconciler's repair is a second line, not the mechanism)."""
    rows = await stack.repo.list_documents(name, limit=10_000, include_deleting=True)
    points = await store_points(stack, name)
    assert {r.id: r.status for r in rows} == {r.id: "indexed" for r in rows}
    assert {r.id: {p.version for p in points.get(r.id, [])} for r in rows} == {r.id: {r.content_hash} for r in rows}


async def assert_store_mirrors_postgres(stack: Stack, name: str, *, semantic: bool = True) -> None:
    """Row by row: the store holds exactly the rows' latest versions, as search (by meaning,
    unless the documents brought their own vectors), keyword search and facets see them."""
    rows = await stack.repo.list_documents(name, limit=10_000, include_deleting=True)
    assert [r.status for r in rows] == ["indexed"] * len(rows), "rows left unsettled"
    points = await store_points(stack, name)
    assert sorted(points) == sorted(r.id for r in rows), "points without rows, or rows without points"
    for row in rows:
        versions = {p.version for p in points[row.id]}
        assert versions == {row.content_hash}, f"{row.id}: points hold {versions}, the row {row.content_hash}"
        if semantic:
            own = {"writer": {"eq": row.metadata["writer"]}}
            hits = (await stack.search.search(name, query=row.text, limit=1, filter=own)).hits
            assert [h.id for h in hits] == [row.id], f"{row.id} not found by its own text under its own metadata"
        code = row.text.rsplit(" ", 1)[-1].rstrip(".")
        keyword = (await stack.search.search(name, query=code, limit=1, mode="KEYWORD")).hits
        assert [h.id for h in keyword] == [row.id], f"{row.id}: the keyword index holds another version"
    facets = await stack.search.facets(name, "writer", limit=100)
    assert {f.value: f.count for f in facets} == dict(Counter(r.metadata["writer"] for r in rows))


async def test_writers_of_the_same_ids_in_shuffled_orders_converge_on_postgres(stack: Stack) -> None:
    name = "racing"
    await stack.collections.create(name)
    rng = random.Random(21)
    ids = [f"doc-{i:03d}" for i in range(IDS)]
    service = ingest_service(stack, DelayedEmbedder(stack.embedder, rng))

    async def write(writer: int, round_: int) -> Any:
        order = ids[:]
        rng.shuffle(order)
        docs = [
            {"id": i, "text": text_of(str(writer), round_, int(i[4:])), "metadata": {"writer": f"w{writer}", "round": round_}}
            for i in order
        ]
        return await service.ingest(name, docs)

    for round_ in range(3):
        reports = await asyncio.gather(*(write(w, round_) for w in range(WRITERS)), return_exceptions=True)
        failures = [r for r in reports if isinstance(r, BaseException)]
        assert failures == [], failures
        assert all(r.failed == 0 and r.errors == [] for r in reports)
        inserted = sum(r.inserted for r in reports)
        assert inserted == (IDS if round_ == 0 else 0), "each new id is inserted exactly once"
        assert sum(r.inserted + r.updated + r.unchanged for r in reports) == WRITERS * IDS
        await assert_written_in_commit_order(stack, name)
        await settle(stack, name)
        await assert_store_mirrors_postgres(stack, name)


@pytest.mark.parametrize("points_first", ["fast", "slow"])
async def test_a_slow_writer_overtaken_by_a_fast_one_leaves_the_fast_version(stack: Stack, points_first: str) -> None:
    """Slow writes its rows, then fast rewrites them; then either fast's points reach the store
    first and slow's come late, or slow's come while fast's rows wait for theirs."""
    name = "slowfast"
    await stack.collections.create(name)
    ids = [f"id-{i:02d}" for i in range(20)]
    slow_embedding, fast_embedding, slow_finished, fast_finished = (asyncio.Event() for _ in range(4))

    async def hold(texts: list[str]) -> None:
        if any("Writer slow" in t for t in texts):
            slow_embedding.set()  # its rows are written; its points wait
            await (fast_finished if points_first == "fast" else fast_embedding).wait()
        elif points_first == "slow":
            fast_embedding.set()  # fast's rows are written; its points wait for slow's
            await slow_finished.wait()

    service = ingest_service(stack, DelayedEmbedder(stack.embedder, random.Random(1), before=hold))

    def docs(writer: str, words: int) -> list[dict[str, Any]]:
        filler = " ".join(["and the long road went on"] * words)
        return [{"id": i, "text": filler + " " + text_of(writer, 0, n), "metadata": {"writer": writer}} for n, i in enumerate(ids)]

    slow = asyncio.create_task(service.ingest(name, docs("slow", 30)))
    await slow_embedding.wait()
    fast = asyncio.create_task(service.ingest(name, docs("fast", 0)))
    if points_first == "fast":
        await fast
        fast_finished.set()
        await slow
    else:
        await slow
        slow_finished.set()
        await fast
    assert (fast.result().updated, fast.result().failed) == (len(ids), 0)
    assert (slow.result().inserted, slow.result().failed) == (len(ids), 0)

    await assert_written_in_commit_order(stack, name)
    await settle(stack, name)
    rows = await stack.repo.list_documents(name, limit=100)
    assert {r.metadata["writer"] for r in rows} == {"fast"}
    await assert_store_mirrors_postgres(stack, name)
    assert {f.value: f.count for f in await stack.search.facets(name, "writer")} == {"fast": len(ids)}


async def test_inserters_of_the_same_new_ids_count_each_insert_once(stack: Stack) -> None:
    name = "inserters"
    await stack.collections.create(name)
    dims = (await stack.repo.require_collection(name)).dimensions
    ids = [f"new-{i:03d}" for i in range(50)]
    rng = random.Random(5)

    async def insert(writer: int) -> Any:
        order = ids[:]
        rng.shuffle(order)
        vectors = random_vectors(len(order), dims, seed=writer)
        docs = [
            {"id": i, "text": text_of(str(writer), 0, n), "metadata": {"writer": f"w{writer}"}, "vector": vectors[n].tolist()}
            for n, i in enumerate(order)
        ]
        await asyncio.sleep(rng.uniform(0, 0.02))
        return await stack.ingest.ingest(name, docs)

    reports = await asyncio.gather(*(insert(w) for w in range(WRITERS)), return_exceptions=True)
    assert [r for r in reports if isinstance(r, BaseException)] == []
    assert sum(r.inserted for r in reports) == len(ids)
    assert sum(r.inserted + r.updated + r.unchanged for r in reports) == WRITERS * len(ids)
    assert all(r.failed == 0 for r in reports)
    await settle(stack, name)
    await assert_store_mirrors_postgres(stack, name, semantic=False)


async def test_chunked_writers_and_deleters_leave_every_chunk_of_the_latest_version(stack: Stack) -> None:
    name = "chunked"
    await stack.collections.create(name, chunking=Chunking(max_tokens=24, overlap_tokens=4))
    ids = [f"c-{i:02d}" for i in range(12)]
    rng = random.Random(9)
    service = ingest_service(stack, DelayedEmbedder(stack.embedder, rng))

    def docs(writer: int) -> list[dict[str, Any]]:
        sentences = rng.randint(1, 6)  # another number of chunks every time
        body = " ".join(f"Sentence {s} of writer {writer} talks about the harbor and the old boats." for s in range(sentences))
        return [{"id": i, "text": body + " " + text_of(str(writer), 0, n), "metadata": {"writer": f"w{writer}"}} for n, i in enumerate(ids)]

    async def delete() -> int:
        await asyncio.sleep(rng.uniform(0, 0.05))
        return await service.delete_documents(name, rng.sample(ids, 4))

    calls = [service.ingest(name, docs(w)) for w in range(6)] + [delete() for _ in range(3)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    await settle(stack, name)
    rows = await stack.repo.list_documents(name, limit=100)
    points = await store_points(stack, name)
    assert sorted(points) == sorted(r.id for r in rows)
    for row in rows:
        assert {p.version for p in points[row.id]} == {row.content_hash}
        hits = (await stack.search.search(name, query=row.text.rsplit(" ", 1)[-1].rstrip("."), mode="KEYWORD", limit=1)).hits
        assert [h.id for h in hits] == [row.id]
        assert hits[0].chunk is not None and row.text[hits[0].chunk.start : hits[0].chunk.end] == hits[0].chunk.text


def tenant(name: str) -> Principal:
    return Principal(kind="key", key_id=f"key-{name}", name=name, scopes=frozenset({Scope.WRITE}), filter={"tenant": {"eq": name}})


async def test_racing_tenants_on_new_ids_each_id_goes_to_exactly_one(stack: Stack) -> None:
    name = "tenants"
    await stack.collections.create(name)
    ids = [f"t-{i:02d}" for i in range(20)]
    rng = random.Random(3)
    service = ingest_service(stack, DelayedEmbedder(stack.embedder, rng))

    async def write(who: str) -> Any:
        order = ids[:]
        rng.shuffle(order)
        docs = [{"id": i, "text": text_of(who, 0, int(i[2:])), "metadata": {"tenant": who, "writer": who}} for i in order]
        return await service.ingest(name, docs, principal=tenant(who))

    for _ in range(3):
        reports = dict(zip("ab", await asyncio.gather(write("a"), write("b"))))
        acknowledged = {who: set(r.ids) for who, r in reports.items()}
        refused = {who: {e.id for e in r.errors if e.code == "FORBIDDEN"} for who, r in reports.items()}
        assert acknowledged["a"] | acknowledged["b"] == set(ids)
        assert acknowledged["a"] & acknowledged["b"] == set(), "an id acknowledged to both tenants"
        assert refused["a"] == acknowledged["b"] and refused["b"] == acknowledged["a"]
        rows = {r.id: r for r in await stack.repo.list_documents(name, limit=100)}
        for who, owned in acknowledged.items():
            assert {i for i in owned if rows[i].metadata["tenant"] == who} == owned
    await settle(stack, name)
    await assert_store_mirrors_postgres(stack, name)


async def test_a_tenant_cannot_place_a_document_in_another_tenants_view(stack: Stack) -> None:
    name = "planting"
    await stack.collections.create(name)
    a = tenant("a")
    attempts = [
        {"tenant": ["a", "b"]},
        {"tenant": [["a"], ["b"]]},
        {"tenant": []},
        {"other": "a"},
        {"tenant": [{"x": "b"}, "a"]},
    ]
    docs = [{"id": f"p{n}", "text": f"planted note {n}", "metadata": m} for n, m in enumerate(attempts)]
    docs.append({"id": "ok", "text": "an honest note", "metadata": {"tenant": ["a", "a"]}})
    report = await stack.ingest.ingest(name, docs, principal=a)
    assert sorted(e.index for e in report.errors if e.code == "FORBIDDEN") == list(range(len(attempts)))
    assert report.ids == ["ok"]
    b = Principal(kind="key", key_id="key-b", name="b", scopes=frozenset({Scope.READ}), filter={"tenant": {"eq": "b"}})
    seen_by_b = await stack.search.search(name, query="planted note", limit=10, principal=b)
    assert seen_by_b.hits == []
    assert await stack.search.facets(name, "tenant", principal=b) == []


async def test_the_reconciler_repairs_points_that_disagree_with_their_rows(stack: Stack) -> None:
    name = "repair"
    await stack.collections.create(name)
    dims = (await stack.repo.require_collection(name)).dimensions
    docs = [{"id": f"r{i}", "text": text_of("good", 0, i), "metadata": {"writer": "good"}} for i in range(6)]
    await stack.ingest.ingest(name, docs)
    # What a writer without versioned writes could leave behind: a point of another version,
    # and a point written before points carried versions.
    vectors = random_vectors(2, dims, seed=2)
    await stack.store.upsert(
        name,
        [
            VectorPoint(id=point_id(name, "r0"), vector=vectors[0].tolist(), payload={"doc_id": "r0", "metadata": {"writer": "stale"}, "version": "h:old"}),
            VectorPoint(id=point_id(name, "r1"), vector=vectors[1].tolist(), payload={"doc_id": "r1", "metadata": {"writer": "stale"}}),
        ],
    )
    assert {f.value for f in await stack.search.facets(name, "writer")} == {"good", "stale"}
    await settle(stack, name)
    await assert_store_mirrors_postgres(stack, name)


async def test_a_document_ingested_while_the_sweep_removes_its_orphan_point_is_written_again(stack: Stack) -> None:
    name = "sweeprace"
    await stack.collections.create(name)
    dims = (await stack.repo.require_collection(name)).dimensions
    vector = random_vectors(1, dims, seed=4)[0].tolist()
    # A point whose row is gone: the sweep removes it. Just before it does, the document is
    # ingested again (row first, then its point): the removal must not leave it without one.
    await stack.store.upsert(name, [VectorPoint(id=point_id(name, "x"), vector=vector, payload={"doc_id": "x", "metadata": {}, "version": "h:gone"})])
    inner_delete = stack.store.inner.delete

    async def delete_after_a_new_ingest(collection: str, ids: Any) -> None:
        if collection == name:
            stack.store.inner.delete = inner_delete  # once
            await stack.ingest.ingest(name, [{"id": "x", "text": text_of("late", 0, 1), "metadata": {"writer": "late"}}])
        await inner_delete(collection, ids)

    stack.store.inner.delete = delete_after_a_new_ingest
    await settle(stack, name)
    await assert_store_mirrors_postgres(stack, name)


def test_point_refs_read_versions_only_when_they_are_strings() -> None:
    assert point_ref("p", {"doc_id": "d", "version": "h:1"}).version == "h:1"
    assert point_ref("p", {"doc_id": "d", "version": 3}).version is None
    assert point_ref("p", None) == ("p", "None", None)


async def test_conflicts_between_clients_are_never_internal(stack: Stack) -> None:
    """Deletes, ingests and re-ingests of overlapping ids at once: every call answers, and any
    error it carries is an answer per item, never INTERNAL or DEPENDENCY_UNAVAILABLE."""
    name = "mixed"
    await stack.collections.create(name)
    rng = random.Random(11)
    ids = [f"m-{i:02d}" for i in range(20)]
    service = ingest_service(stack, DelayedEmbedder(stack.embedder, rng))

    async def call(n: int) -> Any:
        if n % 3 == 2:
            return await service.delete_documents(name, rng.sample(ids, 8))
        order = rng.sample(ids, 15)
        return await service.ingest(name, [{"id": i, "text": text_of(str(n), 1, k), "metadata": {"writer": f"w{n}"}} for k, i in enumerate(order)])

    results = await asyncio.gather(*(call(n) for n in range(12)), return_exceptions=True)
    codes = [r.code for r in results if isinstance(r, CitadelError)]
    assert [r for r in results if isinstance(r, BaseException) and not isinstance(r, CitadelError)] == []
    assert "INTERNAL" not in codes and "DEPENDENCY_UNAVAILABLE" not in codes
    await settle(stack, name)
    await assert_store_mirrors_postgres(stack, name)


async def test_two_replicas_writing_the_same_ids_converge(stack: Stack) -> None:
    """Two gateway replicas (each its own PostgreSQL pool, ingest service and reconciler) on one
    database and one vector store, writing the same ids while both reconcilers run."""
    from app.adapters.postgres import PostgresRepo
    from app.adapters.postgres_pool import create_pool
    from app.services.reconciler import Reconciler

    name = "replicas"
    await stack.collections.create(name)
    pool = await create_pool(stack.settings.database_url, max_size=4)
    try:
        other_repo = PostgresRepo(pool)
        rng = random.Random(17)
        replicas = [
            IngestService(stack.settings, stack.repo, stack.store, DelayedEmbedder(stack.embedder, rng), stack.models),
            IngestService(stack.settings, other_repo, stack.store, DelayedEmbedder(stack.embedder, rng), stack.models),
        ]
        other_reconciler = Reconciler(other_repo, stack.store, stack.embedder, 0.05, stack.settings, stack.models)
        ids = [f"r-{i:02d}" for i in range(20)]

        async def write(writer: int) -> Any:
            docs = [{"id": i, "text": text_of(str(writer), 0, int(i[2:])), "metadata": {"writer": f"w{writer}"}} for i in rng.sample(ids, len(ids))]
            return await replicas[writer % 2].ingest(name, docs)

        work = [write(w) for w in range(6)] + [stack.reconciler.run_once(), other_reconciler.run_once()]
        results = await asyncio.gather(*work, return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert sum(r.inserted for r in results[:6]) == len(ids)
        await assert_written_in_commit_order(stack, name)
        await settle(stack, name)
        await assert_store_mirrors_postgres(stack, name)
    finally:
        await pool.close()
