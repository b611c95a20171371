"""The GraphQL examples in the README run as written against a real server."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_examples() -> list[str]:
    blocks = re.findall(r"```graphql\n(.*?)```", README.read_text(), flags=re.S)
    # One block may hold several operations, each starting at the beginning of a line.
    operations: list[str] = []
    for block in blocks:
        for chunk in re.split(r"\n(?=mutation |\{ )", "\n" + block.strip()):
            if chunk.strip():
                operations.append(chunk.strip())
    return operations


def test_every_readme_example_runs_without_errors(live_server):
    examples = readme_examples()
    assert len(examples) >= 5, examples
    for operation in examples:
        body = live_server.graphql(operation)
        assert "errors" not in body, (operation, body)
        assert body["data"], operation
    search = next(op for op in examples if op.startswith("{ search"))
    hits = live_server.graphql(search)["data"]["search"]["hits"]
    assert [h["id"] for h in hits] == ["1"], hits  # the filter keeps the stew (cooking, n=120)
