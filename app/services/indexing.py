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
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from app.adapters.bm25 import bm25
from app.domain.access import INTERNAL, Principal
from app.domain.chunking import TextChunk, chunk_text
from app.domain.embedding import EmbedKind
from app.domain.vectors import CHUNK_KEY, DOC_ID_KEY, METADATA_KEY, VERSION_KEY, VectorPoint
from app.errors import ModelUnavailable
from app.services.ids import chunk_point_id, point_id
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
    return max(1, min(settings.ingest.chunk_size, settings.limits.max_texts_per_request))


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
) -> IndexOutcome:
    """Embed, then write and mark indexed, batch by batch, so finished batches stay finished.
    A document whose row changed (or went) since `docs` were read is skipped: the writer of
    the newer version indexes it. The model work is the principal's share of the model, and
    waits for room rather than failing: the documents are already stored."""
    outcome = IndexOutcome()
    per_call = embed_batch_size(settings)
    for batch in batches(docs, per_call, settings.limits.max_request_chars):
        spans, window = await embedder.document_tokens(collection.model, [d.text for d in batch])
        pieces: list[_Piece] = []
        for doc, doc_spans in zip(batch, spans):
            if doc.vector is not None:  # its own embedding: one point, whatever the chunking
                pieces.append(_Piece(doc, None))
            elif collection.chunk_max_tokens:
                budget = min(collection.chunk_max_tokens, window)
                pieces.extend(_Piece(doc, c) for c in chunk_text(doc.text, doc_spans, budget, collection.chunk_overlap_tokens))
            else:
                if len(doc_spans) > window:
                    outcome.truncated.append(Truncated(doc, len(doc_spans), window))
                pieces.append(_Piece(doc, None))

        points: list[VectorPoint] = []
        for group in batches(pieces, per_call, settings.limits.max_request_chars, lambda p: len(p.text)):
            points.extend(await _points(embedder, collection, group, principal))
        written = await write_points(store, repo, collection, {d.id: d.content_hash for d in batch}, points)
        outcome.documents += len(written)
        outcome.points += sum(1 for p in points if p.payload[DOC_ID_KEY] in written)
    return outcome


async def write_points(
    store: Any, repo: Any, collection: Any, versions: dict[str, str], points: Sequence[VectorPoint]
) -> set[str]:
    """Write the points of documents whose rows still hold `versions` ({id: content_hash}) and
    mark those rows indexed, under their row locks; returns the ids written."""

    async def write(current: list[str]) -> None:
        keep = set(current)
        if collection.chunk_max_tokens:
            await store.delete_documents(collection.name, current)
        await store.upsert(collection.name, [p for p in points if p.payload[DOC_ID_KEY] in keep])

    return set(await repo.write_if_current(collection.name, versions, write))


async def _points(embedder: Any, collection: Any, pieces: Sequence[_Piece], principal: Principal) -> list[VectorPoint]:
    texts = [p.text for p in pieces]
    vectors = np.empty((len(pieces), int(collection.dimensions)), dtype=np.float32)
    to_embed = [i for i, p in enumerate(pieces) if p.doc.vector is None]
    for i, piece in enumerate(pieces):
        if piece.doc.vector is not None:  # checked at ingest: the collection's dimensions, finite
            vectors[i] = np.frombuffer(piece.doc.vector, dtype="<f4")
    if to_embed:
        embedded = await embedder.embed(
            [texts[i] for i in to_embed],
            model=collection.model,
            kind=EmbedKind.DOCUMENT,
            normalize=True,
            principal=principal,
            wait_for_room=True,
        )
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
    """Remove every point of these documents: one per document, or all their chunks."""
    if collection.chunk_max_tokens:
        await store.delete_documents(collection.name, doc_ids)
    else:
        await store.delete(collection.name, [point_id(collection.name, i) for i in doc_ids])
