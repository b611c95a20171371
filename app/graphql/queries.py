"""Query resolvers: thin, each builds its operation's typed request (app/requests.py) and runs it."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import strawberry

from app import __version__
from app.graphql import jobs as job_fields
from app.graphql import types as t
from app.graphql.context import Context
from app.graphql.convert import aggregate_to_gql, sort_keys
from app.graphql.convert import api_key_to_gql, collection_to_gql, document_to_gql, hit_to_gql, model_to_gql
from app.graphql.describe import FILTER_DESCRIPTION
from app.graphql.rerank import RerankInput, rerank, search_rerank
from app.graphql.scalars import JSON
from app.requests import CollectionsSearchRequest, EmbedRequest, GroupBy, Recommend, SearchRequest

Info = strawberry.Info[Context, None]


@strawberry.type(description="Reads: embeddings, search, documents, collections, models, keys and health")
class Query:
    @strawberry.field(description="Embed texts; one Embedding per input, in input order.")
    async def embed(
        self,
        info: Info,
        texts: Annotated[
            list[str],
            strawberry.argument(
                description="Texts to embed: at most CITADEL_LIMITS__MAX_TEXTS_PER_REQUEST (256) texts of at most "
                "CITADEL_LIMITS__MAX_TEXT_CHARS (20,000) characters; longer than the model's window: truncated"
            ),
        ],
        model: Annotated[
            Optional[str], strawberry.argument(description="A catalog model's name; null: the default model (or its fallback)")
        ] = None,
        kind: Annotated[
            Optional[t.EmbedKind], strawberry.argument(description="QUERY for search queries, DOCUMENT for passages")
        ] = t.EmbedKind.DOCUMENT,
        normalize: Annotated[
            Optional[bool], strawberry.argument(description="Scale each vector to length 1 (cosine = dot product)")
        ] = True,
        wait: Annotated[
            bool,
            strawberry.argument(description="Wait for a model that is still downloading instead of MODEL_UNAVAILABLE"),
        ] = False,
    ) -> t.EmbedResult:
        kind = kind or t.EmbedKind.DOCUMENT  # an explicit null means the default, as schema.graphql documents
        services, limits = info.context.services, info.context.services.settings.limits
        request = EmbedRequest.parse(texts, limits, model=model, kind=kind, normalize=normalize is not False, wait=wait)
        outcome = await services.embedder.run(request, principal=info.context.principal)
        return t.EmbedResult(
            model=outcome.model,
            dimensions=outcome.dimensions,
            embeddings=[
                t.Embedding(index=i, values=vector, cached=cached)
                for i, (vector, cached) in enumerate(zip(outcome.vectors, outcome.cached))
            ],
        )

    rerank = strawberry.field(
        resolver=rerank,
        description="Order documents by a cross-encoder's relevance to the query, most relevant first (scores as "
        "sentence-transformers CrossEncoder.predict).",
    )

    @strawberry.field(description="Search: exactly one of `query` or `vector` (SEMANTIC only); KEYWORD and HYBRID need `query`.")
    async def search(
        self,
        info: Info,
        collection: Annotated[str, strawberry.argument(description="The collection to search")],
        query: Annotated[
            Optional[str], strawberry.argument(description="Text to search for (embedded by the collection's model as a QUERY)")
        ] = None,
        vector: Annotated[
            Optional[list[float]],
            strawberry.argument(description="A query vector of the collection's dimensions, instead of `query` (SEMANTIC only)"),
        ] = None,
        limit: Annotated[
            Optional[int], strawberry.argument(description="Most hits (documents) returned, 1 to CITADEL_LIMITS__MAX_SEARCH_LIMIT (1000)")
        ] = 10,
        offset: Annotated[Optional[int], strawberry.argument(description="Hits (documents) to skip, for paging")] = 0,
        filter: Annotated[Optional[JSON], strawberry.argument(description=FILTER_DESCRIPTION)] = None,
        score_threshold: Annotated[
            Optional[float],
            strawberry.argument(description="Drop hits scored worse than this, in the mode's own score (cosine/dot, BM25 or fused)"),
        ] = None,
        mode: Annotated[Optional[t.SearchMode], strawberry.argument(description="How to rank")] = t.SearchMode.SEMANTIC,
        fusion: Annotated[Optional[t.Fusion], strawberry.argument(description="How HYBRID fuses its rankings")] = t.Fusion.RRF,
        similar_to: Annotated[
            Optional[strawberry.ID],
            strawberry.argument(
                description="A stored document's id instead of `query`: its own vector (chunked: the normalized mean "
                "of its chunks' vectors) is the query, and it is left out of the hits (SEMANTIC only)"
            ),
        ] = None,
        recommend: Annotated[
            Optional[t.RecommendInput],
            strawberry.argument(
                description="Positive and negative stored documents instead of `query`: query = 2*mean(positive) - "
                "mean(negative) (Qdrant's average_vector); they are left out of the hits (SEMANTIC only)"
            ),
        ] = None,
        group_by: Annotated[
            Optional[t.GroupByInput],
            strawberry.argument(description="Group hits by a metadata field's value; the groups are in `groups` (offset must be 0)"),
        ] = None,
        diversity: Annotated[
            Optional[float],
            strawberry.argument(
                description="0 to 1: rerank by maximal marginal relevance, trading relevance for hits unlike the "
                "ones above them (0: relevance only; the best hit stays first)"
            ),
        ] = None,
        autocut: Annotated[
            Optional[int],
            strawberry.argument(description="Cut the hits before the N-th jump in score (Weaviate's autocut), N >= 1"),
        ] = None,
        rerank: Annotated[
            Optional[RerankInput],
            strawberry.argument(
                description="Reorder the top `candidates` hits (by this mode and filter) with a cross-encoder and "
                "return `limit` of them best first, each with its `rerankScore` (needs `query`)"
            ),
        ] = None,
    ) -> t.SearchResult:
        services = info.context.services
        request = SearchRequest.parse(
            collection,
            services.settings.limits,
            query=query,
            vector=vector,
            limit=10 if limit is None else limit,
            offset=offset or 0,
            filter=filter,
            score_threshold=score_threshold,
            mode=mode or t.SearchMode.SEMANTIC,
            fusion=fusion or t.Fusion.RRF,
            similar_to=None if similar_to is None else str(similar_to),
            recommend=_recommend(recommend),
            group_by=_group_by(group_by),
            diversity=diversity,
            autocut=autocut,
            rerank=None if rerank is None else search_rerank(rerank),
        )
        outcome = await services.search.run(request, principal=info.context.principal, budget=info.context.scan_budget)
        hits = [_search_hit(info, hit, collection) for hit in outcome.hits]
        for hit, rerank_score in zip(hits, outcome.rerank_scores or ()):
            hit.rerank_score = rerank_score
        groups = None
        if outcome.groups is not None:
            groups = [t.SearchGroup(value=g.value, hits=[_search_hit(info, h, collection) for h in g.hits]) for g in outcome.groups]
        return t.SearchResult(
            collection=outcome.collection, model=outcome.model, hits=hits, took_ms=outcome.took_ms, groups=groups
        )

    @strawberry.field(
        description="Search several collections, each with its own model, in one ranking fused by rank (RRF, k=60); each hit names its collection."
    )
    async def search_collections(
        self,
        info: Info,
        query: Annotated[str, strawberry.argument(description="Text to search for, embedded by each collection's model")],
        collections: Annotated[
            Optional[list[str]],
            strawberry.argument(description="The collections to search (at most 32); null: every collection the key may read"),
        ] = None,
        limit: Annotated[Optional[int], strawberry.argument(description="Most hits returned in all")] = 10,
        filter: Annotated[Optional[JSON], strawberry.argument(description=FILTER_DESCRIPTION)] = None,
        mode: Annotated[Optional[t.SearchMode], strawberry.argument(description="How each collection ranks")] = t.SearchMode.SEMANTIC,
    ) -> t.CollectionsSearchResult:
        services = info.context.services
        request = CollectionsSearchRequest.parse(
            query,
            services.settings.limits,
            collections=collections,
            limit=10 if limit is None else limit,
            filter=filter,
            mode=mode or t.SearchMode.SEMANTIC,
        )
        outcome = await services.search.run_collections(request, principal=info.context.principal, budget=info.context.scan_budget)
        return t.CollectionsSearchResult(hits=[_search_hit(info, hit) for hit in outcome.hits], took_ms=outcome.took_ms)

    @strawberry.field(description="Documents per value of a metadata field under the filter, most frequent first.")
    async def facets(
        self,
        info: Info,
        collection: Annotated[str, strawberry.argument(description="The collection to count in")],
        field: Annotated[str, strawberry.argument(description="A metadata field; a dotted path reaches nested keys")],
        filter: Annotated[Optional[JSON], strawberry.argument(description=FILTER_DESCRIPTION)] = None,
        limit: Annotated[Optional[int], strawberry.argument(description="Most values returned")] = 10,
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

    @strawberry.field(description="Every collection the key may use.")
    async def collections(self, info: Info) -> list[t.Collection]:
        rows = await info.context.services.collections.list(principal=info.context.principal)
        return [collection_to_gql(row) for row in rows]

    @strawberry.field(description="One collection; null when there is none of that name.")
    async def collection(
        self, info: Info, name: Annotated[str, strawberry.argument(description="The collection's name")]
    ) -> Optional[t.Collection]:
        row = await info.context.services.collections.find(name, principal=info.context.principal)
        return collection_to_gql(row) if row else None

    @strawberry.field(description="One stored document; null when there is none with that id (or the key may not see it).")
    async def document(
        self,
        info: Info,
        collection: Annotated[str, strawberry.argument(description="The collection's name")],
        id: Annotated[strawberry.ID, strawberry.argument(description="The document's id")],
    ) -> Optional[t.Document]:
        row = await info.context.services.documents.get(collection, str(id), principal=info.context.principal)
        return document_to_gql(row) if row else None

    @strawberry.field(description="Page through a collection's documents in id order.")
    async def documents(
        self,
        info: Info,
        collection: Annotated[str, strawberry.argument(description="The collection's name")],
        after: Annotated[
            Optional[str], strawberry.argument(description="The nextCursor of the page before; null: from the start")
        ] = None,
        first: Annotated[int, strawberry.argument(description="Page size, 1 to CITADEL_LIMITS__MAX_SEARCH_LIMIT (1000)")] = 100,
        filter: Annotated[
            Optional[JSON], strawberry.argument(description="Only documents matching it. " + FILTER_DESCRIPTION)
        ] = None,
        sort: Annotated[
            Optional[list[t.SortInput]],
            strawberry.argument(
                description="Sort keys, the first deciding first; ties are broken by id. Without sort: id order. "
                "A sorted page reads every row of the collection (charged to CITADEL_LIMITS__MAX_SCAN_POINTS)"
            ),
        ] = None,
    ) -> t.DocumentConnection:
        rows, next_cursor = await info.context.services.documents.page(
            collection,
            after,
            first,
            principal=info.context.principal,
            budget=info.context.scan_budget,
            filter=filter,
            sort=sort_keys(sort),
        )
        return t.DocumentConnection(items=[document_to_gql(row) for row in rows], next_cursor=next_cursor)

    @strawberry.field(
        description="Exact counts and statistics of a collection's documents under a filter (Weaviate's Aggregate), "
        "from PostgreSQL's rows. Anything beyond a plain count reads every row of the collection, charged to "
        "CITADEL_LIMITS__MAX_SCAN_POINTS (BAD_INPUT before the work when over)."
    )
    async def aggregate(
        self,
        info: Info,
        collection: Annotated[str, strawberry.argument(description="The collection's name")],
        filter: Annotated[
            Optional[JSON], strawberry.argument(description="Only documents matching it. " + FILTER_DESCRIPTION)
        ] = None,
        fields: Annotated[
            Optional[list[str]],
            strawberry.argument(description="Metadata fields to summarise (`a.b` for nested keys), at most 32"),
        ] = (),
        group_by: Annotated[
            Optional[str],
            strawberry.argument(description="A metadata field: the same count and statistics per value of it"),
        ] = None,
        max_groups: Annotated[
            int, strawberry.argument(description="With groupBy: the most groups listed, largest first (1 to 1000)")
        ] = 100,
    ) -> t.AggregateResult:
        outcome = await info.context.services.documents.aggregate(
            collection,
            filter=filter,
            fields=fields or [],
            group_by=group_by,
            max_groups=max_groups,
            principal=info.context.principal,
            budget=info.context.scan_budget,
        )
        return aggregate_to_gql(outcome)

    @strawberry.field(description="Every catalog model and its state on the replica that answers.")
    def models(self, info: Info) -> list[t.Model]:
        catalog = info.context.services.catalog
        return [
            model_to_gql(s, catalog.effective_default, catalog.replicas_of(s.name, info.context.principal))
            for s in catalog.statuses(info.context.principal)
        ]

    @strawberry.field(description="One catalog model; null when the catalog has none of that name.")
    def model(
        self, info: Info, name: Annotated[str, strawberry.argument(description="The model's catalog name")]
    ) -> Optional[t.Model]:
        catalog = info.context.services.catalog
        status = catalog.status(name, info.context.principal)
        return model_to_gql(status, catalog.effective_default, catalog.replicas_of(status.name, info.context.principal)) if status else None

    job = strawberry.field(
        resolver=job_fields.job,
        description="One job; null when there is none with that id (or the key may not read it: jobs of its collections, "
        "a tenant-bound key's own; ADMIN reads all).",
    )
    jobs = strawberry.field(
        resolver=job_fields.jobs, description="Jobs the key may read, newest first."
    )

    @strawberry.field(description="Every API key (ADMIN); secrets are never shown.")
    async def api_keys(self, info: Info) -> list[t.ApiKey]:
        return [api_key_to_gql(row) for row in await info.context.services.keys.list(info.context.principal)]

    @strawberry.field(description="The key of this request; null without one (or for the environment's admin key).")
    async def me(self, info: Info) -> Optional[t.ApiKey]:
        row = await info.context.services.keys.me(info.context.principal)
        return api_key_to_gql(row) if row else None

    @strawberry.field(description="Dependencies and models of the replica that answers.")
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


def _recommend(given: Optional[t.RecommendInput]) -> Optional[Recommend]:
    if given is None:
        return None
    return Recommend(tuple(str(i) for i in given.positive), tuple(str(i) for i in given.negative or ()))


def _group_by(given: Optional[t.GroupByInput]) -> Optional[GroupBy]:
    if given is None:
        return None
    groups = 10 if given.groups is None else given.groups  # an explicit null means the default
    return GroupBy(given.field, groups, 1 if given.hits_per_group is None else given.hits_per_group)


def _search_hit(info: Info, hit: Any, collection: str = "") -> t.SearchHit:
    collection = getattr(hit, "collection", "") or collection
    # Prime the loader: the rows were already read to drop deleted documents.
    if getattr(hit, "row", None) is not None:
        info.context.document_loader.prime((collection, hit.id), hit.row)
    return hit_to_gql(hit, collection)
