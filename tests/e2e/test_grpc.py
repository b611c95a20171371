"""The gRPC transport against a real server (keys required, gRPC on): the same answers as GraphQL,
the same access rules, one status table, reflection, the progress stream, and concurrent writers
that leave PostgreSQL and the vector store agreeing."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from app.grpc.citadel.v1 import citadel_pb2 as pb
from app.grpc.citadel.v1 import citadel_pb2_grpc as pb_grpc
from tests.e2e.access_support import ADMIN_KEY, BUNDLED, AccessServer, create_key, serving
from tests.support.databases import temporary_database
from tests.support.server import ROOT, free_port

pytestmark = [pytest.mark.timeout(300)]

TAG = uuid.uuid4().hex[:6]
SHARED = f"grpc-{TAG}"
DOCS = [
    {"id": "a1", "text": "Acme invoices are due in thirty days.", "metadata": {"tenant": "acme", "n": 1}},
    {"id": "a2", "text": "Acme ships rockets to the desert.", "metadata": {"tenant": "acme", "n": 2}},
    {"id": "b1", "text": "Globex invoices are due at once.", "metadata": {"tenant": "globex", "n": 3}},
    {"id": "b2", "text": "Globex builds doomsday devices.", "metadata": {"tenant": "globex", "n": 4}},
]
SEARCH = (
    "query($c: String!, $q: String!, $m: SearchMode, $f: JSON, $l: Int) "
    "{ search(collection: $c, query: $q, mode: $m, filter: $f, limit: $l) { hits { id score } } }"
)


@pytest.fixture(scope="module")
async def grpc_database():
    async with temporary_database("citadel_grpc") as url:
        yield url


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory, grpc_database, grpc_port) -> Iterator[AccessServer]:
    yield from serving(
        str(tmp_path_factory.mktemp("citadel-grpc")),
        grpc_database,
        "e2e-grpc-server.log",
        CITADEL_GRPC__ENABLED="true",
        CITADEL_GRPC__PORT=str(grpc_port),
    )


@pytest.fixture(scope="module")
def target(server, grpc_port) -> str:
    return f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def keys(server: AccessServer) -> dict[str, str]:
    body = server.graphql("mutation($n: String!) { createCollection(name: $n) { name } }", ADMIN_KEY, {"n": SHARED})
    assert "errors" not in body, body
    ingest(server, SHARED, DOCS)
    return {
        "READ": create_key(server, f"grpc-read-{TAG}", ["READ"])["secret"],
        "WRITE": create_key(server, f"grpc-write-{TAG}", ["WRITE"])["secret"],
        "acme": create_key(server, f"grpc-acme-{TAG}", ["WRITE"], filter={"tenant": {"eq": "acme"}})["secret"],
    }


@pytest.fixture(scope="module")
def stub(target: str) -> Iterator[pb_grpc.CitadelStub]:
    with grpc.insecure_channel(target) as channel:
        yield pb_grpc.CitadelStub(channel)


def ingest(server: AccessServer, collection: str, docs: list[dict]) -> dict:
    body = server.graphql(
        "mutation($c: String!, $d: [DocumentInput!]!) { ingest(collection: $c, documents: $d) { ids inserted failed } }",
        ADMIN_KEY, {"c": collection, "d": docs},
    )  # fmt: skip
    assert "errors" not in body and body["data"]["ingest"]["failed"] == 0, body
    return body["data"]["ingest"]


def auth(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def refusal(call, *args, **kwargs) -> tuple[grpc.StatusCode, str | None, str]:
    """The status, `citadel-code` and details of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    error = caught.value
    trailing = dict(error.trailing_metadata() or ())
    return error.code(), trailing.get("citadel-code"), error.details()


def test_embed_equals_graphql_embed(server, keys, stub):
    texts = [f"grpc embed {TAG} one", f"grpc embed {TAG} two", "Acme invoices are due in thirty days."]
    query = "query($t: [String!]!) { embed(texts: $t) { model dimensions embeddings { index vector cached } } }"
    graphql = server.graphql(query, keys["READ"], {"t": texts})["data"]["embed"]
    reply = stub.Embed(pb.EmbedRequest(texts=texts), metadata=auth(keys["READ"]), timeout=60)
    assert (reply.model, reply.dimensions) == (graphql["model"], graphql["dimensions"]) == (BUNDLED, 384)
    assert len(reply.embeddings) == len(texts)
    for mine, theirs in zip(reply.embeddings, graphql["embeddings"]):
        assert len(mine.values) == 384
        assert max(abs(a - b) for a, b in zip(mine.values, theirs["vector"])) <= 1e-6
        assert mine.cached  # GraphQL embedded them first: the same cache serves both transports
    assert stub.Embed(pb.EmbedRequest(texts=[f"fresh {uuid.uuid4().hex}"]), metadata=auth(keys["READ"])).embeddings[0].cached is False


@pytest.mark.parametrize("mode", ["SEMANTIC", "KEYWORD", "HYBRID"])
@pytest.mark.parametrize("request_filter", [None, {"tenant": {"eq": "globex"}}])
def test_search_returns_what_graphql_search_returns(server, keys, stub, mode, request_filter):
    variables = {"c": SHARED, "q": "invoices due", "m": mode, "f": request_filter, "l": 3}
    graphql = server.graphql(SEARCH, keys["READ"], variables)["data"]["search"]["hits"]
    reply = stub.Search(
        pb.SearchRequest(
            collection=SHARED,
            query="invoices due",
            mode=pb.SearchMode.Value(f"SEARCH_MODE_{mode}"),
            limit=3,
            filter_json="" if request_filter is None else json.dumps(request_filter),
        ),
        metadata=auth(keys["READ"]),
        timeout=60,
    )
    assert graphql, "the search should find something"
    assert [h.id for h in reply.hits] == [h["id"] for h in graphql]
    assert [h.score for h in reply.hits] == pytest.approx([h["score"] for h in graphql], abs=1e-5)
    for hit in reply.hits:
        source = next(d for d in DOCS if d["id"] == hit.id)
        assert (hit.text, json.loads(hit.metadata_json)) == (source["text"], source["metadata"])


EXTRAS = "query($c: String!, {params}) {{ search(collection: $c, {args}) {{ hits {{ id score }} groups {{ value hits {{ id }} }} }} }}"


def vector_of(server: AccessServer, key: str, text: str) -> list[float]:
    query = "query($t: [String!]!) { embed(texts: $t, kind: QUERY) { embeddings { vector } } }"
    return server.graphql(query, key, {"t": [text]})["data"]["embed"]["embeddings"][0]["vector"]


@pytest.mark.parametrize(
    ("graphql_args", "grpc_args"),
    [
        ({"similarTo": ("ID", "a1")}, {"similar_to": "a1"}),
        ({"recommend": ("RecommendInput", {"positive": ["a1"], "negative": ["b2"]})}, {"recommend": pb.Recommend(positive=["a1"], negative=["b2"])}),
        ({"query": ("String", "invoices"), "groupBy": ("GroupByInput", {"field": "tenant", "groups": 2, "hitsPerGroup": 2})},
         {"query": "invoices", "group_by": pb.GroupBy(field="tenant", groups=2, hits_per_group=2)}),
        ({"query": ("String", "invoices"), "diversity": ("Float", 0.5), "autocut": ("Int", 1)}, {"query": "invoices", "diversity": 0.5, "autocut": 1}),
        ({"query": ("String", "invoices"), "mode": ("SearchMode", "HYBRID"), "fusion": ("Fusion", "DBSF")},
         {"query": "invoices", "mode": pb.SEARCH_MODE_HYBRID, "fusion": pb.FUSION_DBSF}),
    ],
    ids=["similar_to", "recommend", "group_by", "diversity_autocut", "hybrid_dbsf"],
)
def test_search_extras_return_what_graphql_returns(server, keys, stub, graphql_args, grpc_args):
    """The same SearchRequest behind both transports: each GraphQL argument has its gRPC field."""
    params = ", ".join(f"${name}: {kind}" for name, (kind, _) in graphql_args.items())
    args = ", ".join(f"{name}: ${name}" for name in graphql_args)
    variables = {"c": SHARED, **{name: value for name, (_, value) in graphql_args.items()}}
    body = server.graphql(EXTRAS.format(params=params, args=args), keys["READ"], variables)
    assert "errors" not in body, body
    graphql = body["data"]["search"]
    reply = stub.Search(pb.SearchRequest(collection=SHARED, **grpc_args), metadata=auth(keys["READ"]), timeout=60)
    assert graphql["hits"], "the search should find something"
    assert [h.id for h in reply.hits] == [h["id"] for h in graphql["hits"]]
    assert [h.score for h in reply.hits] == pytest.approx([h["score"] for h in graphql["hits"]], abs=1e-5)
    groups = [(json.loads(g.value_json), [h.id for h in g.hits]) for g in reply.groups]
    assert groups == [(g["value"], [h["id"] for h in g["hits"]]) for g in graphql["groups"] or ()]


def test_a_query_vector_finds_what_its_text_finds(server, keys, stub):
    vector = vector_of(server, keys["READ"], "invoices due")
    by_vector = stub.Search(pb.SearchRequest(collection=SHARED, vector=vector, limit=3), metadata=auth(keys["READ"]), timeout=60)
    by_text = stub.Search(pb.SearchRequest(collection=SHARED, query="invoices due", limit=3), metadata=auth(keys["READ"]), timeout=60)
    assert [h.id for h in by_vector.hits] == [h.id for h in by_text.hits]
    assert all(h.collection == SHARED for h in by_vector.hits)


def test_search_collections_returns_what_graphql_returns(server, keys, stub):
    query = (
        "query($q: String!, $c: [String!], $f: JSON) { searchCollections(query: $q, collections: $c, filter: $f, limit: 3) "
        "{ hits { id score collection } } }"
    )
    request_filter = {"n": {"gte": 2}}
    graphql = server.graphql(query, keys["READ"], {"q": "invoices", "c": [SHARED], "f": request_filter})["data"]["searchCollections"]["hits"]
    reply = stub.SearchCollections(
        pb.SearchCollectionsRequest(query="invoices", collections=[SHARED], limit=3, filter_json=json.dumps(request_filter)),
        metadata=auth(keys["READ"]),
        timeout=60,
    )
    assert graphql and [(h.id, h.collection) for h in reply.hits] == [(h["id"], h["collection"]) for h in graphql]
    assert [h.score for h in reply.hits] == pytest.approx([h["score"] for h in graphql], abs=1e-6)
    assert "a1" not in {h.id for h in reply.hits}  # n = 1: outside the filter
    # A tenant key's filter holds here too, and every collection it may read is searched by default.
    mine = stub.SearchCollections(pb.SearchCollectionsRequest(query="invoices", limit=20), metadata=auth(keys["acme"]), timeout=60)
    assert mine.hits and all(json.loads(h.metadata_json).get("tenant") == "acme" for h in mine.hits)


def test_ingest_then_search_finds_the_document(server, keys, stub):
    text = f"The grpc transport stores zebra migration notes {TAG}."
    reply = stub.Ingest(
        pb.IngestRequest(
            collection=SHARED,
            documents=[
                pb.DocumentInput(id=f"g-{TAG}", text=text, metadata_json='{"tenant": "acme", "via": "grpc"}'),
                pb.DocumentInput(id=f"blank-{TAG}", text="   "),  # reported alone, as GraphQL reports it
            ],
        ),
        metadata=auth(keys["WRITE"]),
        timeout=60,
    )
    assert list(reply.ids) == [f"g-{TAG}"] and (reply.inserted, reply.failed) == (1, 1)
    assert [(e.index, e.id, e.code) for e in reply.errors] == [(1, f"blank-{TAG}", "BAD_INPUT")]
    found = stub.Search(pb.SearchRequest(collection=SHARED, query="zebra migration", limit=1), metadata=auth(keys["READ"]))
    assert [h.id for h in found.hits] == [f"g-{TAG}"]
    assert json.loads(found.hits[0].metadata_json) == {"tenant": "acme", "via": "grpc"}


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer not-a-key"),), (("authorization", "Basic abc"),)])
def test_a_missing_or_invalid_key_is_unauthenticated(server, keys, stub, metadata):
    status, code, _ = refusal(stub.Embed, pb.EmbedRequest(texts=["hi"]), metadata=metadata, timeout=30)
    assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    stream = stub.WatchModelProgress(pb.WatchModelProgressRequest(model=BUNDLED), metadata=metadata, timeout=30)
    status, code, _ = refusal(next, stream)
    assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


def test_a_read_key_cannot_ingest(server, keys, stub):
    request = pb.IngestRequest(collection=SHARED, documents=[pb.DocumentInput(id="r1", text="read keys do not write")])
    status, code, _ = refusal(stub.Ingest, request, metadata=auth(keys["READ"]), timeout=30)
    assert (status, code) == (grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN")


@pytest.mark.parametrize("request_filter", [None, {"tenant": {"eq": "globex"}}, {"not": {"tenant": {"eq": "acme"}}}])
def test_a_tenant_key_sees_only_its_tenant(server, keys, stub, request_filter):
    reply = stub.Search(
        pb.SearchRequest(
            collection=SHARED, query="invoices", limit=20, filter_json="" if request_filter is None else json.dumps(request_filter)
        ),
        metadata=auth(keys["acme"]),
        timeout=60,
    )
    assert all(json.loads(h.metadata_json).get("tenant") == "acme" for h in reply.hits), reply
    if request_filter is None:
        assert {"a1", "a2"} <= {h.id for h in reply.hits}


def test_a_tenant_key_cannot_write_another_tenants_documents(server, keys, stub):
    docs = [
        pb.DocumentInput(id=f"a3-{TAG}", text="Acme opens an office.", metadata_json='{"tenant": "acme"}'),
        pb.DocumentInput(id=f"x1-{TAG}", text="Globex spy text.", metadata_json='{"tenant": "globex"}'),
        pb.DocumentInput(id="b1", text="Overwritten by acme", metadata_json='{"tenant": "acme"}'),  # globex's id
        pb.DocumentInput(id=f"x2-{TAG}", text="No tenant at all."),
    ]
    reply = stub.Ingest(pb.IngestRequest(collection=SHARED, documents=docs), metadata=auth(keys["acme"]), timeout=60)
    assert list(reply.ids) == [f"a3-{TAG}"] and (reply.inserted, reply.failed) == (1, 3)
    assert [(e.index, e.code) for e in reply.errors] == [(1, "FORBIDDEN"), (2, "FORBIDDEN"), (3, "FORBIDDEN")]
    b1 = server.graphql('{ document(collection: "%s", id: "b1") { text } }' % SHARED, keys["READ"])["data"]["document"]
    assert b1 == {"text": DOCS[2]["text"]}  # untouched


def test_bad_input_and_unknown_names(server, keys, stub):
    key = auth(keys["WRITE"])
    cases = [
        (stub.Embed, pb.EmbedRequest(texts=[]), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.Embed, pb.EmbedRequest(texts=["nul \x00 inside"]), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.Embed, pb.EmbedRequest(texts=["hi"], model="no/such-model"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (stub.Search, pb.SearchRequest(collection=f"missing-{TAG}", query="x"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (stub.Search, pb.SearchRequest(collection=SHARED), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),  # no query
        (stub.Search, pb.SearchRequest(collection=SHARED, query="x", filter_json="{nope"), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.Search, pb.SearchRequest(collection=SHARED, query="x", limit=0), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.Search, pb.SearchRequest(collection=SHARED, query="x", mode=99), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.Search, pb.SearchRequest(collection=SHARED, query="x", similar_to="a1"), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.Search, pb.SearchRequest(collection=SHARED, vector=[0.0] * 384), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.Search, pb.SearchRequest(collection=SHARED, vector=[0.1] * 3), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.Search, pb.SearchRequest(collection=SHARED, similar_to="nope"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (stub.Search, pb.SearchRequest(collection=SHARED, query="x", group_by=pb.GroupBy(field="tenant"), offset=1), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.SearchCollections, pb.SearchCollectionsRequest(query=""), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.SearchCollections, pb.SearchCollectionsRequest(query="x", collections=[f"missing-{TAG}"]), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (stub.Ingest, pb.IngestRequest(collection=f"missing-{TAG}", documents=[pb.DocumentInput(text="t")]), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (stub.Ingest, pb.IngestRequest(collection=SHARED, documents=[pb.DocumentInput(text="t", metadata_json="[")]), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.Rerank, pb.RerankRequest(query="q", documents=[]), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT"),
        (stub.Rerank, pb.RerankRequest(query="q", documents=["d"], model="no/such-reranker"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    ]  # fmt: skip
    for call, request, status, code in cases:
        got_status, got_code, details = refusal(call, request, metadata=key, timeout=60)
        assert (got_status, got_code) == (status, code), (request, details)
        assert "Traceback" not in details


def test_the_progress_stream_starts_with_the_current_state(server, keys, stub):
    stream = stub.WatchModelProgress(pb.WatchModelProgressRequest(model=BUNDLED), metadata=auth(keys["READ"]), timeout=60)
    first = next(stream)
    stream.cancel()
    query = "query($n: String!) { model(name: $n) { state replica } }"
    model = server.graphql(query, keys["READ"], {"n": BUNDLED})["data"]["model"]
    assert (first.model, first.kind) == (BUNDLED, "state")
    assert (pb.ModelState.Name(first.state), first.replica) == (f"MODEL_STATE_{model['state']}", model["replica"])
    status, code, _ = refusal(next, stub.WatchModelProgress(pb.WatchModelProgressRequest(model="no/such"), metadata=auth(keys["READ"])))
    assert (status, code) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


def test_reflection_lists_the_service(target):
    with grpc.insecure_channel(target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "citadel.v1.Citadel" in services


async def test_concurrent_writers_leave_postgres_and_search_agreeing(server, keys, target):
    """Writers send the same ids in different orders with texts of their own; whoever wins an id,
    its stored text and its vector are the same version."""
    collection = f"grpc-race-{TAG}"
    body = server.graphql("mutation($n: String!) { createCollection(name: $n) { name } }", ADMIN_KEY, {"n": collection})
    assert "errors" not in body, body
    ids = [f"d{i}" for i in range(12)]
    topics = ["harbour cranes", "alpine lakes", "jazz trumpets", "desert foxes", "glass furnaces", "orbital docks"]

    def text(writer: int, doc: str) -> str:
        return f"Writer {writer} on {topics[writer % len(topics)]}: note {doc} {TAG}"

    async def write(writer: int) -> None:
        order = ids[:]
        random.Random(writer).shuffle(order)
        docs = [pb.DocumentInput(id=d, text=text(writer, d), metadata_json=json.dumps({"writer": writer})) for d in order]
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.CitadelStub(channel)
            for start in (0, 6):  # two calls each, so writers interleave between calls too
                reply = await stub.Ingest(
                    pb.IngestRequest(collection=collection, documents=docs[start : start + 6]), metadata=auth(ADMIN_KEY), timeout=120
                )
                assert reply.failed == 0, reply.errors

    await asyncio.gather(*(write(w) for w in range(6)))
    page = server.graphql(
        'query { documents(collection: "%s", first: 100) { items { id text metadata } } }' % collection, ADMIN_KEY
    )["data"]["documents"]["items"]
    assert sorted(d["id"] for d in page) == sorted(ids)  # one row per id
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.CitadelStub(channel)
        for doc in page:
            assert doc["text"] == text(doc["metadata"]["writer"], doc["id"])  # one writer's version, whole
            found = await stub.Search(
                pb.SearchRequest(collection=collection, query=doc["text"], limit=1), metadata=auth(ADMIN_KEY), timeout=60
            )
            # The vector stored for the id is the embedding of PostgreSQL's text: it is its own best match.
            assert [(h.id, h.text) for h in found.hits] == [(doc["id"], doc["text"])]
            assert found.hits[0].score > 0.999
        everything = await stub.Search(pb.SearchRequest(collection=collection, query="note", limit=100), metadata=auth(ADMIN_KEY))
    assert sorted(h.id for h in everything.hits) == sorted(ids)  # one point per id in the store


def test_the_python_example_of_docs_grpc_md_runs(server, target, capsys):
    docs = (ROOT / "docs" / "grpc.md").read_text()
    example = docs.split("## Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    body = server.graphql('mutation { createCollection(name: "docs") { name } }', ADMIN_KEY)
    assert "errors" not in body, body
    exec(compile(example.replace("localhost:50051", target).replace("YOUR-KEY", ADMIN_KEY), "docs/grpc.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("d1 ") and "'tenant': 'acme'" in printed[0], printed
    assert printed[1] == "StatusCode.INVALID_ARGUMENT BAD_INPUT texts must not be empty", printed
    assert printed[2].startswith("MODEL_STATE_READY"), printed
