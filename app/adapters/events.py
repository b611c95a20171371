"""Model download events inside one process: a fan-out with a bounded queue per subscriber.

The publisher never waits for anyone: a subscriber that falls behind loses its oldest progress
ticks first (then its oldest events) and is marked lagging; state changes are kept as long as
there is any tick to drop instead. app/adapters/redis_events.py carries the events to the other
replicas and hands theirs to `deliver`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from loguru import logger
from prometheus_client import Counter

from app.domain.models import DownloadEvent

EVENTS_PUBLISHED = Counter("citadel_download_events_published_total", "Download events published on this replica")
EVENTS_DROPPED = Counter(
    "citadel_download_events_dropped_total", "Download events dropped because a subscriber fell behind"
)

Listener = Callable[[DownloadEvent], None]


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
        self._observers: list[Listener] = []  # see every event, ours and the other replicas'
        self._outbound: list[Listener] = []  # carry our own events elsewhere (the Redis bridge)

    def subscribe(self, model: str | None = None) -> Subscription:
        """Registered at once, so no event published after this call is missed. Needs a running loop."""
        subscription = Subscription(self, model, self.queue_size)
        self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def observe(self, listener: Listener) -> None:
        """Call `listener` synchronously with every event delivered here (local or remote)."""
        self._observers.append(listener)

    def send_outbound(self, listener: Listener) -> None:
        """Call `listener` with every event this process publishes (never with relayed ones)."""
        self._outbound.append(listener)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event: DownloadEvent) -> DownloadEvent:
        """Deliver to local subscribers and to the outbound listeners. Thread-safe, never blocks."""
        if not event.origin:
            event = replace(event, origin=self.origin)
        EVENTS_PUBLISHED.inc()
        self.deliver(event)
        if event.origin == self.origin:
            for listener in self._outbound:
                listener(event)
        return event

    def deliver(self, event: DownloadEvent) -> None:
        """Hand an event to the observers and the subscribers that want it (the bridge calls this)."""
        for observer in self._observers:
            try:
                observer(event)
            except Exception:  # an observer's bug must not stop the events
                logger.exception("a download-event observer failed")
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

    async def close(self) -> None:
        for subscription in list(self._subscribers):
            subscription.close()
