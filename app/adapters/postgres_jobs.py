"""Jobs in PostgreSQL (table jobs, migrations 0007 and 0008): created QUEUED, moved to RUNNING by the replica
that took them, advanced one committed batch at a time (counts, cursor and errors in one UPDATE
that holds only while the job is RUNNING, so a cancelled job never advances), and finished once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from app.adapters.postgres_pool import connection
from app.domain.jobs import Job, JobError, JobKind, JobSource, JobState

_COLUMNS = """id, kind, collection, state, replica, principal_kind, key_id, sources, metadata, documents_total,
    documents_done, documents_failed, chunks_done, bytes_total, bytes_done, cursor_source, cursor_offset, cursor_id, errors,
    message, run_seconds, created_at, updated_at, finished_at"""


def _job(record: asyncpg.Record) -> Job:
    return Job(
        id=str(record["id"]),
        kind=JobKind(record["kind"]),
        collection=record["collection"],
        state=JobState(record["state"]),
        replica=record["replica"],
        principal_kind=record["principal_kind"],
        key_id=record["key_id"],
        sources=tuple(JobSource.from_json(s) for s in record["sources"]),
        metadata=record["metadata"],
        documents_total=record["documents_total"],
        documents_done=record["documents_done"],
        documents_failed=record["documents_failed"],
        chunks_done=record["chunks_done"],
        bytes_total=record["bytes_total"],
        bytes_done=record["bytes_done"],
        cursor_source=record["cursor_source"],
        cursor_offset=record["cursor_offset"],
        cursor_id=record["cursor_id"],
        errors=tuple(JobError(**e) for e in record["errors"]),
        message=record["message"],
        run_seconds=record["run_seconds"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
        finished_at=record["finished_at"],
    )


def _uuid(job_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        return None


class PostgresJobRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return connection(self.pool)

    async def create(
        self,
        job_id: str,
        kind: JobKind,
        collection: str,
        replica: str,
        principal_kind: str,
        key_id: str | None,
        sources: Sequence[JobSource],
        metadata: dict[str, Any] | None,
        documents_total: int | None = None,
    ) -> Job:
        """documents_total: when not the sources' (a REINDEX: the collection's documents)."""
        total = sum(s.documents for s in sources) if documents_total is None else documents_total
        size = sum(s.bytes for s in sources)
        async with self._connection() as conn:
            record = await conn.fetchrow(
                f"""
                INSERT INTO jobs (id, kind, collection, state, replica, principal_kind, key_id, sources, metadata,
                                  documents_total, bytes_total)
                VALUES ($1, $2, $3, 'QUEUED', $4, $5, $6, $7, $8, $9, $10)
                RETURNING {_COLUMNS}
                """,
                uuid.UUID(job_id), kind.value, collection, replica, principal_kind, key_id,
                [s.to_json() for s in sources], metadata, total, size,
            )  # fmt: skip
        return _job(record)

    async def get(self, job_id: str) -> Job | None:
        key = _uuid(job_id)
        if key is None:
            return None
        async with self._connection() as conn:
            record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", key)
        return _job(record) if record else None

    async def list(
        self,
        *,
        collections: Sequence[str] | None,
        collection: str | None,
        state: JobState | None,
        key_id: str | None,
        limit: int,
    ) -> list[Job]:
        """Newest first; `collections` None: every collection; `key_id`: only that key's jobs."""
        async with self._connection() as conn:
            records = await conn.fetch(
                f"""
                SELECT {_COLUMNS} FROM jobs
                WHERE ($1::text[] IS NULL OR collection = ANY($1::text[]))
                  AND ($2::text IS NULL OR collection = $2)
                  AND ($3::text IS NULL OR state = $3)
                  AND ($4::text IS NULL OR key_id = $4)
                ORDER BY created_at DESC, id
                LIMIT $5
                """,
                None if collections is None else list(collections), collection,
                None if state is None else state.value, key_id, limit,
            )  # fmt: skip
        return [_job(r) for r in records]

    async def active_on(self, replica: str) -> list[Job]:
        """This replica's unfinished jobs, oldest first: what it resumes when it starts."""
        async with self._connection() as conn:
            records = await conn.fetch(
                f"SELECT {_COLUMNS} FROM jobs WHERE replica = $1 AND state IN ('QUEUED', 'RUNNING') ORDER BY created_at, id",
                replica,
            )
        return [_job(r) for r in records]

    async def orphaned(self, replica: str, silent_seconds: float) -> list[Job]:
        """Unfinished jobs of other replicas that have not heart-beat (replica_heartbeats) for
        `silent_seconds`, oldest first: a replica killed, or scaled away, for good."""
        async with self._connection() as conn:
            records = await conn.fetch(
                f"""
                SELECT {_COLUMNS} FROM jobs j
                WHERE state IN ('QUEUED', 'RUNNING') AND replica <> $1
                  AND NOT EXISTS (
                      SELECT 1 FROM replica_heartbeats h
                      WHERE h.replica = j.replica AND h.seen_at > now() - make_interval(secs => $2)
                  )
                ORDER BY created_at, id
                """,
                replica, silent_seconds,
            )  # fmt: skip
        return [_job(r) for r in records]

    async def adopt(self, job_id: str, gone: str, replica: str) -> bool:
        """Move an unfinished job of replica `gone` to `replica`; False when it moved or ended meanwhile."""
        async with self._connection() as conn:
            moved = await conn.fetchval(
                """UPDATE jobs SET replica = $3, updated_at = now()
                   WHERE id = $1 AND replica = $2 AND state IN ('QUEUED', 'RUNNING') RETURNING id""",
                uuid.UUID(job_id), gone, replica,
            )  # fmt: skip
        return moved is not None

    async def active_ids(self) -> set[str]:
        async with self._connection() as conn:
            records = await conn.fetch("SELECT id FROM jobs WHERE state IN ('QUEUED', 'RUNNING')")
        return {str(r["id"]) for r in records}

    async def start(self, job_id: str) -> Job | None:
        """QUEUED (or RUNNING, when resumed) -> RUNNING; None when the job is finished (cancelled)."""
        async with self._connection() as conn:
            record = await conn.fetchrow(
                f"""UPDATE jobs SET state = 'RUNNING', updated_at = now()
                    WHERE id = $1 AND state IN ('QUEUED', 'RUNNING') RETURNING {_COLUMNS}""",
                uuid.UUID(job_id),
            )
        return _job(record) if record else None

    async def commit_batch(
        self,
        job_id: str,
        *,
        after: tuple[int, int],
        cursor_source: int,
        cursor_offset: int,
        done: int,
        failed: int,
        chunks: int,
        bytes_done: int,
        seconds: float,
        errors: Sequence[JobError],
        max_errors: int,
        cursor_id: str | None = None,
    ) -> Job | None:
        """Add one batch's counts and move the cursor past it, only while the job is RUNNING and its
        cursor is still `after` (the batch's start: a second runner of the same job, or a commit
        applied before, never counts a batch twice); errors are appended up to `max_errors` in all.
        None: the job is no longer RUNNING, or its cursor has moved."""
        new_errors = [e.__dict__ for e in errors]
        async with self._connection() as conn:
            record = await conn.fetchrow(
                f"""
                UPDATE jobs SET
                    cursor_source = $2, cursor_offset = $3, cursor_id = COALESCE($13, cursor_id),
                    documents_done = documents_done + $4, documents_failed = documents_failed + $5,
                    chunks_done = chunks_done + $6, bytes_done = $7, run_seconds = run_seconds + $8,
                    errors = CASE WHEN jsonb_array_length(errors) >= $10 THEN errors
                             ELSE (SELECT COALESCE(jsonb_agg(e), '[]'::jsonb) FROM (
                                   SELECT e FROM jsonb_array_elements(errors || $9::jsonb) WITH ORDINALITY AS x(e, n)
                                   ORDER BY n LIMIT $10) capped) END,
                    updated_at = now()
                WHERE id = $1 AND state = 'RUNNING' AND cursor_source = $11 AND cursor_offset = $12
                RETURNING {_COLUMNS}
                """,
                uuid.UUID(job_id), cursor_source, cursor_offset, done, failed, chunks, bytes_done, seconds,
                new_errors, max_errors, after[0], after[1], cursor_id,
            )  # fmt: skip
        return _job(record) if record else None

    async def finish(self, job_id: str, state: JobState, message: str | None) -> Job | None:
        """RUNNING/QUEUED -> a finished state; None when it had finished already (e.g. cancelled)."""
        async with self._connection() as conn:
            record = await conn.fetchrow(
                f"""UPDATE jobs SET state = $2, message = $3, updated_at = now(), finished_at = now()
                    WHERE id = $1 AND state IN ('QUEUED', 'RUNNING') RETURNING {_COLUMNS}""",
                uuid.UUID(job_id), state.value, message,
            )  # fmt: skip
        return _job(record) if record else None
