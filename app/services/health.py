"""Dependency health: each store reached for real, with its latency; never raises."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class DependencyStatus:
    name: str
    ok: bool
    latency_ms: float | None
    detail: str | None


@dataclass(frozen=True)
class HealthReport:
    status: str  # "ok" | "degraded"
    dependencies: list[DependencyStatus]


class HealthService:
    def __init__(self, probes: dict[str, tuple[str, Callable[[], Awaitable[Any]]]]) -> None:
        # name -> (detail shown when healthy, e.g. "embedded" or the masked URL; probe)
        self.probes = probes

    async def check(self) -> HealthReport:
        results = await asyncio.gather(*(self._probe(n, d, p) for n, (d, p) in self.probes.items()))
        status = "ok" if all(r.ok for r in results) else "degraded"
        return HealthReport(status=status, dependencies=list(results))

    async def _probe(self, name: str, detail: str, probe: Callable[[], Awaitable[Any]]) -> DependencyStatus:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(probe(), PROBE_TIMEOUT_S)
        except Exception as exc:  # a probe reports failure, it never raises
            return DependencyStatus(name, False, None, f"{type(exc).__name__}: {exc}"[:300])
        return DependencyStatus(name, True, round((time.perf_counter() - started) * 1000, 3), detail)


def mask_url(url: str) -> str:
    """Hide the password of a URL before it is shown anywhere."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
