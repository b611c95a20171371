"""The vector store contract: one Protocol, two adapters (Qdrant server, Qdrant Edge), and the
input checks both adapters share, so they refuse the same things with the same messages.

Points carry the document id and the document's metadata in their payload as
{"doc_id": str, "metadata": {...}}; filters (app.domain.filters) address metadata keys.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence, get_args

import numpy as np

from app.domain.filters import IndexedField, parse_indexed_field
from app.errors import BadInput

Distance = Literal["cosine", "dot", "euclid"]


Quantization = Literal["none", "int8"]


@dataclass(frozen=True)
class CollectionLayout:
    """How a collection is laid out in the vector store. A Qdrant server uses all of it (its
    distributed mode); Qdrant Edge is one local shard and uses quantization and on-disk storage."""

    shard_number: int = 1
    replication_factor: int = 1
    write_consistency_factor: int = 1
    on_disk_vectors: bool = False  # originals on disk (with int8, the codes stay in RAM)
    on_disk_payload: bool = True
    quantization: Quantization = "none"  # "int8": scalar quantization, searches rescored on the originals

    def checked(self) -> CollectionLayout:
        for name in ("shard_number", "replication_factor", "write_consistency_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
                raise BadInput(f"{name} must be an integer from 1 to 1024", field=name)
        if self.write_consistency_factor > self.replication_factor:
            raise BadInput("write_consistency_factor cannot exceed replication_factor", field="write_consistency_factor")
        if self.quantization not in get_args(Quantization):
            raise BadInput(f"quantization must be one of {', '.join(get_args(Quantization))}", field="quantization")
        return self


# Searches of an int8 collection look at twice the candidates in int8, then rescore them on the
# original vectors: recall as without quantization (bench/scale.py), at a fraction of the cost.
RESCORE_OVERSAMPLING = 2.0


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
        self,
        name: str,
        dimensions: int,
        distance: Distance,
        indexed_fields: Sequence[str] = (),
        layout: CollectionLayout | None = None,
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


# -- shared by the adapters -------------------------------------------------------------------


def checked_collection(dimensions: int, distance: str, indexed_fields: Sequence[str]) -> list[IndexedField]:
    """Refuse a collection no adapter can build (BadInput); its payload indexes, parsed."""
    if distance not in get_args(Distance):
        raise BadInput(f"unknown distance {distance!r}")
    if dimensions < 1:
        raise BadInput(f"dimensions must be positive, got {dimensions}")
    return [parse_indexed_field(spec) for spec in indexed_fields]


def point_uuid(value: str) -> str:
    """A point id in canonical UUID form; anything else is the caller's mistake."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise BadInput(f"point id {value!r} is not a UUID") from None


def float32_list(vector: Sequence[float]) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()
