"""Scopes and collection grants on every root field, tenant-bound keys, rate limits on two
replicas sharing Redis, and the refusal to start with no way to be ADMIN."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.e2e.access_support import (
    ADMIN_KEY,
    BUNDLED,
    AccessServer,
    access_env,
    codes,
    create_key,
    serving,
)

pytestmark = [pytest.mark.timeout(300)]

RANK = {"READ": 1, "WRITE": 2, "ADMIN": 3}
TAG = uuid.uuid4().hex[:6]
GRANTED, OTHER = f"granted-{TAG}", f"other-{TAG}"
DOCS = [
    {"id": "a1", "text": "Acme invoices are due in thirty days.", "metadata": {"tenant": "acme", "n": 1}},
    {"id": "a2", "text": "Acme ships rockets to the desert.", "metadata": {"tenant": "acme", "n": 2}},
    {"id": "b1", "text": "Globex invoices are due at once.", "metadata": {"tenant": "globex", "n": 3}},
    {"id": "b2", "text": "Globex builds doomsday devices.", "metadata": {"tenant": "globex", "n": 4}},
]


@pytest.fixture(scope="module")
def world(access_server: AccessServer) -> dict[str, str]:
    for name in (GRANTED, OTHER):
        body = access_server.graphql("mutation($n: String!) { createCollection(name: $n) { name } }", ADMIN_KEY, {"n": name})
        assert "errors" not in body, body
        body = access_server.graphql(
            "mutation($c: String!, $d: [DocumentInput!]!) { ingest(collection: $c, documents: $d) { inserted failed } }",
            ADMIN_KEY, {"c": name, "d": DOCS},
        )  # fmt: skip
        assert body["data"]["ingest"] == {"inserted": 4, "failed": 0}, body
    keys = {scope: create_key(access_server, f"all-{scope}", [scope])["secret"] for scope in RANK}
    keys.update({f"granted-{scope}": create_key(access_server, f"granted-{scope}", [scope], collections=[GRANTED])["secret"] for scope in RANK})
    keys["acme"] = create_key(access_server, "acme-writer", ["WRITE"], filter={"tenant": {"eq": "acme"}})["secret"]
    return keys


def _fresh() -> str:
    return f"new-{uuid.uuid4().hex[:8]}"


# (root field, least scope, the collection it touches or None, query, variables)
ROOT_FIELDS = [
    ("embed", "READ", None, '{ embed(texts: ["hi"]) { dimensions } }', {}),
    ("search", "READ", OTHER, '{ search(collection: "%s", query: "invoices") { hits { id } } }' % OTHER, {}),
    ("facets", "READ", OTHER, '{ facets(collection: "%s", field: "tenant") { value count } }' % OTHER, {}),
    ("collection", "READ", OTHER, '{ collection(name: "%s") { name documentCount } }' % OTHER, {}),
    ("document", "READ", OTHER, '{ document(collection: "%s", id: "a1") { id } }' % OTHER, {}),
    ("documents", "READ", OTHER, '{ documents(collection: "%s") { items { id } } }' % OTHER, {}),
    ("collections", "READ", None, "{ collections { name } }", {}),
    ("models", "READ", None, "{ models { name } }", {}),
    ("model", "READ", None, '{ model(name: "%s") { state } }' % BUNDLED, {}),
    ("health", "READ", None, "{ health { status } }", {}),
    ("me", "READ", None, "{ me { id } }", {}),
    ("aggregate", "READ", OTHER, '{ aggregate(collection: "%s") { count } }' % OTHER, {}),
    ("searchCollections", "READ", OTHER, '{ searchCollections(query: "invoices", collections: ["%s"]) { hits { id } } }' % OTHER, {}),
    ("rerank", "READ", None, '{ rerank(query: "invoices", documents: ["due in thirty days"]) { hits { index } } }', {}),
    ("ingest", "WRITE", OTHER, 'mutation { ingest(collection: "%s", documents: [{id: "w1", text: "written", metadata: {tenant: "acme"}}]) { inserted unchanged } }' % OTHER, {}),
    ("deleteDocuments", "WRITE", OTHER, 'mutation { deleteDocuments(collection: "%s", ids: ["nope"]) }' % OTHER, {}),
    ("job", "READ", None, '{ job(id: "00000000-0000-0000-0000-000000000000") { id } }', {}),
    ("jobs", "READ", OTHER, '{ jobs(collection: "%s") { id } }' % OTHER, {}),
    # A blank text: the job runs and fails that document, so nothing is written to the shared collection.
    ("startIngestJob", "WRITE", OTHER, 'mutation { startIngestJob(collection: "%s", documents: [{id: "j1", text: " "}]) { id } }' % OTHER, {}),
    ("ingestFiles", "WRITE", OTHER, 'mutation { ingestFiles(collection: "%s", files: []) { id } }' % OTHER, {}),
    # A model outside the catalog: allowed keys get NOT_FOUND, so no reindex runs on the shared collection.
    ("reindexCollection", "ADMIN", OTHER, 'mutation { reindexCollection(name: "%s", model: "no/such-model") { id } }' % OTHER, {}),
    ("cancelJob", "WRITE", None, 'mutation { cancelJob(id: "00000000-0000-0000-0000-000000000000") { id } }', {}),
    ("createCollection", "ADMIN", "fresh", "mutation($n: String!) { createCollection(name: $n) { name } }", None),
    ("deleteCollection", "ADMIN", "fresh", "mutation($n: String!) { deleteCollection(name: $n) }", None),
    ("downloadModel", "ADMIN", None, 'mutation { downloadModel(name: "%s") { state } }' % BUNDLED, {}),
    ("apiKeys", "ADMIN", None, "{ apiKeys { id } }", {}),
    ("createApiKey", "ADMIN", None, 'mutation { createApiKey(input: {name: "made", scopes: [READ]}) { key { id } } }', {}),
    ("revokeApiKey", "ADMIN", None, 'mutation { revokeApiKey(id: "no-such-key") }', {}),
]  # fmt: skip


@pytest.mark.parametrize("field,least,collection,query,variables", ROOT_FIELDS, ids=[f[0] for f in ROOT_FIELDS])
def test_every_root_field_enforces_its_scope_and_grant(access_server, world, field, least, collection, query, variables):
    assert {f[0] for f in ROOT_FIELDS} | {"modelDownloadProgress"} >= _root_fields(access_server), "a root field is untested"
    variables = {"n": _fresh()} if variables is None else variables
    for scope in RANK:
        got = codes(access_server.graphql(query, world[scope], variables))
        if RANK[scope] < RANK[least]:
            assert got == ["FORBIDDEN"], (field, scope, got)
        else:
            # Allowed: anything but an access error (unknown ids are NOT_FOUND, and so on).
            assert not {"FORBIDDEN", "UNAUTHENTICATED"} & set(got), (field, scope, got)
    if collection is not None:
        # The highest scope is no help outside the granted collections.
        got = codes(access_server.graphql(query, world["granted-ADMIN"], variables))
        assert got == ["FORBIDDEN"], (field, got)


def _root_fields(server: AccessServer) -> set[str]:
    body = server.graphql("{ __schema { queryType { fields { name } } mutationType { fields { name } } } }", ADMIN_KEY)
    schema = body["data"]["__schema"]
    return {f["name"] for f in schema["queryType"]["fields"] + schema["mutationType"]["fields"]}


def test_collections_lists_only_granted_ones(access_server, world):
    names = {c["name"] for c in access_server.graphql("{ collections { name } }", world["granted-READ"])["data"]["collections"]}
    assert GRANTED in names and OTHER not in names
    assert {GRANTED, OTHER} <= {c["name"] for c in access_server.graphql("{ collections { name } }", world["READ"])["data"]["collections"]}


def test_key_management_needs_an_unrestricted_admin(access_server, world):
    got = codes(access_server.graphql('mutation { createApiKey(input: {name: "escalate", scopes: [ADMIN]}) { secret } }', world["granted-ADMIN"]))
    assert got == ["FORBIDDEN"]


# ---------------------------------------------------------------- tenant-bound keys


SEARCH = "query($c: String!, $f: JSON) { search(collection: $c, query: \"invoices rockets devices\", limit: 10, filter: $f) { hits { id document { id } } } }"


@pytest.mark.parametrize(
    "request_filter",
    [None, {"tenant": {"eq": "globex"}}, {"or": [{"tenant": {"eq": "globex"}}, {"n": {"gte": 0}}]},
     {"not": {"tenant": {"eq": "acme"}}}, {"tenant": {"ne": "acme"}}],
)  # fmt: skip
def test_a_tenant_key_searches_only_its_tenant_whatever_filter_it_sends(access_server, world, request_filter):
    hits = access_server.graphql(SEARCH, world["acme"], {"c": GRANTED, "f": request_filter})["data"]["search"]["hits"]
    assert {h["id"] for h in hits} <= {"a1", "a2"}
    if request_filter is None or "or" in request_filter:
        assert {h["id"] for h in hits} == {"a1", "a2"}
    everyone = access_server.graphql(SEARCH, world["READ"], {"c": GRANTED, "f": None})["data"]["search"]["hits"]
    assert {"b1", "b2"} <= {h["id"] for h in everyone}  # the other tenant's documents are there


def test_a_tenant_key_cannot_read_page_or_count_another_tenants_documents(access_server, world):
    key = world["acme"]
    assert access_server.graphql('{ document(collection: "%s", id: "b1") { id } }' % GRANTED, key)["data"]["document"] is None
    assert access_server.graphql('{ document(collection: "%s", id: "a1") { id } }' % GRANTED, key)["data"]["document"]["id"] == "a1"
    ids, cursor = [], None
    while True:
        page = access_server.graphql(
            "query($c: String!, $a: String) { documents(collection: $c, after: $a, first: 1) { items { id metadata } nextCursor } }",
            key, {"c": GRANTED, "a": cursor},
        )["data"]["documents"]  # fmt: skip
        ids += [d["id"] for d in page["items"]]
        assert all(d["metadata"]["tenant"] == "acme" for d in page["items"])
        if not (cursor := page["nextCursor"]):
            break
    assert ids == ["a1", "a2"]
    counted = access_server.graphql('{ collection(name: "%s") { documentCount } collections { name documentCount } }' % GRANTED, key)["data"]
    assert counted["collection"]["documentCount"] == 2
    assert all(c["documentCount"] <= 3 for c in counted["collections"])  # acme's docs only, in every collection
    full = access_server.graphql('{ collection(name: "%s") { documentCount } }' % GRANTED, world["READ"])["data"]
    assert full["collection"]["documentCount"] >= 4
    # Facets count the tenant's documents only, whatever filter the request sends.
    facets = 'query($f: JSON) { facets(collection: "%s", field: "tenant", filter: $f) { value count } }' % GRANTED
    for request_filter in (None, {"tenant": {"eq": "globex"}}, {"not": {"tenant": {"eq": "acme"}}}):
        seen = access_server.graphql(facets, key, {"f": request_filter})["data"]["facets"]
        assert {f["value"] for f in seen} <= {"acme"}, (request_filter, seen)
    everyone = access_server.graphql(facets, world["READ"], {"f": None})["data"]["facets"]
    assert {"acme", "globex"} <= {f["value"] for f in everyone}


def test_a_tenant_key_writes_and_deletes_only_its_tenants_documents(access_server, world):
    key = world["acme"]
    mutation = "mutation($c: String!, $d: [DocumentInput!]!) { ingest(collection: $c, documents: $d) { ids inserted updated failed errors { index id code } } }"
    docs = [
        {"id": "a3", "text": "Acme opens an office.", "metadata": {"tenant": "acme"}},
        {"id": "x1", "text": "Globex spy text.", "metadata": {"tenant": "globex"}},
        {"id": "b1", "text": "Overwritten by acme", "metadata": {"tenant": "acme"}},  # globex's id
        {"id": "x2", "text": "No tenant at all."},
    ]
    report = access_server.graphql(mutation, key, {"c": GRANTED, "d": docs})["data"]["ingest"]
    assert report["ids"] == ["a3"] and report["inserted"] == 1 and report["failed"] == 3
    assert [(e["index"], e["id"], e["code"]) for e in report["errors"]] == [(1, "x1", "FORBIDDEN"), (2, "b1", "FORBIDDEN"), (3, "x2", "FORBIDDEN")]
    b1 = access_server.graphql('{ document(collection: "%s", id: "b1") { text metadata } }' % GRANTED, world["READ"])["data"]["document"]
    assert b1 == {"text": DOCS[2]["text"], "metadata": DOCS[2]["metadata"]}  # untouched
    removed = access_server.graphql('mutation { deleteDocuments(collection: "%s", ids: ["b1", "b2", "a3"]) }' % GRANTED, key)["data"]
    assert removed == {"deleteDocuments": 1}
    left = access_server.graphql('{ documents(collection: "%s") { items { id } } }' % GRANTED, world["READ"])["data"]["documents"]["items"]
    assert {"b1", "b2"} <= {d["id"] for d in left} and "a3" not in {d["id"] for d in left}


# ---------------------------------------------------------------- rate limits across replicas


@pytest.fixture(scope="module")
def second_replica(tmp_path_factory, access_database):
    data_dir = str(tmp_path_factory.mktemp("citadel-access-2"))
    yield from serving(data_dir, access_database, "e2e-access-replica-2.log", wait_ready=False,
                       CITADEL_LOAD_MODELS_AT_STARTUP="false")  # fmt: skip


def test_a_key_over_its_rate_is_limited_across_two_replicas(access_server, second_replica):
    # 0.2 per second with a burst of 2 s: one token, then one every 5 s, in a bucket both replicas share.
    key = create_key(access_server, "slow", ["READ"], rate=0.2)["secret"]
    first = access_server.graphql("{ me { id } }", key)
    assert "errors" not in first, first
    limited = second_replica.post("{ me { id } }", key).json()
    assert codes(limited) == ["RATE_LIMITED"], limited
    retry_after = limited["errors"][0]["extensions"]["retryAfter"]
    assert 0 < retry_after <= 5
    assert codes(access_server.graphql("{ me { id } }", key)) == ["RATE_LIMITED"]
    # A key without a rate is not limited at all.
    free = create_key(access_server, "free", ["READ"])["secret"]
    assert all("errors" not in second_replica.graphql("{ me { id } }", free) for _ in range(5))


def test_a_revocation_on_one_replica_reaches_the_other_through_redis(access_server, second_replica):
    key = create_key(access_server, "revoked-everywhere", ["READ"])
    assert second_replica.graphql("{ me { id } }", key["secret"])["data"]["me"]["id"] == key["key"]["id"]  # now cached there
    revoked = access_server.graphql("mutation($id: ID!) { revokeApiKey(id: $id) }", ADMIN_KEY, {"id": key["key"]["id"]})
    assert revoked["data"] == {"revokeApiKey": True}
    deadline = time.monotonic() + 20  # far below the 120 s key cache: only the announcement can do it
    while codes(second_replica.graphql("{ me { id } }", key["secret"])) != ["UNAUTHENTICATED"]:
        assert time.monotonic() < deadline, second_replica.log_tail()
        time.sleep(0.2)


def test_the_limit_refills_at_its_rate(access_server):
    key = create_key(access_server, "refill", ["READ"], rate=1.0)["secret"]  # burst: 2 tokens
    outcomes = [codes(access_server.graphql("{ me { id } }", key)) for _ in range(3)]
    assert outcomes[:2] == [[], []] and outcomes[2] == ["RATE_LIMITED"]
    wait = access_server.graphql("{ me { id } }", key)["errors"][0]["extensions"]["retryAfter"]
    time.sleep(wait + 0.05)
    assert codes(access_server.graphql("{ me { id } }", key)) == []


# ---------------------------------------------------------------- startup


async def test_refuses_to_start_on_a_public_address_with_no_way_to_be_admin(tmp_path):
    from tests.e2e.conftest import ARTIFACTS, shared_redis_env
    from tests.support.databases import temporary_database

    async with temporary_database("citadel_refuse") as url:
        env = access_env(str(tmp_path), url, shared_redis_env(), CITADEL_SERVER__HOST="0.0.0.0",
                         CITADEL_LOAD_MODELS_AT_STARTUP="false")  # fmt: skip
        env.pop("CITADEL_AUTH__ADMIN_KEY")
        env.pop("CITADEL_AUTH__REQUIRED")  # the default on a public address: required
        server = AccessServer(env=env, log_path=ARTIFACTS / "e2e-access-refused.log")
        server.log_path.unlink(missing_ok=True)
        with pytest.raises(RuntimeError) as exited:
            server.start(wait_ready=False, timeout=120)
        assert server.process is not None and server.process.returncode != 0
        assert "refusing to start" in str(exited.value) and "CITADEL_AUTH__ADMIN_KEY" in str(exited.value)
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.url + "/healthz", timeout=2)
