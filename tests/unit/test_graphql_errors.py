"""What clients see of errors: codes from schema.graphql and README "Errors", never internals."""

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

    @strawberry.field
    def embed(self, texts: list[str]) -> int:
        return len(texts)


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


INGESTED: list[list[str]] = []  # what the test Mutation was asked to store


@strawberry.type
class Mutation:
    @strawberry.mutation
    def ingest(self, documents: list[str]) -> int:
        INGESTED.append(documents)
        return len(documents)


# The production schema class and rules, over a small test Query, with tight limits.
LIMITS = LimitSettings(max_query_depth=4, max_aliases=3, max_texts_per_request=5, max_documents_per_ingest=5)
schema = CitadelSchema(Query, mutation=Mutation, rules=OperationRules(LIMITS))


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


# -- the cost and argument rules walk what executes: fragments, @skip/@include, defaults --------

THREE = '["1","2","3"]'


@pytest.mark.parametrize(
    "query",
    [
        f"{{ ...F }} fragment F on Query {{ a: embed(texts: {THREE}) b: embed(texts: {THREE}) }}",
        f"{{ ...F }} fragment F on Query {{ a: embed(texts: {THREE}) ...G }} fragment G on Query {{ b: embed(texts: {THREE}) }}",
        f"{{ a: embed(texts: {THREE}) ... on Query {{ b: embed(texts: {THREE}) }} }}",
        f"{{ a: node {{ ...F }} b: node {{ ...F }} }} fragment F on Node {{ embed(texts: {THREE}) }}",
    ],
    ids=["named", "nested-named", "inline", "one-fragment-under-two-fields"],
)
async def test_texts_through_fragments_count_as_often_as_they_run(query, run):
    error = await run(query)
    assert error.extensions["code"] == "BAD_INPUT" and "6 texts" in error.message, error


async def test_documents_through_a_mutation_fragment_count_and_nothing_is_stored(run):
    INGESTED.clear()
    mutation = f"mutation {{ ...M }} fragment M on Mutation {{ a: ingest(documents: {THREE}) b: ingest(documents: {THREE}) }}"
    error = await run(mutation)
    assert error.extensions["code"] == "BAD_INPUT" and "6 texts" in error.message, error
    assert INGESTED == []
    allowed = await run.runner(f"mutation {{ ...M }} fragment M on Mutation {{ a: ingest(documents: {THREE}) }}")
    assert allowed.errors is None and allowed.data == {"a": 3} and INGESTED == [["1", "2", "3"]]


async def test_fields_that_merge_run_once_and_count_once(run):
    # The same response key from two spreads (and a repeated spread) is one execution of `embed`.
    query = f"{{ ...F ...F ...G }} fragment F on Query {{ embed(texts: {THREE}) }} fragment G on Query {{ embed(texts: {THREE}) }}"
    result = await run.runner(query)
    assert result.errors is None and result.data == {"embed": 3}, result


async def test_skipped_fields_do_not_count_and_included_ones_do(run):
    query = f"query($on: Boolean!) {{ a: embed(texts: {THREE}) @skip(if: true) b: embed(texts: {THREE}) c: embed(texts: {THREE}) @include(if: $on) }}"
    result = await run.runner(query, variable_values={"on": False})
    assert result.errors is None and result.data == {"b": 3}, result
    error = await run(query, {"on": True})
    assert error.extensions["code"] == "BAD_INPUT" and "6 texts" in error.message, error


async def test_a_variable_default_counts_and_is_checked_like_a_given_value(run):
    texts = await run('query($t: [String!]! = ["1","2","3","4","5","6"]) { embed(texts: $t) }')
    assert texts.extensions["code"] == "BAD_INPUT" and "6 texts" in texts.message, texts
    name = await run('query($n: String! = "a\\u0000b") { stored(name: $n) }')
    assert name.extensions == {"code": "BAD_INPUT", "argument": "name"}, name


async def test_unstorable_arguments_inside_fragments_never_reach_a_resolver(run):
    error = await run("query($n: String!) { ...F } fragment F on Query { stored(name: $n) }", {"n": "a\x00b"})
    assert error.extensions == {"code": "BAD_INPUT", "argument": "name"}, error


async def test_only_the_chosen_operation_counts(run):
    document = f"query A {{ a: embed(texts: {THREE}) b: embed(texts: {THREE}) }} query B {{ embed(texts: {THREE}) }}"
    chosen = await run.runner(document, operation_name="B")
    assert chosen.errors is None and chosen.data == {"embed": 3}, chosen
    refused = await run.runner(document, operation_name="A")
    assert refused.errors and refused.errors[0].extensions["code"] == "BAD_INPUT", refused
