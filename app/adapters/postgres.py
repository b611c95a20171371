"""PostgreSQL, the source of truth: collections and documents (with their indexing status), over
an asyncpg pool. Model states per replica live in app/adapters/postgres_replicas.py.

Outages (refused connections, a server shutting down, a broken pool) surface as
DependencyUnavailable (app/adapters/postgres_pool.py); constraint violations as Conflict, NotFound
or BadInput.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, get_args

import asyncpg

from app.errors import BadInput, Conflict, NotFound
from app.adapters.postgres_pool import connection, dumps_json
from app.adapters.postgres_rows import CollectionRow, DocumentRow, DocumentStatus, DocumentWrite, NextVersion, UpsertOutcome

# -- the repository -----------------------------------------------------------------------------

T = TypeVar("T")
TRANSACTION_ATTEMPTS = 5  # a deadlock or serialization failure is retried, then answered CONFLICT

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
        vectors=record["vectors"],
        next=None
        if record["next_model"] is None
        else NextVersion(
            model=record["next_model"],
            model_revision=record["next_model_revision"],
            dimensions=record["next_dimensions"],
            vectors=record["next_vectors"],
            chunk_max_tokens=record["next_chunk_max_tokens"],
            chunk_overlap_tokens=record["next_chunk_overlap_tokens"],
        ),
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


async def _write_rows(
    conn: asyncpg.Connection,
    collection: str,
    docs: Sequence[DocumentWrite],
    metadata_json: Mapping[str, str],
    *,
    replace: bool,
) -> set[str]:
    """Insert rows as 'pending' in the given order; replace: overwrite existing rows (already
    locked by the caller), else leave them alone. Returns the ids written."""
    on_conflict = (
        """DO UPDATE SET text = EXCLUDED.text, metadata = EXCLUDED.metadata, content_hash = EXCLUDED.content_hash,
           point_id = EXCLUDED.point_id, vector = EXCLUDED.vector, status = 'pending', updated_at = now()"""
        if replace
        else "DO NOTHING"
    )
    try:
        records = await conn.fetch(
            f"""
            INSERT INTO documents (collection, id, text, metadata, content_hash, point_id, vector, status)
            SELECT $1, t.id, t.text, t.metadata::jsonb, t.content_hash, t.point_id, t.vector, 'pending'
            FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::bytea[])
                 WITH ORDINALITY AS t(id, text, metadata, content_hash, point_id, vector, n)
            ORDER BY t.n
            ON CONFLICT (collection, id) {on_conflict}
            RETURNING id
            """,
            collection,
            [d.id for d in docs],
            [d.text for d in docs],
            [metadata_json[d.id] for d in docs],
            [d.content_hash for d in docs],
            [str(d.point_id) for d in docs],
            [d.vector for d in docs],
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound(f"collection {collection!r} not found", collection=collection) from None
    return {r["id"] for r in records}


async def _set_status(conn: asyncpg.Connection, collection: str, ids: Sequence[str], status: DocumentStatus) -> None:
    """Set the status of rows the caller has locked."""
    await conn.execute(
        "UPDATE documents SET status = $3, updated_at = now() WHERE collection = $1 AND id = ANY($2::text[])",
        collection, list(ids), status,
    )  # fmt: skip


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

    # -- reindex: the next version of a collection ----------------------------------------------

    async def begin_reindex(self, name: str, version: NextVersion) -> CollectionRow | None:
        """Record the version a REINDEX job builds (writes reach it from now on); None when the
        collection is gone or already has a next version."""
        async with self._connection() as conn:
            record = await conn.fetchrow(
                """
                UPDATE collections SET next_vectors = $2, next_model = $3, next_model_revision = $4,
                    next_dimensions = $5, next_chunk_max_tokens = $6, next_chunk_overlap_tokens = $7
                WHERE name = $1 AND next_model IS NULL RETURNING *
                """,
                name, version.vectors, version.model, version.model_revision, version.dimensions,
                version.chunk_max_tokens, version.chunk_overlap_tokens,
            )  # fmt: skip
        return _collection(record) if record else None

    async def reindex_backlog(self, name: str, limit: int) -> list[str]:
        """Documents a writer indexed without the next version's points, in id order."""
        async with self._connection() as conn:
            records = await conn.fetch(
                "SELECT id FROM reindex_backlog WHERE collection = $1 ORDER BY id LIMIT $2", name, limit
            )
        return [r["id"] for r in records]

    async def drop_from_backlog(self, name: str, ids: Sequence[str]) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM reindex_backlog WHERE collection = $1 AND id = ANY($2::text[])", name, list(ids))

    async def switch_version(self, name: str, vectors: str) -> str | None:
        """Make the next version (held in store collection `vectors`) the current one, in one
        UPDATE; returns the store collection of the version it replaced, None when the backlog
        is not empty yet (index it, then try again). The collection row is locked FOR UPDATE:
        every write_if_current and purge_if_deleting in flight (FOR KEY SHARE) ends first, and
        any that starts after sees the new version. BadInput when the collection has no such
        next version (deleted, or its reindex abandoned)."""

        async def switch(conn: asyncpg.Connection) -> str | None:
            record = await conn.fetchrow("SELECT * FROM collections WHERE name = $1 FOR UPDATE", name)
            if record is None or record["next_vectors"] != vectors:
                raise BadInput(f"collection {name!r} is not being reindexed into {vectors!r}", collection=name)
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM reindex_backlog WHERE collection = $1)", name):
                return None
            await conn.execute(
                """
                UPDATE collections SET model = next_model, model_revision = next_model_revision,
                    dimensions = next_dimensions, chunk_max_tokens = next_chunk_max_tokens,
                    chunk_overlap_tokens = next_chunk_overlap_tokens, vectors = next_vectors,
                    next_vectors = NULL, next_model = NULL, next_model_revision = NULL, next_dimensions = NULL,
                    next_chunk_max_tokens = NULL, next_chunk_overlap_tokens = 0
                WHERE name = $1
                """,
                name,
            )
            return record["vectors"] or record["name"]

        return await self._transaction(switch)

    async def abandon_reindex(self, name: str, vectors: str) -> bool:
        """Forget the next version held in `vectors` (a failed or cancelled reindex): writes stop
        reaching it. False when it was not the collection's next version."""

        async def abandon(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                """
                UPDATE collections SET next_vectors = NULL, next_model = NULL, next_model_revision = NULL,
                    next_dimensions = NULL, next_chunk_max_tokens = NULL, next_chunk_overlap_tokens = 0
                WHERE name = $1 AND next_vectors = $2
                """,
                name, vectors,
            )  # fmt: skip
            await conn.execute("DELETE FROM reindex_backlog WHERE collection = $1", name)
            return _affected(status) > 0

        return await self._transaction(abandon)

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

    async def document_metadata_keys(
        self, collection: str, after: str | None, limit: int, keys: Sequence[str]
    ) -> list[tuple[str, Any]]:
        """(id, metadata) like document_metadata, the metadata cut to its top-level `keys` (a key
        it lacks stays absent, one it holds keeps its whole value): scans that read a few
        fields of every row (aggregates, sorted listings) move only those."""
        async with self._connection() as conn:
            records = await conn.fetch(
                """
                SELECT id, CASE WHEN jsonb_typeof(metadata) = 'object' THEN
                           (SELECT coalesce(jsonb_object_agg(k, metadata -> k), '{}'::jsonb)
                            FROM unnest($4::text[]) AS k WHERE metadata ? k)
                       ELSE metadata END AS metadata
                FROM documents
                WHERE collection = $1 AND status <> 'deleting' AND ($2::text IS NULL OR id > $2)
                ORDER BY id LIMIT $3
                """,
                collection, after, max(0, limit), list(keys),
            )  # fmt: skip
        return [(r["id"], r["metadata"]) for r in records]

    # -- documents --------------------------------------------------------------------------

    async def upsert_documents(
        self,
        collection: str,
        docs: Sequence[DocumentWrite],
        may_replace: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> list[UpsertOutcome]:
        """Write documents in one transaction; one outcome per document, in input order.

        New and changed rows (text, content hash or metadata) become 'pending'; rows being
        deleted come back as 'pending' too; identical rows are left exactly as they are.
        `may_replace(metadata)`: whether the caller may overwrite an existing row (a tenant key
        only its own); checked under the row lock, so a row another writer creates meanwhile is
        judged as it is when this write happens. Refused rows are "refused" and left untouched.

        Concurrent writers of the same ids neither deadlock nor double count: new ids are
        inserted first (ON CONFLICT DO NOTHING, in id order: a racing inserter of the same id
        waits for this transaction and then finds the row, so each new id is "inserted" exactly
        once), then every other row is locked in id order (FOR UPDATE ORDER BY id, the order
        every writer of documents uses) and compared with what it is now.
        """
        if not docs:
            return []
        seen: set[str] = set()
        for doc in docs:
            if doc.id in seen:
                raise BadInput(f"document id {doc.id!r} appears twice in one upsert", field="id", id=doc.id)
            seen.add(doc.id)
        ordered = sorted(docs, key=lambda d: d.id)  # code point order == the "C" collation of documents.id
        metadata_json = {d.id: dumps_json(dict(d.metadata)) for d in docs}

        async def write(conn: asyncpg.Connection) -> dict[str, UpsertOutcome]:
            inserted = await _write_rows(conn, collection, ordered, metadata_json, replace=False)
            outcomes = {i: UpsertOutcome("inserted", pending=True) for i in inserted}
            rest = [d for d in ordered if d.id not in inserted]
            if not rest:
                return outcomes
            locked = await conn.fetch(
                """
                SELECT id, content_hash, metadata, status FROM documents
                WHERE collection = $1 AND id = ANY($2::text[])
                ORDER BY id FOR UPDATE
                """,
                collection, [d.id for d in rest],
            )  # fmt: skip
            existing = {r["id"]: r for r in locked}
            changed: list[DocumentWrite] = []
            for doc in rest:
                row = existing.get(doc.id)
                if row is None:  # deleted since the insert above: written as new below
                    outcomes[doc.id] = UpsertOutcome("inserted", pending=True)
                elif may_replace is not None and not may_replace(row["metadata"]):
                    outcomes[doc.id] = UpsertOutcome("refused", pending=False)
                    continue
                elif (
                    row["content_hash"] == doc.content_hash
                    and row["metadata"] == json.loads(metadata_json[doc.id])  # compared as jsonb stores it
                    and row["status"] != "deleting"
                ):
                    outcomes[doc.id] = UpsertOutcome("unchanged", pending=row["status"] == "pending")
                    continue
                else:
                    outcomes[doc.id] = UpsertOutcome("updated", pending=True)
                changed.append(doc)
            if changed:
                await _write_rows(conn, collection, changed, metadata_json, replace=True)
            return outcomes

        outcomes = await self._transaction(write)
        return [outcomes[d.id] for d in docs]

    async def write_if_current(
        self,
        collection: str,
        expected: Mapping[str, str],
        write: Callable[[list[str], CollectionRow], Awaitable[Collection[str] | None]],
        *,
        status: DocumentStatus | tuple[DocumentStatus, ...] = "pending",
        mark_indexed: bool = True,
        clear_backlog: bool = False,
    ) -> list[str]:
        """Call `write(ids, collection_row)` with the ids whose row still has `status` and the
        content hash in `expected` ({id: content_hash}), while those rows are locked; then
        (mark_indexed) mark them indexed in the same transaction. Returns those ids.

        This is where the vector store stays a projection of PostgreSQL under concurrency: a
        point is written only while its row is locked and still holds exactly the version the
        point was made from. A writer that changes the row takes the same lock, so the store
        sees each id's writes in the order PostgreSQL committed them and the last write to a
        point is always made from the row's latest version. A version overtaken meanwhile
        writes nothing (whoever wrote the newer row indexes it). `write` must not use this
        repository: it runs on this transaction's connection's time, with the locks held.

        The collection row is read under the same transaction (FOR KEY SHARE: a reindex's switch
        waits for it, see switch_version), so `write` learns which versions are live now and
        returns the store collections among them it had no points for: the current one's rows
        stay pending (the reconciler indexes them), the next one's go to its reindex_backlog.
        """
        statuses = (status,) if isinstance(status, str) else tuple(status)
        if any(s not in ("pending", "indexed") for s in statuses):
            raise BadInput(f"cannot write points of {status!r} rows", field="status")

        async def locked(conn: asyncpg.Connection) -> list[str]:
            records = await conn.fetch(
                """
                SELECT id, content_hash FROM documents
                WHERE collection = $1 AND id = ANY($2::text[]) AND status = ANY($3::text[])
                ORDER BY id FOR UPDATE
                """,
                collection, sorted(expected), list(statuses),
            )  # fmt: skip
            current = [r["id"] for r in records if expected.get(r["id"]) == r["content_hash"]]
            if not current:
                return current
            record = await conn.fetchrow("SELECT * FROM collections WHERE name = $1 FOR KEY SHARE", collection)
            if record is None:  # deleted meanwhile: its rows go with it
                return []
            live = _collection(record)
            missing = set(await write(current, live) or ())
            if live.next is not None and live.next.vectors in missing:
                await conn.execute(
                    """
                    INSERT INTO reindex_backlog (collection, id) SELECT $1, unnest($2::text[])
                    ON CONFLICT DO NOTHING
                    """,
                    collection, current,
                )  # fmt: skip
            elif clear_backlog:  # a reindex wrote the next version of these rows as they are now
                await conn.execute(
                    "DELETE FROM reindex_backlog WHERE collection = $1 AND id = ANY($2::text[])", collection, current
                )
            if mark_indexed and "pending" in statuses and live.store_name not in missing:
                await _set_status(conn, collection, current, "indexed")
            return current

        if not expected:
            return []
        return await self._transaction(locked)

    async def purge_if_deleting(
        self, collection: str, ids: Sequence[str], remove: Callable[[list[str], CollectionRow], Awaitable[None]]
    ) -> int:
        """Call `remove(ids, collection_row)` with the ids whose row is still 'deleting', while
        those rows are locked (and the collection row read in the same transaction: every live
        version loses their points), then delete the rows in the same transaction; returns how
        many. A row that was re-ingested meanwhile is 'pending' again: its points and row are kept."""

        async def locked(conn: asyncpg.Connection) -> int:
            records = await conn.fetch(
                """
                SELECT id FROM documents WHERE collection = $1 AND id = ANY($2::text[]) AND status = 'deleting'
                ORDER BY id FOR UPDATE
                """,
                collection, sorted(set(ids)),
            )  # fmt: skip
            doomed = [r["id"] for r in records]
            if doomed:
                record = await conn.fetchrow("SELECT * FROM collections WHERE name = $1 FOR KEY SHARE", collection)
                if record is not None:
                    await remove(doomed, _collection(record))
                await conn.execute(
                    "DELETE FROM documents WHERE collection = $1 AND id = ANY($2::text[])", collection, doomed
                )
            return len(doomed)

        if not ids:
            return 0
        return await self._transaction(locked)

    async def mark_indexed(
        self, collection: str, ids: Sequence[str], content_hashes: Sequence[str] | None = None
    ) -> int:
        """Mark pending rows indexed; returns how many changed.

        With `content_hashes` (aligned with `ids`), a row is marked only if it still has the
        hash that was indexed: a row rewritten meanwhile stays pending for its new content.
        Ingest and the reconciler mark through write_if_current; this is for tools and tests.
        """
        if not ids:
            return 0
        hashes: list[str | None] = list(content_hashes) if content_hashes is not None else [None] * len(ids)
        if len(hashes) != len(ids):
            raise BadInput("content_hashes must match ids one to one", field="content_hashes")
        async with self._connection() as conn:
            status = await conn.execute(
                """
                WITH wanted AS (SELECT * FROM unnest($2::text[], $3::text[]) AS t(id, content_hash)),
                locked AS (
                    SELECT d.id FROM documents d JOIN wanted t ON d.id = t.id
                    WHERE d.collection = $1 AND d.status = 'pending'
                      AND (t.content_hash IS NULL OR d.content_hash = t.content_hash)
                    ORDER BY d.id FOR UPDATE OF d
                )
                UPDATE documents AS d SET status = 'indexed', updated_at = now()
                FROM locked WHERE d.collection = $1 AND d.id = locked.id
                """,
                collection, list(ids), hashes,
            )  # fmt: skip
        return _affected(status)

    async def content_versions(self, collection: str, ids: Sequence[str]) -> dict[str, tuple[str, DocumentStatus]]:
        """{id: (content_hash, status)} of the rows of `ids` that exist: what the reconciler
        compares the points' versions with."""
        if not ids:
            return {}
        async with self._connection() as conn:
            records = await conn.fetch(
                "SELECT id, content_hash, status FROM documents WHERE collection = $1 AND id = ANY($2::text[])",
                collection, list(set(ids)),
            )  # fmt: skip
        return {r["id"]: (r["content_hash"], r["status"]) for r in records}

    async def mark_stale(self, collection: str, versions: Mapping[str, str]) -> int:
        """Send indexed rows back to 'pending' ({id: the content_hash they were seen with}) because
        their points were found to hold another version; a row changed since is left alone (its
        writer indexes it). Returns how many."""
        if not versions:
            return 0
        ids = sorted(versions)
        async with self._connection() as conn:
            status = await conn.execute(
                """
                WITH locked AS (
                    SELECT d.id FROM documents d
                    JOIN unnest($2::text[], $3::text[]) AS t(id, content_hash) ON d.id = t.id
                    WHERE d.collection = $1 AND d.status = 'indexed' AND d.content_hash = t.content_hash
                    ORDER BY d.id FOR UPDATE OF d
                )
                UPDATE documents AS d SET status = 'pending', updated_at = now()
                FROM locked WHERE d.collection = $1 AND d.id = locked.id
                """,
                collection, ids, [versions[i] for i in ids],
            )  # fmt: skip
        return _affected(status)

    async def _transaction(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work` in a transaction, again when PostgreSQL broke a deadlock or a serialization
        conflict by aborting it: clients writing the same rows get an answer, never an outage.
        (Every writer locks rows in id order, so this is a safety net, not the plan.)"""
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                async with self._connection() as conn, conn.transaction():
                    return await work(conn)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                if attempt == TRANSACTION_ATTEMPTS:
                    raise Conflict(
                        "other clients kept writing the same documents at the same time; try again",
                        reason=type(exc).__name__,
                    ) from None
        raise AssertionError("unreachable")

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

    async def mark_deleting(
        self,
        collection: str,
        ids: Sequence[str],
        may_replace: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> list[str]:
        """Hide rows until their vectors are gone; returns the ids marked (those that exist and,
        with `may_replace`, that the caller may delete: judged under the row lock)."""
        if not ids:
            return []

        async def mark(conn: asyncpg.Connection) -> list[str]:
            records = await conn.fetch(
                "SELECT id, metadata FROM documents WHERE collection = $1 AND id = ANY($2::text[]) ORDER BY id FOR UPDATE",
                collection, sorted(set(ids)),
            )  # fmt: skip
            marked = [r["id"] for r in records if may_replace is None or may_replace(r["metadata"])]
            if marked:
                await _set_status(conn, collection, marked, "deleting")
            return marked

        return await self._transaction(mark)

    # -- health -----------------------------------------------------------------------------

    async def ping(self) -> float:
        """Round-trip latency of a trivial query, in milliseconds."""
        started = time.perf_counter()
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")
        return (time.perf_counter() - started) * 1000.0
