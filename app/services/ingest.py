"""Ingest and delete documents: PostgreSQL first (the truth), then vectors, then rows marked indexed.

A failure between the steps leaves rows 'pending' (or 'deleting'), which the reconciler
finishes; the call that failed says so with DEPENDENCY_UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
from prometheus_client import Counter

from app.adapters.postgres import DocumentWrite
from app.adapters.postgres_rows import UpsertStatus
from app.domain.access import INTERNAL, Principal, Scope
from app.errors import BadInput, CitadelError, Conflict, DependencyUnavailable, Forbidden, Overloaded
from app.services.collections import bound_model
from app.domain.ids import point_id
from app.services.indexing import IndexOutcome, ToIndex, index_documents, remove_points
from app.settings import Settings
from app.requests import IngestBatch, IngestErrorItem, ValidDocument
from app.validation import check_dimensions

TRUNCATED = "TRUNCATED"  # warning code: a text longer than the model's window, embedded from its start

INGESTED = Counter(
    "citadel_ingest_documents_total", "Documents per ingest outcome", ["outcome"]
)  # inserted | updated | unchanged | failed
INDEX_FAILURES = Counter(
    "citadel_ingest_index_failures_total", "Ingest calls whose vectors could not be written after PostgreSQL"
)


@dataclass
class IngestReport:
    ids: list[str] = field(default_factory=list)  # stored documents, in input order
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[IngestErrorItem] = field(default_factory=list)
    chunks: int = 0  # vector points written: one per document, or one per chunk when chunked
    warnings: list[IngestErrorItem] = field(default_factory=list)  # stored, but e.g. TRUNCATED

    def count_stored(self, doc_id: str, status: UpsertStatus) -> None:
        """A stored document: its id, and what its row's upsert did."""
        match status:
            case "inserted":
                self.inserted += 1
            case "updated":
                self.updated += 1
            case "unchanged":
                self.unchanged += 1
            case "refused":
                raise ValueError(f"document {doc_id!r} was refused, not stored")
        self.ids.append(doc_id)


NOT_YOURS = "this id belongs to a document outside this key's filter"


def _fitting_vectors(valid: list[ValidDocument], dimensions: int) -> tuple[list[ValidDocument], list[IngestErrorItem]]:
    """The documents whose own vector (if any) has the collection's dimensions, and an error per other one."""
    kept: list[ValidDocument] = []
    refused: list[IngestErrorItem] = []
    for doc in valid:
        try:
            if doc.vector is not None:
                check_dimensions(np.frombuffer(doc.vector, dtype="<f4"), dimensions)
        except BadInput as exc:
            refused.append(IngestErrorItem(doc.index, doc.id, exc.code, exc.message))
            continue
        kept.append(doc)
    return kept, refused


def _tenant_documents(
    valid: list[ValidDocument], principal: Principal
) -> tuple[list[ValidDocument], list[IngestErrorItem]]:
    """A tenant-bound key writes only documents that match its filter however they are read
    (every element of a list): anything else could show up in another tenant's view."""
    kept: list[ValidDocument] = []
    refused: list[IngestErrorItem] = []
    for doc in valid:
        if principal.may_write(doc.metadata):
            kept.append(doc)
        else:
            message = "metadata does not match this key's filter (every value of a field it names must)"
            refused.append(IngestErrorItem(doc.index, doc.id, Forbidden.code, message))
    return kept, refused


# -- the service ------------------------------------------------------------------------------


class IngestService:
    def __init__(self, settings: Settings, repo: Any, store: Any, embedder: Any, models: Any) -> None:
        self.settings = settings
        self.repo = repo
        self.store = store
        self.embedder = embedder
        self.models = models

    async def ingest(
        self, collection: str, documents: Sequence[Any], *, principal: Principal = INTERNAL, max_text_chars: int | None = None
    ) -> IngestReport:
        """run() of these documents, checked (IngestBatch.parse): for callers inside the server.
        max_text_chars: the longest text, when not CITADEL_LIMITS__MAX_TEXT_CHARS (the files of a
        job: CITADEL_LIMITS__MAX_FILE_CHARS)."""
        batch = IngestBatch.parse(collection, documents, self.settings.limits, max_text_chars=max_text_chars)
        return await self.run(batch, principal=principal)

    async def run(self, batch: IngestBatch, *, principal: Principal = INTERNAL) -> IngestReport:
        """The ingest operation: the valid documents stored and indexed, an error per other one."""
        principal.require(Scope.WRITE, batch.collection)
        row = await self.repo.require_collection(batch.collection)
        valid, errors = _fitting_vectors(list(batch.documents), int(row.dimensions))
        errors = sorted([*batch.errors, *errors], key=lambda e: e.index)
        # Refuse before writing anything: a collection never switches to another model.
        await bound_model(self.models, row)
        if principal.tenant is not None:
            valid, refused = _tenant_documents(valid, principal)
            errors = sorted(errors + refused, key=lambda e: e.index)

        report = IngestReport(errors=errors, failed=len(errors))
        INGESTED.labels("failed").inc(len(errors))
        if not valid:
            return report

        writes = [
            DocumentWrite(
                id=d.id,
                text=d.text,
                metadata=d.metadata,
                content_hash=d.content_hash,
                point_id=point_id(row.name, d.id),
                vector=d.vector,
            )
            for d in valid
        ]
        # A tenant key never overwrites another's document: judged under the row lock, in the
        # write's own transaction, so an id another tenant creates meanwhile is refused too.
        may_replace = principal.may_write if principal.tenant is not None else None
        outcomes = await self.repo.upsert_documents(row.name, writes, may_replace)

        to_index: list[ToIndex] = []
        for doc, outcome in zip(valid, outcomes):
            if outcome.status == "refused":
                report.errors.append(IngestErrorItem(doc.index, doc.id, Forbidden.code, NOT_YOURS))
                report.failed += 1
                INGESTED.labels("failed").inc()
                continue
            report.count_stored(doc.id, outcome.status)
            INGESTED.labels(outcome.status).inc()
            # Includes an unchanged row still pending because an earlier call failed.
            if outcome.pending:
                to_index.append(
                    ToIndex(doc.id, doc.text, doc.metadata, doc.content_hash, index=doc.index, vector=doc.vector)
                )

        try:
            indexed = await index_documents(self.embedder, self.store, self.repo, row, to_index, self.settings, principal)
        except Conflict:
            # Other writers kept the same rows locked past every retry: ours are saved and stay
            # pending, and the reconciler indexes whatever version is latest by then.
            logger.info("ingest into {}: indexing deferred to the reconciler (rows busy)", row.name)
            indexed = IndexOutcome()
        except Exception as exc:
            INDEX_FAILURES.inc()
            logger.warning("ingest into {}: {} documents saved, indexing failed: {!r}", row.name, len(writes), exc)
            # Client-safe: a CitadelError's own message, else only the kind of failure (details are logged).
            reason = exc.message if isinstance(exc, CitadelError) else type(exc).__name__
            # The model being busy is OVERLOADED (retry later), not an outage of a dependency.
            error = Overloaded if isinstance(exc, Overloaded) else DependencyUnavailable
            raise error(
                f"{len(writes)} documents were saved but could not all be indexed ({reason}); "
                "they will be indexed by the reconciler",
                collection=row.name,
                saved=len(writes),
            ) from exc
        report.errors.sort(key=lambda e: e.index)
        report.chunks = indexed.points
        report.warnings = [
            IngestErrorItem(
                t.doc.index if t.doc.index is not None else -1,
                t.doc.id,
                TRUNCATED,
                f"text has {t.tokens} tokens; model {row.model!r} embeds the first {t.window} only, the rest "
                "is not searchable by meaning (create the collection with chunking to index all of it)",
            )
            for t in indexed.truncated
        ]
        return report

    async def delete_documents(self, collection: str, ids: Sequence[str], *, principal: Principal = INTERNAL) -> int:
        principal.require(Scope.WRITE, collection)
        row = await self.repo.require_collection(collection)
        limit = self.settings.limits.max_documents_per_ingest
        if len(ids) > limit:
            raise BadInput(f"{len(ids)} ids in one call; at most {limit}", field="ids")
        unique = list(dict.fromkeys(str(i) for i in ids))
        if not unique:
            return 0
        # Another tenant's documents are, to this key, documents that do not exist (judged under
        # the row locks). Rows marked 'deleting' are already invisible to search; the reconciler
        # finishes them if the vector side fails now.
        may_replace = principal.may_write if principal.tenant is not None else None
        marked = await self.repo.mark_deleting(row.name, unique, may_replace)
        try:
            return await self.repo.purge_if_deleting(row.name, marked, lambda doomed, live: remove_points(self.store, live, doomed))
        except Exception as exc:
            if isinstance(exc, CitadelError) and not isinstance(exc, DependencyUnavailable):
                raise  # e.g. a CONFLICT: an answer, not an outage
            logger.warning("delete from {}: vector store failed: {!r}", row.name, exc)
            raise DependencyUnavailable(
                "the documents are marked deleted and hidden from search; the reconciler removes "
                "their vectors when the vector store is back",
                collection=row.name,
            ) from exc
