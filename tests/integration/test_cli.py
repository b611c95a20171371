"""The `citadel` command as an operator runs it (a subprocess, real database)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from app.adapters.migrations import head_revision
from app.graphql.schema import schema_sdl
from tests.support.databases import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]


def citadel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_db_upgrade_brings_a_fresh_database_to_the_head_revision():
    url = await create_database("citadel_cli")
    try:
        done = citadel("db", "upgrade", env={"CITADEL_DATABASE_URL": url})
        assert done.returncode == 0, done.stderr
        connection = await asyncpg.connect(url)
        try:
            assert await connection.fetchval("select version_num from alembic_version") == head_revision()
            tables = {r["tablename"] for r in await connection.fetch("select tablename from pg_tables where schemaname = 'public'")}
        finally:
            await connection.close()
        assert {"collections", "documents", "model_replicas", "replica_heartbeats"} <= tables
    finally:
        await drop_database(url)


def test_db_upgrade_against_a_closed_port_fails_with_the_reason():
    done = citadel("db", "upgrade", env={"CITADEL_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"})
    assert done.returncode != 0
    assert "Traceback" not in done.stdout


def test_schema_export_prints_the_schema_of_the_code():
    done = citadel("schema", "export")
    assert done.returncode == 0, done.stderr
    assert done.stdout == schema_sdl()


def test_models_list_shows_the_catalog(tmp_path):
    done = citadel("models", "list", env={"CITADEL_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "all-MiniLM-L6-v2" in done.stdout and "bge-small-en-v1.5" in done.stdout
