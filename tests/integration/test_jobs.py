"""JobService on the real stack (PostgreSQL, Qdrant Edge or local mode, the bundled model, Redis):
jobs and plain ingest writing the same ids at once leave PostgreSQL and the vector store agreeing;
two replicas bridged by Redis see each other's job events, and a cancel made on one stops the job
running on the other."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app.adapters.api_keys import ApiKeyRepo
from app.adapters.job_events import JobEventBus
from app.adapters.postgres_jobs import PostgresJobRepo
from app.adapters.postgres_replicas import PostgresReplicaStore
from app.adapters.redis_events import RedisEventBridge
from app.domain.access import INTERNAL
from app.domain.jobs import Job, JobState
from app.errors import BadInput
from app.services import jobs as jobs_module
from app.services.jobs import JobService
from app.services.keys import KeyService
from tests.integration.test_concurrent_writes import (
    DelayedEmbedder,
    assert_store_mirrors_postgres,
    ingest_service,
    settle,
    text_of,
)
from tests.support.services import redis_url
from tests.support.stack import STORE_KINDS, Stack, model_runtime, open_stack  # noqa: F401  (fixture)

IDS = 30


@pytest.fixture(params=STORE_KINDS)
async def stack(request, model_runtime, tmp_path: Path) -> Any:  # noqa: F811
    async with open_stack(model_runtime, request.param, tmp_path, embed_batch=16) as opened:
        yield opened


@asynccontextmanager
async def job_service(
    stack: Stack, replica: str, embedder: Any = None, channel: str | None = None, at_once: int = 2, max_errors: int = 1_000,
    data_dir: str | None = None,
) -> AsyncIterator[JobService]:
    """A replica's JobService: its own data dir (or replica `data_dir`'s), the stack's database,
    events bridged by Redis on `channel` when given."""
    settings = stack.settings.model_copy(
        update={
            "replica_id": replica,
            "data_dir": stack.settings.data_dir / (data_dir or replica),
            "ingest": stack.settings.ingest.model_copy(update={"job_batch_documents": 8, "jobs_at_once": at_once, "job_max_errors": max_errors}),
            "downloads": stack.settings.downloads.model_copy(update={"progress_interval_seconds": 0.0}),
        }
    )
    bus = JobEventBus()
    redis = Redis.from_url(redis_url())
    bridge = RedisEventBridge(bus, redis, channel, decode=Job.from_json) if channel else None
    if bridge is not None:
        await bridge.start()
    ingest = ingest_service(stack, embedder or stack.embedder)
    service = JobService(
        settings, PostgresJobRepo(stack.repo.pool), stack.repo, ingest, stack.embedder,
        KeyService(settings, ApiKeyRepo(stack.repo.pool)), bus, stack.models,
    )  # fmt: skip
    await service.start()
    try:
        yield service
    finally:
        await service.close()
        if bridge is not None:
            await bridge.close()
        await bus.close()
        await redis.aclose()


async def final_state(service: JobService, job_id: str) -> Job:
    async with service.progress(job_id, None, INTERNAL) as changes:
        async for job in changes:
            last = job
    assert last.state.finished
    return last


def writes(writer: str, ids: list[str]) -> list[dict]:
    return [{"id": i, "text": text_of(writer, 0, int(i[4:])), "metadata": {"writer": writer}} for i in ids]


async def test_jobs_and_ingest_writing_the_same_ids_leave_postgres_and_the_store_agreeing(stack: Stack) -> None:
    name = "job-race"
    await stack.collections.create(name)
    rng = random.Random(5)
    ids = [f"doc-{i:03d}" for i in range(IDS)]
    async with job_service(stack, "race", DelayedEmbedder(stack.embedder, rng)) as service:
        first = await service.start_documents(name, writes("a", rng.sample(ids, IDS)), principal=INTERNAL)
        second = await service.start_documents(name, writes("b", rng.sample(ids, IDS)), principal=INTERNAL)
        plain = ingest_service(stack, DelayedEmbedder(stack.embedder, rng))
        report, *ended = await asyncio.gather(
            plain.ingest(name, writes("c", rng.sample(ids, IDS))), final_state(service, first.id), final_state(service, second.id)
        )
    assert report.failed == 0
    for job in ended:
        assert job.state is JobState.SUCCEEDED and (job.documents_done, job.documents_failed) == (IDS, 0), job
    assert await stack.repo.count_documents(name) == IDS
    await settle(stack, name)
    await assert_store_mirrors_postgres(stack, name)


async def test_job_events_and_cancels_travel_between_replicas(stack: Stack) -> None:
    name = "job-replicas"
    await stack.collections.create(name)
    channel = f"citadel-test:{uuid.uuid4().hex}:job-events"
    started = asyncio.Event()

    async def slow_until_watched(texts: list[str]) -> None:
        await started.wait()  # nothing is embedded until the other replica watches

    slow = DelayedEmbedder(stack.embedder, random.Random(1), before=slow_until_watched)
    async with job_service(stack, "replica-a", slow, channel) as a, job_service(stack, "replica-b", channel=channel) as b:
        job = await a.start_documents(name, writes("a", [f"doc-{i:03d}" for i in range(200)]), principal=INTERNAL)
        seen: list[Job] = []
        async with b.progress(job.id, None, INTERNAL) as changes:
            started.set()
            async for change in changes:
                seen.append(change)
                if change.documents_done >= 16 and change.state is JobState.RUNNING:
                    cancelled = await b.cancel(job.id, INTERNAL)  # on the replica that does not run it
                    assert cancelled.state is JobState.CANCELLED
        assert seen[-1].state is JobState.CANCELLED and seen[-1].replica == "replica-a"
        assert any(s.documents_done >= 16 for s in seen), "replica b saw replica a's progress"
        running = a._tasks.get(job.id)
        if running is not None:
            await asyncio.wait_for(running, 60)  # replica a's task stops (it ends quietly when cancelled)
        stopped_at = (await a.get(job.id, INTERNAL)).documents_done
        assert stopped_at < 200
        assert not (a.jobs_dir / job.id).exists()


async def test_a_cancel_heard_twice_lets_the_job_end_quietly(stack: Stack, monkeypatch) -> None:
    """The CANCELLED event can reach the replica running the job more than once (its own cancel,
    another replica's event): the second must not cut the job's cleanup short with CancelledError."""
    name = "job-cancel-twice"
    await stack.collections.create(name)
    never = asyncio.Event()

    async def held(texts: list[str]) -> None:
        await never.wait()  # the job stays on its first batch until cancelled

    cleaning, release = threading.Event(), threading.Event()
    remove = shutil.rmtree

    def slow_remove(path: Any, ignore_errors: bool = False) -> None:
        if "jobs" in Path(path).parts:  # the job's own files: hold the cleanup open
            cleaning.set()
            release.wait(60)
        remove(path, ignore_errors)

    monkeypatch.setattr(jobs_module.shutil, "rmtree", slow_remove)
    async with job_service(stack, "twice", DelayedEmbedder(stack.embedder, random.Random(2), before=held)) as service:
        job = await service.start_documents(name, writes("a", [f"doc-{i:03d}" for i in range(8)]), principal=INTERNAL)
        task = service._tasks[job.id]
        assert (await service.cancel(job.id, INTERNAL)).state is JobState.CANCELLED
        await asyncio.to_thread(cleaning.wait, 60)  # the task is removing the job's files
        service._on_event(dataclasses.replace(job, state=JobState.CANCELLED, origin="another-replica"))  # heard again
        release.set()
        assert await asyncio.wait_for(task, 60) is None  # ended quietly, its cleanup done
        assert not (service.jobs_dir / job.id).exists()


async def test_jobs_past_the_replicas_slots_wait_queued_and_a_queued_job_cancels_without_running(stack: Stack) -> None:
    name = "job-queue"
    await stack.collections.create(name)
    release = asyncio.Event()

    async def held(texts: list[str]) -> None:
        await release.wait()

    async with job_service(stack, "queue", DelayedEmbedder(stack.embedder, random.Random(2), before=held), at_once=1) as service:
        first = await service.start_documents(name, writes("a", [f"doc-{i:03d}" for i in range(20)]), principal=INTERNAL)
        second = await service.start_documents(name, writes("b", [f"doc-{i:03d}" for i in range(20, 30)]), principal=INTERNAL)
        third = await service.start_documents(name, writes("c", [f"doc-{i:03d}" for i in range(30, 40)]), principal=INTERNAL)
        async with service.progress(first.id, None, INTERNAL) as changes:
            async for change in changes:
                if change.state is JobState.RUNNING:
                    break
        assert (await service.get(second.id, INTERNAL)).state is JobState.QUEUED
        cancelled = await service.cancel(third.id, INTERNAL)
        assert cancelled.state is JobState.CANCELLED
        release.set()
        assert (await final_state(service, first.id)).documents_done == 20
        assert (await final_state(service, second.id)).documents_done == 10
        third_now = await service.get(third.id, INTERNAL)
        assert third_now.state is JobState.CANCELLED and third_now.documents_done == 0
        assert not (service.jobs_dir / third.id).exists()
    assert await stack.repo.count_documents(name) == 30


@asynccontextmanager
async def a_job_held_in_the_model(
    stack: Stack, replica: str, name: str, seed: int
) -> AsyncIterator[tuple[JobService, Job, asyncio.Event]]:
    """Replica `replica` running a 40-document job into a new collection `name`, its first batch
    held in the model until the event is set; the service stops (the job RUNNING) on exit."""
    await stack.collections.create(name)
    release = asyncio.Event()

    async def held(texts: list[str]) -> None:
        await release.wait()

    ids = [f"doc-{i:03d}" for i in range(40)]
    async with job_service(stack, replica, DelayedEmbedder(stack.embedder, random.Random(seed), before=held)) as service:
        job = await service.start_documents(name, writes("a", ids), principal=INTERNAL)
        async with service.progress(job.id, None, INTERNAL) as changes:
            async for change in changes:
                if change.state is JobState.RUNNING:
                    break
        yield service, job, release


async def test_two_runners_of_one_job_count_each_batch_once(stack: Stack) -> None:
    """Two processes with the same replica id resume the same job at once: a batch's commit holds
    only while the job's cursor is where that batch began, so the slower runner's batch is not
    counted again (and it leaves the job to the other)."""
    name = "job-twice"
    async with a_job_held_in_the_model(stack, "same", name, seed=3) as (first, job, release):
        slow = DelayedEmbedder(stack.embedder, random.Random(4))  # a little slower: the first runner's batch lands meanwhile
        async with job_service(stack, "same", slow) as second:  # resumes the RUNNING job of replica "same"
            async with second.progress(job.id, None, INTERNAL) as changes:
                async for change in changes:
                    if change.documents_done >= 8:
                        release.set()  # the first runner's batch goes on while the second runs
                    ended = change
            slower = first._tasks.get(job.id)
            if slower is not None:
                await asyncio.wait_for(slower, 60)
    assert ended.state is JobState.SUCCEEDED
    again = await PostgresJobRepo(stack.repo.pool).get(job.id)
    assert (again.state, again.documents_done, again.documents_failed) == (JobState.SUCCEEDED, 40, 0)
    assert await stack.repo.count_documents(name) == 40


async def test_a_job_keeps_at_most_job_max_errors_and_counts_every_failure(stack: Stack) -> None:
    name = "job-errors"
    await stack.collections.create(name)
    good = writes("a", [f"doc-{i:03d}" for i in range(5)])
    bad = [{"id": f"bad-{i}", "text": "   "} for i in range(12)]  # blank: refused one by one
    async with job_service(stack, "errors", max_errors=3) as service:
        job = await service.start_documents(name, [*bad[:6], *good, *bad[6:]], principal=INTERNAL)
        ended = await final_state(service, job.id)
        assert ended.state is JobState.SUCCEEDED
        assert (ended.documents_done, ended.documents_failed) == (5, 12)
        assert [e.index for e in ended.errors] == [0, 1, 2]  # the first ones, capped
        assert all(e.code == "BAD_INPUT" for e in ended.errors)
        with pytest.raises(BadInput, match="first must be 0 to 100"):
            await service.list(INTERNAL, first=101)
        with pytest.raises(BadInput, match="first must be 0 to 100"):
            await service.list(INTERNAL, first=-1)
        assert [j.id for j in await service.list(INTERNAL, collection=name, first=100)] == [job.id]
    assert await stack.repo.count_documents(name) == 5



class HeldFirstBatch:
    """The job's ingest, with writer a's batch held until writer b's batch has landed (or 3 s
    passed): without the wait for a batch in flight that shares ids, a's older lines would be
    written after b's newer ones."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.b_landed = asyncio.Event()

    async def ingest(self, collection: str, documents: list[dict], **kwargs: Any) -> Any:
        writers = {(d["metadata"] or {}).get("writer") for d in documents}
        if writers == {"a"}:
            try:
                await asyncio.wait_for(self.b_landed.wait(), 3.0)  # it never lands first: the timeout is the pass
            except TimeoutError:
                pass
        report = await self.inner.ingest(collection, documents, **kwargs)
        if "b" in writers:
            self.b_landed.set()
        return report


async def test_batches_in_flight_commit_in_order_and_a_later_line_of_an_id_wins(stack: Stack) -> None:
    """Two batches are ingested at once (one embeds while the other is stored): a line rewriting
    an id of the batch before it waits for that batch, so the later line is what stays, and the
    errors of every batch keep their ordinals in the file."""
    name = "job-pipeline"
    await stack.collections.create(name)
    ids = [f"doc-{i:03d}" for i in range(8)]
    first, later = writes("a", ids), writes("b", ids[::-1])  # batch 1, then batch 2 rewriting every id
    lines = [*first, *later, {"id": "blank", "text": "  "}, *writes("c", ["doc-100"])]
    async with job_service(stack, "pipeline") as service:
        service.ingest = HeldFirstBatch(service.ingest)
        job = await service.start_documents(name, lines, principal=INTERNAL)
        ended = await final_state(service, job.id)
    assert ended.state is JobState.SUCCEEDED, ended
    assert (ended.documents_done, ended.documents_failed) == (17, 1)
    assert [e.index for e in ended.errors] == [16]
    stored = {d.id: d.text for d in await stack.repo.get_documents(name, [*ids, "doc-100"])}
    assert stored == {d["id"]: d["text"] for d in [*later, *writes("c", ["doc-100"])]}  # the last line of each id
    await settle(stack, name)
    await assert_store_mirrors_postgres(stack, name)


async def test_a_silent_replicas_job_is_taken_over_where_its_files_can_be_read(stack: Stack) -> None:
    """Replica "gone" stops with its job RUNNING and never heart-beats again: a replica with its own
    data dir cannot read the job's files and leaves it; one sharing the data dir takes it over
    once the silent replica's heartbeat is older than the limit, and finishes it (each document
    once); a replica that heart-beats keeps its jobs."""
    name = "orphaned"
    async with a_job_held_in_the_model(stack, "gone", name, seed=5) as (_, job, _release):
        pass  # stopped mid-way
    jobs = PostgresJobRepo(stack.repo.pool)
    assert (await jobs.get(job.id)).state is JobState.RUNNING
    heartbeats = PostgresReplicaStore(stack.repo.pool)

    async with job_service(stack, "elsewhere") as elsewhere:  # its own data dir: not the job's files
        assert await elsewhere.adopt_orphans(60.0) == []
    async with job_service(stack, "beside", data_dir="gone") as beside:
        await heartbeats.heartbeat("gone")
        assert await beside.adopt_orphans(60.0) == [], "a replica that heart-beats keeps its jobs"
        await heartbeats.forget_replica("gone")
        assert await beside.adopt_orphans(60.0) == [job.id]
        assert await beside.adopt_orphans(60.0) == [], "taken once"
        ended = await final_state(beside, job.id)
    assert (ended.state, ended.replica, ended.documents_done, ended.documents_failed) == (JobState.SUCCEEDED, "beside", 40, 0)
    assert await stack.repo.count_documents(name) == 40
    await settle(stack, name)
    await assert_store_mirrors_postgres(stack, name)
