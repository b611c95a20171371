"""Collections, ingest, search and deletes on the real stack (PostgreSQL, Redis, the real model),
once per vector store: Qdrant Edge and QdrantServerStore over qdrant-client's local mode.

Both stores search exactly here, so rankings must equal numpy's brute force over the same
model's vectors (near-ties within float32 noise may swap).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.domain.vectors import stored_point_ids
from app.domain.embedding import EmbedKind
from app.errors import BadInput, Conflict, DependencyUnavailable, NotFound
from app.domain.ids import point_id
from tests.support.services import redis_url
from app.domain.models import FALLBACK_MODEL
from tests.support.stack import (
    STORE_KINDS,
    Stack,
    both_sides,
    clear_cache,
    corpus,
    forward_passes,
    model_runtime,  # noqa: F401  (session fixture)
    open_stack,
    pg_state,
)

CORPUS_SIZE = 1_000
SCORE_TOLERANCE = 1e-5
QUERIES = [
    "someone making dinner",
    "a musician performing",
    "looking at planets through a telescope",
    "fixing a ship at the docks",
    "growing vegetables",
    "an airplane above the peaks",
    "poetry and literature",
    "a fast bicycle descent",
    "bread from the oven",
    "reading cartography in a library",
    "a cold robot on a roof",
    "the market is noisy",
]


@dataclass
class Indexed:
    stack: Stack
    name: str
    docs: list[dict[str, Any]]
    vectors: np.ndarray  # the model's vectors of docs, in docs order


@pytest.fixture(scope="module")
async def cache_prefix() -> Any:
    # One prefix for the module: the second store's ingest reuses the first one's vectors.
    from redis.asyncio import Redis

    prefix = f"citadel-test:{uuid.uuid4().hex}:"
    yield prefix
    redis = Redis.from_url(redis_url())
    try:
        await clear_cache(redis, prefix)
    finally:
        await redis.aclose()


@pytest.fixture(scope="module", params=STORE_KINDS)
async def indexed(request, model_runtime, cache_prefix, tmp_path_factory) -> Any:  # noqa: F811
    base: Path = tmp_path_factory.mktemp(f"stack-{request.param}")
    async with open_stack(model_runtime, request.param, base, cache_prefix=cache_prefix) as stack:
        name = "corpus"
        await stack.collections.create(name, indexed_fields=["topic", "n:integer", "price:float"])
        docs = corpus(CORPUS_SIZE)
        counts, ids = await ingest_in_calls(stack, name, docs)
        assert counts == (CORPUS_SIZE, 0, 0, 0)
        assert ids == [d["id"] for d in docs]
        vectors = await _document_vectors(stack, [d["text"] for d in docs])
        yield Indexed(stack, name, docs, vectors)


async def ingest_in_calls(stack: Stack, name: str, docs: list[dict]) -> tuple[tuple[int, int, int, int], list[str]]:
    """`docs` in calls of the most documents one call takes: (inserted, updated, unchanged, failed)
    over all of them, and the ids in order."""
    step = stack.settings.limits.max_documents_per_ingest
    reports = [await stack.ingest.ingest(name, docs[start : start + step]) for start in range(0, len(docs), step)]
    counts = tuple(sum(getattr(r, field) for r in reports) for field in ("inserted", "updated", "unchanged", "failed"))
    return counts, [i for r in reports for i in r.ids]  # type: ignore[return-value]


async def _document_vectors(stack: Stack, texts: list[str]) -> np.ndarray:
    """The vectors ingest stored, read back through the embedding service's cache."""
    parts = []
    step = stack.settings.limits.max_texts_per_request
    for start in range(0, len(texts), step):
        outcome = await stack.embedder.embed(texts[start : start + step], model=FALLBACK_MODEL)
        assert all(outcome.cached), "ingest should have cached every document vector"
        parts.append(outcome.vectors)
    return np.concatenate(parts)


def _assert_ranking(got: list[str], expected: list[str], score_of: Callable[[str], float]) -> None:
    assert len(got) == len(expected) and len(set(got)) == len(got)
    for rank, (g, e) in enumerate(zip(got, expected)):
        assert g == e or abs(score_of(g) - score_of(e)) <= SCORE_TOLERANCE, (rank, got, expected)


# -- ranking ---------------------------------------------------------------------------------------


async def test_query_hits_equal_numpy_exact_neighbours_in_order(indexed: Indexed) -> None:
    ids = [d["id"] for d in indexed.docs]
    by_id = {d["id"]: d for d in indexed.docs}
    for query in QUERIES:
        outcome = await indexed.stack.search.search(indexed.name, query=query, limit=10)
        q = (await indexed.stack.embedder.embed([query], model=FALLBACK_MODEL, kind=EmbedKind.QUERY)).vectors[0]
        scores = indexed.vectors @ q
        order = np.argsort(-scores, kind="stable")[:10]
        score_of = {ids[i]: float(scores[i]) for i in range(len(ids))}.__getitem__
        got = [h.id for h in outcome.hits]
        _assert_ranking(got, [ids[i] for i in order], score_of)
        assert outcome.model == FALLBACK_MODEL and outcome.collection == indexed.name
        assert outcome.took_ms > 0
        for hit in outcome.hits:
            assert hit.score == pytest.approx(score_of(hit.id), abs=1e-4)
            assert hit.text == by_id[hit.id]["text"] and hit.metadata == by_id[hit.id]["metadata"]


async def test_vector_search_and_offset_page_the_same_ranking(indexed: Indexed) -> None:
    ids = [d["id"] for d in indexed.docs]
    q = indexed.vectors[123]  # a document's own vector: it must come first
    scores = indexed.vectors @ q
    order = [ids[i] for i in np.argsort(-scores, kind="stable")[:20]]
    score_of = {ids[i]: float(scores[i]) for i in range(len(ids))}.__getitem__

    first = await indexed.stack.search.search(indexed.name, vector=q.tolist(), limit=10)
    second = await indexed.stack.search.search(indexed.name, vector=q.tolist(), limit=10, offset=10)
    assert first.hits[0].id == ids[123]
    _assert_ranking([h.id for h in first.hits] + [h.id for h in second.hits], order, score_of)

    threshold = float(scores[ids.index(order[4])]) - 1e-6
    above = await indexed.stack.search.search(indexed.name, vector=q.tolist(), limit=50, score_threshold=threshold)
    assert [h.id for h in above.hits] == [h.id for h in first.hits[:5]]


# -- filters ---------------------------------------------------------------------------------------


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value)


FILTERS: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
    ({"topic": {"eq": "cooking"}}, lambda m: m["topic"] == "cooking"),
    ({"topic": {"ne": "cooking"}}, lambda m: m["topic"] != "cooking"),
    ({"topic": {"in": ["travel", "music"]}}, lambda m: m["topic"] in ("travel", "music")),
    ({"topic": {"nin": ["travel", "music"]}}, lambda m: m["topic"] not in ("travel", "music")),
    ({"n": {"gte": 100, "lt": 200}}, lambda m: 100 <= m["n"] < 200),
    ({"n": {"in": [3, 5, 8, 13]}}, lambda m: m["n"] in (3, 5, 8, 13)),
    ({"price": {"gt": 50.5}}, lambda m: "price" in m and m["price"] > 50.5),
    ({"price": {"lte": 10}}, lambda m: "price" in m and m["price"] <= 10),
    (
        {"published": {"gte": "2024-03-01T00:00:00Z", "lt": "2024-06-01T00:00:00+00:00"}},
        lambda m: (
            "published" in m and _when("2024-03-01T00:00:00Z") <= _when(m["published"]) < _when("2024-06-01T00:00:00Z")
        ),
    ),
    ({"tags": {"eq": "sale"}}, lambda m: "sale" in m["tags"]),
    ({"tags": {"exists": True}}, lambda m: bool(m["tags"])),
    ({"rating": {"exists": False}}, lambda m: m.get("rating") is None),
    ({"rating": {"exists": True}}, lambda m: m.get("rating") is not None),
    ({"flag": {"eq": True}}, lambda m: m["flag"] is True),
    ({"author.name": {"eq": "ann"}}, lambda m: m["author"]["name"] == "ann"),
    ({"topic": {"eq": "science"}, "n": {"gt": 300}}, lambda m: m["topic"] == "science" and m["n"] > 300),
    (
        {"or": [{"and": [{"topic": {"eq": "cooking"}}, {"n": {"lt": 500}}]}, {"not": {"price": {"gte": 20}}}]},
        lambda m: (m["topic"] == "cooking" and m["n"] < 500) or not ("price" in m and m["price"] >= 20),
    ),
    (
        {"not": {"or": [{"tags": {"in": ["red", "blue"]}}, {"flag": {"eq": False}}]}},
        lambda m: not (any(t in ("red", "blue") for t in m["tags"]) or m["flag"] is False),
    ),
    (
        {"and": [{"author.name": {"nin": ["bob"]}}, {"or": [{"rating": {"gte": 4}}, {"tags": {"eq": "new"}}]}]},
        lambda m: m["author"]["name"] != "bob" and ((m.get("rating") or 0) >= 4 or "new" in m["tags"]),
    ),
]


@pytest.mark.parametrize(("filter_json", "predicate"), FILTERS, ids=[str(f) for f, _ in FILTERS])
async def test_filters_select_exactly_what_the_predicate_selects(indexed: Indexed, filter_json, predicate) -> None:
    expected = {d["id"] for d in indexed.docs if predicate(d["metadata"])}
    assert 0 < len(expected) < len(indexed.docs), "a filter that selects all or nothing proves little"
    outcome = await indexed.stack.search.search(
        indexed.name, vector=indexed.vectors[0].tolist(), limit=CORPUS_SIZE, filter=filter_json
    )
    assert {h.id for h in outcome.hits} == expected
    assert len(outcome.hits) == len(expected)


# -- idempotence -----------------------------------------------------------------------------------


async def test_reingesting_everything_is_unchanged_without_a_forward_pass(indexed: Indexed) -> None:
    before_rows = await pg_state(indexed.stack, indexed.name)
    passes = forward_passes()
    counts, _ = await ingest_in_calls(indexed.stack, indexed.name, indexed.docs)
    assert counts == (0, 0, CORPUS_SIZE, 0)
    assert forward_passes() == passes
    assert await pg_state(indexed.stack, indexed.name) == before_rows


# -- bad inputs ------------------------------------------------------------------------------------


async def test_bad_inputs_give_their_codes_and_change_nothing(indexed: Indexed) -> None:
    stack, name = indexed.stack, indexed.name
    before = (await pg_state(stack, name), await stored_point_ids(stack.store, name))
    dims = indexed.vectors.shape[1]
    limits = stack.settings.limits

    calls: list[tuple[type[Exception], Callable[[], Any]]] = [
        (NotFound, lambda: stack.search.search("no-such-collection", query="hello")),
        (NotFound, lambda: stack.ingest.ingest("no-such-collection", [{"text": "hello"}])),
        (NotFound, lambda: stack.ingest.delete_documents("no-such-collection", ["doc-00001"])),
        (BadInput, lambda: stack.search.search(name, vector=[0.1] * (dims - 1))),
        (BadInput, lambda: stack.search.search(name, query="hello", vector=[0.1] * dims)),
        (BadInput, lambda: stack.search.search(name)),
        (BadInput, lambda: stack.search.search(name, query="hello", limit=0)),
        (BadInput, lambda: stack.search.search(name, query="hello", limit=limits.max_search_limit + 1)),
        (BadInput, lambda: stack.search.search(name, query="hello", offset=-1)),
        (BadInput, lambda: stack.search.search(name, query="hello", filter={"and": [{"topic": {"gtx": 1}}]})),
        (BadInput, lambda: stack.search.search(name, query="hello", filter={"or": "topic"})),
        (
            BadInput,
            lambda: stack.ingest.ingest(name, [{"text": f"t{i}"} for i in range(limits.max_documents_per_ingest + 1)]),
        ),
    ]
    for error, call in calls:
        with pytest.raises(error) as caught:
            await call()
        assert caught.value.code == error.code

    with pytest.raises(BadInput, match=r"filter\.and\[0\]\.topic"):
        await stack.search.search(name, query="hello", filter={"and": [{"topic": {"gtx": 1}}]})

    oversized = "word " * (limits.max_text_chars // 5 + 1)
    report = await stack.ingest.ingest(name, [{"id": "doc-00001", "text": oversized}, {"id": "x", "text": " "}])
    assert report.failed == 2 and report.ids == []
    assert [(e.index, e.id, e.code) for e in report.errors] == [(0, "doc-00001", "BAD_INPUT"), (1, "x", "BAD_INPUT")]

    assert (await pg_state(stack, name), await stored_point_ids(stack.store, name)) == before


# -- collections, updates, deletes (a small collection of their own) -----------------------------


async def test_collection_lifecycle_and_errors(indexed: Indexed) -> None:
    collections, store = indexed.stack.collections, indexed.stack.store
    with pytest.raises(Conflict):
        await collections.create(indexed.name)
    for bad in ("", "9lives", "has space", "x" * 64, "a/b"):
        with pytest.raises(BadInput):
            await collections.create(bad)
    with pytest.raises(BadInput):
        await collections.create("okname", distance="manhattan")
    with pytest.raises(NotFound):
        await collections.create("okname", model="no/such-model")
    assert await indexed.stack.repo.get_collection("okname") is None
    with pytest.raises(NotFound):
        await collections.get("missing")
    with pytest.raises(NotFound):
        await collections.delete("missing")

    store.fail_creates = True
    try:
        with pytest.raises(DependencyUnavailable):
            await collections.create("half")
    finally:
        store.restore()
    assert await indexed.stack.repo.get_collection("half") is None  # nothing half-exists

    row = await collections.create("temp-dot", distance="dot", indexed_fields=["topic"])
    assert (row.model, row.dimensions, row.distance) == (FALLBACK_MODEL, 384, "dot")
    assert {r.name for r in await collections.list()} >= {indexed.name, "temp-dot"}
    assert await collections.document_count(indexed.name) == CORPUS_SIZE
    assert await collections.delete("temp-dot") is True
    assert not await store.collection_exists("temp-dot")
    assert await indexed.stack.repo.get_collection("temp-dot") is None


async def test_update_one_text_then_delete_both_sides(indexed: Indexed) -> None:
    stack = indexed.stack
    name = f"edits-{uuid.uuid4().hex[:8]}"
    await stack.collections.create(name)
    docs = corpus(20, seed=11)
    await stack.ingest.ingest(name, docs)

    passes = forward_passes()
    changed = [dict(d) for d in docs]
    # A text never seen before (the cache is shared by both stores' runs), so it needs a pass.
    changed[7] = {**docs[7], "text": f"Purple giraffes dancing, sentence {uuid.uuid4().hex[:6]}."}
    report = await stack.ingest.ingest(name, changed)
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 19)
    assert forward_passes() > passes
    top = (await stack.search.search(name, query="purple giraffes dancing", limit=1)).hits[0]
    assert (top.id, top.text) == (docs[7]["id"], changed[7]["text"])

    # Metadata alone changes: updated, found by the new value, and no forward pass (cached text).
    passes = forward_passes()
    changed[3] = {**docs[3], "metadata": {**docs[3]["metadata"], "topic": "gardening"}}
    report = await stack.ingest.ingest(name, changed)
    assert (report.updated, report.unchanged) == (1, 19)
    assert forward_passes() == passes
    hits = (await stack.search.search(name, query="anything", filter={"topic": {"eq": "gardening"}})).hits
    assert [h.id for h in hits] == [docs[3]["id"]]

    gone = [docs[0]["id"], docs[1]["id"], docs[2]["id"]]
    assert await stack.ingest.delete_documents(name, gone + ["never-existed"]) == 3
    expected, stored = await both_sides(stack, name)
    assert expected == stored and len(stored) == 17
    assert not {point_id(name, i) for i in gone} & stored
    for doc_id in gone:
        assert await stack.repo.get_document(name, doc_id) is None
    hits = (await stack.search.search(name, query=docs[0]["text"], limit=20)).hits
    assert not {h.id for h in hits} & set(gone) and len(hits) == 17


async def test_search_never_returns_a_hit_whose_row_is_gone(indexed: Indexed) -> None:
    stack = indexed.stack
    name = f"orphans-{uuid.uuid4().hex[:8]}"
    await stack.collections.create(name)
    docs = corpus(10, seed=5)
    await stack.ingest.ingest(name, docs)
    # Remove rows behind the store's back (as a crash between the two deletes would).
    target = docs[4]
    await stack.repo.mark_deleting(name, [target["id"]])
    async def keep_vectors(ids: list[str], live: object) -> None:  # the row goes, its vector stays: an orphan
        pass

    await stack.repo.purge_if_deleting(name, [target["id"]], keep_vectors)
    assert point_id(name, target["id"]) in await stored_point_ids(stack.store, name)

    hits = (await stack.search.search(name, query=target["text"], limit=10)).hits
    assert target["id"] not in {h.id for h in hits} and len(hits) == 9

    # A row being deleted (marked, vectors still there) is hidden as well.
    await stack.repo.mark_deleting(name, [docs[5]["id"]])
    hits = (await stack.search.search(name, query=docs[5]["text"], limit=10)).hits
    assert docs[5]["id"] not in {h.id for h in hits}
    await stack.collections.delete(name)
