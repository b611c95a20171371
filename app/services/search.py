"""Search over a collection: SEMANTIC (the query embedded with the collection's model), KEYWORD
(BM25 over the document text) or HYBRID (both, fused in the store), under a metadata filter.
Only hits whose document row still exists and is indexed are returned (PostgreSQL decides).

Chunked collections hold a point per chunk: the store ranks chunks, and each document is
returned once, with its best chunk, so limit/offset count documents.

Beside a text or a vector, a search can rank by stored documents (`similar_to`: one document's
own vector; `recommend`: Qdrant's average-vector strategy over positive and negative documents;
those documents are left out of the hits), group its hits by a metadata value (`group_by`),
rerank them by maximal marginal relevance (`diversity`) and cut them at a jump in score
(`autocut`); `search_collections` fuses several collections' rankings by RRF (k=60). The
arithmetic is in app/domain/ranking.py.
"""

from __future__ import annotations

import asyncio
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
from app.domain.ranking import average_vector, autocut as autocut_count, document_vector, group_hits, mmr_order, rrf
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
from app.errors import BadInput, ModelUnavailable, NotFound
from app.services.collections import bound_model, on_current_version
from app.settings import Settings
from app.requests import (
    CollectionsSearchRequest,
    GroupBy,
    Recommend,
    SearchRequest,
    SearchRerank,
    check_collection_count,
)
from app.validation import check_count, check_dimensions

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
MMR_CANDIDATE_FACTOR = 4  # diversity reranks this many times the wanted hits (at least MMR_MIN_CANDIDATES)
MMR_MIN_CANDIDATES = 40
MAX_CANDIDATES = 10_000  # most documents any rerank or grouping reads


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
    collection: str = ""  # the collection it was found in


@dataclass(frozen=True)
class HitGroup:
    value: Any
    hits: list[Hit]


@dataclass(frozen=True)
class SearchOutcome:
    collection: str
    model: str
    hits: list[Hit]
    took_ms: float
    groups: list[HitGroup] | None = None  # set when grouped
    rerank_scores: list[float] | None = None  # search(rerank:): each hit's reranker score, in hit order


@dataclass(frozen=True)
class CollectionsOutcome:
    hits: list[Hit]  # fused by RRF: each hit's score is its RRF score
    took_ms: float


class SearchService:
    def __init__(
        self, settings: Settings, repo: Any, store: Any, embedder: Any, models: Any, reranker: Any = None
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.store = store
        self.embedder = embedder
        self.models = models
        self.reranker = reranker  # RerankService, for search(rerank:)

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
        similar_to: str | None = None,
        recommend: Recommend | None = None,
        group_by: GroupBy | None = None,
        diversity: float | None = None,
        autocut: int | None = None,
        rerank: SearchRerank | None = None,
        principal: Principal = INTERNAL,
        budget: ScanBudget | None = None,
    ) -> SearchOutcome:
        """run() of these arguments, checked (SearchRequest.parse): for callers inside the server."""
        request = SearchRequest.parse(
            collection, self.settings.limits, query=query, vector=vector, limit=limit, offset=offset, filter=filter,
            score_threshold=score_threshold, mode=mode, fusion=fusion, similar_to=similar_to, recommend=recommend,
            group_by=group_by, diversity=diversity, autocut=autocut, rerank=rerank,
        )  # fmt: skip
        return await self.run(request, principal=principal, budget=budget)

    async def run(
        self, request: SearchRequest, *, principal: Principal = INTERNAL, budget: ScanBudget | None = None
    ) -> SearchOutcome:
        """The search operation. `budget`: the request's scan budget, charged with the candidates
        that groupBy, diversity, similarTo and recommend read beyond the page (without one:
        CITADEL_LIMITS__MAX_SCAN_POINTS for this call)."""
        principal.require(Scope.READ, request.collection)
        if request.rerank is not None:
            if self.reranker is None:
                raise ModelUnavailable("this server has no reranker service", field="rerank")
            return await self.reranker.search(self, request, principal=principal, budget=budget)
        return await on_current_version(
            self.repo, request.collection, lambda row: self._search_on(row, request, principal, budget)
        )

    async def _search_on(
        self, row: Any, request: SearchRequest, principal: Principal, budget: ScanBudget | None
    ) -> SearchOutcome:
        started = time.perf_counter()
        query, vector, limit, offset = request.query, request.vector, request.limit, request.offset
        mode, fusion, score_threshold = request.mode, request.fusion, request.score_threshold
        similar_to, recommend, group_by = request.similar_to, request.recommend, request.group_by
        diversity, autocut = request.diversity, request.autocut
        if mode is not SearchMode.SEMANTIC:
            self._check_keyword_index(row)
        # A tenant-bound key's filter is ANDed in: the request can narrow it, never widen it.
        parsed_filter = principal.read_filter(request.filter)

        excluded: set[str] = set()
        if similar_to is not None or recommend is not None:
            dense, excluded = await self._stored_query(row, request, principal)
            sparse = None
        elif vector is not None:
            check_dimensions(vector, int(row.dimensions), field="vector")
            dense = list(vector)
            sparse = None
        else:
            assert query is not None  # SearchRequest.parse: exactly one of query, vector, similarTo, recommend
            dense = await self._embed_query(row, query, principal) if mode is not SearchMode.KEYWORD else None
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
        groups: list[HitGroup] | None = None
        if group_by is None and not diversity and not excluded:
            found = await self._ranked(row, store_query, limit, offset, parsed_filter, score_threshold)
            hits = await self._live_hits(row.name, found, mode, principal)
        else:
            budget = budget or ScanBudget(self.settings.limits.max_scan_points)
            read: list[Hit] = []  # live hits of the ranking so far, the excluded documents left out
            state = {"upto": 0, "exhausted": False}  # ranking positions read; whether it ran out

            async def top(n: int) -> tuple[list[Hit], bool]:
                """The best `n` candidates, reading the ranking further (never again) as needed."""
                upto = n + len(excluded)
                if upto > state["upto"] and not state["exhausted"]:
                    budget.charge(
                        upto - state["upto"],
                        f"this search of collection {row.name!r} (groupBy, diversity, similarTo or recommend)",
                        "Ask for fewer groups, hits per group or hits, or narrow the filter.",
                        unit="candidates",
                    )
                    more, state["exhausted"] = await self._ranking_slice(
                        row, store_query, state["upto"], upto, parsed_filter, score_threshold, mode, principal
                    )
                    known = {h.id for h in read} | excluded
                    read.extend(h for h in more if h.id not in known)
                    state["upto"] = upto
                return read[:n], state["exhausted"]

            if group_by is not None:
                groups = await self._grouped(top, group_by)
                hits = [hit for group in groups for hit in group.hits]
            elif diversity:
                hits = (await self._diverse(row, top, offset + limit, diversity))[offset:]
            else:
                hits = (await top(offset + limit))[0][offset:]
        if autocut is not None:
            hits = hits[: autocut_count([h.score for h in hits], autocut)]
        label = "vector" if vector is not None else {"SEMANTIC": "query"}.get(mode.value, mode.value.lower())
        if similar_to is not None or recommend is not None:
            label = "similar" if similar_to is not None else "recommend"
        return dataclasses.replace(self._outcome(row, hits, started, mode, label), groups=groups)

    async def search_collections(
        self,
        query: str,
        collections: Sequence[str] | None = None,
        limit: int = 10,
        filter: Any | None = None,
        mode: SearchMode | str = SearchMode.SEMANTIC,
        *,
        principal: Principal = INTERNAL,
        budget: ScanBudget | None = None,
    ) -> CollectionsOutcome:
        """run_collections() of these arguments, checked (CollectionsSearchRequest.parse)."""
        request = CollectionsSearchRequest.parse(
            query, self.settings.limits, collections=collections, limit=limit, filter=filter, mode=mode
        )
        return await self.run_collections(request, principal=principal, budget=budget)

    async def run_collections(
        self, request: CollectionsSearchRequest, *, principal: Principal = INTERNAL, budget: ScanBudget | None = None
    ) -> CollectionsOutcome:
        """The searchCollections operation: one ranking over several collections, each searched
        with its own model: their rankings (top `limit` each) are fused by reciprocal rank fusion
        (k=60; raw scores of different models are never compared), ties to the collection named
        first. Without `collections`: every collection the caller may read (for KEYWORD/HYBRID,
        those with a ready keyword index)."""
        started = time.perf_counter()
        principal.require(Scope.READ)
        if request.collections is None:
            rows = [row for row in await self.repo.list_collections() if principal.may_see(row.name)]
            if request.mode is not SearchMode.SEMANTIC:
                rows = [row for row in rows if row.keyword_index == "ready"]
            names = sorted(row.name for row in rows)
            check_collection_count(len(names))
        else:
            names = list(request.collections)
        results = await asyncio.gather(
            *(self.run(request.on(name), principal=principal, budget=budget) for name in names), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        fused = rrf([outcome.hits for outcome in results], key=lambda h: (h.collection, h.id))[: request.limit]  # type: ignore[union-attr]
        hits = [dataclasses.replace(hit, score=score) for hit, score in fused]
        elapsed = time.perf_counter() - started
        SEARCH_SECONDS.labels("collections").observe(elapsed)
        return CollectionsOutcome(hits=hits, took_ms=round(elapsed * 1000, 3))

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
        return await on_current_version(self.repo, collection, lambda row: self._facets_on(row, field, filter, limit, principal, budget))

    async def _facets_on(
        self, row: Any, field: str, filter: Any | None, limit: int, principal: Principal, budget: ScanBudget | None
    ) -> list[FacetValue]:
        check_field(field, "field")
        check_count(limit, "limit", self.settings.limits.max_search_limit)
        budget = budget or ScanBudget(self.settings.limits.max_scan_points)

        def before_scan(points: int) -> None:
            budget.charge(
                points,
                f"facets of {field!r} in collection {row.name!r} (a field outside its indexedFields)",
                f"Create the collection with {field!r} in indexedFields (Qdrant's facet index counts those "
                "without a scan), or narrow the filter.",
            )

        return await self.store.facet(
            row.store_name, payload_key(field), self.store_filter(filter, principal), limit, before_scan=before_scan
        )

    # -- internals ------------------------------------------------------------------------------

    async def _stored_query(self, row: Any, request: SearchRequest, principal: Principal) -> tuple[list[float], set[str]]:
        """The query vector made of stored documents, and those documents (left out of the hits).
        A document the caller may not see reads as missing."""
        if request.similar_to is not None:
            positive, negative, field = [request.similar_to], [], "similarTo"
        else:
            assert request.recommend is not None
            positive, negative, field = list(request.recommend.positive), list(request.recommend.negative), "recommend"
        ids = list(request.stored_ids)
        rows = await self.repo.get_documents(row.name, ids)
        vectors = await self.store.document_vectors(row.store_name, ids)
        by_id: dict[str, Any] = {}
        for doc_id, doc_row in zip(ids, rows):
            if doc_row is None or not principal.owns(doc_row.metadata):
                raise NotFound(f"document {doc_id!r} not found in collection {row.name!r}", field=field)
            if doc_row.status != "indexed" or not vectors.get(doc_id):
                raise BadInput(f"document {doc_id!r} is not indexed yet; try again shortly", field=field)
            by_id[doc_id] = document_vector(vectors[doc_id])
        query = average_vector([by_id[str(i)] for i in positive], [by_id[str(i)] for i in negative])
        if not query.any() or not all(math.isfinite(v) for v in query):
            raise BadInput(f"the {field} documents cancel out: their query vector is zero", field=field)
        return [float(v) for v in query], set(ids)

    async def _ranking_slice(
        self,
        row: Any,
        query: StoreQuery,
        start: int,
        end: int,
        filter: FilterNode | None,
        score_threshold: float | None,
        mode: SearchMode,
        principal: Principal,
    ) -> tuple[list[Hit], bool]:
        """The live hits among the documents ranked start..end-1, and whether the ranking ended there."""
        wide = dataclasses.replace(query, prefetch=max(query.prefetch, MIN_PREFETCH, 2 * end))
        found = await self._ranked(row, wide, end - start, start, filter, score_threshold)
        return await self._live_hits(row.name, found, mode, principal), len(found) < end - start

    async def _grouped(self, top: Any, group_by: GroupBy) -> list[HitGroup]:
        """The first `groups` groups of the ranking (by their best hit) with their best hits: more
        documents are read until those groups are settled (each full) or the ranking runs out."""
        n = min(MAX_CANDIDATES, max(MMR_MIN_CANDIDATES, 4 * group_by.groups * group_by.hits_per_group))
        while True:
            hits, exhausted = await top(n)
            grouped, settled = group_hits(
                hits, lambda h: h.metadata, group_by.field, group_by.groups, group_by.hits_per_group
            )
            if settled or exhausted or n >= MAX_CANDIDATES:
                return [HitGroup(value=value, hits=members) for value, members in grouped]
            n = min(MAX_CANDIDATES, n * 4)

    async def _diverse(self, row: Any, top: Any, wanted: int, diversity: float) -> list[Hit]:
        """`wanted` hits picked by maximal marginal relevance from the best candidates."""
        candidates, _ = await top(min(MAX_CANDIDATES, max(MMR_MIN_CANDIDATES, MMR_CANDIDATE_FACTOR * wanted)))
        if not candidates:
            return []
        stored = await self.store.document_vectors(row.store_name, [h.id for h in candidates])
        kept = [h for h in candidates if stored.get(h.id)]
        order = mmr_order([h.score for h in kept], [document_vector(stored[h.id]) for h in kept], diversity, wanted)
        return [kept[i] for i in order]

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
                row.store_name, None, limit=limit, offset=offset, filter=filter, score_threshold=score_threshold, query=query
            )
        wanted = offset + limit
        fetch = min(MAX_CHUNK_FETCH, wanted * CHUNK_FETCH_FACTOR)
        while True:
            wide = dataclasses.replace(query, prefetch=max(query.prefetch, fetch))
            found = await self.store.search(
                row.store_name, None, limit=fetch, filter=filter, score_threshold=score_threshold, query=wide
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
            row.store_name, None, limit=1, filter=filter, query=StoreQuery(SearchMode.KEYWORD, sparse=sparse)
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

    async def _embed_query(self, row: Any, query: str, principal: Principal = INTERNAL) -> list[float]:
        await bound_model(self.models, row)
        outcome = await self.embedder.embed(
            [query], model=row.model, kind=EmbedKind.QUERY, normalize=True, principal=principal
        )
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
                    collection=collection,
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

