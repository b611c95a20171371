"""Job progress events inside one process: each event is the job's whole state (a Job), fanned out
to subscribers with a bounded queue each. app/adapters/redis_events.RedisEventBridge (with
`decode=Job.from_json`) carries them to the other replicas, as it does download events.

A subscriber that falls behind loses its oldest events: each event is a full snapshot, so the
newest one always says everything (the final state of a job is never the one dropped)."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable

from loguru import logger

from app.domain.jobs import Job

Listener = Callable[[Job], None]


class JobSubscription:
    def __init__(self, bus: JobEventBus, wants: Callable[[Job], bool], maxsize: int) -> None:
        self._bus = bus
        self.wants = wants
        self._maxsize = maxsize
        self._queue: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.closed = False

    def offer(self, job: Job) -> None:
        if self.closed:
            return
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
        self._queue.append(job)
        self._wakeup.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._unsubscribe(self)
            self._wakeup.set()

    def __aiter__(self) -> JobSubscription:
        return self

    async def __anext__(self) -> Job:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    async def __aenter__(self) -> JobSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class JobEventBus:
    def __init__(self, queue_size: int = 256, origin: str | None = None) -> None:
        self.queue_size = queue_size
        self.origin = origin or uuid.uuid4().hex
        self._subscribers: list[JobSubscription] = []
        self._observers: list[Listener] = []
        self._outbound: list[Listener] = []

    def subscribe(self, wants: Callable[[Job], bool]) -> JobSubscription:
        """Registered at once: no event published after this call is missed."""
        subscription = JobSubscription(self, wants, self.queue_size)
        self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: JobSubscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def observe(self, listener: Listener) -> None:
        """Call `listener` with every event seen here, this replica's and the others' (cancellations)."""
        self._observers.append(listener)

    def send_outbound(self, listener: Listener) -> None:
        self._outbound.append(listener)

    def publish(self, job: Job) -> Job:
        if not job.origin:
            job = job.with_origin(self.origin)
        self.deliver(job)
        if job.origin == self.origin:
            for listener in self._outbound:
                listener(job)
        return job

    def deliver(self, job: Job) -> None:
        for observer in self._observers:
            try:
                observer(job)
            except Exception:  # an observer's bug must not stop the events
                logger.exception("a job-event observer failed")
        for subscription in list(self._subscribers):
            try:
                wanted = subscription.wants(job)
            except Exception:
                logger.exception("a job-event filter failed")
                continue
            if wanted:
                subscription.offer(job)

    async def close(self) -> None:
        for subscription in list(self._subscribers):
            subscription.close()
