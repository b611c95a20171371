"""Job progress events inside one process: each event is the job's whole state (a Job), fanned out
to subscribers with a bounded queue each (app/adapters/events.Bus).
app/adapters/redis_events.RedisEventBridge (with `decode=Job.from_json`) carries them to the
other replicas, as it does download events.

A subscriber that falls behind loses its oldest events: each event is a full snapshot, so the
newest one always says everything (the final state of a job is never the one dropped)."""

from __future__ import annotations

from collections.abc import Callable

from app.adapters.events import Bus, Subscription
from app.domain.jobs import Job


class JobEventBus(Bus[Job]):
    name = "job-event"

    def __init__(self, queue_size: int = 256, origin: str | None = None) -> None:
        super().__init__(queue_size, origin)

    def subscribe(self, wants: Callable[[Job], bool]) -> Subscription[Job]:
        """The events `wants` keeps; registered at once: no event published after this call is missed."""
        return self.subscribe_where(wants)
