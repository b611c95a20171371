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
from app.settings import Settings
from app.validation import string_problem

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


@dataclass(frozen=True)
class RerankRequest:
    """search(rerank:): the top `candidates` by the search's own ranking, reordered by a reranker."""

    model: str | None = None  # None: CITADEL_DEFAULT_RERANKER
    candidates: int = 50


@dataclass(frozen=True)
class RerankedSearch:
    outcome: Any  # app.services.search.SearchOutcome, its hits reordered by the reranker, best first
    scores: list[float]  # each hit's reranker score (rerankScore), in the order of outcome.hits


class RerankService:
    def __init__(self, settings: Settings, pool: Any, models: Any, embedder: Any) -> None:
        self.settings = settings
        self.pool = pool  # app.inference.pool.ModelPool
        self.models = models  # ReadyModels: the ModelManager, or LocalModels in tests
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
            cache = getattr(self.models, "cache", None)  # the ModelManager's; LocalModels loads in place
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
        principal.require(Scope.READ)
        started = time.perf_counter()
        label = model or self.settings.default_reranker
        label = label if label in self.settings.models else "unknown"
        outcome = "ok"
        try:
            self._validate(query, documents, top_n)
            spec = await self.ready(model, principal, wait=wait)
            scores = await self.score(spec.name, query, documents, principal=principal, raw_scores=raw_scores)
            order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
            if top_n is not None:
                order = order[:top_n]
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
        self,
        searcher: Any,
        collection: str,
        query: str | None,
        rerank: RerankRequest,
        *,
        limit: int = 10,
        offset: int = 0,
        principal: Principal = INTERNAL,
        **options: Any,
    ) -> RerankedSearch:
        """search(rerank:): `searcher` (the SearchService) finds the top `candidates` documents by its
        own mode and filter (at least offset + limit of them), the reranker scores each against the
        query (a chunked collection's hit by its best chunk), and the page offset..offset+limit of
        that order is returned. Each hit's `score` stays its retrieval score."""
        started = time.perf_counter()
        most = self.settings.limits.max_rerank_documents
        wanted = rerank.candidates
        if options.get("vector") is not None or query is None:
            raise BadInput("rerank needs a text query: a cross-encoder reads the query's text", field="rerank")
        if isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= most:
            raise BadInput(f"rerank.candidates must be between 1 and {most}, got {wanted!r}", field="rerank.candidates")
        if isinstance(limit, int) and isinstance(offset, int) and offset + limit > most:
            raise BadInput(f"a reranked search reaches at most {most} hits (offset + limit)", field="limit")
        spec = await self.ready(rerank.model, principal)  # checked before the search does any work
        found = await searcher.search(
            collection, query=query, limit=max(wanted, offset + limit), offset=0, principal=principal, **options
        )
        hits = found.hits
        texts = [hit.chunk.text if hit.chunk is not None else hit.text for hit in hits]
        scores = await self.score(spec.name, query, texts, principal=principal)
        order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))[offset : offset + limit]
        took = round((time.perf_counter() - started) * 1000, 3)
        outcome = dataclasses.replace(found, hits=[hits[i] for i in order], took_ms=took)
        return RerankedSearch(outcome=outcome, scores=[scores[i] for i in order])

    def _validate(self, query: Any, documents: Any, top_n: Any) -> None:
        limits = self.settings.limits
        if not isinstance(query, str) or not query.strip():
            raise BadInput("query must be a non-blank string", argument="query", param="query")
        if (problem := string_problem(query)) is not None:
            raise BadInput(f"query {problem}", argument="query", param="query")
        if len(query) > limits.max_text_chars:
            raise BadInput(
                f"query has {len(query)} characters; at most {limits.max_text_chars} are allowed",
                argument="query", param="query", limit=limits.max_text_chars,
            )
        if isinstance(documents, str) or not isinstance(documents, Sequence):
            raise BadInput("documents must be a list of strings", argument="documents", param="documents")
        if not documents:
            raise BadInput("documents must not be empty", argument="documents", param="documents")
        if len(documents) > limits.max_rerank_documents:
            raise BadInput(
                f"{len(documents)} documents in one rerank; at most {limits.max_rerank_documents} are allowed "
                "(CITADEL_LIMITS__MAX_RERANK_DOCUMENTS)",
                argument="documents", param="documents", limit=limits.max_rerank_documents,
            )
        total = len(query)
        for index, document in enumerate(documents):
            if not isinstance(document, str):
                raise BadInput(f"document {index} is not a string", index=index, param="documents")
            if (problem := string_problem(document)) is not None:
                raise BadInput(f"document {index} {problem}", index=index, argument="documents", param="documents")
            if len(document) > limits.max_text_chars:
                raise BadInput(
                    f"document {index} has {len(document)} characters; at most {limits.max_text_chars} are allowed",
                    index=index, param="documents", limit=limits.max_text_chars,
                )
            total += len(document)
            if total > limits.max_request_chars:
                raise BadInput(
                    f"the request exceeds {limits.max_request_chars} characters in total at document {index}",
                    index=index, param="documents", limit=limits.max_request_chars,
                )
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise BadInput(f"topN must be a positive integer, got {top_n!r}", argument="topN", param="top_n")
