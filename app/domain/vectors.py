"""The vector store contract: one Protocol, two adapters (Qdrant server, Qdrant Edge).

Points carry the document id and the document's metadata in their payload as
{"doc_id": str, "metadata": {...}}; filters (app.domain.filters) address metadata keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

Distance = Literal["cosine", "dot", "euclid"]


@dataclass(frozen=True)
class VectorPoint:
    id: str  # a UUID string (deterministic: uuid5 of collection and document id)
    vector: Sequence[float]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorHit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Protocol):
    """Async vector store. `filter` is the parsed filter AST from app.domain.filters."""

    name: str  # "qdrant-edge" | "qdrant"

    async def create_collection(
        self, name: str, dimensions: int, distance: Distance, indexed_fields: Sequence[str] = ()
    ) -> None: ...

    async def delete_collection(self, name: str) -> None: ...

    async def collection_exists(self, name: str) -> bool: ...

    async def upsert(self, name: str, points: Sequence[VectorPoint]) -> None: ...

    async def delete(self, name: str, ids: Sequence[str]) -> None: ...

    async def search(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        offset: int = 0,
        filter: Any | None = None,
        score_threshold: float | None = None,
    ) -> list[VectorHit]: ...

    async def count(self, name: str) -> int: ...

    async def point_ids(self, name: str) -> set[str]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
