"""The filter language: parsing into the AST, refusals that name the part, reference semantics."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

from app.domain.filters import (
    MAX_FILTER_CONDITIONS,
    MAX_FILTER_DEPTH,
    MAX_IN_VALUES,
    And,
    Eq,
    Exists,
    In,
    IndexedField,
    Not,
    Or,
    Range,
    parse_filter,
    parse_indexed_field,
)
from app.domain.vectors import payload_key
from app.errors import BadInput
from app.domain.filter_matcher import matches, parse_payload_datetime

UTC = timezone.utc


# -- parsing ----------------------------------------------------------------------------------


def test_parses_the_api_example():
    node = parse_filter({"and": [{"topic": {"eq": "cooking"}}, {"n": {"gte": 100, "lt": 900}}]})
    assert node == And((Eq("topic", "cooking"), Range("n", gte=100, lt=900)))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"a": {"eq": "x"}}, Eq("a", "x")),
        ({"a": {"eq": 3}}, Eq("a", 3)),
        ({"a": {"eq": False}}, Eq("a", False)),
        ({"a": {"ne": 3}}, Not(Eq("a", 3))),
        ({"a": {"in": ["x", "y"]}}, In("a", ("x", "y"))),
        ({"a": {"nin": [1, 2]}}, Not(In("a", (1, 2)))),
        ({"a": {"gt": 1.5}}, Range("a", gt=1.5)),
        ({"a": {"exists": True}}, Exists("a")),
        ({"a": {"exists": False}}, Not(Exists("a"))),
        ({"a.b-c.d_e": {"eq": 1}}, Eq("a.b-c.d_e", 1)),
        ({"a": {"eq": 1, "exists": True}}, And((Eq("a", 1), Exists("a")))),
        ({"a": {"eq": 1}, "b": {"lte": 2}}, And((Eq("a", 1), Range("b", lte=2)))),
        ({"or": [{"a": {"eq": 1}}, {"not": {"b": {"eq": 2}}}]}, Or((Eq("a", 1), Not(Eq("b", 2))))),
    ],
)
def test_parses_each_form(raw, expected):
    assert parse_filter(raw) == expected


def test_range_bounds_of_one_field_form_one_range():
    node = parse_filter({"n": {"gt": 1, "gte": 2, "lt": 10, "lte": 9.5, "ne": 5}})
    assert node == And((Not(Eq("n", 5)), Range("n", gt=1, gte=2, lt=10, lte=9.5)))


def test_datetime_bounds_become_aware_utc():
    node = parse_filter({"t": {"gte": "2024-01-01T02:00:00+02:00", "lt": "2024-01-02", "gt": "2024-01-01T00:00:00Z"}})
    assert isinstance(node, Range) and node.is_datetime
    assert node.gte == datetime(2024, 1, 1, tzinfo=UTC)  # offset converted
    assert node.lt == datetime(2024, 1, 2, tzinfo=UTC)  # no zone means UTC
    assert node.gt == datetime(2024, 1, 1, tzinfo=UTC)


def test_ast_is_immutable_and_hashable():
    node = parse_filter({"and": [{"a": {"in": [1, 2]}}, {"b": {"exists": True}}]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.items = ()  # type: ignore[misc]
    assert hash(node) == hash(parse_filter({"and": [{"a": {"in": [1, 2]}}, {"b": {"exists": True}}]}))


def test_payload_key_is_under_metadata():
    assert payload_key("a.b") == "metadata.a.b"


# -- refusals name the offending part -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"and": [{"a": {"eq": 1}}, {"price": {"gtx": 1}}]}, "filter.and[1].price: unknown operator 'gtx'"),
        ([{"a": {"eq": 1}}], "filter: expected an object, got list"),
        ("a", "filter: expected an object, got string"),
        ({}, "filter: empty filter object"),
        ({"and": {"a": {"eq": 1}}}, "filter.and: expected a list of filters, got object"),
        ({"or": []}, "filter.or: empty list"),
        ({"or": [{"a": {"eq": 1}}, 3]}, "filter.or[1]: expected an object, got number"),
        ({"not": [{"a": {"eq": 1}}]}, "filter.not: expected an object, got list"),
        ({"and": [{"a": {"eq": 1}}], "b": {"eq": 2}}, "filter: 'and' must be the only key of its object"),
        ({"a": 3}, "filter.a: expected an object of operators, got number"),
        ({"a": {}}, "filter.a: no operators"),
        ({"a b": {"eq": 1}}, "filter.a b: invalid field name"),
        ({"a..b": {"eq": 1}}, "filter.a..b: invalid field name"),
        ({"a[]": {"eq": 1}}, "filter.a[]: invalid field name"),
        ({"": {"eq": 1}}, "filter.: empty field name"),
        ({"a": {"eq": 1.5}}, "filter.a.eq: floats cannot be matched exactly"),
        ({"a": {"ne": None}}, "filter.a.ne: expected a string, integer or boolean, got null"),
        ({"a": {"eq": [1]}}, "filter.a.eq: expected a string, integer or boolean, got list"),
        ({"a": {"eq": 2**63}}, "filter.a.eq: integer out of the 64-bit range"),
        ({"a": {"in": "x"}}, "filter.a.in: expected a list, got string"),
        ({"a": {"nin": []}}, "filter.a.nin: empty list"),
        ({"a": {"in": ["x", 1]}}, "filter.a.in: expected a list of only strings or only integers"),
        ({"a": {"in": [True]}}, "filter.a.in: expected a list of only strings or only integers"),
        ({"a": {"in": [1.5]}}, "filter.a.in: expected a list of only strings or only integers"),
        ({"a": {"in": [1, -(2**64)]}}, "filter.a.in[1]: integer out of the 64-bit range"),
        ({"a": {"gte": True}}, "filter.a.gte: expected a number or an ISO-8601 datetime, got boolean"),
        ({"a": {"gte": "soon"}}, "filter.a.gte: 'soon' is not a number or an ISO-8601 datetime"),
        ({"a": {"lt": [1]}}, "filter.a.lt: expected a number or an ISO-8601 datetime, got list"),
        ({"a": {"lt": float("nan")}}, "filter.a.lt: expected a finite number"),
        ({"a": {"gte": 1, "lt": "2024-01-01"}}, "filter.a: range bounds mix numbers and datetimes"),
        ({"a": {"exists": "yes"}}, "filter.a.exists: expected true or false, got string"),
        ({"not": {"and": [{"a": {"eq": 1}}, {"b": {"nope": 1}}]}}, "filter.not.and[1].b: unknown operator 'nope'"),
    ],
)
def test_bad_input_names_the_part(raw, message):
    with pytest.raises(BadInput) as info:
        parse_filter(raw)
    assert message in info.value.message
    assert info.value.code == "BAD_INPUT"


def test_depth_limit():
    raw: dict = {"a": {"eq": 1}}
    for _ in range(MAX_FILTER_DEPTH):
        raw = {"not": raw}
    assert isinstance(parse_filter(raw), Not)
    with pytest.raises(BadInput, match=f"nested deeper than {MAX_FILTER_DEPTH}"):
        parse_filter({"and": [raw]})


def test_condition_limit():
    within = {"and": [{f"f{i}": {"eq": i}} for i in range(MAX_FILTER_CONDITIONS)]}
    assert len(parse_filter(within).items) == MAX_FILTER_CONDITIONS
    beyond = {"and": [*within["and"], {"last": {"exists": True}}]}
    with pytest.raises(BadInput, match=rf"filter.and\[{MAX_FILTER_CONDITIONS}\].last.exists: more than"):
        parse_filter(beyond)


def test_in_list_and_field_length_limits():
    with pytest.raises(BadInput, match=f"more than {MAX_IN_VALUES} values"):
        parse_filter({"a": {"in": list(range(MAX_IN_VALUES + 1))}})
    with pytest.raises(BadInput, match="longer than 256"):
        parse_filter({"a" * 257: {"eq": 1}})


# -- reference semantics ------------------------------------------------------------------------

DOC = {
    "topic": "cooking",
    "n": 150,
    "price": 9.5,
    "flag": True,
    "tags": ["x", "y"],
    "nums": [1, 7],
    "when": "2024-03-01T10:00:00+02:00",
    "none": None,
    "empty": [],
    "nulls": [None],
    "author": {"name": "ann", "age": 40},
    "people": [{"name": "bob"}],
    "deep": [[1]],
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"topic": {"eq": "cooking"}}, True),
        ({"n": {"eq": 150}}, True),
        ({"n": {"eq": "150"}}, False),  # strict types
        ({"flag": {"eq": 1}}, False),  # a bool is not an integer
        ({"flag": {"eq": True}}, True),
        ({"price": {"eq": 9}}, False),
        ({"tags": {"eq": "y"}}, True),  # any element
        ({"tags": {"ne": "y"}}, False),  # ne: no element equals
        ({"tags": {"ne": "z"}}, True),
        ({"tags": {"nin": ["y", "z"]}}, False),
        ({"tags": {"in": ["z", "x"]}}, True),
        ({"missing": {"eq": 1}}, False),  # positive conditions need the field
        ({"missing": {"ne": 1}}, True),  # negations hold on a missing field
        ({"missing": {"nin": [1]}}, True),
        ({"none": {"ne": 1}}, True),
        ({"nums": {"gt": 5, "lt": 6}}, False),  # both bounds on the same element
        ({"nums": {"gte": 7, "lte": 7}}, True),
        ({"price": {"gt": 9, "lt": 10}}, True),
        ({"flag": {"gte": 0}}, False),  # ranges never see bools
        ({"topic": {"gte": 0}}, False),
        ({"when": {"gte": "2024-03-01T08:00:00Z", "lte": "2024-03-01T08:00:00Z"}}, True),  # offsets compared
        ({"when": {"gt": "2024-03-01T08:00:00Z"}}, False),
        ({"when": {"gt": 0}}, False),  # a numeric range ignores strings
        ({"author.name": {"eq": "ann"}}, True),  # dotted path
        ({"author.age": {"gte": 40}}, True),
        ({"people.name": {"eq": "bob"}}, False),  # lists are not walked into
        ({"deep": {"eq": 1}}, False),  # one level of list is flattened, no more
        ({"topic": {"exists": True}}, True),
        ({"missing": {"exists": True}}, False),
        ({"none": {"exists": True}}, False),
        ({"empty": {"exists": True}}, False),
        ({"nulls": {"exists": True}}, True),  # a list with a null in it is not empty
        ({"author": {"exists": True}}, True),
        ({"missing": {"exists": False}}, True),
        ({"not": {"topic": {"eq": "cooking"}}}, False),
        ({"or": [{"n": {"lt": 0}}, {"tags": {"in": ["x"]}}]}, True),
        ({"and": [{"n": {"lt": 0}}, {"tags": {"in": ["x"]}}]}, False),
        ({"topic": {"eq": "cooking", "ne": "baking"}, "n": {"gte": 100}}, True),
    ],
)
def test_matches(raw, expected):
    assert matches(parse_filter(raw), DOC) is expected


def test_not_is_boolean_negation():
    for raw in ({"tags": {"eq": "y"}}, {"missing": {"gte": 1}}, {"nulls": {"exists": True}}):
        node = parse_filter(raw)
        assert matches(Not(node), DOC) is (not matches(node, DOC))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01T00:00:00Z", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01T02:00:00+02:00", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01 00:00:00.5", datetime(2024, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)),
        ("2024-01-01T00:00:00.123456789Z", datetime(2024, 1, 1, 0, 0, 0, 123_456, tzinfo=UTC)),
        ("2024-01-01 10:00", datetime(2024, 1, 1, 10, tzinfo=UTC)),
        ("2024-01-01", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01T05:30:00-01:30", datetime(2024, 1, 1, 7, tzinfo=UTC)),
        ("yesterday", None),
        ("2024-13-01", None),
        ("12", None),
    ],
)
def test_payload_datetimes_are_read_like_qdrant(text, expected):
    parsed = parse_payload_datetime(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0)


# -- indexed fields -----------------------------------------------------------------------------


def test_indexed_field_specs():
    assert parse_indexed_field("topic") == IndexedField("topic", "keyword")
    assert parse_indexed_field("author.age:integer") == IndexedField("author.age", "integer")
    with pytest.raises(BadInput, match="unknown index type 'bigint'"):
        parse_indexed_field("n:bigint")
    with pytest.raises(BadInput, match="invalid field name"):
        parse_indexed_field("a b:keyword")
