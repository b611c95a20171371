"""Reads that no index answers, bounded: a per-request budget of points (or rows) scanned, and
the worker threads scan pages run on.

Some reads can only look at every point or row: facets of a field outside the collection's
indexedFields, a tenant-bound key's document counts and pages (its filter is checked against
each row's metadata). Such a read streams page by page, counting as it goes, and each page's
work runs in SCAN_THREADS worker threads, never on the event loop and never on more threads than
those, so other requests (and the default executor's users: Qdrant Edge searches, health
checks) go on meanwhile. Its cost is charged to the request's ScanBudget before it starts: a
request that would read more than CITADEL_LIMITS__MAX_SCAN_POINTS in all is BAD_INPUT before
the work.
"""

from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from app.errors import BadInput

T = TypeVar("T")

# Scans share at most half the cores (at least one thread): the rest stay with the event loop
# and the model passes.
SCAN_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))
SETTING = "CITADEL_LIMITS__MAX_SCAN_POINTS"

_pool: ThreadPoolExecutor | None = None


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` (one page of a scan) in a scan thread. Pages of concurrent scans queue in
    turn (first in, first out), so they interleave page by page; a cancelled caller stops
    after the page in flight."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=SCAN_THREADS, thread_name_prefix="citadel-scan")
    return await asyncio.get_running_loop().run_in_executor(_pool, functools.partial(fn, *args))


class ScanBudget:
    """Points (or rows) one request may still read by scanning; `limit` 0: no limit.

    One per request (the GraphQL context holds it, fresh per operation), so every alias of a
    document draws from the same budget; services called without one make their own per call.
    Not thread-safe: charge it on the event loop, before the scan.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(0, int(limit))
        self.used = 0

    def charge(self, points: int, what: str, fix: str, unit: str = "points") -> None:
        """Reserve `points` for a scan about to start, or BadInput saying what would be scanned,
        the limit, and `fix` (how to ask without a scan)."""
        if self.limit and self.used + points > self.limit:
            raise self.refusal(f"{what} would scan {points} {unit}", fix)
        self.used += points

    def refusal(self, what: str, fix: str) -> BadInput:
        """The BAD_INPUT for a scan this budget cannot pay for."""
        earlier = f", after {self.used} already scanned by this request" if self.used else ""
        return BadInput(
            f"{what}{earlier}; one request may scan at most {self.limit} ({SETTING}). {fix}",
            maxScanPoints=self.limit,
        )

    def take(self, wanted: int) -> int:
        """Up to `wanted` points from what is left, reserved: for a scan that can stop early and
        say where to go on (a page with a cursor)."""
        granted = wanted if not self.limit else max(0, min(wanted, self.limit - self.used))
        self.used += granted
        return granted

    def give_back(self, points: int) -> None:
        """Return what a `take` reserved and the scan did not read (the last page was short)."""
        self.used = max(0, self.used - points)
