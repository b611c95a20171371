"""VectorStore on a Qdrant server (or qdrant-client's local mode) through AsyncQdrantClient.

Search uses the collection's HNSW index (approximate; exact below Qdrant's full-scan
threshold). Writes wait for the server to apply them, because the ingest pipeline marks rows
indexed once upsert() returns. Transport failures become DependencyUnavailable.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

import grpc
import httpx
from loguru import logger
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

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
    RESCORE_OVERSAMPLING,
    CollectionLayout,
    Distance,
    VectorHit,
    VectorPoint,
    checked_collection,
    float32_list,
    point_uuid,
)
from app.errors import BadInput, CitadelError, Conflict, DependencyUnavailable, NotFound

_DISTANCES = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT, "euclid": models.Distance.EUCLID}
_INDEX_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
    "datetime": models.PayloadSchemaType.DATETIME,
}
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
        distance: Distance,
        indexed_fields: Sequence[str] = (),
        layout: CollectionLayout | None = None,
    ) -> None:
        indexes = checked_collection(dimensions, distance, indexed_fields)
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
                vectors_config=models.VectorParams(
                    size=dimensions, distance=_DISTANCES[distance], on_disk=layout.on_disk_vectors
                ),
                shard_number=layout.shard_number,
                replication_factor=layout.replication_factor,
                write_consistency_factor=layout.write_consistency_factor,
                on_disk_payload=layout.on_disk_payload,
                quantization_config=quantization,
            )
            self._quantized[name] = quantization is not None
            for index in indexes:
                await self.client.create_payload_index(
                    name, payload_key(index.field), field_schema=_INDEX_TYPES[index.type], wait=True
                )
        logger.info("qdrant collection {} created ({} dims, {})", name, dimensions, distance)

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
            models.PointStruct(id=point_uuid(p.id), vector=float32_list(p.vector), payload=dict(p.payload))
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

    async def search(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        offset: int = 0,
        filter: FilterNode | None = None,
        score_threshold: float | None = None,
    ) -> list[VectorHit]:
        async with self._guard(name):
            response = await self.client.query_points(
                name,
                query=float32_list(vector),
                limit=limit,
                offset=offset,
                query_filter=server_filter(filter) if filter is not None else None,
                score_threshold=score_threshold,
                with_payload=True,
                with_vectors=False,
                search_params=await self._search_params(name),
                consistency=self.read_consistency,
            )
        return [VectorHit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in response.points]

    async def _search_params(self, name: str) -> models.SearchParams | None:
        if name not in self._quantized:
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

    async def point_ids(self, name: str) -> set[str]:
        ids: set[str] = set()
        offset: Any = None
        async with self._guard(name):
            while True:
                records, offset = await self.client.scroll(
                    name, limit=_SCROLL_PAGE, offset=offset, with_payload=False, with_vectors=False
                )
                ids.update(str(r.id) for r in records)
                if offset is None:
                    return ids

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


# -- filter translation ---------------------------------------------------------------------


def server_filter(node: FilterNode) -> models.Filter:
    condition = _condition(node)
    return condition if isinstance(condition, models.Filter) else models.Filter(must=[condition])


def _condition(node: FilterNode) -> Any:
    if isinstance(node, And):
        return models.Filter(must=[_condition(item) for item in node.items])
    if isinstance(node, Or):
        return models.Filter(should=[_condition(item) for item in node.items])
    if isinstance(node, Not):
        if isinstance(node.item, Exists):  # not exists == is empty
            return models.IsEmptyCondition(is_empty=models.PayloadField(key=payload_key(node.item.field)))
        return models.Filter(must_not=[_condition(node.item)])
    key = payload_key(node.field)
    if isinstance(node, Eq):
        return models.FieldCondition(key=key, match=models.MatchValue(value=node.value))
    if isinstance(node, In):
        return models.FieldCondition(key=key, match=models.MatchAny(any=list(node.values)))
    if isinstance(node, Range):
        bounds = {k: getattr(node, k) for k in ("gt", "gte", "lt", "lte") if getattr(node, k) is not None}
        if node.is_datetime:
            return models.FieldCondition(key=key, range=models.DatetimeRange(**bounds))
        return models.FieldCondition(key=key, range=models.Range(**{k: float(v) for k, v in bounds.items()}))
    if isinstance(node, Exists):
        return models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=key))])
    raise TypeError(f"not a filter node: {node!r}")
