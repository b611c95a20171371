"""A real service stack for ingest/search/reconciler tests.

Fresh PostgreSQL database (migrated), a real vector store (Qdrant Edge in tmp_path, or
qdrant-client's local mode behind QdrantServerStore), the real model pool with the bundled
all-MiniLM-L6-v2 (loaded once per process), and the embedding cache on the tests' Redis
(tests/support/services.py) under a unique key prefix that is removed afterwards.

    from tests.support.stack import model_runtime, open_stack
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app.domain.vectors import stored_point_ids
from app.adapters.migrations import upgrade_async
from app.adapters.postgres import PostgresRepo
from app.adapters.postgres_pool import create_pool
from app.adapters.qdrant_edge import QdrantEdgeStore
from app.adapters.qdrant_server import QdrantServerStore
from app.adapters.redis_cache import EmbeddingCache
from app.domain.vectors import VectorPoint
from app.inference.metrics import FORWARD_PASSES, sample_sum
from app.inference.pool import ModelPool
from app.services.collections import CollectionService
from app.services.embedding import EmbeddingService
from tests.support.local_models import LocalModels
from app.domain.ids import point_id
from app.services.ingest import IngestService
from app.services.reconciler import Reconciler
from app.services.search import SearchService
from app.domain.models import FALLBACK_MODEL
from app.settings import CacheSettings, InferenceSettings, IngestSettings, Settings
from tests.support.databases import temporary_database
from tests.support.services import redis_url

STORE_KINDS = ("edge", "local")


@dataclass
class ModelRuntime:
    """The model pool and its READY-model source, shared by every stack of the session."""

    settings: Settings
    pool: ModelPool
    models: LocalModels


@pytest.fixture(scope="session")
async def model_runtime() -> AsyncIterator[ModelRuntime]:
    settings = Settings(_env_file=None, default_model=FALLBACK_MODEL, inference=InferenceSettings(devices="cpu"))  # type: ignore[call-arg]
    pool = ModelPool(settings)
    models = LocalModels(settings, pool)
    await models.ready_spec(FALLBACK_MODEL)  # load once, before any test measures forward passes
    try:
        yield ModelRuntime(settings, pool, models)
    finally:
        await pool.close()


def forward_passes(model: str = FALLBACK_MODEL) -> float:
    return sample_sum(FORWARD_PASSES, "citadel_forward_passes_total", model=model)


class FlakyStore:
    """The real store with switches: after `fail_after_points` more upserted points, or on any
    delete / collection create while `fail_deletes` / `fail_creates`, calls raise
    ConnectionError, as a store going away would."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail_after_points: int | None = None
        self.fail_deletes = False
        self.fail_creates = False

    def restore(self) -> None:
        self.fail_after_points = None
        self.fail_deletes = False
        self.fail_creates = False

    async def create_collection(self, name: str, *args: Any, **kwargs: Any) -> None:
        if self.fail_creates:
            raise ConnectionError("vector store went away (injected)")
        await self.inner.create_collection(name, *args, **kwargs)

    async def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        if self.fail_after_points is not None:
            if len(points) > self.fail_after_points:
                self.fail_after_points = 0
                raise ConnectionError("vector store went away (injected)")
            self.fail_after_points -= len(points)
        await self.inner.upsert(name, points)

    async def delete(self, name: str, ids: Sequence[str]) -> None:
        if self.fail_deletes:
            raise ConnectionError("vector store went away (injected)")
        await self.inner.delete(name, ids)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)


@dataclass
class Stack:
    settings: Settings
    repo: PostgresRepo
    store: FlakyStore
    embedder: EmbeddingService
    models: LocalModels
    collections: CollectionService
    ingest: IngestService
    search: SearchService
    reconciler: Reconciler


def _open_store(kind: str, base: Path) -> Any:
    if kind == "edge":
        return QdrantEdgeStore(base / "qdrant")
    if kind == "local":
        from qdrant_client import AsyncQdrantClient

        return QdrantServerStore(client=AsyncQdrantClient(location=":memory:"))
    raise ValueError(f"unknown store kind {kind!r}")


@asynccontextmanager
async def open_stack(
    runtime: ModelRuntime, store_kind: str, base: Path, *, embed_batch: int = 256, cache_prefix: str | None = None
) -> AsyncIterator[Stack]:
    prefix = cache_prefix or f"citadel-test:{uuid.uuid4().hex}:"
    async with temporary_database("citadel_test_ingest") as url:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=base,
            default_model=FALLBACK_MODEL,
            database_url=url,
            redis_url=redis_url(),
            # A loaded 2-core machine can be slow to answer; a skipped cache would re-encode.
            cache=CacheSettings(key_prefix=prefix, timeout_ms=5_000),
            ingest=IngestSettings(embed_batch=embed_batch, reconcile_interval_seconds=0.05),
            inference=runtime.settings.inference,
        )
        await upgrade_async(url)
        pg_pool = await create_pool(url, max_size=4)
        redis = Redis.from_url(settings.redis_url)
        store = FlakyStore(_open_store(store_kind, base))
        try:
            repo = PostgresRepo(pg_pool)
            embedder = EmbeddingService(settings, runtime.pool, EmbeddingCache(redis, settings.cache), runtime.models)
            yield Stack(
                settings=settings,
                repo=repo,
                store=store,
                embedder=embedder,
                models=runtime.models,
                collections=CollectionService(settings, repo, store, runtime.models),
                ingest=IngestService(settings, repo, store, embedder, runtime.models),
                search=SearchService(settings, repo, store, embedder, runtime.models),
                reconciler=Reconciler(
                    repo, store, embedder, settings.ingest.reconcile_interval_seconds, settings, runtime.models
                ),
            )
        finally:
            await store.inner.close()
            await pg_pool.close()
            if cache_prefix is None:
                await clear_cache(redis, prefix)
            await redis.aclose()


async def clear_cache(redis: Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}*", count=1_000):
        batch.append(key)
        if len(batch) >= 1_000:
            await redis.delete(*batch)
            batch.clear()
    if batch:
        await redis.delete(*batch)


async def both_sides(stack: Stack, collection: str) -> tuple[set[str], set[str]]:
    """(point ids PostgreSQL says should exist: its indexed rows, point ids the store holds)."""
    rows = await pg_state(stack, collection)
    expected = {point_id(collection, doc_id) for doc_id, (_, status) in rows.items() if status == "indexed"}
    return expected, set(await stored_point_ids(stack.store, collection))


async def pg_state(stack: Stack, collection: str) -> dict[str, tuple[str, str]]:
    """id -> (content hash, status) of every row, deleting ones included."""
    rows = []
    after = None
    while True:
        page = await stack.repo.list_documents(collection, after, 1_000, include_deleting=True)
        rows.extend(page)
        if len(page) < 1_000:
            break
        after = page[-1].id
    return {r.id: (r.content_hash, r.status) for r in rows}


# -- a corpus of short sentences with varied metadata -------------------------------------------

_ADJECTIVES = ["quiet", "bright", "ancient", "tiny", "busy", "frozen", "golden", "rusty", "gentle", "noisy"]
_SUBJECTS = ["chef", "sailor", "robot", "violinist", "gardener", "astronomer", "cyclist", "baker", "pilot", "poet"]
_ACTIONS = [
    "cooks pasta",
    "repairs a boat",
    "plays a melody",
    "plants tomatoes",
    "watches the stars",
    "races downhill",
    "bakes fresh bread",
    "flies over mountains",
    "writes a sonnet",
    "studies old maps",
]
_PLACES = [
    "in the harbor",
    "at the market",
    "on the roof",
    "by the river",
    "in the desert",
    "at the stadium",
    "in a library",
    "under the bridge",
    "in the kitchen",
    "on the island",
]
TOPICS = ["cooking", "travel", "science", "sport", "music"]
TAGS = ["red", "green", "blue", "new", "sale"]
AUTHORS = ["ann", "bob", "cy"]


def corpus(size: int, seed: int = 7) -> list[dict[str, Any]]:
    """`size` (<= 10,000) distinct short sentences; metadata covers every filter operator,
    with some fields missing, null, empty lists and nested objects."""
    import numpy as np

    rng = np.random.default_rng(seed)
    combos = rng.permutation(10_000)[:size]
    docs = []
    for i, combo in enumerate(combos):
        a, s, v, p = (int(combo) // 1000) % 10, (int(combo) // 100) % 10, (int(combo) // 10) % 10, int(combo) % 10
        text = f"The {_ADJECTIVES[a]} {_SUBJECTS[s]} {_ACTIONS[v]} {_PLACES[p]}."
        metadata: dict[str, Any] = {
            "topic": TOPICS[int(rng.integers(len(TOPICS)))],
            "n": i,
            "flag": bool(rng.integers(2)),
            "tags": [TAGS[int(t)] for t in rng.choice(len(TAGS), size=int(rng.integers(0, 4)), replace=False)],
            "author": {"name": AUTHORS[i % len(AUTHORS)]},
        }
        if i % 5:
            metadata["price"] = round(float(rng.uniform(0, 100)), 2)
        if i % 7:
            month, day, hour = int(rng.integers(1, 13)), int(rng.integers(1, 29)), int(rng.integers(0, 24))
            metadata["published"] = f"2024-{month:02d}-{day:02d}T{hour:02d}:00:00Z"
        if i % 3 == 0:
            metadata["rating"] = None if i % 2 else int(rng.integers(1, 6))
        docs.append({"id": f"doc-{i:05d}", "text": text, "metadata": metadata})
    return docs
