"""Events inside one process (model downloads here, jobs in app/adapters/job_events.py): a
fan-out with a bounded queue per subscriber.

The publisher never waits for anyone: a subscriber that falls behind loses events and is marked
lagging (download events: its oldest progress ticks first, then its oldest events; state changes
are kept as long as there is any tick to drop instead). app/adapters/redis_events.py carries the events to the other
replicas and hands theirs to `deliver`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Generic, Protocol, TypeVar

from loguru import logger
from prometheus_client import Counter

from app.domain.models import DownloadEvent

EVENTS_PUBLISHED = Counter("citadel_download_events_published_total", "Download events published on this replica")
EVENTS_DROPPED = Counter(
    "citadel_download_events_dropped_total", "Download events dropped because a subscriber fell behind"
)

E = TypeVar("E", bound="Event")


class Event(Protocol):
    """What a bus carries: a frozen dataclass that names the process that published it."""

    origin: str


class Subscription(Generic[E]):
    """One subscriber's bounded view of a bus: `async with bus.subscribe(...) as sub: async for e in sub`."""

    def __init__(self, bus: Bus[E], wants: Callable[[E], bool], maxsize: int) -> None:
        self._bus = bus
        self.wants = wants
        self._maxsize = maxsize
        self._queue: deque[E] = deque()
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.dropped = 0
        self.lagging = False
        self.closed = False

    def offer(self, event: E) -> None:
        """Called on the subscriber's loop; never blocks."""
        if self.closed:
            return
        if len(self._queue) >= self._maxsize:
            self._bus.drop_one(self._queue)
            self.dropped += 1
            if not self.lagging:
                self.lagging = True
                logger.warning("a {} subscriber is lagging; dropping its oldest events", self._bus.name)
        self._queue.append(event)
        self._wakeup.set()

    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._unsubscribe(self)
            self._wakeup.set()

    def __aiter__(self) -> Subscription[E]:
        return self

    async def __anext__(self) -> E:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    async def get(self, timeout: float | None = None) -> E:
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def __aenter__(self) -> Subscription[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Bus(Generic[E]):
    """Events of one kind inside one process, fanned out to subscribers (each with a bounded
    queue), observers (every event, local or relayed) and outbound listeners (this process's own
    events only: the Redis bridge)."""

    name = "event"

    def __init__(self, queue_size: int = 1024, origin: str | None = None) -> None:
        self.queue_size = queue_size
        self.origin = origin or uuid.uuid4().hex
        self._subscribers: list[Subscription[E]] = []
        self._observers: list[Callable[[E], None]] = []
        self._outbound: list[Callable[[E], None]] = []

    def subscribe_where(self, wants: Callable[[E], bool]) -> Subscription[E]:
        """Registered at once, so no event published after this call is missed. Needs a running loop."""
        subscription = Subscription(self, wants, self.queue_size)
        self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription[E]) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def drop_one(self, queue: deque[E]) -> None:
        """Make room in a full subscriber queue: the oldest event goes."""
        queue.popleft()

    def observe(self, listener: Callable[[E], None]) -> None:
        """Call `listener` synchronously with every event delivered here (local or remote)."""
        self._observers.append(listener)

    def send_outbound(self, listener: Callable[[E], None]) -> None:
        """Call `listener` with every event this process publishes (never with relayed ones)."""
        self._outbound.append(listener)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event: E) -> E:
        """Deliver to local subscribers and to the outbound listeners. Thread-safe, never blocks."""
        if not event.origin:
            event = replace(event, origin=self.origin)  # type: ignore[type-var]
        self.deliver(event)
        if event.origin == self.origin:
            for listener in self._outbound:
                listener(event)
        return event

    def deliver(self, event: E) -> None:
        """Hand an event to the observers and the subscribers that want it (the bridge calls this)."""
        for observer in self._observers:
            try:
                observer(event)
            except Exception:  # an observer's bug must not stop the events
                logger.exception("a {} observer failed", self.name)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for subscription in list(self._subscribers):
            try:
                wanted = subscription.wants(event)
            except Exception:  # a subscriber's filter bug must not stop the others' events
                logger.exception("a {} filter failed", self.name)
                continue
            if not wanted:
                continue
            if subscription._loop is running:
                subscription.offer(event)
            elif not subscription._loop.is_closed():
                subscription._loop.call_soon_threadsafe(subscription.offer, event)

    async def close(self) -> None:
        for subscription in list(self._subscribers):
            subscription.close()


class EventBus(Bus[DownloadEvent]):
    """Model download events: a subscriber that falls behind loses its oldest progress ticks first
    (state changes are kept while there is a tick to drop instead)."""

    name = "download-event"

    def subscribe(self, model: str | None = None) -> Subscription[DownloadEvent]:
        """Events of `model` (None: every model)."""
        return self.subscribe_where(lambda event: model is None or model == event.model)

    def drop_one(self, queue: deque[DownloadEvent]) -> None:
        victim = next((e for e in queue if e.kind == "progress"), None)
        if victim is not None:
            queue.remove(victim)
        else:
            queue.popleft()
        EVENTS_DROPPED.inc()

    def publish(self, event: DownloadEvent) -> DownloadEvent:
        EVENTS_PUBLISHED.inc()
        return super().publish(event)
