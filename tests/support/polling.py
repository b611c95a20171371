"""Waiting for a condition in async tests without asserting on time: poll, and fail naming it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(predicate: Callable[[], bool], what: str, attempts: int = 6_000, every_s: float = 0.005) -> None:
    """Return once `predicate()` holds; AssertionError naming `what` after `attempts` polls."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(every_s)
    raise AssertionError(f"never happened: {what}")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, attempts: int = 6_000, every_s: float = 0.05) -> None:
    """Return once `await check()` holds; AssertionError naming `what` after `attempts` polls."""
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(every_s)
    raise AssertionError(f"never happened: {what}")


def poll(check: Callable[[], bool], what: str, attempts: int = 1_200, every_s: float = 0.25) -> None:
    """For synchronous tests (a live server over HTTP): return once `check()` holds, else fail naming `what`."""
    for _ in range(attempts):
        if check():
            return
        time.sleep(every_s)
    raise AssertionError(f"never happened: {what}")
