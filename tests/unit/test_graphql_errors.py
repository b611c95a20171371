"""What clients see of errors: codes from API.md, never internals."""

import pytest
import strawberry

from app.errors import BadInput, ModelUnavailable
from app.graphql.errors import PublicErrors
from app.graphql.limits import TotalTextsLimit
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter


@strawberry.type
class Node:
    @strawberry.field
    def child(self) -> "Node":
        return Node()

    @strawberry.field
    def leaf(self) -> int:
        return 1


@strawberry.type
class Query:
    @strawberry.field
    def bad(self) -> int:
        raise BadInput("texts[3] is empty", index=3)

    @strawberry.field
    def unavailable(self) -> int:
        raise ModelUnavailable("model X is DOWNLOADING", state="DOWNLOADING")

    @strawberry.field
    def boom(self) -> int:
        raise RuntimeError("password=hunter2 at /srv/secret")

    @strawberry.field
    def node(self) -> Node:
        return Node()

    @strawberry.field
    def embed(self, texts: list[str]) -> int:
        return len(texts)


schema = strawberry.Schema(
    Query,
    extensions=[
        PublicErrors,
        lambda: QueryDepthLimiter(max_depth=4),
        lambda: MaxAliasesLimiter(max_alias_count=3),
        lambda: TotalTextsLimit(max_total=5),
    ],
)


async def run(query: str, variables=None):
    result = await schema.execute(query, variable_values=variables)
    assert result.errors, result
    return result.errors[0]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("{ bad }", "BAD_INPUT"),
        ("{ unavailable }", "MODEL_UNAVAILABLE"),
        ("{ boom }", "INTERNAL"),
        ("{ bad ", "GRAPHQL_PARSE_FAILED"),
        ("{ nope }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ node { child { child { child { child { leaf } } } } } }", "BAD_INPUT"),
        ("{ a: bad b: bad c: bad d: bad }", "BAD_INPUT"),
        ('{ a: embed(texts: ["1","2","3"]) b: embed(texts: ["4","5","6"]) }', "BAD_INPUT"),
    ],
)
async def test_error_codes(query, code):
    error = await run(query)
    assert error.extensions["code"] == code, error


async def test_domain_error_keeps_its_details_and_internal_errors_hide_theirs():
    bad = await run("{ bad }")
    assert bad.message == "texts[3] is empty" and bad.extensions["index"] == 3
    boom = await run("{ boom }")
    assert "hunter2" not in boom.message and "secret" not in str(boom.extensions)


async def test_texts_passed_as_variables_count_too():
    error = await run("query($t: [String!]!) { a: embed(texts: $t) }", {"t": list("abcdefg")})
    assert error.extensions["code"] == "BAD_INPUT" and "7 texts" in error.message
