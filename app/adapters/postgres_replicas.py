"""PostgreSQL side of a cluster of replicas: each model's last state per replica, the replicas'
heartbeats, and the lock that lets one replica download a model into a shared cache.

The lock is a session-level advisory lock on a connection held for the whole download: when the
holder dies (even kill -9) its connection closes and PostgreSQL releases the lock, so a waiting
replica takes over without any lease to expire.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg
from loguru import logger

from app.adapters.postgres_pool import connection, translate_connection_errors
from app.domain.models import ModelState, ModelStatus


def _status_from_record(record: asyncpg.Record) -> ModelStatus:
    """The PostgreSQL row form of a ModelStatus (backend and dimensions come from the catalog)."""
    return ModelStatus(
        name=record["model"],
        backend="",
        dimensions=None,
        replica=record["replica"],
        state=ModelState(record["state"]),
        attempts=record["attempts"],
        max_attempts=record["max_attempts"],
        bytes_done=record["bytes_done"],
        bytes_total=record["bytes_total"],
        device=record["device"],
        last_error=record["last_error"],
        fallback_for=record["fallback_for"],
        updated_at=record["updated_at"],
    )


def lock_id(key: str) -> int:
    """A stable signed 64-bit advisory-lock id for a text key."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


class PostgresReplicaStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return connection(self.pool)

    # -- model states ------------------------------------------------------------------------

    async def save_model_status(self, status: ModelStatus) -> None:
        async with self._connection() as conn:
            await conn.execute(
                """
                INSERT INTO model_replicas (model, replica, state, attempts, max_attempts, bytes_done,
                                            bytes_total, device, last_error, fallback_for, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                ON CONFLICT (model, replica) DO UPDATE SET
                    state = EXCLUDED.state,
                    attempts = EXCLUDED.attempts,
                    max_attempts = EXCLUDED.max_attempts,
                    bytes_done = EXCLUDED.bytes_done,
                    bytes_total = EXCLUDED.bytes_total,
                    device = EXCLUDED.device,
                    last_error = EXCLUDED.last_error,
                    fallback_for = EXCLUDED.fallback_for,
                    updated_at = EXCLUDED.updated_at
                WHERE model_replicas.updated_at <= EXCLUDED.updated_at  -- a late writer never goes back in time
                """,
                status.name, status.replica, status.state.value, status.attempts, status.max_attempts,
                status.bytes_done, status.bytes_total, status.device, status.last_error, status.fallback_for,
                status.updated_at,
            )  # fmt: skip

    async def model_statuses(self, replica: str | None = None) -> list[ModelStatus]:
        """Every saved state (of one replica when given), live or not: what an operator reads."""
        async with self._connection() as conn:
            records = await conn.fetch(
                "SELECT * FROM model_replicas WHERE $1::text IS NULL OR replica = $1 ORDER BY model, replica",
                replica,
            )
        return [_status_from_record(r) for r in records]

    async def live_model_statuses(self, within_seconds: float) -> list[ModelStatus]:
        async with self._connection() as conn:
            records = await conn.fetch(
                """
                SELECT m.* FROM model_replicas m JOIN replica_heartbeats h USING (replica)
                WHERE h.seen_at > now() - make_interval(secs => $1)
                ORDER BY m.model, m.replica
                """,
                within_seconds,
            )
        return [_status_from_record(r) for r in records]

    # -- heartbeats --------------------------------------------------------------------------

    async def heartbeat(self, replica: str) -> None:
        async with self._connection() as conn:
            await conn.execute(
                """
                INSERT INTO replica_heartbeats (replica) VALUES ($1)
                ON CONFLICT (replica) DO UPDATE SET seen_at = now()
                """,
                replica,
            )

    async def forget_replica(self, replica: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM replica_heartbeats WHERE replica = $1", replica)

    # -- the shared-cache download lock ------------------------------------------------------

    @asynccontextmanager
    async def try_hold(self, key: str) -> AsyncIterator[bool]:
        """True inside the block while this process holds the lock; False when another does."""
        lock = lock_id(key)
        with translate_connection_errors():
            conn = await self.pool.acquire()
        try:
            with translate_connection_errors():
                held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock))
            try:
                yield held  # the download runs here; its errors are its own, not the database's
            finally:
                if held:
                    try:
                        await conn.execute("SELECT pg_advisory_unlock($1)", lock)
                    except Exception as error:  # the connection broke: PostgreSQL released it anyway
                        logger.debug("releasing download lock {} failed: {}", key, error)
        finally:
            try:
                await self.pool.release(conn)
            except Exception as error:
                logger.debug("returning a connection to the pool failed: {}", error)
