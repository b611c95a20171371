"""VectorStore on a Qdrant server (or qdrant-client's local mode) through AsyncQdrantClient.

Search uses the collection's HNSW index (approximate; exact below Qdrant's full-scan
threshold). Writes wait for the server to apply them, because the ingest pipeline marks rows
indexed once upsert() returns. Transport failures become DependencyUnavailable.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Sequence

import grpc
import httpx
from loguru import logger
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from app.adapters.qdrant_common import (
    CLIENT,
    DISTANCES,
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
    VERSION_KEY,
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
    VectorIndexStatus,
    VectorPoint,
    checked_collection,
    checked_distance,
    checked_query,
    float32_list,
    payload_key,
    point_uuid,
)
from app.errors import BadInput, CitadelError, Conflict, DependencyUnavailable, NotFound

_UPSERT_BATCH = 256
_SCROLL_PAGE = 1_000


class QdrantServerStore:
    name = "qdrant"

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        client: AsyncQdrantClient | None = None,
        timeout: float = 10.0,
        read_consistency: int | str = 1,
    ) -> None:
        if client is None:
            if not url:
                raise ValueError("QdrantServerStore needs a url or a client")
            # No version probe at construction: it is a blocking request to a server that may be
            # down at startup, and health reports reachability anyway.
            client = AsyncQdrantClient(url=url, api_key=api_key, timeout=int(timeout), check_compatibility=False)
        self.client = client
        self._where = url or "an injected client"
        # How many replicas of each shard answer a search: 1 (fastest), or "majority"/"quorum"/"all".
        self.read_consistency = read_consistency
        self._quantized: dict[str, bool] = {}  # per collection, read once: rescoring only where it applies

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
        indexes = checked_collection(dimensions, distance, indexed_fields)
        client_distance = getattr(models.Distance, DISTANCES[checked_distance(distance)][CLIENT])
        layout = (layout or CollectionLayout()).checked()
        quantization = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
            if layout.quantization == "int8"
            else None
        )
        async with self._guard(name):
            if await self.client.collection_exists(name):
                raise Conflict(f"collection {name!r} already exists")
            await self.client.create_collection(
                name,
                vectors_config=models.VectorParams(size=dimensions, distance=client_distance, on_disk=layout.on_disk_vectors),
                sparse_vectors_config={SPARSE_VECTOR: _SPARSE_PARAMS} if keyword_index else None,
                shard_number=layout.shard_number,
                replication_factor=layout.replication_factor,
                write_consistency_factor=layout.write_consistency_factor,
                on_disk_payload=layout.on_disk_payload,
                quantization_config=quantization,
            )
            self._quantized[name] = quantization is not None
            for index in indexes:
                index_type = getattr(models.PayloadSchemaType, INDEX_TYPES[index.type][CLIENT])
                await self.client.create_payload_index(name, payload_key(index.field), field_schema=index_type, wait=True)
        logger.info("qdrant collection {} created ({} dims, {}, keyword index {})", name, dimensions, distance, keyword_index)

    async def add_keyword_index(self, name: str) -> None:
        async with self._guard(name):
            info = await self.client.get_collection(name)
            if SPARSE_VECTOR in (info.config.params.sparse_vectors or {}):
                return
            config = models.SparseVectorNameConfig(sparse=models.SparseVectorConfig(modifier=models.Modifier.IDF))
            await self.client.create_vector_name(name, SPARSE_VECTOR, config, wait=True)

    async def delete_collection(self, name: str) -> None:
        try:
            async with self._guard(name):
                self._quantized.pop(name, None)
                await self.client.delete_collection(name)
        except NotFound:
            pass  # already gone: deleting is idempotent

    async def collection_exists(self, name: str) -> bool:
        async with self._guard(name):
            return await self.client.collection_exists(name)

    # -- points -------------------------------------------------------------------------------

    async def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        structs = [
            models.PointStruct(id=point_uuid(p.id), vector=_client_vector(p), payload=dict(p.payload))
            for p in points
        ]
        async with self._guard(name):
            for start in range(0, len(structs), _UPSERT_BATCH):
                await self.client.upsert(name, points=structs[start : start + _UPSERT_BATCH], wait=True)

    async def delete(self, name: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        selector = models.PointIdsList(points=[point_uuid(i) for i in ids])
        async with self._guard(name):
            await self.client.delete(name, points_selector=selector, wait=True)

    async def set_sparse_vectors(self, name: str, vectors: Sequence[tuple[str, SparseVector]]) -> None:
        updates = [models.PointVectors(id=point_uuid(pid), vector={SPARSE_VECTOR: _client_sparse(v)}) for pid, v in vectors]
        async with self._guard(name):
            for start in range(0, len(updates), _UPSERT_BATCH):
                await self.client.update_vectors(name, points=updates[start : start + _UPSERT_BATCH], wait=True)

    async def delete_documents(self, name: str, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        selector = models.FilterSelector(
            filter=models.Filter(
                must=[models.FieldCondition(key=DOC_ID_KEY, match=models.MatchAny(any=[str(i) for i in doc_ids]))]
            )
        )
        async with self._guard(name):
            await self.client.delete(name, points_selector=selector, wait=True)

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
        where = server_filter(filter) if filter is not None else None
        dense = float32_list(query.dense) if query.dense is not None else None
        sparse = _client_sparse(query.sparse) if query.sparse is not None else None
        prefetch = None
        using = None
        # Rescoring applies to the dense vectors of a quantized collection only.
        dense_params = await self._search_params(name) if dense is not None else None
        if query.mode is SearchMode.HYBRID:
            prefetch = [
                models.Prefetch(query=dense, limit=query.prefetch, filter=where, params=dense_params),
                models.Prefetch(
                    query=sparse,
                    using=SPARSE_VECTOR,
                    limit=query.prefetch,
                    filter=where,
                    score_threshold=query.keyword_min_score,
                ),
            ]
            ranking: Any = (
                models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=[1.0, query.keyword_weight]))
                if query.fusion is Fusion.RRF
                else models.FusionQuery(fusion=models.Fusion.DBSF)
            )
        elif query.mode is SearchMode.SEMANTIC:
            ranking = dense
        else:
            ranking, using = sparse, SPARSE_VECTOR
        async with self._guard(name):
            response = await self.client.query_points(
                name,
                query=ranking,
                using=using,
                prefetch=prefetch,
                limit=limit,
                offset=offset,
                query_filter=where,
                score_threshold=score_threshold,
                with_payload=True,
                with_vectors=False,
                search_params=dense_params if query.mode is SearchMode.SEMANTIC else None,
                consistency=self.read_consistency,
            )
        return [VectorHit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in response.points]

    async def facet(
        self,
        name: str,
        key: str,
        filter: FilterNode | None,
        limit: int,
        before_scan: Callable[[int], None] | None = None,
    ) -> list[FacetValue]:
        where = document_points(filter, SERVER_DIALECT)
        try:
            async with self._guard(name):
                response = await self.client.facet(name, key, facet_filter=where, limit=limit, exact=True)
            return [FacetValue(value=h.value, count=int(h.count)) for h in response.hits]
        except BadInput as exc:
            # A server facets only indexed fields; other fields are counted from a scan of the
            # points under the filter, page by page (counted in the scan threads), once their
            # number was allowed.
            if "index" not in exc.message.lower():
                raise
        scanned = server_filter(filter) if filter is not None else None
        if before_scan is not None:
            async with self._guard(name):
                points = (await self.client.count(name, count_filter=scanned, exact=True)).count
            before_scan(points)

        async def page(offset: Any, counter: FacetCounter) -> Any:
            async with self._guard(name):
                records, following = await self.client.scroll(
                    name,
                    scroll_filter=scanned,
                    limit=_SCROLL_PAGE,
                    offset=offset,
                    with_payload=counter.fields,
                    with_vectors=False,
                )
            await off_loop(counter.add, [r.payload for r in records])
            return following

        return await scan_facets(key, limit, page)

    async def _search_params(self, name: str) -> models.SearchParams | None:
        if name not in self._quantized:
            async with self._guard(name):  # a missing collection is NOT_FOUND, as for the search itself
                info = await self.client.get_collection(name)
            vectors = info.config.params.vectors
            own = getattr(vectors, "quantization_config", None)  # None for named-vector layouts
            self._quantized[name] = bool(info.config.quantization_config or own)
        if not self._quantized[name]:
            return None
        return models.SearchParams(
            quantization=models.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING)
        )

    async def count(self, name: str) -> int:
        async with self._guard(name):
            return (await self.client.count(name, exact=True)).count

    async def vector_index(self, name: str) -> VectorIndexStatus:
        """From the server's collection info: segments below its indexing threshold are searched
        exactly (indexed_vectors_count leaves them out), and a status other than green means its
        optimizers are building or waiting to (yellow, grey). indexed_vectors_count counts keyword
        (sparse) vectors too: capped at the points."""
        async with self._guard(name):
            info = await self.client.get_collection(name)
        points = int(info.points_count or 0)
        indexed = min(points, int(info.indexed_vectors_count or 0))
        return VectorIndexStatus(points=points, indexed_points=indexed, optimizing=info.status != models.CollectionStatus.GREEN)

    async def document_points(self, name: str, after: Any, limit: int) -> tuple[list[PointRef], Any]:
        async with self._guard(name):
            records, offset = await self.client.scroll(
                name, limit=limit, offset=after, with_payload=[DOC_ID_KEY, VERSION_KEY], with_vectors=False
            )
        return [point_ref(r.id, r.payload) for r in records], offset

    async def document_vectors(self, name: str, doc_ids: Sequence[str]) -> dict[str, list[list[float]]]:
        """The dense vectors of the points (every chunk) of these documents, by doc_id."""
        where = models.Filter(must=[models.FieldCondition(key=DOC_ID_KEY, match=models.MatchAny(any=[str(i) for i in doc_ids]))])
        found: dict[str, list[list[float]]] = {}
        offset: Any = None
        while True:
            async with self._guard(name):
                records, offset = await self.client.scroll(
                    name, scroll_filter=where, limit=_SCROLL_PAGE, offset=offset, with_payload=[DOC_ID_KEY], with_vectors=True
                )
            for r in records:
                vector = r.vector.get("") if isinstance(r.vector, dict) else r.vector
                found.setdefault(str((r.payload or {}).get(DOC_ID_KEY)), []).append([float(v) for v in vector])
            if offset is None:
                return found

    async def ping(self) -> None:
        async with self._guard(None):
            await self.client.get_collections()

    async def close(self) -> None:
        await self.client.close()

    # -- internals ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _guard(self, collection: str | None) -> AsyncIterator[None]:
        """Map client errors onto the domain errors, in one place."""
        try:
            yield
        except CitadelError:
            raise
        except UnexpectedResponse as exc:
            detail = _response_detail(exc)
            if exc.status_code == 404:
                raise NotFound(f"collection {collection!r} not found") from None
            if exc.status_code == 409:
                raise Conflict(detail) from None
            if exc.status_code in (400, 422):
                raise BadInput(detail) from None
            raise DependencyUnavailable(f"qdrant at {self._where}: {exc.status_code} {detail}") from exc
        except (ResponseHandlingException, httpx.TransportError, ConnectionError, TimeoutError) as exc:
            raise DependencyUnavailable(f"qdrant at {self._where} is unreachable: {exc}") from exc
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"collection {collection!r} not found") from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise BadInput(str(exc.details() if hasattr(exc, "details") else exc)) from None
            raise DependencyUnavailable(f"qdrant at {self._where}: {code}") from exc
        except ValueError as exc:
            # qdrant-client's local mode reports a missing collection or a bad request this way.
            if "not found" in str(exc):
                raise NotFound(f"collection {collection!r} not found") from None
            raise BadInput(str(exc)) from None


def _response_detail(exc: UnexpectedResponse) -> str:
    try:
        return str(exc.structured()["status"]["error"])
    except Exception:
        return exc.reason_phrase or "unexpected response"


# -- vectors and filters ---------------------------------------------------------------------

RRF_K = 60  # the same constant as the Edge adapter, so both fuse alike
_SPARSE_PARAMS = models.SparseVectorParams(modifier=models.Modifier.IDF)


def _client_sparse(vector: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=[int(i) for i in vector.indices], values=[float(v) for v in vector.values])


def _client_vector(point: VectorPoint) -> Any:
    dense = float32_list(point.vector)
    if point.sparse is None:
        return dense
    return {"": dense, SPARSE_VECTOR: _client_sparse(point.sparse)}


SERVER_DIALECT = QdrantDialect(
    filter_type=models.Filter,
    make_filter=models.Filter,
    is_empty=lambda key: models.IsEmptyCondition(is_empty=models.PayloadField(key=key)),
    match_value=lambda key, value: models.FieldCondition(key=key, match=models.MatchValue(value=value)),
    match_any=lambda key, values: models.FieldCondition(key=key, match=models.MatchAny(any=values)),
    number_range=lambda key, bounds: models.FieldCondition(key=key, range=models.Range(**bounds)),
    datetime_range=lambda key, bounds: models.FieldCondition(key=key, range=models.DatetimeRange(**bounds)),
)


def server_filter(node: FilterNode) -> models.Filter:
    return qdrant_filter(node, SERVER_DIALECT)
