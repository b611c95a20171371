"""Keyword and hybrid search, chunked collections, facets and the keyword backfill on the real
stack (PostgreSQL, Redis, the bundled model), once per vector store."""

from __future__ import annotations

from collections import Counter

import pytest

from app.domain.chunking import Chunking
from app.domain.filters import parse_filter
from app.domain.vectors import SearchMode
from app.errors import BadInput
from app.services import reconciler as reconciler_module
from app.domain.filter_matcher import matches
from tests.support.retrieval_corpus import long_documents
from tests.support.stack import STORE_KINDS, model_runtime, open_stack  # noqa: F401  (session fixture)

DOCS = [
    {"id": "a", "text": "Replace the filter cartridge QX-4471-B every six months.", "metadata": {"topic": "parts", "n": 1}},
    {"id": "b", "text": "The cat sat on the warm mat near the window.", "metadata": {"topic": "pets", "n": 2}},
    {"id": "c", "text": "Connection failed with ECONNREFUSED on port 5432.", "metadata": {"topic": "errors", "n": 3}},
    {"id": "d", "text": "Dogs love long walks in the park on sunny days.", "metadata": {"topic": "pets", "n": 4}},
    {"id": "e", "text": "A kitten naps on a cushion by the fire.", "metadata": {"topic": "pets", "n": 5, "tags": ["x"]}},
]


@pytest.fixture(params=STORE_KINDS)
async def stack(request, model_runtime, tmp_path):  # noqa: F811
    async with open_stack(model_runtime, request.param, tmp_path) as s:
        yield s


async def test_modes_find_what_they_should_and_say_so(stack):
    await stack.collections.create("kw", indexed_fields=["topic"])
    report = await stack.ingest.ingest("kw", DOCS)
    assert report.inserted == 5 and report.chunks == 5 and report.warnings == []
    keyword = await stack.search.search("kw", query="QX-4471-B", mode="KEYWORD")
    assert [h.id for h in keyword.hits] == ["a"] and keyword.hits[0].mode is SearchMode.KEYWORD
    hybrid = await stack.search.search("kw", query="ECONNREFUSED", mode="HYBRID", limit=2)
    assert hybrid.hits[0].id == "c" and all(h.mode is SearchMode.HYBRID for h in hybrid.hits)
    # A paraphrase shares no term with the kitten text: meaning finds it, and HYBRID keeps it
    # (the cat text, which shares one of three terms, may only edge ahead by a hair).
    semantic = await stack.search.search("kw", query="a young cat sleeping", limit=1)
    assert semantic.hits[0].id == "e"
    hybrid = await stack.search.search("kw", query="a young cat sleeping", mode="HYBRID", limit=2)
    assert "e" in [h.id for h in hybrid.hits]
    for fusion in ("RRF", "DBSF"):
        only_pets = await stack.search.search(
            "kw", query="cat", mode="HYBRID", fusion=fusion, filter={"topic": {"eq": "pets"}}, limit=5
        )
        assert only_pets.hits and {h.metadata["topic"] for h in only_pets.hits} == {"pets"}
    page = await stack.search.search("kw", query="the", mode="KEYWORD")  # only stop words: nothing to match
    assert page.hits == []
    cats = await stack.search.search("kw", query="cat mat window", mode="KEYWORD", limit=5)
    second = await stack.search.search("kw", query="cat mat window", mode="KEYWORD", limit=1, offset=1)
    assert [h.id for h in second.hits] == [h.id for h in cats.hits[1:2]]
    above = await stack.search.search(
        "kw", query="cat mat window", mode="KEYWORD", score_threshold=cats.hits[0].score - 1e-6
    )
    assert [h.id for h in above.hits] == ["b"]


async def test_keyword_modes_are_refused_clearly(stack):
    await stack.collections.create("plain", keyword_index=False)
    await stack.ingest.ingest("plain", DOCS)
    with pytest.raises(BadInput, match="no keyword index"):
        await stack.search.search("plain", query="cat", mode="KEYWORD")
    assert (await stack.search.search("plain", query="cat")).hits  # SEMANTIC still works
    with pytest.raises(BadInput, match="text query"):
        await stack.search.search("plain", vector=[0.1] * 384, mode="HYBRID")
    with pytest.raises(BadInput, match="unknown mode"):
        await stack.search.search("plain", query="cat", mode="FUZZY")
    with pytest.raises(BadInput, match="unknown fusion"):
        await stack.search.search("plain", query="cat", fusion="MAX")


async def test_chunked_documents_give_one_hit_each_with_their_best_chunk(stack):
    docs, questions = long_documents()
    await stack.collections.create("long", chunking=Chunking(96, 16))
    report = await stack.ingest.ingest("long", docs)
    assert report.chunks > 4 * len(docs) and report.warnings == []
    question, doc_id, answer = questions[0]
    for mode in ("SEMANTIC", "KEYWORD", "HYBRID"):
        result = await stack.search.search("long", query=question, mode=mode, limit=5)
        ids = [h.id for h in result.hits]
        assert len(ids) == len(set(ids))  # one hit per document, and limit counts documents:
        assert len(ids) == 5 if mode != "KEYWORD" else doc_id in ids  # few texts share the question's terms
        for hit in result.hits:
            assert hit.chunk is not None and hit.text[hit.chunk.start : hit.chunk.end] == hit.chunk.text
            assert hit.text == next(d["text"] for d in docs if d["id"] == hit.id)  # the whole document
        paged = await stack.search.search("long", query=question, mode=mode, limit=2, offset=3)
        assert [h.id for h in paged.hits] == ids[3:5]
    best = (await stack.search.search("long", query=question, limit=1)).hits[0]
    assert best.id == doc_id and answer in best.chunk.text

    # An update to a short text and a delete leave no chunk of the old text behind.
    assert (await stack.ingest.ingest("long", [{"id": doc_id, "text": "Now a single short sentence."}])).updated == 1
    assert await stack.store.count("long") == await _chunks_expected(stack, "long")
    hit = (await stack.search.search("long", query="a single short sentence", limit=1)).hits[0]
    assert hit.id == doc_id and hit.chunk.text == "Now a single short sentence."
    assert await stack.ingest.delete_documents("long", [doc_id, docs[1]["id"]]) == 2
    assert await stack.store.count("long") == await _chunks_expected(stack, "long")
    found = await stack.search.search("long", query=question, limit=20)
    assert doc_id not in {h.id for h in found.hits} and docs[1]["id"] not in {h.id for h in found.hits}


async def _chunks_expected(stack, name: str) -> int:
    """Points the store should hold: each live document's chunk count, chunked again here."""
    from app.domain.chunking import chunk_text

    row = await stack.repo.get_collection(name)
    docs = await stack.repo.list_documents(name, None, 1_000)
    measured = await stack.embedder.document_tokens(row.model, [d.text for d in docs])
    spans, window = measured.spans, measured.window
    budget = min(row.chunk_max_tokens, window)
    return sum(len(chunk_text(d.text, s, budget, row.chunk_overlap_tokens)) for d, s in zip(docs, spans))


async def test_unchunked_long_texts_are_stored_with_a_truncation_warning(stack):
    docs, _ = long_documents()
    await stack.collections.create("trunc")
    report = await stack.ingest.ingest("trunc", [{"id": "short", "text": "A short text."}, docs[0]])
    assert report.inserted == 2 and report.chunks == 2
    [warning] = report.warnings
    assert (warning.index, warning.id, warning.code) == (1, docs[0]["id"], "TRUNCATED")
    assert "256" in warning.message


@pytest.mark.parametrize("raw_filter", [None, {"n": {"gte": 3}}, {"not": {"topic": {"eq": "errors"}}}])
async def test_facets_equal_a_python_count(stack, raw_filter):
    await stack.collections.create("fc", indexed_fields=["topic"])
    await stack.collections.create("fcc", chunking=Chunking(8, 0))  # several chunks per document
    long_docs = [dict(d, text=d["text"] + " " + d["text"] + " " + d["text"]) for d in DOCS]
    await stack.ingest.ingest("fc", DOCS)
    await stack.ingest.ingest("fcc", long_docs)
    node = parse_filter(raw_filter) if raw_filter else None
    expected = Counter(d["metadata"]["topic"] for d in DOCS if node is None or matches(node, d["metadata"]))
    for name in ("fc", "fcc"):
        counts = await stack.search.facets(name, "topic", filter=raw_filter, limit=10)
        assert {c.value: c.count for c in counts} == dict(expected), name
        assert [c.count for c in counts] == sorted((c.count for c in counts), reverse=True)
    with pytest.raises(BadInput):
        await stack.search.facets("fc", "bad field!", limit=10)
    with pytest.raises(BadInput):
        await stack.search.facets("fc", "topic", limit=0)


async def test_existing_collections_get_their_keyword_index_in_the_background(stack, monkeypatch):
    # A collection from before keyword indexes: no sparse vectors, its row marked 'building' by the migration.
    await stack.collections.create("old", keyword_index=False)
    await stack.ingest.ingest("old", DOCS)
    async with stack.repo._connection() as conn:
        await conn.execute("UPDATE collections SET keyword_index = 'building' WHERE name = 'old'")
    row = await stack.repo.get_collection("old")
    assert await stack.collections.keyword_progress(row) == 0.0
    with pytest.raises(BadInput, match="being built"):
        await stack.search.search("old", query="QX-4471-B", mode="KEYWORD")

    monkeypatch.setattr(reconciler_module, "BACKFILL_PAGE", 2)
    monkeypatch.setattr(reconciler_module, "MAX_ROUNDS", 1)  # one page per round: progress shows
    await stack.reconciler.run_once()
    row = await stack.repo.get_collection("old")
    assert row.keyword_index == "building" and await stack.collections.keyword_progress(row) == pytest.approx(2 / 5)
    for _ in range(3):
        await stack.reconciler.run_once()
    row = await stack.repo.get_collection("old")
    assert row.keyword_index == "ready" and await stack.collections.keyword_progress(row) == 1.0
    hits = (await stack.search.search("old", query="QX-4471-B", mode="KEYWORD")).hits
    assert [h.id for h in hits] == ["a"]
    # Written after the backfill: the normal path gives new documents their keyword vectors.
    await stack.ingest.ingest("old", [{"id": "z", "text": "Order the drive belt ZK-9120-A now."}])
    assert [h.id for h in (await stack.search.search("old", query="ZK-9120-A", mode="KEYWORD")).hits] == ["z"]
