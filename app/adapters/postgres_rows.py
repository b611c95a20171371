"""The rows the PostgreSQL repository reads and writes, as plain frozen dataclasses."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

DocumentStatus = Literal["pending", "indexed", "deleting"]
KeywordIndexState = Literal["none", "building", "ready"]
UpsertStatus = Literal["inserted", "updated", "unchanged", "refused"]  # refused: not the caller's to replace

@dataclass(frozen=True)
class NextVersion:
    """The version of a collection a REINDEX job is building: its model, chunking and the store
    collection that holds its vectors."""

    model: str
    model_revision: str
    dimensions: int
    vectors: str
    chunk_max_tokens: int | None = None
    chunk_overlap_tokens: int = 0


@dataclass(frozen=True)
class CollectionRow:
    name: str
    model: str
    model_revision: str
    dimensions: int
    distance: str
    indexed_fields: tuple[str, ...]
    created_at: datetime
    keyword_index: KeywordIndexState = "none"
    keyword_cursor: str | None = None  # while building: the last document id backfilled
    chunk_max_tokens: int | None = None  # None: not chunked
    chunk_overlap_tokens: int = 0
    vectors: str | None = None  # the store collection of its vectors; None: its own name
    next: NextVersion | None = None  # while a REINDEX job builds it

    @property
    def has_keywords(self) -> bool:
        """Points written now get a sparse vector (the index exists, ready or being built)."""
        return self.keyword_index != "none"

    @property
    def store_name(self) -> str:
        """The vector store collection that holds this version's points."""
        return self.vectors or self.name

    def versions(self) -> list[CollectionRow]:
        """Every version writes must reach: this one, and the next while a reindex builds it."""
        return [self] if self.next is None else [self, self.next_version()]

    def next_version(self) -> CollectionRow:
        """The collection as it will be after the reindex switches (the next version as current)."""
        if self.next is None:
            raise ValueError(f"collection {self.name!r} has no next version")
        n = self.next
        return replace(
            self, model=n.model, model_revision=n.model_revision, dimensions=n.dimensions, vectors=n.vectors,
            chunk_max_tokens=n.chunk_max_tokens, chunk_overlap_tokens=n.chunk_overlap_tokens, next=None,
        )  # fmt: skip

    def live_stores(self) -> frozenset[str]:
        """The store collections writes must reach now."""
        return frozenset(v.store_name for v in self.versions())


@dataclass(frozen=True)
class DocumentWrite:
    id: str
    text: str
    metadata: Mapping[str, Any]
    content_hash: str
    point_id: str | uuid.UUID
    vector: bytes | None = None  # little-endian float32, when the client brought its own


@dataclass(frozen=True)
class DocumentRow:
    collection: str
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    point_id: str
    status: DocumentStatus
    created_at: datetime
    updated_at: datetime
    vector: bytes | None = None  # read only where it is needed (pending_documents)


@dataclass(frozen=True)
class UpsertOutcome:
    """What upsert_documents did to one document. `pending`: the row still waits for indexing
    (always true for inserted/updated; true for an unchanged row an earlier call left pending)."""

    status: UpsertStatus
    pending: bool
