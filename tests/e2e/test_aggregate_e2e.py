"""`aggregate` and sorted `documents` over HTTP on a real server: the answers that the "##
Aggregate" section of docs/from-weaviate.md promises (its Citadel examples, run on a copy of the
guide's collection), and bad input answered BAD_INPUT with extensions.code, never INTERNAL."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.test_weaviate_guide import GUIDE, guide_blocks

NAME = "articles_aggregate_e2e"


def section_examples() -> list[str]:
    """The Citadel operations of the guide's Aggregate section, on this test's collection."""
    text = GUIDE.read_text()
    section = text[text.index("\n## Aggregate\n") :]
    ops = [op for kind, op in guide_blocks() if kind == "Citadel" and op in section]
    return [op.replace('"articles"', f'"{NAME}"') for op in ops]


def ask(server: Any, operation: str) -> dict[str, Any]:
    body = server.graphql(operation)
    assert "errors" not in body, (operation, body)
    return body["data"]


@pytest.fixture(scope="module")
def articles(live_server):
    create, ingest = [op for kind, op in guide_blocks() if kind == "Citadel"][:2]
    ask(live_server, create.replace('"articles"', f'"{NAME}"'))
    assert ask(live_server, ingest.replace('"articles"', f'"{NAME}"'))["ingest"] == {"inserted": 8, "failed": 0}
    return live_server


def test_the_guides_aggregate_examples_give_the_promised_answers(articles):
    examples = section_examples()
    assert len(examples) == 5
    count, stats, top, groups, listing = (ask(articles, op) for op in examples)
    assert count == {"aggregate": {"count": 8}}
    # food: 2019, 2021, 2023, 2024
    assert stats["aggregate"] == {
        "count": 4,
        "fields": [{"field": "year", "count": 4, "min": 2019, "max": 2024, "mean": 2021.75, "sum": 8087.0}],
    }
    # travel and tech tie at 2: the value decides
    assert top["aggregate"]["fields"] == [
        {"field": "category", "topValues": [{"value": "food", "count": 4}, {"value": "tech", "count": 2}]}
    ]
    assert groups["aggregate"] == {
        "groupCount": 3,
        "groups": [
            {"value": "food", "count": 4, "fields": [{"field": "year", "mean": 2021.75, "max": 2024}]},
            {"value": "tech", "count": 2, "fields": [{"field": "year", "mean": 2022.5, "max": 2024}]},
            {"value": "travel", "count": 2, "fields": [{"field": "year", "mean": 2021.0, "max": 2022}]},
        ],
    }
    page = listing["documents"]
    assert [item["id"] for item in page["items"]] == ["a8", "a3", "a2", "a7"]
    rest = ask(articles, examples[4].replace("first: 4)", f'first: 4, after: "{page["nextCursor"]}")'))
    assert [item["id"] for item in rest["documents"]["items"]] == ["a6", "a5"]
    assert rest["documents"]["nextCursor"] is None


@pytest.mark.parametrize(
    "operation",
    [
        '{ documents(collection: "%s", sort: [{field: "text"}]) { items { id } } }',  # no document has it
        '{ documents(collection: "%s", sort: [{field: "a b"}]) { items { id } } }',
        '{ documents(collection: "%s", sort: [{field: "year"}], after: "s:bm9wZQ") { items { id } } }',
        '{ aggregate(collection: "%s", fields: ["year", "bad!"]) { count } }',
        '{ aggregate(collection: "%s", groupBy: "category", maxGroups: 0) { count } }',
        '{ aggregate(collection: "%s", filter: {year: {gte: true}}) { count } }',
    ],
)
def test_bad_input_over_http_is_bad_input(articles, operation):
    body = articles.graphql(operation % NAME)
    assert body.get("errors"), body
    assert {e["extensions"]["code"] for e in body["errors"]} == {"BAD_INPUT"}, body
    assert not re.search(r"Traceback|INTERNAL", str(body))
