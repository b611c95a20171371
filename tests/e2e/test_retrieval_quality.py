"""Retrieval quality through GraphQL on corpora built here (tests/support/retrieval_corpus.py):
exact terms (part codes, names, error strings) among ordinary sentences, paraphrased questions,
long documents whose answer lies past the model's 256-token window, and facet counts."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from app.domain.filter_matcher import matches
from app.domain.filters import parse_filter
from app.settings import LimitSettings
from tests.support.retrieval_corpus import exact_term_corpus, long_documents, paraphrase_pairs

CREATE = """mutation($n: String!, $c: ChunkingInput, $f: [String!]) {
  createCollection(name: $n, chunking: $c, indexedFields: $f) { name keywordIndex keywordIndexProgress chunking { maxTokens } } }"""
INGEST = """mutation($n: String!, $d: [DocumentInput!]!) {
  ingest(collection: $n, documents: $d) { inserted failed chunks warnings { index code } } }"""
SEARCH = """query($n: String!, $q: String!, $m: SearchMode!, $k: Int!) {
  search(collection: $n, query: $q, mode: $m, limit: $k) {
    hits { id score mode chunk { index text start end } document { text } } } }"""
FACETS = """query($n: String!, $f: String!, $filter: JSON) { facets(collection: $n, field: $f, filter: $filter) { value count } }"""


def call(server, query, variables):
    body = server.graphql(query, variables)
    assert "errors" not in body, body
    return body["data"]


def collection(server, prefix, docs, chunking=None, fields=None):
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    created = call(server, CREATE, {"n": name, "c": chunking, "f": fields})["createCollection"]
    assert created["keywordIndex"] is True and created["keywordIndexProgress"] == 1.0
    step = LimitSettings().max_documents_per_ingest  # the server's: the default
    results = [call(server, INGEST, {"n": name, "d": docs[i : i + step]})["ingest"] for i in range(0, len(docs), step)]
    result = {
        "inserted": sum(r["inserted"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "chunks": sum(r["chunks"] for r in results),
        "warnings": [{**w, "index": n * step + w["index"]} for n, r in enumerate(results) for w in r["warnings"]],
    }
    assert result["inserted"] == len(docs) and result["failed"] == 0
    return name, result


def hits(server, name, query, mode, k=1):
    return call(server, SEARCH, {"n": name, "q": query, "m": mode, "k": k})["search"]["hits"]


def first_rate(server, name, queries, mode):
    # Eight clients at once, as an app's users send them: the server batches their queries' embeds.
    with ThreadPoolExecutor(8) as clients:
        tops = list(clients.map(lambda query: hits(server, name, query[0], mode), queries))
    found = 0
    for top, (_, doc_id) in zip(tops, queries, strict=True):
        assert not top or top[0]["mode"] == mode
        found += bool(top) and top[0]["id"] == doc_id
    return found / len(queries)


def test_keyword_and_hybrid_find_exact_terms_and_keep_paraphrases(live_server):
    docs, terms = exact_term_corpus(300)
    plain_docs, questions = paraphrase_pairs()
    name, _ = collection(live_server, "exact", docs + plain_docs)
    rates = {mode: first_rate(live_server, name, terms, mode) for mode in ("SEMANTIC", "KEYWORD", "HYBRID")}
    para = {mode: first_rate(live_server, name, questions, mode) for mode in ("SEMANTIC", "HYBRID")}
    print(f"exact terms, found first: {rates}; paraphrased questions: {para}")
    assert rates["KEYWORD"] >= 0.95
    assert rates["HYBRID"] >= 0.90
    assert rates["HYBRID"] >= rates["SEMANTIC"] + 0.15
    assert para["HYBRID"] >= para["SEMANTIC"] - 0.05


def test_chunked_long_documents_answer_questions_past_the_window(live_server):
    docs, questions = long_documents()
    plain, result = collection(live_server, "unchunked", docs)
    assert sorted(w["index"] for w in result["warnings"]) == list(range(len(docs)))
    assert {w["code"] for w in result["warnings"]} == {"TRUNCATED"}
    chunked, result = collection(live_server, "chunked", docs, chunking={"maxTokens": 96, "overlapTokens": 16})
    assert result["warnings"] == [] and result["chunks"] > 3 * len(docs)

    top3 = unchunked_first = 0
    for question, doc_id, answer in questions:
        found = hits(live_server, chunked, question, "SEMANTIC", k=3)
        for hit in found:
            start, end = hit["chunk"]["start"], hit["chunk"]["end"]
            assert hit["document"]["text"][start:end] == hit["chunk"]["text"]
        mine = [h for h in found if h["id"] == doc_id]
        if mine:
            top3 += 1
            assert answer in mine[0]["chunk"]["text"], (question, mine[0]["chunk"]["text"])
        first = hits(live_server, plain, question, "SEMANTIC")
        unchunked_first += first[0]["id"] == doc_id and first[0]["chunk"] is None
    print(f"long documents: chunked top-3 {top3}/{len(questions)}, unchunked first {unchunked_first}/{len(questions)}")
    assert top3 / len(questions) >= 0.85


def test_facet_counts_equal_a_python_count(live_server):
    docs, _ = exact_term_corpus(90, seed=3)
    name, _ = collection(live_server, "facets", docs, fields=["kind"])
    chunked, _ = collection(live_server, "facets-chunked", docs, chunking={"maxTokens": 8})
    for raw in (None, {"group": {"in": [1, 2]}}, {"not": {"kind": {"eq": "filler"}}}):
        node = parse_filter(raw) if raw else None
        expected = Counter(d["metadata"]["kind"] for d in docs if node is None or matches(node, d["metadata"]))
        for target in (name, chunked):
            counts = call(live_server, FACETS, {"n": target, "f": "kind", "filter": raw})["facets"]
            assert {c["value"]: c["count"] for c in counts} == dict(expected)
            assert [c["count"] for c in counts] == sorted((c["count"] for c in counts), reverse=True)
