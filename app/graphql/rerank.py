"""GraphQL `rerank` and the `rerank` argument of `search`: types and the resolver (thin: it calls
app/services/rerank.py, as /v1/rerank and /rerank do)."""

from __future__ import annotations

from typing import Annotated, Optional

import strawberry

from app.graphql.context import Context
from app.requests import DEFAULT_RERANK_CANDIDATES, RerankRequest, SearchRerank

Info = strawberry.Info[Context, None]


@strawberry.type(description="One document of a rerank, most relevant first")
class RerankHit:
    index: int = strawberry.field(description="The document's position in `documents` (0-based)")
    score: float = strawberry.field(
        description="The cross-encoder's relevance: CrossEncoder.predict's score (sigmoid of the logit for a one-label "
        "model, 0 to 1), or the raw logit with rawScores"
    )
    text: Optional[str] = strawberry.field(default=None, description="The document's text; only with returnText")


@strawberry.type(description="Documents ordered by a cross-encoder's relevance to the query")
class RerankResult:
    model: str = strawberry.field(description="The reranker that scored them")
    hits: list[RerankHit] = strawberry.field(description="Most relevant first (ties: the earlier document first); topN of them")
    took_ms: float = strawberry.field(description="Milliseconds from validation to ordered scores")


@strawberry.input(description="Rerank a search's top candidates with a cross-encoder")
class RerankInput:
    model: Optional[str] = strawberry.field(
        default=None, description="A catalog reranker (task: rerank); null: CITADEL_DEFAULT_RERANKER"
    )
    candidates: Optional[int] = strawberry.field(
        default=DEFAULT_RERANK_CANDIDATES,
        description="How many of the search's own top hits the reranker reorders (at least offset + limit are; at "
        "most CITADEL_LIMITS__MAX_RERANK_DOCUMENTS); more finds more, each costs one cross-encoder pair",
    )


def search_rerank(value: RerankInput) -> SearchRerank:
    return SearchRerank(model=value.model, candidates=DEFAULT_RERANK_CANDIDATES if value.candidates is None else value.candidates)


async def rerank(
    info: Info,
    query: Annotated[str, strawberry.argument(description="What the documents are ranked against")],
    documents: Annotated[
        list[str],
        strawberry.argument(
            description="Texts to score against the query, at most CITADEL_LIMITS__MAX_RERANK_DOCUMENTS (1000); a pair "
            "longer than the model's window is truncated, the longer side first"
        ),
    ],
    model: Annotated[
        Optional[str], strawberry.argument(description="A catalog reranker (task: rerank); null: CITADEL_DEFAULT_RERANKER")
    ] = None,
    top_n: Annotated[
        Optional[int], strawberry.argument(description="Return only the N most relevant; null: every document")
    ] = None,
    return_text: Annotated[Optional[bool], strawberry.argument(description="Put each document's text in its hit")] = False,
    raw_scores: Annotated[
        Optional[bool], strawberry.argument(description="Scores as the model's raw logits, without its activation (sigmoid)")
    ] = False,
) -> RerankResult:
    services = info.context.services
    request = RerankRequest.parse(query, documents, services.settings.limits, model=model, top_n=top_n, raw_scores=bool(raw_scores))
    outcome = await services.reranker.run(request, principal=info.context.principal)
    hits = [RerankHit(index=h.index, score=h.score, text=h.text if return_text else None) for h in outcome.hits]
    return RerankResult(model=outcome.model, hits=hits, took_ms=outcome.took_ms)
