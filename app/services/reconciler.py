"""The reconciler: finishes what an interrupted ingest or delete left in PostgreSQL.

'pending' rows are embedded, upserted and marked indexed; 'deleting' rows have their vectors
removed and are purged. Collections whose keyword index is 'building' (those that existed
before keyword indexes) get BM25 vectors for their indexed documents, page by page in id order,
the position saved in PostgreSQL so a restart resumes where it stopped. It runs at startup and
then periodically; an error is logged and the next round tries again, so the task never dies.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from loguru import logger
from prometheus_client import Counter

from app.adapters.bm25 import bm25
from app.errors import ModelUnavailable
from app.services.ids import point_id
from app.services.collections import bound_model
from app.services.indexing import ToIndex, index_documents, remove_points
from app.settings import Settings
from app.tasks import cancel_and_wait

RECONCILED = Counter(
    "citadel_reconciler_documents_total", "Documents finished by the reconciler", ["action"]
)  # indexed | purged
KEYWORDS_BACKFILLED = Counter("citadel_keyword_backfill_documents_total", "Documents given a keyword vector by the backfill")
RECONCILE_ERRORS = Counter("citadel_reconciler_errors_total", "Reconciler rounds or collections that failed")

BATCH_ROWS = 1_000
MAX_ROUNDS = 100  # per run_once, so a steady stream of new pending rows cannot pin it
BACKFILL_PAGE = 500  # documents per keyword-backfill step (one PostgreSQL read, one store write)


@dataclass
class ReconcileCounts:
    indexed: int = 0
    purged: int = 0
    skipped: int = 0  # rows of collections whose model is unavailable
    failed: int = 0  # rows whose collection failed this round (store down, ...)
    keywords: int = 0  # documents given a keyword vector by the backfill


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
        self._lock = asyncio.Lock()  # one round at a time, whoever asks

    async def run_once(self) -> ReconcileCounts:
        async with self._lock:
            total = ReconcileCounts()
            for _ in range(MAX_ROUNDS):
                rows = await self.repo.pending_documents(BATCH_ROWS)
                if not rows:
                    break
                counts = await self._round(rows)
                for name in ("indexed", "purged"):
                    setattr(total, name, getattr(total, name) + getattr(counts, name))
                # Stuck rows (model unavailable, store down) come back every round: stop once a
                # round makes no progress and report what was left.
                total.skipped, total.failed = counts.skipped, counts.failed
                if counts.indexed + counts.purged == 0 or len(rows) < BATCH_ROWS:
                    break
            total.keywords = await self._backfill_keywords()
            if total.indexed or total.purged or total.skipped or total.failed or total.keywords:
                logger.info(
                    "reconciler: {} indexed, {} purged, {} skipped, {} failed, {} keyword vectors backfilled",
                    total.indexed,
                    total.purged,
                    total.skipped,
                    total.failed,
                    total.keywords,
                )
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
        await self.store.add_keyword_index(collection.name)
        cursor, done = collection.keyword_cursor, 0
        for _ in range(MAX_ROUNDS):
            rows = await self.repo.list_documents(collection.name, cursor, BACKFILL_PAGE)
            indexed = [r for r in rows if r.status == "indexed"]  # pending rows get theirs when indexed
            vectors = await bm25().documents([r.text for r in indexed])
            await self.store.set_sparse_vectors(
                collection.name, [(point_id(collection.name, r.id), v) for r, v in zip(indexed, vectors)]
            )
            done += len(indexed)
            KEYWORDS_BACKFILLED.inc(len(indexed))
            finished = len(rows) < BACKFILL_PAGE
            cursor = rows[-1].id if rows else cursor
            await self.repo.set_keyword_progress(collection.name, cursor, done=finished)
            if finished:
                logger.info("keyword index of {} is ready", collection.name)
                break
        return done

    async def _round(self, rows: list[Any]) -> ReconcileCounts:
        counts = ReconcileCounts()
        by_collection: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            by_collection[row.collection].append(row)
        for name, docs in by_collection.items():
            deleting = [d for d in docs if d.status == "deleting"]
            pending = [d for d in docs if d.status == "pending"]
            try:
                if deleting:
                    counts.purged += await self._purge(name, deleting)
                if pending:
                    counts.indexed += await self._index(name, pending)
            except ModelUnavailable as exc:
                counts.skipped += len(pending)
                logger.warning("reconciler: skipping {} pending rows of {}: {}", len(pending), name, exc.message)
            except Exception:
                counts.failed += len(docs)
                RECONCILE_ERRORS.inc()
                logger.exception("reconciler: collection {} failed this round", name)
        return counts

    async def _purge(self, name: str, rows: list[Any]) -> int:
        ids = [r.id for r in rows]
        collection = await self.repo.get_collection(name)
        if collection is None:  # deleted meanwhile: its rows and vectors went with it
            return 0
        await remove_points(self.store, collection, ids)
        purged = int(await self.repo.purge_documents(name, ids))
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

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                RECONCILE_ERRORS.inc()
                logger.exception("reconciler round failed; retrying in {}s", self.interval)
            await asyncio.sleep(self.interval)
