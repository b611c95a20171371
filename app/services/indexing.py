"""Writing documents into the vector store, shared by ingest and the reconciler.

Per document: split into chunks when the collection is chunked (sentence-aligned, counted in
the model's tokens), embed every piece, add its BM25 sparse vector when the collection has a
keyword index, then write the points and mark the rows indexed while the rows are locked and
still hold the version the points were made from (PostgresRepo.write_if_current: why that keeps
the store a projection of PostgreSQL under any interleaving of writers). A chunked document
first loses every point of its previous version, so an update or a shorter text leaves no stale
chunk behind. Every point carries its row's content hash (VERSION_KEY), which the reconciler
compares with the row to find and repair a point that disagrees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from app.adapters.bm25 import bm25
from app.adapters.postgres_rows import DocumentStatus
from app.domain.access import INTERNAL, Principal
from app.domain.chunking import TextChunk, chunk_text
from app.domain.embedding import EmbedKind, Tokenized
from app.domain.vectors import CHUNK_KEY, DOC_ID_KEY, METADATA_KEY, VERSION_KEY, VectorPoint
from app.errors import ModelUnavailable
from app.domain.ids import chunk_point_id, point_id
from app.requests import EmbedRequest
from app.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class ToIndex:
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    index: int | None = None  # position in the ingest call, for warnings
    vector: bytes | None = None  # the document's own embedding (little-endian float32); None: embed the text


@dataclass(frozen=True)
class Truncated:
    doc: ToIndex
    tokens: int
    window: int


@dataclass
class IndexOutcome:
    documents: int = 0
    points: int = 0  # one per document, or one per chunk
    truncated: list[Truncated] = field(default_factory=list)  # unchunked texts longer than the window


def embed_batch_size(settings: Settings) -> int:
    """Texts per embed call: the ingest setting, within what one embed request may carry."""
    return max(1, min(settings.ingest.embed_batch, settings.limits.max_texts_per_request))


def batches(
    items: Sequence[T], max_items: int, max_chars: int, chars: Callable[[T], int] | None = None
) -> list[Sequence[T]]:
    """Consecutive slices of at most max_items items and (unless one item alone is larger)
    max_chars characters (of `chars(item)`, default `len(item.text)`): the two limits of one
    embed request."""
    out: list[Sequence[T]] = []
    start, total = 0, 0
    for i, item in enumerate(items):
        size = chars(item) if chars is not None else len(item.text)  # type: ignore[attr-defined]
        if i > start and (i - start >= max_items or total + size > max_chars):
            out.append(items[start:i])
            start, total = i, 0
        total += size
    if start < len(items):
        out.append(items[start:])
    return out


@dataclass(frozen=True)
class _Piece:
    doc: ToIndex
    chunk: TextChunk | None  # None: the whole document is one point
    tokens: Tokenized | None = None  # a whole document's tokens, as embedding it reads them

    @property
    def text(self) -> str:
        return self.doc.text if self.chunk is None else self.doc.text[self.chunk.start : self.chunk.end]


async def index_documents(
    embedder: Any,
    store: Any,
    repo: Any,
    collection: Any,
    docs: Sequence[ToIndex],
    settings: Settings,
    principal: Principal = INTERNAL,
    *,
    versions: Sequence[Any] | None = None,
    status: DocumentStatus | tuple[DocumentStatus, ...] = "pending",
    clear_backlog: bool = False,
) -> IndexOutcome:
    """Embed, then write and mark indexed, batch by batch, so finished batches stay finished.
    Every version of the collection gets its points (`versions`, default collection.versions():
    the next one too while a reindex builds it, each with its own model and chunking). A
    document whose row changed (or went) since `docs` were read is skipped: the writer of the
    newer version indexes it. The model work is the principal's share of the model, and
    waits for room rather than failing: the documents are already stored. `status`: the rows
    written (a reindex rebuilds indexed and pending rows alike, and marks nothing; with
    `clear_backlog` the rows it wrote leave the reindex backlog). A document's own vector goes
    into the current version only: a version built by a reindex embeds its text with its model."""
    outcome = IndexOutcome()
    targets = list(versions) if versions is not None else collection.versions()
    per_call = embed_batch_size(settings)
    for batch in batches(docs, per_call, settings.limits.max_request_chars):
        prepared: dict[str, tuple[Any, list[VectorPoint]]] = {}
        for target in targets:
            own = target.store_name == collection.store_name
            pieces, truncated = await _pieces(embedder, target, batch if own else [replace(d, vector=None) for d in batch])
            if target is targets[0]:
                outcome.truncated.extend(truncated)
            points: list[VectorPoint] = []
            for group in batches(pieces, per_call, settings.limits.max_request_chars, lambda p: len(p.text)):
                points.extend(await _points(embedder, target, group, principal))
            prepared[target.store_name] = (target, points)
        versions_read = {d.id: d.content_hash for d in batch}
        written = await write_points(
            store, repo, collection.name, versions_read, prepared, status=status, clear_backlog=clear_backlog
        )
        outcome.documents += len(written)
        outcome.points += sum(1 for p in prepared[targets[0].store_name][1] if p.payload[DOC_ID_KEY] in written)
    return outcome


async def _pieces(embedder: Any, collection: Any, batch: Sequence[ToIndex]) -> tuple[list[_Piece], list[Truncated]]:
    """The points-to-be of each document in this version of the collection: its chunks (in the
    version's model's tokens), or the whole document."""
    measured = await embedder.document_tokens(collection.model, [d.text for d in batch])
    spans, window, tokens = measured.spans, measured.window, measured.tokens
    pieces: list[_Piece] = []
    truncated: list[Truncated] = []
    for index, (doc, doc_spans) in enumerate(zip(batch, spans)):
        if doc.vector is not None:  # its own embedding: one point, whatever the chunking
            pieces.append(_Piece(doc, None))
        elif collection.chunk_max_tokens:
            budget = min(collection.chunk_max_tokens, window)
            pieces.extend(_Piece(doc, c) for c in chunk_text(doc.text, doc_spans, budget, collection.chunk_overlap_tokens))
        else:
            if len(doc_spans) > window:
                truncated.append(Truncated(doc, len(doc_spans), window))
            pieces.append(_Piece(doc, None, None if tokens is None else tokens.pick([index])))
    return pieces, truncated


async def write_points(
    store: Any,
    repo: Any,
    collection: str,
    versions: dict[str, str],
    prepared: dict[str, tuple[Any, Sequence[VectorPoint]]],
    *,
    status: DocumentStatus | tuple[DocumentStatus, ...] = "pending",
    clear_backlog: bool = False,
) -> set[str]:
    """Write the points of documents whose rows still hold `versions` ({id: content_hash}) into
    every version of the collection that is live when the rows are locked and that `prepared`
    ({store collection: (version, points)}) has points for, and mark those rows indexed, under
    their row locks; returns the ids written. A live version without prepared points (a reindex
    began or switched since the collection was read) is reported back to write_if_current."""

    async def write(current: list[str], live: Any) -> set[str]:
        keep = set(current)
        for target in live.versions():
            entry = prepared.get(target.store_name)
            if entry is None:
                continue
            version, points = entry
            if version.chunk_max_tokens:
                await store.delete_documents(target.store_name, current)
            await store.upsert(target.store_name, [p for p in points if p.payload[DOC_ID_KEY] in keep])
        return set(live.live_stores()) - prepared.keys()

    # Only ingest's and the reconciler's writes of pending rows mark them; a reindex marks nothing.
    written = await repo.write_if_current(
        collection, versions, write, status=status, mark_indexed=status == "pending", clear_backlog=clear_backlog
    )
    return set(written)


async def _points(embedder: Any, collection: Any, pieces: Sequence[_Piece], principal: Principal) -> list[VectorPoint]:
    texts = [p.text for p in pieces]
    vectors = np.empty((len(pieces), int(collection.dimensions)), dtype=np.float32)
    to_embed = [i for i, p in enumerate(pieces) if p.doc.vector is None]
    for i, piece in enumerate(pieces):
        if piece.doc.vector is not None:  # checked at ingest: the collection's dimensions, finite
            vectors[i] = np.frombuffer(piece.doc.vector, dtype="<f4")
    if to_embed:
        # Stored texts, checked when they were ingested: the request is built as it is, with the
        # tokens measured for chunking where the pieces are whole documents.
        parts = [pieces[i].tokens for i in to_embed]
        tokens = Tokenized.joined(parts) if all(part is not None for part in parts) else None  # type: ignore[arg-type]
        request = EmbedRequest(tuple(texts[i] for i in to_embed), collection.model, EmbedKind.DOCUMENT, tokens=tokens)
        embedded = await embedder.run(request, principal=principal, wait_for_room=True)
        if embedded.model != collection.model or int(embedded.dimensions) != int(collection.dimensions):
            # Never store vectors of another model in a collection.
            raise ModelUnavailable(
                f"model {collection.model!r} of collection {collection.name!r} answered as "
                f"{embedded.model!r} ({embedded.dimensions} dims)",
                model=collection.model,
            )
        vectors[to_embed] = embedded.vectors
    sparse = await bm25().documents(texts) if collection.has_keywords else [None] * len(texts)
    points = []
    for piece, vector, keywords in zip(pieces, vectors, sparse):
        payload: dict[str, Any] = {
            DOC_ID_KEY: piece.doc.id,
            METADATA_KEY: piece.doc.metadata,
            VERSION_KEY: piece.doc.content_hash,
        }
        if piece.chunk is None:
            pid = point_id(collection.name, piece.doc.id)
        else:
            pid = chunk_point_id(collection.name, piece.doc.id, piece.chunk.index)
            payload[CHUNK_KEY] = {"index": piece.chunk.index, "start": piece.chunk.start, "end": piece.chunk.end}
        points.append(VectorPoint(id=pid, vector=vector, payload=payload, sparse=keywords))
    return points


async def remove_points(store: Any, collection: Any, doc_ids: Sequence[str]) -> None:
    """Remove every point of these documents from every live version of the collection: one
    point per document, or all their chunks."""
    for version in collection.versions():
        if version.chunk_max_tokens:
            await store.delete_documents(version.store_name, doc_ids)
        else:
            await store.delete(version.store_name, [point_id(collection.name, i) for i in doc_ids])
