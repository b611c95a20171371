"""The embedding cache in Redis, shared by every gateway replica.

Keys: prefix + sha256 over (model, revision, prompt, normalize, sha256(text)); values: the
vector as packed little-endian float32. Concurrent requests share Redis calls (Coalescer): while
one MGET is in flight, the lookups of the requests behind it gather into the next one, and so do
the writes (one pipeline of SET EX). Under 64 concurrent cold requests two Redis calls per request
were ~16% of the event loop's time (py-spy); a lone request still makes its own call at once.
The cache is an optimisation only: an error or a call slower than settings.timeout_ms is
logged (rate-limited), counted in citadel_cache_errors_total, and treated as a miss or a skipped
write. It never raises. After a failure the cache is left alone for `cooldown_seconds` (a simple
circuit breaker), so an outage costs one timeout per cool-down, not two per request.

In front of Redis, each replica keeps the vectors it read or wrote last in memory (LocalTier, up
to `local_max_mb`): a key names the model revision, prompt and text, so its vector never changes
and a local copy is never stale. A hit there costs no Redis round trip (~10% of a cached `embed`'s
CPU, and its latency); entries expire from Redis by TTL and from memory by least recent use.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
from loguru import logger
from redis.asyncio import Redis

from app.inference import metrics
from app.settings import CacheSettings

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

_DTYPE = np.dtype("<f4")
_WARN_EVERY_SECONDS = 30.0


class LocalTier:
    """A byte-bounded LRU of cached vectors, in this process."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self.entries: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        vector = self.entries.get(key)
        if vector is not None:
            self.entries.move_to_end(key)
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        if self.max_bytes <= 0 or key in self.entries:
            return
        vector = np.array(vector, dtype=_DTYPE)  # an own, read-only copy: callers may reuse theirs
        vector.flags.writeable = False
        self.entries[key] = vector
        self.used_bytes += vector.nbytes
        while self.used_bytes > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.used_bytes -= evicted.nbytes


class Coalescer(Generic[K, V]):
    """Callers' items merged into one call: the first caller starts a call at once; callers who
    come while it is in flight wait and go together in the next. Each caller gets the results of
    its own items, in order; a call that returns None (the cache skipped it) gives each None."""

    def __init__(self, call: Callable[[list[K]], Awaitable[list[V] | None]]) -> None:
        self._call = call
        self._waiting: list[tuple[list[K], asyncio.Future[list[V] | None]]] = []
        self._drainer: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    async def submit(self, items: list[K]) -> list[V] | None:
        future: asyncio.Future[list[V] | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                batch = [(items, future) for items, future in batch if not future.done()]  # callers gone
                results: list[V] | None = None
                try:
                    if batch:
                        results = await self._call([item for items, _ in batch for item in items])
                except Exception:  # noqa: BLE001  a bug below must cost a cache miss, not the request
                    logger.exception("cache call failed")
                finally:  # cancelled (shutdown) or failed: every caller is answered, none left waiting
                    start = 0
                    for items, future in batch:
                        if not future.done():
                            future.set_result(None if results is None else results[start : start + len(items)])
                        start += len(items)
        finally:
            self._drainer = None
            for _, future in self._waiting:
                if not future.done():
                    future.set_result(None)
            self._waiting = []


class EmbeddingCache:
    def __init__(
        self, redis: Redis, settings: CacheSettings, cooldown_seconds: float = 2.0, *, key_prefix: str | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        # The app passes Settings.embedding_key_prefix (inside the cluster's Redis namespace).
        self.key_prefix = key_prefix if key_prefix is not None else (settings.key_prefix or "citadel:emb:")
        self.cooldown_seconds = cooldown_seconds
        self._skip_until = float("-inf")
        self._last_warning = float("-inf")
        self._suppressed = 0
        self.local = LocalTier(settings.local_max_mb * 1024 * 1024)
        self._reads: Coalescer[str, Any] = Coalescer(self._mget)
        self._writes: Coalescer[tuple[str, np.ndarray], Any] = Coalescer(self._set_pipeline)

    def keys(self, model: str, revision: str, prompt: str, normalize: bool, texts: Sequence[str]) -> list[str]:
        """One key per text. The prompt (not the kind) is hashed: kinds with equal prompts share."""
        space = hashlib.sha256(json.dumps([model, revision, prompt, normalize]).encode()).digest()
        prefix = self.key_prefix
        return [
            prefix + hashlib.sha256(space + hashlib.sha256(text.encode()).digest()).hexdigest() for text in texts
        ]

    async def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        found = [self.local.get(key) for key in keys]
        missing = [index for index, vector in enumerate(found) if vector is None]
        if not missing:
            return found
        values = await self._reads.submit([keys[index] for index in missing])
        if values is None:
            return found
        for index, value in zip(missing, values):
            # Anything but whole float32s (a foreign value under our prefix) is a miss, not an error.
            if isinstance(value, bytes) and value and len(value) % _DTYPE.itemsize == 0:
                found[index] = vector = np.frombuffer(value, dtype=_DTYPE)
                self.local.put(keys[index], vector)
        return found

    async def set_many(self, items: dict[str, np.ndarray]) -> None:
        if not items:
            return
        for key, vector in items.items():
            self.local.put(key, vector)
        await self._writes.submit(list(items.items()))

    async def _mget(self, keys: list[str]) -> list[Any] | None:
        return await self._guard("get", lambda: self.redis.mget(keys))

    async def _set_pipeline(self, items: list[tuple[str, np.ndarray]]) -> list[Any] | None:
        def write() -> Awaitable[list[Any]]:
            pipe = self.redis.pipeline(transaction=False)
            for key, vector in items:
                pipe.set(key, np.asarray(vector, dtype=_DTYPE).tobytes(), ex=self.settings.ttl_seconds)
            return pipe.execute()

        return await self._guard("set", write)

    async def _guard(self, operation: str, call: Callable[[], Awaitable[T]]) -> T | None:
        if time.monotonic() < self._skip_until:
            return None
        try:
            # asyncio.timeout, not wait_for: no extra task per call on the hot path.
            async with asyncio.timeout(self.settings.timeout_ms / 1000.0):
                return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  Redis down, slow, or answering nonsense: serve without it
            metrics.CACHE_ERRORS.labels(operation).inc()
            self._skip_until = time.monotonic() + self.cooldown_seconds
            self._warn(operation, exc)
            return None

    def _warn(self, operation: str, exc: Exception) -> None:
        # An outage would otherwise log once per request; one line per interval says enough.
        now = time.monotonic()
        if now - self._last_warning < _WARN_EVERY_SECONDS:
            self._suppressed += 1
            return
        detail = "timed out" if isinstance(exc, TimeoutError) else f"{exc.__class__.__name__}: {exc}"
        more = f" ({self._suppressed} more cache errors since the last warning)" if self._suppressed else ""
        logger.warning("embedding cache {} failed, serving without the cache: {}{}", operation, detail, more)
        self._last_warning = now
        self._suppressed = 0
