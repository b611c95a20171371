"""docs/from-weaviate.md: every Citadel example runs as written against a real server, every
Weaviate example has its Citadel counterpart, and the answers are the ones the guide promises.
Also end-to-end GraphQL checks of the search extras (errors with codes, groups, collection)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "from-weaviate.md"


def guide_blocks() -> list[tuple[str, str]]:
    """(`Weaviate` | `Citadel`, operation) for each graphql block, in order."""
    blocks = re.findall(r"```graphql\n(.*?)```", GUIDE.read_text(), flags=re.S)
    out = []
    for block in blocks:
        first, _, rest = block.partition("\n")
        assert first in ("# Weaviate", "# Citadel"), block
        out.append((first[2:], rest.strip()))
    return out


def test_every_weaviate_query_has_a_citadel_counterpart():
    blocks = guide_blocks()
    text = GUIDE.read_text()
    for kind, _ in blocks:
        assert kind in ("Weaviate", "Citadel")
    for i, (kind, _) in enumerate(blocks):
        if kind == "Weaviate":
            assert i + 1 < len(blocks) and blocks[i + 1][0] == "Citadel", blocks[i][1]
    for heading in ("nearText", "nearVector", "nearObject", "hybrid", "bm25", "where", "groupBy", "sort", "autocut",
                    "limit, offset, after"):
        assert f"### {heading}\n" in text, heading
    assert "\n## Get\n" in text and "\n## Explore\n" in text and "\n## Aggregate\n" in text


def run(server: Any, operation: str) -> dict[str, Any]:
    variables = None
    if "$vector" in operation:  # nearVector: a vector of the collection's dimensions, from embed
        embedded = server.graphql('{ embed(texts: ["a warm dinner"], kind: QUERY) { embeddings { vector } } }')
        variables = {"vector": embedded["data"]["embed"]["embeddings"][0]["vector"]}
    body = server.graphql(operation, variables)
    assert "errors" not in body, (operation, body)
    assert body["data"], operation
    return body["data"]


def test_every_citadel_example_of_the_guide_runs(live_server):
    answers = [run(live_server, op) for kind, op in guide_blocks() if kind == "Citadel"]
    assert len(answers) >= 18
    # The Get and Explore examples, in the guide's order (Aggregate's come after them).
    (_, ingest, near_text, near_vector, near_object, recommend, hybrid, bm25, where, group_by, sort, autocut,
     diversity, paged, after, _, _, explore) = answers[:18]
    ids = lambda answer: [h["id"] for h in answer["search"]["hits"]]  # noqa: E731
    assert ingest["ingest"] == {"inserted": 8, "failed": 0}
    assert len(ids(near_text)) == 3 and len(ids(near_vector)) == 3
    assert ids(near_vector) == ids(near_text)  # the same query, embedded as a QUERY either way
    assert len(ids(near_object)) == 3 and "a1" not in ids(near_object)
    assert len(ids(recommend)) == 3 and not {"a1", "a3", "a5"} & set(ids(recommend))
    assert ids(hybrid)[0] == "a6" and ids(bm25) == ["a8"]
    assert ids(where) and set(ids(where)) <= {"a2", "a3", "a8"}
    groups = group_by["search"]["groups"]
    assert len(groups) == 2 and groups[0]["value"] == "food" and all(1 <= len(g["hits"]) <= 2 for g in groups)
    assert [i["id"] for i in sort["documents"]["items"]] == ["a7", "a8", "a3"]  # 2024, 2024 (by id), 2023
    assert 1 <= len(ids(autocut)) <= 10 and len(ids(diversity)) == 4 and len(ids(paged)) == 2
    assert [i["id"] for i in after["documents"]["items"]] == ["a3", "a4", "a5"]
    hits = explore["searchCollections"]["hits"]
    assert len(hits) == 4 and {h["collection"] for h in hits} == {"articles", "places"}


def test_search_extras_over_graphql(live_server):
    live_server.graphql('mutation { createCollection(name: "extras_e2e", indexedFields: ["k"]) { name } }')
    docs = ", ".join(
        f'{{id: "x{i}", text: "{text}", metadata: {{k: "{k}"}}}}'
        for i, (text, k) in enumerate([
            ("Cats sleep most of the day.", "pets"), ("Kittens play with yarn.", "pets"),
            ("Dogs need daily walks.", "pets"), ("Rust borrow checker errors explained.", "code"),
            ("Python asyncio event loops.", "code"), ("Tomato soup with basil.", "food"),
        ])
    )
    body = live_server.graphql(f'mutation {{ ingest(collection: "extras_e2e", documents: [{docs}]) {{ inserted }} }}')
    assert body["data"]["ingest"]["inserted"] == 6
    body = live_server.graphql(
        '{ search(collection: "extras_e2e", similarTo: "x0", groupBy: {field: "k", groups: 3, hitsPerGroup: 1}) {'
        " hits { id collection } groups { value hits { id } } } }"
    )
    result = body["data"]["search"]
    assert [g["value"] for g in result["groups"]][0] == "pets" and len(result["groups"]) == 3
    assert "x0" not in [h["id"] for h in result["hits"]] and {h["collection"] for h in result["hits"]} == {"extras_e2e"}
    body = live_server.graphql('{ search(collection: "extras_e2e", query: "cats") { groups { value } } }')
    assert body["data"]["search"]["groups"] is None  # only with groupBy
    for bad, code in (
        ('similarTo: "nope"', "NOT_FOUND"),
        ('query: "x", similarTo: "x0"', "BAD_INPUT"),
        ('query: "x", diversity: 2', "BAD_INPUT"),
        ('query: "x", autocut: 0', "BAD_INPUT"),
        ('query: "x", groupBy: {field: "k", groups: 0}', "BAD_INPUT"),
        ('recommend: {positive: ["x0"], negative: ["x0"]}', "BAD_INPUT"),
        ('similarTo: "x0", mode: KEYWORD', "BAD_INPUT"),
    ):
        body = live_server.graphql(f'{{ search(collection: "extras_e2e", {bad}) {{ hits {{ id }} }} }}')
        assert body["errors"][0]["extensions"]["code"] == code, (bad, body)
    body = live_server.graphql('{ searchCollections(query: "x", collections: []) { tookMs } }')
    assert body["errors"][0]["extensions"]["code"] == "BAD_INPUT"
    body = live_server.graphql('{ searchCollections(query: "x", collections: ["no_such_collection"]) { tookMs } }')
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
