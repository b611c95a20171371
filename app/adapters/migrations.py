"""Apply the schema migrations (the alembic scripts in `app/migrations/`) to a database URL.

Works from any working directory and from an installed package: the alembic configuration is
built here, no alembic.ini is read. Safe to run from several processes at once (env.py takes a
PostgreSQL advisory lock) and from several threads of one process (a lock here, because
alembic's `context` is a module-level global).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from loguru import logger

from alembic import command
from app.adapters.postgres_pool import CONNECTION_ERRORS, unavailable
from app.urls import asyncpg_dsn

# Shipped inside the package, so a wheel installed anywhere finds them; alembic.ini at the repo
# root points at the same directory for `alembic` users. Never looked up from the working directory.
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"

# Key of the pg_advisory_xact_lock that serialises concurrent upgrades ("CITADEL" + 1).
MIGRATION_LOCK_KEY = 0x4349544144454C01

_one_at_a_time = threading.Lock()


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if database_url:
        # Passed as an attribute, not an ini option: ini values would interpolate '%' in passwords.
        config.attributes["database_url"] = asyncpg_dsn(database_url)
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to `revision` (blocking; env.py runs its own event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("upgrade() blocks; inside an event loop use `await upgrade_async(url)`")
    with _one_at_a_time:
        try:
            command.upgrade(alembic_config(database_url), revision)
        except CONNECTION_ERRORS as exc:
            raise unavailable(exc) from exc
    logger.info("database schema is at {}", head_revision() if revision == "head" else revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, database_url, revision)
