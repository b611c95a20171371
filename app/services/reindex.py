"""Moving a collection to another model (and chunking) with zero downtime: the steps of a REINDEX
job (app/services/jobs.py runs them, commits its progress and makes it resumable).

1. begin: a new store collection (`<name>.<hex>`, a name no collection can have) with the new
   model's dimensions, the same distance, indexed fields and keyword index; then the collection
   row records it as the next version. From that commit on every write reaches both versions:
   indexing.index_documents embeds a document once per live version, and write_if_current reads
   the live versions under the rows' locks, so a writer that read the collection before the
   reindex began still reports the version it could not write (its documents go to the
   reindex_backlog). Reads keep using the current version.
2. rebuild: every document, in id order from the job's cursor, embedded with the new model and
   written into the next version under its row lock, only while the row still holds the version
   read (a newer write brings its own points to both versions).
3. drain the backlog, then switch: one UPDATE of the collection row makes the next version the
   current one (it waits for every write in flight, and refuses while the backlog has entries).
   PostgreSQL holds the mapping, so every replica, on Qdrant Edge or a Qdrant server alike, reads
   the new version from its next request: the gateway's alias.
4. retire the previous version's store collection after CITADEL_INGEST__REINDEX_RETIRE_SECONDS,
   so searches that read the collection row just before the switch finish on it.

A reindex that fails or is cancelled forgets the next version and removes its store collection;
the collection goes on as it was.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from loguru import logger

from app.adapters.postgres_rows import CollectionRow, NextVersion
from app.domain.access import Principal
from app.domain.chunking import check_chunking
from app.errors import BadInput, Conflict, ModelUnavailable, NotFound
from app.services.embedding import model_revision
from app.services.indexing import ToIndex, index_documents
from app.settings import Settings

LIVE = ("pending", "indexed")  # the rows a reindex rebuilds: every document that is not being deleted


@dataclass(frozen=True)
class ReindexTarget:
    """What a REINDEX job builds (kept in the job's metadata, so a resumed job knows it)."""

    model: str
    chunk_max_tokens: int | None
    chunk_overlap_tokens: int
    vectors: str  # the store collection of the new version

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "chunkMaxTokens": self.chunk_max_tokens,
            "chunkOverlapTokens": self.chunk_overlap_tokens,
            "vectors": self.vectors,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ReindexTarget:
        return cls(raw["model"], raw.get("chunkMaxTokens"), int(raw.get("chunkOverlapTokens") or 0), raw["vectors"])


@dataclass(frozen=True)
class Rebuilt:
    documents: int  # rows read in this page (a row changed meanwhile is written by its writer, to both versions)
    points: int  # next-version points written
    last_id: str | None  # the page's last id: where the next page starts; None at the end


class Reindexer:
    def __init__(self, settings: Settings, repo: Any, store: Any, embedder: Any, models: Any) -> None:
        self.settings = settings
        self.repo = repo
        self.store = store
        self.embedder = embedder
        self.models = models

    async def plan(self, name: str, model: str, chunking: Any) -> ReindexTarget:
        """Check a reindexCollection call before its job exists: the collection, no reindex of it
        running, an embedding model of the catalog (the job waits for it to load), a chunking
        that fits its window; what the job will build."""
        row = await self.repo.get_collection(name)
        if row is None:
            raise NotFound(f"collection {name!r} not found", collection=name)
        if row.next is not None:
            raise Conflict(f"collection {name!r} is being reindexed already (to {row.next.model!r})", collection=name)
        if not isinstance(model, str) or not model.strip():
            raise BadInput("model must name an embedding model of the catalog", field="model")
        spec = self.settings.model(model)  # NOT_FOUND outside the catalog; the job waits for it to load
        if spec.is_reranker:
            raise BadInput(f"model {model!r} is a reranker; a collection needs an embedding model", field="model")
        max_tokens, overlap = None, 0
        if chunking is not None:
            checked = check_chunking(chunking.max_tokens, chunking.overlap_tokens, spec.max_seq_length)
            max_tokens, overlap = checked.max_tokens, checked.overlap_tokens
        return ReindexTarget(spec.name, max_tokens, overlap, f"{name}.{uuid.uuid4().hex[:12]}")

    async def begin(self, name: str, target: ReindexTarget) -> CollectionRow:
        """The collection with `target` as its next version: created now, or found (a resumed job)."""
        row = await self.repo.get_collection(name)
        if row is None:
            raise NotFound(f"collection {name!r} no longer exists", collection=name)
        if row.store_name == target.vectors or (row.next is not None and row.next.vectors == target.vectors):
            return row  # resumed: begun (or switched: row.next is None) before the restart
        if row.next is not None:
            raise Conflict(f"collection {name!r} is being reindexed by another job", collection=name)
        spec = await self.models.ready_spec(target.model, wait=True)
        if spec.name != target.model:  # never build the new version with a fallback model
            raise ModelUnavailable(f"model {target.model!r} is not available (only {spec.name!r} is)", model=target.model)
        version = NextVersion(
            model=spec.name, model_revision=model_revision(spec), dimensions=spec.dimensions, vectors=target.vectors,
            chunk_max_tokens=target.chunk_max_tokens, chunk_overlap_tokens=target.chunk_overlap_tokens,
        )  # fmt: skip
        if await self.store.collection_exists(target.vectors):  # a start cut short before the row recorded it
            await self.store.delete_collection(target.vectors)
        await self.store.create_collection(
            target.vectors, spec.dimensions, row.distance, row.indexed_fields, keyword_index=row.has_keywords
        )
        begun = await self.repo.begin_reindex(name, version)
        if begun is None:
            await self.store.delete_collection(target.vectors)
            raise Conflict(f"collection {name!r} is being reindexed by another job", collection=name)
        logger.info("reindex of {}: next version {} ({}) begun", name, target.vectors, spec.name)
        return begun

    async def rebuild(self, row: CollectionRow, after: str | None, limit: int, principal: Principal) -> Rebuilt:
        """One page of documents from id `after` written into the next version."""
        rows = await self.repo.list_documents(row.name, after, limit)
        if not rows:
            return Rebuilt(0, 0, None)
        outcome = await self._write_next(row, rows, principal, clear_backlog=False)
        return Rebuilt(len(rows), outcome.points, rows[-1].id)

    async def drain_backlog(self, row: CollectionRow, limit: int, principal: Principal) -> int:
        """Index the backlog's documents into the next version; how many entries it held."""
        ids = await self.repo.reindex_backlog(row.name, limit)
        if not ids:
            return 0
        found = [d for d in await self.repo.get_documents(row.name, ids) if d is not None and d.status != "deleting"]
        gone = set(ids) - {d.id for d in found}
        if gone:  # deleted meanwhile: nothing to rebuild (a new write of the id brings its own points)
            await self.repo.drop_from_backlog(row.name, sorted(gone))
        if found:
            await self._write_next(row, found, principal, clear_backlog=True)
        return len(ids)

    async def switch(self, row: CollectionRow, principal: Principal) -> str:
        """Drain the backlog and make the next version current; the previous store collection."""
        assert row.next is not None
        page = self.settings.ingest.job_batch_documents
        while True:
            while await self.drain_backlog(row, page, principal):
                pass
            previous = await self.repo.switch_version(row.name, row.next.vectors)
            if previous is not None:
                logger.info("reindex of {}: now on {} ({}); {} retires", row.name, row.next.vectors, row.next.model, previous)
                return previous

    async def retire(self, store_name: str) -> None:
        """Remove a previous version once the searches that read it before the switch are done."""
        await asyncio.sleep(self.settings.ingest.reindex_retire_seconds)
        try:
            await self.store.delete_collection(store_name)
        except Exception:  # the reconciler of a future version cannot see it: log it for the operator
            logger.exception("the previous version {} could not be removed", store_name)

    async def abandon(self, name: str, target: ReindexTarget) -> None:
        """Forget the next version (failed or cancelled) and remove its store collection, unless
        the collection has switched to it (another runner of the same job finished it)."""
        try:
            await self.repo.abandon_reindex(name, target.vectors)
        finally:
            try:
                row = await self.repo.get_collection(name)
                if row is not None and row.store_name == target.vectors:
                    logger.info("reindex of {}: {} is the current version already; kept", name, target.vectors)
                elif await self.store.collection_exists(target.vectors):
                    await self.store.delete_collection(target.vectors)
            except Exception:
                logger.exception("the abandoned version {} could not be removed", target.vectors)

    async def _write_next(self, row: CollectionRow, rows: list[Any], principal: Principal, *, clear_backlog: bool) -> Any:
        docs = [ToIndex(d.id, d.text, d.metadata, d.content_hash) for d in rows]
        return await index_documents(
            self.embedder, self.store, self.repo, row, docs, self.settings, principal,
            versions=[row.next_version()], status=LIVE, clear_backlog=clear_backlog,
        )  # fmt: skip
