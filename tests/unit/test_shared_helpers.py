"""Helpers written once and used by several modules: task shutdown, file hashing, normalisation."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest

from app.domain.embedding import unit_rows
from app.downloads.hashing import HASH_BLOCK_BYTES, feed_file, sha256_of
from app.tasks import cancel_and_wait


async def test_cancel_and_wait_stops_every_task_and_skips_none():
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(forever()) for _ in range(3)]
    await started.wait()
    await cancel_and_wait(tasks[0], None, *tasks[1:])
    assert all(t.done() and t.cancelled() for t in tasks)
    await cancel_and_wait()  # nothing to do
    await cancel_and_wait(tasks[0])  # already finished: no error


async def test_cancel_and_wait_reraises_what_a_task_raised_instead_of_stopping():
    async def refuses() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(refuses())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)


async def test_cancel_and_wait_ignores_what_tasks_raised_when_told_to():
    ready = asyncio.Event()

    async def refuses() -> None:
        try:
            ready.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    failing = asyncio.create_task(refuses())
    await ready.wait()
    await cancel_and_wait(failing, None, ignore_errors=True)  # shutdown paths: the task logs its own failure
    assert isinstance(failing.exception(), RuntimeError)


async def test_cancel_and_wait_lets_the_callers_own_cancellation_through():
    release, started, stopping = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            started.set()
            await asyncio.Event().wait()  # until cancelled
        finally:
            stopping.set()
            await release.wait()

    inner = asyncio.create_task(slow_to_stop())
    await started.wait()
    outer = asyncio.create_task(cancel_and_wait(inner))
    await stopping.wait()  # outer has cancelled inner and waits for it to finish
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    release.set()
    await asyncio.wait([inner])
    assert inner.cancelled()


def test_file_hashing_reads_every_block(tmp_path):
    data = bytes(range(256)) * (HASH_BLOCK_BYTES // 256 * 2 + 3)  # more than two blocks, not a multiple
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()
    sizes: list[int] = []
    feed_file(path, lambda block: sizes.append(len(block)))
    assert sum(sizes) == len(data) and max(sizes) == HASH_BLOCK_BYTES and len(sizes) == 3


def test_unit_rows_scales_to_length_one_and_keeps_zero_rows():
    vectors = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]], dtype=np.float32)
    unit = unit_rows(vectors)
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
    assert unit.dtype == np.float32
