"""similarTo, recommend, groupBy, diversity, autocut and searchCollections on the real stack
(PostgreSQL, Redis, the bundled model; Qdrant Edge and qdrant-client's local mode), against
exact numpy oracles over the same vectors (documents bring their own unit vectors, so the
store's cosine is a plain dot product)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.domain.access import Principal, Scope
from app.domain.chunking import Chunking
from app.domain.ranking import RRF_K, autocut
from app.domain.scans import ScanBudget
from app.errors import BadInput, Forbidden, NotFound
from app.requests import GroupBy, Recommend
from tests.support.retrieval_corpus import long_documents
from tests.support.stack import STORE_KINDS, Stack, model_runtime, open_stack  # noqa: F401  (session fixture)

DIMS = 384
COUNT = 120
TENANT_A = Principal(kind="key", key_id="ka", scopes=frozenset({Scope.READ}), filter={"tenant": {"eq": "a"}})


@pytest.fixture(params=STORE_KINDS)
async def stack(request, model_runtime, tmp_path: Path) -> Any:  # noqa: F811
    async with open_stack(model_runtime, request.param, tmp_path) as opened:
        yield opened


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def corpus(seed: int = 7) -> tuple[np.ndarray, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    vectors = unit(rng.standard_normal((COUNT, DIMS))).astype(np.float32)
    docs = [
        {
            "id": f"d{i}",
            "text": f"document number {i}",
            "metadata": {"g": i % 7, "tenant": "a" if i % 3 else "b", "n": i},
            "vector": vectors[i].tolist(),
        }
        for i in range(COUNT)
    ]
    return vectors.astype(np.float64), docs


async def load(stack: Stack, name: str = "own") -> tuple[np.ndarray, list[dict[str, Any]]]:
    vectors, docs = corpus()
    await stack.collections.create(name, indexed_fields=["g", "tenant"])
    for start in range(0, COUNT, 60):
        report = await stack.ingest.ingest(name, docs[start : start + 60])
        assert report.failed == 0
    return vectors, docs


def oracle(vectors: np.ndarray, docs: list[dict[str, Any]], query: np.ndarray, keep=lambda d: True, skip=()) -> list[tuple[str, float]]:
    """Every document but `skip` passing `keep`, by cosine to `query`, best first."""
    q = query / np.linalg.norm(query)
    ranked = [(d["id"], float(vectors[i] @ q)) for i, d in enumerate(docs) if keep(d) and d["id"] not in skip]
    return sorted(ranked, key=lambda item: -item[1])


def same_ranking(hits: list[Any], expected: list[tuple[str, float]]) -> None:
    assert [h.id for h in hits] == [i for i, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected], abs=1e-4)


async def test_similar_to_is_the_documents_own_vector_without_it(stack: Stack) -> None:
    vectors, docs = await load(stack)
    found = await stack.search.search("own", similar_to="d5", limit=10)
    same_ranking(found.hits, oracle(vectors, docs, vectors[5], skip={"d5"})[:10])
    # Under a filter, and for a tenant-bound key (whose tenant the filter narrows, never widens).
    found = await stack.search.search("own", similar_to="d5", limit=10, filter={"n": {"gte": 60}})
    same_ranking(found.hits, oracle(vectors, docs, vectors[5], keep=lambda d: d["metadata"]["n"] >= 60, skip={"d5"})[:10])
    found = await stack.search.search("own", similar_to="d5", limit=10, principal=TENANT_A)
    same_ranking(found.hits, oracle(vectors, docs, vectors[5], keep=lambda d: d["metadata"]["tenant"] == "a", skip={"d5"})[:10])
    # A document of another tenant reads as missing; so does one that does not exist.
    for other in ("d3", "nope"):
        with pytest.raises(NotFound, match="not found"):
            await stack.search.search("own", similar_to=other, principal=TENANT_A)
    with pytest.raises(BadInput, match="exactly one"):
        await stack.search.search("own", query="x", similar_to="d5")
    with pytest.raises(BadInput, match="needs a text query"):
        await stack.search.search("own", similar_to="d5", mode="KEYWORD")


async def test_recommend_is_the_average_vector_and_leaves_its_inputs_out(stack: Stack) -> None:
    vectors, docs = await load(stack)
    positive, negative = ["d1", "d2", "d10"], ["d4"]
    query = 2 * vectors[[1, 2, 10]].mean(axis=0) - vectors[[4]].mean(axis=0)
    found = await stack.search.search("own", recommend=Recommend(positive, negative), limit=15)
    same_ranking(found.hits, oracle(vectors, docs, query, skip={*positive, *negative})[:15])
    assert not {h.id for h in found.hits} & {*positive, *negative}
    only_positive = await stack.search.search("own", recommend=Recommend(["d1", "d2"]), limit=5, offset=2)
    same_ranking(only_positive.hits, oracle(vectors, docs, vectors[[1, 2]].mean(axis=0), skip={"d1", "d2"})[2:7])
    with pytest.raises(BadInput, match="both positive and negative"):
        await stack.search.search("own", recommend=Recommend(["d1"], ["d1"]))
    with pytest.raises(BadInput, match="at least one positive"):
        await stack.search.search("own", recommend=Recommend([], ["d1"]))


def grouped_oracle(ranked: list[tuple[str, float]], by_id: dict[str, Any], groups: int, per_group: int) -> list[tuple[Any, list[str]]]:
    out: dict[Any, list[str]] = {}
    for doc_id, _ in ranked:
        value = by_id[doc_id]["metadata"]["g"]
        if value not in out:
            if len(out) == groups:
                continue
            out[value] = []
        if len(out[value]) < per_group:
            out[value].append(doc_id)
    return list(out.items())


async def test_group_by_equals_grouping_the_exact_ranking(stack: Stack) -> None:
    vectors, docs = await load(stack)
    by_id = {d["id"]: d for d in docs}
    query = unit(np.random.default_rng(3).standard_normal(DIMS))
    spec = GroupBy("g", groups=4, hits_per_group=3)
    for flt, keep, principal in (
        (None, lambda d: True, None),
        ({"n": {"lt": 80}}, lambda d: d["metadata"]["n"] < 80, None),
        (None, lambda d: d["metadata"]["tenant"] == "a", TENANT_A),
    ):
        kwargs = {"principal": principal} if principal else {}
        found = await stack.search.search("own", vector=query.tolist(), group_by=spec, filter=flt, **kwargs)
        expected = grouped_oracle(oracle(vectors, docs, query, keep=keep), by_id, 4, 3)
        assert [(g.value, [h.id for h in g.hits]) for g in found.groups] == expected
        assert [h.id for h in found.hits] == [i for _, ids in expected for i in ids]
    # similarTo groups too, without the document itself.
    found = await stack.search.search("own", similar_to="d0", group_by=GroupBy("g", 7, 2))
    expected = grouped_oracle(oracle(vectors, docs, vectors[0], skip={"d0"}), by_id, 7, 2)
    assert [(g.value, [h.id for h in g.hits]) for g in found.groups] == expected
    with pytest.raises(BadInput, match="offset must be 0"):
        await stack.search.search("own", vector=query.tolist(), group_by=spec, offset=1)
    with pytest.raises(BadInput, match="hitsPerGroup"):
        await stack.search.search("own", vector=query.tolist(), group_by=GroupBy("g", 2, 0))
    # Groups found only far down the ranking: read in further slices (never twice), still exact.
    ranked = oracle(vectors, docs, query)
    late = {ranked[70][0]: "x", ranked[71][0]: "y", ranked[75][0]: "x"}
    changed = [{**by_id[i], "metadata": {**by_id[i]["metadata"], "late": v}} for i, v in late.items()]
    assert (await stack.ingest.ingest("own", changed)).updated == 3
    found = await stack.search.search("own", vector=query.tolist(), group_by=GroupBy("late", 3, 2))
    assert [(g.value, [h.id for h in g.hits]) for g in found.groups] == [
        ("x", [ranked[70][0], ranked[75][0]]), ("y", [ranked[71][0]])
    ]
    # The candidates read are charged to the request's scan budget (cost limits).
    with pytest.raises(BadInput, match="would scan") as refused:
        await stack.search.search("own", vector=query.tolist(), group_by=spec, budget=ScanBudget(30))
    assert refused.value.extensions["maxScanPoints"] == 30


async def test_group_by_in_keyword_and_hybrid_modes_groups_their_own_ranking(stack: Stack) -> None:
    await stack.collections.create("texts")
    topics = ["cats", "dogs", "birds"]
    docs = [
        {"id": f"t{i}", "text": f"A note about {topics[i % 3]} and their care, number {i}.", "metadata": {"topic": topics[i % 3], "k": i % 2}}
        for i in range(30)
    ]
    await stack.ingest.ingest("texts", docs)
    for mode in ("KEYWORD", "HYBRID", "SEMANTIC"):
        flat = await stack.search.search("texts", query="care of cats", mode=mode, limit=30, filter={"k": {"eq": 0}})
        grouped = await stack.search.search(
            "texts", query="care of cats", mode=mode, filter={"k": {"eq": 0}}, group_by=GroupBy("topic", 2, 2)
        )
        expected: dict[str, list[float]] = {}
        for hit in flat.hits:
            value = hit.metadata["topic"]
            if value not in expected and len(expected) == 2:
                continue
            members = expected.setdefault(value, [])
            if len(members) < 2:
                members.append(hit.score)
        # Scores, not ids: texts this alike tie in fused ranks, and the store orders ties as it likes.
        assert [g.value for g in grouped.groups] == list(expected), mode
        for group in grouped.groups:
            assert [h.score for h in group.hits] == pytest.approx(expected[group.value], rel=1e-6), mode
            assert {h.metadata["topic"] for h in group.hits} == {group.value}
        assert all(h.metadata["k"] == 0 for h in grouped.hits)


async def test_chunked_similar_to_uses_the_normalized_mean_of_its_chunks(stack: Stack) -> None:
    docs, _ = long_documents()
    await stack.collections.create("long", chunking=Chunking(96, 16))
    await stack.ingest.ingest("long", docs)
    ids = [d["id"] for d in docs]
    chunks = await stack.store.document_vectors("long", ids)
    assert max(len(chunks[i]) for i in ids) > 1  # really chunked
    me = ids[0]
    query = unit(np.mean([unit(np.asarray(v)) for v in chunks[me]], axis=0))
    # A chunked document scores its best chunk.
    expected = sorted(
        ((i, max(float(unit(np.asarray(v)) @ query) for v in chunks[i])) for i in ids if i != me), key=lambda x: -x[1]
    )[:5]
    found = await stack.search.search("long", similar_to=me, limit=5)
    same_ranking(found.hits, expected)


def clustered(seed: int = 11, clusters: int = 12, per: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((clusters, DIMS)))
    points = [unit(c + 0.25 * unit(rng.standard_normal(DIMS))) for c in centers for _ in range(per)]
    return np.asarray(points)


async def test_diversity_spreads_the_top_ten_and_keeps_the_best_hit(stack: Stack) -> None:
    vectors = clustered()
    await stack.collections.create("div")
    await stack.ingest.ingest("div", [{"id": f"p{i}", "text": f"p{i}", "vector": v.tolist()} for i, v in enumerate(vectors)])
    query = unit(vectors[0] + 0.3 * vectors[50])

    def mean_pairwise(hits: list[Any]) -> float:
        rows = vectors[[int(h.id[1:]) for h in hits]]
        sims = rows @ rows.T
        return float((sims.sum() - np.trace(sims)) / (len(rows) * (len(rows) - 1)))

    plain = await stack.search.search("div", vector=query.tolist(), limit=10)
    same = await stack.search.search("div", vector=query.tolist(), limit=10, diversity=0.0)
    assert [h.id for h in same.hits] == [h.id for h in plain.hits]
    diverse = await stack.search.search("div", vector=query.tolist(), limit=10, diversity=0.6)
    assert len(diverse.hits) == 10 and diverse.hits[0].id == plain.hits[0].id
    assert mean_pairwise(diverse.hits) < mean_pairwise(plain.hits) - 0.05
    with pytest.raises(BadInput, match="diversity"):
        await stack.search.search("div", vector=query.tolist(), diversity=1.5)


async def test_autocut_keeps_what_weaviates_definition_keeps(stack: Stack) -> None:
    await stack.collections.create("cut")
    basis = np.eye(DIMS)
    wanted = [0.99, 0.98, 0.97, 0.6, 0.59, 0.58, 0.2, 0.19]
    docs = [
        {"id": f"c{i}", "text": f"c{i}", "vector": (s * basis[0] + np.sqrt(1 - s * s) * basis[i + 1]).tolist()}
        for i, s in enumerate(wanted)
    ]
    await stack.ingest.ingest("cut", docs)
    everything = await stack.search.search("cut", vector=basis[0].tolist(), limit=8)
    assert [h.score for h in everything.hits] == pytest.approx(wanted, abs=1e-4)
    for n in (1, 2, 3):
        cut = await stack.search.search("cut", vector=basis[0].tolist(), limit=8, autocut=n)
        expected = autocut([h.score for h in everything.hits], n)
        assert [h.id for h in cut.hits] == [h.id for h in everything.hits[:expected]]
    assert expected == 8  # two jumps only: the third keeps everything
    assert len((await stack.search.search("cut", vector=basis[0].tolist(), limit=8, autocut=1)).hits) == 3
    assert len((await stack.search.search("cut", vector=basis[0].tolist(), limit=8, autocut=2)).hits) == 6
    with pytest.raises(BadInput, match="autocut"):
        await stack.search.search("cut", vector=basis[0].tolist(), autocut=0)


async def test_search_collections_is_rrf_of_each_collections_ranking(stack: Stack) -> None:
    await stack.collections.create("pets")
    await stack.collections.create("tech")
    await stack.collections.create("food")
    await stack.ingest.ingest("pets", [
        {"id": "p1", "text": "A kitten naps on a cushion by the fire.", "metadata": {"tenant": "a"}},
        {"id": "p2", "text": "Dogs love long walks in the park.", "metadata": {"tenant": "b"}},
        {"id": "p3", "text": "The cat sat on the warm mat.", "metadata": {"tenant": "a"}},
    ])
    await stack.ingest.ingest("tech", [
        {"id": "t1", "text": "Connection refused on port 5432.", "metadata": {"tenant": "a"}},
        {"id": "t2", "text": "A warm laptop sleeps with its lid closed.", "metadata": {"tenant": "b"}},
    ])
    await stack.ingest.ingest("food", [{"id": "f1", "text": "Slow-cooked beef stew for a cold night.", "metadata": {"tenant": "a"}}])
    query = "a sleepy cat somewhere warm"
    per = {name: (await stack.search.search(name, query=query, limit=4)).hits for name in ("pets", "tech", "food")}
    fused = await stack.search.search_collections(query, limit=4)  # every collection, sorted by name
    scores = {(name, h.id): 1 / (RRF_K + rank) for name in ("food", "pets", "tech") for rank, h in enumerate(per[name], 1)}
    order = sorted(scores, key=lambda k: (-scores[k], ["food", "pets", "tech"].index(k[0])))[:4]
    assert [(h.collection, h.id) for h in fused.hits] == order
    assert [h.score for h in fused.hits] == pytest.approx([scores[k] for k in order])
    named = await stack.search.search_collections(query, ["tech", "pets"], limit=10)
    assert {h.collection for h in named.hits} == {"tech", "pets"} and len(named.hits) == 5
    assert [(h.collection, h.id) for h in named.hits][:2] == [("tech", per["tech"][0].id), ("pets", per["pets"][0].id)]
    # Grants: the default is what the key may read; naming another collection is FORBIDDEN.
    pets_only = Principal(kind="key", key_id="kp", scopes=frozenset({Scope.READ}), collections=frozenset({"pets"}))
    assert {h.collection for h in (await stack.search.search_collections(query, principal=pets_only)).hits} == {"pets"}
    with pytest.raises(Forbidden):
        await stack.search.search_collections(query, ["tech"], principal=pets_only)
    # Tenants and filters hold in every collection.
    tenant = await stack.search.search_collections(query, principal=TENANT_A, limit=10)
    assert {h.id for h in tenant.hits} == {"p1", "p3", "t1", "f1"}
    filtered = await stack.search.search_collections(query, filter={"tenant": {"eq": "b"}}, limit=10)
    assert {h.id for h in filtered.hits} == {"p2", "t2"}
    with pytest.raises(BadInput, match="collections is empty"):
        await stack.search.search_collections(query, [])
