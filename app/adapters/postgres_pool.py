"""The asyncpg pool and what an outage looks like: errors that mean "the database cannot be
reached or is going away" become DependencyUnavailable (logged once per 10 s, not per request)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
from loguru import logger

from app.errors import DependencyUnavailable
from app.urls import asyncpg_dsn

# Errors that mean "the database cannot be reached or is going away", not "the query is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, unreachable, timeouts (TimeoutError is an OSError)
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # closed pool or connection
    # "cannot switch to state N; another operation is in progress": the connection is still
    # consuming a reply (e.g. after the server's shutdown message) and must not be reused.
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,  # admin/crash shutdown, database dropped, idle timeout
)


class _OutageLog:
    """One warning per `every` seconds while PostgreSQL is down, not one per request."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last = -every
        self.suppressed = 0

    def warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more failed calls since the last report)" if self.suppressed else ""
        logger.warning("PostgreSQL unavailable: {!r}{}", exc, more)
        self.last, self.suppressed = now, 0


_outage_log = _OutageLog()


def unavailable(exc: BaseException) -> DependencyUnavailable:
    _outage_log.warn(exc)
    # The client sees the kind of failure only; addresses and details stay in the log.
    return DependencyUnavailable(f"PostgreSQL is unavailable ({type(exc).__name__})", dependency="postgres")


@contextmanager
def translate_connection_errors() -> Iterator[None]:
    try:
        yield
    except CONNECTION_ERRORS as exc:
        if isinstance(exc, ValueError):  # asyncpg's client-side data/config errors: bugs, not outages
            raise
        raise unavailable(exc) from exc


@asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection for every repository: outages become DependencyUnavailable, and a
    connection left in an unknown protocol state is terminated (the pool replaces it), never
    handed to the next caller."""
    with translate_connection_errors():
        async with pool.acquire() as conn:
            try:
                yield conn
            except CONNECTION_ERRORS as exc:
                if not isinstance(exc, ValueError) and not isinstance(exc, asyncpg.QueryCanceledError):
                    conn.terminate()
                raise


def dumps_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=dumps_json, decoder=json.loads, schema="pg_catalog")


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = 30.0,
    connect_timeout: float = 10.0,
) -> asyncpg.Pool:
    """An asyncpg pool whose connections read and write json/jsonb as Python objects."""
    with translate_connection_errors():
        pool = await asyncpg.create_pool(
            asyncpg_dsn(url),
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            timeout=connect_timeout,
            init=_init_connection,
        )
    assert pool is not None
    return pool
