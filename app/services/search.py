"""Semantic search over a collection: embed the query with the collection's model, ask the vector
store, and keep only hits whose document row still exists and is indexed (PostgreSQL decides).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Histogram

from app.domain.embedding import EmbedKind
from app.domain.filters import parse_filter
from app.domain.vectors import DOC_ID_KEY
from app.errors import BadInput, ModelUnavailable
from app.services.collections import bound_model
from app.settings import Settings

SEARCH_SECONDS = Histogram(
    "citadel_search_duration_seconds",
    "Search calls, from validation to hits",
    ["kind"],  # query | vector
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    row: Any = None  # the document row, so resolvers need not read it again


@dataclass(frozen=True)
class SearchOutcome:
    collection: str
    model: str
    hits: list[Hit]
    took_ms: float


class SearchService:
    def __init__(self, settings: Settings, repo: Any, store: Any, embedder: Any, models: Any) -> None:
        self.settings = settings
        self.repo = repo
        self.store = store
        self.embedder = embedder
        self.models = models

    async def search(
        self,
        collection: str,
        query: str | None = None,
        vector: Sequence[float] | None = None,
        limit: int = 10,
        offset: int = 0,
        filter: Any | None = None,
        score_threshold: float | None = None,
    ) -> SearchOutcome:
        started = time.perf_counter()
        row = await self.repo.require_collection(collection)
        self._check_paging(limit, offset, score_threshold)
        if (query is None) == (vector is None):
            raise BadInput("give exactly one of query or vector")
        parsed_filter = parse_filter(filter) if filter is not None else None

        if vector is not None:
            target = self._check_vector(vector, row.dimensions)
        else:
            target = await self._embed_query(row, query)

        found = await self.store.search(
            row.name, target, limit=limit, offset=offset, filter=parsed_filter, score_threshold=score_threshold
        )
        hits = await self._live_hits(row.name, found)
        elapsed = time.perf_counter() - started
        SEARCH_SECONDS.labels("vector" if vector is not None else "query").observe(elapsed)
        return SearchOutcome(collection=row.name, model=row.model, hits=hits, took_ms=round(elapsed * 1000, 3))

    def _check_paging(self, limit: int, offset: int, score_threshold: float | None) -> None:
        max_limit = self.settings.limits.max_search_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
            raise BadInput(f"limit must be between 1 and {max_limit}, got {limit!r}", field="limit")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BadInput(f"offset must be 0 or more, got {offset!r}", field="offset")
        if score_threshold is not None and not math.isfinite(score_threshold):
            raise BadInput("scoreThreshold must be a finite number", field="scoreThreshold")

    @staticmethod
    def _check_vector(vector: Sequence[float], dimensions: int) -> list[float]:
        values = list(vector)
        if len(values) != dimensions:
            raise BadInput(f"vector has {len(values)} dimensions; the collection has {dimensions}", field="vector")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise BadInput("vector must hold finite numbers only", field="vector")
        return [float(v) for v in values]

    async def _embed_query(self, row: Any, query: str | None) -> list[float]:
        if not isinstance(query, str) or not query.strip():
            raise BadInput("query is blank", field="query")
        max_chars = self.settings.limits.max_text_chars
        if len(query) > max_chars:
            raise BadInput(f"query has {len(query)} characters; at most {max_chars}", field="query")
        await bound_model(self.models, row)
        outcome = await self.embedder.embed([query], model=row.model, kind=EmbedKind.QUERY, normalize=True)
        if outcome.model != row.model:
            raise ModelUnavailable(f"model {row.model!r} of collection {row.name!r} is not available", model=row.model)
        return [float(v) for v in outcome.vectors[0]]

    async def _live_hits(self, collection: str, found: Sequence[Any]) -> list[Hit]:
        if not found:
            return []
        doc_ids = [str(h.payload.get(DOC_ID_KEY)) for h in found]
        rows = await self.repo.get_documents(collection, doc_ids)  # one query for all hits
        hits = []
        for found_hit, doc_row in zip(found, rows):
            # A vector whose row is gone, or is being rewritten or deleted, is never returned.
            if doc_row is None or doc_row.status != "indexed":
                continue
            hits.append(
                Hit(
                    id=doc_row.id,
                    score=float(found_hit.score),
                    text=doc_row.text,
                    metadata=doc_row.metadata,
                    row=doc_row,
                )
            )
        return hits
