"""Bring the database schema up to date, now or, when PostgreSQL is down at startup, later.

The gateway still starts without its database (embed keeps working, health says what is wrong);
the migration is retried in the background until it succeeds.
"""

from __future__ import annotations

import asyncio

from loguru import logger

from app.adapters.migrations import upgrade_async
from app.errors import DependencyUnavailable

RETRY_SECONDS = 5.0


class SchemaUpgrader:
    def __init__(self, database_url: str, retry_seconds: float = RETRY_SECONDS) -> None:
        self.database_url = database_url
        self.retry_seconds = retry_seconds
        self.done = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Upgrade now; if PostgreSQL cannot be reached, keep trying in the background."""
        try:
            await upgrade_async(self.database_url)
            self.done = True
        except DependencyUnavailable as exc:
            logger.error("PostgreSQL is unavailable ({}); starting without it and retrying the migration", exc)
            self._task = asyncio.create_task(self._retry(), name="schema-upgrade")

    async def _retry(self) -> None:
        while not self.done:
            await asyncio.sleep(self.retry_seconds)
            try:
                await upgrade_async(self.database_url)
            except DependencyUnavailable:
                continue
            self.done = True
            logger.info("PostgreSQL is back; the database schema is up to date")

    async def check(self) -> None:
        """For health: fails while the schema could not be brought up to date."""
        if not self.done:
            raise DependencyUnavailable("database schema not migrated yet (PostgreSQL was unavailable)")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
