"""The cluster's view of every model on every live replica (schema.graphql: `Model.replicas`).

Kept from the events every replica publishes (relayed over Redis) and, for what an event cannot
tell (a replica that started after a download, events lost in a Redis outage), from PostgreSQL:
each replica saves its last state per model there and heart-beats every `heartbeat_seconds`; a
replica silent for three beats drops out. This replica's own entry is always the manager's truth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from loguru import logger

from app.adapters.events import EventBus
from app.domain.models import DownloadEvent, ModelSpec, ModelStatus
from app.tasks import cancel_and_wait

MISSED_BEATS = 3  # a replica silent this many heartbeats is gone
FIRST_REFRESH_TIMEOUT_SECONDS = 3.0
_LONG_AGO = datetime.min.replace(tzinfo=UTC)


class ReplicaStore(Protocol):
    async def heartbeat(self, replica: str) -> None: ...

    async def save_model_status(self, status: ModelStatus) -> None: ...

    async def forget_replica(self, replica: str) -> None: ...

    async def live_model_statuses(self, within_seconds: float) -> list[ModelStatus]:
        """Last saved state per (model, replica) of the replicas that heart-beat this recently."""
        ...


class ClusterView:
    def __init__(
        self,
        replica: str,
        bus: EventBus,
        local: Callable[[], list[ModelStatus]],
        catalog: dict[str, ModelSpec],
        store: ReplicaStore | None = None,
        heartbeat_seconds: float = 5.0,
    ) -> None:
        self.replica = replica
        self._local = local
        self._catalog = catalog
        self._store = store
        self.heartbeat_seconds = heartbeat_seconds
        self._others: dict[tuple[str, str], ModelStatus] = {}  # (model, replica) -> its last known state
        self._seen: dict[str, float] = {}  # replica -> time.monotonic() of its last sign of life
        self._task: asyncio.Task[None] | None = None
        self._store_failing = False
        self._misses = 0  # beats missed in a row
        bus.observe(self._observe)

    @property
    def ttl_seconds(self) -> float:
        return MISSED_BEATS * self.heartbeat_seconds

    # -- reading ---------------------------------------------------------------------------------

    def live_replicas(self) -> list[str]:
        now = time.monotonic()
        others = sorted(r for r, seen in self._seen.items() if r != self.replica and now - seen < self.ttl_seconds)
        return [self.replica, *others]

    def replicas(self, model: str) -> list[ModelStatus]:
        """`model` on every live replica, this one first (its manager's truth), then by replica id."""
        mine = [s for s in self._local() if s.name == model]
        live = set(self.live_replicas())
        others = sorted(
            (s.copy() for (name, replica), s in self._others.items() if name == model and replica in live),
            key=lambda s: s.replica,
        )
        return [*mine, *others]

    # -- keeping it -------------------------------------------------------------------------------

    def _observe(self, event: DownloadEvent) -> None:
        if not event.replica or event.replica == self.replica:
            return
        status = self._others.get((event.model, event.replica))
        if status is None:
            status = self._blank(event.model, event.replica)
            self._others[(event.model, event.replica)] = status
        status.follow(event)
        self._seen[event.replica] = time.monotonic()

    def _blank(self, model: str, replica: str) -> ModelStatus:
        spec = self._catalog.get(model)
        return ModelStatus(
            name=model,
            backend=spec.backend if spec else "",
            dimensions=spec.dimensions if spec else None,
            replica=replica,
            updated_at=_LONG_AGO,
        )

    async def start(self) -> None:
        """Heart-beat once and read the cluster (so the first answers know the others), then keep at it."""
        if self._store is None:
            return
        try:  # a database that does not answer must not hold the start up (its outage is degraded)
            await asyncio.wait_for(self.refresh(), FIRST_REFRESH_TIMEOUT_SECONDS)
        except TimeoutError:
            # Common on a busy machine (models loading, a database starting): not news unless the
            # next beats fail too, which refresh() then says.
            self._missed(f"PostgreSQL took over {FIRST_REFRESH_TIMEOUT_SECONDS:g} s to answer")
            logger.info(
                "the first replica heartbeat took over {:g} s (a busy machine or database); starting anyway, "
                "other replicas' model states fill in from the next beats (every {:g} s)",
                FIRST_REFRESH_TIMEOUT_SECONDS,
                self.heartbeat_seconds,
            )
        self._task = asyncio.create_task(self._beat_forever(), name="citadel-replica-heartbeat")

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            await self.refresh()

    async def refresh(self) -> None:
        assert self._store is not None
        try:
            await self._store.heartbeat(self.replica)
            if self._store_failing:  # what we saved while the database was away may be missing
                for status in self._local():
                    await self._store.save_model_status(status)
            rows = await self._store.live_model_statuses(self.ttl_seconds)
        except Exception as error:  # PostgreSQL down: the view goes on from events alone
            self._missed(f"{type(error).__name__}: {error}")
            return
        if self._misses >= MISSED_BEATS:
            logger.info("replica heartbeat answered again after {} missed beats", self._misses)
        self._misses = 0
        self._store_failing = False
        now = time.monotonic()
        for row in rows:
            if row.replica == self.replica:
                continue
            self._seen[row.replica] = now
            known = self._others.get((row.name, row.replica))
            if known is None or row.updated_at > known.updated_at:
                blank = self._blank(row.name, row.replica)
                row.backend, row.dimensions = blank.backend, blank.dimensions
                self._others[(row.name, row.replica)] = row

    def _missed(self, why: str) -> None:
        """One beat not saved. A slow or failed beat alone is routine (a busy machine, a database
        restarting); MISSED_BEATS in a row is what other replicas notice, so that is the warning."""
        self._store_failing = True
        self._misses += 1
        if self._misses == MISSED_BEATS:
            logger.warning(
                "replica heartbeat failed {} times in a row ({}): other replicas now treat this one as gone "
                "(their Model.replicas stop listing it) and it follows theirs from live events only. Check "
                "that PostgreSQL (CITADEL_DATABASE_URL, or the embedded one) is up and answering, e.g. with "
                "`citadel doctor`; beats resume on their own once it answers",
                self._misses,
                why,
            )
        else:
            logger.debug("replica heartbeat {} missed ({})", self._misses, why)

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._store is not None:
            try:  # leave at once rather than after three missed beats
                await self._store.forget_replica(self.replica)
            except Exception as error:
                logger.debug("removing the heartbeat of {} failed: {}", self.replica, error)
