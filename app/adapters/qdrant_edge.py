"""VectorStore on Qdrant Edge (qdrant-edge-py): in-process shards under the data directory.

One EdgeShard per collection at `<base>/<collection>`, opened lazily (load() after a restart)
and closed on close(). The Edge API is synchronous, so every call runs in a worker thread;
writes to one shard are serialised by a lock and flushed before they return, because the
ingest pipeline marks rows indexed once upsert() returns.

Search: a collection of fewer than AnnIndex.exact_below points is searched exactly
(SearchParams(exact=True): results identical to brute force). A larger one gets Qdrant's HNSW
graph (m, ef_construct: Qdrant's defaults) built in the background and is searched through it
(hnsw_ef candidates); points written since the last build sit in a plain segment that Qdrant
searches exactly until the next build folds them in. Payload indexes (indexedFields, doc_id)
serve filters, and Qdrant plans a filtered search by their cardinality (exact over a small
subset, the graph otherwise).

One background scheduler per shard does both jobs: folding new points into the graph, and
reclaiming the space of replaced and deleted points (every such point stays in its segment until
the shard is optimized, so a steady stream of updates would grow the data dir without bound).
A pass is due once the points replaced or deleted since the last pass are a share of the shard,
once the points outside the graph are enough to fold in, or when the collection just crossed
exact_below. qdrant-edge-py holds the GIL through optimize(), which
would stop the event loop for the whole build (minutes at 1M points), so a pass runs beside the
live shard: the shard is flushed and copied (writes wait for the copy), a child process loads the
copy and optimizes it, the writes made meanwhile are kept in a journal and replayed into the
built copy, and the built copy takes the live shard's place (searches wait only for that swap,
a fraction of a second). Searches and writes go on during the build. The shard's WAL bounds
itself: it rotates 32 MiB segments, so it stays below about 64 MiB per shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import sys
import time
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
    AnnIndex,
    VectorIndexStatus,
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


# Qdrant's default: a (filtered) search over fewer KB of vectors than this scans them exactly.
FULL_SCAN_THRESHOLD_KB = 10_000

# A pass in the child process: load the copy (its edge_config.json already says which graph to
# build), optimize it, and close it. Only qdrant_edge is imported: the child starts fast.
_BUILD_SCRIPT = "import sys, qdrant_edge; s = qdrant_edge.EdgeShard.load(sys.argv[1]); s.optimize(); s.flush(); s.close()"
_CONFIG_FILE = "edge_config.json"
_REPLAY_UNLOCKED_ABOVE = 200  # journal entries replayed before writes are stopped for the swap


def _shard_config(vectors: qe.EdgeVectorParams, sparse: dict[str, Any] | None, on_disk_payload: bool) -> qe.EdgeConfig:
    # indexing_threshold=1: a pass always rebuilds appendable segments, dropping dead points;
    # m=0 until the collection is large enough for a graph (a pass sets m, see _plan_pass).
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
    path: Path
    graph: bool = False  # the live shard's segments were built with an HNSW graph (m > 0)
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: int = 0  # points upserted or deleted since the last pass (outside the graph, if one)
    replaced: int = 0  # of those, points replaced or deleted: space a pass reclaims (new points take none)
    points: int = 0  # as of the last write or pass
    optimizing: asyncio.Task[None] | None = None
    journal: list[qe.UpdateOperation] | None = None  # writes made while a pass runs on a copy
    child: asyncio.subprocess.Process | None = None
    readers: int = 0  # calls into the live shard in flight (a swap waits for them)
    readable: asyncio.Event = field(default_factory=asyncio.Event)  # cleared during a swap
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set when readers == 0

    def __post_init__(self) -> None:
        self.readable.set()
        self.idle.set()
        self.graph = _graph_config(self.path)[0] > 0

    @property
    def busy(self) -> bool:
        return self.optimizing is not None and not self.optimizing.done()


class QdrantEdgeStore:
    name = "qdrant-edge"

    def __init__(
        self,
        base_dir: Path | str,
        optimize_changed_share: float = OPTIMIZE_CHANGED_SHARE,
        optimize_min_changes: int = OPTIMIZE_MIN_CHANGES,
        index: AnnIndex | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.optimize_changed_share = optimize_changed_share
        self.optimize_min_changes = optimize_min_changes
        self.index = index or AnnIndex()
        self.optimizations = 0  # passes run, for tests and the soak bench
        self.graphs_built = 0  # passes that built an HNSW graph
        self._closing = False
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

            self._shards[name] = _Shard(await asyncio.to_thread(create), path)
        logger.info("edge collection {} created ({} dims, {}, keyword index {})", name, dimensions, distance, keyword_index)

    async def add_keyword_index(self, name: str) -> None:
        entry = await self._open(name)

        operation = qe.UpdateOperation.create_sparse_vector(SPARSE_VECTOR, modifier=qe.Modifier.Idf)

        def add() -> None:  # creating an existing sparse vector again is a no-op in Edge
            entry.shard.update(operation)
            entry.shard.flush()

        async with entry.write_lock:
            await _call(add)
            if entry.journal is not None:
                entry.journal.append(operation)

    async def delete_collection(self, name: str) -> None:
        path = self._path(name)
        async with self._registry_lock:
            entry = self._shards.pop(name, None)
            if entry is not None:
                await _stop_pass(entry)
                async with entry.write_lock:
                    await asyncio.to_thread(entry.shard.close)
            if path.exists():
                await asyncio.to_thread(shutil.rmtree, path)
                logger.info("edge collection {} deleted", name)

    async def collection_exists(self, name: str) -> bool:
        return name in self._shards or await asyncio.to_thread(self._recovered, self._path(name))

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
        # Exact below the index threshold or until the graph is built, else through the graph (and
        # exactly over the points written since); rescored with the original vectors where the
        # collection is quantized.
        exact = qe.SearchParams(
            exact=not self._through_graph(entry),
            hnsw_ef=self.index.hnsw_ef,
            quantization=qe.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING),
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
        found = await self._read(entry, lambda shard: shard.query(request))
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
            facet_request = qe.FacetRequest(key, limit=limit, exact=True, filter=where)
            response = await self._read(entry, lambda shard: shard.facet(facet_request))
            return [FacetValue(value=_plain(h.value), count=int(h.count)) for h in response.hits]
        except Exception as exc:
            if "No appropriate index for faceting" not in str(exc):
                raise
        # Qdrant facets only indexed fields; other fields are counted from a scan of the points
        # under the filter, page by page in the scan threads, once their number (a count: all
        # points, or those under the filter) was allowed.
        scanned = edge_filter(filter) if filter is not None else None
        if before_scan is not None:
            counted = qe.CountRequest(exact=True, filter=scanned)
            before_scan(int(await self._read(entry, lambda shard: shard.count(counted), off_loop)))

        async def page(offset: Any, counter: FacetCounter) -> Any:
            return await self._read(entry, lambda shard: _facet_page(shard, scanned, offset, counter), off_loop)

        return await scan_facets(key, limit, page)

    async def count(self, name: str) -> int:
        entry = await self._open(name)
        return int(await self._read(entry, lambda shard: shard.count(qe.CountRequest(exact=True))))

    async def document_points(self, name: str, after: Any, limit: int) -> tuple[list[PointRef], Any]:
        entry = await self._open(name)
        request = qe.ScrollRequest(offset=after, limit=limit, with_payload=True, with_vector=False)
        records, offset = await self._read(entry, lambda shard: shard.scroll(request))
        return [point_ref(r.id, r.payload) for r in records], offset

    async def document_vectors(self, name: str, doc_ids: Sequence[str]) -> dict[str, list[list[float]]]:
        """The dense vectors of the points (every chunk) of these documents, by doc_id."""
        entry = await self._open(name)
        where = qe.Filter(must=[qe.FieldCondition(DOC_ID_KEY, match=qe.MatchAny([str(i) for i in doc_ids]))])
        found: dict[str, list[list[float]]] = {}
        offset: Any = None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=_SCROLL_PAGE, filter=where, with_payload=[DOC_ID_KEY], with_vector=True)
            page = request
            records, offset = await self._read(entry, lambda shard: shard.scroll(page))
            for r in records:
                vector = r.vector.get("") if isinstance(r.vector, dict) else r.vector
                found.setdefault(str((r.payload or {}).get(DOC_ID_KEY)), []).append([float(v) for v in vector])
            if offset is None:
                return found

    async def ping(self) -> None:
        # In-process: healthy when the data directory is usable.
        await asyncio.to_thread(self.base_dir.mkdir, parents=True, exist_ok=True)

    async def vector_index(self, name: str) -> VectorIndexStatus:
        """How much of the collection its HNSW graph serves, and whether a pass is running."""
        entry = await self._open(name)
        info = await self._read(entry, lambda shard: shard.info())
        points = int(info.points_count)
        # indexed_vectors_count counts sparse vectors too: cap it at the points.
        indexed = min(points, int(info.indexed_vectors_count)) if self._through_graph(entry) else 0
        return VectorIndexStatus(points=points, indexed_points=indexed, optimizing=entry.busy)

    async def close(self) -> None:
        self._closing = True
        for entry in list(self._shards.values()):
            await _stop_pass(entry)  # a build in progress is thrown away; the next start redoes it
        await self.wait_for_maintenance()
        async with self._registry_lock:
            while self._shards:
                name, entry = self._shards.popitem()
                async with entry.write_lock:
                    await asyncio.to_thread(entry.shard.close)
                logger.debug("edge collection {} closed", name)
        self._closing = False  # a later call opens shards again

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
                if not await asyncio.to_thread(self._recovered, path):
                    raise NotFound(f"collection {name!r} not found")
                entry = _Shard(await asyncio.to_thread(qe.EdgeShard.load, str(path)), path)
                entry.points = int((await asyncio.to_thread(entry.shard.info)).points_count)
                self._shards[name] = entry
                logger.debug("edge collection {} loaded from {}", name, path)
            return entry

    @staticmethod
    def _recovered(path: Path) -> bool:
        """Whether the shard exists, after putting back one retired by a swap that a crash cut
        short (the live shard renamed away, the built copy not yet in its place)."""
        retired = path.with_name(f".retired-{path.name}")
        if not path.exists() and retired.exists():
            retired.rename(path)
            logger.warning("edge collection {}: restored after an interrupted index swap", path.name)
        return path.exists()

    def _through_graph(self, entry: _Shard) -> bool:
        return entry.graph and entry.points >= self.index.exact_below

    async def _read(self, entry: _Shard, fn: Callable[[qe.EdgeShard], T], runner: Callable[..., Any] = None) -> T:  # type: ignore[assignment]
        """fn(live shard) in a worker thread (runner: _call, or off_loop for scan pages); a swap
        waits for the calls in flight, and calls wait for a swap."""
        while not entry.readable.is_set():
            await entry.readable.wait()
        entry.readers += 1
        entry.idle.clear()
        call = asyncio.ensure_future((runner or _call)(fn, entry.shard))
        try:
            return await asyncio.shield(call)
        finally:
            if not call.done():  # cancelled: the thread still uses the shard until it returns
                await asyncio.wait([call])
            entry.readers -= 1
            if entry.readers == 0:
                entry.idle.set()

    async def _write(self, name: str, operation: qe.UpdateOperation, changed: int = 0) -> None:
        entry = await self._open(name)

        def apply() -> int:
            entry.shard.update(operation)
            entry.shard.flush()
            return int(entry.shard.info().points_count)

        async with entry.write_lock:
            before, entry.points = entry.points, await _call(apply)
            if entry.journal is not None:  # a pass works on a copy: it gets this write at the swap
                entry.journal.append(operation)
        entry.changed += changed
        entry.replaced += changed - max(0, entry.points - before)
        self._schedule(name, entry)

    def _schedule(self, name: str, entry: _Shard) -> None:
        """Start a pass when one is due: the collection needs its first graph, the points outside
        its graph (searched exactly) are enough to fold in, or the points replaced or deleted since
        the last pass (dead ones taking space) are a share of it. New points alone never make a
        compaction due: below exact_below they are searched exactly either way, and a bulk load
        would otherwise copy and rebuild the shard every few thousand points, taking the model's
        CPU. One pass per shard at a time; a pass checks again when it ends."""
        if entry.busy or self._closing or self._shards.get(name) is not entry:
            return
        wants_graph = self.index.m > 0 and entry.points >= self.index.exact_below
        due = max(self.optimize_min_changes, self.optimize_changed_share * entry.points)
        # New points outside the graph are searched exactly: fold them in once they cost about
        # as much as an exact search of a quarter of the threshold.
        fold_in = max(self.optimize_min_changes, min(due, self.index.exact_below / 4))
        if (wants_graph and (not entry.graph or entry.changed >= fold_in)) or entry.replaced >= due:
            entry.optimizing = asyncio.create_task(self._optimize(name, entry), name=f"edge-optimize-{name}")
            # Writes made during the pass may make another one due.
            entry.optimizing.add_done_callback(lambda _: self._schedule(name, entry))

    async def _optimize(self, name: str, entry: _Shard) -> None:
        building = self.base_dir / f".build-{name}"
        graph = self.index.m > 0 and entry.points >= self.index.exact_below
        changed = replaced = 0
        clock = [time.perf_counter()]
        try:
            async with entry.write_lock:  # writes wait for the copy; searches do not
                if self._shards.get(name) is not entry:  # deleted or closed meanwhile
                    return
                await asyncio.to_thread(entry.shard.flush)
                await asyncio.to_thread(_fresh_copy, entry.path, building)
                entry.journal = []
                (changed, entry.changed), (replaced, entry.replaced) = (entry.changed, 0), (entry.replaced, 0)
            clock.append(time.perf_counter())
            await asyncio.to_thread(_plan_pass, building, self.index if graph else None)
            entry.child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _BUILD_SCRIPT, str(building),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, stderr = await entry.child.communicate()
            if entry.child.returncode != 0:
                raise RuntimeError(f"pass exited with {entry.child.returncode}: {stderr.decode(errors='replace')[-2000:]}")
            entry.child = None
            clock.append(time.perf_counter())
            built = await asyncio.to_thread(qe.EdgeShard.load, str(building))
            try:
                paused = await self._swap(name, entry, built, building)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(built.close)
                raise
        except Exception as exc:  # the next writes try again
            entry.changed += changed
            entry.replaced += replaced
            if self._shards.get(name) is entry:
                logger.warning("edge collection {}: optimization failed: {!r}", name, exc)
            return
        finally:
            entry.journal = None
            if entry.child is not None and entry.child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    entry.child.kill()
                await entry.child.wait()
            entry.child = None
            await asyncio.to_thread(shutil.rmtree, building, True)
        self.optimizations += 1
        self.graphs_built += graph
        copy_s, build_s = clock[1] - clock[0], clock[2] - clock[1]
        logger.info(
            "edge collection {}: {} after {} changed points ({} points; copy {:.1f}s, pass {:.1f}s, searches paused {:.2f}s by the swap)",
            name, "graph built" if graph else "compacted", changed, entry.points, copy_s, build_s, paused,
        )  # fmt: skip

    async def _swap(self, name: str, entry: _Shard, built: qe.EdgeShard, building: Path) -> float:
        """Replay the journal into the built copy and put it in the live shard's place; returns
        how long searches waited."""
        assert entry.journal is not None
        done = 0
        while len(entry.journal) - done > _REPLAY_UNLOCKED_ABOVE:  # writes go on meanwhile
            done = await asyncio.to_thread(_replay, built, entry.journal, done)
        async with entry.write_lock:
            if self._shards.get(name) is not entry:
                raise RuntimeError("collection closed or deleted during the pass")
            await asyncio.to_thread(_replay, built, entry.journal, done)
            await asyncio.to_thread(built.flush)
            await asyncio.to_thread(built.close)
            retired = entry.path.with_name(f".retired-{name}")
            entry.readable.clear()
            paused = time.perf_counter()
            try:
                await entry.idle.wait()
                await asyncio.to_thread(shutil.rmtree, retired, True)
                await asyncio.to_thread(entry.shard.close)
                entry.path.rename(retired)
                building.rename(entry.path)
                try:
                    entry.shard = await asyncio.to_thread(qe.EdgeShard.load, str(entry.path))
                except BaseException:  # put the old shard back
                    entry.path.rename(building)
                    retired.rename(entry.path)
                    entry.shard = await asyncio.to_thread(qe.EdgeShard.load, str(entry.path))
                    raise
                entry.graph = _graph_config(entry.path)[0] > 0
                entry.points = int((await asyncio.to_thread(entry.shard.info)).points_count)
            finally:
                entry.readable.set()
                paused = time.perf_counter() - paused
        await asyncio.to_thread(shutil.rmtree, retired, True)
        return paused

    async def wait_for_maintenance(self) -> None:
        """Until no pass is running (tests, benchmarks, shutdown)."""
        for entry in list(self._shards.values()):
            while entry.optimizing is not None and not entry.optimizing.done():
                with contextlib.suppress(Exception):
                    await entry.optimizing


def _graph_config(path: Path) -> tuple[int, int]:
    """(m, ef_construct) the shard's segments are built with, from its edge_config.json."""
    try:
        hnsw = json.loads((path / _CONFIG_FILE).read_text()).get("hnsw_config") or {}
        return int(hnsw.get("m") or 0), int(hnsw.get("ef_construct") or 0)
    except (OSError, ValueError):
        return 0, 0


def _fresh_copy(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


def _plan_pass(path: Path, index: AnnIndex | None) -> None:
    """Say in the copy's config what the pass builds: a graph with the index's parameters, or
    none (m=0: compaction only, the collection is searched exactly). indexing_threshold 1: every
    segment is rebuilt, so the pass also folds in the points written since the last one."""
    config_file = path / _CONFIG_FILE
    config = json.loads(config_file.read_text())
    hnsw = dict(config.get("hnsw_config") or {})
    hnsw.update(
        m=index.m if index else 0,
        ef_construct=index.ef_construct if index else hnsw.get("ef_construct") or 100,
        full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
    )
    config["hnsw_config"] = hnsw
    config["optimizers"] = {**(config.get("optimizers") or {}), "indexing_threshold": 1}
    config_file.write_text(json.dumps(config))


def _replay(shard: qe.EdgeShard, journal: list[qe.UpdateOperation], start: int) -> int:
    end = len(journal)
    for operation in journal[start:end]:
        shard.update(operation)
    return end


async def _stop_pass(entry: _Shard) -> None:
    """Stop a pass in progress (its copy is thrown away; the shard is as it was)."""
    if entry.child is not None and entry.child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            entry.child.kill()
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
