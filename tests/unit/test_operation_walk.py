"""OperationWalk on documents validation would refuse or that would take forever to walk naively."""

import pytest
from graphql import parse

from app.graphql.limits import count_costly_items
from app.graphql.walk import OperationWalk


def texts_in(query: str, variables: dict | None = None, operation_name: str | None = None) -> int:
    return count_costly_items(OperationWalk(parse(query), variables or {}, operation_name))


@pytest.mark.timeout(10)
def test_fragments_that_double_at_every_level_are_counted_without_walking_every_copy():
    # F0 runs F1 twice, F1 runs F2 twice, ...: 2**60 runs of `embed`, far too many to enumerate.
    levels = 60
    fragments = " ".join(f"fragment F{i} on Node {{ a: child {{ ...F{i + 1} }} b: child {{ ...F{i + 1} }} }}" for i in range(levels))
    query = f'{{ node {{ ...F0 }} }} {fragments} fragment F{levels} on Node {{ embed(texts: ["x", "y"]) }}'
    assert texts_in(query) == 2 * 2**levels


@pytest.mark.timeout(10)
def test_a_fragment_cycle_ends_the_walk():
    query = (
        '{ node { ...A } } fragment A on Node { child { ...B } embed(texts: ["a"]) } '
        'fragment B on Node { child { ...A } ...B embed(texts: ["b", "c"]) }'
    )
    # A's embed, B's embed under A's child, A's again under B's child; then A's child would repeat.
    assert texts_in(query) == 1 + 2 + 1


def test_one_parsed_document_is_counted_with_each_request_s_variables():
    document = parse("query($t: [String!]!, $on: Boolean = true) { a: embed(texts: $t) b: embed(texts: $t) @include(if: $on) }")
    assert count_costly_items(OperationWalk(document, {"t": ["1", "2", "3"]}, None)) == 6
    assert count_costly_items(OperationWalk(document, {"t": ["1"]}, None)) == 2
    assert count_costly_items(OperationWalk(document, {"t": ["1"], "on": False}, None)) == 1


def test_a_missing_or_unknown_operation_runs_nothing():
    document = 'query A { embed(texts: ["1"]) } query B { embed(texts: ["1", "2"]) }'
    assert texts_in(document, operation_name="B") == 2
    assert texts_in(document, operation_name="C") == 0
    assert texts_in(document) == 0  # OperationRules refuses it first: operationName is needed
