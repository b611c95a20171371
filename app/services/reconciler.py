"""The reconciler: finishes what an interrupted ingest or delete left in PostgreSQL.

'pending' rows are embedded, upserted and marked indexed; 'deleting' rows have their vectors
removed and are purged. It runs at startup and then periodically; an error is logged and the
next round tries again, so the background task never dies.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from loguru import logger
from prometheus_client import Counter

from app.errors import ModelUnavailable
from app.services.collections import bound_model
from app.services.ids import point_id
from app.services.ingest import ToIndex, index_documents
from app.settings import Settings

RECONCILED = Counter(
    "citadel_reconciler_documents_total", "Documents finished by the reconciler", ["action"]
)  # indexed | purged
RECONCILE_ERRORS = Counter("citadel_reconciler_errors_total", "Reconciler rounds or collections that failed")

BATCH_ROWS = 1_000
MAX_ROUNDS = 100  # per run_once, so a steady stream of new pending rows cannot pin it


@dataclass
class ReconcileCounts:
    indexed: int = 0
    purged: int = 0
    skipped: int = 0  # rows of collections whose model is unavailable
    failed: int = 0  # rows whose collection failed this round (store down, ...)


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
            if total.indexed or total.purged or total.skipped or total.failed:
                logger.info(
                    "reconciler: {} indexed, {} purged, {} skipped, {} failed",
                    total.indexed,
                    total.purged,
                    total.skipped,
                    total.failed,
                )
            return total

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
        await self.store.delete(name, [point_id(name, i) for i in ids])
        purged = int(await self.repo.purge_documents(name, ids))
        RECONCILED.labels("purged").inc(purged)
        return purged

    async def _index(self, name: str, rows: list[Any]) -> int:
        collection = await self.repo.get_collection(name)
        if collection is None:  # deleted meanwhile; its rows went with it
            return 0
        if self.models is not None:
            await bound_model(self.models, collection)
        docs = [ToIndex(r.id, r.text, r.metadata, r.content_hash, r.vector) for r in rows]
        done = await index_documents(self.embedder, self.store, self.repo, collection, docs, self.settings)
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
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

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
