"""reindexCollection on the real stack (PostgreSQL, Qdrant Edge or local mode, Redis, the bundled
model and its ONNX export as the new model): searches, paging, ingests, updates and deletes run
the whole time without one error; documents written during the job (one by a writer that read
the collection before the job began) are in the new version; the top results agree before and
after; the previous version is removed. A cancelled reindex leaves the collection as it was, and
a reindex cut by a shutdown finishes after the restart."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from app.adapters.postgres import DocumentWrite
from app.domain.access import INTERNAL
from app.domain.jobs import Job, JobKind, JobState
from app.errors import NotFound
from app.services.collections import CollectionService
from app.services.embedding import EmbeddingService
from tests.support.local_models import LocalModels
from app.domain.ids import point_id
from app.services.indexing import ToIndex, index_documents
from app.services.ingest import IngestService
from app.services.reconciler import Reconciler
from app.services.reindex import Reindexer, ReindexTarget
from app.services.search import SearchService
from tests.integration.test_concurrent_writes import assert_store_mirrors_postgres, settle
from tests.integration.test_jobs import final_state
from tests.integration.test_jobs import job_service as ingest_jobs
from tests.support.models import minilm_dir, minilm_onnx_dir, minilm_spec  # noqa: F401  (fixtures)
from tests.support.stack import STORE_KINDS, Stack, model_runtime, open_stack  # noqa: F401  (fixture)

ONNX_MODEL = "test/all-MiniLM-L6-v2-onnx"
TOPICS = ("espresso machine descaling", "mountain bike tyres", "sourdough starter feeding", "garden tomato blight")
QUERIES = ("how do I descale my coffee machine", "bike tyre pressure", "feeding a sourdough starter", "tomato leaves disease")


def text(topic: int, i: int, writer: str = "seed", round_: int = 0) -> str:
    return f"Note {i} about {TOPICS[topic]} by {writer} in round {round_}; code zq{writer}r{round_}n{i}."


@pytest.fixture(params=STORE_KINDS)
async def stack(request, model_runtime, tmp_path: Path, minilm_onnx_dir: Path) -> Any:  # noqa: F811
    """The stack with the ONNX export of the bundled model in its catalog (fastembed backend). The
    previous version retires 2 s after the switch (30 s by default): a search that read the
    collection just before the switch must finish on it first, as in production."""
    async with open_stack(model_runtime, request.param, tmp_path, embed_batch=16) as opened:
        onnx = minilm_spec(name=ONNX_MODEL, backend="fastembed", package=None, path=minilm_onnx_dir)
        settings = opened.settings.model_copy(
            update={
                "models": {**opened.settings.models, ONNX_MODEL: onnx},
                "ingest": opened.settings.ingest.model_copy(update={"job_batch_documents": 8, "reindex_retire_seconds": 2.0}),
                "downloads": opened.settings.downloads.model_copy(update={"progress_interval_seconds": 0.0}),
            }
        )
        models = LocalModels(settings, model_runtime.pool)
        embedder = EmbeddingService(settings, model_runtime.pool, opened.embedder.cache, models)
        yield dataclasses.replace(
            opened,
            settings=settings,
            embedder=embedder,
            models=models,
            collections=CollectionService(settings, opened.repo, opened.store, models),
            ingest=IngestService(settings, opened.repo, opened.store, embedder, models),
            search=SearchService(settings, opened.repo, opened.store, embedder, models),
            reconciler=Reconciler(opened.repo, opened.store, embedder, 0.05, settings, models),
        )


@asynccontextmanager
async def job_service(stack: Stack, replica: str = "reindex") -> AsyncIterator[Any]:
    async with ingest_jobs(stack, replica) as service:
        service.reindexer = Reindexer(stack.settings, stack.repo, stack.store, stack.embedder, stack.models)
        service.settings = service.settings.model_copy(update={"ingest": stack.settings.ingest})
        yield service


async def top_ids(stack: Stack, name: str, query: str, mode: str = "SEMANTIC") -> list[str]:
    return [h.id for h in (await stack.search.search(name, query=query, limit=5, mode=mode, filter={"writer": {"eq": "seed"}})).hits]


async def seed(stack: Stack, name: str, count: int) -> list[dict]:
    docs = [{"id": f"doc-{i:03d}", "text": text(i % 4, i), "metadata": {"writer": "seed"}} for i in range(count)]
    report = await stack.ingest.ingest(name, docs)
    assert report.failed == 0
    return docs


async def test_a_reindex_under_mixed_load_fails_nothing_and_keeps_every_write(stack: Stack) -> None:
    name = "moving"
    await stack.collections.create(name, indexed_fields=["writer"])
    docs = await seed(stack, name, 96)
    before = {q: await top_ids(stack, name, q) for q in QUERIES}
    stale = await stack.repo.get_collection(name)  # a writer that reads the collection before the job begins
    failures: list[BaseException] = []
    written: dict[str, str] = {}  # id -> text of every write made while the job ran
    deleted: set[str] = set()
    stop = asyncio.Event()

    async def searching(seed_: int) -> None:
        rng = random.Random(seed_)
        while not stop.is_set():
            try:
                mode = rng.choice(["SEMANTIC", "KEYWORD", "HYBRID"])
                await stack.search.search(name, query=rng.choice(QUERIES), limit=5, mode=mode)
                page = await stack.repo.list_documents(name, f"doc-{rng.randrange(90):03d}", 10)  # paging
                assert page
            except BaseException as exc:  # noqa: BLE001  every failure counts
                failures.append(exc)
                return  # one is enough to fail the test (and a searcher failing at once must not spin)

    async def writing() -> None:
        round_ = 0
        while not stop.is_set():
            round_ += 1
            try:
                new = [{"id": f"new-{round_}-{k}", "text": text(k % 4, 500 + k, "w", round_), "metadata": {"writer": "w"}} for k in range(3)]
                changed = {"id": f"doc-{(round_ * 7) % 96:03d}", "text": text(0, round_, "u", round_), "metadata": {"writer": "u"}}
                report = await stack.ingest.ingest(name, [*new, changed])
                assert report.failed == 0, report.errors
                written.update({d["id"]: d["text"] for d in [*new, changed]})
                deleted.discard(changed["id"])
                gone = f"doc-{(round_ * 11 + 3) % 96:03d}"
                if gone not in written:
                    await stack.ingest.delete_documents(name, [gone])
                    deleted.add(gone)
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)
                return

    async with job_service(stack) as service:
        job = await service.start_reindex(name, ONNX_MODEL, None, principal=INTERNAL)
        assert job.kind is JobKind.REINDEX and job.documents_total == 96
        loads = [asyncio.create_task(searching(s)) for s in range(2)] + [asyncio.create_task(writing())]
        events: list[Job] = []
        async with service.progress(job.id, None, INTERNAL) as changes:
            async for change in changes:
                events.append(change)
                if change.documents_done >= 8 and "a-late" not in written:
                    # Indexed with the collection as it was before the job, under an id the job's
                    # scan has passed: the write reaches the old version only, and the job's
                    # backlog brings it into the new one.
                    late = "A late note about garden tomato blight, code zqlate."
                    write = DocumentWrite("a-late", late, {"writer": "late"}, "h-late", point_id(name, "a-late"))
                    await stack.repo.upsert_documents(name, [write])
                    await index_documents(
                        stack.embedder, stack.store, stack.repo, stale, [ToIndex("a-late", late, {"writer": "late"}, "h-late")], stack.settings
                    )
                    written["a-late"] = late
        stop.set()
        await asyncio.gather(*loads)
        await asyncio.gather(*service._retiring)

    assert not failures, failures[:3]
    assert any(i.startswith("new-") for i in written), "the writers ran while the job did"
    ended = events[-1]
    assert ended.state is JobState.SUCCEEDED, ended
    for a, b in zip(events, events[1:]):
        assert b.documents_done >= a.documents_done and (b.percent or 0) >= (a.percent or 0)
    row = await stack.repo.get_collection(name)
    assert row.model == ONNX_MODEL and row.next is None and row.store_name != name
    assert not await stack.store.collection_exists(stale.store_name), "the previous version is removed"
    assert await stack.repo.reindex_backlog(name, 10) == []

    await settle(stack, name)
    for doc_id, body in written.items():
        hits = (await stack.search.search(name, query=body, limit=1)).hits
        assert [h.id for h in hits] == [doc_id], f"{doc_id}, written during the job, is not found in the new version"
    for gone in deleted:
        assert await stack.repo.get_document(name, gone) is None
    rows = await stack.repo.list_documents(name, limit=1_000)
    assert {r.id for r in rows} == ({d["id"] for d in docs} | set(written)) - deleted
    for q in QUERIES:  # the same model exported to ONNX: the same ranking of the untouched documents
        untouched_before = [i for i in before[q] if i not in written and i not in deleted]
        after = [i for i in await top_ids(stack, name, q) if i in untouched_before]
        assert after == untouched_before, (q, before[q], after)


async def test_a_cancelled_reindex_leaves_the_collection_as_it_was_and_a_shutdown_one_resumes(stack: Stack) -> None:
    name = "staying"
    await stack.collections.create(name)
    await seed(stack, name, 64)
    before = {q: await top_ids(stack, name, q) for q in QUERIES}
    async with job_service(stack) as service:
        job = await service.start_reindex(name, ONNX_MODEL, None, principal=INTERNAL)
        async with service.progress(job.id, None, INTERNAL) as changes:
            async for change in changes:
                if change.documents_done >= 8:
                    next_store = (await stack.repo.get_collection(name)).next.vectors
                    await service.cancel(job.id, INTERNAL)
        running = service._tasks.get(job.id)
        if running is not None:
            await asyncio.wait_for(running, 60)
    row = await stack.repo.get_collection(name)
    assert row.next is None and row.model == minilm_spec().name and row.store_name == name
    assert not await stack.store.collection_exists(next_store), "the abandoned version is removed"
    assert {q: await top_ids(stack, name, q) for q in QUERIES} == before

    # A shutdown mid-way keeps the job RUNNING; the replica's next start finishes it.
    async with job_service(stack) as first:
        job = await first.start_reindex(name, ONNX_MODEL, None, principal=INTERNAL)
        async with first.progress(job.id, None, INTERNAL) as changes:
            async for change in changes:
                if change.documents_done >= 16:
                    break
    async with job_service(stack) as second:
        ended = await final_state(second, job.id)
        await asyncio.gather(*second._retiring)
    assert ended.state is JobState.SUCCEEDED and ended.documents_done >= 64, ended
    row = await stack.repo.get_collection(name)
    assert row.model == ONNX_MODEL and row.next is None
    await settle(stack, name)
    await assert_store_mirrors_postgres(stack, name)


async def test_a_silent_replicas_reindex_is_taken_over_by_another_replica(stack: Stack) -> None:
    """A REINDEX job needs no files: any replica takes it over once the one running it is silent
    (here: stopped after a page, never heart-beating again), and finishes it from its cursor."""
    name = "adopted"
    await stack.collections.create(name)
    await seed(stack, name, 48)
    async with job_service(stack, "stopped") as stopped:
        job = await stopped.start_reindex(name, ONNX_MODEL, None, principal=INTERNAL)
        async with stopped.progress(job.id, None, INTERNAL) as changes:
            async for change in changes:
                if change.documents_done >= 8:
                    break
    assert (await stack.repo.get_collection(name)).next is not None, "stopped mid-way"
    async with job_service(stack, "other") as other:
        assert await other.adopt_orphans(60.0) == [job.id]
        ended = await final_state(other, job.id)
        await asyncio.gather(*other._retiring)
    assert (ended.state, ended.replica) == (JobState.SUCCEEDED, "other"), ended
    row = await stack.repo.get_collection(name)
    assert row.model == ONNX_MODEL and row.next is None
    # A slower runner of the same job failing after the switch abandons its target: the version
    # the collection now reads is kept.
    reindexer = Reindexer(stack.settings, stack.repo, stack.store, stack.embedder, stack.models)
    await reindexer.abandon(name, ReindexTarget.from_json(ended.metadata))
    assert await stack.store.collection_exists(row.store_name)
    await settle(stack, name)
    await assert_store_mirrors_postgres(stack, name)


class _ReadBeforeTheSwitch:
    """The real repository, except that the next read of the collection returns the row as it was
    before a reindex switched it: a search that began just before the switch."""

    def __init__(self, repo: Any, stale: Any) -> None:
        self.repo, self.stale = repo, stale

    async def require_collection(self, name: str) -> Any:
        row, self.stale = self.stale, None
        return row if row is not None else await self.repo.require_collection(name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.repo, attr)


async def test_a_search_that_read_the_collection_before_the_switch_answers_from_the_new_version(stack: Stack) -> None:
    name = "switched"
    await stack.collections.create(name, indexed_fields=["writer"])
    await seed(stack, name, 24)
    stale = await stack.repo.get_collection(name)
    before = {q: await top_ids(stack, name, q) for q in QUERIES}
    async with job_service(stack) as service:
        job = await service.start_reindex(name, ONNX_MODEL, None, principal=INTERNAL)
        assert (await final_state(service, job.id)).state is JobState.SUCCEEDED
        await asyncio.gather(*service._retiring)
    assert not await stack.store.collection_exists(stale.store_name), "the previous version is removed"

    for q in QUERIES:
        late = SearchService(stack.settings, _ReadBeforeTheSwitch(stack.repo, stale), stack.store, stack.embedder, stack.models)
        outcome = await late.search(name, query=q, limit=5, filter={"writer": {"eq": "seed"}})
        assert [h.id for h in outcome.hits] == before[q], q
    late = SearchService(stack.settings, _ReadBeforeTheSwitch(stack.repo, stale), stack.store, stack.embedder, stack.models)
    facets = await late.facets(name, "writer")
    assert [(f.value, f.count) for f in facets] == [("seed", 24)]

    # A collection that is gone is still NOT_FOUND, after one look at its row.
    await stack.collections.delete(name)
    late = SearchService(stack.settings, _ReadBeforeTheSwitch(stack.repo, stale), stack.store, stack.embedder, stack.models)
    with pytest.raises(NotFound):
        await late.search(name, query=QUERIES[0], limit=5)
