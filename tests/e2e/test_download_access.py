"""Who may make a server with keys fetch a model from the hub: real servers over HTTP, and a local
hub (tests/support/fake_hub.py) that records every request it gets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.e2e.access_support import ADMIN_KEY, AccessServer, access_env, codes, create_key
from tests.e2e.conftest import ARTIFACTS, hub_env, shared_redis_env
from tests.support.databases import temporary_database
from tests.support.fake_hub import HUB_MODEL, FakeHub

pytestmark = [pytest.mark.timeout(300)]

EMBED = "query($m: String) { embed(texts: [\"a model nobody fetched\"], model: $m, wait: true) { model dimensions } }"
STATE = "query($m: String!) { model(name: $m) { state } }"


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as server:
        yield server


async def keyed_server(tmp_path_factory, hub: FakeHub, name: str, **extra: str) -> AsyncIterator[AccessServer]:
    """A server with keys required, its own database, and the hub's model in its catalog."""
    log = ARTIFACTS / f"e2e-{name}-server.log"
    log.unlink(missing_ok=True)
    async with temporary_database(f"citadel_{name.replace('-', '_')}") as url:
        data_dir = str(tmp_path_factory.mktemp(f"citadel-{name}"))
        env = access_env(data_dir, url, shared_redis_env(), **hub_env(hub.url), **extra)
        server = AccessServer(env=env, log_path=log)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
async def admin_only_server(tmp_path_factory, hub):
    async for server in keyed_server(tmp_path_factory, hub, "admin-downloads"):
        yield server


@pytest.fixture(scope="module")
async def on_demand_server(tmp_path_factory, hub):
    async for server in keyed_server(tmp_path_factory, hub, "on-demand-downloads", CITADEL_DOWNLOADS__ON_DEMAND="true"):
        yield server


def openai_embeddings(server: AccessServer, secret: str) -> httpx.Response:
    return server.http.post(
        server.url + "/v1/embeddings",
        json={"model": HUB_MODEL, "input": ["a model nobody fetched"]},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=120,
    )


def test_only_an_admin_key_makes_the_server_fetch_a_model(admin_only_server: AccessServer, hub: FakeHub):
    server = admin_only_server
    hub.requests.clear()
    reader = create_key(server, "reads-nothing", ["READ"], collections=["nothing"])["secret"]
    writer = create_key(server, "writer", ["READ", "WRITE"])["secret"]
    for secret in (reader, writer):
        body = server.graphql(EMBED, secret, {"m": HUB_MODEL})
        assert codes(body) == ["MODEL_UNAVAILABLE"] and body["data"] is None, body
        extensions = body["errors"][0]["extensions"]
        assert (extensions["model"], extensions["state"]) == (HUB_MODEL, "NOT_DOWNLOADED"), body
        refused = openai_embeddings(server, secret)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable", refused.text
    assert server.graphql(STATE, ADMIN_KEY, {"m": HUB_MODEL})["data"]["model"]["state"] == "NOT_DOWNLOADED"
    assert hub.requests == []

    # An ADMIN key's embed fetches it (as before); from then on it serves every key.
    fetched = server.graphql(EMBED, ADMIN_KEY, {"m": HUB_MODEL})
    assert fetched["data"]["embed"] == {"model": HUB_MODEL, "dimensions": 384}, fetched
    requests = len(hub.requests)
    assert requests > 0
    served = server.graphql(EMBED, reader, {"m": HUB_MODEL})
    assert served["data"]["embed"] == {"model": HUB_MODEL, "dimensions": 384}, served
    assert openai_embeddings(server, reader).status_code == 200
    assert len(hub.requests) == requests
    assert "Traceback" not in server.log_path.read_text(errors="replace")  # refusals are no server errors


def test_on_demand_downloads_let_any_key_fetch_a_model(on_demand_server: AccessServer, hub: FakeHub):
    hub.requests.clear()
    reader = create_key(on_demand_server, "reader", ["READ"])["secret"]
    body = on_demand_server.graphql(EMBED, reader, {"m": HUB_MODEL})
    assert body["data"]["embed"] == {"model": HUB_MODEL, "dimensions": 384}, body
    assert hub.requests != []
