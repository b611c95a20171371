"""The gRPC edge on its own: a real grpc.aio server and client over stand-in services. One status
table for every Citadel error code, masked unexpected errors, the caller's address and key,
the shared stream quota, and streams ended at shutdown."""

from __future__ import annotations

import asyncio
import inspect
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

import app.errors
from app.domain.access import Principal, Scope, rejected
from app.domain.models import DownloadEvent, ModelState
from app.errors import BadInput, CitadelError
from app.graphql.websockets import OperationQuota
from app.grpc import convert
from app.grpc.caller import peer_address
from app.grpc.citadel.v1 import citadel_pb2 as pb
from app.grpc.citadel.v1 import citadel_pb2_grpc as pb_grpc
from app.grpc.server import check_exposure, serving_grpc
from app.grpc.service import StreamLimitReached
from app.grpc.status import STATUS
from app.inference.callers import CLIENT_ADDRESS
from app.requests import EmbedRequest, RerankRequest
from app.settings import Settings
from app.startup_checks import StartupRefused
from tests.support.polling import wait_until

EXPECTED = {
    "BAD_INPUT": grpc.StatusCode.INVALID_ARGUMENT,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "FORBIDDEN": grpc.StatusCode.PERMISSION_DENIED,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "OVERLOADED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "DEPENDENCY_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "MODEL_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "CONFLICT": grpc.StatusCode.ABORTED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}
KEY = "good-key"
CALLER = Principal(kind="key", key_id="k1", name="reader", scopes=frozenset({Scope.READ}))


def test_every_error_code_has_its_status() -> None:
    codes = {cls.code for _, cls in inspect.getmembers(app.errors, inspect.isclass) if issubclass(cls, CitadelError)}
    codes.add(StreamLimitReached.code)
    assert codes == set(STATUS)
    assert STATUS == EXPECTED


@pytest.mark.parametrize(
    "peer,address",
    [("ipv4:127.0.0.1:5000", "127.0.0.1"), ("ipv6:[::1]:5000", "::1"), ("unix:/tmp/s.sock", "/tmp/s.sock"), ("", None)],
)
def test_peer_address(peer: str, address: str | None) -> None:
    assert peer_address(peer) == address


@pytest.mark.parametrize("text", ["{nope", '{"a": "nul \\u0000"}', "[" * 2000 + "]" * 2000])
def test_json_arguments_are_checked_at_the_edge(text: str) -> None:
    with pytest.raises(BadInput):
        convert.json_argument(text, "filter_json", 1000)


class FakeKeys:
    async def authenticate(self, secret: str | None) -> Principal:
        if secret is None:
            return rejected("a valid API key is required (Authorization: Bearer <key>)")
        if secret == "down":
            raise app.errors.DependencyUnavailable("PostgreSQL is unavailable")
        return CALLER if secret == KEY else rejected("unknown API key")


class FakeEmbedder:
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    async def run(self, request: EmbedRequest, **kwargs: Any) -> Any:
        self.seen.append((request, kwargs, CLIENT_ADDRESS.get()))
        texts = list(request.texts)
        if texts == ["boom"]:
            raise RuntimeError("secret internals /etc/passwd")
        if texts == ["slow"]:
            raise app.errors.RateLimited("too fast", retry_after=1.5)
        vectors = np.ones((len(texts), 3), dtype=np.float32)
        return SimpleNamespace(model="m", dimensions=3, vectors=vectors, cached=[False] * len(texts))


class FakeReranker:
    async def run(self, request: RerankRequest, **kwargs: Any) -> Any:
        hits = [SimpleNamespace(index=i, score=1.0 / (i + 1), text=d) for i, d in enumerate(request.documents)][: request.top_n]
        return SimpleNamespace(model="r", hits=hits, took_ms=1.0)


class FakeCatalog:
    def __init__(self) -> None:
        self.open = 0

    @asynccontextmanager
    async def progress(self, model: str | None, principal: Principal):
        self.open += 1
        try:
            event = DownloadEvent(model=model or "m", state=ModelState.READY, attempt=1, max_attempts=3, replica="r1")
            yield [event], _forever()
        finally:
            self.open -= 1


async def _forever():
    await asyncio.Event().wait()
    yield  # pragma: no cover


class FakeLimiter:
    async def check(self, principal: Principal) -> None:
        return None


def fake_services() -> Any:
    settings = Settings(grpc={"enabled": True, "port": 0, "host": "127.0.0.1"}, auth={"required": True})
    return SimpleNamespace(
        settings=settings, keys=FakeKeys(), limiter=FakeLimiter(), embedder=FakeEmbedder(), catalog=FakeCatalog(),
        reranker=FakeReranker(),
    )


def auth(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


async def refusal(call: Any) -> tuple[grpc.StatusCode, dict[str, str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    return error.code(), dict(error.trailing_metadata() or ()), error.details() or ""


async def test_calls_reach_the_service_as_the_callers_key_from_their_address() -> None:
    services = fake_services()
    async with serving_grpc(services, OperationQuota(5)) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CitadelStub(channel)
        reply = await stub.Embed(pb.EmbedRequest(texts=["a", "b"], kind=pb.EMBED_KIND_QUERY), metadata=auth(KEY))
        assert [list(e.values) for e in reply.embeddings] == [[1.0, 1.0, 1.0]] * 2
        request, kwargs, address = services.embedder.seen[-1]
        assert request.texts == ("a", "b") and kwargs["principal"] is CALLER and request.kind.value == "QUERY"
        assert request.normalize is True and request.model is None
        assert address == "127.0.0.1"


async def test_rerank_hits_carry_text_only_when_asked() -> None:
    services = fake_services()
    async with serving_grpc(services, OperationQuota(5)) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CitadelStub(channel)
        request = pb.RerankRequest(query="q", documents=["a", "b", "c"], top_n=2)
        bare = await stub.Rerank(request, metadata=auth(KEY))
        assert [(h.index, h.HasField("text")) for h in bare.hits] == [(0, False), (1, False)]
        request.return_text = True
        texts = await stub.Rerank(request, metadata=auth(KEY))
        assert [h.text for h in texts.hits] == ["a", "b"] and texts.model == "r"


async def test_refusals_carry_their_status_and_code() -> None:
    services = fake_services()
    async with serving_grpc(services, OperationQuota(5)) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CitadelStub(channel)
        status, trailers, _ = await refusal(stub.Embed(pb.EmbedRequest(texts=["a"])))
        assert (status, trailers["citadel-code"]) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        status, trailers, _ = await refusal(stub.Embed(pb.EmbedRequest(texts=["a"]), metadata=auth("down")))
        assert (status, trailers["citadel-code"]) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
        status, trailers, _ = await refusal(stub.Embed(pb.EmbedRequest(texts=["slow"]), metadata=auth(KEY)))
        assert (status, trailers["citadel-code"], trailers["retry-after"]) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "1.5")
        status, trailers, details = await refusal(stub.Embed(pb.EmbedRequest(texts=["boom"]), metadata=auth(KEY)))
        assert (status, trailers["citadel-code"], details) == (grpc.StatusCode.INTERNAL, "INTERNAL", "Internal server error.")
        status, trailers, _ = await refusal(stub.Embed(pb.EmbedRequest(texts=["a"], model="nul\x00"), metadata=auth(KEY)))
        assert (status, trailers["citadel-code"]) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT")


async def test_streams_share_the_quota_and_end_at_shutdown() -> None:
    services = fake_services()
    quota = OperationQuota(1)
    async with serving_grpc(services, quota) as port:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.CitadelStub(channel)
        stream = stub.WatchModelProgress(pb.WatchModelProgressRequest(model="m"), metadata=auth(KEY))
        first = await stream.read()
        assert (first.model, first.state, first.replica) == ("m", pb.MODEL_STATE_READY, "r1")
        assert quota.running == {"key:k1": 1}
        second = stub.WatchModelProgress(pb.WatchModelProgressRequest(model="m"), metadata=auth(KEY))
        status, trailers, _ = await refusal(second.read())
        assert (status, trailers["citadel-code"]) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        ending = asyncio.ensure_future(stream.read())
        started = asyncio.get_running_loop().time()
    # The server stopped with the stream open: the stream ended then and held nothing up.
    assert asyncio.get_running_loop().time() - started < 3
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(ending, 10)
        assert (caught.value.code(), dict(caught.value.trailing_metadata())["citadel-code"]) == (
            grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
        )  # fmt: skip
    finally:
        await channel.close()
    assert quota.running == {} and services.catalog.open == 0


async def test_a_client_leaving_a_stream_gives_its_slot_back() -> None:
    services = fake_services()
    quota = OperationQuota(1)
    async with serving_grpc(services, quota) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CitadelStub(channel)
        for _ in range(3):  # one slot: each stream must have given it back before the next opens
            stream = stub.WatchModelProgress(pb.WatchModelProgressRequest(), metadata=auth(KEY))
            assert (await stream.read()).state == pb.MODEL_STATE_READY
            stream.cancel()
            # The server sees the hang-up a moment later; nothing to await but the condition.
            await wait_until(lambda: not quota.running and not services.catalog.open, "the stream's slot given back", attempts=1_000)


async def test_off_by_default() -> None:
    services = SimpleNamespace(settings=Settings())
    async with serving_grpc(services, OperationQuota(1)) as port:
        assert port is None


def test_grpc_beyond_loopback_needs_keys_or_an_explicit_choice() -> None:
    check_exposure(Settings(grpc={"enabled": True}))  # loopback, as HTTP
    check_exposure(Settings(grpc={"enabled": True, "host": "0.0.0.0"}, auth={"required": True}))
    check_exposure(Settings(grpc={"enabled": True, "host": "0.0.0.0"}, auth={"required": False}))  # warned, not refused
    check_exposure(Settings(grpc={"enabled": True}, server={"host": "0.0.0.0"}))  # keys required by default there
    with pytest.raises(StartupRefused, match="CITADEL_AUTH__REQUIRED"):
        check_exposure(Settings(grpc={"enabled": True, "host": "0.0.0.0"}))
