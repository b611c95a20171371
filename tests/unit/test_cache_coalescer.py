"""Coalescer: concurrent callers share calls, each gets its own items' results."""

from __future__ import annotations

import asyncio

from app.adapters.redis_cache import Coalescer


class HeldCall:
    """A call that records its batches and waits for `release` before answering (doubled items)."""

    def __init__(self, answer_none: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.answer_none = answer_none

    async def __call__(self, items: list[int]) -> list[int] | None:
        self.batches.append(items)
        await self.release.wait()
        return None if self.answer_none else [2 * item for item in items]


async def test_callers_behind_a_call_in_flight_share_the_next_one():
    call = HeldCall()
    coalescer = Coalescer(call)
    first = asyncio.create_task(coalescer.submit([1]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert call.batches == [[1]]  # a lone caller does not wait for company
    behind = [asyncio.create_task(coalescer.submit([10 * n, 10 * n + 1])) for n in range(1, 6)]
    await asyncio.sleep(0)
    call.release.set()
    assert await first == [2]
    assert [await task for task in behind] == [[20 * n, 20 * n + 2] for n in range(1, 6)]
    assert call.batches == [[1], [10, 11, 20, 21, 30, 31, 40, 41, 50, 51]]


async def test_a_skipped_call_answers_none_to_every_caller():
    call = HeldCall(answer_none=True)
    call.release.set()
    coalescer = Coalescer(call)
    assert await asyncio.gather(coalescer.submit([1]), coalescer.submit([2, 3])) == [None, None]


async def test_a_caller_that_goes_away_leaves_the_others_their_results():
    call = HeldCall()
    coalescer = Coalescer(call)
    first = asyncio.create_task(coalescer.submit([1]))
    await asyncio.sleep(0)
    gone = asyncio.create_task(coalescer.submit([5]))
    stays = asyncio.create_task(coalescer.submit([7]))
    await asyncio.sleep(0)
    gone.cancel()
    call.release.set()
    assert await first == [2]
    assert await stays == [14]
    assert call.batches == [[1], [7]]  # the cancelled caller's item was not sent


async def test_a_failing_call_leaves_nobody_waiting():
    async def broken(items: list[int]) -> list[int]:
        raise RuntimeError("bug")

    coalescer = Coalescer(broken)
    first = asyncio.create_task(coalescer.submit([1]))
    second = asyncio.create_task(coalescer.submit([2]))
    done, _ = await asyncio.wait([first, second], timeout=5)
    assert len(done) == 2
    assert await first is None and await second is None  # a miss for each, nobody stranded
