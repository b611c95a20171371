"""Reads that scan (facets of fields outside indexedFields, a tenant-bound key's counts and
pages) on the real stack (PostgreSQL, Qdrant Edge): exact, charged to the request's scan budget
before they start, paged with only the needed field, and run off the event loop so a light
request is answered while heavy scans run."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from app.adapters import qdrant_common, qdrant_edge
from app.adapters.qdrant_server import QdrantServerStore
from app.domain.access import Principal, Scope
from app.domain.filter_matcher import matches
from app.domain.filters import parse_filter
from app.domain.scans import ScanBudget
from app.domain.vectors import VectorPoint, payload_key
from app.errors import BadInput
from app.graphql.context import Context
from app.graphql.schema import build_schema
from app.services import documents as documents_module
from app.services.documents import DocumentService
from app.services.search import SearchService
from tests.support.stack import Stack, model_runtime, open_stack  # noqa: F401  (session fixture)
from tests.support.vectors import collection_name, point_id

DOCS = 2_400
DIMS = 384  # the stack's model (all-MiniLM-L6-v2): own vectors skip it
NAME = "scans"
COLORS = ["red", "green", "blue", "gold", "teal"]
TOPICS = ["parts", "pets", "errors", "support"]


def corpus() -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((DOCS, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = []
    for i in range(DOCS):
        tags = [c for c in COLORS if rng.random() < 0.4]
        metadata = {
            "topic": TOPICS[i % 4],  # indexed
            "tags": tags,  # a list: each element counts
            "shade": COLORS[int(rng.integers(0, 5))] if i % 7 else 3,  # mixed types, unindexed
            "n": i,
            "tenant": "t1" if i % 4 == 1 else "t2",
        }
        docs.append({"id": f"d{i:05d}", "text": f"document {i}", "metadata": metadata, "vector": vectors[i].tolist()})
    return docs


DOCUMENTS = corpus()


@pytest.fixture(scope="module")
async def stack(model_runtime, tmp_path_factory):  # noqa: F811
    async with open_stack(model_runtime, "edge", tmp_path_factory.mktemp("scans")) as opened:
        await opened.collections.create(NAME, indexed_fields=["topic"], keyword_index=False)
        per_call = opened.settings.limits.max_documents_per_ingest
        for start in range(0, DOCS, per_call):
            report = await opened.ingest.ingest(NAME, DOCUMENTS[start : start + per_call])
            assert report.failed == 0
        yield opened


def with_limit(stack: Stack, points: int) -> Any:
    limits = stack.settings.limits.model_copy(update={"max_scan_points": points})
    return stack.settings.model_copy(update={"limits": limits})


def search_service(stack: Stack, max_scan_points: int) -> SearchService:
    return SearchService(with_limit(stack, max_scan_points), stack.repo, stack.store, stack.embedder, stack.models)


def brute_force(field: str, raw_filter: Any = None) -> dict[Any, int]:
    node = parse_filter(raw_filter) if raw_filter else None
    counts: Counter = Counter()
    for doc in DOCUMENTS:
        if node is None or matches(node, doc["metadata"]):
            value = doc["metadata"][field]
            counts.update(set(value) if isinstance(value, list) else {value})
    return dict(counts)


class PageSpy:
    """Records every page a facet scan counts: its size, its payloads, and the thread it ran on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pages: list[tuple[int, int, list[Any]]] = []
        self.first_page = asyncio.Event()
        loop = asyncio.get_running_loop()
        original = qdrant_common.FacetCounter.add

        def add(counter: Any, payloads: Any) -> None:
            payloads = list(payloads)
            self.pages.append((threading.get_ident(), len(payloads), payloads))
            loop.call_soon_threadsafe(self.first_page.set)
            original(counter, payloads)

        monkeypatch.setattr(qdrant_common.FacetCounter, "add", add)


@pytest.mark.parametrize("field", ["tags", "shade"])
@pytest.mark.parametrize("raw_filter", [None, {"n": {"gte": 1_000}}, {"topic": {"ne": "pets"}}])
async def test_scan_facets_are_exact_paged_and_off_the_loop(stack, monkeypatch, field, raw_filter):
    monkeypatch.setattr(qdrant_edge, "_SCROLL_PAGE", 333)  # several pages, the last one short
    spy = PageSpy(monkeypatch)
    counts = await stack.search.facets(NAME, field, filter=raw_filter, limit=100)
    assert {c.value: c.count for c in counts} == brute_force(field, raw_filter)
    assert [c.count for c in counts] == sorted((c.count for c in counts), reverse=True)
    assert len(spy.pages) > 1 and all(size <= 333 for _, size, _ in spy.pages)
    assert threading.get_ident() not in {thread for thread, _, _ in spy.pages}  # counted off the loop
    # Only the faceted field of each payload is read.
    assert all(set(p) == {"metadata"} and set(p["metadata"]) <= {field} for _, _, page in spy.pages for p in page)


async def test_a_scan_over_the_limit_is_bad_input_naming_indexed_fields_before_any_page(stack, monkeypatch):
    spy = PageSpy(monkeypatch)
    search = search_service(stack, 1_000)
    with pytest.raises(BadInput) as refused:
        await search.facets(NAME, "tags")
    assert "indexedFields" in refused.value.message and "'tags'" in refused.value.message
    assert f"{DOCS} points" in refused.value.message and "CITADEL_LIMITS__MAX_SCAN_POINTS" in refused.value.message
    assert refused.value.to_extensions()["code"] == "BAD_INPUT"
    assert spy.pages == []  # refused before the scan
    # An indexed field is counted by the facet index: no scan, no limit.
    assert {c.value: c.count for c in await search.facets(NAME, "topic")} == brute_force("topic")
    # A filter that leaves fewer points than the limit scans them.
    narrow = {"n": {"lt": 900}}
    assert {c.value: c.count for c in await search.facets(NAME, "tags", filter=narrow)} == brute_force("tags", narrow)


async def test_one_budget_is_shared_by_every_scan_of_a_request(stack, monkeypatch):
    spy = PageSpy(monkeypatch)
    budget = ScanBudget(DOCS + DOCS // 2)
    half = {"n": {"lt": DOCS // 2}}
    await stack.search.facets(NAME, "tags", budget=budget)  # DOCS points
    await stack.search.facets(NAME, "shade", filter=half, budget=budget)  # DOCS / 2 more: exactly the limit
    pages = len(spy.pages)
    with pytest.raises(BadInput, match=f"after {DOCS + DOCS // 2} already scanned"):
        await stack.search.facets(NAME, "tags", filter={"n": {"lt": 10}}, budget=budget)
    assert len(spy.pages) == pages
    await stack.search.facets(NAME, "topic", budget=budget)  # indexed: free


class NoLimit:
    async def check(self, principal: object) -> None:
        return None


async def test_aliases_of_one_graphql_document_draw_from_one_budget(stack):
    settings = with_limit(stack, 2 * DOCS)
    services = SimpleNamespace(search=search_service(stack, 2 * DOCS), settings=settings, limiter=NoLimit())
    context = Context(request=None, response=None, services=services)  # type: ignore[arg-type]
    document = "{ " + " ".join(f'f{i}: facets(collection: "{NAME}", field: "tags") {{ value count }}' for i in range(3)) + " }"
    result = await build_schema().execute(document, context_value=context)
    # Two scans fit the budget; the third is refused before it starts (facets is non-null, so
    # its error nulls the whole answer).
    assert result.data is None and len(result.errors or []) == 1
    assert result.errors[0].extensions["code"] == "BAD_INPUT" and "indexedFields" in result.errors[0].message
    assert f"after {2 * DOCS} already scanned" in result.errors[0].message
    assert context.scan_budget.used == 2 * DOCS


async def test_a_light_request_is_answered_while_heavy_scans_run(stack, monkeypatch):
    monkeypatch.setattr(qdrant_edge, "_SCROLL_PAGE", 50)  # many pages per heavy scan
    spy = PageSpy(monkeypatch)
    finished: list[str] = []

    async def heavy(i: int) -> Any:
        counts = await stack.search.facets(NAME, "tags", limit=100)
        finished.append(f"heavy-{i}")
        return counts

    heavies = [asyncio.create_task(heavy(i)) for i in range(6)]
    await spy.first_page.wait()  # the heavy scans are under way
    light_facets = await stack.search.facets(NAME, "topic")  # Qdrant's facet index: no scan
    light_search = await stack.search.search(NAME, vector=DOCUMENTS[7]["vector"], limit=1)
    finished.append("light")
    results = await asyncio.gather(*heavies)
    assert finished[0] == "light", finished
    assert {c.value: c.count for c in light_facets} == brute_force("topic")
    assert light_search.hits[0].id == DOCUMENTS[7]["id"]
    assert all({c.value: c.count for c in counts} == brute_force("tags") for counts in results)


# -- a tenant-bound key's counts and pages (PostgreSQL) ----------------------------------------

TENANT = Principal(kind="key", key_id="k1", scopes=frozenset({Scope.READ}), filter={"tenant": {"eq": "t1"}})
OWNED = [d["id"] for d in DOCUMENTS if d["metadata"]["tenant"] == "t1"]


async def test_tenant_counts_are_exact_and_refused_over_the_limit_before_scanning(stack, monkeypatch):
    reads: list[int] = []
    original = stack.repo.document_metadata

    async def counted(collection: str, after: Any, limit: int) -> Any:
        batch = await original(collection, after, limit)
        reads.append(len(batch))
        return batch

    monkeypatch.setattr(stack.repo, "document_metadata", counted)
    documents = DocumentService(with_limit(stack, DOCS), stack.repo)
    assert await documents.document_counts([NAME], principal=TENANT) == [len(OWNED)]
    assert sum(reads) == DOCS
    reads.clear()
    tight = DocumentService(with_limit(stack, DOCS - 1), stack.repo)
    with pytest.raises(BadInput, match="documentCount for a tenant-bound key") as refused:
        await tight.document_counts([NAME], principal=TENANT)
    assert f"would scan {DOCS} rows" in refused.value.message
    assert reads == []  # refused before the scan
    # A key without a tenant is counted by PostgreSQL: no scan, no limit.
    assert await tight.document_counts([NAME]) == [DOCS]


async def test_tenant_pages_stop_at_the_budget_with_a_cursor_and_miss_nothing(stack, monkeypatch):
    monkeypatch.setattr(documents_module, "SCAN_PAGE", 300)
    documents = DocumentService(with_limit(stack, 700), stack.repo)  # each call reads at most 700 rows
    seen: list[str] = []
    after = None
    calls = 0
    while True:
        rows, after = await documents.page(NAME, after, 400, principal=TENANT)
        calls += 1
        assert len(rows) <= 400 and all(r.metadata["tenant"] == "t1" for r in rows)
        seen.extend(r.id for r in rows)
        if after is None:
            break
        assert calls < 20
    assert seen == OWNED and calls == -(-DOCS // 700)  # every owned document once, in id order
    unbounded = DocumentService(with_limit(stack, 0), stack.repo)
    rows, after = await unbounded.page(NAME, None, 400, principal=TENANT)
    assert [r.id for r in rows] == OWNED[:400] and after == OWNED[399]
    # A request whose budget is spent is refused rather than answered with an empty page.
    with pytest.raises(BadInput, match="paging collection"):
        await documents.page(NAME, None, 10, principal=TENANT, budget=_spent())


def _spent() -> ScanBudget:
    budget = ScanBudget(10)
    budget.charge(10, "an earlier scan", "")
    return budget


# -- a Qdrant server's facet fallback (qdrant-client's local mode, told to refuse like a server) ----


async def test_a_server_store_scans_fields_it_cannot_facet(monkeypatch):
    store = QdrantServerStore(client=AsyncQdrantClient(location=":memory:"))
    name = collection_name()
    await store.create_collection(name, 4, "cosine")
    try:
        points = [
            VectorPoint(id=point_id(d["id"]), vector=[1.0, 0.5, 0.25, float(i % 3)], payload={"doc_id": d["id"], "metadata": d["metadata"]})
            for i, d in enumerate(DOCUMENTS[:700])
        ]
        # Three documents in chunks: each counts once, by its first chunk.
        points += [
            VectorPoint(
                id=point_id(f"c{d}-{c}"),
                vector=[0.5, 1.0, 0.25, float(c)],
                payload={"doc_id": f"c{d}", "metadata": {"n": 500 + d, "tags": ["chunked", "red"]}, "chunk": {"index": c, "start": c, "end": c + 1}},
            )
            for d in range(3)
            for c in range(4)
        ]
        await store.upsert(name, points)

        async def refuse(*_: Any, **__: Any) -> Any:
            raise ValueError("Bad request: No appropriate index for faceting: metadata.tags")

        monkeypatch.setattr(store.client, "facet", refuse)
        monkeypatch.setattr("app.adapters.qdrant_server._SCROLL_PAGE", 128)
        spy = PageSpy(monkeypatch)
        charged: list[int] = []
        node = parse_filter({"n": {"gte": 100}})
        counts = await store.facet(name, payload_key("tags"), node, limit=10, before_scan=charged.append)
        expected: Counter = Counter({"chunked": 3, "red": 3})
        for d in DOCUMENTS[100:700]:
            expected.update(set(d["metadata"]["tags"]))
        assert {c.value: c.count for c in counts} == dict(expected)
        # Every point under the filter is read (and charged), chunks included.
        assert charged == [600 + 12] and sum(size for _, size, _ in spy.pages) == 600 + 12
        assert threading.get_ident() not in {thread for thread, _, _ in spy.pages}
    finally:
        await store.delete_collection(name)
