"""ModelPool with the real bundled model shared by two keys: one saturating it, one light."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.errors import Overloaded
from app.inference import metrics
from app.inference.pool import ModelPool
from app.domain.models import FALLBACK_MODEL
from tests.support.models import cosine_rows, engine_settings, minilm_dir, minilm_spec, reference_model  # noqa: F401
from tests.support.polling import wait_until

pytestmark = pytest.mark.slow
MODEL = FALLBACK_MODEL
HEAVY, LIGHT = "key:heavy", "key:light"
SENTENCE = "the quick brown fox jumps over the lazy dog and "


def encoded() -> float:
    return metrics.sample_sum(metrics.BATCH_SIZE, "citadel_batch_size_sum", model=MODEL)


def queued() -> float:
    return metrics.sample_sum(metrics.QUEUE_SIZE, "citadel_queue_size", model=MODEL)


def pending_of(pool: ModelPool, key: str) -> int:
    return sum(replica.batcher.pending_of(key) for replica in pool._loaded[MODEL].replicas)


async def test_a_light_key_is_answered_while_a_heavy_key_saturates_the_model(minilm_dir, reference_model):
    # Small passes (on a CPU a pass of the default 2,048 tokens takes a fraction of a second; these
    # are quicker still) and a per-key bound the heavy key reaches.
    pool = ModelPool(engine_settings(devices="cpu", max_batch_tokens_cpu=1_024, max_queue_per_key=300))
    await pool.load(minilm_spec(), minilm_dir)
    try:
        await pool.encode(MODEL, ["warm up"], normalize=True)
        before = encoded()
        heavy_texts = [[f"heavy {r} {i} " + SENTENCE * 12 for i in range(128)] for r in range(2)]  # ~120 tokens each
        heavy = [asyncio.create_task(pool.encode(MODEL, texts, True, fair_key=HEAVY)) for texts in heavy_texts]
        await wait_until(  # more than one request's worth: both admitted
            lambda: pending_of(pool, HEAVY) > 128 and encoded() > before, "the heavy key's passes under way"
        )

        # Each light request is answered while most of the heavy key's texts are still queued.
        light_texts = [f"light request {i} about vector search" for i in range(3)]
        answers = []
        for text in light_texts:
            answers.append(await pool.encode(MODEL, [text], True, fair_key=LIGHT))
            assert pending_of(pool, HEAVY) > 128, "the light request waited for the heavy key's queue"
            assert not any(task.done() for task in heavy)
        direct = reference_model.encode(light_texts, normalize_embeddings=True, convert_to_numpy=True)
        assert cosine_rows(np.vstack(answers), direct).min() >= 0.999

        # Beyond its share of the queue the heavy key is refused; the light key is not.
        with pytest.raises(Overloaded, match="for this caller"):
            await pool.encode(MODEL, [f"one more {i}" for i in range(100)], True, fair_key=HEAVY)
        assert (await pool.encode(MODEL, ["still welcome"], True, fair_key=LIGHT)).shape == (1, 384)

        # The heavy client hangs up: what it had queued is dropped, never computed.
        for task in heavy:
            task.cancel()
        await asyncio.gather(*heavy, return_exceptions=True)
        assert pending_of(pool, HEAVY) == 0
        await wait_until(lambda: queued() == 0, "the passes under way finished")
        assert encoded() - before < 128 + len(light_texts) + 1
    finally:
        await pool.close()


async def test_an_http_client_that_hangs_up_has_its_queued_texts_dropped(minilm_dir):
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from app.inference.callers import CallerEdge
    from tests.support.server import free_port

    pool = ModelPool(engine_settings(devices="cpu", max_batch_tokens_cpu=1_024))
    await pool.load(minilm_spec(), minilm_dir)
    texts = [f"gone {i} " + SENTENCE * 12 for i in range(256)]

    async def embed(request):
        await request.body()
        return JSONResponse({"rows": len(await pool.encode(MODEL, texts, True, fair_key="key:gone"))})

    port = free_port()
    app = CallerEdge(Starlette(routes=[Route("/embed", embed, methods=["POST"])]))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, "the server listening")
        await pool.encode(MODEL, ["warm up"], normalize=True)
        before = encoded()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /embed HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\n{}")
        await wait_until(lambda: pending_of(pool, "key:gone") > 0 and encoded() > before, "the texts being encoded")
        writer.close()  # the client hangs up
        await wait_until(lambda: pending_of(pool, "key:gone") == 0, "its texts dropped")
        await wait_until(lambda: queued() == 0, "the passes under way finished")
        assert encoded() - before < len(texts) // 2
    finally:
        server.should_exit = True
        await serving
        await pool.close()


async def test_heavy_keys_together_leave_room_for_a_light_key(minilm_dir):
    # The per-key bound alone (here as large as the queue) would let two heavy keys fill the whole
    # queue; the share (max_queue / (keys waiting + 1)) keeps room for one more caller.
    pool = ModelPool(engine_settings(devices="cpu", max_queue=120, max_queue_per_key=120))
    await pool.load(minilm_spec(), minilm_dir)
    await pool.encode(MODEL, ["warm up"], normalize=True)
    # No pass starts while the keys queue (every pass slot held), so what is waiting only grows.
    (replica,) = pool._loaded[MODEL].replicas
    slots = replica.batcher._free_passes
    held_slots = 0
    while not slots.locked():
        await slots.acquire()
        held_slots += 1
    tasks: list[asyncio.Task] = []

    async def flood(key: str) -> int:
        """Queue 10 texts at a time until this key is refused for its share; returns what it queued."""
        while len(tasks) < 100:
            task = asyncio.create_task(pool.encode(MODEL, [f"{key} {len(tasks)} {i}" for i in range(10)], True, fair_key=key))
            tasks.append(task)
            before = pending_of(pool, key)
            await wait_until(lambda: task.done() or pending_of(pool, key) > before, f"{key}'s texts admitted or refused")
            if task.done():
                with pytest.raises(Overloaded, match="for this caller"):
                    task.result()
                tasks.remove(task)
                return pending_of(pool, key)
        raise AssertionError(f"{key} was never refused")

    try:
        assert await flood("key:heavy-a") == 120 // 2  # alone: half the queue
        assert await flood("key:heavy-b") == 120 // 3  # beside a: a third (a keeps what it has)
        light = asyncio.create_task(pool.encode(MODEL, ["a light key's one text"], True, fair_key=LIGHT))
        await wait_until(lambda: light.done() or pending_of(pool, LIGHT) == 1, "the light key's text admitted")
        assert not light.done(), light  # admitted, not refused
        for _ in range(held_slots):
            slots.release()
        held_slots = 0
        assert (await light).shape == (1, 384)
        assert all(result.shape == (10, 384) for result in await asyncio.gather(*tasks))
    finally:
        for _ in range(held_slots):
            slots.release()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()
