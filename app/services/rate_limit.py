"""Per-key rate limits: a token bucket in Redis, shared by every replica.

Each key with `ratePerSecond` r has a bucket of capacity max(1, r * burst_seconds) that refills
at r tokens per second; a request takes one token or is refused with the seconds until one is
there. One Lua script reads, refills and takes atomically, on Redis's clock, so replicas agree.
When Redis cannot be reached the same bucket runs in this process (limits then hold per
replica), which is logged once, and again when Redis is back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loguru import logger

from app.domain.access import Principal
from app.errors import RateLimited

REDIS_TIMEOUT_SECONDS = 0.5

# KEYS[1] bucket; ARGV rate, capacity. Returns {allowed (0/1), seconds to wait (string)}.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


class LocalBuckets:
    """The same bucket in this process, for when Redis is away."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, rate: float, capacity: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        tokens, ts = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + max(0.0, now - ts) * rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / rate


class RateLimiter:
    def __init__(self, redis: Any, burst_seconds: float, key_prefix: str = "citadel:rate:") -> None:
        self.redis = redis
        self.burst_seconds = burst_seconds
        self.key_prefix = key_prefix
        self.local = LocalBuckets()
        self.degraded = False
        self._script = redis.register_script(TOKEN_BUCKET_LUA) if redis is not None else None

    def capacity(self, rate: float) -> float:
        return max(1.0, rate * self.burst_seconds)

    async def check(self, principal: Principal) -> None:
        """Take one token of the caller's bucket, or RATE_LIMITED with `retryAfter` seconds."""
        rate = principal.rate_per_second
        if not rate or principal.key_id is None:
            return
        wait = await self._take(f"{self.key_prefix}{principal.key_id}", rate, self.capacity(rate))
        if wait > 0:
            retry_after = round(max(wait, 0.001), 3)
            raise RateLimited(f"rate limit of {rate:g} requests per second exceeded; retry in {retry_after} s", retry_after)

    async def _take(self, key: str, rate: float, capacity: float) -> float:
        if self._script is not None:
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                    allowed, wait = await self._script(keys=[key], args=[rate, capacity])
            except Exception as exc:  # Redis down or slow: limits go on, per replica
                if not self.degraded:
                    self.degraded = True
                    logger.warning("rate limits hold per replica only: Redis is unreachable ({!r})", exc)
            else:
                if self.degraded:
                    self.degraded = False
                    logger.info("rate limits are shared through Redis again")
                return 0.0 if int(allowed) else float(wait)
        return self.local.take(key, rate, capacity)
