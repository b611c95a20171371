"""What clients see of errors: codes from API.md, never internals."""

import asyncpg
import pytest
import strawberry

from app.errors import BadInput, ModelUnavailable
from app.graphql.operation_rules import OperationRules
from app.graphql.schema import CitadelSchema
from app.settings import LimitSettings


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

    @strawberry.field
    def stored(self, name: str) -> int:
        # What asyncpg raises for a value PostgreSQL cannot hold, had it got this far.
        raise asyncpg.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00')


# The production schema class and rules, over a small test Query, with tight limits.
LIMITS = LimitSettings(max_query_depth=4, max_aliases=3, max_texts_per_request=5, max_documents_per_ingest=5)
schema = CitadelSchema(Query, rules=OperationRules(LIMITS))


async def first_result(query: str, variable_values=None, operation_name=None):
    """What the WebSocket transports get: Strawberry's stream(), through the rules' extension."""
    source = await schema.stream(query, variable_values=variable_values, operation_name=operation_name)
    async for result in source:
        await source.aclose()
        return result
    raise AssertionError("stream() gave no result")


TRANSPORTS = {"http": schema.execute, "websocket": first_result}


@pytest.fixture(params=list(TRANSPORTS))
def run(request):
    """The same rules on both paths: execute() runs them itself, stream() through the extension."""
    runner = TRANSPORTS[request.param]

    async def first_error(query: str, variables=None):
        result = await runner(query, variable_values=variables)
        assert result.errors, result
        return result.errors[0]

    first_error.runner = runner
    return first_error


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
async def test_error_codes(query, code, run):
    error = await run(query)
    assert error.extensions["code"] == code, error


async def test_domain_error_keeps_its_details_and_internal_errors_hide_theirs(run):
    bad = await run("{ bad }")
    assert bad.message == "texts[3] is empty" and bad.extensions["index"] == 3
    boom = await run("{ boom }")
    assert "hunter2" not in boom.message and "secret" not in str(boom.extensions)


async def test_cached_documents_get_the_same_codes_the_second_time(run):
    for _ in range(2):  # the parser and validation caches must not lose the mapping
        assert (await run("{ bad ")).extensions["code"] == "GRAPHQL_PARSE_FAILED"
        assert (await run("{ nope }")).extensions["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert (await run("{ a: bad b: bad c: bad d: bad }")).extensions["code"] == "BAD_INPUT"


async def test_texts_passed_as_variables_count_too(run):
    error = await run("query($t: [String!]!) { a: embed(texts: $t) }", {"t": list("abcdefg")})
    assert error.extensions["code"] == "BAD_INPUT" and "7 texts" in error.message


async def test_a_database_data_error_is_bad_input(run):
    error = await run('{ stored(name: "fine") }')
    assert error.extensions["code"] == "BAD_INPUT" and "cannot be stored" in error.message, error


@pytest.mark.parametrize("value", ["a\x00b", "a\ud800b"], ids=["nul", "surrogate"])
async def test_unstorable_arguments_never_reach_a_resolver(value, run):
    error = await run("query($n: String!) { stored(name: $n) }", {"n": value})
    assert error.extensions == {"code": "BAD_INPUT", "argument": "name"}, error


async def test_several_operations_need_an_operation_name(run):
    error = await run("query A { embed(texts: []) } query B { embed(texts: []) }")
    assert error.extensions["code"] == "BAD_INPUT" and "operationName" in error.message
    chosen = await run.runner('query A { embed(texts: []) } query B { embed(texts: ["x"]) }', operation_name="B")
    assert chosen.errors is None and chosen.data == {"embed": 1}
