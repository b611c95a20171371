"""DynamicBatcher with a fake backend: merging, bounds, length sorting, cancellation, admission."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from app.errors import Internal, ModelUnavailable
from app.inference.batcher import DynamicBatcher, cut_by_padding
from tests.support.fakes import FakeBackend
from tests.support.polling import wait_until

DIMS = FakeBackend().dimensions


def make(backend: FakeBackend, **overrides: float) -> DynamicBatcher:
    options = {"max_batch_size": 16, "max_batch_tokens": 10_000, "max_wait_ms": 20.0, "max_gather_ms": 200.0, "max_queue": 1_000,
               "pass_overhead_tokens": 256}
    options.update(overrides)
    return DynamicBatcher(backend, **options)  # type: ignore[arg-type]


async def submit(batcher: DynamicBatcher, backend: FakeBackend, texts: list[str], normalize: bool = False):
    return await batcher.submit(texts, backend.token_counts(texts), normalize)


async def one_held_one_queued(
    first: list[str], queued: list[str]
) -> tuple[FakeBackend, DynamicBatcher, asyncio.Task, asyncio.Task]:
    """A batcher whose pass over `first` is held at the backend's gate, with `queued` waiting behind it."""
    backend = FakeBackend()
    batcher = make(backend, max_wait_ms=0)
    backend.gate.clear()
    running = asyncio.create_task(submit(batcher, backend, first))
    await wait_until(backend.started.is_set, "first pass started")
    waiting = asyncio.create_task(submit(batcher, backend, queued))
    await wait_until(lambda: batcher.pending == len(first) + len(queued), "second request queued")
    return backend, batcher, running, waiting


async def test_concurrent_callers_share_forward_passes():
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=64)
    texts = [f"text {i}" for i in range(64)]
    results = await asyncio.gather(*(submit(batcher, backend, [t]) for t in texts))
    assert len(backend.passes) <= 4, f"64 single-text callers took {len(backend.passes)} passes"
    for text, result in zip(texts, results):
        np.testing.assert_array_equal(result[0], backend.vector(text))
    assert batcher.pending == 0
    await batcher.close()


async def test_batches_respect_size_and_token_budget():
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=8, max_batch_tokens=60)
    texts = [" ".join(["w"] * (i % 13 + 1)) for i in range(100)]
    results = await asyncio.gather(*(submit(batcher, backend, [t]) for t in texts))
    assert sum(len(p) for p in backend.passes) == 100
    for batch in backend.passes:
        counts = backend.token_counts(batch)
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * max(counts) <= 60
    for text, result in zip(texts, results):
        np.testing.assert_array_equal(result[0], backend.vector(text))
    await batcher.close()


async def test_texts_of_similar_length_share_a_pass():
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=4)
    short = [f"s{i}" for i in range(4)]
    long = [" ".join([f"l{i}"] * 50) for i in range(4)]
    interleaved = [t for pair in zip(short, long) for t in pair]
    await asyncio.gather(*(submit(batcher, backend, [t]) for t in interleaved))
    assert sorted(map(sorted, backend.passes)) == sorted([sorted(short), sorted(long)])
    await batcher.close()


def test_cuts_split_mixed_lengths_only_where_padding_saves_more_than_a_pass():
    same = [16] * 64
    assert cut_by_padding(same, 64, 16_384, 256) == [64]
    mixed = [10] * 32 + [27] * 32  # one pass: 64 x 27 = 1728; two: 320 + 864 + one more overhead
    assert cut_by_padding(mixed, 64, 16_384, 256) == [32, 64]
    assert cut_by_padding(mixed, 64, 16_384, 600) == [64]  # a dearer pass: not worth it
    assert cut_by_padding([1, 2, 3], 64, 16_384, 0) == [1, 2, 3]


def test_cuts_respect_the_size_and_token_bounds():
    lengths = sorted([5] * 10 + [40] * 10)
    ends = cut_by_padding(lengths, 4, 100, 1_000)
    passes = [lengths[b:e] for b, e in zip([0, *ends], ends)]
    assert sum(map(len, passes)) == 20 and ends[-1] == 20
    assert all(len(p) <= 4 and (len(p) == 1 or len(p) * max(p) <= 100) for p in passes), passes
    assert cut_by_padding([500, 600], 64, 100, 0) == [1, 2]  # a text longer than the budget passes alone
    assert cut_by_padding([], 64, 100, 0) == []


async def test_cancelled_request_is_never_encoded():
    backend, batcher, busy, doomed = await one_held_one_queued(["first"], ["never", "computed"])
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert batcher.pending == 1  # the cancelled texts gave their queue places back at once
    backend.gate.set()
    await busy
    after = await submit(batcher, backend, ["later"])
    assert after.shape == (1, DIMS)
    encoded = [t for batch in backend.passes for t in batch]
    assert "never" not in encoded and "computed" not in encoded
    assert encoded == ["first", "later"]
    await batcher.close()


async def test_admission_is_the_pools_the_batcher_queues_what_it_is_given():
    # OVERLOADED is decided once, model-wide, in ModelPool._admit (tests/integration/test_pool.py);
    # a second check here used to refuse what the pool had admitted.
    backend = FakeBackend()
    batcher = make(backend, max_queue=4, max_wait_ms=0)
    backend.gate.clear()
    admitted = [asyncio.create_task(submit(batcher, backend, [f"t{i}"])) for i in range(6)]
    await wait_until(lambda: batcher.pending == 6, "six texts queued")
    backend.gate.set()
    assert all(r.shape == (1, DIMS) for r in await asyncio.gather(*admitted))
    assert batcher.pending == 0
    await batcher.close()


async def test_one_pass_serves_normalized_and_raw_callers():
    backend = FakeBackend()
    batcher = make(backend)
    unit, raw = await asyncio.gather(
        submit(batcher, backend, ["same"], normalize=True), submit(batcher, backend, ["same"], normalize=False)
    )
    assert len(backend.passes) == 1
    np.testing.assert_allclose(np.linalg.norm(unit[0]), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(raw[0], backend.vector("same"))
    await batcher.close()


async def test_failed_pass_reaches_its_callers_and_the_batcher_goes_on():
    backend = FakeBackend()
    batcher = make(backend)
    backend.fail_next = True
    with pytest.raises(Internal):
        await submit(batcher, backend, ["boom", "bang"])
    assert batcher.pending == 0
    assert (await submit(batcher, backend, ["fine"])).shape == (1, DIMS)
    await batcher.close()


async def test_close_fails_waiting_callers():
    backend, batcher, running, waiting = await one_held_one_queued(["in the pass"], ["still queued"])
    closing = asyncio.create_task(batcher.close())
    with pytest.raises(ModelUnavailable):
        await waiting
    backend.gate.set()
    await closing
    with pytest.raises(ModelUnavailable):
        await running  # its pass was cut off by the close: no answer, but no hang either
    with pytest.raises(ModelUnavailable):
        await submit(batcher, backend, ["after close"])


class SlowBackend(FakeBackend):
    """A pass takes a fixed time, as a model's would."""

    def encode(self, texts, normalize):
        import time

        time.sleep(0.02)
        return super().encode(texts, normalize)


async def test_closed_loop_callers_fill_whole_passes_instead_of_taking_turns_in_halves():
    # As in a server: the answers of one pass go out one at a time (the event loop writes each
    # response and reads the next request, here 2 ms a caller), so the next texts trickle in over
    # longer than max_wait (64 ms against 30). Gathering only until max_wait after the oldest text
    # would start a pass with the first half or less, and the callers would settle into groups that
    # take turns. (30 ms rather than the default 5: a loaded machine stalls this loop for 10 ms
    # and more between two 2 ms steps, and a gap that long ends any gathering.)
    backend = SlowBackend()
    batcher = make(backend, max_batch_size=32, max_wait_ms=30.0, max_gather_ms=500.0)
    event_loop_work = asyncio.Lock()

    async def caller(n: int) -> None:
        for round_ in range(8):
            await submit(batcher, backend, [f"caller {n} round {round_}"])
            async with event_loop_work:
                await asyncio.sleep(0.002)

    await asyncio.gather(*(caller(n) for n in range(32)))
    sizes = [len(p) for p in backend.passes]
    assert sum(sizes) == 32 * 8
    assert sum(sizes) / len(sizes) >= 24, f"passes of {sizes}"
    await batcher.close()


async def test_a_lone_request_still_waits_at_most_max_wait():
    backend = FakeBackend()
    batcher = make(backend, max_wait_ms=5.0, max_gather_ms=10_000.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await submit(batcher, backend, ["alone"])
    # Not a speed assertion: the gather window must not stretch to max_gather for one caller.
    assert loop.time() - started < 5.0
    await batcher.close()


class IdBackend(FakeBackend):
    """A TokenIdBackend: records which passes came as ids and which as texts."""

    def __init__(self) -> None:
        super().__init__()
        self.id_passes: list[list[list[int]]] = []

    def token_ids(self, texts):
        return [[len(t)] * self.token_counts([t])[0] for t in texts]

    def encode_ids(self, ids, normalize):
        self.id_passes.append([list(i) for i in ids])
        return np.stack([np.full(self.dimensions, float(i[0])) for i in ids])


async def test_token_ids_from_admission_reach_the_backend_instead_of_the_texts():
    from app.domain.embedding import TokenIdBackend

    backend = IdBackend()
    assert isinstance(backend, TokenIdBackend)
    batcher = make(backend)
    texts = ["one", "three"]
    ids = backend.token_ids(texts)
    rows = await batcher.submit(texts, [len(i) for i in ids], False, ids)
    assert backend.passes == [] and len(backend.id_passes) == 1
    assert sorted(backend.id_passes[0]) == sorted(ids)
    assert [row[0] for row in rows] == [3.0, 5.0]
    # Without ids (another caller of the pool), the texts are encoded as before.
    await submit(batcher, backend, ["plain"])
    assert backend.passes == [["plain"]]
    await batcher.close()


class CountingBackend(FakeBackend):
    """Records how many passes run at the same time."""

    def __init__(self, passes_at_once: int) -> None:
        super().__init__()
        self.passes_at_once = passes_at_once
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def encode(self, texts, normalize):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().encode(texts, normalize)
        finally:
            with self._lock:
                self.running -= 1


@pytest.mark.parametrize("passes_at_once", [1, 2])
async def test_passes_run_at_once_as_the_backend_allows_and_never_more(passes_at_once):
    backend = CountingBackend(passes_at_once)
    batcher = make(backend, max_batch_size=2, max_wait_ms=0)
    backend.gate.clear()
    tasks = [asyncio.create_task(submit(batcher, backend, [f"text {i}"])) for i in range(8)]
    await wait_until(lambda: backend.running == passes_at_once, f"{passes_at_once} passes running")
    await asyncio.sleep(0.05)  # room for a pass too many to start
    assert backend.running == passes_at_once
    backend.gate.set()
    results = await asyncio.gather(*tasks)
    for index, result in enumerate(results):
        np.testing.assert_array_equal(result[0], backend.vector(f"text {index}"))
    assert backend.most_at_once == passes_at_once
    assert batcher.pending == 0
    await batcher.close()


async def test_close_fails_the_texts_of_every_pass_in_flight():
    backend = CountingBackend(2)
    batcher = make(backend, max_batch_size=1, max_wait_ms=0)
    backend.gate.clear()
    tasks = [asyncio.create_task(submit(batcher, backend, [f"text {i}"])) for i in range(3)]
    await wait_until(lambda: backend.running == 2, "two passes running")
    closing = asyncio.create_task(batcher.close())
    for task in tasks:  # two in passes, one queued: each answered, none left hanging
        with pytest.raises(ModelUnavailable):
            await task
    backend.gate.set()
    await closing


async def test_a_free_slot_beside_a_running_pass_starts_without_gathering():
    # With another pass in flight the cores are busy anyway: waiting up to max_wait for more texts
    # would only leave the free slot's share idle. (max_wait here is far beyond the poll's limit.)
    backend = CountingBackend(2)
    batcher = make(backend, max_batch_size=4, max_wait_ms=60_000.0, max_gather_ms=60_000.0)
    backend.gate.clear()
    full = asyncio.create_task(submit(batcher, backend, [f"full {i}" for i in range(4)]))  # a whole pass: no wait
    await wait_until(lambda: backend.running == 1, "the full pass running")
    lone = asyncio.create_task(submit(batcher, backend, ["lone"]))
    await wait_until(lambda: backend.running == 2, "the lone text's pass running beside it")
    backend.gate.set()
    assert len((await full)) == 4
    np.testing.assert_array_equal((await lone)[0], backend.vector("lone"))
    await batcher.close()


async def test_bulk_work_runs_in_short_passes_of_its_own():
    # Two slots busy with long bulk passes would keep an interactive text waiting for one to end.
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=16, bulk_pass_texts=4, max_wait_ms=0)
    bulk = [f"stored {i}" for i in range(16)]
    rows = await batcher.submit(bulk, backend.token_counts(bulk), False, bulk=True)
    assert [len(p) for p in backend.passes] == [4, 4, 4, 4]
    np.testing.assert_array_equal(rows, np.stack([backend.vector(t) for t in bulk]))
    backend.passes.clear()
    asked = [f"asked {i}" for i in range(16)]
    await submit(batcher, backend, asked)
    assert [len(p) for p in backend.passes] == [16]
    backend.passes.clear()
    backend.gate.clear()  # both kinds queue together: a caller's texts get passes of their own
    stored = asyncio.create_task(batcher.submit(bulk[:8], backend.token_counts(bulk[:8]), False, bulk=True))
    waiting = asyncio.create_task(submit(batcher, backend, asked[:2]))
    await wait_until(lambda: batcher.pending == 10, "both queued")
    backend.gate.set()
    await asyncio.gather(stored, waiting)
    kinds = [{text.split()[0] for text in p} for p in backend.passes]
    assert {"asked"} in kinds and all(len(k) == 1 for k in kinds), backend.passes
    assert max(len(p) for p in backend.passes if p[0].startswith("stored")) <= 4
    await batcher.close()


async def test_a_lone_request_on_an_idle_model_is_split_over_every_pass_slot():
    # One single-threaded pass would leave the other core idle while the caller waits.
    backend = CountingBackend(2)
    batcher = make(backend, max_batch_size=16, max_wait_ms=0)
    backend.gate.clear()
    texts = [f"pair {i}" for i in range(6)]
    request = asyncio.create_task(submit(batcher, backend, texts))
    await wait_until(lambda: backend.running == 2, "both slots working on the one request")
    backend.gate.set()
    rows = await request
    np.testing.assert_array_equal(rows, np.stack([backend.vector(t) for t in texts]))
    assert sorted(len(p) for p in backend.passes) == [3, 3]
    await batcher.close()
