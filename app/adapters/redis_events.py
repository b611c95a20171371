"""The Redis pub/sub bridge: every replica sees the download events any replica publishes.

Our own events go out through a bounded outbox (a Redis outage never slows a download; other
replicas then miss those events); the channel's events of other processes are handed to the local
EventBus. The listener keeps re-subscribing while Redis is down.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger
from prometheus_client import Counter

from app.adapters.events import EventBus
from app.domain.models import DownloadEvent
from app.tasks import cancel_and_wait

REDIS_BRIDGE_ERRORS = Counter("citadel_download_events_redis_errors_total", "Redis pub/sub bridge errors", ["op"])


class RedisEventBridge:
    def __init__(self, bus: EventBus | Any, redis: Any, channel: str, decode: Any = DownloadEvent.from_json) -> None:
        """`bus`: an EventBus, or any bus with the same publishing surface (origin, queue_size,
        send_outbound, deliver), e.g. app/adapters/job_events.JobEventBus with `decode=Job.from_json`."""
        self.bus, self.redis, self.channel, self.decode = bus, redis, channel, decode
        self._outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=bus.queue_size * 4)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Returns once the channel is subscribed, or at once when Redis is down (then it retries)."""
        if self._tasks:
            raise RuntimeError("this bridge is already started")
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
        except Exception as error:  # Redis down at startup: _listen retries with backoff
            REDIS_BRIDGE_ERRORS.labels(op="listen").inc()
            logger.warning("download events stay on this replica until Redis answers: {}", error)
        self.bus.send_outbound(self._enqueue)
        self._tasks = [
            asyncio.create_task(self._listen(pubsub), name="citadel-events-redis-listen"),
            asyncio.create_task(self._send(), name="citadel-events-redis-send"),
        ]

    def _enqueue(self, event: DownloadEvent) -> None:
        if not self._tasks:
            return
        try:
            self._outbox.put_nowait(event.to_json())
        except asyncio.QueueFull:
            REDIS_BRIDGE_ERRORS.labels(op="outbox_full").inc()

    async def _send(self) -> None:
        while True:
            payload = await self._outbox.get()
            try:
                await self.redis.publish(self.channel, payload)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a Redis outage must not stop downloads; other replicas miss the event
                REDIS_BRIDGE_ERRORS.labels(op="publish").inc()
                logger.warning("publishing a download event to Redis failed: {}", error)
            finally:
                self._outbox.task_done()

    async def _listen(self, pubsub: Any) -> None:
        backoff = 0.5
        try:
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    backoff = 0.5
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # Redis went away: keep trying, local delivery is unaffected
                    REDIS_BRIDGE_ERRORS.labels(op="listen").inc()
                    logger.warning("Redis download-event subscription broke ({}); reconnecting in {}s", error, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    pubsub = await self._resubscribe(pubsub)
                    continue
                if message and message.get("type") == "message":
                    self._relay(message["data"])
        finally:
            await _close_quietly(pubsub)

    async def _resubscribe(self, old: Any) -> Any:
        await _close_quietly(old)
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
        except Exception as error:  # still down; the next get_message fails and we come back here
            logger.debug("re-subscribing to {} failed: {}", self.channel, error)
        return pubsub

    def _relay(self, raw: bytes | str) -> None:
        try:
            event = self.decode(raw)
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring a malformed event from Redis ({}): {}", self.channel, error)
            return
        if event.origin != self.bus.origin:  # our own were delivered locally already
            self.bus.deliver(event)

    async def close(self, flush_timeout: float = 1.0) -> None:
        if self._tasks:
            try:
                await asyncio.wait_for(self._outbox.join(), flush_timeout)
            except TimeoutError:
                pass
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks, ignore_errors=True)


async def _close_quietly(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception as error:  # closing a connection that is already broken
        logger.debug("closing a Redis pub/sub connection failed: {}", error)
