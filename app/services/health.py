"""Dependency health: each store reached for real, with its latency; never raises.

`measure` is the one way a probe is timed and its failure described: the health query and
`citadel doctor` both use it. `Disclosure` is what one caller may read of it (and of the models'
errors): everything for ADMIN, no filesystem path, URL or address for anyone else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

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


@dataclass(frozen=True)
class Measurement:
    """One probe's outcome: what it returned and how long it took, or why it failed."""

    ok: bool
    value: Any = None
    latency_ms: float | None = None  # unrounded; None when the probe failed
    error: str | None = None


def describe_error(exc: BaseException) -> str:
    """`Type: message`, short enough to show; a bare timeout says so."""
    text = str(exc).strip()
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and not text:
        text = "timed out"
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


async def measure(probe: Callable[[], Awaitable[Any]], timeout: float = PROBE_TIMEOUT_S) -> Measurement:
    started = time.perf_counter()
    try:
        value = await asyncio.wait_for(probe(), timeout)
    except Exception as exc:  # a probe reports failure, it never raises
        return Measurement(ok=False, error=describe_error(exc))
    return Measurement(ok=True, value=value, latency_ms=(time.perf_counter() - started) * 1000)


class HealthService:
    def __init__(self, probes: dict[str, tuple[str, Callable[[], Awaitable[Any]]]]) -> None:
        # name -> (detail shown when healthy, e.g. "embedded" or the masked URL; probe)
        self.probes = probes

    async def check(self) -> HealthReport:
        results = await asyncio.gather(*(self._probe(n, d, p) for n, (d, p) in self.probes.items()))
        status = "ok" if all(r.ok for r in results) else "degraded"
        return HealthReport(status=status, dependencies=list(results))

    async def _probe(self, name: str, detail: str, probe: Callable[[], Awaitable[Any]]) -> DependencyStatus:
        result = await measure(probe)
        if not result.ok:
            return DependencyStatus(name, False, None, result.error)
        return DependencyStatus(name, True, round(result.latency_ms or 0.0, 3), detail)


# A URL (credentials and all), and an absolute path (POSIX, `~`, a Windows drive or share) that
# does not continue a word: `1/3` and `and/or` stay.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
_PATH = re.compile(r"(?<![\w.~-])(?:~|[A-Za-z]:)?[/\\][^\s'\"<>|,;()\[\]{}]*")
_Status = TypeVar("_Status")


def without_paths(text: str, directories: Iterable[str] = ()) -> str:
    """`text` with every URL (`<url>`) and filesystem path (`<path>`) taken out. `directories`
    (the server's own, such as the data dir) go first, so a space in one does not leave a part."""
    text = _URL.sub("<url>", text)
    for directory in sorted(directories, key=len, reverse=True):
        text = text.replace(directory, "/")  # whatever follows it is then taken out with it
    return _PATH.sub("<path>", text)


@dataclass(frozen=True)
class Disclosure:
    """What one caller may read of the server's insides: everything (`full`, ADMIN); for anyone
    else, errors without paths or URLs, and no address of a healthy dependency."""

    full: bool
    directories: tuple[str, ...] = ()

    def text(self, text: str | None) -> str | None:
        return text if self.full or text is None else without_paths(text, self.directories)

    def report(self, report: HealthReport) -> HealthReport:
        if self.full:
            return report
        shown = [
            dataclasses.replace(d, detail=None if d.ok else self.text(d.detail)) for d in report.dependencies
        ]
        return HealthReport(report.status, shown)

    def errors(self, item: _Status) -> _Status:
        """A model status or download event with its `last_error` (and `message`) disclosed."""
        if self.full:
            return item
        changes = {name: self.text(getattr(item, name)) for name in ("last_error", "message") if hasattr(item, name)}
        return dataclasses.replace(item, **changes)  # type: ignore[type-var]
