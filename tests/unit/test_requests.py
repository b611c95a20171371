"""The typed requests (app/requests.py): each checked once by its parse, with one rule per concept."""

from __future__ import annotations

import pytest

from app.domain.filters import parse_filter
from app.domain.ids import content_hash, derived_document_id
from app.domain.vectors import Fusion, SearchMode
from app.errors import BadInput
from app.requests import (
    CollectionsSearchRequest,
    EmbedRequest,
    GroupBy,
    IngestBatch,
    Recommend,
    RerankRequest,
    SearchRequest,
    SearchRerank,
)
from app.settings import LimitSettings

LIMITS = LimitSettings(max_text_chars=20, max_request_chars=50, max_texts_per_request=3, max_rerank_documents=3, max_search_limit=10)


def refusal(call, *args, **kwargs) -> BadInput:
    with pytest.raises(BadInput) as caught:
        call(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    ("bad", "problem"),
    [("a\x00b", "contains a NUL character"), ("a\ud800", "unpaired surrogate"), ("x" * 21, "has 21 characters; at most 20")],
)
def test_embed_texts_and_rerank_documents_are_held_to_one_text_rule(bad: str, problem: str) -> None:
    embed = refusal(EmbedRequest.parse, ["fine", bad], LIMITS)
    rerank = refusal(RerankRequest.parse, "q", ["fine", bad], LIMITS)
    assert embed.message.startswith("text 1 ") and rerank.message.startswith("document 1 ")
    assert problem in embed.message and embed.message.removeprefix("text 1") == rerank.message.removeprefix("document 1")
    assert embed.extensions["index"] == rerank.extensions["index"] == 1


def test_a_blank_text_is_refused_to_embed_but_may_be_ranked() -> None:
    assert "text 1 is blank" in refusal(EmbedRequest.parse, ["fine", "  "], LIMITS).message
    assert RerankRequest.parse("q", ["fine", "  "], LIMITS).documents == ("fine", "  ")
    assert "query is blank" in refusal(RerankRequest.parse, " ", ["d"], LIMITS).message


def test_counts_and_totals_name_their_setting_where_a_transport_has_its_own() -> None:
    assert "4 texts in one request; at most 3 are allowed" in refusal(EmbedRequest.parse, ["a"] * 4, LIMITS).message
    openai = refusal(EmbedRequest.parse, ["a"] * 5, LIMITS, max_texts=4, max_texts_setting="CITADEL_LIMITS__MAX_INPUTS_PER_OPENAI_REQUEST")
    assert "at most 4" in openai.message and "CITADEL_LIMITS__MAX_INPUTS_PER_OPENAI_REQUEST" in openai.message
    total = refusal(EmbedRequest.parse, ["x" * 20, "y" * 20, "z" * 20], LIMITS)
    assert "exceeds 50 characters in total at text 2" in total.message
    # rerank counts its query in the total too
    assert "at document 1" in refusal(RerankRequest.parse, "q" * 20, ["x" * 20, "y" * 20], LIMITS).message


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"query": "q", "limit": 0}, "limit"),
        ({"query": "q", "limit": 11}, "limit"),
        ({"query": "q", "offset": -1}, "offset"),
        ({"query": "q", "score_threshold": float("nan")}, "scoreThreshold"),
        ({"query": "q", "diversity": 1.5}, "diversity"),
        ({"query": "q", "autocut": 0}, "autocut"),
        ({"query": "q", "group_by": GroupBy("g", 4, 3)}, "groupBy"),  # 12 hits > max_search_limit
        ({"query": "q", "group_by": GroupBy("g"), "offset": 1}, "offset"),
        ({"query": "q", "mode": "FUZZY"}, "mode"),
        ({"vector": [0.0, 0.0]}, "vector"),
        ({"vector": [1.0], "mode": SearchMode.KEYWORD}, "vector"),
        ({"similar_to": "d1", "mode": SearchMode.HYBRID}, "similarTo"),
        ({"recommend": Recommend(())}, "recommend.positive"),
        ({"recommend": Recommend(("a",), ("a",))}, "recommend"),
        ({"query": " "}, "query"),
        ({"vector": [1.0], "rerank": SearchRerank()}, "rerank"),
        ({"query": "q", "rerank": SearchRerank(candidates=4)}, "rerank.candidates"),
    ],
)
def test_a_search_is_refused_before_any_work_naming_its_argument(arguments: dict, field: str) -> None:
    assert refusal(SearchRequest.parse, "c", LIMITS, **arguments).extensions.get("field") == field


def test_exactly_one_way_to_say_what_to_search_for() -> None:
    for arguments in ({}, {"query": "q", "vector": [1.0]}, {"similar_to": "d", "recommend": Recommend(("e",))}):
        assert "exactly one of" in refusal(SearchRequest.parse, "c", LIMITS, **arguments).message


def test_a_parsed_search_keeps_what_its_checks_learnt() -> None:
    request = SearchRequest.parse(
        "c", LIMITS, query="q", limit=3, mode="HYBRID", fusion="DBSF", filter={"n": {"gte": 2}}, rerank=SearchRerank("r", 3)
    )
    assert (request.mode, request.fusion) == (SearchMode.HYBRID, Fusion.DBSF)
    assert request.filter == parse_filter({"n": {"gte": 2}})
    assert request.rerank == SearchRerank("r", 3)
    assert SearchRequest.parse("c", LIMITS, vector=[1, 2]).vector == (1.0, 2.0)
    assert SearchRequest.parse("c", LIMITS, recommend=Recommend(("a", "b"), ("c", "a2"))).stored_ids == ("a", "b", "c", "a2")


def test_search_collections_checks_its_names_once() -> None:
    request = CollectionsSearchRequest.parse("q", LIMITS, collections=["a", "b", "a"])
    assert request.collections == ("a", "b")  # each once, in the order named
    assert request.on("b") == SearchRequest("b", "q", limit=10)
    assert refusal(CollectionsSearchRequest.parse, "q", LIMITS, collections=[]).extensions["field"] == "collections"
    assert "at most 32" in refusal(CollectionsSearchRequest.parse, "q", LIMITS, collections=[f"c{i}" for i in range(33)]).message


def test_an_ingest_batch_fails_documents_alone_and_hashes_the_rest() -> None:
    batch = IngestBatch.parse(
        "c", [{"text": "one", "metadata": {"k": 1}}, {"id": "x", "text": "a\x00"}, {"id": "v", "text": "t", "vector": [0.0]}], LIMITS
    )
    (doc,) = batch.documents
    assert (doc.id, doc.content_hash) == (derived_document_id("one", {"k": 1}), content_hash("one", {"k": 1}))
    assert [(e.index, e.id, e.code) for e in batch.errors] == [(1, "x", "BAD_INPUT"), (2, "v", "BAD_INPUT")]
    assert "all zeros" in batch.errors[1].message
    assert "at most 256" in refusal(IngestBatch.parse, "c", [{"text": "t"}] * 257, LimitSettings()).message
