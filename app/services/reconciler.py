"""The reconciler: finishes what an interrupted ingest or delete left in PostgreSQL.

'pending' rows are embedded, upserted and marked indexed; 'deleting' rows have their vectors
removed and are purged; vectors whose row is gone (orphans) are removed, and an indexed row whose
points carry another version than the row (or none: written before points had versions) goes
back to 'pending' to be written again, so the store converges on PostgreSQL whatever happened. Collections whose
keyword index is 'building' (those that existed before keyword indexes) get BM25 vectors for their
indexed documents, page by page in id order, the position saved in PostgreSQL so a restart resumes
where it stopped. It runs at startup, periodically, and at once when a model becomes READY.
Collections are served one by one, oldest backlog first, so a stuck one never delays the others.
An outage is logged once with its cause and once when it ends; the next round tries again, so the
background task never dies.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from loguru import logger
from prometheus_client import Counter

from app.adapters.bm25 import bm25
from app.errors import CitadelError, DependencyUnavailable, ModelUnavailable
from app.services.collections import bound_model
from app.domain.ids import point_id
from app.services.indexing import ToIndex, index_documents, remove_points
from app.settings import Settings
from app.tasks import cancel_and_wait

RECONCILED = Counter(
    "citadel_reconciler_documents_total", "Documents finished by the reconciler", ["action"]
)  # indexed | purged | orphan | stale
KEYWORDS_BACKFILLED = Counter("citadel_keyword_backfill_documents_total", "Documents given a keyword vector by the backfill")
RECONCILE_ERRORS = Counter("citadel_reconciler_errors_total", "Reconciler rounds or collections that failed")

BATCH_ROWS = 1_000
MAX_ROUNDS = 100  # per run_once, so a steady stream of new pending rows cannot pin it
SWEEP_PAGE = 1_000  # points read per orphan-sweep step
SWEEP_POINTS_PER_ROUND = 100_000  # per collection; a larger one is swept over several rounds
BACKFILL_PAGE = 500  # documents per keyword-backfill step (one PostgreSQL read, one store write)


@dataclass
class ReconcileCounts:
    indexed: int = 0
    purged: int = 0
    skipped: int = 0  # rows of collections whose model is unavailable
    failed: int = 0  # rows whose collection failed this round (store down, ...)
    orphans: int = 0  # vectors without a row, removed
    keywords: int = 0  # documents given a keyword vector by the backfill

    def add(self, other: "ReconcileCounts") -> None:
        for name in ("indexed", "purged", "skipped", "failed", "orphans", "keywords"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Reconciler:
    def __init__(
        self,
        repo: Any,
        store: Any,
        embedder: Any,
        interval: float,
        settings: Settings | None = None,
        models: Any = None,
    ) -> None:
        self.repo = repo
        self.settings = settings or Settings()  # embed chunking limits
        self.models = models  # when given, a model whose revision changed is skipped too
        self.store = store
        self.embedder = embedder
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one round at a time, whoever asks
        self._outage: str | None = None  # the cause of failing rounds, logged once
        self._problems: dict[str, str] = {}  # per collection, logged once
        self._sweep_from: dict[str, Any] = {}  # per collection, where the orphan sweep goes on

    async def run_once(self) -> ReconcileCounts:
        async with self._lock:
            total = ReconcileCounts()
            # Collection by collection, the one waiting longest first: a backlog that cannot move
            # (its model is unavailable) never stands in front of another collection's rows.
            for name in await self.repo.pending_collections():
                counts = await self._reconcile_collection(name)
                total.add(counts)
            total.orphans = await self._sweep_orphans()
            total.keywords = await self._backfill_keywords()
            if total.indexed or total.purged or total.orphans or total.keywords:  # stuck rows are logged once, above
                logger.info(
                    "reconciler: {} indexed, {} purged, {} orphan vectors removed, {} keyword vectors backfilled, {} skipped, {} failed",
                    total.indexed,
                    total.purged,
                    total.orphans,
                    total.keywords,
                    total.skipped,
                    total.failed,
                )
            return total

    async def _reconcile_collection(self, name: str) -> ReconcileCounts:
        total = ReconcileCounts()
        for _ in range(MAX_ROUNDS):
            rows = await self.repo.pending_documents(BATCH_ROWS, collection=name)
            if not rows:
                break
            counts = await self._round(name, rows)
            total.indexed += counts.indexed
            total.purged += counts.purged
            # Stuck rows come back every batch: stop once one makes no progress.
            total.skipped, total.failed = counts.skipped, counts.failed
            if counts.indexed + counts.purged == 0 or len(rows) < BATCH_ROWS:
                break
        return total

    async def _backfill_keywords(self) -> int:
        done = 0
        for collection in await self.repo.collections_building_keywords():
            try:
                done += await self._backfill_collection(collection)
            except Exception:
                RECONCILE_ERRORS.inc()
                logger.exception("reconciler: keyword backfill of {} failed this round", collection.name)
        return done

    async def _backfill_collection(self, collection: Any) -> int:
        """Sparse vectors for every indexed document of a collection built before keyword indexes
        (never chunked: chunking came with them). New writes already carry theirs."""
        await self.store.add_keyword_index(collection.store_name)
        cursor, done = collection.keyword_cursor, 0
        for _ in range(MAX_ROUNDS):
            rows = await self.repo.list_documents(collection.name, cursor, BACKFILL_PAGE)
            indexed = [r for r in rows if r.status == "indexed"]  # pending rows get theirs when indexed
            vectors = dict(zip((r.id for r in indexed), await bm25().documents([r.text for r in indexed])))

            async def write(current: list[str], live: Any, name: str = collection.name) -> None:
                # Only rows unchanged since they were read: a newer version brings its own.
                await self.store.set_sparse_vectors(live.store_name, [(point_id(name, i), vectors[i]) for i in current])

            versions = {r.id: r.content_hash for r in indexed}
            written = await self.repo.write_if_current(collection.name, versions, write, status="indexed", mark_indexed=False)
            done += len(written)
            KEYWORDS_BACKFILLED.inc(len(written))
            finished = len(rows) < BACKFILL_PAGE
            cursor = rows[-1].id if rows else cursor
            await self.repo.set_keyword_progress(collection.name, cursor, done=finished)
            if finished:
                logger.info("keyword index of {} is ready", collection.name)
                break
        return done

    async def _round(self, name: str, docs: list[Any]) -> ReconcileCounts:
        counts = ReconcileCounts()
        deleting = [d for d in docs if d.status == "deleting"]
        pending = [d for d in docs if d.status == "pending"]
        try:
            if deleting:
                counts.purged += await self._purge(name, deleting)
            if pending:
                counts.indexed += await self._index(name, pending)
            if self._problems.pop(name, None) is not None:
                logger.info("reconciler: collection {} is moving again", name)
        except ModelUnavailable as exc:
            counts.skipped += len(pending)
            self._note_problem(name, "model", f"pending rows wait for their model: {exc.message}")
        except DependencyUnavailable as exc:
            counts.failed += len(docs)
            RECONCILE_ERRORS.inc()
            self._note_problem(name, "dependency", f"rows wait: {exc.message}")
        except Exception as exc:
            counts.failed += len(docs)
            RECONCILE_ERRORS.inc()
            # Not an expected outage: its traceback, once.
            self._note_problem(name, type(exc).__name__, f"rows wait: {exc!r}", error=exc)
        return counts

    def _note_problem(self, name: str, kind: str, problem: str, error: BaseException | None = None) -> None:
        """Log a collection's problem once per kind, not every round."""
        if self._problems.get(name) != kind:
            self._problems[name] = kind
            logger.opt(exception=error).warning("reconciler: collection {}: {}", name, problem)

    async def _sweep_orphans(self) -> int:
        """Remove vectors whose row is gone, and send back to 'pending' the indexed rows whose
        points hold another version than the row.

        Points are read page by page with their payload doc_id and version, then PostgreSQL is
        asked for those rows. A point without a row is removed; since a row is always written
        before its points, a document ingested between that read and the removal is then seen
        by a second read, and its row (once its writer commits: mark_stale waits for the row
        lock) is sent back to 'pending', so a point removed by this race is written again. A
        version that differs from an indexed row's is repaired the same way. Chunked and
        unchunked collections alike (a chunk's payload names its document). A round reads at
        most SWEEP_POINTS_PER_ROUND points of a collection and the next round goes on from
        there, so a collection of any size costs a bounded amount per round; below that size
        every round covers all of it."""
        removed = 0
        live = set()
        for collection in await self.repo.list_collections():
            name = collection.name
            live.add(collection.store_name)
            try:
                removed += await self._sweep_collection(name, collection.store_name)
            except Exception as exc:  # the next round tries again, from the same place
                self._note_problem(name, "sweep", f"orphan sweep failed: {exc!r}")
        for gone in set(self._sweep_from) - live:
            del self._sweep_from[gone]
        return removed

    async def _sweep_collection(self, name: str, store_name: str) -> int:
        """`store_name`: the store collection of the collection's current version."""
        removed, seen = 0, 0
        after = self._sweep_from.get(store_name)
        while seen < SWEEP_POINTS_PER_ROUND:
            points, following = await self.store.document_points(store_name, after, SWEEP_PAGE)
            seen += len(points)
            if points:
                rows = await self.repo.content_versions(name, [p.doc_id for p in points])
                orphans = sorted({p.id for p in points if p.doc_id not in rows})
                stale = {
                    p.doc_id: rows[p.doc_id][0]
                    for p in points
                    if p.doc_id in rows and rows[p.doc_id][1] == "indexed" and p.version != rows[p.doc_id][0]
                }
                if orphans:
                    await self.store.delete(store_name, orphans)
                    removed += len(orphans)
                    RECONCILED.labels("orphan").inc(len(orphans))
                    orphan_docs = {p.doc_id for p in points if p.doc_id not in rows}
                    revived = await self.repo.content_versions(name, sorted(orphan_docs))
                    stale.update({doc: version for doc, (version, _) in revived.items()})
                if stale:
                    repaired = await self.repo.mark_stale(name, stale)
                    RECONCILED.labels("stale").inc(repaired)
            after = following
            if after is None:
                break
        self._sweep_from[store_name] = after  # None: the next round starts at the beginning
        return removed

    async def _purge(self, name: str, rows: list[Any]) -> int:
        ids = [r.id for r in rows]
        collection = await self.repo.get_collection(name)
        if collection is None:  # deleted meanwhile: its rows and vectors went with it
            return 0
        purged = await self.repo.purge_if_deleting(name, ids, lambda doomed, live: remove_points(self.store, live, doomed))
        RECONCILED.labels("purged").inc(purged)
        return purged

    async def _index(self, name: str, rows: list[Any]) -> int:
        collection = await self.repo.get_collection(name)
        if collection is None:  # deleted meanwhile; its rows went with it
            return 0
        if self.models is not None:
            await bound_model(self.models, collection)
        docs = [ToIndex(r.id, r.text, r.metadata, r.content_hash, vector=r.vector) for r in rows]
        done = (await index_documents(self.embedder, self.store, self.repo, collection, docs, self.settings)).documents
        RECONCILED.labels("indexed").inc(done)
        return done

    # -- background task ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="citadel-reconciler")
        bus = getattr(self.models, "bus", None)
        if bus is not None and (self._listener is None or self._listener.done()):
            self._listener = asyncio.create_task(self._wake_on_ready(bus), name="citadel-reconciler-wake")

    async def stop(self) -> None:
        task, listener = self._task, self._listener
        self._task = self._listener = None
        await cancel_and_wait(task, listener)

    def wake(self) -> None:
        """Run a round now instead of at the end of the interval (a model became READY)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
                if self._outage is not None:
                    logger.info("reconciler: running again after: {}", self._outage)
                    self._outage = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                RECONCILE_ERRORS.inc()
                cause = exc.message if isinstance(exc, CitadelError) else repr(exc)
                if self._outage is None:
                    # Once per outage, with its cause; the rounds that follow stay quiet.
                    logger.warning("reconciler paused ({}); retrying every {}s", cause, self.interval)
                    if not isinstance(exc, CitadelError):  # not an expected outage: its traceback, once
                        logger.opt(exception=exc).error("reconciler round failed")
                self._outage = cause
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    async def _wake_on_ready(self, bus: Any) -> None:
        # Pending rows of a collection whose model was LOADING wait for exactly this moment.
        async with bus.subscribe(None) as events:
            async for event in events:
                if getattr(event.state, "value", event.state) == "READY":
                    self.wake()

