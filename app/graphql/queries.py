"""Query resolvers: thin, they validate shapes and call services."""

from __future__ import annotations

from typing import Annotated, Optional

import strawberry

from app import __version__
from app.domain.embedding import EmbedKind as DomainKind
from app.graphql import types as t
from app.graphql.context import Context
from app.graphql.convert import collection_to_gql, document_to_gql, model_to_gql
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
            texts, model=model, kind=DomainKind(kind.value), normalize=normalize is not False, wait=wait
        )
        return t.EmbedResult(
            model=outcome.model,
            dimensions=outcome.dimensions,
            embeddings=[
                t.Embedding(index=i, values=vector, cached=cached)
                for i, (vector, cached) in enumerate(zip(outcome.vectors, outcome.cached))
            ],
        )

    @strawberry.field(description="Semantic search: exactly one of `query` or `vector`.")
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
    ) -> t.SearchResult:
        outcome = await info.context.services.search.search(
            collection,
            query=query,
            vector=vector,
            limit=10 if limit is None else limit,
            offset=offset or 0,
            filter=filter,
            score_threshold=score_threshold,
        )
        hits = []
        for hit in outcome.hits:
            # Prime the loader: the rows were already read to drop deleted documents.
            if getattr(hit, "row", None) is not None:
                info.context.document_loader.prime((collection, hit.id), document_to_gql(hit.row))
            hits.append(
                t.SearchHit(
                    id=strawberry.ID(hit.id),
                    score=hit.score,
                    text=hit.text,
                    metadata=hit.metadata,
                    collection_name=collection,
                )
            )
        return t.SearchResult(
            collection=outcome.collection, model=outcome.model, hits=hits, took_ms=outcome.took_ms
        )

    @strawberry.field
    async def collections(self, info: Info) -> list[t.Collection]:
        rows = await info.context.services.collections.list()
        return [collection_to_gql(row) for row in rows]

    @strawberry.field
    async def collection(self, info: Info, name: str) -> Optional[t.Collection]:
        row = await info.context.services.repo.get_collection(name)
        return collection_to_gql(row) if row else None

    @strawberry.field
    async def document(self, info: Info, collection: str, id: strawberry.ID) -> Optional[t.Document]:
        row = await info.context.services.repo.get_document(collection, str(id))
        return document_to_gql(row) if row else None

    @strawberry.field(description="Page through a collection's documents in id order.")
    async def documents(
        self, info: Info, collection: str, after: Optional[str] = None, first: int = 100
    ) -> t.DocumentConnection:
        services = info.context.services
        await services.collections.get(collection)  # NOT_FOUND for an unknown collection
        first = max(1, min(first, services.settings.limits.max_search_limit))
        rows = await services.repo.list_documents(collection, after, first + 1)
        items = [document_to_gql(row) for row in rows[:first]]
        next_cursor = str(items[-1].id) if len(rows) > first else None
        return t.DocumentConnection(items=items, next_cursor=next_cursor)

    @strawberry.field
    def models(self, info: Info) -> list[t.Model]:
        manager = info.context.services.models
        return [model_to_gql(s, manager.effective_default) for s in manager.statuses()]

    @strawberry.field
    def model(self, info: Info, name: str) -> Optional[t.Model]:
        manager = info.context.services.models
        status = manager.status(name)
        return model_to_gql(status, manager.effective_default) if status else None

    @strawberry.field
    async def health(self, info: Info) -> t.Health:
        services = info.context.services
        report = await services.health.check()
        manager = services.models
        return t.Health(
            status=report.status,
            version=__version__,
            dependencies=[
                t.DependencyHealth(name=d.name, ok=d.ok, latency_ms=d.latency_ms, detail=d.detail)
                for d in report.dependencies
            ],
            models=[model_to_gql(s, manager.effective_default) for s in manager.statuses()],
        )
