"""Search over a collection: SEMANTIC (the query embedded with the collection's model), KEYWORD
(BM25 over the document text) or HYBRID (both, fused in the store), under a metadata filter.
Only hits whose document row still exists and is indexed are returned (PostgreSQL decides).

Chunked collections hold a point per chunk: the store ranks chunks, and each document is
returned once, with its best chunk, so limit/offset count documents.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Histogram

from app.domain.access import INTERNAL, Principal, Scope
from app.adapters.bm25 import bm25
from app.domain.embedding import EmbedKind
from app.domain.filters import FilterNode, check_field, parse_filter
from app.domain.scans import ScanBudget
from app.domain.vectors import (
    CHUNK_KEY,
    DOC_ID_KEY,
    FacetValue,
    Fusion,
    SearchMode,
    SparseVector,
    StoreQuery,
    VectorHit,
    payload_key,
)
from app.errors import BadInput, ModelUnavailable
from app.services.collections import bound_model
from app.settings import Settings

SEARCH_SECONDS = Histogram(
    "citadel_search_duration_seconds",
    "Search calls, from validation to hits",
    ["kind"],  # query | vector | keyword | hybrid
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

MIN_PREFETCH = 100  # candidates per side before a HYBRID fusion
CHUNK_FETCH_FACTOR = 4  # chunk points fetched per wanted document, grown until enough documents
MAX_CHUNK_FETCH = 10_000
KEYWORD_WEIGHT_POWER = 6  # see SearchService._keyword_trust
KEYWORD_SCORE_SHARE = 0.75


@dataclass(frozen=True)
class ChunkHit:
    index: int
    start: int
    end: int
    text: str  # == document text[start:end]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    row: Any = None  # the document row, so resolvers need not read it again
    mode: SearchMode = SearchMode.SEMANTIC  # what scored it
    chunk: ChunkHit | None = None  # the best chunk, in chunked collections


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
        mode: SearchMode | str = SearchMode.SEMANTIC,
        fusion: Fusion | str = Fusion.RRF,
        *,
        principal: Principal = INTERNAL,
    ) -> SearchOutcome:
        started = time.perf_counter()
        principal.require(Scope.READ, collection)
        row = await self.repo.require_collection(collection)
        self._check_paging(limit, offset, score_threshold)
        mode, fusion = _choice(SearchMode, mode, "mode"), _choice(Fusion, fusion, "fusion")
        if (query is None) == (vector is None):
            raise BadInput("give exactly one of query or vector")
        if mode is not SearchMode.SEMANTIC:
            if vector is not None:
                raise BadInput(f"{mode.value} search needs a text query, not a vector", field="vector")
            self._check_keyword_index(row)
        # A tenant-bound key's filter is ANDed in: the request can narrow it, never widen it.
        parsed_filter = self.store_filter(filter, principal)

        if vector is not None:
            dense = self._check_vector(vector, row.dimensions)
            sparse = None
        else:
            self._check_query(query)
            dense = await self._embed_query(row, query) if mode is not SearchMode.KEYWORD else None
            sparse = bm25().query(query) if mode is not SearchMode.SEMANTIC else None
            if sparse is not None and not sparse.indices:  # only stop words: nothing to match by keyword
                if mode is SearchMode.KEYWORD:
                    return self._outcome(row, [], started, mode)
                mode, sparse = SearchMode.SEMANTIC, None
        store_query = StoreQuery(
            mode=mode, dense=dense, sparse=sparse, fusion=fusion, prefetch=max(MIN_PREFETCH, 2 * (offset + limit))
        )
        if mode is SearchMode.HYBRID and fusion is Fusion.RRF:
            weight, min_score = await self._keyword_trust(row, sparse, parsed_filter)
            store_query = dataclasses.replace(store_query, keyword_weight=weight, keyword_min_score=min_score)
        found = await self._ranked(row, store_query, limit, offset, parsed_filter, score_threshold)
        hits = await self._live_hits(row.name, found, mode, principal)
        label = "vector" if vector is not None else {"SEMANTIC": "query"}.get(mode.value, mode.value.lower())
        return self._outcome(row, hits, started, mode, label)

    def store_filter(self, raw: Any | None, principal: Principal) -> FilterNode | None:
        """The filter the store applies, in one place: the request's, ANDed with the key's tenant filter."""
        return principal.read_filter(parse_filter(raw) if raw is not None else None)

    async def facets(
        self,
        collection: str,
        field: str,
        filter: Any | None = None,
        limit: int = 10,
        *,
        principal: Principal = INTERNAL,
        budget: ScanBudget | None = None,
    ) -> list[FacetValue]:
        """Documents per value of a metadata field under the filter, most frequent first.

        A field in the collection's indexedFields is counted by Qdrant's facet index; any other
        is counted from a scan of the points under the filter, charged to `budget` (the
        request's; without one, CITADEL_LIMITS__MAX_SCAN_POINTS for this call) before it starts.
        """
        principal.require(Scope.READ, collection)
        row = await self.repo.require_collection(collection)
        check_field(field, "field")
        max_limit = self.settings.limits.max_search_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
            raise BadInput(f"limit must be between 1 and {max_limit}, got {limit!r}", field="limit")
        budget = budget or ScanBudget(self.settings.limits.max_scan_points)

        def before_scan(points: int) -> None:
            budget.charge(
                points,
                f"facets of {field!r} in collection {row.name!r} (a field outside its indexedFields)",
                f"Create the collection with {field!r} in indexedFields (Qdrant's facet index counts those "
                "without a scan), or narrow the filter.",
            )

        return await self.store.facet(
            row.name, payload_key(field), self.store_filter(filter, principal), limit, before_scan=before_scan
        )

    # -- internals ------------------------------------------------------------------------------

    def _outcome(self, row: Any, hits: list[Hit], started: float, mode: SearchMode, label: str = "") -> SearchOutcome:
        elapsed = time.perf_counter() - started
        SEARCH_SECONDS.labels(label or mode.value.lower()).observe(elapsed)
        return SearchOutcome(collection=row.name, model=row.model, hits=hits, took_ms=round(elapsed * 1000, 3))

    async def _ranked(
        self,
        row: Any,
        query: StoreQuery,
        limit: int,
        offset: int,
        filter: FilterNode | None,
        score_threshold: float | None,
    ) -> list[VectorHit]:
        """Store hits, one per document: chunk points are grouped to each document's best."""
        if not row.chunk_max_tokens:
            return await self.store.search(
                row.name, None, limit=limit, offset=offset, filter=filter, score_threshold=score_threshold, query=query
            )
        wanted = offset + limit
        fetch = min(MAX_CHUNK_FETCH, wanted * CHUNK_FETCH_FACTOR)
        while True:
            wide = dataclasses.replace(query, prefetch=max(query.prefetch, fetch))
            found = await self.store.search(
                row.name, None, limit=fetch, filter=filter, score_threshold=score_threshold, query=wide
            )
            best: dict[str, VectorHit] = {}
            for hit in found:  # best first: the first chunk seen of a document is its best
                best.setdefault(str(hit.payload.get(DOC_ID_KEY)), hit)
            if len(best) >= wanted or len(found) < fetch or fetch >= MAX_CHUNK_FETCH:
                return list(best.values())[offset:wanted]
            fetch = min(MAX_CHUNK_FETCH, fetch * CHUNK_FETCH_FACTOR)

    async def _keyword_trust(
        self, row: Any, sparse: SparseVector | None, filter: FilterNode | None
    ) -> tuple[float, float | None]:
        """How far HYBRID's RRF trusts the keyword ranking for this query: (weight, least score).

        Rank fusion alone cannot tell a part code found whole from a question whose words merely
        brush a text: it never sees how good a match was. So the best keyword match is looked at
        first. Its coverage (the share of the query's terms it contains) sets the weight; Qdrant's
        weighted RRF stretches ranks (rank r counts as r / weight), hence the power: a query found
        whole weighs as much as meaning (1.0), two of five terms almost nothing (0.004). And only
        keyword candidates scoring at least KEYWORD_SCORE_SHARE of the best are fused, so a
        text sharing the first name but not the surname of "Alice Okonkwo" does not compete.
        """
        if sparse is None or not sparse.indices:
            return 0.0, None
        top = await self.store.search(
            row.name, None, limit=1, filter=filter, query=StoreQuery(SearchMode.KEYWORD, sparse=sparse)
        )
        if not top:
            return 0.0, None
        doc = (await self.repo.get_documents(row.name, [str(top[0].payload.get(DOC_ID_KEY))]))[0]
        if doc is None:
            return 0.0, None
        chunk = _chunk(top[0].payload.get(CHUNK_KEY), doc.text)
        terms = set(bm25().query(chunk.text if chunk else doc.text).indices)
        coverage = len(terms.intersection(sparse.indices)) / len(set(sparse.indices))
        return coverage**KEYWORD_WEIGHT_POWER, top[0].score * KEYWORD_SCORE_SHARE

    def _check_keyword_index(self, row: Any) -> None:
        if row.keyword_index == "ready":
            return
        if row.keyword_index == "building":
            raise BadInput(
                f"the keyword index of collection {row.name!r} is still being built; "
                "its progress is Collection.keywordIndexProgress",
                field="mode",
            )
        raise BadInput(f"collection {row.name!r} has no keyword index (created with keywordIndex: false)", field="mode")

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

    def _check_query(self, query: Any) -> None:
        if not isinstance(query, str) or not query.strip():
            raise BadInput("query is blank", field="query")
        max_chars = self.settings.limits.max_text_chars
        if len(query) > max_chars:
            raise BadInput(f"query has {len(query)} characters; at most {max_chars}", field="query")

    async def _embed_query(self, row: Any, query: str) -> list[float]:
        await bound_model(self.models, row)
        outcome = await self.embedder.embed([query], model=row.model, kind=EmbedKind.QUERY, normalize=True)
        if outcome.model != row.model:
            raise ModelUnavailable(f"model {row.model!r} of collection {row.name!r} is not available", model=row.model)
        return [float(v) for v in outcome.vectors[0]]

    async def _live_hits(
        self, collection: str, found: Sequence[VectorHit], mode: SearchMode, principal: Principal
    ) -> list[Hit]:
        if not found:
            return []
        doc_ids = [str(h.payload.get(DOC_ID_KEY)) for h in found]
        rows = await self.repo.get_documents(collection, doc_ids)  # one query for all hits
        hits = []
        for found_hit, doc_row in zip(found, rows):
            # A vector whose row is gone, or is being rewritten or deleted, is never returned.
            if doc_row is None or doc_row.status != "indexed":
                continue
            # PostgreSQL is the truth: a vector whose payload lagged a metadata change stays hidden.
            if not principal.owns(doc_row.metadata):
                continue
            chunk = _chunk(found_hit.payload.get(CHUNK_KEY), doc_row.text)
            if found_hit.payload.get(CHUNK_KEY) is not None and chunk is None:
                continue  # offsets of another text: a stale point, never shown
            hits.append(
                Hit(
                    id=doc_row.id,
                    score=float(found_hit.score),
                    text=doc_row.text,
                    metadata=doc_row.metadata,
                    row=doc_row,
                    mode=mode,
                    chunk=chunk,
                )
            )
        return hits


def _chunk(raw: Any, text: str) -> ChunkHit | None:
    if not isinstance(raw, dict):
        return None
    start, end, index = raw.get("start"), raw.get("end"), raw.get("index")
    if not all(isinstance(v, int) for v in (start, end, index)) or not 0 <= start < end <= len(text):
        return None
    return ChunkHit(index=index, start=start, end=end, text=text[start:end])


def _choice(enum_type: Any, value: Any, field: str) -> Any:
    try:
        return enum_type(getattr(value, "value", value))
    except ValueError:
        choices = ", ".join(m.value for m in enum_type)
        raise BadInput(f"unknown {field} {value!r}; one of: {choices}", field=field) from None
