"""The vector store contract: one Protocol, two adapters (Qdrant server, Qdrant Edge), the payload
layout every point has, and the input checks both adapters share, so they refuse the same things
with the same messages.

A point is one document (or one chunk of a chunked document): a dense vector (the unnamed
vector), optionally a BM25 sparse vector named SPARSE_VECTOR, and a payload laid out as
    {"doc_id": str, "metadata": {...}, "version": str}                      # unchunked
    {"doc_id": str, "metadata": {...}, "version": str, "chunk": {"index": int, "start": int, "end": int}}
"version" is the content hash of the PostgreSQL row the point was made from (points written
before versions existed have none).
Filters (app.domain.filters) address metadata keys through payload_key().
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, NamedTuple, Protocol, Sequence, get_args

import numpy as np

from app.domain.filters import FilterNode, IndexedField, parse_indexed_field
from app.errors import BadInput

# -- payload layout (shared by both adapters and the services) ---------------------------------

DOC_ID_KEY = "doc_id"
METADATA_KEY = "metadata"
CHUNK_KEY = "chunk"  # {"index", "start", "end"}: character offsets into the document text
VERSION_KEY = "version"  # the row's content hash when the point was written
SPARSE_VECTOR = "bm25"  # the keyword index; the dense vector is the unnamed default vector


def payload_key(field: str) -> str:
    """The Qdrant payload path of a filter FIELD."""
    return f"{METADATA_KEY}.{field}"


class Distance(str, enum.Enum):
    """Vector distance of a collection; the value is what PostgreSQL stores."""

    COSINE = "cosine"
    DOT = "dot"
    EUCLID = "euclid"


class SearchMode(str, enum.Enum):
    SEMANTIC = "SEMANTIC"  # dense vectors only
    KEYWORD = "KEYWORD"  # BM25 sparse vectors only
    HYBRID = "HYBRID"  # both, fused


class Fusion(str, enum.Enum):
    RRF = "RRF"  # reciprocal rank fusion
    DBSF = "DBSF"  # distribution-based score fusion


@dataclass(frozen=True)
class SparseVector:
    indices: Sequence[int]
    values: Sequence[float]


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
class AnnIndex:
    """The embedded store's HNSW index (Qdrant's defaults). Collections with fewer than
    `exact_below` points are searched exactly and get no graph; larger ones get one built in the
    background and are searched through it with `hnsw_ef` candidates. m=0: never a graph."""

    m: int = 16
    ef_construct: int = 100
    hnsw_ef: int = 128
    exact_below: int = 20_000


@dataclass(frozen=True)
class VectorIndexStatus:
    """points: in the collection; indexed_points: served by the ANN index (the others are searched
    exactly); optimizing: a background build or compaction is running."""

    points: int
    indexed_points: int
    optimizing: bool


@dataclass(frozen=True)
class VectorPoint:
    id: str  # a UUID string (deterministic: uuid5 of collection, document id and chunk)
    vector: Sequence[float]
    payload: dict[str, Any] = field(default_factory=dict)
    sparse: SparseVector | None = None  # set exactly when the collection has a keyword index


@dataclass(frozen=True)
class VectorHit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoreQuery:
    """What to rank by. SEMANTIC needs `dense`, KEYWORD `sparse`, HYBRID both (fused by `fusion`,
    each side prefetching `prefetch` candidates before the fusion)."""

    mode: SearchMode = SearchMode.SEMANTIC
    dense: Sequence[float] | None = None
    sparse: SparseVector | None = None
    fusion: Fusion = Fusion.RRF
    prefetch: int = 100
    keyword_weight: float = 1.0  # RRF weight of the keyword ranking (the dense one weighs 1.0)
    keyword_min_score: float | None = None  # HYBRID: keyword candidates below this BM25 score are not fused


@dataclass(frozen=True)
class FacetValue:
    value: str | int | bool
    count: int


class PointRef(NamedTuple):
    """A stored point as the reconciler compares it with PostgreSQL."""

    id: str
    doc_id: str
    version: str | None  # None: written before points carried versions


def point_ref(point_id: Any, payload: Mapping[str, Any] | None) -> PointRef:
    payload = payload or {}
    version = payload.get(VERSION_KEY)
    return PointRef(str(point_id), str(payload.get(DOC_ID_KEY)), version if isinstance(version, str) else None)


class VectorStore(Protocol):
    """Async vector store. `filter` is the parsed filter AST from app.domain.filters."""

    name: str  # "qdrant-edge" | "qdrant"

    async def create_collection(
        self,
        name: str,
        dimensions: int,
        distance: Distance | str,
        indexed_fields: Sequence[str] = (),
        keyword_index: bool = False,
        layout: CollectionLayout | None = None,
    ) -> None: ...

    async def add_keyword_index(self, name: str) -> None:
        """Add the sparse vector to an existing collection (idempotent); points get theirs by upsert."""
        ...

    async def set_sparse_vectors(self, name: str, vectors: Sequence[tuple[str, SparseVector]]) -> None:
        """Give existing points (by id) their keyword vector, leaving dense vectors and payload as they are."""
        ...

    async def delete_collection(self, name: str) -> None: ...

    async def collection_exists(self, name: str) -> bool: ...

    async def upsert(self, name: str, points: Sequence[VectorPoint]) -> None: ...

    async def delete(self, name: str, ids: Sequence[str]) -> None: ...

    async def delete_documents(self, name: str, doc_ids: Sequence[str]) -> None:
        """Remove every point (all chunks) whose payload doc_id is one of doc_ids."""
        ...

    async def search(
        self,
        name: str,
        vector: Sequence[float] | None,
        limit: int,
        offset: int = 0,
        filter: FilterNode | None = None,
        score_threshold: float | None = None,
        query: StoreQuery | None = None,
    ) -> list[VectorHit]:
        """Nearest points to `vector` (SEMANTIC), or ranked as `query` says."""
        ...

    async def facet(
        self,
        name: str,
        key: str,
        filter: FilterNode | None,
        limit: int,
        before_scan: Callable[[int], None] | None = None,
    ) -> list[FacetValue]:
        """Points per value of payload `key` under `filter`, most frequent first. A key without a
        facet index is counted from a scan, page by page and off the event loop; before it starts,
        `before_scan` is called with the number of points it would read (it may raise to refuse)."""
        ...

    async def count(self, name: str) -> int: ...

    async def vector_index(self, name: str) -> VectorIndexStatus:
        """The collection's points, how many its ANN index serves (the rest are searched exactly),
        and whether the store is building or compacting it now."""
        ...

    async def document_points(self, name: str, after: Any, limit: int) -> tuple[list[PointRef], Any]:
        """A page of points (id, payload doc_id, payload version) in the store's order, from
        `after` (None: the start), and where the next page starts (None: this was the last)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


async def stored_point_ids(store: VectorStore, name: str, page: int = 1_000) -> set[str]:
    """Every point id of a collection, whatever the store (through document_points)."""
    ids: set[str] = set()
    after: Any = None
    while True:
        points, after = await store.document_points(name, after, page)
        ids.update(p.id for p in points)
        if after is None:
            return ids


# -- shared by the adapters -------------------------------------------------------------------


def checked_distance(distance: Distance | str) -> Distance:
    try:
        return Distance(getattr(distance, "value", distance))
    except ValueError:
        raise BadInput(f"unknown distance {distance!r}") from None


def checked_collection(dimensions: int, distance: Distance | str, indexed_fields: Sequence[str]) -> list[IndexedField]:
    """Refuse a collection no adapter can build (BadInput); its payload indexes, parsed."""
    checked_distance(distance)
    if dimensions < 1:
        raise BadInput(f"dimensions must be positive, got {dimensions}")
    return [parse_indexed_field(spec) for spec in indexed_fields]


def checked_query(vector: Sequence[float] | None, query: StoreQuery | None) -> StoreQuery:
    """The query to run: a bare vector is SEMANTIC; each mode must have the vectors it ranks by."""
    if query is None:
        query = StoreQuery(dense=vector)
    elif vector is not None and query.dense is None:
        query = dataclasses.replace(query, dense=vector)
    if query.mode in (SearchMode.SEMANTIC, SearchMode.HYBRID) and query.dense is None:
        raise BadInput(f"{query.mode.value} search needs a dense vector")
    if query.mode in (SearchMode.KEYWORD, SearchMode.HYBRID) and query.sparse is None:
        raise BadInput(f"{query.mode.value} search needs a sparse (keyword) vector")
    return query


def point_uuid(value: str) -> str:
    """A point id in canonical UUID form; anything else is the caller's mistake."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise BadInput(f"point id {value!r} is not a UUID") from None


def float32_list(vector: Sequence[float]) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()
