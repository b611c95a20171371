"""The aggregate and sort arithmetic of app/domain/aggregation.py, without I/O."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from app.domain.aggregation import (
    Aggregation,
    FieldAccumulator,
    SortKey,
    decode_cursor,
    encode_cursor,
    page_after,
    sort_kinds,
    top_level_keys,
)
from app.domain.filters import parse_filter
from app.errors import BadInput


def test_sums_and_means_are_exact_whatever_the_order_of_the_rows():
    values = [0.1, 0.2, 0.3, 1e16, 1.0, -1e16, 2**60 + 1, 3, 1e-300]
    expected = sum(Fraction(v) for v in values)
    results = set()
    for seed in range(20):
        random.Random(seed).shuffle(values)
        acc = FieldAccumulator("x")
        for v in values:
            acc.add({"x": v})
        summary = acc.summary()
        results.add((summary.sum, summary.mean))
    assert results == {(float(expected), float(expected / len(values)))}


def test_field_stats_follow_the_filter_readings():
    acc = FieldAccumulator("a.b")
    for md in [{"a": {"b": [1, 2, "x"]}}, {"a": {"b": None}}, {"a": [{"b": 9}]}, {"a": {"b": []}}, {"a": {"b": True}}, {}]:
        acc.add(md)
    summary = acc.summary()
    assert summary.count == 2  # present, not null, not []; a list on the path is missing
    assert (summary.min, summary.max, summary.sum) == (1, 2, 3.0)  # booleans are not numbers
    assert summary.top == [(True, 1), (1, 1), (2, 1), ("x", 1)]  # ties: booleans, integers, strings


def test_datetime_extremes_need_every_string_to_be_a_datetime():
    acc = FieldAccumulator("t")
    for t in ["2024-01-02T03:00:00+02:00", "2024-01-02", "2024-01-01 23:30:00Z"]:
        acc.add({"t": t})
    summary = acc.summary()
    assert (summary.min, summary.max) == ("2024-01-01T23:30:00+00:00", "2024-01-02T01:00:00+00:00")
    acc.add({"t": "not a date"})
    assert (acc.summary().min, acc.summary().max) == (None, None)


def test_groups_count_each_list_element_once_per_document():
    state = Aggregation(parse_filter({"n": {"gte": 0}}), ["n"], "tags")
    state.add_page([("1", {"n": 1, "tags": ["a", "b", "a"]}), ("2", {"n": 2, "tags": "a"}), ("3", {"tags": ["b"]})])
    assert state.count == 2 and state.scanned == 3
    assert [(v, g.count, g.summaries()[0].sum) for v, g in state.ranked_groups()] == [("a", 2, 3.0), ("b", 1, 1.0)]


def test_only_the_needed_top_level_keys_are_read():
    node = parse_filter({"or": [{"a.b": {"eq": 1}}, {"not": {"c": {"exists": True}}}]})
    assert top_level_keys(["d.e", "a"], node) == ["a", "c", "d"]


def test_sort_kinds_refuse_mixes_lists_and_unknown_fields():
    rows = [("1", {"n": 1, "s": "x", "d": "2024-01-01", "l": [1]}), ("2", {"n": 2.5, "s": "2024-01-01", "d": "2024-02-01T00:00:00Z"})]
    assert sort_kinds([SortKey("n"), SortKey("s"), SortKey("d")], rows) == ["number", "string", "datetime"]
    for field, message in [("l", "holds a list"), ("zz", "no document"), ("x", "no document")]:
        with pytest.raises(BadInput, match=message):
            sort_kinds([SortKey(field)], rows)
    with pytest.raises(BadInput, match="mixes"):
        sort_kinds([SortKey("n")], rows + [("3", {"n": "three"})])


def test_pages_resume_strictly_after_the_cursor_with_ties_by_id():
    sort = [SortKey("n", descending=True)]
    entries = [([v], f"id{i:02d}") for i, v in enumerate([3, None, 3, 1, None, 2, 3])]
    first = page_after(entries, sort, None, 3)
    assert [e[1] for e in first] == ["id00", "id02", "id06"]
    cursor = encode_cursor(sort, ["number"], first[-1])
    after = decode_cursor(cursor, sort, ["number"])
    assert [e[1] for e in page_after(entries, sort, after, 10)] == ["id05", "id03", "id01", "id04"]
    with pytest.raises(BadInput):
        decode_cursor(cursor, [SortKey("n")], ["number"])  # another order
    with pytest.raises(BadInput, match="changed kind"):
        decode_cursor(cursor, sort, ["string"])
    with pytest.raises(BadInput):
        decode_cursor("s:" + "A" * 10, sort, ["number"])
