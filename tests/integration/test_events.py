"""The Redis pub/sub bridge: two EventBus instances (two replicas) sharing the real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from app.domain.models import DownloadEvent

from app.adapters.events import EventBus, Subscription
from app.adapters.redis_events import RedisEventBridge
from app.domain.models import ModelState
from app.services.models import ModelManager
from tests.support.fake_hub import (
    HUB_MODEL,
    SMALL_FILES,
    FakeHub,
    hub_settings,
    load_configs,
    timeline,
)
from tests.support.services import redis_server_binary, redis_url



@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url())
    yield client
    await client.aclose()


@pytest.fixture
def channel() -> str:
    return f"citadel:test-events:{uuid.uuid4().hex}"


@pytest.fixture
async def replicas(redis_client: aioredis.Redis, channel: str) -> AsyncIterator[tuple[EventBus, EventBus]]:
    first, second = EventBus(origin="replica-a"), EventBus(origin="replica-b")
    second_redis = aioredis.Redis.from_url(redis_url())
    bridges = [RedisEventBridge(first, redis_client, channel), RedisEventBridge(second, second_redis, channel)]
    for bridge in bridges:
        await bridge.start()
    yield first, second
    for bridge in bridges:
        await bridge.close()
    await first.close()
    await second.close()
    await second_redis.aclose()


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as server:
        yield server


async def until(subscription: Subscription, state: ModelState, timeout: float = 10.0) -> list[DownloadEvent]:
    received = []
    while True:
        event = await subscription.get(timeout)
        received.append(event)
        if event.kind == "state" and event.state is state:
            return received


def event(n: int, state: ModelState = ModelState.DOWNLOADING) -> DownloadEvent:
    return DownloadEvent(model="m", state=state, attempt=1, max_attempts=3, bytes_done=n)


async def test_each_replica_sees_the_others_events_once(replicas: tuple[EventBus, EventBus]) -> None:
    a, b = replicas
    async with a.subscribe() as on_a, b.subscribe() as on_b:
        for n in range(3):
            a.publish(event(n))
        b.publish(event(99, ModelState.READY))
        a.publish(event(3, ModelState.READY))
        seen_by_b = await until(on_b, ModelState.READY)  # b's own READY first...
        seen_by_b += await until(on_b, ModelState.READY)  # ...then a's, relayed through Redis
        seen_by_a = await until(on_a, ModelState.READY)
        seen_by_a += await until(on_a, ModelState.READY)
        # Each replica's marker reaches the other through Redis after everything published before
        # it: once both markers are in on both sides, a duplicate would be among what came first.
        a.publish(event(1000, ModelState.FAILED))
        b.publish(event(2000, ModelState.FAILED))
        for subscription in (on_a, on_b):
            tail = await until(subscription, ModelState.FAILED) + await until(subscription, ModelState.FAILED)
            assert sorted(e.bytes_done for e in tail) == [1000, 2000]
            assert subscription.pending() == 0
    assert sorted((e.origin, e.bytes_done) for e in seen_by_b) == sorted((e.origin, e.bytes_done) for e in seen_by_a)
    assert [e.bytes_done for e in seen_by_a if e.origin == "replica-a"] == [0, 1, 2, 3]
    assert [e.bytes_done for e in seen_by_b if e.origin == "replica-a"] == [0, 1, 2, 3]
    assert [e.bytes_done for e in seen_by_a if e.origin == "replica-b"] == [99]


async def test_a_download_on_one_replica_is_seen_in_full_on_the_other(
    replicas: tuple[EventBus, EventBus], hub: FakeHub, tmp_path: Path
) -> None:
    a, b = replicas
    async with a.subscribe(HUB_MODEL) as on_a, b.subscribe(HUB_MODEL) as on_b:
        hub.add_fault("status", target="api", status=500)  # one retry, so RETRYING is part of the story
        manager = ModelManager(hub_settings(tmp_path, hub.url, files=SMALL_FILES), load_configs, a)
        try:
            status = await manager.ensure(HUB_MODEL)
        finally:
            await manager.close()
        assert status.state is ModelState.READY
        local = await until(on_a, ModelState.READY)
        remote = await until(on_b, ModelState.READY)
    expected = ["QUEUED", "DOWNLOADING", "RETRYING", "DOWNLOADING", "progress", "VERIFYING", "LOADING", "READY"]
    assert timeline(local) == timeline(remote) == expected
    # Not just the same shape: the very same events, progress ticks included.
    assert [e.to_json() for e in remote] == [e.to_json() for e in local]
    assert {e.origin for e in remote} == {"replica-a"}


async def test_subscribing_to_one_model_filters_remote_events_too(replicas: tuple[EventBus, EventBus]) -> None:
    a, b = replicas
    async with b.subscribe("wanted") as on_b:
        a.publish(DownloadEvent(model="other", state=ModelState.QUEUED, attempt=0, max_attempts=3))
        a.publish(DownloadEvent(model="wanted", state=ModelState.QUEUED, attempt=0, max_attempts=3))
        received = await on_b.get(5)
        assert received.model == "wanted"


async def test_a_broken_redis_connection_does_not_block_publishing(channel: str) -> None:
    client = aioredis.Redis.from_url(redis_url())
    bus = EventBus(origin="lonely")
    bridge = RedisEventBridge(bus, client, channel)
    await bridge.start()
    await client.connection_pool.disconnect()  # every connection of the bridge is cut under it
    try:
        async with bus.subscribe() as local:
            for n in range(50):
                bus.publish(event(n))
            assert [(await local.get(1)).bytes_done for _ in range(50)] == list(range(50))
    finally:
        await bridge.close(flush_timeout=0.5)
        await bus.close()
        await client.aclose()


async def test_redis_down_at_startup_then_back_bridges_replicas_again(tmp_path: Path, channel: str) -> None:
    import socket
    import subprocess

    binary = redis_server_binary()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    first, second = EventBus(origin="early-a"), EventBus(origin="early-b")
    clients = [aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)]
    bridges = [RedisEventBridge(first, clients[0], channel), RedisEventBridge(second, clients[1], channel)]
    for bridge in bridges:  # nothing listens yet: no exception, local only
        await bridge.start()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with second.subscribe() as remote:
            for n in range(200):  # until both listeners have re-subscribed (backoff up to a few seconds)
                first.publish(event(n))
                try:
                    received = await remote.get(0.1)
                except TimeoutError:
                    continue
                assert received.model == "m" and received.origin == "early-a"
                break
            else:
                raise AssertionError("events never crossed once Redis came up")
    finally:
        for bridge in bridges:
            await bridge.close(flush_timeout=0.5)
        await first.close()
        await second.close()
        for client in clients:
            await client.aclose()
        server.terminate()
        server.wait(timeout=10)
