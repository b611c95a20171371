"""citadel.v1.Citadel: each RPC admits its caller once (app/grpc/caller.py), builds its
operation's typed request from the message (app/requests.py; app/grpc/convert.py for what is
gRPC's own: enums, JSON text, optional fields) and runs it on the same service GraphQL runs it
on; failures leave through one table (app/grpc/status.py). No repository or store is touched here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from grpc.aio import ServicerContext
from loguru import logger

from app.errors import CitadelError, DependencyUnavailable, Internal
from app.grpc import convert
from app.grpc.caller import admit, client_address
from app.grpc.citadel.v1 import citadel_pb2 as pb
from app.grpc.citadel.v1 import citadel_pb2_grpc as pb_grpc
from app.grpc.status import abort
from app.inference.callers import fair_key_of
from app.requests import CollectionsSearchRequest, EmbedRequest, IngestBatch, RerankRequest, SearchRequest

if TYPE_CHECKING:
    from app.domain.access import Principal
    from app.services.container import Services

Reply = TypeVar("Reply")
Item = TypeVar("Item")


class StreamQuota(Protocol):
    """Streams one caller may hold open at once: the GraphQL subscriptions' own quota
    (CITADEL_SERVER__MAX_SUBSCRIPTIONS_PER_KEY), so a key's limit holds over both transports."""

    def try_take(self, caller: str) -> bool: ...

    def give_back(self, caller: str) -> None: ...


class StreamLimitReached(CitadelError):
    code = "RATE_LIMITED"  # as GraphQL refuses a subscription past the quota


class CitadelService(pb_grpc.CitadelServicer):
    def __init__(self, services: Services, quota: StreamQuota) -> None:
        self.services = services
        self.quota = quota
        self.limits = services.settings.limits
        self.closing = asyncio.Event()  # set at shutdown: streams never end by themselves

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
            embed = EmbedRequest.parse(
                tuple(request.texts),
                self.limits,
                model=convert.optional(request, "model"),
                kind=convert.embed_kind(request.kind),
                normalize=request.normalize if request.HasField("normalize") else True,
                wait=request.wait,
            )
            return convert.embed_response(await self.services.embedder.run(embed, principal=principal))

        return await self._unary("Embed", context, run)

    async def Search(self, request: pb.SearchRequest, context: ServicerContext) -> pb.SearchResponse:
        async def run(principal: Principal) -> pb.SearchResponse:
            search = SearchRequest.parse(
                request.collection,
                self.limits,
                query=convert.optional(request, "query"),
                vector=list(request.vector) or None,
                limit=request.limit if request.HasField("limit") else 10,
                offset=request.offset,
                filter=convert.json_argument(request.filter_json, "filter_json", self.limits.max_text_chars),
                score_threshold=convert.optional(request, "score_threshold"),
                mode=convert.search_mode(request.mode),
                fusion=convert.fusion(request.fusion),
                similar_to=convert.optional(request, "similar_to"),
                recommend=convert.recommend(request),
                group_by=convert.group_by(request),
                diversity=convert.optional(request, "diversity"),
                autocut=convert.optional(request, "autocut"),
                rerank=convert.search_rerank(request),
            )
            return convert.search_response(await self.services.search.run(search, principal=principal))

        return await self._unary("Search", context, run)

    async def SearchCollections(
        self, request: pb.SearchCollectionsRequest, context: ServicerContext
    ) -> pb.SearchCollectionsResponse:
        async def run(principal: Principal) -> pb.SearchCollectionsResponse:
            search = CollectionsSearchRequest.parse(
                request.query,
                self.limits,
                collections=list(request.collections) or None,
                limit=request.limit if request.HasField("limit") else 10,
                filter=convert.json_argument(request.filter_json, "filter_json", self.limits.max_text_chars),
                mode=convert.search_mode(request.mode),
            )
            return convert.collections_response(await self.services.search.run_collections(search, principal=principal))

        return await self._unary("SearchCollections", context, run)

    async def Ingest(self, request: pb.IngestRequest, context: ServicerContext) -> pb.IngestResponse:
        async def run(principal: Principal) -> pb.IngestResponse:
            batch = IngestBatch.parse(request.collection, convert.documents(request, self.limits.max_text_chars), self.limits)
            return convert.ingest_response(await self.services.ingest.run(batch, principal=principal))

        return await self._unary("Ingest", context, run)

    async def Rerank(self, request: pb.RerankRequest, context: ServicerContext) -> pb.RerankResponse:
        async def run(principal: Principal) -> pb.RerankResponse:
            rerank = RerankRequest.parse(
                request.query,
                tuple(request.documents),
                self.limits,
                model=convert.optional(request, "model"),
                top_n=request.top_n if request.HasField("top_n") else None,
                raw_scores=request.raw_scores,
            )
            return convert.rerank_response(await self.services.reranker.run(rerank, principal=principal), request.return_text)

        return await self._unary("Rerank", context, run)

    async def WatchModelProgress(
        self, request: pb.WatchModelProgressRequest, context: ServicerContext
    ) -> AsyncIterator[pb.DownloadEvent]:
        with client_address(context):
            try:
                principal = await admit(self.services, context)
                model = convert.optional_name(request, "model")
                caller = fair_key_of(principal)  # the key, else the client's address
                if not self.quota.try_take(caller):
                    raise StreamLimitReached("Subscription limit reached for this API key: close one of its running streams first")
                try:
                    async with self.services.catalog.progress(model, principal) as (snapshot, events):
                        for event in snapshot:  # the current state on every live replica first
                            yield convert.download_event(event)
                        async for event in self._until_closing(events):
                            yield convert.download_event(event)
                finally:
                    self.quota.give_back(caller)
                return
            except CitadelError as exc:
                error: CitadelError = exc
            except Exception:  # noqa: BLE001
                logger.exception("gRPC WatchModelProgress failed")
                error = Internal("Internal server error.")
        await abort(context, error)

    async def _until_closing(self, events: AsyncIterator[Item]) -> AsyncIterator[Item]:
        """The events until shutdown, which then ends the stream with UNAVAILABLE (clients retry
        elsewhere): a status, so the server's stop need not wait out its grace for it."""
        closing = asyncio.ensure_future(self.closing.wait())
        following: asyncio.Future[Item] | None = None
        try:
            while True:
                following = asyncio.ensure_future(anext(events))
                await asyncio.wait((following, closing), return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    raise DependencyUnavailable("the server is shutting down: subscribe again (to another replica)")
                try:
                    yield following.result()
                except StopAsyncIteration:
                    return
        finally:  # also when the client leaves (this task cancelled): nothing waits on `events` after it
            closing.cancel()
            if following is not None and not following.done():
                following.cancel()
                await asyncio.wait((following,))

    def close(self) -> None:
        self.closing.set()
