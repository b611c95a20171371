"""Fair shares of the model between keys: the queue's order, and the batcher's passes over it."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import pytest

from app.domain.access import ANONYMOUS, INTERNAL, Principal, Scope
from app.inference.batcher import DynamicBatcher
from app.inference.cpu_share import batch_tokens
from app.domain.models import FALLBACK_MODEL
from app.inference.callers import CLIENT_ADDRESS, CallerEdge, fair_key_of
from app.inference.fair_queue import FairQueue
from app.services.embedding import EmbeddingService
from app.settings import InferenceSettings, Settings
from tests.support.fakes import FakeBackend, FakeModels, FakePool
from tests.support.polling import wait_until

HEAVY, LIGHT = "key:heavy", "key:light"


@dataclass(eq=False)
class Text:
    name: str
    tokens: int
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_event_loop().create_future())
    key: str = ""
    tag: float = 0.0
    seq: int = 0


def texts(prefix: str, count: int, tokens: int = 40) -> list[Text]:
    return [Text(f"{prefix} {i}", tokens + i % 7) for i in range(count)]


async def test_a_light_keys_one_text_comes_before_a_heavy_keys_thousand():
    queue: FairQueue[Text] = FairQueue()
    queue.push(HEAVY, texts("heavy", 1_000))
    first = queue.take(64, 2_048)
    queue.started(min(t.tag for t in first))  # the heavy key's first pass runs
    queue.push(LIGHT, [Text("light", 30)])
    assert queue.take(1, 2_048)[0].name == "light"


async def test_keys_with_texts_waiting_take_turns_by_tokens():
    queue: FairQueue[Text] = FairQueue()
    queue.push("key:a", texts("a", 100, tokens=20))  # a's texts are short,
    queue.push("key:b", texts("b", 100, tokens=80))  # b's four times as long
    window = queue.take(1_000, 4_000)
    tokens = {k: sum(t.tokens for t in window if t.key == k) for k in ("key:a", "key:b")}
    assert abs(tokens["key:a"] - tokens["key:b"]) <= 100, tokens
    assert sum(t.key == "key:a" for t in window) > 3 * sum(t.key == "key:b" for t in window)


async def test_one_key_alone_is_first_in_first_out_and_the_window_is_bounded():
    queue: FairQueue[Text] = FairQueue()
    queue.push(HEAVY, texts("first", 10))
    queue.push(HEAVY, texts("second", 10))
    window = queue.take(15, 10_000)
    assert [t.name for t in window] == [f"first {i}" for i in range(10)] + [f"second {i}" for i in range(5)]
    assert [t.name for t in queue.take(100, 1)] == ["second 5"]  # the first text whatever its tokens
    assert len(queue) == 4


async def test_an_idle_key_earns_no_credit():
    queue: FairQueue[Text] = FairQueue()
    queue.push("key:b", texts("b", 50))
    for _ in range(5):  # b alone is served 40 texts while a is idle...
        queue.started(min(t.tag for t in queue.take(8, 10_000)))
    queue.push("key:a", texts("a", 50))  # ...and a, coming back, does not get all the passes
    names = [t.name for t in queue.take(20, 100_000)]
    assert names[0] == "a 0"
    assert sum(n.startswith("b") for n in names) >= 5, names


async def test_cancelled_texts_are_dropped_and_the_size_follows():
    queue: FairQueue[Text] = FairQueue()
    doomed = texts("doomed", 5)
    queue.push(HEAVY, doomed)
    queue.push(LIGHT, texts("light", 2))
    for text in doomed:
        text.future.cancel()
    assert len(queue) == 7
    queue.compact()
    assert len(queue) == 2 and queue.keys == 1
    assert [t.name for t in queue.take(10, 10_000)] == ["light 0", "light 1"]
    assert len(queue) == 0 and queue.keys == 0


async def test_texts_taken_and_not_started_go_back_in_their_order():
    queue: FairQueue[Text] = FairQueue()
    queue.push(HEAVY, texts("heavy", 20))
    window = queue.take(8, 10_000)
    queue.push(HEAVY, texts("later", 2))
    queue.put_back(reversed(window))
    names = [t.name for t in queue.take(100, 100_000)]
    assert names == [f"heavy {i}" for i in range(20)] + ["later 0", "later 1"]


def test_the_fair_key_is_the_api_key_else_the_client_address():
    key = Principal(kind="key", key_id="k1", scopes=frozenset({Scope.READ}))
    env = Principal(kind="env", scopes=frozenset({Scope.ADMIN}))
    assert fair_key_of(key) == "key:k1"
    assert fair_key_of(env) == "key:admin-env"
    assert fair_key_of(ANONYMOUS) == fair_key_of(INTERNAL) == "internal"
    token = CLIENT_ADDRESS.set("10.0.0.7")
    try:
        assert fair_key_of(ANONYMOUS) == "address:10.0.0.7"
        assert fair_key_of(key) == "key:k1"
    finally:
        CLIENT_ADDRESS.reset(token)


def test_a_cpu_pass_holds_far_fewer_tokens_than_a_gpu_pass():
    settings = InferenceSettings()
    assert batch_tokens(settings, "cpu") == settings.max_batch_tokens_cpu <= 4_096
    assert batch_tokens(settings, "cuda:0") == settings.max_batch_tokens == 16_384


# -- the batcher over the fair queue ----------------------------------------------------------------


def words(prefix: str, i: int) -> str:
    return " ".join([f"{prefix}{i}"] * (20 + i % 9))  # 22-30 tokens with FakeBackend's count


def make(backend: FakeBackend, **overrides) -> DynamicBatcher:
    options = {"max_batch_size": 16, "max_batch_tokens": 10_000, "max_wait_ms": 0.0, "max_gather_ms": 0.0,
               "max_queue": 2_000, "pass_overhead_tokens": 256}  # fmt: skip
    options.update(overrides)
    return DynamicBatcher(backend, **options)


async def submit(batcher: DynamicBatcher, backend: FakeBackend, batch: list[str], key: str):
    return await batcher.submit(batch, backend.token_counts(batch), False, fair_key=key)


class StartOrderBackend(FakeBackend):
    """Records each pass when it starts (FakeBackend.passes: when it ends, in any order at once)."""

    def __init__(self, passes_at_once: int = 1) -> None:
        super().__init__()
        self.passes_at_once = passes_at_once
        self.started_passes: list[list[str]] = []
        self._lock = threading.Lock()

    def encode(self, texts, normalize):
        with self._lock:
            self.started_passes.append(list(texts))
        return super().encode(texts, normalize)


@pytest.mark.parametrize("passes_at_once", [1, 2])
async def test_a_light_text_goes_into_the_next_pass_whatever_a_heavy_key_queued(passes_at_once):
    backend = StartOrderBackend(passes_at_once)
    batcher = make(backend)
    backend.gate.clear()
    heavy_texts = [words("heavy", i) for i in range(1_000)]
    heavy = asyncio.create_task(submit(batcher, backend, heavy_texts, HEAVY))
    await wait_until(lambda: len(backend.started_passes) == passes_at_once, "every slot busy with the heavy key")
    light = asyncio.create_task(submit(batcher, backend, ["light one"], LIGHT))
    await wait_until(lambda: batcher.pending == 1_001, "the light text queued")
    assert batcher.pending_of(HEAVY) == 1_000 and batcher.pending_of(LIGHT) == 1
    backend.gate.set()
    await light
    assert "light one" in backend.started_passes[passes_at_once]  # the next pass to start
    assert len(await heavy) == 1_000
    assert sorted(t for p in backend.passes for t in p) == sorted([*heavy_texts, "light one"])
    assert batcher.pending == 0 and batcher.pending_of(HEAVY) == 0
    await batcher.close()


async def test_two_heavy_keys_share_the_passes():
    backend = FakeBackend()
    batcher = make(backend)
    backend.gate.clear()
    first = asyncio.create_task(submit(batcher, backend, [words("a", i) for i in range(160)], "key:a"))
    await wait_until(lambda: backend.started.is_set(), "a's first pass started")
    second = asyncio.create_task(submit(batcher, backend, [words("b", i) for i in range(160)], "key:b"))
    await wait_until(lambda: batcher.pending == 320, "b's texts queued")
    backend.gate.set()
    await asyncio.gather(first, second)
    # After the pass that was running when b came, the next eight passes went to both in turns.
    served = [t[0] for p in backend.passes[1:9] for t in p]
    assert len(served) == 8 * 16 and min(served.count("a"), served.count("b")) >= 40, served
    await batcher.close()


async def test_a_heavy_key_that_hangs_up_has_its_queued_texts_dropped():
    backend = FakeBackend()
    batcher = make(backend)
    backend.gate.clear()
    heavy = asyncio.create_task(submit(batcher, backend, [words("heavy", i) for i in range(500)], HEAVY))
    await wait_until(lambda: backend.started.is_set(), "the heavy key's first pass started")
    light = asyncio.create_task(submit(batcher, backend, ["light one"], LIGHT))
    await wait_until(lambda: batcher.pending == 501, "the light text queued")
    heavy.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await heavy
    assert batcher.pending == 1 and batcher.pending_of(HEAVY) == 0  # its places given back at once
    backend.gate.set()
    await light
    encoded = [t for p in backend.passes for t in p]
    assert "light one" in encoded
    assert len(backend.passes) == 2 and len(encoded) <= 17  # the pass that was running, and the light one
    await batcher.close()


class KeyRecordingPool(FakePool):
    def __init__(self) -> None:
        super().__init__(FakeBackend(dimensions=384, scale=1.0))
        self.fair_keys: list[str] = []
        self.waits: list[bool] = []

    async def encode(self, name, texts, normalize, tokens=None, fair_key="internal", wait_for_room=False):
        self.fair_keys.append(fair_key)
        self.waits.append(wait_for_room)
        return await super().encode(name, texts, normalize, tokens)


async def test_embed_hands_the_callers_fair_key_to_the_pool():
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    pool = KeyRecordingPool()
    service = EmbeddingService(settings, pool, None, FakeModels(settings.models[FALLBACK_MODEL]))  # type: ignore[arg-type]
    reader = Principal(kind="key", key_id="reader-1", scopes=frozenset({Scope.READ}))
    await service.embed(["from a key"], principal=reader)
    token = CLIENT_ADDRESS.set("192.0.2.1")
    try:
        await service.embed(["from an address"], principal=ANONYMOUS)
    finally:
        CLIENT_ADDRESS.reset(token)
    await service.embed(["from the server itself"])
    await service.embed(["bulk work of a key"], principal=reader, wait_for_room=True)  # as ingest embeds
    assert pool.fair_keys == ["key:reader-1", "address:192.0.2.1", "internal", "key:reader-1"]
    assert pool.waits == [False, False, False, True]


# -- the HTTP edge: the caller's address, and a hang-up cancels the request --------------------------


class Transport:
    """An ASGI server's side of one HTTP request: the body, then `http.disconnect` when the client
    leaves (`hang_up`) or once the response is complete, as uvicorn sends it."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.sent: list[dict] = []
        self._body_read = False
        self._complete = asyncio.Event()

    async def receive(self) -> dict:
        if not self._body_read:
            self._body_read = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        left, complete = asyncio.ensure_future(self.left.wait()), asyncio.ensure_future(self._complete.wait())
        await asyncio.wait([left, complete], return_when=asyncio.FIRST_COMPLETED)
        left.cancel(), complete.cancel()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self._complete.set()


def edge_app(record: dict, release: asyncio.Event):
    async def app(scope, receive, send):
        await receive()
        record["key"] = fair_key_of(ANONYMOUS)
        try:
            await release.wait()  # the work, e.g. texts queued for the model
        except asyncio.CancelledError:
            record["cancelled"] = True
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return app


SCOPE = {"type": "http", "method": "POST", "path": "/graphql", "headers": [], "client": ("198.51.100.4", 5123)}


async def test_a_client_that_hangs_up_has_its_request_cancelled():
    record: dict = {}
    transport = Transport()
    edge = CallerEdge(edge_app(record, asyncio.Event()))
    serving = asyncio.create_task(edge(SCOPE, transport.receive, transport.send))
    await wait_until(lambda: "key" in record, "the request running")
    assert record["key"] == "address:198.51.100.4"
    transport.left.set()
    await serving  # returns quietly: nobody to answer
    assert record.get("cancelled") and transport.sent == []
    assert CLIENT_ADDRESS.get() is None


async def test_a_client_that_stays_gets_its_answer():
    record: dict = {}
    release = asyncio.Event()
    transport = Transport()
    serving = asyncio.create_task(CallerEdge(edge_app(record, release))(SCOPE, transport.receive, transport.send))
    await wait_until(lambda: "key" in record, "the request running")
    release.set()
    await serving
    transport.left.set()  # leaving after the answer changes nothing: the request is over
    assert "cancelled" not in record and transport.sent[-1]["body"] == b"done"


async def test_the_server_stopping_a_request_still_cancels_it():
    record: dict = {}
    transport = Transport()
    serving = asyncio.create_task(CallerEdge(edge_app(record, asyncio.Event()))(SCOPE, transport.receive, transport.send))
    await wait_until(lambda: "key" in record, "the request running")
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert record.get("cancelled")
