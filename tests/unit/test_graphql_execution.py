"""The float-list shortcut in CitadelExecutionContext returns what stock graphql-core returns."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest
import strawberry
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from app.domain.access import INTERNAL
from app.settings import Settings
from app.graphql.execution import CitadelExecutionContext
from app.graphql.schema import build_schema
from app.services.embedding import EmbedOutcome
from app.services.search import Hit, SearchOutcome

RNG = np.random.default_rng(3)
VECTORS = RNG.standard_normal((3, 384)).astype(np.float32)


class FakeEmbedder:
    async def run(self, request, **_: object) -> EmbedOutcome:
        n = len(request.texts)
        return EmbedOutcome(model="m", dimensions=384, vectors=VECTORS[:n], cached=[True, False, True][:n])


class FakeSearch:
    async def run(self, request, **_: object) -> SearchOutcome:
        hits = [Hit(id=f"d{i}", score=float(s), text=f"t{i}", metadata={"n": i}) for i, s in enumerate(VECTORS[0, :4])]
        return SearchOutcome(collection=request.collection, model="m", hits=hits, took_ms=1.25)


class NoLimit:
    async def check(self, principal: object) -> None:
        return None


# What AccessGate and the resolvers read of a request's context, for the server itself.
CONTEXT = SimpleNamespace(
    services=SimpleNamespace(embedder=FakeEmbedder(), search=FakeSearch(), settings=Settings(), limiter=NoLimit()),
    principal=INTERNAL,
    ws_secret=None,
    auth_error=None,
    reset_loaders=lambda: None,
    scan_budget=None,  # search passes the request's scan budget on (None: the service makes one)
)
QUERIES = [
    ('{ embed(texts: ["a", "b", "c"]) { model dimensions embeddings { index vector cached } } }', None),
    ('query($t: [String!]!) { embed(texts: $t) { embeddings { vector vectorBase64 } } }', {"t": ["x", "y"]}),
    ('{ search(collection: "c", query: "q") { collection model tookMs hits { id score text metadata } } }', None),
]


async def _json(schema: strawberry.Schema, query: str, variables) -> str:
    result = await schema.execute(query, variable_values=variables, context_value=CONTEXT)
    assert result.errors is None, result.errors
    return json.dumps(result.data)


@pytest.mark.parametrize(("query", "variables"), QUERIES)
async def test_same_json_as_the_stock_execution(query, variables):
    fast = build_schema()
    stock = build_schema(execution_context_class=StrawberryGraphQLCoreExecutionContext)
    assert fast.execution_context_class is CitadelExecutionContext
    assert await _json(fast, query, variables) == await _json(stock, query, variables)


async def test_vector_base64_decodes_to_the_vector():
    result = await build_schema().execute(QUERIES[1][0], variable_values=QUERIES[1][1], context_value=CONTEXT)
    for row, embedding in zip(VECTORS, result.data["embed"]["embeddings"]):
        decoded = np.frombuffer(base64.b64decode(embedding["vectorBase64"]), dtype="<f4")
        assert np.array_equal(decoded, row)
        assert embedding["vector"] == row.tolist()


@strawberry.type
class Odd:
    @strawberry.field
    def floats(self, kind: str) -> list[float]:
        return {"ints": [1, 2], "nan": [1.0, float("nan")], "none": [1.0, None], "ok": [0.5, -2.0]}[kind]  # type: ignore[return-value]


@pytest.mark.parametrize("kind", ["ints", "nan", "none", "ok"])
async def test_anything_but_finite_floats_takes_the_stock_path(kind):
    query = f'{{ floats(kind: "{kind}") }}'
    fast = strawberry.Schema(Odd, execution_context_class=CitadelExecutionContext)
    stock = strawberry.Schema(Odd)
    mine, theirs = await fast.execute(query), await stock.execute(query)
    assert mine.data == theirs.data
    assert [e.message for e in mine.errors or []] == [e.message for e in theirs.errors or []]
    if kind == "ints":
        assert mine.data == {"floats": [1.0, 2.0]} and all(type(v) is float for v in mine.data["floats"])
    if kind in ("nan", "none"):
        assert mine.errors


async def test_float_vectors_skip_per_element_completion(monkeypatch):
    calls = []
    original = CitadelExecutionContext.complete_list_item_value

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CitadelExecutionContext, "complete_list_item_value", counting)
    await _json(build_schema(), *QUERIES[0])
    assert len(calls) == 3  # the three Embedding objects; none of their 3 x 384 floats
