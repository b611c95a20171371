"""Query resolvers: thin, they validate shapes and call services."""

from __future__ import annotations

from typing import Annotated, Optional

import strawberry

from app import __version__
from app.graphql import types as t
from app.graphql.context import Context
from app.graphql.convert import api_key_to_gql, collection_to_gql, document_to_gql, hit_to_gql, model_to_gql
from app.graphql.scalars import JSON

Info = strawberry.Info[Context, None]


@strawberry.type
class Query:
    @strawberry.field(description="Embed texts; one Embedding per input, in input order.")
    async def embed(
        self,
        info: Info,
        texts: list[str],
        model: Optional[str] = None,
        kind: Optional[t.EmbedKind] = t.EmbedKind.DOCUMENT,
        normalize: Optional[bool] = True,
        wait: Annotated[
            bool,
            strawberry.argument(description="Wait for a model that is still downloading instead of MODEL_UNAVAILABLE"),
        ] = False,
    ) -> t.EmbedResult:
        kind = kind or t.EmbedKind.DOCUMENT  # an explicit null means the default, as in API.md
        outcome = await info.context.services.embedder.embed(
            texts,
            model=model,
            kind=kind,
            normalize=normalize is not False,
            wait=wait,
            principal=info.context.principal,
        )
        return t.EmbedResult(
            model=outcome.model,
            dimensions=outcome.dimensions,
            embeddings=[
                t.Embedding(index=i, values=vector, cached=cached)
                for i, (vector, cached) in enumerate(zip(outcome.vectors, outcome.cached))
            ],
        )

    @strawberry.field(description="Search: exactly one of `query` or `vector` (SEMANTIC only); KEYWORD and HYBRID need `query`.")
    async def search(
        self,
        info: Info,
        collection: str,
        query: Optional[str] = None,
        vector: Optional[list[float]] = None,
        limit: Optional[int] = 10,
        offset: Optional[int] = 0,
        filter: Optional[JSON] = None,
        score_threshold: Optional[float] = None,
        mode: Optional[t.SearchMode] = t.SearchMode.SEMANTIC,
        fusion: Optional[t.Fusion] = t.Fusion.RRF,
    ) -> t.SearchResult:
        outcome = await info.context.services.search.search(
            collection,
            query=query,
            vector=vector,
            limit=10 if limit is None else limit,
            offset=offset or 0,
            filter=filter,
            score_threshold=score_threshold,
            mode=mode or t.SearchMode.SEMANTIC,
            fusion=fusion or t.Fusion.RRF,
            principal=info.context.principal,
        )
        hits = []
        for hit in outcome.hits:
            # Prime the loader: the rows were already read to drop deleted documents.
            if getattr(hit, "row", None) is not None:
                info.context.document_loader.prime((collection, hit.id), document_to_gql(hit.row))
            hits.append(hit_to_gql(hit, collection))
        return t.SearchResult(
            collection=outcome.collection, model=outcome.model, hits=hits, took_ms=outcome.took_ms
        )

    @strawberry.field(description="Documents per value of a metadata field under the filter, most frequent first.")
    async def facets(
        self, info: Info, collection: str, field: str, filter: Optional[JSON] = None, limit: Optional[int] = 10
    ) -> list[t.FacetCount]:
        counts = await info.context.services.search.facets(
            collection,
            field,
            filter=filter,
            limit=10 if limit is None else limit,
            principal=info.context.principal,
            budget=info.context.scan_budget,
        )
        return [t.FacetCount(value=c.value, count=c.count) for c in counts]

    @strawberry.field
    async def collections(self, info: Info) -> list[t.Collection]:
        rows = await info.context.services.collections.list(principal=info.context.principal)
        return [collection_to_gql(row) for row in rows]

    @strawberry.field
    async def collection(self, info: Info, name: str) -> Optional[t.Collection]:
        row = await info.context.services.collections.find(name, principal=info.context.principal)
        return collection_to_gql(row) if row else None

    @strawberry.field
    async def document(self, info: Info, collection: str, id: strawberry.ID) -> Optional[t.Document]:
        row = await info.context.services.documents.get(collection, str(id), principal=info.context.principal)
        return document_to_gql(row) if row else None

    @strawberry.field(description="Page through a collection's documents in id order.")
    async def documents(
        self, info: Info, collection: str, after: Optional[str] = None, first: int = 100
    ) -> t.DocumentConnection:
        rows, next_cursor = await info.context.services.documents.page(
            collection, after, first, principal=info.context.principal, budget=info.context.scan_budget
        )
        return t.DocumentConnection(items=[document_to_gql(row) for row in rows], next_cursor=next_cursor)

    @strawberry.field
    def models(self, info: Info) -> list[t.Model]:
        catalog = info.context.services.catalog
        return [
            model_to_gql(s, catalog.effective_default, catalog.replicas_of(s.name, info.context.principal))
            for s in catalog.statuses(info.context.principal)
        ]

    @strawberry.field
    def model(self, info: Info, name: str) -> Optional[t.Model]:
        catalog = info.context.services.catalog
        status = catalog.status(name, info.context.principal)
        return model_to_gql(status, catalog.effective_default, catalog.replicas_of(status.name, info.context.principal)) if status else None

    @strawberry.field(description="Every API key (ADMIN); secrets are never shown.")
    async def api_keys(self, info: Info) -> list[t.ApiKey]:
        return [api_key_to_gql(row) for row in await info.context.services.keys.list(info.context.principal)]

    @strawberry.field(description="The key of this request; null without one (or for the environment's admin key).")
    async def me(self, info: Info) -> Optional[t.ApiKey]:
        row = await info.context.services.keys.me(info.context.principal)
        return api_key_to_gql(row) if row else None

    @strawberry.field
    async def health(self, info: Info) -> t.Health:
        catalog = info.context.services.catalog
        report = await catalog.health(info.context.principal)
        return t.Health(
            status=report.status,
            version=__version__,
            dependencies=[
                t.DependencyHealth(name=d.name, ok=d.ok, latency_ms=d.latency_ms, detail=d.detail)
                for d in report.dependencies
            ],
            models=[
                model_to_gql(s, catalog.effective_default, catalog.replicas_of(s.name, info.context.principal))
                for s in catalog.statuses(info.context.principal)
            ],
        )
