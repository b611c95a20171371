"""Schemathesis, the property-based API fuzzer, over every root field of schema.graphql against the
real server (this checkout's `citadel serve`, the machine's PostgreSQL/Redis or embedded ones).

Every generated operation must get an answer a client can act on: no 5xx, no `INTERNAL` code, no
error without an `extensions.code`; the server log gets no traceback; and the documents stored
before the run are unchanged after it. The fuzzer holds the ADMIN key: every mutation is open to
it, and the names it makes up do not hit the stored collection.

CITADEL_TEST_FUZZ_EXAMPLES sets the examples per root field (default 200: about 3,600 requests, positive
and negative, as schemathesis generates them).
"""

from __future__ import annotations

import os
from pathlib import Path

import graphql
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import nodes

from tests.e2e.conftest import bundled_server
from tests.support.databases import temporary_database
from tests.support.server import LiveServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("CITADEL_TEST_FUZZ_EXAMPLES", "200"))
COLLECTION = "fuzzed"
DOCS = [{"id": f"doc-{i}", "text": f"fuzz target document {i}", "metadata": {"n": i}} for i in range(3)]
STORED = "query($c: String!) { documents(collection: $c) { items { id text metadata contentHash } } }"
ADMIN_KEY = "ctd-fuzz-admin-secret-0123456789abcdef"

# Scalars of our own: values of the right shape and hostile ones (NUL, odd sizes, nesting).
json_values = st.recursive(
    st.none().map(lambda _: nodes.Null)
    | st.booleans().map(nodes.Boolean)
    | st.integers().map(nodes.Int)
    | st.floats(allow_nan=False, allow_infinity=False).map(nodes.Float)
    | st.text(max_size=20).map(nodes.String),
    lambda children: st.lists(children, max_size=4).map(nodes.List)
    | st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True), children, max_size=4).map(
        lambda d: nodes.Object([graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=v) for k, v in d.items()])
    ),
    max_leaves=12,
)
schemathesis.graphql.scalar("JSON", json_values)
schemathesis.graphql.scalar("Long", st.integers(min_value=-(2**70), max_value=2**70).map(nodes.Int))
schemathesis.graphql.scalar("DateTime", st.datetimes().map(lambda d: nodes.String(d.isoformat())))
# Files travel in multipart requests only; in a JSON body an Upload is whatever a client puts there.
schemathesis.graphql.scalar("Upload", st.none().map(lambda _: nodes.Null) | st.text(max_size=20).map(nodes.String))

schema = schemathesis.graphql.from_path(ROOT / "schema.graphql")  # the contract, as clients see it


@pytest.fixture(scope="module")
async def fuzz_database():
    async with temporary_database("citadel_fuzz") as url:
        yield url


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, fuzz_database):
    live = bundled_server(
        tmp_path_factory.mktemp("citadel-fuzz"),
        fuzz_database,
        "fuzz-server.log",
        CITADEL_AUTH__REQUIRED="true",
        CITADEL_AUTH__ADMIN_KEY=ADMIN_KEY,
    ).start()
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    live.admin = admin  # type: ignore[attr-defined]
    assert "errors" not in post(live, "mutation { createCollection(name: \"fuzzed\") { name } }", headers=admin)
    ingested = post(
        live,
        "mutation($d: [DocumentInput!]!) { ingest(collection: \"fuzzed\", documents: $d) { inserted } }",
        {"d": DOCS},
        headers=admin,
    )
    assert ingested["data"]["ingest"]["inserted"] == len(DOCS), ingested
    live.stored_before = post(live, STORED, {"c": COLLECTION}, headers=admin)["data"]  # type: ignore[attr-defined]
    try:
        yield live
    finally:
        assert live.stop() == 0


def post(live: LiveServer, query: str, variables: dict | None = None, headers: dict | None = None) -> dict:
    import httpx

    response = httpx.post(
        live.url + "/graphql", json={"query": query, "variables": variables or {}}, headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


# One test per root field, named after it (schemathesis' own schema.parametrize() names every
# case alike, and pytest-xdist, which schedules by test id, would run one of them only).
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_every_generated_operation_gets_a_coded_answer(operation, fuzz_server):
    @given(case=st.one_of(*(operation.as_strategy(mode) for mode in schema.config.generation.modes)))  # positive and negative
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same requests every run: a failure here reproduces
    )
    def every_case(case) -> None:
        response = case.call(base_url=fuzz_server.url + "/graphql", headers=fuzz_server.admin, timeout=60)
        assert response.status_code < 500, (case.body, response.status_code, response.text[:500])
        body = response.json()
        for error in body.get("errors") or []:
            code = (error.get("extensions") or {}).get("code")
            assert code is not None and code != "INTERNAL", (case.body, error)

    every_case()


def test_the_fuzzed_server_kept_its_data_and_logged_no_traceback(fuzz_server):
    # Runs after the fuzz cases of this module (pytest keeps file order).
    after = post(fuzz_server, STORED, {"c": COLLECTION}, headers=fuzz_server.admin)["data"]
    assert after == fuzz_server.stored_before
    log = fuzz_server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[log.find("Traceback") - 2000 : log.find("Traceback") + 3000]
