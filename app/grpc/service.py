"""citadel.v1.Citadel: each RPC admits its caller once (app/grpc/caller.py), checks its message
(app/grpc/convert.py) and calls the same service GraphQL calls; failures leave through one table
(app/grpc/status.py). No repository or store is touched here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from grpc.aio import ServicerContext
from loguru import logger

from app.errors import CitadelError, Internal
from app.grpc import convert
from app.grpc.caller import admit, client_address
from app.grpc.citadel.v1 import citadel_pb2 as pb
from app.grpc.citadel.v1 import citadel_pb2_grpc as pb_grpc
from app.grpc.status import abort
from app.validation import check_string

if TYPE_CHECKING:
    from app.domain.access import Principal
    from app.services.container import Services

Reply = TypeVar("Reply")


class CitadelService(pb_grpc.CitadelServicer):
    def __init__(self, services: Services) -> None:
        self.services = services
        self.limits = services.settings.limits
        self.streams: set[asyncio.Task[object]] = set()  # cancelled at shutdown: they never end by themselves

    async def _unary(
        self, name: str, context: ServicerContext, call: Callable[[Principal], Awaitable[Reply]]
    ) -> Reply:
        with client_address(context):
            try:
                return await call(await admit(self.services, context))
            except CitadelError as exc:
                error: CitadelError = exc
            except Exception:  # noqa: BLE001  masked as GraphQL masks it; the traceback goes to the log only
                logger.exception("gRPC {} failed", name)
                error = Internal("Internal server error.")
        await abort(context, error)  # outside the try: abort raises, and must not be caught above
        raise AssertionError("unreachable")

    async def Embed(self, request: pb.EmbedRequest, context: ServicerContext) -> pb.EmbedResponse:
        async def run(principal: Principal) -> pb.EmbedResponse:
            outcome = await self.services.embedder.embed(
                list(request.texts),
                model=convert.optional_name(request, "model"),
                kind=convert.embed_kind(request.kind),
                normalize=request.normalize if request.HasField("normalize") else True,
                wait=request.wait,
                principal=principal,
            )
            return convert.embed_response(outcome)

        return await self._unary("Embed", context, run)

    async def Search(self, request: pb.SearchRequest, context: ServicerContext) -> pb.SearchResponse:
        async def run(principal: Principal) -> pb.SearchResponse:
            collection = convert.name(request.collection, "collection")
            outcome = await self.services.search.search(
                collection,
                query=check_string(request.query, "query", self.limits.max_text_chars),
                limit=request.limit if request.HasField("limit") else 10,
                offset=request.offset,
                filter=convert.json_argument(request.filter_json, "filter_json", self.limits.max_text_chars),
                score_threshold=request.score_threshold if request.HasField("score_threshold") else None,
                mode=convert.search_mode(request.mode),
                principal=principal,
            )
            return convert.search_response(outcome)

        return await self._unary("Search", context, run)

    async def Ingest(self, request: pb.IngestRequest, context: ServicerContext) -> pb.IngestResponse:
        async def run(principal: Principal) -> pb.IngestResponse:
            collection = convert.name(request.collection, "collection")
            payload = convert.documents(request, self.limits.max_text_chars)
            report = await self.services.ingest.ingest(collection, payload, principal=principal)
            return convert.ingest_response(report)

        return await self._unary("Ingest", context, run)

    async def Rerank(self, request: pb.RerankRequest, context: ServicerContext) -> pb.RerankResponse:
        async def run(principal: Principal) -> pb.RerankResponse:
            outcome = await self.services.reranker.rerank(
                request.query,
                list(request.documents),
                model=convert.optional_name(request, "model"),
                top_n=request.top_n if request.HasField("top_n") else None,
                raw_scores=request.raw_scores,
                principal=principal,
            )
            return convert.rerank_response(outcome, request.return_text)

        return await self._unary("Rerank", context, run)

    async def WatchModelProgress(
        self, request: pb.WatchModelProgressRequest, context: ServicerContext
    ) -> AsyncIterator[pb.DownloadEvent]:
        task = asyncio.current_task()
        assert task is not None
        self.streams.add(task)
        try:
            with client_address(context):
                try:
                    principal = await admit(self.services, context)
                    model = convert.optional_name(request, "model")
                    async with self.services.catalog.progress(model, principal) as (snapshot, events):
                        for event in snapshot:  # the current state on every live replica first
                            yield convert.download_event(event)
                        async for event in events:
                            yield convert.download_event(event)
                    return
                except CitadelError as exc:
                    error: CitadelError = exc
                except Exception:  # noqa: BLE001
                    logger.exception("gRPC WatchModelProgress failed")
                    error = Internal("Internal server error.")
            await abort(context, error)
        finally:
            self.streams.discard(task)

    def cancel_streams(self) -> None:
        for task in list(self.streams):
            task.cancel()
