"""The database the `citadel` subcommands work on: CITADEL_DATABASE_URL, or the embedded PostgreSQL
under the data dir, migrated to the latest revision. The embedded database has one owner: when
`citadel serve` runs on the same data dir, the command connects to the PostgreSQL that server runs
(through its unix socket); otherwise it starts its own for the command's duration."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

R = TypeVar("R")
T = TypeVar("T")


@asynccontextmanager
async def database_pool(settings: Any) -> AsyncIterator[Any]:
    """An asyncpg pool on the migrated database, closed (and the embedded server stopped) on exit."""
    from app.adapters.migrations import upgrade_async
    from app.adapters.postgres_pool import create_pool

    embedded = None
    url = settings.database_url
    if not url:
        from app.adapters.embedded import EmbeddedPostgres
        from app.adapters.embedded.accounts import DataDirInUse

        embedded = EmbeddedPostgres(settings.data_dir)
        try:
            embedded.start()
            url = embedded.url
        except DataDirInUse as busy:  # a running `citadel serve`: work on its database
            url = embedded.url_of_owner(busy)
            embedded = None
            print(f"using the embedded PostgreSQL of the running Citadel server (pid {busy.holder})", file=sys.stderr)
    try:
        await upgrade_async(url)
        pool = await create_pool(url, min_size=0)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            embedded.stop()


def run_on_database(make: Callable[[Any, Any], R], action: Callable[[R], Awaitable[T]]) -> T:
    """Runs `action(make(settings, pool))` on the database; a CitadelError is printed with its
    code on stderr and exits 2."""
    import typer

    from app.errors import CitadelError
    from app.settings import Settings

    async def main() -> T:
        settings = Settings()
        async with database_pool(settings) as pool:
            return await action(make(settings, pool))

    try:
        return asyncio.run(main())
    except CitadelError as exc:
        typer.echo(f"error ({exc.code}): {exc.message}", err=True)
        raise typer.Exit(2) from None
