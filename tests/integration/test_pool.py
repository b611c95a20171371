"""ModelPool with the real bundled model: batching, cancellation, admission, truncation, idle unload."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.errors import BadInput, ModelUnavailable, Overloaded
from app.inference import metrics
from app.inference.pool import ModelPool, resolve_devices
from app.domain.models import FALLBACK_MODEL
from tests.support.models import (  # noqa: F401  (fixtures)
    SAMPLE_TEXTS,
    cosine_rows,
    engine_settings,
    minilm_dir,
    minilm_spec,
    reference_model,
)
from tests.support.polling import wait_until

pytestmark = pytest.mark.slow
MODEL = FALLBACK_MODEL


def passes() -> float:
    return metrics.sample_sum(metrics.FORWARD_PASSES, "citadel_forward_passes_total", model=MODEL)


def texts_encoded() -> float:
    return metrics.sample_sum(metrics.BATCH_SIZE, "citadel_batch_size_sum", model=MODEL)


def texts_started() -> float:
    return metrics.sample_sum(metrics.QUEUE_TIME, "citadel_queue_time_seconds_count", model=MODEL)


def queued() -> float:
    return metrics.sample_sum(metrics.QUEUE_SIZE, "citadel_queue_size", model=MODEL)


async def loaded_pool(minilm_dir, **inference) -> ModelPool:
    pool = ModelPool(engine_settings(**inference))
    await pool.load(minilm_spec(), minilm_dir)
    return pool


@pytest.fixture(scope="module")
async def pool(minilm_dir):
    pool = await loaded_pool(minilm_dir, max_batch_size=64, max_wait_ms=5.0)
    yield pool
    await pool.close()


async def test_loaded_on_the_cpu(pool):
    assert pool.is_loaded(MODEL)
    assert pool.replicas(MODEL) == ["cpu"]
    assert not pool.is_loaded("some/other-model")


async def test_vectors_match_direct_encode(pool, reference_model):
    ours = await pool.encode(MODEL, SAMPLE_TEXTS, normalize=True)
    direct = reference_model.encode(SAMPLE_TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert cosine_rows(ours, direct).min() >= 0.999


async def test_texts_are_tokenized_once_and_their_ids_encoded(pool, reference_model, monkeypatch):
    # The real backend gets the admission's ids: its own text tokenizer is never called.
    backend = pool._loaded[MODEL].replicas[0].backend

    def no_second_tokenization(*_args, **_kwargs):
        raise AssertionError("encode(texts) tokenizes again; the admission's ids should be used")

    monkeypatch.setattr(backend, "encode", no_second_tokenization)
    tokens = await pool.tokenize(MODEL, SAMPLE_TEXTS)
    assert tokens.ids is not None and tokens.counts == [len(i) for i in tokens.ids]
    ours = await pool.encode(MODEL, SAMPLE_TEXTS, normalize=True, tokens=tokens)
    again = await pool.encode(MODEL, SAMPLE_TEXTS, normalize=True)  # tokenizes at admission itself
    direct = reference_model.encode(SAMPLE_TEXTS, normalize_embeddings=True)
    assert cosine_rows(ours, direct).min() > 0.9999
    np.testing.assert_allclose(ours, again, atol=1e-6)


async def test_64_concurrent_single_text_requests_share_few_forward_passes(pool, reference_model):
    texts = [f"concurrent request number {i} about topic {i % 7}" for i in range(64)]
    passes_before, encoded_before = passes(), texts_encoded()
    results = await asyncio.gather(*(pool.encode(MODEL, [t], normalize=True) for t in texts))
    used = passes() - passes_before
    assert texts_encoded() - encoded_before == 64
    assert 1 <= used <= 8, f"64 requests took {used} forward passes"
    direct = reference_model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert cosine_rows(np.vstack(results), direct).min() >= 0.999


async def test_cancelled_request_is_not_computed(pool):
    # Every pass slot busy (a CPU replica runs two passes at once), so the doomed request waits in
    # the queue: a free slot would start it at once. 64 texts of ~26 tokens: one pass each within a
    # CPU pass's token budget (max_batch_tokens_cpu).
    slots = pool._loaded[MODEL].replicas[0].backend.passes_at_once
    started_before, encoded_before, passes_before = texts_started(), texts_encoded(), passes()
    busy = [
        asyncio.create_task(
            pool.encode(MODEL, [f"{'a text to keep the model busy ' * 3} {s} {i}" for i in range(64)], normalize=True)
        )
        for s in range(slots)
    ]
    await wait_until(lambda: texts_started() - started_before >= 64 * slots, "every slot's busy pass started")
    doomed = asyncio.create_task(pool.encode(MODEL, ["cancel me", "and me"], normalize=True))
    await wait_until(lambda: queued() >= 64 * slots + 2, "the doomed request is queued behind the passes")
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    for task in busy:
        assert (await task).shape == (64, 384)
    after = await pool.encode(MODEL, ["a later request"], normalize=True)
    assert after.shape == (1, 384)
    # The busy passes and the later one ran; the cancelled texts never reached the model.
    assert texts_encoded() - encoded_before == 64 * slots + 1
    assert passes() - passes_before == slots + 1
    assert queued() == 0


async def test_over_long_input_is_truncated_like_sentence_transformers(pool, reference_model):
    long_text = SAMPLE_TEXTS[-1]
    ours = await pool.encode(MODEL, [long_text], normalize=True)
    direct = reference_model.encode([long_text], normalize_embeddings=True, convert_to_numpy=True)
    assert cosine_rows(ours, direct)[0] >= 0.999


async def test_truncation_off_rejects_over_long_input(minilm_dir):
    strict = await loaded_pool(minilm_dir, truncate=False)
    try:
        with pytest.raises(BadInput) as error:
            await strict.encode(MODEL, ["short is fine", SAMPLE_TEXTS[-1]], normalize=True)
        assert error.value.extensions["index"] == 1
        assert error.value.extensions["max_tokens"] == 256
        assert (await strict.encode(MODEL, ["short is fine"], normalize=True)).shape == (1, 384)
    finally:
        await strict.close()


async def test_requests_beyond_the_queue_bound_are_overloaded_and_the_rest_succeed(minilm_dir, reference_model):
    small = await loaded_pool(minilm_dir, max_queue=32, max_batch_size=16)
    refused_before = metrics.sample_sum(metrics.OVERLOADED, "citadel_overloaded_total", model=MODEL)
    try:
        texts = [f"burst request {i}" for i in range(1000)]
        results = await asyncio.gather(
            *(small.encode(MODEL, [t], normalize=True) for t in texts), return_exceptions=True
        )
        ok = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
        refused = [r for r in results if isinstance(r, Overloaded)]
        assert len(ok) + len(refused) == 1000, [r for r in results if not isinstance(r, (np.ndarray, Overloaded))][:3]
        assert 0 < len(ok) <= 100 and len(refused) >= 900
        assert metrics.sample_sum(metrics.OVERLOADED, "citadel_overloaded_total", model=MODEL) - refused_before == len(refused)
        assert refused[0].code == "OVERLOADED"
        direct = reference_model.encode([texts[i] for i in ok], normalize_embeddings=True, convert_to_numpy=True)
        assert cosine_rows(np.vstack([results[i] for i in ok]), direct).min() >= 0.999
        assert queued() == 0  # every admitted text was answered and released its place
        assert (await small.encode(MODEL, ["after the burst"], normalize=True)).shape == (1, 384)
    finally:
        await small.close()


async def test_idle_model_is_unloaded_and_reloaded_on_demand(minilm_dir):
    idle = await loaded_pool(minilm_dir, idle_unload_seconds=0.2)
    try:
        first = await idle.encode(MODEL, ["wake me up"], normalize=True)
        await wait_until(lambda: not idle.is_loaded(MODEL), "the idle model was unloaded")
        assert idle.replicas(MODEL) == []
        assert idle.knows(MODEL)  # still served: the spec and directory are kept
        again = await idle.encode(MODEL, ["wake me up"], normalize=True)
        assert idle.is_loaded(MODEL)
        np.testing.assert_allclose(again, first, atol=1e-5)
    finally:
        await idle.close()


async def test_unloaded_model_is_unavailable(minilm_dir):
    gone = await loaded_pool(minilm_dir)
    await gone.unload(MODEL)
    assert not gone.is_loaded(MODEL) and not gone.knows(MODEL)
    with pytest.raises(ModelUnavailable):
        await gone.encode(MODEL, ["anyone there?"], normalize=True)
    await gone.close()


async def test_broken_model_files_are_model_unavailable(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": "not a number"}')
    broken = ModelPool(engine_settings())
    with pytest.raises(ModelUnavailable, match="could not be loaded on cpu"):
        await broken.load(minilm_spec(name="broken", package=None, path=tmp_path), tmp_path)
    assert not broken.is_loaded("broken") and not broken.knows("broken")
    await broken.close()


def test_device_lists():
    import torch

    if torch.cuda.is_available():
        assert resolve_devices("auto", "sentence-transformers") == [
            f"cuda:{i}" for i in range(torch.cuda.device_count())
        ]
    else:
        assert resolve_devices("auto", "sentence-transformers") == ["cpu"]
    assert resolve_devices("cuda:0, cuda:1,cuda:0", "sentence-transformers") == ["cuda:0", "cuda:1"]
    assert resolve_devices("cuda", "sentence-transformers") == ["cuda:0"]
    with pytest.raises(ModelUnavailable, match="invalid inference device"):
        resolve_devices("tpu:0", "sentence-transformers")


async def test_memory_returns_to_baseline_after_an_overload_burst(minilm_dir):
    """Refused callers must not leave queued work, futures or texts behind (no unbounded growth)."""
    import gc
    import tracemalloc

    import psutil

    small = await loaded_pool(minilm_dir, max_queue=32, max_batch_size=16)

    async def burst(round_: int) -> int:
        results = await asyncio.gather(
            *(small.encode(MODEL, [f"burst {round_} request {i} " * 4], normalize=True) for i in range(1000)),
            return_exceptions=True,
        )
        await asyncio.sleep(0.05)  # let the loop run the callbacks of the finished tasks
        return sum(isinstance(r, Overloaded) for r in results)

    try:
        await burst(0)  # warm-up: first-use allocations (tokenizer caches, thread pools) happen here
        gc.collect()
        rss_before = psutil.Process().memory_info().rss
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
        refused = [await burst(round_) for round_ in range(1, 4)]
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
        tracemalloc.stop()
        rss_grown = psutil.Process().memory_info().rss - rss_before
    finally:
        await small.close()
    assert all(r >= 900 for r in refused), refused
    assert queued() == 0
    # Three bursts of 1000 requests: Python-level memory is back where it was (a leak of one
    # 1.5 KiB vector per refused request would already be ~4 MiB), and the process did not grow.
    assert grown < 1_000_000, f"{grown} bytes still allocated after the bursts"
    assert rss_grown < 64 * 1024 * 1024, f"RSS grew by {rss_grown / 2**20:.1f} MiB"
