"""The one definition of a storable client string (app/validation.py) and the HTTP body rules."""

from __future__ import annotations

import numpy as np
import pytest

from app.errors import BadInput
from app.graphql.http import MAX_BODY_DEPTH, BadRequestBody, decode_request_json
from app.graphql.websockets import operation_problem
from app.settings import Settings
from app.validation import MAX_JSON_DEPTH, check_string, check_value, string_problem


@pytest.mark.parametrize(
    "value,problem",
    [("plain", None), ("héllo wörld ✓", None), ("a\x00b", "NUL"), ("a\ud800b", "surrogate"), ("\udfff", "surrogate")],
)
def test_string_problem(value, problem):
    found = string_problem(value)
    assert (found is None) if problem is None else (problem in found)


def test_check_string_names_the_argument_and_the_limit():
    with pytest.raises(BadInput) as caught:
        check_string("x" * 11, "ids[2]", max_chars=10, argument="ids")
    assert caught.value.code == "BAD_INPUT" and "ids[2]" in caught.value.message
    assert caught.value.extensions == {"argument": "ids", "limit": 10}
    assert check_string("x" * 10, "ids[2]", max_chars=10) == "x" * 10


def test_check_value_walks_keys_values_and_lists():
    check_value({"a": [{"b": "ok"}], "n": 1, "none": None}, "filter", 100)
    for bad in ({"a": [{"b": "x\x00"}]}, {"k\ud800": 1}, ["fine", {"deep": "\x00"}], {"k" * 300: 1}):
        with pytest.raises(BadInput) as caught:
            check_value(bad, "filter", 100)
        assert caught.value.extensions["argument"] == "filter"


def test_check_value_bounds_depth():
    deep: object = "leaf"
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    with pytest.raises(BadInput, match="nested"):
        check_value(deep, "filter", 100)


@pytest.mark.parametrize(
    "body,reason",
    [(b"42", "object"), (b"[]", "object"), (b"\xff", "UTF-8"), (b"{", "not valid JSON"),
     (b"[" * 100_000, "nested"), (b'{"a":' + b"[" * MAX_BODY_DEPTH + b"]" * MAX_BODY_DEPTH + b"}", "nested")],
)
def test_request_bodies_that_are_refused(body, reason):
    with pytest.raises(BadRequestBody) as caught:
        decode_request_json(body)
    assert reason in caught.value.reason


def test_a_request_body_within_the_rules_decodes():
    assert decode_request_json(b'{"query": "{ a }", "variables": {"f": [[1]]}}')["variables"] == {"f": [[1]]}


def test_operation_payloads():
    assert operation_problem({"query": "{ a }", "variables": None, "operationName": "A"}) is None
    assert "query" in operation_problem({"query": 42})
    assert "variables" in operation_problem({"query": "{ a }", "variables": []})
    assert "object" in operation_problem("nope")


def test_the_body_limit_is_qdrants_32_mib_and_the_largest_ingest_fits_it():
    settings = Settings()
    limits = settings.limits
    largest_ingest = limits.max_documents_per_ingest * (limits.max_text_chars * 4 + limits.max_metadata_bytes)
    assert settings.request_body_limit == 32 * 1024 * 1024
    assert largest_ingest < settings.largest_ingest_bytes <= settings.request_body_limit
    assert Settings(server={"max_body_bytes": 1234}).request_body_limit == 1234
    sized = Settings(server={"max_body_bytes": 0}, limits={"max_documents_per_ingest": 1000})
    assert largest_ingest * 3 < sized.request_body_limit == sized.largest_ingest_bytes


def test_limits_past_the_body_limit_are_said_at_startup():
    from loguru import logger

    from app.startup_checks import warn_unsafe_settings

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    try:
        warn_unsafe_settings(Settings())
        assert not [m for m in messages if "MAX_BODY_BYTES" in m]
        warn_unsafe_settings(Settings(limits={"max_documents_per_ingest": 1000}))
        assert [m for m in messages if "MAX_BODY_BYTES" in m and "413" in m]
    finally:
        logger.remove(sink)


@pytest.mark.parametrize(
    "values,problem",
    [
        ([0.0, 0.0, 0.0], "all zeros"),
        ([1.0, float("nan"), 0.0], "finite"),
        ([1.0, float("inf"), 0.0], "finite"),
        ([3e38, 3e38, 3e38], "finite"),  # each fits float32, the norm does not
        ([1.0, 2.0], "2 dimensions"),
        ([1.0, True, 0.0], "list of numbers"),
        ("1,2,3", "list of numbers"),
    ],
)
def test_one_vector_rule_for_documents_and_queries(values, problem):
    from app.requests import SearchRequest, own_vector
    from app.settings import LimitSettings
    from app.validation import check_dimensions, check_vector

    def as_document() -> None:  # IngestBatch's check, then the collection's dimensions as ingest reads them
        check_dimensions(np.frombuffer(own_vector(values, None), dtype="<f4"), 3)

    def as_query() -> None:  # SearchRequest's check, then the collection's dimensions as search reads them
        check_dimensions(SearchRequest.parse("c", LimitSettings(), vector=values).vector, 3)

    messages = []
    for check in (lambda: check_vector(values, 3), as_document, as_query):
        with pytest.raises(BadInput) as caught:
            check()
        messages.append(caught.value.message)
    assert problem in messages[0]
    assert len(set(messages)) == 1, messages  # ingest and search refuse it the same way


def test_a_good_vector_passes_as_float32():
    from app.requests import SearchRequest
    from app.settings import LimitSettings
    from app.validation import check_vector

    assert check_vector([1, 0.5, -2], 3).dtype == "<f4"
    assert SearchRequest.parse("c", LimitSettings(), vector=[1, 0.5, -2]).vector == (1.0, 0.5, -2.0)
