"""Alembic environment: migrations over asyncpg (the app's own driver and URL syntax), one
transaction for the whole upgrade, serialised across processes by a PostgreSQL advisory lock."""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any

import asyncpg
from loguru import logger
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from app.adapters.migrations import MIGRATION_LOCK_KEY
from app.urls import asyncpg_dsn

config = context.config

if config.config_file_name and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = (
        config.attributes.get("database_url")
        or os.environ.get("CITADEL_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise RuntimeError("no database URL: set CITADEL_DATABASE_URL or call app.adapters.migrations.upgrade(url)")
    return asyncpg_dsn(url)


def _log_step(ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
    direction = "upgrade" if step.is_upgrade else "downgrade"
    logger.info("migration {} {}: {}", direction, step.up_revision_id, step.up_revision.doc)


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    context.configure(dialect_name="postgresql", literal_binds=True, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        transaction_per_migration=False,
        on_version_apply=_log_step,
    )
    with context.begin_transaction():
        # Replicas starting together queue here; each later one then reads the version table
        # (after the lock, so it sees the committed head) and has nothing left to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def run_migrations_online() -> None:
    dsn = _database_url()
    # async_creator: asyncpg parses the URL exactly as the app's pool does (unix sockets, ssl...).
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(dsn), poolclass=pool.NullPool
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
