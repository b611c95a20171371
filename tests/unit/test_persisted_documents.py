"""Which document an operation runs (app/graphql/persisted.py): APQ and trusted documents, against
an in-memory Redis and registry; manifests of `citadel documents add`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from app.cli_documents import ManifestError, read_manifest
from app.domain.access import Principal, Scope
from app.errors import BadInput, DependencyUnavailable, Forbidden, NotFound, Unauthenticated
from app.graphql.persisted import (
    DocumentSource,
    PersistedQueries,
    PersistedQueryNotFound,
    TrustedDocuments,
    document_hash,
)

QUERY = "query Q { collections { name } }"
OTHER = "query O { models { name } }"
READ = Principal(kind="key", key_id="r", scopes=frozenset({Scope.READ}))
ADMIN = Principal(kind="key", key_id="a", scopes=frozenset({Scope.ADMIN}))


class MemoryRedis:
    def __init__(self, broken: bool = False) -> None:
        self.values: dict[str, tuple[str, int]] = {}
        self.broken = broken

    async def get(self, key: str) -> bytes | None:
        if self.broken:
            raise ConnectionError("redis is down")
        value = self.values.get(key)
        return value[0].encode() if value else None

    async def set(self, key: str, value: str, ex: int) -> None:
        if self.broken:
            raise ConnectionError("redis is down")
        self.values[key] = (value, ex)


class Registry:
    def __init__(self, *documents: str) -> None:
        self.documents = {document_hash(d): d for d in documents}
        self.lookups = 0

    async def get(self, digest: str) -> str | None:
        self.lookups += 1
        return self.documents.get(digest)


def source(redis: MemoryRedis, registry: Registry, require: bool = False, max_bytes: int = 10_000) -> DocumentSource:
    persisted = PersistedQueries(redis, "citadel:ns:apq:", 3600, max_bytes, 1.0)
    return DocumentSource(persisted, TrustedDocuments(registry, 60), require, parses=lambda text: "{" in text)


def ctx(principal: Principal = READ, auth_error: Exception | None = None) -> SimpleNamespace:
    return SimpleNamespace(principal=principal, auth_error=auth_error)


def apq(text: str) -> dict:
    return {"persistedQuery": {"version": 1, "sha256Hash": document_hash(text)}}


async def test_apq_miss_then_the_text_is_stored_with_its_ttl_and_found_by_hash():
    redis = MemoryRedis()
    documents = source(redis, Registry())
    with pytest.raises(PersistedQueryNotFound) as missed:
        await documents.resolve(ctx(), None, apq(QUERY))
    assert missed.value.message == "PersistedQueryNotFound" and missed.value.code == "PERSISTED_QUERY_NOT_FOUND"
    assert await documents.resolve(ctx(), QUERY, apq(QUERY)) == QUERY
    assert redis.values == {f"citadel:ns:apq:{document_hash(QUERY)}": (QUERY, 3600)}
    fresh = source(redis, Registry())  # another replica: nothing in its memory, the same Redis
    assert await fresh.resolve(ctx(), None, apq(QUERY)) == QUERY


async def test_apq_refuses_a_wrong_hash_or_version_and_skips_what_it_must_not_store():
    redis = MemoryRedis()
    documents = source(redis, Registry(), max_bytes=len(QUERY) - 1)
    with pytest.raises(BadInput, match="does not match"):
        await documents.resolve(ctx(), OTHER, apq(QUERY))
    with pytest.raises(BadInput, match="version 1"):
        await documents.resolve(ctx(), QUERY, {"persistedQuery": {"version": 2, "sha256Hash": document_hash(QUERY)}})
    with pytest.raises(BadInput, match="64 hex"):
        await documents.resolve(ctx(), None, {"persistedQuery": {"version": 1, "sha256Hash": "abc"}})
    assert await documents.resolve(ctx(), QUERY, apq(QUERY)) == QUERY  # over max_bytes: runs, not stored
    assert await documents.resolve(ctx(), "nonsense", apq("nonsense")) == "nonsense"  # does not parse: not stored
    assert redis.values == {}


async def test_a_redis_outage_is_a_miss_not_an_error():
    documents = source(MemoryRedis(broken=True), Registry())
    assert await documents.resolve(ctx(), QUERY, apq(QUERY)) == QUERY
    fresh = source(MemoryRedis(broken=True), Registry())
    with pytest.raises(PersistedQueryNotFound):
        await fresh.resolve(ctx(), None, apq(QUERY))


async def test_trusted_documents_bind_non_admin_keys():
    documents = source(MemoryRedis(), Registry(QUERY), require=True)
    digest = document_hash(QUERY)
    assert await documents.resolve(ctx(), None, {"documentId": f"sha256:{digest}"}) == QUERY
    assert await documents.resolve(ctx(), None, apq(QUERY)) == QUERY
    assert await documents.resolve(ctx(), QUERY, None) == QUERY
    for query, extensions in ((OTHER, None), (OTHER, apq(OTHER)), (None, apq(OTHER)), (None, {"documentId": document_hash(OTHER)})):
        with pytest.raises(Forbidden, match="not registered"):
            await documents.resolve(ctx(), query, extensions)
    assert await documents.resolve(ctx(ADMIN), OTHER, None) == OTHER
    assert await documents.resolve(ctx(ADMIN), OTHER, apq(OTHER)) == OTHER  # admins use APQ as usual
    with pytest.raises(Forbidden):
        await documents.check_text(ctx(), OTHER)
    await documents.check_text(ctx(), QUERY)


async def test_a_caller_without_a_valid_key_is_unauthenticated_before_any_lookup():
    registry = Registry(QUERY)
    documents = source(MemoryRedis(), registry, require=True)
    with pytest.raises(Unauthenticated):
        await documents.resolve(ctx(Principal(kind="rejected", reason="bad key")), None, apq(QUERY))
    with pytest.raises(DependencyUnavailable):
        await documents.resolve(ctx(READ, DependencyUnavailable("postgres is down")), None, apq(QUERY))
    assert registry.lookups == 0


async def test_document_ids_are_checked_and_unknown_ones_are_not_found_when_not_bound():
    documents = source(MemoryRedis(), Registry(QUERY))
    with pytest.raises(BadInput, match="documentId"):
        await documents.resolve(ctx(), None, {"documentId": "md5:1234"})
    with pytest.raises(NotFound):
        await documents.resolve(ctx(), None, {"documentId": f"sha256:{document_hash(OTHER)}"})
    assert await documents.resolve(ctx(), None, {"documentId": document_hash(QUERY).upper()}) == QUERY


async def test_registry_answers_are_cached_per_replica():
    registry = Registry(QUERY)
    trusted = TrustedDocuments(registry, 60)
    for _ in range(3):
        assert await trusted.get(document_hash(QUERY)) == QUERY
        assert await trusted.get(document_hash(OTHER)) is None
    assert registry.lookups == 2


def test_manifests_as_codegen_and_relay_write_them(tmp_path):
    codegen = tmp_path / "persisted-documents.json"
    codegen.write_text(json.dumps({document_hash(QUERY): QUERY, f"sha256:{document_hash(OTHER)}": OTHER}))
    assert read_manifest(codegen) == {document_hash(QUERY): QUERY, document_hash(OTHER): OTHER}
    relay_md5 = tmp_path / "persisted_queries.json"
    relay_md5.write_text(json.dumps({"0cc175b9c0f1b6a831c399e269772661": QUERY}))
    with pytest.raises(ManifestError, match="SHA256"):
        read_manifest(relay_md5)
    for bad in ("[]", "{}", '{"x": 1}', "not json"):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(ManifestError):
            read_manifest(tmp_path / "bad.json")
