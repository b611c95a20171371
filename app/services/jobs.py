"""Jobs: ingests too large for one call (startIngestJob) or made of files (ingestFiles), run in the
background on the replica that took them.

- The job's sources are files under `<data dir>/jobs/<id>/` (uploads streamed there; the documents
  of startIngestJob written there as JSON Lines), removed when the job ends.
- Batches of `CITADEL_INGEST__JOB_BATCH_DOCUMENTS` go through IngestService.ingest, the path of the
  `ingest` mutation (grants, tenant filters, versioned writes, the fair queue), as the key that
  started the job, re-read before every batch (a revoked key stops its jobs), with a share of the
  model of the job's own (Principal.fair_key), so the key's interactive calls are served beside
  it. Three batches of a JSON Lines source are in flight at once (they embed while the ones
  before them are stored; see _ingest_lines), committed in file order. Each batch's counts, errors and the cursor past it are one UPDATE that holds only while the
  job is RUNNING and its cursor is still where the batch began (a second runner never counts a
  batch twice).
- A replica resumes its own QUEUED and RUNNING jobs when it starts (in the background, once
  PostgreSQL answers), from the cursor: a batch cut short by a crash is ingested again, which
  writes nothing new (same ids, same content) and is counted once, with the commit that moves the
  cursor. PostgreSQL out of reach mid-job pauses it the same way.
- A replica silent for three heartbeats (killed, or scaled away) has its jobs taken over by
  another (adopt_orphans): REINDEX jobs, and ingest jobs whose files the other can read.
- cancelJob marks the job CANCELLED in PostgreSQL and publishes it; the replica running it (this
  one, or another through Redis) cancels its task at once.
- Every change is published as the job's whole state (app/adapters/job_events.py), throttled like
  download progress (CITADEL_DOWNLOADS__PROGRESS_INTERVAL_SECONDS; state changes always pass).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger
from prometheus_client import Counter

from app.domain.access import Principal, Scope
from app.domain.jobs import (
    ACTIVE,
    INVALID,
    NDJSON,
    Job,
    JobError,
    JobKind,
    JobSource,
    JobState,
)
from app.errors import BadInput, CitadelError, Conflict, DependencyUnavailable, Forbidden, ModelUnavailable, NotFound, Overloaded
from app.validation import MAX_NAME_CHARS as MAX_ID_CHARS
from app.services.job_sources import (
    SourceProblem,
    copy_stream,
    count_json_lines,
    document_text,
    read_head,
    read_json_lines,
    sniff,
)
from app.services.model_progress import ProgressThrottle
from app.services.reindex import ReindexTarget
from app.settings import Settings
from app.tasks import cancel_and_wait

T = TypeVar("T")
JOBS_FINISHED = Counter("citadel_jobs_finished_total", "Jobs that ended, by final state", ["state"])
MAX_JOBS_LISTED = 100
RETRY_SECONDS = 600.0  # a batch the model or a dependency could not take now is tried again this long, then the job fails
BATCHES_IN_FLIGHT = 3  # batches embedding while the ones before them are stored: the model never waits for storage
RETRYABLE = (Overloaded, DependencyUnavailable, Conflict, ModelUnavailable)


class JobFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobService:
    def __init__(
        self,
        settings: Settings,
        repo: Any,  # app.adapters.postgres_jobs.PostgresJobRepo
        documents: Any,  # app.adapters.postgres.PostgresRepo (the collection rows)
        ingest: Any,  # app.services.ingest.IngestService
        embedder: Any,  # for the token count of one-document files
        keys: Any,  # app.services.keys.KeyService: the key that started a job, as it stands now
        bus: Any,  # app.adapters.job_events.JobEventBus
        models: Any,  # ready_spec(name, wait=True): a resumed job waits for its model to load
        reindexer: Any = None,  # app.services.reindex.Reindexer: REINDEX jobs (reindexCollection)
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.documents = documents
        self.ingest = ingest
        self.embedder = embedder
        self.keys = keys
        self.bus = bus
        self.models = models
        self.reindexer = reindexer
        self.replica = settings.replica
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._slots = asyncio.Semaphore(settings.ingest.jobs_at_once)
        self._throttle = ProgressThrottle(settings.downloads.progress_interval_seconds)
        self._closing = False
        self._resumer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None  # watch_orphans
        self._retiring: set[asyncio.Task[None]] = set()  # previous versions of reindexed collections
        bus.observe(self._on_event)

    @property
    def jobs_dir(self) -> Path:
        return self.settings.data_dir / "jobs"

    @property
    def batch_size(self) -> int:
        return max(1, min(self.settings.ingest.job_batch_documents, self.settings.limits.max_documents_per_ingest))

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume this replica's unfinished jobs, and remove the files of jobs that ended, in the
        background: a start never waits for PostgreSQL (while it is out of reach, this retries)."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        # Only what an earlier process left is swept: a job this one creates meanwhile has its
        # directory before its row, and must keep it.
        left = [d for d in self.jobs_dir.iterdir()]
        self._resumer = asyncio.create_task(self._resume(left), name="citadel-jobs-resume")

    async def _resume(self, left: list[Path]) -> None:
        pause = 1.0
        while True:
            try:
                active = await self.repo.active_ids()
                mine = await self.repo.active_on(self.replica)
                break
            except CitadelError as exc:
                log = logger.warning if pause == 1.0 else logger.debug
                log("jobs of this replica not resumed yet ({}): trying again until PostgreSQL answers", exc.message)
                await asyncio.sleep(pause)
                pause = min(30.0, pause * 2)
        for leftover in left:
            if leftover.name not in active:
                await asyncio.to_thread(shutil.rmtree, leftover, True)
        for job in mine:
            if job.id in self._tasks:  # started by this process meanwhile
                continue
            logger.info("resuming job {} ({} of {} documents done)", job.id, job.documents_seen, job.documents_total)
            self._launch(job.id)

    def watch_orphans(self, silent_seconds: float) -> None:
        """Every `silent_seconds`, take over the jobs of replicas silent that long (adopt_orphans)."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(silent_seconds)
                try:
                    await self.adopt_orphans(silent_seconds)
                except CitadelError as exc:  # PostgreSQL out of reach: the next round tries again
                    logger.debug("jobs of silent replicas not checked ({})", exc.message)
                except Exception:  # a bug must not end the watch for the replica's lifetime
                    logger.exception("jobs of silent replicas not checked")

        self._watcher = asyncio.create_task(watch(), name="citadel-jobs-orphans")

    async def adopt_orphans(self, silent_seconds: float) -> list[str]:
        """Take over the unfinished jobs of replicas that have not heart-beat for `silent_seconds`
        (killed, or scaled away, without coming back under the same id): REINDEX jobs (all they
        need is in PostgreSQL), and ingest jobs whose files this replica can read (a data dir the
        replicas share); an ingest job whose files only its replica holds waits for that replica.
        Should the silent replica still run a job, the cursor's compare-and-set leaves it to one
        runner. The ids taken."""
        adopted: list[str] = []
        for job in await self.repo.orphaned(self.replica, silent_seconds):
            if self._closing or job.id in self._tasks:
                continue
            if job.kind is not JobKind.REINDEX and not await asyncio.to_thread((self.jobs_dir / job.id).is_dir):
                continue
            if await self.repo.adopt(job.id, job.replica, self.replica):
                logger.warning(
                    "job {} of replica {} (silent for over {:g} s) taken over by {}", job.id, job.replica, silent_seconds, self.replica
                )
                self._launch(job.id)
                adopted.append(job.id)
        return adopted

    async def close(self) -> None:
        """Stop the tasks; their jobs stay RUNNING in PostgreSQL and resume at the next start."""
        self._closing = True
        await cancel_and_wait(self._resumer, self._watcher, *self._tasks.values(), *self._retiring, ignore_errors=True)

    # -- creating -----------------------------------------------------------------------------

    async def start_documents(self, collection: str, documents: Sequence[Mapping[str, Any]], *, principal: Principal) -> Job:
        """A job ingesting `documents` (any number): they are written to the job's directory first."""
        await self._admit(collection, principal)
        if not documents:
            raise BadInput("documents is empty", field="documents")
        job_id = str(uuid.uuid4())
        directory = self.jobs_dir / job_id
        try:
            source = await asyncio.to_thread(_write_json_lines, directory, documents)
            return await self._create(job_id, collection, principal, [source], None)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise

    async def start_files(
        self, collection: str, files: Sequence[Any], metadata: Any, *, principal: Principal
    ) -> Job:
        """A job ingesting uploaded files (objects with .filename, .content_type and a binary .file)."""
        await self._admit(collection, principal)
        if not files:
            raise BadInput("files is empty: upload at least one file", field="files")
        if not all(callable(getattr(getattr(f, "file", None), "read", None)) for f in files):
            raise BadInput(
                "files must be uploaded: send a multipart request (the GraphQL multipart request spec) with each "
                "file mapped to its variable, not a value in the JSON body",
                field="files",
            )
        if metadata is not None and not isinstance(metadata, Mapping):
            raise BadInput("metadata must be a JSON object", field="metadata")
        if metadata is not None and "id" in metadata:
            if len(files) > 1:
                raise BadInput("metadata.id names one document: upload one file with it", field="metadata")
            if not isinstance(metadata["id"], str) or not metadata["id"].strip():
                raise BadInput("metadata.id must be a non-blank string", field="metadata")
        job_id = str(uuid.uuid4())
        directory = self.jobs_dir / job_id
        try:
            sources = await asyncio.to_thread(self._store_files, directory, files)
            return await self._create(job_id, collection, principal, sources, dict(metadata) if metadata else None)
        except SourceProblem as exc:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise BadInput(str(exc), field="files") from None
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise

    async def start_reindex(self, name: str, model: str, chunking: Any, *, principal: Principal) -> Job:
        """A REINDEX job moving collection `name` to `model` (and `chunking`), see app/services/reindex.py."""
        principal.require(Scope.ADMIN, name)
        if self.reindexer is None:
            raise DependencyUnavailable("reindexing is not available on this server")
        target = await self.reindexer.plan(name, model, chunking)
        for state in ACTIVE:
            running = await self.repo.list(collections=None, collection=name, state=state, key_id=None, limit=MAX_JOBS_LISTED)
            if any(j.kind is JobKind.REINDEX for j in running):
                raise Conflict(f"collection {name!r} has a reindex job {state.value} already", collection=name)
        total = await self.documents.count_documents(name)
        job = await self.repo.create(
            str(uuid.uuid4()), JobKind.REINDEX, name, self.replica, principal.kind, principal.key_id, [],
            target.to_json(), documents_total=total,
        )  # fmt: skip
        logger.info("job {}: reindex {} ({} documents) to {} by {}", job.id, name, total, target.model, principal.label)
        self._publish(job, final=True)
        self._launch(job.id)
        return job

    def _store_files(self, directory: Path, files: Sequence[Any]) -> list[JobSource]:
        directory.mkdir(parents=True)
        room = self.settings.limits.max_upload_bytes
        sources = []
        for n, upload in enumerate(files):
            name = _file_name(getattr(upload, "filename", None), n)
            target = directory / f"{n:05d}"
            size = copy_stream(upload.file, target, room)
            room -= size
            content_type, reason = sniff(read_head(target), name, getattr(upload, "content_type", None))
            if content_type == NDJSON:
                count = count_json_lines(target)
            else:
                count = 1
            sources.append(JobSource(target.name, name, content_type, size, count, reason))
        return sources

    async def _admit(self, collection: str, principal: Principal) -> None:
        principal.require(Scope.WRITE, collection)
        await self.documents.require_collection(collection)  # NOT_FOUND before any file is stored

    async def _create(
        self, job_id: str, collection: str, principal: Principal, sources: list[JobSource], metadata: dict[str, Any] | None
    ) -> Job:
        job = await self.repo.create(
            job_id, JobKind.INGEST, collection, self.replica, principal.kind, principal.key_id, sources, metadata
        )
        logger.info(
            "job {} on {}: {} documents in {} files, by {}", job_id, collection, job.documents_total, len(sources), principal.label
        )
        self._publish(job, final=True)
        self._launch(job.id)
        return job

    # -- reading ------------------------------------------------------------------------------

    def may_read(self, job: Job, principal: Principal) -> bool:
        """A key reads the jobs of its collections (a tenant-bound key: only its own); ADMIN all."""
        if principal.kind == "rejected" or principal.level < Scope.READ.level:
            return False
        if not principal.may_see(job.collection):
            return False
        if principal.tenant is not None:
            return _started_by(job, principal)
        return True

    async def get(self, job_id: str, principal: Principal) -> Job | None:
        principal.require(Scope.READ)
        job = await self.repo.get(job_id)
        return job if job is not None and self.may_read(job, principal) else None

    async def list(
        self, principal: Principal, *, collection: str | None = None, state: JobState | None = None, first: int = 20
    ) -> list[Job]:
        principal.require(Scope.READ, collection)
        if first < 0 or first > MAX_JOBS_LISTED:
            raise BadInput(f"first must be 0 to {MAX_JOBS_LISTED}", field="first")
        collections = None if principal.collections is None else sorted(principal.collections)
        own = principal.key_id if principal.tenant is not None else None
        jobs = await self.repo.list(collections=collections, collection=collection, state=state, key_id=own, limit=first)
        return [j for j in jobs if self.may_read(j, principal)]

    async def cancel(self, job_id: str, principal: Principal) -> Job:
        principal.require(Scope.WRITE)
        job = await self.get(job_id, principal)
        if job is None:
            raise NotFound(f"job {job_id!r} not found", id=job_id)
        principal.require(Scope.WRITE, job.collection)
        if not (principal.is_admin or _started_by(job, principal)):
            raise Forbidden("only the key that started a job, or an ADMIN key, may cancel it", id=job_id)
        if not job.state.finished:
            cancelled = await self.repo.finish(job.id, JobState.CANCELLED, f"cancelled by {principal.label}")
            if cancelled is not None:
                JOBS_FINISHED.labels(JobState.CANCELLED.value).inc()
                self._stop(cancelled.id)
                self._publish(cancelled, final=True)  # the replica running it stops it too
                return cancelled
            job = await self.repo.get(job.id) or job  # it finished meanwhile
        if job.state is JobState.CANCELLED:
            return job
        raise BadInput(f"job {job.id} has already ended ({job.state.value}): there is nothing to cancel", id=job.id)

    @asynccontextmanager
    async def progress(
        self, job_id: str | None, collection: str | None, principal: Principal
    ) -> AsyncIterator[AsyncIterator[Job]]:
        """The current state (of the job; of the collection's or the key's unfinished jobs), then
        every change; a stream about one job ends with its final state."""
        principal.require(Scope.READ, collection)
        if job_id is not None:
            job = await self.get(job_id, principal)
            if job is None:
                raise NotFound(f"job {job_id!r} not found", id=job_id)

        def wants(job: Job) -> bool:
            return (
                (job_id is None or job.id == job_id)
                and (collection is None or job.collection == collection)
                and self.may_read(job, principal)
            )

        # Subscribe before reading the current state so no change falls between the two.
        async with self.bus.subscribe(wants) as events:
            if job_id is not None:
                current = [await self.repo.get(job_id)]
            else:
                current = []
                for state in ACTIVE:
                    current += await self.list(principal, collection=collection, state=state, first=MAX_JOBS_LISTED)
            yield _changes([j for j in current if j is not None], events, job_id)

    # -- running ------------------------------------------------------------------------------

    def _launch(self, job_id: str) -> None:
        if job_id in self._tasks or self._closing:
            return
        task = asyncio.create_task(self._run(job_id), name=f"citadel-job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    def _stop(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        # Once: the CANCELLED event can arrive more than once, and a second cancel() would land in
        # the task's own cleanup (removing its files) and end it with CancelledError.
        if task is not None and not task.done() and job_id not in self._cancelled:
            self._cancelled.add(job_id)
            task.cancel()

    def _on_event(self, job: Job) -> None:
        if job.state is JobState.CANCELLED and job.origin != self.bus.origin:
            self._stop(job.id)  # cancelled through another replica

    def _publish(self, job: Job, final: bool = False) -> None:
        if self._throttle.allow((job.id, ""), final=final or job.state.finished):
            self.bus.publish(job)
        if job.state.finished:
            self._throttle.forget((job.id, ""))

    async def _run(self, job_id: str) -> None:
        ended = False
        try:
            async with self._slots:
                pause = 1.0
                while True:
                    try:
                        ended = await self._run_once(job_id)
                        return
                    except DependencyUnavailable as exc:
                        # PostgreSQL out of reach between batches: go on from the last committed
                        # batch once it answers, exactly as a restarted replica would.
                        logger.warning(
                            "job {} paused ({}); resuming from its last committed batch in {:.0f} s", job_id, exc.message, pause
                        )
                        await asyncio.sleep(pause)
                        pause = min(30.0, pause * 2)
        except asyncio.CancelledError:
            if job_id in self._cancelled:  # cancelJob: the job is CANCELLED already
                ended = True
                return
            raise  # shutting down: the job stays RUNNING and resumes at the next start
        except JobFailed as exc:
            ended = await self._fail(job_id, exc.message)
        except Exception as exc:  # a bug
            logger.exception("job {} failed", job_id)
            reason = exc.message if isinstance(exc, CitadelError) else type(exc).__name__
            ended = await self._fail(job_id, f"the job stopped: {reason}")
        finally:
            try:
                if ended:
                    await asyncio.to_thread(shutil.rmtree, self.jobs_dir / job_id, True)
            finally:
                self._cancelled.discard(job_id)  # after the cleanup: no second cancel lands in it

    async def _run_once(self, job_id: str) -> bool:
        """Run the job from its last committed batch; whether it ended (its files can go): False
        when another runner of the same job moved its cursor first (it goes on there)."""
        job = await self.repo.start(job_id)
        if job is None:  # cancelled while queued, or ended meanwhile
            return True
        self._publish(job, final=True)
        finished = await (self._reindex(job) if job.kind is JobKind.REINDEX else self._ingest_all(job))
        if finished is None:
            now = await self.repo.get(job_id)
            if now is not None and not now.state.finished:
                logger.warning("job {}: another runner committed its batch first; leaving the job to it", job_id)
                return False
            return True  # cancelled
        done = await self.repo.finish(job_id, JobState.SUCCEEDED, _summary(finished))
        if done is not None:
            JOBS_FINISHED.labels(JobState.SUCCEEDED.value).inc()
            logger.info("job {} succeeded: {}", job_id, done.message)
            self._publish(done, final=True)
        return True

    async def _fail(self, job_id: str, message: str) -> bool:
        try:
            failed = await self.repo.finish(job_id, JobState.FAILED, message)
        except CitadelError as exc:  # PostgreSQL gone: the job stays RUNNING and resumes at the next start
            logger.warning("job {} could not be marked FAILED ({}): {}", job_id, exc.message, message)
            return False
        if failed is not None:
            JOBS_FINISHED.labels(JobState.FAILED.value).inc()
            logger.warning("job {} failed: {}", job_id, message)
            self._publish(failed, final=True)
        return True

    async def _reindex(self, job: Job) -> Job | None:
        """Build the next version page by page from the job's cursor, then switch; the job as last
        committed, None when it was cancelled. A failed or cancelled reindex abandons the next
        version; a shutdown leaves it for the resumed job."""
        target = ReindexTarget.from_json(job.metadata or {})
        try:
            row = await self._retrying(job, lambda: self.reindexer.begin(job.collection, target))
            if row.next is None:  # switched before a restart: only the end was not recorded
                return job
            after, mark = job.cursor_id, time.monotonic()
            while True:
                principal = await self._principal(job)
                page = await self._retrying(job, lambda: self.reindexer.rebuild(row, after, self.batch_size, principal))
                if page.last_id is None:
                    break
                now = time.monotonic()
                committed = await self._commit(
                    job, 0, job.cursor_offset + page.documents, page.documents, 0, page.points, 0, now - mark, [],
                    cursor_id=page.last_id,
                )  # fmt: skip
                if committed is None:
                    return None
                job, after, mark = committed, page.last_id, now
            principal = await self._principal(job)
            previous = await self._retrying(job, lambda: self.reindexer.switch(row, principal))
        except JobFailed:
            await self.reindexer.abandon(job.collection, target)
            raise
        except asyncio.CancelledError:
            if job.id in self._cancelled:
                await asyncio.shield(self.reindexer.abandon(job.collection, target))
            raise
        retiring = asyncio.create_task(self.reindexer.retire(previous), name=f"citadel-retire-{previous}")
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        return job

    async def _ingest_all(self, job: Job) -> Job | None:
        """Every source from the cursor on; the job as last committed, None when it was cancelled."""
        directory = self.jobs_dir / job.id
        collection = await self.documents.get_collection(job.collection)
        if collection is None:
            raise JobFailed(f"collection {job.collection!r} no longer exists")
        try:  # e.g. after a restart, while the model loads: wait rather than spend the retries
            await self.models.ready_spec(collection.model, wait=True)
        except CitadelError as exc:
            raise JobFailed(f"{exc.code}: {exc.message}") from exc
        start_bytes = [sum(s.bytes for s in job.sources[:i]) for i in range(len(job.sources))]
        for index in range(job.cursor_source, len(job.sources)):
            source = job.sources[index]
            path = directory / source.path
            if source.content_type != INVALID and not path.exists():
                raise JobFailed(f"the job's file {source.name!r} is missing from the data dir of replica {self.replica}")
            if source.content_type == NDJSON:
                committed = await self._ingest_lines(job, index, source, path, start_bytes[index])
                if committed is None:
                    return None
                job = committed
            else:
                began = time.monotonic()
                done, failed, chunks, errors = await self._one_file(job, collection, source, path)
                committed = await self._commit(
                    job, index + 1, 0, done, failed, chunks, start_bytes[index] + source.bytes, time.monotonic() - began, errors
                )
                if committed is None:
                    return None
                job = committed
        return job

    async def _ingest_lines(self, job: Job, index: int, source: JobSource, path: Path, base_bytes: int) -> Job | None:
        """A JSON Lines source from the job's cursor on, BATCHES_IN_FLIGHT batches at a time (some
        are embedded while the ones before them are stored, and the model's passes all have work),
        committed strictly in file order: the cursor never passes a batch that is not stored, so a
        crash re-ingests at most the batches in flight. The job as last committed; None when it
        was cancelled or another runner moved its cursor first."""
        offset = job.cursor_offset if index == job.cursor_source else 0
        seen = job.documents_seen  # the ordinal of the next line read
        max_line = 4 * (self.settings.limits.max_text_chars + self.settings.limits.max_metadata_bytes) + (1 << 20)
        in_flight: deque[tuple[_LineBatch, asyncio.Task[tuple[int, int, int, list[JobError]]]]] = deque()
        read_all = False
        mark = time.monotonic()
        try:
            while True:
                while not read_all and len(in_flight) < BATCHES_IN_FLIGHT:
                    items, after = await asyncio.to_thread(read_json_lines, path, offset, self.batch_size, max_line)
                    batch = _line_batch(items, seen, after, after >= source.bytes or not items, source.name, job.metadata)
                    # A line rewriting an id of a batch still in flight waits for it: the later line wins.
                    before = next((t for b, t in reversed(in_flight) if b.ids & batch.ids), None)
                    in_flight.append((batch, asyncio.create_task(self._ingest_batch(job, batch, before))))
                    offset, seen, read_all = after, seen + len(items), batch.at_end
                if not in_flight:
                    return job
                batch, task = in_flight[0]
                done, failed, chunks, errors = await task
                in_flight.popleft()
                now = time.monotonic()
                committed = await self._commit(
                    job, index + 1 if batch.at_end else index, 0 if batch.at_end else batch.after, done, failed,
                    chunks, base_bytes + min(batch.after, source.bytes), now - mark, errors,
                )  # fmt: skip
                if committed is None:
                    return None
                job, mark = committed, now
        finally:
            await cancel_and_wait(*(task for _, task in in_flight), ignore_errors=True)

    async def _ingest_batch(
        self, job: Job, batch: _LineBatch, before: asyncio.Task[Any] | None
    ) -> tuple[int, int, int, list[JobError]]:
        """(done, failed, chunks, errors) of one batch of lines; `before`: the batch in flight it
        shares ids with, which must land first."""
        if before is not None:
            await asyncio.wait([before])
        errors = list(batch.errors)
        if not batch.documents:
            return 0, len(errors), 0, errors
        report = await self._ingest(job, batch.documents)
        errors += [JobError(batch.positions[e.index], e.id, e.code, e.message) for e in report.errors]
        errors.sort(key=lambda e: e.index)
        return len(report.ids), len(batch.errors) + report.failed, report.chunks, errors

    async def _one_file(self, job: Job, collection: Any, source: JobSource, path: Path) -> tuple[int, int, int, list[JobError]]:
        ordinal = job.documents_seen
        metadata = dict(job.metadata or {})
        doc_id = str(metadata.pop("id", None) or source.name)
        if source.content_type == INVALID:
            return 0, 1, 0, [JobError(ordinal, doc_id, BadInput.code, source.reason or "unsupported content")]
        try:
            text, extra = await asyncio.to_thread(document_text, path, source.content_type)
        except SourceProblem as exc:
            return 0, 1, 0, [JobError(ordinal, doc_id, BadInput.code, f"{source.name}: {exc}")]
        if not text.strip():
            return 0, 1, 0, [JobError(ordinal, doc_id, BadInput.code, f"{source.name} has no text to index")]
        if not collection.chunk_max_tokens and len(text) <= self.settings.limits.max_file_chars:
            measured = await self._retrying(job, lambda: self.embedder.document_tokens(collection.model, [text]))
            if len(measured.spans[0]) > measured.window:
                message = (
                    f"{source.name} has {len(measured.spans[0])} tokens; model {collection.model!r} reads {measured.window}: the rest "
                    f"would not be searchable. Use chunking: ingest it into a collection created with "
                    f"createCollection(..., chunking: {{maxTokens: 128, overlapTokens: 16}})"
                )
                return 0, 1, 0, [JobError(ordinal, doc_id, BadInput.code, message)]
        document = {
            "id": doc_id,
            "text": text,
            "metadata": {"source": source.name, "contentType": source.content_type, "bytes": source.bytes, **extra, **metadata},
        }
        report = await self._ingest(job, [document], max_text_chars=self.settings.limits.max_file_chars)
        errors = [JobError(ordinal, e.id, e.code, e.message) for e in report.errors]
        return len(report.ids), report.failed, report.chunks, errors

    async def _ingest(self, job: Job, documents: list[dict[str, Any]], max_text_chars: int | None = None) -> Any:
        async def ingest() -> Any:
            principal = await self._principal(job)
            return await self.ingest.ingest(job.collection, documents, principal=principal, max_text_chars=max_text_chars)

        return await self._retrying(job, ingest)

    async def _principal(self, job: Job) -> Principal:
        """The key that started the job as it stands now, with the job's own share of the model
        (the key's interactive calls are served beside it)."""
        principal = await self.keys.principal_again(job.principal_kind, job.key_id)
        if principal is None:
            raise JobFailed("the API key that started this job was revoked")
        return dataclasses.replace(principal, fair_key=f"job:{job.id}")

    async def _retrying(self, job: Job, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, again while the model or a dependency cannot take it now (for up to
        RETRY_SECONDS); JobFailed for any other refusal."""
        deadline = time.monotonic() + RETRY_SECONDS
        attempt = 0
        while True:
            try:
                return await call()
            except RETRYABLE as exc:
                if time.monotonic() >= deadline:
                    raise JobFailed(f"{exc.code}: {exc.message}") from exc
                logger.info("job {}: batch not taken now ({}), trying again", job.id, exc.code)
                await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
                attempt += 1
            except CitadelError as exc:  # FORBIDDEN, NOT_FOUND...: the job cannot go on
                raise JobFailed(f"{exc.code}: {exc.message}") from exc

    async def _commit(
        self, job: Job, cursor_source: int, cursor_offset: int, done: int, failed: int, chunks: int,
        bytes_done: int, seconds: float, errors: list[JobError], cursor_id: str | None = None,
    ) -> Job | None:
        committed = await self.repo.commit_batch(
            job.id, after=(job.cursor_source, job.cursor_offset), cursor_source=cursor_source,
            cursor_offset=cursor_offset, done=done, failed=failed, chunks=chunks, bytes_done=bytes_done,
            seconds=seconds, errors=errors,
            max_errors=self.settings.ingest.job_max_errors, cursor_id=cursor_id,
        )  # fmt: skip
        if committed is not None:
            self._publish(committed)
        return committed


async def _changes(current: list[Job], events: AsyncIterator[Job], job_id: str | None) -> AsyncIterator[Job]:
    """The current states, then the events newer than what was sent for each job (an event queued
    before the current state was read is older than it and skipped); one job's stream ends with
    its final state."""
    last: dict[str, Job] = {}

    def newer(job: Job) -> bool:
        seen = last.get(job.id)
        if seen is None:
            return True
        if seen.state.finished:
            return False
        return (job.updated_at, job.documents_seen) >= (seen.updated_at, seen.documents_seen) and job != seen

    for job in current:
        last[job.id] = job
        yield job
        if job_id is not None and job.state.finished:
            return
    async for job in events:
        if not newer(job):
            continue
        last[job.id] = job
        yield job
        if job_id is not None and job.state.finished:
            return


def _started_by(job: Job, principal: Principal) -> bool:
    return job.principal_kind == principal.kind and job.key_id == principal.key_id


def _summary(job: Job) -> str:
    if job.kind is JobKind.REINDEX:
        model = (job.metadata or {}).get("model")
        return f"{job.documents_done} documents rebuilt with {model} ({job.chunks_done} vector points); the collection uses it now"
    return (
        f"{job.documents_done} documents ingested ({job.chunks_done} vector points), {job.documents_failed} failed"
    )


def _file_name(given: Any, n: int) -> str:
    name = given if isinstance(given, str) else ""
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip().replace("\x00", "")
    return name[:MAX_ID_CHARS] if name else f"file-{n + 1}"


def _line_document(raw: dict[str, Any], metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A JSON Lines line (a DocumentInput: id, text, metadata, vector or vectorBase64) as ingest
    takes it, with the call's metadata under its own."""
    own = raw.get("metadata")
    if metadata and (own is None or isinstance(own, dict)):
        own = {k: v for k, v in metadata.items() if k != "id"} | (own or {})
    return {
        "id": raw.get("id"),
        "text": raw.get("text"),
        "metadata": own,
        "vector": raw.get("vector"),
        "vector_base64": raw.get("vectorBase64", raw.get("vector_base64")),
    }


def _write_json_lines(directory: Path, documents: Sequence[Mapping[str, Any]]) -> JobSource:
    directory.mkdir(parents=True)
    path = directory / "00000"
    with path.open("w", encoding="utf-8") as out:
        for doc in documents:
            line = {"id": doc.get("id"), "text": doc.get("text"), "metadata": doc.get("metadata")}
            if doc.get("vector") is not None:
                line["vector"] = doc["vector"]
            if doc.get("vector_base64") is not None:
                line["vectorBase64"] = doc["vector_base64"]
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return JobSource(path.name, "documents.jsonl", NDJSON, path.stat().st_size, len(documents))



@dataclasses.dataclass(frozen=True)
class _LineBatch:
    """One batch of a JSON Lines source: its documents (as ingest takes them) with their ordinals
    in the job, the lines that were no document, and where the next batch starts."""

    documents: list[dict[str, Any]]
    positions: list[int]
    errors: list[JobError]
    ids: frozenset[str]
    after: int
    at_end: bool


def _line_batch(
    items: list[Any], first: int, after: int, at_end: bool, name: str, metadata: dict[str, Any] | None
) -> _LineBatch:
    documents: list[dict[str, Any]] = []
    positions: list[int] = []
    errors: list[JobError] = []
    for k, item in enumerate(items):
        if isinstance(item, SourceProblem):
            errors.append(JobError(first + k, None, BadInput.code, f"{name} line: {item}"))
        elif not isinstance(item, dict):
            errors.append(JobError(first + k, None, BadInput.code, f"{name}: a line must be a JSON object (a DocumentInput)"))
        else:
            documents.append(_line_document(item, metadata))
            positions.append(first + k)
    ids = frozenset(str(d["id"]) for d in documents if isinstance(d["id"], (str, int)) and not isinstance(d["id"], bool))
    return _LineBatch(documents, positions, errors, ids, after, at_end)
