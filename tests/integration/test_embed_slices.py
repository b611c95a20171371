"""EmbeddingService over the real pool and bundled model: a call of more texts than one slice (as
POST /v1/embeddings allows, up to limits.max_inputs_per_openai_request) goes to the model slice by
slice, never holding more of the queue than its key's share, while a light key beside it is still
answered; the limit refuses a larger call before any work."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.domain.access import Principal, Scope
from app.domain.models import FALLBACK_MODEL
from app.errors import BadInput, Overloaded
from app.inference import metrics
from app.inference.pool import ModelPool
from app.services.embedding import EmbeddingService, slice_size
from tests.support.local_models import LocalModels
from tests.support.models import cosine_rows, engine_settings, minilm_dir, minilm_spec, reference_model  # noqa: F401

pytestmark = pytest.mark.slow
MODEL = FALLBACK_MODEL
HEAVY = Principal(kind="key", key_id="heavy", name="heavy", scopes=frozenset({Scope.READ}))
LIGHT = Principal(kind="key", key_id="light", name="light", scopes=frozenset({Scope.READ}))
SENTENCE = "vector search finds documents by meaning rather than by the words they share, "


def encoded() -> float:
    return metrics.sample_sum(metrics.BATCH_SIZE, "citadel_batch_size_sum", model=MODEL)


def pending_of(pool: ModelPool, key: str) -> int:
    return sum(replica.batcher.pending_of(key) for replica in pool._loaded[MODEL].replicas)


class Spy:
    """Watches the real pool: each encode call's size and whether it waits for room, the most
    texts the heavy key ever had queued once a slice of it was let in, and an event set when the
    heavy key's first slice reaches the batcher."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool
        self.calls: list[tuple[str, int, bool]] = []
        self.heavy_peak = 0
        self.heavy_queued = asyncio.Event()
        self.heavy_submits = 0
        self.later_slice_queued = asyncio.Event()  # a second of the heavy key's calls reached the batcher
        encode = pool.encode

        async def spy_encode(name, texts, normalize, tokens=None, fair_key="internal", wait_for_room=False):
            self.calls.append((fair_key, len(texts), wait_for_room))
            return await encode(name, texts, normalize, tokens, fair_key, wait_for_room=wait_for_room)

        pool.encode = spy_encode  # type: ignore[method-assign]

    def watch_batchers(self) -> None:
        for replica in self.pool._loaded[MODEL].replicas:
            submit = replica.batcher.submit

            async def spy_submit(texts, counts, normalize, ids, fair_key, _submit=submit, **options):
                if fair_key == "key:heavy":
                    self.heavy_peak = max(self.heavy_peak, pending_of(self.pool, fair_key) + len(texts))
                    self.heavy_queued.set()
                    self.heavy_submits += 1
                    if self.heavy_submits > 1:
                        self.later_slice_queued.set()
                return await _submit(texts, counts, normalize, ids, fair_key, **options)

            replica.batcher.submit = spy_submit  # type: ignore[method-assign]


@pytest.fixture
async def served(minilm_dir):
    # Small CPU passes, so that the heavy call's 2,048 texts take many of them.
    settings = engine_settings(devices="cpu", max_batch_tokens_cpu=1_024)
    settings.default_model = MODEL
    pool = ModelPool(settings)
    await pool.load(minilm_spec(), minilm_dir)
    service = EmbeddingService(settings, pool, None, LocalModels(settings, pool))
    await service.embed(["warm up"])
    try:
        yield service, pool
    finally:
        await pool.close()


async def test_2048_texts_of_one_key_go_in_slices_and_a_light_key_is_answered_beside_them(served, reference_model):
    service, pool = served
    settings = service.settings
    spy = Spy(pool)
    spy.watch_batchers()
    size = slice_size(settings)
    assert size == settings.limits.max_texts_per_request == 256
    share = settings.inference.max_queue_per_key
    most = settings.limits.max_inputs_per_openai_request
    assert most == 2048
    texts = [f"heavy document {i}: " + SENTENCE * 3 for i in range(most)]

    heavy = asyncio.create_task(service.embed(texts, principal=HEAVY, count_tokens=True, max_texts=most))
    await spy.heavy_queued.wait()
    light_texts = [f"light question {i} about harbours" for i in range(3)]
    answers = []
    for text in light_texts:
        answers.append((await service.embed([text], principal=LIGHT)).vectors)
        assert not heavy.done(), "the light key waited for the heavy key's whole request"
        assert pending_of(pool, "key:heavy") > 0
    outcome = await heavy

    assert outcome.vectors.shape == (most, 384) and outcome.tokens is not None and len(outcome.tokens) == most
    # Slices of the queue's size: the first admitted as any call is, the rest waiting for room.
    heavy_calls = [(n, waits) for key, n, waits in spy.calls if key == "key:heavy"]
    assert heavy_calls == [(size, False)] + [(size, True)] * (most // size - 1)
    assert 0 < spy.heavy_peak <= share, spy.heavy_peak  # never more than its share of the queue
    assert pending_of(pool, "key:heavy") == 0
    # Each row is its own text's vector, in input order (a sample across every slice).
    sample = list(range(0, most, 97)) + [most - 1]
    direct = reference_model.encode([texts[i] for i in sample], normalize_embeddings=True, convert_to_numpy=True)
    assert cosine_rows(outcome.vectors[sample], direct).min() >= 0.999
    light_direct = reference_model.encode(light_texts, normalize_embeddings=True, convert_to_numpy=True)
    assert cosine_rows(np.vstack(answers), light_direct).min() >= 0.999


async def test_a_big_call_from_a_key_already_at_its_share_is_overloaded_at_once(served):
    service, pool = served
    spy = Spy(pool)
    share = service.settings.inference.max_queue_per_key
    # The heavy key's other request holds most of its share of the queue.
    other = asyncio.create_task(
        pool.encode(MODEL, [f"other request {i} " + SENTENCE * 2 for i in range(share - 10)], True, fair_key="key:heavy")
    )
    try:
        spy.watch_batchers()
        await spy.heavy_queued.wait()
        with pytest.raises(Overloaded, match="for this caller"):
            await service.embed([f"big {i}" for i in range(1_000)], principal=HEAVY, max_texts=2_048)
        # The other request, then the big call's first slice, refused: nothing of it waits.
        assert spy.calls == [("key:heavy", share - 10, False), ("key:heavy", 256, False)]
        assert (await other).shape == (share - 10, 384)
        again = await service.embed([f"big {i}" for i in range(1_000)], principal=HEAVY, max_texts=2_048)
        assert again.vectors.shape == (1_000, 384)  # once the other request is answered
    finally:
        other.cancel()


async def test_a_text_the_model_refuses_in_a_later_slice_is_named_at_the_callers_index(minilm_dir):
    settings = engine_settings(devices="cpu", truncate=False)
    settings.default_model = MODEL
    pool = ModelPool(settings)
    await pool.load(minilm_spec(), minilm_dir)
    try:
        service = EmbeddingService(settings, pool, None, LocalModels(settings, pool))
        texts = [f"short {i % 700}" for i in range(1_000)]  # duplicates: the pool sees 700 distinct texts
        texts[900] = " ".join(f"word{i}" for i in range(600))  # past the window, in the third slice
        with pytest.raises(BadInput) as raised:
            await service.embed(texts, principal=HEAVY, max_texts=2_048)
        assert raised.value.extensions["index"] == 900
        assert raised.value.message.startswith("text 900 has ")
        assert pending_of(pool, "key:heavy") == 0  # the other slices were cancelled, nothing left queued
    finally:
        await pool.close()


async def test_more_texts_than_the_limit_are_refused_before_any_work(served):
    service, pool = served
    spy = Spy(pool)
    with pytest.raises(BadInput, match="2049 texts in one request; at most 2048 are allowed") as raised:
        await service.embed([f"t{i}" for i in range(2_049)], principal=HEAVY, max_texts=2_048)
    assert raised.value.extensions["limit"] == 2_048
    with pytest.raises(BadInput, match="257 texts in one request; at most 256 are allowed"):  # GraphQL embed's cap
        await service.embed([f"t{i}" for i in range(257)], principal=HEAVY)
    assert spy.calls == []


async def test_a_caller_that_leaves_mid_request_leaves_no_slice_queued_or_waiting(served):
    service, pool = served
    spy = Spy(pool)
    spy.watch_batchers()
    before = encoded()
    texts = [f"left behind {i}: " + SENTENCE * 2 for i in range(1_500)]
    call = asyncio.create_task(service.embed(texts, principal=HEAVY, max_texts=2_048))
    await spy.later_slice_queued.wait()  # the first slice answered, the others queued or waiting for room
    assert pending_of(pool, "key:heavy") > 0
    call.cancel()  # what CallerEdge does when the client hangs up
    with pytest.raises(asyncio.CancelledError):
        await call
    assert pending_of(pool, "key:heavy") == 0
    assert all(waiter.done() for waiter in pool._loaded[MODEL].room_waiters)
    assert encoded() - before < len(texts) - 256  # most slices were never computed
