"""One contract for every VectorStore: Qdrant Edge (tmp dir), qdrant-client local mode, and a real
Qdrant server when CITADEL_TEST_QDRANT_URL is set."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.domain.vectors import stored_point_ids
from app.adapters.qdrant_edge import QdrantEdgeStore
from app.adapters.qdrant_server import QdrantServerStore
from app.domain.filters import parse_filter
from app.domain.vectors import VectorPoint
from app.errors import BadInput, Conflict, DependencyUnavailable, NotFound
from app.domain.filter_matcher import matches
from tests.support.vectors import (
    EXACT_KINDS,
    STORE_KINDS,
    collection_name,
    exact_ranking,
    exact_scores,
    make_points,
    metadata_dicts,
    open_store,
    point_id,
    random_vectors,
    raw_filters,
    server_skip_reason,
)

DISTANCES = ("cosine", "dot", "euclid")


@pytest.fixture(params=STORE_KINDS)
async def store_kind(request):
    kind = request.param
    if kind == "server" and (reason := server_skip_reason()):
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return kind


@pytest.fixture
async def store(store_kind, tmp_path):
    async with open_store(store_kind, tmp_path) as s:
        yield s


@pytest.fixture
async def collection(store):
    """A fresh cosine collection of 4 dims, removed afterwards."""
    name = collection_name()
    await store.create_collection(name, 4, "cosine")
    yield name
    await store.delete_collection(name)


@pytest.mark.parametrize("distance", DISTANCES)
async def test_collection_lifecycle(store, distance):
    name = collection_name()
    assert not await store.collection_exists(name)
    await store.create_collection(name, 8, distance)
    try:
        assert await store.collection_exists(name)
        assert await store.count(name) == 0
        assert await stored_point_ids(store, name) == set()
        with pytest.raises(Conflict):
            await store.create_collection(name, 8, distance)
    finally:
        await store.delete_collection(name)
    assert not await store.collection_exists(name)
    await store.delete_collection(name)  # idempotent


async def test_missing_collection_is_not_found(store):
    name = collection_name()
    with pytest.raises(NotFound):
        await store.search(name, [0.0, 1.0], limit=3)
    with pytest.raises(NotFound):
        await store.count(name)
    with pytest.raises(NotFound):
        await store.upsert(name, make_points(random_vectors(1, 2, seed=0)))


async def test_upsert_is_idempotent_by_id_and_delete_removes(store, collection):
    vectors = random_vectors(10, 4, seed=1)
    await store.upsert(collection, make_points(vectors))
    await store.upsert(collection, make_points(vectors))
    assert await store.count(collection) == 10
    assert await stored_point_ids(store, collection) == {point_id(i) for i in range(10)}

    # Same id, new vector and payload: replaced, not added.
    moved = VectorPoint(id=point_id(3), vector=[1.0, 0.0, 0.0, 0.0], payload={"doc_id": "doc-3", "metadata": {"v": 2}})
    await store.upsert(collection, [moved])
    assert await store.count(collection) == 10
    [hit] = await store.search(collection, [1.0, 0.0, 0.0, 0.0], limit=1)
    assert hit.id == point_id(3)
    assert hit.payload == {"doc_id": "doc-3", "metadata": {"v": 2}}
    assert hit.score == pytest.approx(1.0, abs=1e-5)

    await store.delete(collection, [point_id(i) for i in (1, 3, 5)] + [point_id("never-stored")])
    assert await store.count(collection) == 7
    assert await stored_point_ids(store, collection) == {point_id(i) for i in range(10) if i not in (1, 3, 5)}
    hits = await store.search(collection, [1.0, 0.0, 0.0, 0.0], limit=10)
    assert {h.id for h in hits} == await stored_point_ids(store, collection)


async def test_document_points_pages_through_every_point_with_its_doc_id_and_version(store, collection):
    points = make_points(random_vectors(25, 4, seed=3))
    for i, point in enumerate(points):
        if i % 2 == 0:  # the others stand for points written before points carried versions
            point.payload["version"] = f"h:{i}"
    await store.upsert(collection, points)
    seen: list[tuple[str, str, str | None]] = []
    after, pages = None, 0
    while True:
        page, after = await store.document_points(collection, after, 10)
        seen.extend(page)
        pages += 1
        if after is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted((point_id(i), f"doc-{i}", f"h:{i}" if i % 2 == 0 else None) for i in range(25))


async def test_wrong_dimensions_and_ids_are_bad_input(store, collection):
    with pytest.raises(BadInput):
        await store.upsert(collection, make_points(random_vectors(1, 5, seed=2)))
    with pytest.raises(BadInput):
        await store.search(collection, [1.0, 2.0], limit=1)
    with pytest.raises(BadInput):
        await store.upsert(collection, [VectorPoint(id="doc-1", vector=[1.0, 0, 0, 0], payload={})])


@pytest.mark.parametrize("distance", DISTANCES)
async def test_search_equals_exact_nearest_neighbours(store, store_kind, distance):
    corpus = random_vectors(1_000, 32, seed=3)
    queries = random_vectors(8, 32, seed=4)
    name = collection_name()
    await store.create_collection(name, 32, distance)
    try:
        await store.upsert(name, make_points(corpus))
        recalls = []
        for query in queries:
            scores = exact_scores(corpus, query, distance)
            best = exact_ranking(scores, distance)[:10]
            hits = await store.search(name, query.tolist(), limit=10)
            assert len(hits) == 10
            by_id = {point_id(i): i for i in range(len(corpus))}
            got = [by_id[h.id] for h in hits]
            for hit, row in zip(hits, got):
                assert hit.score == pytest.approx(scores[row], rel=1e-4, abs=1e-4)
                assert hit.payload == {"doc_id": f"doc-{row}", "metadata": {"i": row}}
            recalls.append(len(set(got) & set(best.tolist())) / 10)
            if store_kind in EXACT_KINDS:
                # Position i holds the i-th best score; only float32 near-ties may swap places.
                np.testing.assert_allclose(scores[got], scores[best], rtol=1e-5, atol=1e-5)
        assert np.mean(recalls) == 1.0 if store_kind in EXACT_KINDS else np.mean(recalls) >= 0.98
    finally:
        await store.delete_collection(name)


@pytest.mark.parametrize("distance", DISTANCES)
async def test_offset_and_score_threshold(store, distance):
    corpus = random_vectors(200, 16, seed=5)
    query = random_vectors(1, 16, seed=6)[0]
    scores = exact_scores(corpus, query, distance)
    ranking = exact_ranking(scores, distance)
    name = collection_name()
    await store.create_collection(name, 16, distance)
    try:
        await store.upsert(name, make_points(corpus))
        page = await store.search(name, query.tolist(), limit=5, offset=10)
        assert [h.id for h in page] == [point_id(i) for i in ranking[10:15]]

        # A threshold halfway between the 7th and 8th best: exactly the best 7 ("better than"
        # means a higher similarity, or a smaller euclidean distance).
        threshold = float((scores[ranking[6]] + scores[ranking[7]]) / 2)
        hits = await store.search(name, query.tolist(), limit=50, score_threshold=threshold)
        assert [h.id for h in hits] == [point_id(i) for i in ranking[:7]]
    finally:
        await store.delete_collection(name)


# The cases where Qdrant's semantics are easy to get wrong, always run before the random ones.
TRICKY_CORPUS = [
    {"s": True}, {"s": 1}, {"s": 1.0}, {"s": "1"}, {"s": [None]}, {"s": None}, {"s": []}, {"s": [[1]]},
    {"s": ["a", "b"]}, {"x": [{"y": 1}]}, {"x": {"y": [1, "2024-01-01"]}}, {"s": "2024-01-01 10:00"}, {},
]
TRICKY_FILTERS = [
    {"s": {"eq": True}}, {"s": {"eq": 1}}, {"s": {"ne": 1}}, {"s": {"exists": True}}, {"s": {"exists": False}},
    {"s": {"gte": 1}}, {"s": {"nin": ["a"]}}, {"s": {"ne": "b", "exists": True}}, {"x.y": {"eq": 1}},
    {"x.y": {"gte": "2024-01-01T00:00:00Z"}}, {"s": {"lt": "2024-01-01T10:00:01Z", "gt": "2024-01-01T09:59:59+00:00"}},
    {"not": {"or": [{"s": {"in": [1, 2]}}, {"x": {"exists": True}}]}},
]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(corpus=st.lists(metadata_dicts, min_size=1, max_size=25), raw=st.lists(raw_filters, min_size=1, max_size=6))
@example(corpus=TRICKY_CORPUS, raw=TRICKY_FILTERS)
async def test_filters_select_exactly_what_matches_selects(store, corpus, raw):
    filters = []
    for r in raw:
        try:
            filters.append((r, parse_filter(r)))
        except BadInput:  # deeper than the limit; the unit tests cover refusals
            continue
    name = collection_name()
    await store.create_collection(name, 4, "cosine")
    try:
        await store.upsert(name, make_points(random_vectors(len(corpus), 4, seed=len(corpus)), corpus))
        for r, node in filters:
            hits = await store.search(name, [1.0, 0.5, 0.25, 0.125], limit=len(corpus) + 5, filter=node)
            got = {h.payload["doc_id"] for h in hits}
            expected = {f"doc-{i}" for i, md in enumerate(corpus) if matches(node, md)}
            assert got == expected, f"filter {r}"
    finally:
        await store.delete_collection(name)


TYPED_CORPUS = [
    {"topic": "cooking", "n": 5, "price": 9.5, "flag": True, "when": "2024-03-01T10:00:00Z", "tags": ["x", "y"]},
    {"topic": "travel", "n": 150, "price": 120.0, "flag": False, "when": "2024-05-01T00:00:00+02:00", "tags": ["y"]},
    {"topic": "cooking", "n": 900, "price": 1.25, "flag": True, "when": "2023-12-31", "author": {"name": "ann"}},
    {"topic": "music", "n": 42, "flag": False, "author": {"name": "bob"}},
]
TYPED_FILTERS = [
    {"topic": {"eq": "cooking"}},
    {"and": [{"topic": {"eq": "cooking"}}, {"n": {"gte": 100, "lt": 901}}]},
    {"flag": {"eq": True}},
    {"flag": {"ne": True}},
    {"price": {"gt": 5}},
    {"when": {"gte": "2024-01-01", "lt": "2024-04-30T23:00:00+00:00"}},
    {"author.name": {"in": ["bob", "carl"]}},
    {"or": [{"tags": {"in": ["x"]}}, {"price": {"exists": False}}]},
    {"not": {"topic": {"nin": ["music", "travel"]}}},
]


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
async def test_indexed_fields_keep_filter_semantics(store):
    name = collection_name()
    indexed = ["topic", "n:integer", "price:float", "flag:bool", "when:datetime", "author.name", "tags:keyword"]
    await store.create_collection(name, 4, "dot", indexed_fields=indexed)
    try:
        await store.upsert(name, make_points(random_vectors(len(TYPED_CORPUS), 4, seed=7), TYPED_CORPUS))
        for raw in TYPED_FILTERS:
            node = parse_filter(raw)
            hits = await store.search(name, [1.0, 1.0, 1.0, 1.0], limit=10, filter=node)
            expected = {f"doc-{i}" for i, md in enumerate(TYPED_CORPUS) if matches(node, md)}
            assert {h.payload["doc_id"] for h in hits} == expected, raw
        with pytest.raises(BadInput):
            await store.create_collection(collection_name(), 4, "dot", indexed_fields=["n:bigint"])
    finally:
        await store.delete_collection(name)


async def test_edge_store_reopens_its_data(tmp_path):
    vectors = random_vectors(50, 8, seed=8)
    first = QdrantEdgeStore(tmp_path / "qdrant")
    await first.create_collection("docs", 8, "euclid", indexed_fields=["topic"])
    await first.upsert("docs", make_points(vectors))
    await first.delete("docs", [point_id(0)])
    await first.close()

    second = QdrantEdgeStore(tmp_path / "qdrant")
    try:
        assert await second.collection_exists("docs")
        assert await second.count("docs") == 49
        assert await stored_point_ids(second, "docs") == {point_id(i) for i in range(1, 50)}
        [hit] = await second.search("docs", vectors[7].tolist(), limit=1)
        assert hit.id == point_id(7) and hit.score == pytest.approx(0.0, abs=1e-5)
        with pytest.raises(Conflict):
            await second.create_collection("docs", 8, "euclid")
    finally:
        await second.close()


async def test_edge_store_refuses_path_like_names(tmp_path):
    store = QdrantEdgeStore(tmp_path / "qdrant")
    try:
        for bad in ("../escape", "a/b", "", ".hidden"):
            with pytest.raises(BadInput):
                await store.create_collection(bad, 4, "cosine")
    finally:
        await store.close()
    assert not (tmp_path / "escape").exists()


async def test_server_store_maps_unreachable_server_to_dependency_unavailable():
    store = QdrantServerStore("http://127.0.0.1:9", timeout=2)  # discard port: nothing listens
    try:
        with pytest.raises(DependencyUnavailable):
            await store.ping()
        with pytest.raises(DependencyUnavailable):
            await store.collection_exists("anything")
    finally:
        await store.close()


# -- collection layout (sharding, replication, on-disk storage, int8 quantization) -----------------


@pytest.mark.filterwarnings("ignore:Local mode performs exact")
async def test_an_int8_sharded_layout_still_ranks_like_exact_search(store):
    from app.domain.vectors import CollectionLayout

    name = collection_name()
    layout = CollectionLayout(
        shard_number=2, replication_factor=1, on_disk_vectors=True, on_disk_payload=True, quantization="int8"
    )
    await store.create_collection(name, 32, "cosine", layout=layout)
    try:
        vectors = random_vectors(300, 32, seed=41)
        await store.upsert(name, make_points(vectors))
        query = random_vectors(1, 32, seed=42)[0]
        hits = await store.search(name, query.tolist(), limit=10)
        expected = exact_ranking(exact_scores(vectors, query, "cosine"), "cosine")[:10]
        # Rescored on the original vectors: the int8 codes only choose the candidates.
        assert [h.id for h in hits] == [point_id(int(i)) for i in expected]
    finally:
        await store.delete_collection(name)


@pytest.mark.parametrize(
    "bad",
    [
        {"shard_number": 0},
        {"replication_factor": 1, "write_consistency_factor": 2},
        {"quantization": "int4"},
        {"shard_number": True},
    ],
)
async def test_an_impossible_layout_is_bad_input_and_creates_nothing(store, bad):
    from app.domain.vectors import CollectionLayout

    name = collection_name()
    with pytest.raises(BadInput):
        await store.create_collection(name, 4, "cosine", layout=CollectionLayout(**bad))
    assert not await store.collection_exists(name)


async def test_vector_index_reports_the_points_and_what_the_index_serves(store, collection):
    """Small collections are searched exactly on every store: nothing served by an ANN index yet,
    every point counted, no build running once the writes are in."""
    empty = await store.vector_index(collection)
    assert (empty.points, empty.indexed_points) == (0, 0)
    await store.upsert(collection, make_points(random_vectors(25, 4, seed=7)))
    status = await store.vector_index(collection)
    assert status.points == 25
    assert 0 <= status.indexed_points <= status.points
    assert status.indexed_points == 0  # far below every store's indexing threshold
    assert status.optimizing is False
    with pytest.raises(NotFound):
        await store.vector_index(collection_name())
