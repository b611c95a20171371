"""Clusters of real `citadel serve` replicas on the machine's PostgreSQL and Redis, a local hub mirror
that counts what it serves, and real WebSocket subscribers: a shared model cache fetched once (and
taken over when its downloader is killed), and two clusters on one Redis that never mix."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from tests.e2e.conftest import ARTIFACTS, BUNDLED, hub_env, shared_redis_env
from tests.support.databases import temporary_database
from tests.support.fake_hub import HUB_MODEL, FakeHub
from tests.support.server import LiveServer

PROGRESS = gql(
    """subscription($m: String) { modelDownloadProgress(model: $m) { model replica state kind bytesDone message } }"""
)
MODEL_VIEW = "query($m: String!) { model(name: $m) { state replica replicas { replica state } } }"


@pytest.fixture(autouse=True)
def clean_hub(fake_hub: FakeHub) -> Iterator[None]:
    fake_hub.clear_faults()
    fake_hub.requests.clear()
    yield
    fake_hub.clear_faults()


@contextmanager
def cluster(fake_hub: FakeHub, database: str, tmp_path: Path, names: list[str], **extra: str) -> Iterator[list[LiveServer]]:
    """Replicas named `names` on one database and the machine's Redis, each with its own data dir."""
    servers = [
        LiveServer(
            env=hub_env(
                fake_hub.url,
                CITADEL_DATA_DIR=str(tmp_path / name),
                CITADEL_DATABASE_URL=database,
                **shared_redis_env(),
                CITADEL_DEFAULT_MODEL=BUNDLED,
                CITADEL_LOAD_MODELS_AT_STARTUP="false",  # nothing but the test's downloads
                CITADEL_REPLICA_ID=name,
                CITADEL_REPLICA_HEARTBEAT_SECONDS="1",
                **extra,
            ),
            log_path=ARTIFACTS / f"cluster-{name}.log",
        )
        for name in names
    ]
    try:
        for server in servers:
            server.start(wait_ready=False)  # /readyz waits for the default model, which is not loaded here
        yield servers
    finally:
        for server in servers:
            server.stop()


def view(server: LiveServer) -> dict:
    body = server.graphql(MODEL_VIEW, {"m": HUB_MODEL})
    assert "errors" not in body, body
    return body["data"]["model"]


def wait_for(predicate, timeout: float = 240, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def served_bodies(hub: FakeHub) -> Counter[str]:
    """How often the mirror sent each file's bytes (LFS files are redirected first: the 302 does not count)."""
    return Counter(r.file for r in list(hub.requests) if r.file and r.method == "GET" and r.status in (200, 206))


async def test_a_shared_cache_is_fetched_once_for_the_whole_cluster(fake_hub, tmp_path):
    async with temporary_database("citadel_shared") as database:
        shared = {"CITADEL_CACHE_DIR": str(tmp_path / "shared-models"), "CITADEL_DOWNLOADS__SHARED_CACHE": "true"}
        with cluster(fake_hub, database, tmp_path, ["s1", "s2"], **shared) as servers:
            mutation = "mutation($n: String!) { downloadModel(name: $n) { state replica } }"
            started = await asyncio.gather(
                *(asyncio.to_thread(server.graphql, mutation, {"n": HUB_MODEL}) for server in servers)
            )
            assert [s["data"]["downloadModel"]["replica"] for s in started] == ["s1", "s2"], started
            both_ready = lambda: [view(s)["state"] for s in servers] == ["READY", "READY"]  # noqa: E731
            assert await asyncio.to_thread(wait_for, both_ready), [view(s) for s in servers]
            listings = [r for r in fake_hub.requests if r.path.startswith("/api/models/")]
            served = served_bodies(fake_hub)
            # One replica downloaded, the other waited and loaded the same verified files.
            assert len(listings) == 1, listings
            assert set(served) == set(fake_hub.files) and set(served.values()) == {1}, served
            both = view(servers[1])
            assert sorted((r["replica"], r["state"]) for r in both["replicas"]) == [("s1", "READY"), ("s2", "READY")]
            body = servers[1].graphql('query($m: String) { embed(texts: ["x"], model: $m) { dimensions } }', {"m": HUB_MODEL})
            assert body["data"]["embed"]["dimensions"] == 384, body


async def test_killing_the_downloading_replica_lets_another_take_over(fake_hub, tmp_path):
    # A pause before every 64 KiB of the holder's weights: it is surely mid-file when it is killed.
    fake_hub.add_fault("slow", file="*.safetensors", delay=0.01)
    async with temporary_database("citadel_takeover") as database:
        shared = {"CITADEL_CACHE_DIR": str(tmp_path / "shared-models"), "CITADEL_DOWNLOADS__SHARED_CACHE": "true"}
        with cluster(fake_hub, database, tmp_path, ["k1", "k2"], **shared) as servers:
            mutation = "mutation($n: String!) { downloadModel(name: $n) { state } }"
            for server in servers:
                assert "errors" not in server.graphql(mutation, {"n": HUB_MODEL})
            weights_flowing = lambda: any(  # noqa: E731
                r.file == "model.safetensors" and r.status in (200, 206) for r in list(fake_hub.requests)
            )
            assert await asyncio.to_thread(wait_for, weights_flowing, 120)
            holder = next(s for s in servers if view(s)["state"] == "DOWNLOADING")
            survivor = next(s for s in servers if s is not holder)
            assert view(survivor)["state"] == "QUEUED"  # waiting for the holder, not downloading
            await asyncio.sleep(1.0)  # let some bytes of the weights land in the shared partial file
            holder.process.kill()  # SIGKILL: no cleanup, no unlock
            holder.process.wait(timeout=30)

            ready = await asyncio.to_thread(wait_for, lambda: view(survivor)["state"] == "READY", 240)
            assert ready, view(survivor)
            weights = [r for r in fake_hub.requests if r.file == "model.safetensors" and r.status in (200, 206)]
            assert len(weights) == 2, weights  # the holder's request, and the survivor's
            assert weights[-1].range and not weights[-1].range.startswith("bytes=0-"), weights  # it resumed
            # The dead replica stops heart-beating and drops out of the cluster view.
            gone = await asyncio.to_thread(
                wait_for, lambda: [r["replica"] for r in view(survivor)["replicas"]] == [survivor.env["CITADEL_REPLICA_ID"]], 30
            )
            assert gone, view(survivor)


async def collect(ws_url: str, stop: asyncio.Event, limit: float = 240) -> list[dict]:
    events: list[dict] = []
    transport = WebsocketsTransport(url=ws_url, subprotocols=["graphql-transport-ws"])
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        request = PROGRESS
        request.variable_values = {"m": None}
        async with asyncio.timeout(limit):
            subscription = session.subscribe(request).__aiter__()
            while not stop.is_set():
                waiter = asyncio.ensure_future(subscription.__anext__())
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if waiter in done:
                    events.append(waiter.result()["modelDownloadProgress"])
                    stopper.cancel()
                else:
                    waiter.cancel()
    return events


async def test_two_clusters_on_one_redis_see_none_of_each_others_events(fake_hub, tmp_path):
    async with temporary_database("citadel_blue") as blue_db, temporary_database("citadel_green") as green_db:
        # No namespace is configured: each cluster's comes from its database.
        with cluster(fake_hub, blue_db, tmp_path, ["blue-1", "blue-2"]) as blue, cluster(
            fake_hub, green_db, tmp_path, ["green-1"]
        ) as green:
            stop = asyncio.Event()
            on_blue_2 = asyncio.create_task(collect(blue[1].ws_url, stop))
            on_green = asyncio.create_task(collect(green[0].ws_url, stop))
            await asyncio.sleep(2.0)  # both subscribed (their snapshots arrive at once)
            blue[0].graphql("mutation($n: String!) { downloadModel(name: $n) { state } }", {"n": HUB_MODEL})
            assert await asyncio.to_thread(wait_for, lambda: view(blue[0])["state"] == "READY", 240)
            await asyncio.sleep(1.5)  # anything crossing over would have arrived by now
            stop.set()
            seen_blue, seen_green = await asyncio.gather(on_blue_2, on_green)

    # The same cluster relays every event of blue-1 (the positive control)...
    assert any(e["replica"] == "blue-1" and e["state"] == "READY" and e["model"] == HUB_MODEL for e in seen_blue)
    # ...the other cluster on the very same Redis sees only its own replica.
    assert seen_green and {e["replica"] for e in seen_green} == {"green-1"}, seen_green
    assert all(e["state"] in ("NOT_DOWNLOADED", "QUEUED", "LOADING", "READY") for e in seen_green)


@pytest.mark.browser
@pytest.mark.slow
async def test_the_dashboard_shows_one_row_per_model_and_replica(fake_hub, tmp_path):
    from tests.support.browser import launch_chromium, offline_page

    async with temporary_database("citadel_dash") as database:
        with cluster(fake_hub, database, tmp_path, ["d1", "d2"]) as servers:
            listed = lambda: {r["replica"] for r in view(servers[1])["replicas"]} == {"d1", "d2"}  # noqa: E731
            assert await asyncio.to_thread(wait_for, listed, 30)
            models = [m["name"] for m in servers[1].graphql("{ models { name } }")["data"]["models"]]
            async with launch_chromium() as browser, offline_page(browser) as (page, watch):
                await page.goto(servers[1].url + "/dashboard")
                await page.locator("#connection[data-state=connected]").wait_for(timeout=20_000)
                rows = page.locator("article.model")
                await rows.nth(2 * len(models) - 1).wait_for(timeout=20_000)
                shown = await rows.evaluate_all("els => els.map(e => [e.dataset.model, e.dataset.replica])")
                assert sorted(map(tuple, shown)) == sorted((m, r) for m in models for r in ("d1", "d2")), shown
                # Rows of one model stay together.
                assert [m for m, _ in shown] == sorted([m for m, _ in shown], key=[m for m, _ in shown].index)

                # A download on d1, watched on d2's dashboard: d1's row goes READY, d2's stays put.
                servers[0].graphql("mutation($n: String!) { downloadModel(name: $n) { state } }", {"n": HUB_MODEL})
                row = f'article.model[data-model="{HUB_MODEL}"]'
                await page.locator(f'{row}[data-replica="d1"][data-state="READY"]').wait_for(timeout=240_000)
                assert await page.locator(f'{row}[data-replica="d2"]').get_attribute("data-state") == "NOT_DOWNLOADED"
                assert "on d1" in await page.locator(f'{row}[data-replica="d1"] .replica').inner_text()
                assert watch.errors == []
