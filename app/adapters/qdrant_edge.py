"""VectorStore on Qdrant Edge (qdrant-edge-py): in-process shards under the data directory.

One EdgeShard per collection at `<base>/<collection>`, opened lazily (load() after a restart)
and closed on close(). The Edge API is synchronous, so every call runs in a worker thread;
writes to one shard are serialised by a lock and flushed before they return, because the
ingest pipeline marks rows indexed once upsert() returns.

Search is exact (SearchParams(exact=True)): embedded collections are small, and exact search
keeps results identical to brute force whatever segments the shard has built.

Space: every replaced or deleted point stays in its segment until the shard is optimized, so a
steady stream of updates would grow the data dir without bound. Once the points changed since
the last optimization pass a share of the shard, optimize() runs in a worker thread: it rewrites
the segments without the dead points (no HNSW graph is built, m=0: search is exact anyway).
Searches go on meanwhile; writes to that shard wait for it. The shard's WAL bounds itself: it
rotates 32 MiB segments, so it stays below about 64 MiB per shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import qdrant_edge as qe
from loguru import logger

from app.adapters.qdrant_common import (
    DISTANCES,
    EDGE,
    INDEX_TYPES,
    FacetCounter,
    QdrantDialect,
    document_points,
    qdrant_filter,
    scan_facets,
)
from app.domain.filters import FilterNode
from app.domain.scans import off_loop
from app.domain.vectors import (
    DOC_ID_KEY,
    PointRef,
    point_ref,
    SPARSE_VECTOR,
    RESCORE_OVERSAMPLING,
    CollectionLayout,
    Distance,
    FacetValue,
    Fusion,
    SearchMode,
    SparseVector,
    StoreQuery,
    VectorHit,
    VectorPoint,
    checked_collection,
    checked_distance,
    checked_query,
    float32_list,
    payload_key,
    point_uuid,
)
from app.errors import BadInput, Conflict, NotFound

T = TypeVar("T")

# Collection names become directory names: no separators, no "." or "..".
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SCROLL_PAGE = 1_000


# Optimize a shard once this share of its points was replaced or deleted since the last pass
# (and at least OPTIMIZE_MIN_CHANGES points).
OPTIMIZE_CHANGED_SHARE = 0.2
OPTIMIZE_MIN_CHANGES = 1_000


def _shard_config(vectors: qe.EdgeVectorParams, sparse: dict[str, Any] | None, on_disk_payload: bool) -> qe.EdgeConfig:
    # indexing_threshold=1: optimize() always rebuilds appendable segments, dropping dead points;
    # m=0: without building a graph nobody would use (search is exact).
    return qe.EdgeConfig(
        vectors=vectors,
        sparse_vectors=sparse,
        on_disk_payload=on_disk_payload,
        optimizers=qe.EdgeOptimizersConfig(deleted_threshold=0.2, vacuum_min_vector_number=100, indexing_threshold=1),
        hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
    )


@dataclass
class _Shard:
    shard: qe.EdgeShard
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: int = 0  # points upserted or deleted since the last optimization
    optimizing: asyncio.Task[None] | None = None


class QdrantEdgeStore:
    name = "qdrant-edge"

    def __init__(
        self,
        base_dir: Path | str,
        optimize_changed_share: float = OPTIMIZE_CHANGED_SHARE,
        optimize_min_changes: int = OPTIMIZE_MIN_CHANGES,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.optimize_changed_share = optimize_changed_share
        self.optimize_min_changes = optimize_min_changes
        self.optimizations = 0  # passes run, for tests and the soak bench
        self._shards: dict[str, _Shard] = {}
        self._registry_lock = asyncio.Lock()  # opening, creating, deleting, closing shards

    # -- collections ------------------------------------------------------------------------

    async def create_collection(
        self,
        name: str,
        dimensions: int,
        distance: Distance | str,
        indexed_fields: Sequence[str] = (),
        keyword_index: bool = False,
        layout: CollectionLayout | None = None,
    ) -> None:
        path = self._path(name)
        indexes = checked_collection(dimensions, distance, indexed_fields)
        edge_distance = getattr(qe.Distance, DISTANCES[checked_distance(distance)][EDGE])
        # One local shard: shard_number and the replication settings are a Qdrant server's.
        layout = (layout or CollectionLayout()).checked()
        quantization = (
            qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
            if layout.quantization == "int8"
            else None
        )
        async with self._registry_lock:
            if name in self._shards or path.exists():
                raise Conflict(f"collection {name!r} already exists")
            sparse = {SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if keyword_index else None
            vectors = qe.EdgeVectorParams(
                size=dimensions,
                distance=edge_distance,
                on_disk=layout.on_disk_vectors,
                quantization_config=quantization,
            )
            config = _shard_config(vectors, sparse, layout.on_disk_payload)

            def create() -> qe.EdgeShard:
                path.parent.mkdir(parents=True, exist_ok=True)
                shard = qe.EdgeShard.create(str(path), config)
                for index in indexes:
                    index_type = getattr(qe.PayloadSchemaType, INDEX_TYPES[index.type][EDGE])
                    op = qe.UpdateOperation.create_field_index(payload_key(index.field), index_type)
                    shard.update(op)
                shard.flush()
                return shard

            self._shards[name] = _Shard(await asyncio.to_thread(create))
        logger.info("edge collection {} created ({} dims, {}, keyword index {})", name, dimensions, distance, keyword_index)

    async def add_keyword_index(self, name: str) -> None:
        entry = await self._open(name)

        def add() -> None:  # creating an existing sparse vector again is a no-op in Edge
            entry.shard.update(qe.UpdateOperation.create_sparse_vector(SPARSE_VECTOR, modifier=qe.Modifier.Idf))
            entry.shard.flush()

        async with entry.write_lock:
            await _call(add)

    async def delete_collection(self, name: str) -> None:
        path = self._path(name)
        async with self._registry_lock:
            entry = self._shards.pop(name, None)
            if entry is not None:
                async with entry.write_lock:
                    await asyncio.to_thread(entry.shard.close)
            if path.exists():
                await asyncio.to_thread(shutil.rmtree, path)
                logger.info("edge collection {} deleted", name)

    async def collection_exists(self, name: str) -> bool:
        return name in self._shards or self._path(name).exists()

    # -- points -------------------------------------------------------------------------------

    async def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        if not points:
            return
        edge_points = [qe.Point(point_uuid(p.id), _edge_vector(p), dict(p.payload)) for p in points]
        await self._write(name, qe.UpdateOperation.upsert_points(edge_points), changed=len(edge_points))

    async def delete(self, name: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        await self._write(name, qe.UpdateOperation.delete_points([point_uuid(i) for i in ids]), changed=len(ids))

    async def set_sparse_vectors(self, name: str, vectors: Sequence[tuple[str, SparseVector]]) -> None:
        if not vectors:
            return
        updates = [qe.PointVectors(point_uuid(pid), {SPARSE_VECTOR: _edge_sparse(v)}) for pid, v in vectors]
        await self._write(name, qe.UpdateOperation.update_vectors(updates))

    async def delete_documents(self, name: str, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        selector = qe.Filter(must=[qe.FieldCondition(DOC_ID_KEY, match=qe.MatchAny([str(i) for i in doc_ids]))])
        await self._write(name, qe.UpdateOperation.delete_points_by_filter(selector))

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
        query = checked_query(vector, query)
        entry = await self._open(name)
        where = edge_filter(filter) if filter is not None else None
        # Exact, and rescored with the original vectors where the collection is quantized.
        exact = qe.SearchParams(
            exact=True, quantization=qe.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING)
        )
        dense = qe.Query.Nearest(float32_list(query.dense)) if query.dense is not None else None
        sparse = qe.Query.Nearest(_edge_sparse(query.sparse), using=SPARSE_VECTOR) if query.sparse is not None else None
        prefetches = None
        if query.mode is SearchMode.HYBRID:
            prefetches = [
                qe.Prefetch(limit=query.prefetch, query=dense, filter=where, params=exact),
                qe.Prefetch(limit=query.prefetch, query=sparse, filter=where, score_threshold=query.keyword_min_score),
            ]
            ranking: Any = qe.Fusion.Rrf(k=RRF_K, weights=[1.0, query.keyword_weight]) if query.fusion is Fusion.RRF else qe.Fusion.Dbsf()
        else:
            ranking = dense if query.mode is SearchMode.SEMANTIC else sparse
        request = qe.QueryRequest(
            limit=limit,
            offset=offset,
            query=ranking,
            prefetches=prefetches,
            filter=where,
            score_threshold=score_threshold,
            with_payload=True,
            with_vector=False,
            params=exact if query.mode is SearchMode.SEMANTIC else None,
        )
        found = await _call(entry.shard.query, request)
        return [VectorHit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in found]

    async def facet(
        self,
        name: str,
        key: str,
        filter: FilterNode | None,
        limit: int,
        before_scan: Callable[[int], None] | None = None,
    ) -> list[FacetValue]:
        entry = await self._open(name)
        where = document_points(filter, EDGE_DIALECT)
        try:
            response = await _call(entry.shard.facet, qe.FacetRequest(key, limit=limit, exact=True, filter=where))
            return [FacetValue(value=_plain(h.value), count=int(h.count)) for h in response.hits]
        except Exception as exc:
            if "No appropriate index for faceting" not in str(exc):
                raise
        # Qdrant facets only indexed fields; other fields are counted from a scan of the points
        # under the filter, page by page in the scan threads, once their number (a count: all
        # points, or those under the filter) was allowed.
        scanned = edge_filter(filter) if filter is not None else None
        if before_scan is not None:
            before_scan(int(await off_loop(entry.shard.count, qe.CountRequest(exact=True, filter=scanned))))

        async def page(offset: Any, counter: FacetCounter) -> Any:
            return await off_loop(_facet_page, entry.shard, scanned, offset, counter)

        return await scan_facets(key, limit, page)

    async def count(self, name: str) -> int:
        entry = await self._open(name)
        return int(await _call(entry.shard.count, qe.CountRequest(exact=True)))

    async def document_points(self, name: str, after: Any, limit: int) -> tuple[list[PointRef], Any]:
        entry = await self._open(name)
        request = qe.ScrollRequest(offset=after, limit=limit, with_payload=True, with_vector=False)
        records, offset = await _call(entry.shard.scroll, request)
        return [point_ref(r.id, r.payload) for r in records], offset

    async def ping(self) -> None:
        # In-process: healthy when the data directory is usable.
        await asyncio.to_thread(self.base_dir.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        await self.wait_for_maintenance()
        async with self._registry_lock:
            while self._shards:
                name, entry = self._shards.popitem()
                async with entry.write_lock:
                    await asyncio.to_thread(entry.shard.close)
                logger.debug("edge collection {} closed", name)

    # -- internals ------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if not _COLLECTION_NAME.fullmatch(name):
            raise BadInput(f"invalid collection name {name[:64]!r}")
        return self.base_dir / name

    async def _open(self, name: str) -> _Shard:
        entry = self._shards.get(name)
        if entry is not None:
            return entry
        path = self._path(name)
        async with self._registry_lock:
            entry = self._shards.get(name)
            if entry is None:
                if not path.exists():
                    raise NotFound(f"collection {name!r} not found")
                entry = _Shard(await asyncio.to_thread(qe.EdgeShard.load, str(path)))
                self._shards[name] = entry
                logger.debug("edge collection {} loaded from {}", name, path)
            return entry

    async def _write(self, name: str, operation: qe.UpdateOperation, changed: int = 0) -> None:
        entry = await self._open(name)

        def apply() -> int:
            entry.shard.update(operation)
            entry.shard.flush()
            return int(entry.shard.info().points_count)

        async with entry.write_lock:
            points = await _call(apply)
        entry.changed += changed
        due = max(self.optimize_min_changes, self.optimize_changed_share * points)
        if entry.changed >= due and (entry.optimizing is None or entry.optimizing.done()):
            entry.optimizing = asyncio.create_task(self._optimize(name, entry), name=f"edge-optimize-{name}")

    async def _optimize(self, name: str, entry: _Shard) -> None:
        async with entry.write_lock:  # writes wait; searches do not
            if self._shards.get(name) is not entry:  # deleted or closed meanwhile
                return
            changed, entry.changed = entry.changed, 0
            try:
                await asyncio.to_thread(entry.shard.optimize)
                await asyncio.to_thread(entry.shard.flush)
            except Exception as exc:  # the next writes try again
                entry.changed += changed
                logger.warning("edge collection {}: optimization failed: {!r}", name, exc)
                return
        self.optimizations += 1
        logger.debug("edge collection {} optimized after {} changed points", name, changed)

    async def wait_for_maintenance(self) -> None:
        """Until no optimization pass is running (tests, benchmarks, shutdown)."""
        for entry in list(self._shards.values()):
            if entry.optimizing is not None:
                with contextlib.suppress(Exception):
                    await entry.optimizing


RRF_K = 60  # the usual reciprocal-rank-fusion constant (Qdrant server's default too)


def _edge_sparse(vector: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(indices=[int(i) for i in vector.indices], values=[float(v) for v in vector.values])


def _edge_vector(point: VectorPoint) -> Any:
    dense = float32_list(point.vector)
    if point.sparse is None:
        return dense
    return {"": dense, SPARSE_VECTOR: _edge_sparse(point.sparse)}


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, bool)) else str(value)


def _facet_page(shard: qe.EdgeShard, where: qe.Filter | None, offset: Any, counter: FacetCounter) -> Any:
    """One page of a facet scan, in a scan thread: only the counter's fields of each payload are read."""
    request = qe.ScrollRequest(
        offset=offset, limit=_SCROLL_PAGE, filter=where, with_payload=counter.fields, with_vector=False
    )
    records, following = shard.scroll(request)
    counter.add(r.payload for r in records)
    return following


async def _call(fn: Callable[..., T], *args: Any) -> T:
    try:
        return await asyncio.to_thread(fn, *args)
    except Exception as exc:
        # qdrant-edge raises plain Exceptions; a wrong vector size is the caller's mistake.
        if "dimension error" in str(exc):
            raise BadInput(str(exc)) from None
        raise


# -- filter translation ---------------------------------------------------------------------


def _match_value(key: str, value: str | int | bool) -> qe.FieldCondition:
    # qdrant-edge-py 0.9 reads a Python bool as an integer (MatchValue(True) matches 1, not
    # true); numpy.bool_ is not an int, so it reaches the binding as a real boolean.
    return qe.FieldCondition(key, match=qe.MatchValue(np.bool_(value) if isinstance(value, bool) else value))


EDGE_DIALECT = QdrantDialect(
    filter_type=qe.Filter,
    make_filter=qe.Filter,
    is_empty=qe.IsEmptyCondition,
    match_value=_match_value,
    match_any=lambda key, values: qe.FieldCondition(key, match=qe.MatchAny(values)),
    number_range=lambda key, bounds: qe.FieldCondition(key, range=qe.RangeFloat(**bounds)),
    datetime_range=lambda key, bounds: qe.FieldCondition(
        key, range=qe.RangeDateTime(**{k: v.isoformat() for k, v in bounds.items()})
    ),
)


def edge_filter(node: FilterNode) -> qe.Filter:
    return qdrant_filter(node, EDGE_DIALECT)
