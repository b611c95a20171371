"""Model downloads seen from outside: real servers, a local hub mirror with faults, real
GraphQL WebSocket clients, two replicas sharing one Redis."""

from __future__ import annotations

import asyncio

import asyncpg

import httpx
import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from tests.e2e.conftest import ARTIFACTS, BUNDLED, hub_env, shared_redis_env
from tests.support.fake_hub import HUB_MODEL, unused_port
from tests.support.server import LiveServer

PROGRESS = gql(
    """subscription($m: String) { modelDownloadProgress(model: $m) {
         model state attempt maxAttempts file bytesDone bytesTotal percent kind message } }"""
)


def timeline(events: list[dict]) -> list[str]:
    """States in order, each run of progress ticks collapsed to one "progress" entry."""
    out: list[str] = []
    for event in events:
        entry = "progress" if event["kind"] == "progress" else event["state"]
        if not (entry == "progress" and out and out[-1] == "progress"):
            out.append(entry)
    return out


async def collect_until_ready(ws_url: str, protocol: str, subscribed: asyncio.Event, limit: float = 240) -> list[dict]:
    events: list[dict] = []
    transport = WebsocketsTransport(url=ws_url, subprotocols=[protocol])
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        request = PROGRESS
        request.variable_values = {"m": HUB_MODEL}
        async with asyncio.timeout(limit):
            async for result in session.subscribe(request):
                event = result["modelDownloadProgress"]
                events.append(event)
                subscribed.set()  # the snapshot arrived: we are surely subscribed
                if event["state"] in ("READY", "FAILED") and len(events) > 1:
                    break
    return events


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, e2e_database, fake_hub):
    """Two gateway processes sharing PostgreSQL and Redis, each with its own model cache."""
    shared = {
        "CITADEL_DATABASE_URL": e2e_database,
        **shared_redis_env(),
        "CITADEL_DEFAULT_MODEL": BUNDLED,
    }
    servers = [
        LiveServer(
            env=hub_env(fake_hub.url, CITADEL_DATA_DIR=str(tmp_path_factory.mktemp(f"replica{i}")), **shared),
            log_path=ARTIFACTS / f"replica{i}.log",
        )
        for i in (1, 2)
    ]
    for server in servers:
        server.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_both_replicas_see_the_exact_event_sequence_of_a_retried_download(replicas, fake_hub, e2e_database):
    a, b = replicas
    # The weights' connection drops half-way once: one retry, and the download resumes.
    fake_hub.add_fault("drop", file="*.safetensors")
    subscribed_a, subscribed_b = asyncio.Event(), asyncio.Event()
    on_a = asyncio.create_task(collect_until_ready(a.ws_url, "graphql-transport-ws", subscribed_a))
    on_b = asyncio.create_task(collect_until_ready(b.ws_url, "graphql-ws", subscribed_b))
    await asyncio.wait_for(asyncio.gather(subscribed_a.wait(), subscribed_b.wait()), 30)

    started = a.graphql("mutation($n: String!) { downloadModel(name: $n) { name state maxAttempts } }", {"n": HUB_MODEL})
    assert started["data"]["downloadModel"]["name"] == HUB_MODEL, started
    seen_a, seen_b = await asyncio.gather(on_a, on_b)

    expected = ["NOT_DOWNLOADED", "QUEUED", "DOWNLOADING", "progress", "RETRYING", "DOWNLOADING", "progress",
                "VERIFYING", "LOADING", "READY"]  # fmt: skip
    assert timeline(seen_a) == expected, timeline(seen_a)
    # Replica B never downloaded anything: everything after its snapshot came over Redis from A.
    assert timeline(seen_b) == expected, timeline(seen_b)
    assert [e for e in seen_a[1:]] == [e for e in seen_b[1:]]
    retry = next(e for e in seen_a if e["state"] == "RETRYING")
    assert retry["attempt"] == 1 and retry["maxAttempts"] == 3 and retry["message"]
    assert seen_a[-1]["attempt"] == 2

    # The resumed request asked for the rest of the file, not for byte 0 again.
    weights = [r for r in fake_hub.requests if r.file and r.file.endswith(".safetensors") and r.method == "GET"]
    assert weights[-1].range is not None and not weights[-1].range.startswith("bytes=0-"), weights

    # The last state is kept in PostgreSQL, where an operator finds it after a restart.
    connection = await asyncpg.connect(e2e_database)
    try:
        for _ in range(100):  # written by a background writer, so it may trail the event a little
            row = await connection.fetchrow(
                "select state, attempts, bytes_done, bytes_total from model_status where name = $1", HUB_MODEL
            )
            if row is not None and row["state"] == "READY":
                break
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
    assert row["state"] == "READY" and row["attempts"] == 2 and row["bytes_done"] == row["bytes_total"] > 0, dict(row)

    # The downloaded model serves, and B's own state is untouched (it has its own cache).
    body = a.graphql('query($m: String) { embed(texts: ["hub model"], model: $m) { model dimensions } }', {"m": HUB_MODEL})
    assert body["data"]["embed"] == {"model": HUB_MODEL, "dimensions": 384}, body
    state_b = b.graphql("query($m: String!) { model(name: $m) { state } }", {"m": HUB_MODEL})
    assert state_b["data"]["model"]["state"] == "NOT_DOWNLOADED"


def test_a_request_can_wait_for_a_download_instead_of_being_refused(replicas):
    _, b = replicas  # B has not downloaded the hub model (the test above downloaded it on A)
    query = 'query($m: String, $w: Boolean!) { embed(texts: ["patience"], model: $m, wait: $w) { model dimensions } }'
    refused = b.graphql(query, {"m": HUB_MODEL, "w": False})
    assert refused["errors"][0]["extensions"]["code"] == "MODEL_UNAVAILABLE", refused
    assert refused["errors"][0]["extensions"]["state"] in ("QUEUED", "DOWNLOADING", "VERIFYING", "LOADING", "NOT_DOWNLOADED")
    waited = b.graphql(query, {"m": HUB_MODEL, "w": True}, timeout=240)
    assert waited["data"]["embed"] == {"model": HUB_MODEL, "dimensions": 384}, waited


def test_a_corrupted_cached_model_is_repaired_at_startup(tmp_path, fake_hub, e2e_database):
    env = hub_env(
        fake_hub.url,
        CITADEL_DATA_DIR=str(tmp_path),
        CITADEL_DATABASE_URL=e2e_database,
        **shared_redis_env(),
        CITADEL_DEFAULT_MODEL=HUB_MODEL,
    )
    first = LiveServer(env=env, log_path=ARTIFACTS / "repair.log").start()
    first.stop()
    weights = next((tmp_path / "models").rglob("model.safetensors"))
    with weights.open("r+b") as handle:  # flip bytes in the middle of the cached weights
        handle.seek(weights.stat().st_size // 2)
        handle.write(b"\x00" * 4096)
    before = len(fake_hub.file_requests("model.safetensors"))

    second = LiveServer(env=env, log_path=ARTIFACTS / "repair.log").start()
    try:
        models = {m["name"]: m for m in httpx.get(second.url + "/readyz").json()["models"]}
        assert models[HUB_MODEL]["state"] == "READY", models
        body = second.graphql('{ embed(texts: ["repaired"]) { model } }')
        assert body["data"]["embed"]["model"] == HUB_MODEL, body
    finally:
        second.stop()
    assert len(fake_hub.file_requests("model.safetensors")) > before, "the broken file was fetched again"


def test_unreachable_hub_starts_serves_with_the_fallback_and_says_why(tmp_path, e2e_database):
    env = hub_env(
        f"http://127.0.0.1:{unused_port()}",  # nothing listens there
        CITADEL_DATA_DIR=str(tmp_path),
        CITADEL_DATABASE_URL=e2e_database,
        **shared_redis_env(),
        CITADEL_DEFAULT_MODEL=HUB_MODEL,
    )
    server = LiveServer(env=env, log_path=ARTIFACTS / "unreachable.log").start(wait_ready=False)
    try:
        assert httpx.get(server.url + "/healthz").status_code == 200  # liveness does not wait for models
        ready = server.wait_for("/readyz", timeout=120).json()
        assert ready["defaultModel"] == BUNDLED and ready["configuredDefaultModel"] == HUB_MODEL
        failed = {m["name"]: m for m in ready["models"]}[HUB_MODEL]
        assert failed["state"] == "FAILED" and failed["attempts"] == 3 and failed["lastError"], failed

        body = server.graphql('{ health { models { name state attempts lastError fallbackFor isDefault } } embed(texts: ["x"]) { model } }')
        health = {m["name"]: m for m in body["data"]["health"]["models"]}
        assert health[HUB_MODEL]["state"] == "FAILED" and health[HUB_MODEL]["attempts"] == 3
        assert health[BUNDLED]["fallbackFor"] == HUB_MODEL and health[BUNDLED]["isDefault"] is True
        assert body["data"]["embed"]["model"] == BUNDLED

        named = server.graphql('query($m: String) { embed(texts: ["x"], model: $m) { model } }', {"m": HUB_MODEL})
        error = named["errors"][0]
        assert error["extensions"]["code"] == "MODEL_UNAVAILABLE" and error["extensions"]["attempt"] == 3
    finally:
        server.stop()
    log = (ARTIFACTS / "unreachable.log").read_text()
    assert f"Downloading {HUB_MODEL}... (Attempt 3/3)" in log
