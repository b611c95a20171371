"""rerank(): a cross-encoder scores each (query, document) pair; documents come back best first.

Every transport calls this one service (GraphQL `rerank` and `search(rerank:)`, Cohere's
POST /v1/rerank, TEI's POST /rerank): the same validation, access (READ; who may start a
download, as for embed), fair share of the model, errors and metrics. Scores are what
sentence-transformers CrossEncoder.predict gives for the same pairs (sigmoid for one label), or
the logits with raw_scores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from app.domain.access import INTERNAL, Principal, Scope
from app.domain.models import ModelSpec
from app.errors import BadInput, CitadelError
from app.inference.callers import fair_key_of
from app.requests import RerankRequest, SearchRequest
from app.settings import Settings

RERANK_REQUESTS = Counter(
    "citadel_rerank_requests_total", "rerank() calls by outcome (ok or an error code)", ["model", "outcome"]
)
RERANK_DURATION = Histogram(
    "citadel_rerank_request_duration_seconds",
    "rerank() duration, from validation to ordered scores",
    ["model"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RERANK_PAIRS = Counter("citadel_rerank_pairs_total", "(query, document) pairs scored by rerankers", ["model"])


@dataclass(frozen=True)
class RerankHit:
    index: int  # into the request's documents
    score: float
    text: str


@dataclass(frozen=True)
class RerankOutcome:
    model: str
    hits: list[RerankHit]  # best first (ties: the earlier document first)
    took_ms: float


class RerankService:
    def __init__(self, settings: Settings, pool: Any, models: Any, embedder: Any) -> None:
        self.settings = settings
        self.pool = pool  # app.inference.pool.ModelPool
        self.models = models  # ReadyModels: the ModelManager (tests: tests/support/local_models.py)
        self.embedder = embedder  # who may start a download: EmbeddingService.may_download

    def reranker(self, model: str | None) -> ModelSpec:
        """The catalog entry of `model` (None: the default reranker); NOT_FOUND outside the catalog,
        BAD_INPUT for an embedding model."""
        spec = self.settings.model(model or self.settings.default_reranker)
        if not spec.is_reranker:
            raise BadInput(
                f"model {spec.name!r} is an embedding model, not a reranker (catalog task 'rerank'), "
                f"e.g. {self.settings.default_reranker!r}",
                argument="model",
                param="model",
            )
        return spec

    async def ready(self, model: str | None, principal: Principal = INTERNAL, wait: bool = False) -> ModelSpec:
        """The spec of the READY reranker `model` (None: the default one). One whose files are here
        (a `path` or `package`, or complete in the model cache) is loaded on first use while the
        request waits (seconds); one that must be downloaded answers MODEL_UNAVAILABLE with its
        progress (starting the download where the caller may, as for embed) unless `wait`."""
        spec = self.reranker(model)
        if not wait:
            cache = getattr(self.models, "cache", None)  # the ModelManager's; a test's LocalModels loads in place
            wait = spec.repo_id is None or (cache is not None and await asyncio.to_thread(cache.is_complete, spec))
        await self.models.ready_spec(spec.name, wait=wait, may_download=self.embedder.may_download(principal))
        return spec

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        model: str | None = None,
        top_n: int | None = None,
        raw_scores: bool = False,
        *,
        principal: Principal = INTERNAL,
        wait: bool = False,
    ) -> RerankOutcome:
        """run() of these arguments, checked (RerankRequest.parse): for callers inside the server."""
        request = RerankRequest.parse(
            query, documents, self.settings.limits, model=model, top_n=top_n, raw_scores=raw_scores, wait=wait
        )
        return await self.run(request, principal=principal)

    async def run(self, request: RerankRequest, *, principal: Principal = INTERNAL) -> RerankOutcome:
        """The rerank operation: every document scored against the query, best first."""
        principal.require(Scope.READ)
        started = time.perf_counter()
        label = request.model or self.settings.default_reranker
        label = label if label in self.settings.models else "unknown"
        outcome = "ok"
        documents = request.documents
        try:
            spec = await self.ready(request.model, principal, wait=request.wait)
            scores = await self.score(spec.name, request.query, documents, principal=principal, raw_scores=request.raw_scores)
            order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
            if request.top_n is not None:
                order = order[: request.top_n]
            hits = [RerankHit(index=i, score=scores[i], text=documents[i]) for i in order]
            took = round((time.perf_counter() - started) * 1000, 3)
            return RerankOutcome(model=spec.name, hits=hits, took_ms=took)
        except CitadelError as exc:
            outcome = exc.code
            raise
        except Exception:
            outcome = "INTERNAL"
            raise
        finally:
            RERANK_REQUESTS.labels(label, outcome).inc()
            RERANK_DURATION.labels(label).observe(time.perf_counter() - started)

    async def score(
        self,
        model: str,
        query: str,
        documents: Sequence[str],
        *,
        principal: Principal = INTERNAL,
        raw_scores: bool = False,
    ) -> list[float]:
        """One score per document, in input order, from the READY reranker `model` (search calls
        this after its own checks). The caller's share of the model is its key's or address's."""
        if not documents:
            return []
        pairs = [(query, document) for document in documents]
        rows = await self.pool.score(model, pairs, fair_key_of(principal), raw=raw_scores)
        RERANK_PAIRS.labels(model).inc(len(pairs))
        return [float(row[0]) for row in rows]

    async def search(
        self, searcher: Any, request: SearchRequest, *, principal: Principal = INTERNAL, budget: Any = None
    ) -> Any:
        """search(rerank:) (SearchService.run hands it here): `searcher` finds the top `candidates`
        documents by its own mode and filter (at least offset + limit of them), the reranker scores
        each against the query (a chunked collection's hit by its best chunk), and the page
        offset..offset+limit of that order is returned, with each hit's reranker score in
        `rerank_scores`. Each hit's `score` stays its retrieval score."""
        started = time.perf_counter()
        rerank, query, offset, limit = request.rerank, request.query, request.offset, request.limit
        assert rerank is not None and query is not None  # SearchRequest.parse: a reranked search has a text query
        spec = await self.ready(rerank.model, principal)  # checked before the search does any work
        candidates = dataclasses.replace(request, rerank=None, limit=max(rerank.candidates, offset + limit), offset=0)
        found = await searcher.run(candidates, principal=principal, budget=budget)
        hits = found.hits
        texts = [hit.chunk.text if hit.chunk is not None else hit.text for hit in hits]
        scores = await self.score(spec.name, query, texts, principal=principal)
        order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))[offset : offset + limit]
        took = round((time.perf_counter() - started) * 1000, 3)
        return dataclasses.replace(found, hits=[hits[i] for i in order], took_ms=took, rerank_scores=[scores[i] for i in order])
