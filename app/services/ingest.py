"""Ingest and delete documents: PostgreSQL first (the truth), then vectors, then rows marked indexed.

A failure between the steps leaves rows 'pending' (or 'deleting'), which the reconciler
finishes; the call that failed says so with DEPENDENCY_UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import base64
import binascii
from typing import Any

import numpy as np
from loguru import logger
from prometheus_client import Counter

from app.adapters.postgres import DocumentWrite
from app.domain.access import INTERNAL, Principal, Scope
from app.errors import BadInput, CitadelError, Conflict, DependencyUnavailable, Forbidden, Overloaded
from app.services.collections import bound_model
from app.services.ids import canonical_json, content_hash, derived_document_id, point_id
from app.services.indexing import IndexOutcome, ToIndex, index_documents, remove_points
from app.settings import Settings
from app.validation import MAX_NAME_CHARS, check_vector, string_problem

MAX_ID_CHARS = MAX_NAME_CHARS
TRUNCATED = "TRUNCATED"  # warning code: a text longer than the model's window, embedded from its start

INGESTED = Counter(
    "citadel_ingest_documents_total", "Documents per ingest outcome", ["outcome"]
)  # inserted | updated | unchanged | failed
INDEX_FAILURES = Counter(
    "citadel_ingest_index_failures_total", "Ingest calls whose vectors could not be written after PostgreSQL"
)


@dataclass(frozen=True)
class IngestErrorItem:
    index: int
    id: str | None
    code: str
    message: str


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


@dataclass(frozen=True)
class ValidDocument:
    index: int
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    vector: bytes | None = None  # little-endian float32: the client's own embedding


# -- validation (pure) ------------------------------------------------------------------------


def validate_documents(
    settings: Settings, documents: Sequence[Any], dimensions: int | None = None, max_text_chars: int | None = None
) -> tuple[list[ValidDocument], list[IngestErrorItem]]:
    """Split a call's documents into valid ones and per-document errors; BadInput for the call.
    dimensions: the collection's, which a document's own vector must have; max_text_chars: the
    longest text, when not CITADEL_LIMITS__MAX_TEXT_CHARS (a job's one-document files)."""
    limit = settings.limits.max_documents_per_ingest
    if not isinstance(documents, (list, tuple)):
        raise BadInput("documents must be a list")
    if len(documents) > limit:
        raise BadInput(f"{len(documents)} documents in one call; at most {limit}", field="documents")
    valid: list[ValidDocument] = []
    errors: list[IngestErrorItem] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(documents):
        given_id = raw.get("id") if isinstance(raw, Mapping) else None
        try:
            doc = _validate_one(settings, index, raw, dimensions, max_text_chars)
        except BadInput as exc:
            errors.append(IngestErrorItem(index, _printable_id(given_id), exc.code, exc.message))
            continue
        if doc.id in first_index:
            errors.append(
                IngestErrorItem(
                    index,
                    doc.id,
                    BadInput.code,
                    f"id {doc.id!r} is also used by document {first_index[doc.id]} of this call",
                )
            )
            continue
        first_index[doc.id] = index
        valid.append(doc)
    return valid, errors


def _validate_one(
    settings: Settings, index: int, raw: Any, dimensions: int | None = None, max_text_chars: int | None = None
) -> ValidDocument:
    if not isinstance(raw, Mapping):
        raise BadInput("a document must be an object with text, and optionally id and metadata")
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadInput("text is missing or blank")
    max_chars = max_text_chars or settings.limits.max_text_chars
    if len(text) > max_chars:
        raise BadInput(f"text has {len(text)} characters; at most {max_chars}")
    _check_storable(text, "text")

    metadata = raw.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise BadInput("metadata must be a JSON object")
    try:
        encoded = canonical_json(metadata)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"metadata is not plain JSON: {exc}") from None
    _check_storable(encoded, "metadata")
    if "\\u0000" in encoded:
        raise BadInput("metadata contains a NUL character")
    size = len(encoded.encode("utf-8"))
    if size > settings.limits.max_metadata_bytes:
        raise BadInput(f"metadata is {size} bytes as JSON; at most {settings.limits.max_metadata_bytes}")
    metadata = dict(metadata)

    doc_id = raw.get("id")
    if doc_id is None:
        doc_id = derived_document_id(text, metadata)
    else:
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise BadInput("id must be a string")
        doc_id = str(doc_id)
        if not doc_id.strip():
            raise BadInput("id is blank")
        if len(doc_id) > MAX_ID_CHARS:
            raise BadInput(f"id has {len(doc_id)} characters; at most {MAX_ID_CHARS}")
        _check_storable(doc_id, "id")
    vector = own_vector(raw.get("vector"), raw.get("vector_base64"), dimensions)
    return ValidDocument(index, doc_id, text, metadata, content_hash(text, metadata, vector), vector)


def own_vector(values: Any, encoded: Any, dimensions: int | None) -> bytes | None:
    """A document's own embedding (a list of floats, or little-endian float32 in base64) as
    float32 bytes; None when it brings none."""
    if values is None and encoded is None:
        return None
    if values is not None and encoded is not None:
        raise BadInput("give vector or vectorBase64, not both")
    if encoded is not None:
        try:
            raw = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        if not raw or len(raw) % 4:
            raise BadInput("vectorBase64 is not base64 of little-endian float32 values")
        return check_vector(np.frombuffer(raw, dtype="<f4"), dimensions, "vectorBase64").tobytes()
    return check_vector(values, dimensions).tobytes()


def _check_storable(value: str, what: str) -> None:
    # Refused per document: one bad document must not fail the whole transaction.
    problem = string_problem(value)
    if problem is not None:
        raise BadInput(f"{what} {problem}")


def _printable_id(value: Any) -> str | None:
    return value[:MAX_ID_CHARS] if isinstance(value, str) else None


NOT_YOURS = "this id belongs to a document outside this key's filter"


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
        """max_text_chars: the longest text, when not CITADEL_LIMITS__MAX_TEXT_CHARS (the files of a
        job: CITADEL_LIMITS__MAX_FILE_CHARS)."""
        principal.require(Scope.WRITE, collection)
        row = await self.repo.require_collection(collection)
        valid, errors = validate_documents(self.settings, documents, int(row.dimensions), max_text_chars)
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
            report.ids.append(doc.id)
            setattr(report, outcome.status, getattr(report, outcome.status) + 1)
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
