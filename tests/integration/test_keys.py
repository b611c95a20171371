"""API keys against the machine's PostgreSQL and Redis: the KeyService (hash only, cache,
revocation), the shared token bucket and its per-process fallback, and `citadel keys`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

import asyncpg
import pytest
from loguru import logger
from redis.asyncio import Redis

from app.adapters.api_keys import ApiKeyRepo
from app.adapters.migrations import upgrade_async
from app.adapters.postgres_pool import create_pool
from app.domain.access import ANONYMOUS, INTERNAL, Principal, Scope
from app.errors import Forbidden, NotFound, RateLimited
from app.services.keys import KeyRequest, KeyService
from app.services.rate_limit import RateLimiter
from app.settings import AuthSettings, Settings
from tests.integration.test_cli import citadel
from tests.support.databases import temporary_database

REDIS_URL = "redis://127.0.0.1:6379/0"


def settings(**auth) -> Settings:
    return Settings(_env_file=None, auth=AuthSettings(**auth))  # type: ignore[call-arg]


@pytest.fixture
async def db():
    async with temporary_database("citadel_keys") as url:
        await upgrade_async(url)
        pool = await create_pool(url, min_size=0)
        try:
            yield url, pool
        finally:
            await pool.close()


async def test_only_a_hash_is_stored_and_the_secret_authenticates(db):
    url, pool = db
    keys = KeyService(settings(), ApiKeyRepo(pool))
    row, secret = await keys.create(KeyRequest("app", ["WRITE"], ["docs"], {"t": {"eq": 1}}, 3.5), INTERNAL)
    assert secret.startswith(row.prefix) and row.prefix == f"ctd_{row.id}"
    conn = await asyncpg.connect(url)
    try:
        stored = dict(await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", row.id))
    finally:
        await conn.close()
    assert stored["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in json.dumps(stored, default=str)
    principal = await keys.authenticate(secret)
    assert principal.kind == "key" and principal.key_id == row.id and principal.scopes == frozenset({Scope.WRITE})
    assert principal.collections == frozenset({"docs"}) and principal.rate_per_second == 3.5
    assert (await keys.repo.get(row.id)).last_used_at is not None
    assert (await keys.authenticate(secret + "x")).kind == "rejected"
    assert (await keys.authenticate(None)) is ANONYMOUS  # keys not required here
    assert (await KeyService(settings(required=True), ApiKeyRepo(pool)).authenticate(None)).kind == "rejected"


async def test_revocation_is_seen_at_once_here_and_after_the_cache_time_elsewhere(db):
    _, pool = db
    now = [1_000.0]
    here = KeyService(settings(key_cache_seconds=30), ApiKeyRepo(pool), clock=lambda: now[0])
    elsewhere = KeyService(settings(key_cache_seconds=30), ApiKeyRepo(pool), clock=lambda: now[0])  # another replica
    row, secret = await here.create(KeyRequest("short-lived", ["READ"]), INTERNAL)
    assert (await here.authenticate(secret)).kind == "key"
    assert (await elsewhere.authenticate(secret)).kind == "key"
    assert await here.revoke(row.id, INTERNAL) is True
    assert await here.revoke(row.id, INTERNAL) is False  # already revoked
    assert (await here.authenticate(secret)).reason == "this API key was revoked"
    now[0] += 29.9
    assert (await elsewhere.authenticate(secret)).kind == "key"  # its cache still holds the key
    now[0] += 0.2
    assert (await elsewhere.authenticate(secret)).kind == "rejected"  # the cache time is over: read again
    with pytest.raises(NotFound):
        await here.revoke("no-such-id", INTERNAL)


async def test_the_environment_admin_key_and_key_admin_rules(db):
    _, pool = db
    keys = KeyService(settings(admin_key="env-admin-secret-0123456789abcdef"), ApiKeyRepo(pool))
    admin = await keys.authenticate("env-admin-secret-0123456789abcdef")
    assert admin.kind == "env" and admin.is_admin
    _, restricted_secret = await keys.create(KeyRequest("ops", ["ADMIN"], ["only-this"]), admin)
    restricted = await keys.authenticate(restricted_secret)
    with pytest.raises(Forbidden):
        await keys.create(KeyRequest("escalated", ["ADMIN"]), restricted)
    with pytest.raises(Forbidden):
        await keys.list(restricted)
    assert await keys.repo.has_active_admin()


async def test_the_bucket_is_shared_through_redis():
    redis_a, redis_b = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
    prefix = f"citadel-test-rate-{uuid.uuid4().hex[:8]}:"
    try:
        replica_a = RateLimiter(redis_a, burst_seconds=3.0, key_prefix=prefix)
        replica_b = RateLimiter(redis_b, burst_seconds=3.0, key_prefix=prefix)
        key = Principal(kind="key", key_id="k", scopes=frozenset({Scope.READ}), rate_per_second=1.0)
        await replica_a.check(key)
        await replica_b.check(key)
        await replica_a.check(key)  # three tokens of burst, spent across replicas
        with pytest.raises(RateLimited) as limited:
            await replica_b.check(key)
        assert 0 < limited.value.retry_after <= 1.0
        assert limited.value.to_extensions()["retryAfter"] == limited.value.retry_after
        assert not replica_a.degraded and not replica_b.degraded
        assert await redis_a.exists(f"{prefix}k")
        assert 0 < await redis_a.pttl(f"{prefix}k") <= 4000  # buckets expire once full again
    finally:
        await redis_a.delete(f"{prefix}k")
        await redis_a.aclose()
        await redis_b.aclose()


async def test_without_redis_limits_hold_per_process_and_it_is_logged_once():
    from tests.support.server import free_port

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    try:
        limiter = RateLimiter(redis, burst_seconds=1.0)
        key = Principal(kind="key", key_id="k", scopes=frozenset({Scope.READ}), rate_per_second=2.0)
        await limiter.check(key)
        await limiter.check(key)
        with pytest.raises(RateLimited):
            await limiter.check(key)
        assert limiter.degraded
        assert len([m for m in messages if "rate limits hold per replica only" in m]) == 1
    finally:
        logger.remove(sink)
        await redis.aclose()


async def test_cli_creates_lists_and_revokes_keys():
    async with temporary_database("citadel_cli_keys") as url:
        env = {"CITADEL_DATABASE_URL": url}
        made = citadel("keys", "create", "--name", "cli-app", "--scope", "read", "--scope", "WRITE",
                       "--collection", "docs", "--filter", '{"tenant": {"eq": "acme"}}', "--rate", "2", env=env)  # fmt: skip
        assert made.returncode == 0, made.stderr
        created = json.loads(made.stdout)
        secret, key = created["secret"], created["key"]
        assert key["scopes"] == ["READ", "WRITE"] and key["collections"] == ["docs"] and key["ratePerSecond"] == 2.0
        assert secret.startswith(key["prefix"]) and "shown only now" in made.stderr

        listed = citadel("keys", "list", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert secret not in listed.stdout
        assert [k["id"] for k in json.loads(listed.stdout)] == [key["id"]]

        revoked = citadel("keys", "revoke", key["id"], env=env)
        assert revoked.returncode == 0 and f"revoked {key['id']}" in revoked.stdout
        assert json.loads(citadel("keys", "list", "--json", env=env).stdout)[0]["revoked"] is True

        bad = citadel("keys", "create", "--name", "x", "--scope", "OWNER", env=env)
        assert bad.returncode == 2 and "BAD_INPUT" in bad.stderr
        missing = citadel("keys", "revoke", "nope", env=env)
        assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr


class _Keys:
    """What the listener needs of a KeyService: the settings and forget()."""

    def __init__(self) -> None:
        self.settings = settings(key_cache_seconds=7)
        self.forgotten: list[str] = []
        self.heard = asyncio.Event()

    def forget(self, key_id: str) -> None:
        self.forgotten.append(key_id)
        self.heard.set()


async def test_announced_revocations_reach_every_listener():
    from app.services.key_revocations import RevocationListener, announce_revocation

    clients = [Redis.from_url(REDIS_URL) for _ in range(3)]
    replicas = [_Keys(), _Keys()]
    listeners = [RevocationListener(clients[i], replicas[i]) for i in range(2)]
    for listener in listeners:
        listener.start()
    try:
        key_id = f"k-{uuid.uuid4().hex[:8]}"
        async with asyncio.timeout(30):
            await asyncio.gather(*(listener.subscribed.wait() for listener in listeners))
            await announce_revocation(clients[2], key_id, 7)  # once: both are listening
            await asyncio.gather(*(r.heard.wait() for r in replicas))
        assert all(r.forgotten == [key_id] for r in replicas)
    finally:
        for listener in listeners:
            await listener.stop()
        for client in clients:
            await client.aclose()


async def test_without_redis_revocations_wait_for_the_cache_and_say_so_once():
    from app.services import key_revocations
    from app.services.key_revocations import RevocationListener, announce_revocation
    from tests.support.server import free_port

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    listener = RevocationListener(dead, _Keys())
    subscribing = dead.pubsub
    attempts = 0
    several = asyncio.Event()

    def counted_pubsub() -> Any:  # each reconnect attempt opens a new pub/sub
        nonlocal attempts
        attempts += 1
        if attempts >= 4:
            several.set()
        return subscribing()

    dead.pubsub = counted_pubsub  # type: ignore[method-assign]
    original = key_revocations.RETRY_SECONDS
    key_revocations.RETRY_SECONDS = 0.05
    try:
        await announce_revocation(dead, "k1", 7)  # never raises: the revocation itself is stored
        listener.start()
        await asyncio.wait_for(several.wait(), 60)  # several reconnect attempts
        assert listener._task is not None and not listener._task.done()
        assert len([m for m in messages if "revocations by other replicas apply here within 7" in m]) == 1
        assert any("revoked key k1 reaches other replicas within 7" in m for m in messages)
    finally:
        key_revocations.RETRY_SECONDS = original
        await listener.stop()
        logger.remove(sink)
        await dead.aclose()
