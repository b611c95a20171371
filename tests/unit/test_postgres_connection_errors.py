"""A connection asyncpg says is unusable is an outage for the caller, and is never reused."""

from __future__ import annotations

from contextlib import asynccontextmanager

import asyncpg
import pytest

from app.adapters.api_keys import ApiKeyRepo
from app.adapters.postgres import PostgresRepo
from app.adapters.postgres_replicas import PostgresReplicaStore
from app.errors import DependencyUnavailable


class FakeConnection:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.terminated = False

    async def fetchrow(self, *args, **kwargs):
        raise self.error

    async def execute(self, *args, **kwargs):
        raise self.error

    def terminate(self) -> None:
        self.terminated = True


class FakePool:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    @asynccontextmanager
    async def acquire(self):
        yield self.conn


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        ConnectionResetError("reset by peer"),
    ],
    ids=["internal-client", "does-not-exist", "interface", "admin-shutdown", "reset"],
)
async def test_unusable_connection_is_dependency_unavailable_and_discarded(error):
    conn = FakeConnection(error)
    with pytest.raises(DependencyUnavailable) as caught:
        await PostgresRepo(FakePool(conn)).get_collection("c")
    assert caught.value.extensions == {"dependency": "postgres"}
    assert conn.terminated


@pytest.mark.parametrize(
    "call",
    [
        lambda pool: ApiKeyRepo(pool).get("k"),
        lambda pool: PostgresReplicaStore(pool).forget_replica("r"),
    ],
    ids=["api-keys", "replica-store"],
)
async def test_every_repository_discards_an_unusable_connection(call):
    conn = FakeConnection(asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"))
    with pytest.raises(DependencyUnavailable):
        await call(FakePool(conn))
    assert conn.terminated


async def test_a_query_error_keeps_its_connection():
    conn = FakeConnection(asyncpg.UndefinedTableError("relation does not exist"))
    with pytest.raises(asyncpg.UndefinedTableError):
        await PostgresRepo(FakePool(conn)).get_collection("c")
    assert not conn.terminated
