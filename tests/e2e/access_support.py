"""A real server with access control on: keys required, an admin key from the environment, one
listed browser origin, introspection off for non-admins (fixture `access_server`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.databases import temporary_database
from tests.support.server import LiveServer, free_port

BUNDLED = "sentence-transformers/all-MiniLM-L6-v2"
ADMIN_KEY = "test-admin-" + "7f3a9c2e5b1d4f6a8c0e2b4d6f8a1c3e"
METRICS_TOKEN = "test-metrics-token-5d7e9f1a3b5c"
PAGE_PORT = free_port()
ALLOWED_ORIGIN = f"http://127.0.0.1:{PAGE_PORT}"  # where the browser test serves its page


class AccessServer(LiveServer):
    def post(self, query: str, key: str | None, variables: dict | None = None, headers: dict | None = None) -> httpx.Response:
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["Authorization"] = f"Bearer {key}"
        return self.http.post(
            self.url + "/graphql", json={"query": query, "variables": variables or {}}, headers=all_headers, timeout=120
        )

    def graphql(self, query: str, key: str | None = None, variables: dict | None = None, timeout: float = 120) -> dict[str, Any]:  # type: ignore[override]
        response = self.post(query, key, variables)
        # A POST without a valid key is refused before its body is read: 401, with the error only.
        refused = response.status_code == 401 and codes(response.json()) == ["UNAUTHENTICATED"]
        assert response.status_code == 200 or refused, response.text
        return response.json()


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


def create_key(
    server: AccessServer,
    name: str,
    scopes: list[str],
    collections: list[str] | None = None,
    filter: Any = None,
    rate: float | None = None,
) -> dict[str, Any]:
    body = server.graphql(
        "mutation($i: ApiKeyInput!) { createApiKey(input: $i) { secret key { id name prefix scopes } } }",
        ADMIN_KEY,
        {"i": {"name": name, "scopes": scopes, "collections": collections, "filter": filter, "ratePerSecond": rate}},
    )
    assert "errors" not in body, body
    return body["data"]["createApiKey"]


def access_env(data_dir: str, database_url: str, redis_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        "CITADEL_DATA_DIR": data_dir,
        "CITADEL_DATABASE_URL": database_url,
        **redis_env,
        "CITADEL_DEFAULT_MODEL": BUNDLED,
        "CITADEL_HF_OFFLINE": "true",
        "CITADEL_AUTH__REQUIRED": "true",
        "CITADEL_AUTH__ADMIN_KEY": ADMIN_KEY,
        "CITADEL_AUTH__METRICS_TOKEN": METRICS_TOKEN,
        "CITADEL_SERVER__CORS_ORIGINS": ALLOWED_ORIGIN,
        "CITADEL_SERVER__INTROSPECTION": "false",
        # Long enough that a revocation seen by another replica came through Redis, not expiry.
        "CITADEL_AUTH__KEY_CACHE_SECONDS": "120",
        **extra,
    }


@pytest.fixture(scope="session")
async def access_database():
    async with temporary_database("citadel_access") as url:
        yield url


def serving(data_dir: str, database_url: str, log_name: str, wait_ready: bool = True, **extra: str) -> Iterator[AccessServer]:
    """A server with access control on (access_env) and a fresh log in test-artifacts/; stopped
    afterwards. Servers on the same database are replicas of one cluster (one Redis namespace)."""
    from tests.e2e.conftest import ARTIFACTS, shared_redis_env

    log = ARTIFACTS / log_name
    log.unlink(missing_ok=True)
    server = AccessServer(env=access_env(data_dir, database_url, shared_redis_env(), **extra), log_path=log)
    server.start(wait_ready=wait_ready)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def access_server(tmp_path_factory, access_database):
    yield from serving(str(tmp_path_factory.mktemp("citadel-access")), access_database, "e2e-access-server.log")
