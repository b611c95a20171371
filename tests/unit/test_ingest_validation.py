"""Per-document validation of ingest, content hashes and point ids (pure functions, no I/O)."""

from __future__ import annotations

import uuid

import pytest

from app.errors import BadInput
from app.services.collections import validate_distance, validate_indexed_fields, validate_name
from app.domain.ids import content_hash, derived_document_id, point_id
from app.requests import IngestBatch
from app.settings import LimitSettings, Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        limits=LimitSettings(max_text_chars=100, max_metadata_bytes=64, max_documents_per_ingest=5),
    )


def validate_documents(settings: Settings, documents: list) -> tuple[tuple, tuple]:
    batch = IngestBatch.parse("c", documents, settings.limits)
    return batch.documents, batch.errors


def test_valid_documents_keep_input_order_and_ids(settings: Settings) -> None:
    valid, errors = validate_documents(
        settings, [{"id": "a", "text": "first"}, {"text": "second", "metadata": {"k": 1}}]
    )
    assert errors == ()
    assert [d.index for d in valid] == [0, 1]
    assert valid[0].id == "a" and valid[0].metadata == {}
    assert valid[1].id == derived_document_id("second", {"k": 1})
    assert valid[1].content_hash == content_hash("second", {"k": 1})


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"id": "x"}, "text is missing"),
        ({"id": "x", "text": "   \n"}, "blank"),
        ({"id": "x", "text": "y" * 101}, "at most 100"),
        ({"id": "x", "text": "nul\x00here"}, "NUL"),
        ({"id": "x", "text": "bad \ud800 surrogate"}, "surrogate"),
        ({"id": "x", "text": "ok", "metadata": [1, 2]}, "JSON object"),
        ({"id": "x", "text": "ok", "metadata": {"k": "v" * 80}}, "bytes as JSON"),
        ({"id": "x", "text": "ok", "metadata": {"k": float("nan")}}, "plain JSON"),
        ({"id": "x", "text": "ok", "metadata": {"k": "a\x00b"}}, "NUL"),
        ({"id": "", "text": "ok"}, "blank"),
        ({"id": "i" * 300, "text": "ok"}, "at most 256"),
        ("just a string", "must be an object"),
    ],
)
def test_bad_documents_are_reported_and_the_rest_lands(settings: Settings, document, fragment: str) -> None:
    valid, errors = validate_documents(settings, [{"id": "good", "text": "fine"}, document])
    assert [d.id for d in valid] == ["good"]
    assert len(errors) == 1
    assert errors[0].index == 1 and errors[0].code == "BAD_INPUT"
    assert fragment in errors[0].message


def test_duplicate_ids_in_one_call_are_reported_once(settings: Settings) -> None:
    valid, errors = validate_documents(
        settings, [{"id": "a", "text": "one"}, {"id": "a", "text": "two"}, {"text": "same"}, {"text": "same"}]
    )
    assert [d.index for d in valid] == [0, 2]
    assert [(e.index, e.id) for e in errors] == [(1, "a"), (3, derived_document_id("same", None))]


def test_too_many_documents_refuse_the_whole_call(settings: Settings) -> None:
    with pytest.raises(BadInput, match="at most 5"):
        validate_documents(settings, [{"text": f"t{i}"} for i in range(6)])


def test_content_hash_ignores_key_order_but_not_content() -> None:
    assert content_hash("t", {"a": 1, "b": [1, 2]}) == content_hash("t", {"b": [1, 2], "a": 1})
    assert content_hash("t", {"a": 1}) != content_hash("t", {"a": 2})
    assert content_hash("t", None) == content_hash("t", {})
    assert content_hash("t", {}) != content_hash("u", {})


def test_point_ids_are_deterministic_uuids_per_collection() -> None:
    first = point_id("books", "42")
    assert first == point_id("books", "42")
    assert uuid.UUID(first).version == 5
    assert first != point_id("films", "42")
    assert first != point_id("books", "43")


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a" * 64, "dots.no", "ünï"])
def test_invalid_collection_names(name: str) -> None:
    with pytest.raises(BadInput):
        validate_name(name)


def test_valid_collection_names_distances_and_fields() -> None:
    assert validate_name("a") == "a"
    assert validate_name("Books_2024-v" + "x" * 51).startswith("Books")
    assert validate_distance("COSINE") == "cosine"
    with pytest.raises(BadInput):
        validate_distance("manhattan")
    assert validate_indexed_fields(["topic", "price:float", "topic"]) == ["topic", "price:float"]
    with pytest.raises(BadInput):
        validate_indexed_fields(["topic", "topic:integer"])
    with pytest.raises(BadInput):
        validate_indexed_fields(["bad field"])


def test_embed_batches_respect_both_count_and_characters() -> None:
    from app.services.indexing import ToIndex, batches

    docs = [ToIndex(str(i), "x" * n, {}, "h") for i, n in enumerate([4, 4, 4, 9, 1, 1, 1])]
    sizes = [[d.id for d in c] for c in batches(docs, max_items=3, max_chars=10)]
    # A text alone larger than the character budget still gets a chunk of its own.
    assert sizes == [["0", "1"], ["2"], ["3", "4"], ["5", "6"]]
    assert [len(c) for c in batches(docs, max_items=2, max_chars=1_000)] == [2, 2, 2, 1]
    assert batches([], max_items=2, max_chars=10) == []


def test_the_report_counts_each_stored_document_by_what_its_upsert_did() -> None:
    from app.services.ingest import IngestReport

    report = IngestReport()
    for doc_id, status in (("a", "inserted"), ("b", "unchanged"), ("c", "inserted"), ("d", "updated")):
        report.count_stored(doc_id, status)
    assert (report.ids, report.inserted, report.updated, report.unchanged) == (["a", "b", "c", "d"], 2, 1, 1)
    with pytest.raises(ValueError, match="refused"):
        report.count_stored("e", "refused")  # a refused write is an error item, never a stored id
    assert report.ids == ["a", "b", "c", "d"]
