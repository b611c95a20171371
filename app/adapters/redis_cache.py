"""The embedding cache in Redis, shared by every gateway replica.

Keys: prefix + sha256 over (model, revision, prompt, normalize, sha256(text)); values: the
vector as packed little-endian float32. One MGET per lookup, one pipeline of SET EX per write.
The cache is an optimisation only: an error or a call slower than settings.timeout_ms is
logged (rate-limited), counted in citadel_cache_errors_total, and treated as a miss or a skipped
write. It never raises. After a failure the cache is left alone for `cooldown_seconds` (a simple
circuit breaker), so an outage costs one timeout per cool-down, not two per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from loguru import logger
from redis.asyncio import Redis

from app.inference import metrics
from app.settings import CacheSettings

T = TypeVar("T")

_DTYPE = np.dtype("<f4")
_WARN_EVERY_SECONDS = 30.0


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

    def keys(self, model: str, revision: str, prompt: str, normalize: bool, texts: Sequence[str]) -> list[str]:
        """One key per text. The prompt (not the kind) is hashed: kinds with equal prompts share."""
        space = hashlib.sha256(json.dumps([model, revision, prompt, normalize]).encode()).digest()
        prefix = self.key_prefix
        return [
            prefix + hashlib.sha256(space + hashlib.sha256(text.encode()).digest()).hexdigest() for text in texts
        ]

    async def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        if not keys:
            return []
        values = await self._guard("get", lambda: self.redis.mget(list(keys)))
        if values is None:
            return [None] * len(keys)
        # Anything but whole float32s (a foreign value under our prefix) is a miss, not an error.
        return [
            np.frombuffer(v, dtype=_DTYPE) if isinstance(v, bytes) and v and len(v) % _DTYPE.itemsize == 0 else None
            for v in values
        ]

    async def set_many(self, items: dict[str, np.ndarray]) -> None:
        if not items:
            return

        def write() -> Awaitable[list[Any]]:
            pipe = self.redis.pipeline(transaction=False)
            for key, vector in items.items():
                pipe.set(key, np.asarray(vector, dtype=_DTYPE).tobytes(), ex=self.settings.ttl_seconds)
            return pipe.execute()

        await self._guard("set", write)

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
