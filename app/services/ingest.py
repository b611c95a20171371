"""Ingest and delete documents: PostgreSQL first (the truth), then vectors, then rows marked indexed.

A failure between the steps leaves rows 'pending' (or 'deleting'), which the reconciler
finishes; the call that failed says so with DEPENDENCY_UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from prometheus_client import Counter

from app.adapters.postgres import DocumentWrite
from app.domain.embedding import EmbedKind
from app.domain.filters import DOC_ID_KEY, METADATA_KEY
from app.domain.vectors import VectorPoint
from app.errors import BadInput, CitadelError, DependencyUnavailable, ModelUnavailable
from app.services.collections import bound_model
from app.services.ids import canonical_json, content_hash, derived_document_id, point_id
from app.settings import Settings
from app.validation import MAX_NAME_CHARS, string_problem

MAX_ID_CHARS = MAX_NAME_CHARS

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


@dataclass(frozen=True)
class ValidDocument:
    index: int
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str


# -- validation (pure) ------------------------------------------------------------------------


def validate_documents(
    settings: Settings, documents: Sequence[Any]
) -> tuple[list[ValidDocument], list[IngestErrorItem]]:
    """Split a call's documents into valid ones and per-document errors; BadInput for the call."""
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
            doc = _validate_one(settings, index, raw)
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


def _validate_one(settings: Settings, index: int, raw: Any) -> ValidDocument:
    if not isinstance(raw, Mapping):
        raise BadInput("a document must be an object with text, and optionally id and metadata")
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadInput("text is missing or blank")
    max_chars = settings.limits.max_text_chars
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
    return ValidDocument(index, doc_id, text, metadata, content_hash(text, metadata))


def _check_storable(value: str, what: str) -> None:
    # Refused per document: one bad document must not fail the whole transaction.
    problem = string_problem(value)
    if problem is not None:
        raise BadInput(f"{what} {problem}")


def _printable_id(value: Any) -> str | None:
    return value[:MAX_ID_CHARS] if isinstance(value, str) else None


# -- indexing (shared with the reconciler) ----------------------------------------------------


@dataclass(frozen=True)
class ToIndex:
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str


def embed_chunk_size(settings: Settings) -> int:
    """Texts per embed call: the ingest setting, within what one embed request may carry."""
    return max(1, min(settings.ingest.chunk_size, settings.limits.max_texts_per_request))


def chunks(docs: Sequence[ToIndex], max_docs: int, max_chars: int) -> list[Sequence[ToIndex]]:
    """Consecutive slices of at most max_docs documents and (unless one text alone is larger)
    max_chars characters, the two limits of one embed request."""
    out: list[Sequence[ToIndex]] = []
    start, chars = 0, 0
    for i, doc in enumerate(docs):
        if i > start and (i - start >= max_docs or chars + len(doc.text) > max_chars):
            out.append(docs[start:i])
            start, chars = i, 0
        chars += len(doc.text)
    if start < len(docs):
        out.append(docs[start:])
    return out


async def index_documents(
    embedder: Any, store: Any, repo: Any, collection: Any, docs: Sequence[ToIndex], settings: Settings
) -> int:
    """Embed, upsert and mark indexed, chunk by chunk, so finished chunks stay finished."""
    done = 0
    for chunk in chunks(docs, embed_chunk_size(settings), settings.limits.max_request_chars):
        outcome = await embedder.embed(
            [d.text for d in chunk], model=collection.model, kind=EmbedKind.DOCUMENT, normalize=True
        )
        if outcome.model != collection.model or int(outcome.dimensions) != int(collection.dimensions):
            # Never store vectors of another model in a collection.
            raise ModelUnavailable(
                f"model {collection.model!r} of collection {collection.name!r} answered as "
                f"{outcome.model!r} ({outcome.dimensions} dims)",
                model=collection.model,
            )
        points = [
            VectorPoint(
                id=point_id(collection.name, d.id),
                vector=vector,
                payload={DOC_ID_KEY: d.id, METADATA_KEY: d.metadata},
            )
            for d, vector in zip(chunk, outcome.vectors)
        ]
        await store.upsert(collection.name, points)
        # With the hashes, a row rewritten meanwhile stays pending for its new text.
        await repo.mark_indexed(collection.name, [d.id for d in chunk], [d.content_hash for d in chunk])
        done += len(chunk)
    return done


# -- the service ------------------------------------------------------------------------------


class IngestService:
    def __init__(self, settings: Settings, repo: Any, store: Any, embedder: Any, models: Any) -> None:
        self.settings = settings
        self.repo = repo
        self.store = store
        self.embedder = embedder
        self.models = models

    async def ingest(self, collection: str, documents: Sequence[Any]) -> IngestReport:
        row = await self.repo.require_collection(collection)
        valid, errors = validate_documents(self.settings, documents)
        # Refuse before writing anything: a collection never switches to another model.
        await bound_model(self.models, row)

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
            )
            for d in valid
        ]
        outcomes = await self.repo.upsert_documents(row.name, writes)

        to_index: list[ToIndex] = []
        for doc, outcome in zip(valid, outcomes):
            report.ids.append(doc.id)
            setattr(report, outcome.status, getattr(report, outcome.status) + 1)
            INGESTED.labels(outcome.status).inc()
            # Includes an unchanged row still pending because an earlier call failed.
            if outcome.pending:
                to_index.append(ToIndex(doc.id, doc.text, doc.metadata, doc.content_hash))

        try:
            await index_documents(self.embedder, self.store, self.repo, row, to_index, self.settings)
        except Exception as exc:
            INDEX_FAILURES.inc()
            logger.warning("ingest into {}: {} documents saved, indexing failed: {!r}", row.name, len(writes), exc)
            # Client-safe: a CitadelError's own message, else only the kind of failure (details are logged).
            reason = exc.message if isinstance(exc, CitadelError) else type(exc).__name__
            raise DependencyUnavailable(
                f"{len(writes)} documents were saved but could not all be indexed ({reason}); "
                "they will be indexed by the reconciler",
                collection=row.name,
                saved=len(writes),
            ) from exc
        return report

    async def delete_documents(self, collection: str, ids: Sequence[str]) -> int:
        row = await self.repo.require_collection(collection)
        limit = self.settings.limits.max_documents_per_ingest
        if len(ids) > limit:
            raise BadInput(f"{len(ids)} ids in one call; at most {limit}", field="ids")
        unique = list(dict.fromkeys(str(i) for i in ids))
        if not unique:
            return 0
        # Rows marked 'deleting' are already invisible to search; the reconciler finishes them
        # if the vector side fails now.
        await self.repo.mark_deleting(row.name, unique)
        try:
            await self.store.delete(row.name, [point_id(row.name, i) for i in unique])
        except Exception as exc:
            logger.warning("delete from {}: vector store failed: {!r}", row.name, exc)
            raise DependencyUnavailable(
                "the documents are marked deleted and hidden from search; the reconciler removes "
                "their vectors when the vector store is back",
                collection=row.name,
            ) from exc
        return int(await self.repo.purge_documents(row.name, unique))
