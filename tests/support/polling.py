"""Waiting for a condition in async tests without asserting on time: poll, and fail naming it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(predicate: Callable[[], bool], what: str, attempts: int = 6_000, every_s: float = 0.005) -> None:
    """Return once `predicate()` holds; AssertionError naming `what` after `attempts` polls."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(every_s)
    raise AssertionError(f"never happened: {what}")
