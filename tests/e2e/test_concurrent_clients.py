"""Concurrent HTTP clients against the real server (keys required): writers of the same ids in
shuffled orders, racing tenant keys on new ids, a tenant trying to plant a document in another
tenant's view. What they leave is read back through GraphQL only: every document is found by its
own text under its own metadata and by its code word, and facets count what PostgreSQL holds.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.e2e.access_support import ADMIN_KEY, AccessServer, create_key

pytestmark = [pytest.mark.timeout(600)]

INGEST = """mutation($c: String!, $d: [DocumentInput!]!) {
  ingest(collection: $c, documents: $d) { ids inserted updated unchanged failed errors { index id code } } }"""
CLIENTS = 8
IDS = 24


async def post(client: httpx.AsyncClient, server: AccessServer, key: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(
        server.url + "/graphql", json={"query": query, "variables": variables}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def new_collection(server: AccessServer) -> str:
    name = f"race_{uuid.uuid4().hex[:8]}"
    body = server.graphql(f'mutation {{ createCollection(name: "{name}") {{ name }} }}', ADMIN_KEY)
    assert "errors" not in body, body
    return name


def code_word(writer: str, round_: int, i: int) -> str:
    return f"zq{writer}r{round_}n{i}"


def documents(server: AccessServer, name: str) -> list[dict[str, Any]]:
    query = "query($c: String!) { documents(collection: $c, first: 1000) { items { id text metadata indexed } } }"
    body = server.graphql(query, ADMIN_KEY, {"c": name})
    assert "errors" not in body, body
    return body["data"]["documents"]["items"]


def assert_served_as_stored(server: AccessServer, name: str) -> None:
    rows = documents(server, name)
    assert rows and all(r["indexed"] for r in rows)
    search = """query($c: String!, $q: String!, $f: JSON, $m: SearchMode!) {
      search(collection: $c, query: $q, filter: $f, limit: 1, mode: $m) { hits { id } } }"""
    for row in rows:
        own = {"writer": {"eq": row["metadata"]["writer"]}}
        for mode, query, where in (("SEMANTIC", row["text"], own), ("KEYWORD", row["text"].rsplit(" ", 1)[-1], None)):
            body = server.graphql(search, ADMIN_KEY, {"c": name, "q": query, "f": where, "m": mode})
            assert "errors" not in body, body
            assert [h["id"] for h in body["data"]["search"]["hits"]] == [row["id"]], (mode, row)
    body = server.graphql(
        "query($c: String!) { facets(collection: $c, field: \"writer\", limit: 100) { value count } }", ADMIN_KEY, {"c": name}
    )
    assert {f["value"]: f["count"] for f in body["data"]["facets"]} == dict(Counter(r["metadata"]["writer"] for r in rows))


async def test_http_writers_of_the_same_ids_leave_what_postgres_holds(access_server: AccessServer) -> None:
    name = new_collection(access_server)
    rng = random.Random(8)
    ids = [f"doc-{i:02d}" for i in range(IDS)]

    async def write(client: httpx.AsyncClient, writer: int, round_: int) -> dict[str, Any]:
        order = rng.sample(ids, len(ids))
        docs = [
            {"id": i, "text": f"Writer {writer} wrote note {i}: {code_word(str(writer), round_, int(i[4:]))}", "metadata": {"writer": f"w{writer}"}}
            for i in order
        ]
        await asyncio.sleep(rng.uniform(0, 0.05))
        return await post(client, access_server, ADMIN_KEY, INGEST, {"c": name, "d": docs})

    async with httpx.AsyncClient(timeout=300) as client:
        for round_ in range(2):
            bodies = await asyncio.gather(*(write(client, w, round_) for w in range(CLIENTS)))
            assert [b.get("errors") for b in bodies] == [None] * CLIENTS
            results = [b["data"]["ingest"] for b in bodies]
            assert all(r["failed"] == 0 for r in results)
            assert sum(r["inserted"] for r in results) == (IDS if round_ == 0 else 0)
            assert sum(r["inserted"] + r["updated"] + r["unchanged"] for r in results) == CLIENTS * IDS
            assert_served_as_stored(access_server, name)


async def test_http_tenants_racing_on_new_ids_each_get_exactly_their_own(access_server: AccessServer) -> None:
    name = new_collection(access_server)
    keys = {
        who: create_key(access_server, f"tenant-{who}-{name}", ["WRITE"], filter={"tenant": {"eq": who}})["secret"]
        for who in ("a", "b")
    }
    ids = [f"t-{i:02d}" for i in range(20)]
    rng = random.Random(2)

    async def write(client: httpx.AsyncClient, who: str) -> dict[str, Any]:
        docs = [
            {"id": i, "text": f"note {i} of tenant {who}: {code_word(who, 0, int(i[2:]))}", "metadata": {"tenant": who, "writer": who}}
            for i in rng.sample(ids, len(ids))
        ]
        body = await post(client, access_server, keys[who], INGEST, {"c": name, "d": docs})
        assert "errors" not in body, body
        return body["data"]["ingest"]

    async with httpx.AsyncClient(timeout=300) as client:
        a, b = await asyncio.gather(write(client, "a"), write(client, "b"))
    assert set(a["ids"]) | set(b["ids"]) == set(ids) and not set(a["ids"]) & set(b["ids"])
    assert {e["id"] for e in a["errors"]} == set(b["ids"]) and {e["code"] for e in a["errors"] + b["errors"]} <= {"FORBIDDEN"}
    owners = {r["id"]: r["metadata"]["tenant"] for r in documents(access_server, name)}
    assert {i for i, who in owners.items() if who == "a"} == set(a["ids"])
    assert_served_as_stored(access_server, name)


def test_http_a_tenant_cannot_plant_a_document_in_another_tenants_view(access_server: AccessServer) -> None:
    name = new_collection(access_server)
    a = create_key(access_server, f"planter-{name}", ["WRITE"], filter={"tenant": {"eq": "a"}})["secret"]
    b = create_key(access_server, f"victim-{name}", ["READ"], filter={"tenant": {"eq": "b"}})["secret"]
    docs = [
        {"id": "p1", "text": "planted one", "metadata": {"tenant": ["a", "b"]}},
        {"id": "p2", "text": "planted two", "metadata": {"tenant": [["a"], "b"]}},
    ]
    body = access_server.graphql(INGEST, a, {"c": name, "d": docs})
    assert "errors" not in body, body
    assert [(e["index"], e["code"]) for e in body["data"]["ingest"]["errors"]] == [(0, "FORBIDDEN"), (1, "FORBIDDEN")]
    seen = access_server.graphql(
        f'{{ search(collection: "{name}", query: "planted", limit: 10) {{ hits {{ id }} }} }}', b
    )
    assert seen["data"]["search"]["hits"] == []
    assert documents(access_server, name) == []
