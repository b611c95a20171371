"""PostgreSQL, the source of truth: collections and documents (with their indexing status), over
an asyncpg pool. Model states per replica live in app/adapters/postgres_replicas.py.

Outages (refused connections, a server shutting down, a broken pool) surface as
DependencyUnavailable (app/adapters/postgres_pool.py); constraint violations as Conflict, NotFound
or BadInput.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, get_args

import asyncpg

from app.errors import BadInput, Conflict, NotFound
from app.adapters.postgres_pool import connection, dumps_json
from app.adapters.postgres_rows import CollectionRow, DocumentRow, DocumentStatus, DocumentWrite, UpsertOutcome

# -- the repository -----------------------------------------------------------------------------

_DOCUMENT_COLUMNS = "collection, id, text, metadata, content_hash, point_id, status, created_at, updated_at"


def _collection(record: asyncpg.Record) -> CollectionRow:
    return CollectionRow(
        name=record["name"],
        model=record["model"],
        model_revision=record["model_revision"],
        dimensions=record["dimensions"],
        distance=record["distance"],
        indexed_fields=tuple(record["indexed_fields"]),
        created_at=record["created_at"],
        keyword_index=record["keyword_index"],
        keyword_cursor=record["keyword_cursor"],
        chunk_max_tokens=record["chunk_max_tokens"],
        chunk_overlap_tokens=record["chunk_overlap_tokens"],
    )


def _document(record: asyncpg.Record) -> DocumentRow:
    return DocumentRow(
        collection=record["collection"],
        id=record["id"],
        text=record["text"],
        metadata=record["metadata"],
        content_hash=record["content_hash"],
        point_id=str(record["point_id"]),
        status=record["status"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
        vector=record.get("vector"),
    )


def _affected(command_status: str) -> int:
    # asyncpg returns the command tag, e.g. "UPDATE 3" or "INSERT 0 3".
    return int(command_status.rsplit(" ", 1)[-1])


def _check_status(status: str) -> None:
    if status not in get_args(DocumentStatus):
        raise BadInput(f"unknown document status {status!r}", field="status")


class PostgresRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return connection(self.pool)

    # -- collections ------------------------------------------------------------------------

    async def create_collection(
        self,
        name: str,
        model: str,
        model_revision: str,
        dimensions: int,
        distance: str,
        indexed_fields: Sequence[str] = (),
        keyword_index: bool = False,
        chunk_max_tokens: int | None = None,
        chunk_overlap_tokens: int = 0,
    ) -> CollectionRow:
        async with self._connection() as conn:
            try:
                record = await conn.fetchrow(
                    """
                    INSERT INTO collections (name, model, model_revision, dimensions, distance, indexed_fields,
                                             keyword_index, chunk_max_tokens, chunk_overlap_tokens)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                    RETURNING *
                    """,
                    name, model, model_revision, dimensions, distance, list(indexed_fields),
                    "ready" if keyword_index else "none", chunk_max_tokens, chunk_overlap_tokens,
                )  # fmt: skip
            except asyncpg.UniqueViolationError:
                raise Conflict(f"collection {name!r} already exists", collection=name) from None
            except asyncpg.CheckViolationError as exc:
                raise BadInput(f"invalid collection {name!r} ({exc.constraint_name})", collection=name) from None
        return _collection(record)

    async def get_collection(self, name: str) -> CollectionRow | None:
        async with self._connection() as conn:
            record = await conn.fetchrow("SELECT * FROM collections WHERE name = $1", name)
        return _collection(record) if record else None

    async def require_collection(self, name: str) -> CollectionRow:
        """The collection, or NotFound: for callers that cannot go on without it."""
        row = await self.get_collection(name)
        if row is None:
            raise NotFound(f"collection {name!r} not found", collection=name)
        return row

    async def list_collections(self) -> list[CollectionRow]:
        async with self._connection() as conn:
            records = await conn.fetch("SELECT * FROM collections ORDER BY name")
        return [_collection(r) for r in records]

    async def delete_collection(self, name: str) -> bool:
        """Delete the collection and (cascade) its documents; False when it did not exist."""
        async with self._connection() as conn:
            return _affected(await conn.execute("DELETE FROM collections WHERE name = $1", name)) > 0

    async def collections_building_keywords(self) -> list[CollectionRow]:
        async with self._connection() as conn:
            records = await conn.fetch("SELECT * FROM collections WHERE keyword_index = 'building' ORDER BY name")
        return [_collection(r) for r in records]

    async def set_keyword_progress(self, name: str, cursor: str | None, done: bool) -> None:
        """Record the keyword backfill's position; done: the index is ready."""
        async with self._connection() as conn:
            await conn.execute(
                """
                UPDATE collections SET keyword_cursor = $2,
                    keyword_index = CASE WHEN $3 THEN 'ready' ELSE keyword_index END
                WHERE name = $1 AND keyword_index = 'building'
                """,
                name, None if done else cursor, done,
            )  # fmt: skip

    async def keyword_progress(self, name: str) -> tuple[int, int]:
        """(documents backfilled, documents) of a collection whose keyword index is being built."""
        async with self._connection() as conn:
            record = await conn.fetchrow(
                """
                SELECT count(*) FILTER (WHERE c.keyword_cursor IS NOT NULL AND d.id <= c.keyword_cursor) AS done,
                       count(d.id) AS total
                FROM collections c LEFT JOIN documents d ON d.collection = c.name AND d.status <> 'deleting'
                WHERE c.name = $1
                GROUP BY c.name
                """,
                name,
            )
        return (int(record["done"]), int(record["total"])) if record else (0, 0)

    async def count_documents(self, name: str, status: DocumentStatus | None = None) -> int:
        """Documents of a collection with `status`; without one, those not being deleted."""
        if status is not None:
            _check_status(status)
        async with self._connection() as conn:
            if status is None:
                sql = "SELECT count(*) FROM documents WHERE collection = $1 AND status <> 'deleting'"
                return int(await conn.fetchval(sql, name))
            sql = "SELECT count(*) FROM documents WHERE collection = $1 AND status = $2"
            return int(await conn.fetchval(sql, name, status))

    async def count_documents_in(self, names: Sequence[str]) -> dict[str, int]:
        """Documents not being deleted, per collection, for many collections in one query."""
        if not names:
            return {}
        async with self._connection() as conn:
            records = await conn.fetch(
                """
                SELECT collection, count(*) AS n FROM documents
                WHERE collection = ANY($1::text[]) AND status <> 'deleting' GROUP BY collection
                """,
                list(names),
            )
        counts = {r["collection"]: int(r["n"]) for r in records}
        return {name: counts.get(name, 0) for name in names}

    async def document_metadata(self, collection: str, after: str | None, limit: int) -> list[tuple[str, Any]]:
        """(id, metadata) of documents not being deleted, in id order after `after`: for checks
        that must look at every document's metadata (a tenant's count)."""
        async with self._connection() as conn:
            records = await conn.fetch(
                """
                SELECT id, metadata FROM documents
                WHERE collection = $1 AND status <> 'deleting' AND ($2::text IS NULL OR id > $2)
                ORDER BY id LIMIT $3
                """,
                collection, after, max(0, limit),
            )  # fmt: skip
        return [(r["id"], r["metadata"]) for r in records]

    # -- documents --------------------------------------------------------------------------

    async def upsert_documents(self, collection: str, docs: Sequence[DocumentWrite]) -> list[UpsertOutcome]:
        """Write documents in one transaction; one outcome per document, in input order.

        New and changed rows (text, content hash or metadata) become 'pending'; rows being
        deleted come back as 'pending' too; identical rows are left exactly as they are.
        """
        if not docs:
            return []
        seen: set[str] = set()
        for doc in docs:
            if doc.id in seen:
                raise BadInput(f"document id {doc.id!r} appears twice in one upsert", field="id", id=doc.id)
            seen.add(doc.id)

        async with self._connection() as conn, conn.transaction():
            # Lock the existing rows: a concurrent upsert of the same ids waits for this one.
            locked = await conn.fetch(
                """
                SELECT id, content_hash, metadata, status FROM documents
                WHERE collection = $1 AND id = ANY($2::text[])
                FOR UPDATE
                """,
                collection, list(seen),
            )  # fmt: skip
            existing = {r["id"]: r for r in locked}
            outcomes: list[UpsertOutcome] = []
            changed: list[tuple[DocumentWrite, str]] = []
            for doc in docs:
                metadata_json = dumps_json(dict(doc.metadata))
                row = existing.get(doc.id)
                if row is None:
                    outcomes.append(UpsertOutcome("inserted", pending=True))
                elif (
                    row["content_hash"] == doc.content_hash
                    and row["metadata"] == json.loads(metadata_json)  # compared as jsonb stores it
                    and row["status"] != "deleting"
                ):
                    outcomes.append(UpsertOutcome("unchanged", pending=row["status"] == "pending"))
                    continue
                else:
                    outcomes.append(UpsertOutcome("updated", pending=True))
                changed.append((doc, metadata_json))

            if changed:
                try:
                    await conn.execute(
                        """
                        INSERT INTO documents (collection, id, text, metadata, content_hash, point_id, vector, status)
                        SELECT $1, t.id, t.text, t.metadata::jsonb, t.content_hash, t.point_id, t.vector, 'pending'
                        FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::bytea[])
                             AS t(id, text, metadata, content_hash, point_id, vector)
                        ON CONFLICT (collection, id) DO UPDATE SET
                            text = EXCLUDED.text,
                            metadata = EXCLUDED.metadata,
                            content_hash = EXCLUDED.content_hash,
                            point_id = EXCLUDED.point_id,
                            vector = EXCLUDED.vector,
                            status = 'pending',
                            updated_at = now()
                        """,
                        collection,
                        [d.id for d, _ in changed],
                        [d.text for d, _ in changed],
                        [m for _, m in changed],
                        [d.content_hash for d, _ in changed],
                        [str(d.point_id) for d, _ in changed],
                        [d.vector for d, _ in changed],
                    )
                except asyncpg.ForeignKeyViolationError:
                    raise NotFound(f"collection {collection!r} not found", collection=collection) from None
        return outcomes

    async def mark_indexed(
        self, collection: str, ids: Sequence[str], content_hashes: Sequence[str] | None = None
    ) -> int:
        """Mark pending rows indexed; returns how many changed.

        With `content_hashes` (aligned with `ids`), a row is marked only if it still has the
        hash that was indexed: a row rewritten meanwhile stays pending for its new content.
        """
        if not ids:
            return 0
        hashes: list[str | None] = list(content_hashes) if content_hashes is not None else [None] * len(ids)
        if len(hashes) != len(ids):
            raise BadInput("content_hashes must match ids one to one", field="content_hashes")
        async with self._connection() as conn:
            status = await conn.execute(
                """
                UPDATE documents AS d SET status = 'indexed', updated_at = now()
                FROM unnest($2::text[], $3::text[]) AS t(id, content_hash)
                WHERE d.collection = $1 AND d.id = t.id AND d.status = 'pending'
                  AND (t.content_hash IS NULL OR d.content_hash = t.content_hash)
                """,
                collection, list(ids), hashes,
            )  # fmt: skip
        return _affected(status)

    async def pending_documents(self, limit: int, collection: str | None = None) -> list[DocumentRow]:
        """Rows waiting for the reconciler ('pending' or 'deleting'), oldest first: across
        collections, or of one collection."""
        async with self._connection() as conn:
            records = await conn.fetch(
                f"""
                SELECT {_DOCUMENT_COLUMNS}, vector FROM documents
                WHERE status <> 'indexed' AND ($2::text IS NULL OR collection = $2)
                ORDER BY updated_at, collection, id
                LIMIT $1
                """,
                max(0, limit), collection,
            )  # fmt: skip
        return [_document(r) for r in records]

    async def pending_collections(self) -> list[str]:
        """Collections with rows waiting for the reconciler, the one waiting longest first."""
        async with self._connection() as conn:
            records = await conn.fetch(
                """
                SELECT collection FROM documents WHERE status <> 'indexed'
                GROUP BY collection ORDER BY min(updated_at), collection
                """
            )
        return [r["collection"] for r in records]

    async def existing_ids(self, collection: str, ids: Sequence[str]) -> set[str]:
        """Which of `ids` have a row in the collection, whatever its status."""
        if not ids:
            return set()
        async with self._connection() as conn:
            records = await conn.fetch(
                "SELECT id FROM documents WHERE collection = $1 AND id = ANY($2::text[])", collection, list(set(ids))
            )
        return {r["id"] for r in records}

    async def get_documents(self, collection: str, ids: Sequence[str]) -> list[DocumentRow | None]:
        """Rows for `ids` in the same order (None where missing), in one query: a DataLoader's
        batch function. Rows of every status are returned; callers check `status`."""
        if not ids:
            return []
        async with self._connection() as conn:
            records = await conn.fetch(
                f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE collection = $1 AND id = ANY($2::text[])",
                collection, list(ids),
            )  # fmt: skip
        by_id = {r["id"]: _document(r) for r in records}
        return [by_id.get(i) for i in ids]

    async def get_document(self, collection: str, id: str) -> DocumentRow | None:
        return (await self.get_documents(collection, [id]))[0]

    async def list_documents(
        self, collection: str, after: str | None = None, limit: int = 100, include_deleting: bool = False
    ) -> list[DocumentRow]:
        """A page of documents ordered by id (bytewise), starting after the cursor id `after`."""
        if limit <= 0:
            return []
        where = "collection = $1" + ("" if include_deleting else " AND status <> 'deleting'")
        args: list[Any] = [collection, limit]
        if after is not None:
            where += " AND id > $3"
            args.append(after)
        async with self._connection() as conn:
            records = await conn.fetch(
                f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE {where} ORDER BY id LIMIT $2", *args
            )
        return [_document(r) for r in records]

    async def mark_deleting(self, collection: str, ids: Sequence[str]) -> int:
        """Hide rows until their vectors are gone; returns how many of `ids` existed."""
        if not ids:
            return 0
        async with self._connection() as conn:
            status = await conn.execute(
                """
                UPDATE documents SET status = 'deleting', updated_at = now()
                WHERE collection = $1 AND id = ANY($2::text[])
                """,
                collection, list(ids),
            )  # fmt: skip
        return _affected(status)

    async def purge_documents(self, collection: str, ids: Sequence[str]) -> int:
        """Remove rows marked 'deleting' (a row re-ingested meanwhile is kept); returns how many."""
        if not ids:
            return 0
        async with self._connection() as conn:
            status = await conn.execute(
                "DELETE FROM documents WHERE collection = $1 AND id = ANY($2::text[]) AND status = 'deleting'",
                collection, list(ids),
            )  # fmt: skip
        return _affected(status)

    # -- health -----------------------------------------------------------------------------

    async def ping(self) -> float:
        """Round-trip latency of a trivial query, in milliseconds."""
        started = time.perf_counter()
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")
        return (time.perf_counter() - started) * 1000.0
