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

from app.domain.filters import (
    And,
    Eq,
    Exists,
    FilterNode,
    In,
    Not,
    Or,
    Range,
    payload_key,
)
from app.domain.vectors import (
    Distance,
    VectorHit,
    VectorPoint,
    checked_collection,
    float32_list,
    point_uuid,
)
from app.errors import BadInput, Conflict, NotFound

T = TypeVar("T")

_DISTANCES = {"cosine": qe.Distance.Cosine, "dot": qe.Distance.Dot, "euclid": qe.Distance.Euclid}
_INDEX_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
    "datetime": qe.PayloadSchemaType.Datetime,
}
# Collection names become directory names: no separators, no "." or "..".
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SCROLL_PAGE = 1_000


# Optimize a shard once this share of its points was replaced or deleted since the last pass
# (and at least OPTIMIZE_MIN_CHANGES points).
OPTIMIZE_CHANGED_SHARE = 0.2
OPTIMIZE_MIN_CHANGES = 1_000


def _shard_config(dimensions: int, distance: Distance) -> qe.EdgeConfig:
    # indexing_threshold=1: optimize() always rebuilds appendable segments, dropping dead points;
    # m=0: without building a graph nobody would use (search is exact).
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dimensions, distance=_DISTANCES[distance]),
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
        self, name: str, dimensions: int, distance: Distance, indexed_fields: Sequence[str] = ()
    ) -> None:
        path = self._path(name)
        indexes = checked_collection(dimensions, distance, indexed_fields)
        async with self._registry_lock:
            if name in self._shards or path.exists():
                raise Conflict(f"collection {name!r} already exists")
            config = _shard_config(dimensions, distance)

            def create() -> qe.EdgeShard:
                path.parent.mkdir(parents=True, exist_ok=True)
                shard = qe.EdgeShard.create(str(path), config)
                for index in indexes:
                    op = qe.UpdateOperation.create_field_index(payload_key(index.field), _INDEX_TYPES[index.type])
                    shard.update(op)
                shard.flush()
                return shard

            self._shards[name] = _Shard(await asyncio.to_thread(create))
        logger.info("edge collection {} created ({} dims, {})", name, dimensions, distance)

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
        edge_points = [qe.Point(point_uuid(p.id), float32_list(p.vector), dict(p.payload)) for p in points]
        await self._write(name, qe.UpdateOperation.upsert_points(edge_points), changed=len(edge_points))

    async def delete(self, name: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        await self._write(name, qe.UpdateOperation.delete_points([point_uuid(i) for i in ids]), changed=len(ids))

    async def search(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        offset: int = 0,
        filter: FilterNode | None = None,
        score_threshold: float | None = None,
    ) -> list[VectorHit]:
        entry = await self._open(name)
        request = qe.QueryRequest(
            limit=limit,
            offset=offset,
            query=qe.Query.Nearest(float32_list(vector)),
            filter=edge_filter(filter) if filter is not None else None,
            score_threshold=score_threshold,
            with_payload=True,
            with_vector=False,
            params=qe.SearchParams(exact=True),
        )
        found = await _call(entry.shard.query, request)
        return [VectorHit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in found]

    async def count(self, name: str) -> int:
        entry = await self._open(name)
        return int(await _call(entry.shard.count, qe.CountRequest(exact=True)))

    async def point_ids(self, name: str) -> set[str]:
        entry = await self._open(name)

        def scroll_all() -> set[str]:
            ids: set[str] = set()
            offset = None
            while True:
                request = qe.ScrollRequest(offset=offset, limit=_SCROLL_PAGE, with_payload=False, with_vector=False)
                records, offset = entry.shard.scroll(request)
                ids.update(str(r.id) for r in records)
                if offset is None:
                    return ids

        return await _call(scroll_all)

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


async def _call(fn: Callable[..., T], *args: Any) -> T:
    try:
        return await asyncio.to_thread(fn, *args)
    except Exception as exc:
        # qdrant-edge raises plain Exceptions; a wrong vector size is the caller's mistake.
        if "dimension error" in str(exc):
            raise BadInput(str(exc)) from None
        raise


# -- filter translation ---------------------------------------------------------------------


def edge_filter(node: FilterNode) -> qe.Filter:
    condition = _condition(node)
    return condition if isinstance(condition, qe.Filter) else qe.Filter(must=[condition])


def _condition(node: FilterNode) -> Any:
    if isinstance(node, And):
        return qe.Filter(must=[_condition(item) for item in node.items])
    if isinstance(node, Or):
        return qe.Filter(should=[_condition(item) for item in node.items])
    if isinstance(node, Not):
        if isinstance(node.item, Exists):  # not exists == is empty
            return qe.IsEmptyCondition(payload_key(node.item.field))
        return qe.Filter(must_not=[_condition(node.item)])
    key = payload_key(node.field)
    if isinstance(node, Eq):
        return qe.FieldCondition(key, match=qe.MatchValue(_match_value(node.value)))
    if isinstance(node, In):
        return qe.FieldCondition(key, match=qe.MatchAny(list(node.values)))
    if isinstance(node, Range):
        if node.is_datetime:
            bounds = {k: v.isoformat() for k, v in _bounds(node).items()}
            return qe.FieldCondition(key, range=qe.RangeDateTime(**bounds))
        return qe.FieldCondition(key, range=qe.RangeFloat(**{k: float(v) for k, v in _bounds(node).items()}))
    if isinstance(node, Exists):
        return qe.Filter(must_not=[qe.IsEmptyCondition(key)])
    raise TypeError(f"not a filter node: {node!r}")


def _match_value(value: str | int | bool) -> Any:
    # qdrant-edge-py 0.9 reads a Python bool as an integer (MatchValue(True) matches 1, not
    # true); numpy.bool_ is not an int, so it reaches the binding as a real boolean.
    return np.bool_(value) if isinstance(value, bool) else value


def _bounds(node: Range) -> dict[str, Any]:
    return {k: v for k, v in (("gt", node.gt), ("gte", node.gte), ("lt", node.lt), ("lte", node.lte)) if v is not None}
