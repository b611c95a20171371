"""Model states per replica, heartbeats and the shared-cache download lock, on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from app.adapters.migrations import upgrade_async
from app.adapters.postgres_pool import create_pool
from app.adapters.postgres_replicas import PostgresReplicaStore, lock_id
from app.domain.models import ModelState, ModelStatus
from tests.support.databases import create_database, drop_database, schema_columns


@pytest.fixture(scope="module")
async def db_url() -> AsyncIterator[str]:
    url = await create_database("citadel_replicas")
    try:
        await upgrade_async(url)
        yield url
    finally:
        await drop_database(url)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[PostgresReplicaStore]:
    pool = await create_pool(db_url, min_size=1, max_size=4)
    try:
        yield PostgresReplicaStore(pool)
    finally:
        await pool.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def status(model: str, replica: str, state: ModelState = ModelState.READY, **extra: object) -> ModelStatus:
    return ModelStatus(name=model, backend="", dimensions=None, replica=replica, state=state, **extra)  # type: ignore[arg-type]


async def test_each_replica_keeps_its_own_last_state_of_a_model(store: PostgresReplicaStore) -> None:
    model, a, b = unique("m"), unique("a"), unique("b")
    stamp = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    await store.save_model_status(status(model, a, ModelState.DOWNLOADING, attempts=1, bytes_done=10, bytes_total=99))
    await store.save_model_status(status(model, b, ModelState.NOT_DOWNLOADED))
    failed = status(model, a, ModelState.FAILED, attempts=3, bytes_done=50, bytes_total=99, last_error="timeout",
                    device=None, fallback_for=None, updated_at=stamp)  # fmt: skip
    await store.save_model_status(failed)

    saved = {s.replica: s for s in await store.model_statuses() if s.name == model}
    assert saved[a] == failed  # the later save of A replaced A's row, B's row stands
    late = status(model, a, ModelState.QUEUED, updated_at=stamp - timedelta(hours=1))
    await store.save_model_status(late)  # a write that arrives late never goes back in time
    assert {s.replica: s for s in await store.model_statuses() if s.name == model}[a] == failed
    assert saved[b].state is ModelState.NOT_DOWNLOADED
    assert [s.name for s in await store.model_statuses(a)] == [model]


async def test_only_replicas_that_heart_beat_are_live(store: PostgresReplicaStore, db_url: str) -> None:
    model, alive, gone = unique("m"), unique("alive"), unique("gone")
    for replica in (alive, gone):
        await store.save_model_status(status(model, replica))
        await store.heartbeat(replica)
    connection = await asyncpg.connect(db_url)
    try:  # `gone` last beat a minute ago
        await connection.execute(
            "UPDATE replica_heartbeats SET seen_at = now() - interval '60 seconds' WHERE replica = $1", gone
        )
    finally:
        await connection.close()
    live = {s.replica for s in await store.live_model_statuses(15) if s.name == model}
    assert live == {alive}

    await store.forget_replica(alive)  # a replica that shuts down leaves at once
    assert {s.replica for s in await store.live_model_statuses(15) if s.name == model} == set()


async def test_the_download_lock_has_one_holder_at_a_time(store: PostgresReplicaStore, db_url: str) -> None:
    key = unique("lock")
    other_pool = await create_pool(db_url, min_size=1, max_size=2)
    other = PostgresReplicaStore(other_pool)
    try:
        async with store.try_hold(key) as first:
            async with other.try_hold(key) as second:
                assert first is True and second is False
        async with other.try_hold(key) as after_release:
            assert after_release is True
    finally:
        await other_pool.close()


async def test_the_lock_is_released_when_its_holder_is_killed(store: PostgresReplicaStore, db_url: str) -> None:
    key = unique("lock")
    holder_code = (
        "import asyncio, asyncpg, sys\n"
        "async def main():\n"
        f"    c = await asyncpg.connect({db_url!r})\n"
        f"    assert await c.fetchval('SELECT pg_try_advisory_lock($1)', {lock_id(key)})\n"
        "    print('held', flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        async with store.try_hold(key) as mine:
            assert mine is False
        holder.kill()  # SIGKILL: no unlock, no goodbye; PostgreSQL notices the closed connection
        holder.wait(timeout=10)
        for _ in range(100):
            async with store.try_hold(key) as mine:
                if mine:
                    break
            await asyncio.sleep(0.1)
        assert mine is True
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


async def test_migration_0004_replaces_model_status(db_url: str) -> None:
    url = await create_database("citadel_replicas_mig")
    try:
        await upgrade_async(url, "0001")
        assert "model_status" in await schema_columns(url)
        await upgrade_async(url)
        tables = await schema_columns(url)
        assert "model_status" not in tables and {"model_replicas", "replica_heartbeats"} <= set(tables)
    finally:
        await drop_database(url)
