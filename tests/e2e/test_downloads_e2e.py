"""Model downloads seen from outside: real servers, a local hub mirror with faults, real
GraphQL WebSocket clients, two replicas sharing one Redis."""

from __future__ import annotations

import asyncio
import time

import asyncpg

import httpx
import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from tests.e2e.conftest import ARTIFACTS, BUNDLED, hub_env, shared_redis_env
from tests.support.fake_hub import HUB_MODEL, unused_port
from tests.support.databases import temporary_database
from tests.support.server import LiveServer

PROGRESS = gql(
    """subscription($m: String) { modelDownloadProgress(model: $m) {
         model replica state attempt maxAttempts file bytesDone bytesTotal percent kind message } }"""
)
REPLICAS = ("replica-1", "replica-2")


def timeline(events: list[dict]) -> list[str]:
    """States in order, each run of progress ticks collapsed to one "progress" entry."""
    out: list[str] = []
    for event in events:
        entry = "progress" if event["kind"] == "progress" else event["state"]
        if not (entry == "progress" and out and out[-1] == "progress"):
            out.append(entry)
    return out


async def collect_until_ready(
    ws_url: str, protocol: str, subscribed: asyncio.Event, limit: float = 240, replica: str = REPLICAS[0]
) -> list[dict]:
    """Events of HUB_MODEL until `replica` reports READY or FAILED (after the first-state snapshot)."""
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
                if event["replica"] == replica and event["state"] in ("READY", "FAILED") and len(events) > len(REPLICAS):
                    break
    return events


def model_view(server: LiveServer, model: str) -> dict:
    query = """query($m: String!) { model(name: $m) { state replica
                 replicas { replica state attempts bytesDone bytesTotal updatedAt } } }"""
    body = server.graphql(query, {"m": model})
    assert "errors" not in body, body
    return body["data"]["model"]


def wait_until_replicas(server: LiveServer, model: str, replicas: set[str], timeout: float = 60) -> dict:
    """The model as `server` answers once its `replicas` are exactly `replicas`."""
    deadline = time.monotonic() + timeout
    while True:
        view = model_view(server, model)
        if {r["replica"] for r in view["replicas"]} == replicas or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


@pytest.fixture(scope="module")
async def cluster_database():
    """A database of their own: other servers of the session share e2e_database, and with it the
    cluster (replica heartbeats, and the Redis namespace derived from the database)."""
    async with temporary_database("citadel_cluster") as url:
        yield url


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, cluster_database, fake_hub):
    """Two gateway processes sharing PostgreSQL and Redis, each with its own model cache."""
    shared = {
        "CITADEL_DATABASE_URL": cluster_database,
        **shared_redis_env(),
        "CITADEL_DEFAULT_MODEL": BUNDLED,
        "CITADEL_REPLICA_HEARTBEAT_SECONDS": "1",
    }
    servers = [
        LiveServer(
            env=hub_env(
                fake_hub.url,
                CITADEL_DATA_DIR=str(tmp_path_factory.mktemp(f"replica{i}")),
                CITADEL_REPLICA_ID=REPLICAS[i - 1],
                **shared,
            ),
            log_path=ARTIFACTS / f"replica{i}.log",
        )
        for i in (1, 2)
    ]
    for server in servers:
        server.start()
    for server in servers:
        wait_until_replicas(server, HUB_MODEL, set(REPLICAS))
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_both_replicas_see_the_exact_event_sequence_of_a_retried_download(replicas, fake_hub, cluster_database):
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

    # First the model's state on every live replica (one event each), then A's download.
    for seen in (seen_a, seen_b):
        assert sorted((e["replica"], e["state"]) for e in seen[:2]) == [(r, "NOT_DOWNLOADED") for r in REPLICAS]
        assert {e["replica"] for e in seen[2:]} == {REPLICAS[0]}, "every later event is labelled with A"
    expected = ["QUEUED", "DOWNLOADING", "progress", "RETRYING", "DOWNLOADING", "progress",
                "VERIFYING", "LOADING", "READY"]  # fmt: skip
    assert timeline(seen_a[2:]) == expected, timeline(seen_a)
    # Replica B never downloaded anything: everything after its snapshot came over Redis from A.
    assert timeline(seen_b[2:]) == expected, timeline(seen_b)
    assert seen_a[2:] == seen_b[2:]
    retry = next(e for e in seen_a if e["state"] == "RETRYING")
    assert retry["attempt"] == 1 and retry["maxAttempts"] == 3 and retry["message"]
    assert seen_a[-1]["attempt"] == 2

    # The resumed request asked for the rest of the file, not for byte 0 again.
    weights = [r for r in fake_hub.requests if r.file and r.file.endswith(".safetensors") and r.method == "GET"]
    assert weights[-1].range is not None and not weights[-1].range.startswith("bytes=0-"), weights

    # The last state is kept in PostgreSQL, where an operator finds it after a restart.
    connection = await asyncpg.connect(cluster_database)
    try:
        for _ in range(100):  # written by a background writer, so it may trail the event a little
            row = await connection.fetchrow(
                "select state, attempts, bytes_done, bytes_total from model_replicas where model = $1 and replica = $2",
                HUB_MODEL, REPLICAS[0],
            )  # fmt: skip
            if row is not None and row["state"] == "READY":
                break
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
    assert row["state"] == "READY" and row["attempts"] == 2 and row["bytes_done"] == row["bytes_total"] > 0, dict(row)

    # The downloaded model serves, and B's own state is untouched (it has its own cache).
    body = a.graphql('query($m: String) { embed(texts: ["hub model"], model: $m) { model dimensions } }', {"m": HUB_MODEL})
    assert body["data"]["embed"] == {"model": HUB_MODEL, "dimensions": 384}, body
    # B tells the truth about itself (NOT_DOWNLOADED: a request there would not get the model) and
    # about the cluster: A has it READY.
    view = model_view(b, HUB_MODEL)
    assert view["state"] == "NOT_DOWNLOADED" and view["replica"] == REPLICAS[1]
    by_replica = {r["replica"]: r for r in view["replicas"]}
    assert [r["replica"] for r in view["replicas"]] == [REPLICAS[1], REPLICAS[0]], view  # itself first
    assert by_replica[REPLICAS[0]]["state"] == "READY" and by_replica[REPLICAS[0]]["attempts"] == 2
    assert by_replica[REPLICAS[0]]["bytesDone"] == by_replica[REPLICAS[0]]["bytesTotal"] > 0
    assert by_replica[REPLICAS[1]]["state"] == "NOT_DOWNLOADED"


async def test_a_late_subscriber_on_b_is_first_told_that_a_has_it_ready(replicas):
    _, b = replicas  # after the test above: A READY, B NOT_DOWNLOADED
    transport = WebsocketsTransport(url=b.ws_url, subprotocols=["graphql-transport-ws"])
    first: list[dict] = []
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        request = PROGRESS
        request.variable_values = {"m": HUB_MODEL}
        async with asyncio.timeout(30):
            async for result in session.subscribe(request):
                first.append(result["modelDownloadProgress"])
                if len(first) == len(REPLICAS):
                    break
    assert [(e["replica"], e["state"]) for e in first] == [(REPLICAS[1], "NOT_DOWNLOADED"), (REPLICAS[0], "READY")]
    assert first[1]["bytesDone"] == first[1]["bytesTotal"] > 0 and first[1]["kind"] == "state"


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
