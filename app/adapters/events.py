"""Model download events: an in-process fan-out with a bounded queue per subscriber, optionally
bridged over Redis pub/sub so that every replica sees the downloads any replica runs.

The publisher never waits for anyone: a subscriber that falls behind loses its oldest progress
ticks first (then its oldest events) and is marked lagging; state changes are kept as long as
there is any tick to drop instead.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from loguru import logger
from prometheus_client import Counter

from app.downloads.state import ModelState

EVENTS_PUBLISHED = Counter("citadel_download_events_published_total", "Download events published on this replica")
EVENTS_DROPPED = Counter(
    "citadel_download_events_dropped_total", "Download events dropped because a subscriber fell behind"
)
REDIS_BRIDGE_ERRORS = Counter("citadel_download_events_redis_errors_total", "Redis pub/sub bridge errors", ["op"])

DEFAULT_CHANNEL = "citadel:model-events"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DownloadEvent:
    """API.md's DownloadEvent. With `file` set, bytes/percent/rate are that file's; without it they
    are the model's. `model_bytes_*` always carry the model's totals (for a model-wide bar)."""

    model: str
    state: ModelState
    attempt: int
    max_attempts: int
    file: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    percent: float | None = None
    bytes_per_second: float | None = None
    message: str | None = None
    at: datetime = field(default_factory=_now)
    model_bytes_done: int = 0
    model_bytes_total: int | None = None
    kind: Literal["state", "progress"] = "state"
    origin: str = ""  # id of the EventBus (replica) that published it

    def to_json(self) -> str:
        data = asdict(self)
        data["state"] = self.state.value
        data["at"] = self.at.isoformat()
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> DownloadEvent:
        data: dict[str, Any] = json.loads(raw)
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in data.items() if k in known}  # tolerate newer replicas' extra fields
        data["state"] = ModelState(data["state"])
        data["at"] = datetime.fromisoformat(data["at"])
        return cls(**data)


class Subscription:
    """One subscriber's bounded view of the bus: `async with bus.subscribe(m) as sub: async for e in sub`."""

    def __init__(self, bus: EventBus, model: str | None, maxsize: int) -> None:
        self._bus = bus
        self.model = model
        self._maxsize = maxsize
        self._queue: deque[DownloadEvent] = deque()
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.dropped = 0
        self.lagging = False
        self.closed = False

    def wants(self, event: DownloadEvent) -> bool:
        return self.model is None or self.model == event.model

    def offer(self, event: DownloadEvent) -> None:
        """Called on the subscriber's loop; never blocks."""
        if self.closed:
            return
        if len(self._queue) >= self._maxsize:
            self._drop_one()
        self._queue.append(event)
        self._wakeup.set()

    def _drop_one(self) -> None:
        victim = next((e for e in self._queue if e.kind == "progress"), None)
        if victim is not None:
            self._queue.remove(victim)
        else:
            self._queue.popleft()
        self.dropped += 1
        EVENTS_DROPPED.inc()
        if not self.lagging:
            self.lagging = True
            logger.warning("a download-event subscriber is lagging; dropping its oldest events")

    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._unsubscribe(self)
            self._wakeup.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> DownloadEvent:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    async def get(self, timeout: float | None = None) -> DownloadEvent:
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self, queue_size: int = 1024, origin: str | None = None) -> None:
        self.queue_size = queue_size
        self.origin = origin or uuid.uuid4().hex
        self._subscribers: list[Subscription] = []
        self._redis: Any = None
        self._channel = DEFAULT_CHANNEL
        self._outbox: asyncio.Queue[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- local fan-out ---------------------------------------------------------------------

    def subscribe(self, model: str | None = None) -> Subscription:
        """Registered at once, so no event published after this call is missed. Needs a running loop."""
        subscription = Subscription(self, model, self.queue_size)
        self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event: DownloadEvent) -> DownloadEvent:
        """Deliver to local subscribers and, when bridged, to the other replicas. Thread-safe, never blocks."""
        if not event.origin:
            event = replace(event, origin=self.origin)
        EVENTS_PUBLISHED.inc()
        self._deliver(event)
        if self._outbox is not None and event.origin == self.origin:
            try:
                self._outbox.put_nowait(event.to_json())
            except asyncio.QueueFull:
                REDIS_BRIDGE_ERRORS.labels(op="outbox_full").inc()
        return event

    def _deliver(self, event: DownloadEvent) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for subscription in list(self._subscribers):
            if not subscription.wants(event):
                continue
            if subscription._loop is running:
                subscription.offer(event)
            elif not subscription._loop.is_closed():
                subscription._loop.call_soon_threadsafe(subscription.offer, event)

    # -- Redis bridge ----------------------------------------------------------------------

    async def attach_redis(self, redis: Any, channel: str = DEFAULT_CHANNEL) -> None:
        """Bridge over Redis pub/sub (a redis.asyncio.Redis). Returns once the channel is subscribed,
        or at once when Redis is down: the listener then keeps re-subscribing until it is back."""
        if self._redis is not None:
            raise RuntimeError("this EventBus is already attached to Redis")
        self._redis, self._channel = redis, channel
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(channel)
        except Exception as error:  # Redis down at startup: _listen retries with backoff
            REDIS_BRIDGE_ERRORS.labels(op="listen").inc()
            logger.warning("download events stay on this replica until Redis answers: {}", error)
        self._outbox = asyncio.Queue(maxsize=self.queue_size * 4)
        self._tasks = [
            asyncio.create_task(self._listen(pubsub), name="citadel-events-redis-listen"),
            asyncio.create_task(self._send(), name="citadel-events-redis-send"),
        ]

    async def _send(self) -> None:
        assert self._outbox is not None
        while True:
            payload = await self._outbox.get()
            try:
                await self._redis.publish(self._channel, payload)
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
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._channel)
        except Exception as error:  # still down; the next get_message fails and we come back here
            logger.debug("re-subscribing to {} failed: {}", self._channel, error)
        return pubsub

    def _relay(self, raw: bytes | str) -> None:
        try:
            event = DownloadEvent.from_json(raw)
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring a malformed download event from Redis: {}", error)
            return
        if event.origin != self.origin:  # our own were delivered locally already
            self._deliver(event)

    async def close(self, flush_timeout: float = 1.0) -> None:
        if self._outbox is not None:
            try:
                await asyncio.wait_for(self._outbox.join(), flush_timeout)
            except TimeoutError:
                pass
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks, self._outbox, self._redis = [], None, None
        for subscription in list(self._subscribers):
            subscription.close()


async def _close_quietly(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception as error:  # closing a connection that is already broken
        logger.debug("closing a Redis pub/sub connection failed: {}", error)


class ProgressThrottle:
    """At most one progress tick per `interval` seconds per key (model, file); first and last always pass."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}

    def allow(self, key: tuple[str, str], final: bool = False) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if final or last is None or now - last >= self.interval:
            self._last[key] = now
            return True
        return False

    def forget(self, key: tuple[str, str]) -> None:
        self._last.pop(key, None)
