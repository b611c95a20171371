"""Bulk work waits for room in the model's queue instead of failing (ModelPool.encode's
wait_for_room): writers that ingest at once slow down to the model's pace; interactive requests
still get OVERLOADED at once. Real bundled model."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import Overloaded
from app.inference.pool import ModelPool
from app.domain.models import FALLBACK_MODEL
from tests.support.models import engine_settings, minilm_dir, minilm_spec  # noqa: F401
from tests.support.polling import wait_until

pytestmark = pytest.mark.slow
KEY = "key:bulk"


def pending_of(pool: ModelPool, key: str) -> int:
    return sum(replica.batcher.pending_of(key) for replica in pool._loaded[FALLBACK_MODEL].replicas)


async def test_a_full_share_makes_bulk_work_wait_and_interactive_work_fail(minilm_dir):
    pool = ModelPool(engine_settings(max_queue_per_key=40))
    await pool.load(minilm_spec(), minilm_dir)
    try:
        batches = [[f"writer {w} document {i} about harbors and boats" for i in range(40)] for w in range(4)]
        first = asyncio.create_task(pool.encode(FALLBACK_MODEL, batches[0], True, fair_key=KEY))
        await wait_until(lambda: pending_of(pool, KEY) > 0, "the first writer's texts queued")
        with pytest.raises(Overloaded, match="for this caller"):
            await pool.encode(FALLBACK_MODEL, batches[1], True, fair_key=KEY)

        waiting = [
            asyncio.create_task(pool.encode(FALLBACK_MODEL, texts, True, fair_key=KEY, wait_for_room=True)) for texts in batches[1:]
        ]
        results = await asyncio.gather(first, *waiting)
        assert [r.shape for r in results] == [(40, 384)] * 4
        assert pending_of(pool, KEY) == 0
    finally:
        await pool.close()


async def test_a_waiting_caller_that_is_cancelled_leaves_nothing_queued(minilm_dir):
    pool = ModelPool(engine_settings(max_queue_per_key=20))
    await pool.load(minilm_spec(), minilm_dir)
    try:
        first = asyncio.create_task(pool.encode(FALLBACK_MODEL, [f"first {i}" for i in range(20)], True, fair_key=KEY))
        await wait_until(lambda: pending_of(pool, KEY) > 0, "the first texts queued")
        waiter = asyncio.create_task(pool.encode(FALLBACK_MODEL, [f"second {i}" for i in range(20)], True, fair_key=KEY, wait_for_room=True))
        await wait_until(lambda: bool(pool._loaded[FALLBACK_MODEL].room_waiters), "the second caller waiting for room")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await first
        assert pending_of(pool, KEY) == 0
    finally:
        await pool.close()
