"""EventBus fan-out: filtering, bounded queues, lagging subscribers, threads, JSON; the throttle."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest

from app.domain.models import DownloadEvent

from app.adapters.events import EventBus

from app.services.model_progress import ProgressThrottle
from app.domain.models import ModelState


def event(
    model: str = "m", state: ModelState = ModelState.DOWNLOADING, kind: str = "state", n: int = 0
) -> DownloadEvent:
    return DownloadEvent(model=model, state=state, attempt=1, max_attempts=3, bytes_done=n, kind=kind)  # type: ignore[arg-type]


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus()
    async with bus.subscribe() as first, bus.subscribe() as second:
        for n in range(5):
            bus.publish(event(n=n))
        got_first = [(await first.get(1)).bytes_done for _ in range(5)]
        got_second = [(await second.get(1)).bytes_done for _ in range(5)]
    assert got_first == got_second == [0, 1, 2, 3, 4]
    assert bus.subscriber_count == 0


async def test_subscription_for_one_model_sees_only_that_model() -> None:
    bus = EventBus()
    async with bus.subscribe("a") as only_a:
        bus.publish(event("b"))
        bus.publish(event("a", n=7))
        received = await only_a.get(1)
        assert (received.model, received.bytes_done) == ("a", 7)
        assert only_a.pending() == 0


async def test_published_events_carry_the_bus_origin() -> None:
    bus = EventBus(origin="replica-1")
    async with bus.subscribe() as sub:
        bus.publish(event())
        assert (await sub.get(1)).origin == "replica-1"


async def test_slow_subscriber_loses_oldest_progress_ticks_not_state_changes() -> None:
    bus = EventBus(queue_size=4)
    async with bus.subscribe() as slow:
        bus.publish(event(state=ModelState.QUEUED))
        for n in range(1, 6):  # never read by `slow` in the meantime: the publisher must not block
            bus.publish(event(kind="progress", n=n))
        bus.publish(event(state=ModelState.READY))
        assert slow.lagging and slow.dropped == 3
        kept = [await slow.get(1) for _ in range(slow.pending())]
        assert [(e.kind, e.state, e.bytes_done) for e in kept] == [
            ("state", ModelState.QUEUED, 0),
            ("progress", ModelState.DOWNLOADING, 4),
            ("progress", ModelState.DOWNLOADING, 5),
            ("state", ModelState.READY, 0),
        ]


async def test_a_stalled_subscriber_does_not_hold_back_one_that_keeps_up() -> None:
    bus = EventBus(queue_size=4)
    async with bus.subscribe() as stalled, bus.subscribe() as keeping_up:
        received: list[int] = []

        async def consume() -> None:
            async for e in keeping_up:
                received.append(e.bytes_done)
                if len(received) == 20:
                    return

        consumer = asyncio.create_task(consume())
        for n in range(20):
            bus.publish(event(kind="progress", n=n))
            await asyncio.sleep(0)  # the consumer gets its turn; the stalled one never reads
        await asyncio.wait_for(consumer, 1)
        assert received == list(range(20))
        assert not keeping_up.lagging
        assert stalled.lagging and stalled.pending() == 4


async def test_full_queue_of_state_changes_drops_the_oldest() -> None:
    bus = EventBus(queue_size=2)
    async with bus.subscribe() as sub:
        for state in (ModelState.QUEUED, ModelState.DOWNLOADING, ModelState.VERIFYING):
            bus.publish(event(state=state))
        assert [(await sub.get(1)).state for _ in range(2)] == [ModelState.DOWNLOADING, ModelState.VERIFYING]
        assert sub.lagging


async def test_waiting_subscriber_wakes_up_and_close_ends_iteration() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    received: list[DownloadEvent] = []
    waiting, woke = asyncio.Event(), asyncio.Event()

    async def consume() -> None:
        waiting.set()  # the test resumes once this task blocks on the empty subscription
        async for e in sub:
            received.append(e)
            woke.set()

    task = asyncio.create_task(consume())
    await waiting.wait()
    bus.publish(event(n=1))
    await asyncio.wait_for(woke.wait(), 1)
    assert [e.bytes_done for e in received] == [1]
    sub.close()
    await asyncio.wait_for(task, 1)
    bus.publish(event(n=2))
    assert [e.bytes_done for e in received] == [1]


async def test_publish_from_another_thread_is_delivered_on_the_subscriber_loop() -> None:
    bus = EventBus()
    async with bus.subscribe() as sub:
        thread = threading.Thread(target=bus.publish, args=(event(n=42),))
        thread.start()
        thread.join()
        assert (await sub.get(2)).bytes_done == 42


async def test_bus_close_ends_all_subscriptions() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    await bus.close()
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()


def test_event_json_round_trip_keeps_every_field() -> None:
    original = DownloadEvent(
        model="BAAI/bge-small-en-v1.5",
        state=ModelState.RETRYING,
        attempt=2,
        max_attempts=3,
        file="model.onnx",
        bytes_done=3_000_000_000,
        bytes_total=4_000_000_000,
        percent=75.0,
        bytes_per_second=1.5e6,
        message="http_500: boom",
        at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        model_bytes_done=1,
        model_bytes_total=2,
        kind="progress",
        origin="abc",
    )
    assert DownloadEvent.from_json(original.to_json()) == original


def test_event_from_a_newer_replica_with_extra_fields_still_parses() -> None:
    raw = event().to_json().replace('"kind"', '"future_field": 1, "kind"')
    assert DownloadEvent.from_json(raw).state is ModelState.DOWNLOADING


def test_throttle_lets_first_and_final_ticks_through_and_spaces_the_rest() -> None:
    throttle = ProgressThrottle(interval=3600)
    key = ("m", "f")
    assert throttle.allow(key)
    assert not throttle.allow(key)
    assert throttle.allow(("m", "other-file"))
    assert throttle.allow(key, final=True)
    assert ProgressThrottle(interval=0).allow(key) and ProgressThrottle(interval=0).allow(key)
