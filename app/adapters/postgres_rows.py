"""The rows the PostgreSQL repository reads and writes, as plain frozen dataclasses."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

DocumentStatus = Literal["pending", "indexed", "deleting"]
KeywordIndexState = Literal["none", "building", "ready"]
UpsertStatus = Literal["inserted", "updated", "unchanged", "refused"]  # refused: not the caller's to replace

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

    @property
    def has_keywords(self) -> bool:
        """Points written now get a sparse vector (the index exists, ready or being built)."""
        return self.keyword_index != "none"


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
