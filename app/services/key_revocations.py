"""Revocations reach every replica at once: the revoking replica publishes the key id on Redis and
every replica's listener drops that key from its cache. Without Redis a replica still sees a
revocation when its cache entry expires (`auth.key_cache_seconds`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from loguru import logger

REVOKED_CHANNEL = "citadel:keys:revoked"  # tests only; servers use revocation_channel(settings)
PUBLISH_TIMEOUT_SECONDS = 0.5
RETRY_SECONDS = 2.0


def revocation_channel(settings: Any) -> str:
    """Inside the cluster's Redis namespace: another cluster on the same Redis never hears it."""
    return settings.redis_key("keys", "revoked")


async def announce_revocation(redis: Any, key_id: str, cache_seconds: float, channel: str = REVOKED_CHANNEL) -> None:
    if redis is None:
        return
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await redis.publish(channel, key_id)
    except Exception as exc:  # the revocation stands; other replicas see it when their cache expires
        logger.warning("revoked key {} reaches other replicas within {} s only (Redis: {!r})", key_id, cache_seconds, exc)


class RevocationListener:
    def __init__(self, redis: Any, keys: Any, channel: str = REVOKED_CHANNEL) -> None:
        self.redis = redis
        self.channel = channel
        self.keys = keys  # app.services.keys.KeyService
        self._task: asyncio.Task | None = None
        # Set while subscribed: from then on every announced revocation reaches this replica.
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="key-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        warned = False
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                if warned:
                    logger.info("revocations from other replicas arrive through Redis again")
                    warned = False
                async for message in pubsub.listen():
                    if message.get("type") == "subscribe":  # Redis's confirmation
                        self.subscribed.set()
                    elif message.get("type") == "message":
                        data = message["data"]
                        self.keys.forget(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not warned:
                    warned = True
                    logger.warning(
                        "revocations by other replicas apply here within {} s (Redis pub/sub: {!r})",
                        self.keys.settings.auth.key_cache_seconds, exc,
                    )  # fmt: skip
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
