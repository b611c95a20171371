"""Fresh, uniquely named PostgreSQL databases for tests, dropped afterwards.

The server is the machine's PostgreSQL (CITADEL_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/postgres), or the embedded one when that does not answer
(tests/support/services.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.support.services import postgres_admin_url


def database_url(admin_url: str, name: str) -> str:
    """`admin_url` pointing at database `name` instead."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(admin_url: str | None) -> asyncpg.Connection:
    return await asyncpg.connect(admin_url or postgres_admin_url(), timeout=10)


async def create_database(prefix: str = "citadel_test", admin_url: str | None = None) -> str:
    """Create an empty database with a unique name; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin_url = admin_url or postgres_admin_url()
    conn = await _admin(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(admin_url, name)


async def drop_database(url: str, admin_url: str | None = None) -> None:
    """Drop the database of `url`, disconnecting whoever still uses it."""
    name = urlsplit(url).path.lstrip("/")
    conn = await _admin(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def temporary_database(prefix: str = "citadel_test", admin_url: str | None = None) -> AsyncIterator[str]:
    """`async with temporary_database() as url:` a fresh database, dropped on exit."""
    url = await create_database(prefix, admin_url)
    try:
        yield url
    finally:
        await drop_database(url, admin_url)


async def schema_columns(url: str) -> dict[str, set[str]]:
    """Tables of the public schema with their column names."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    tables: dict[str, set[str]] = {}
    for row in rows:
        tables.setdefault(row["table_name"], set()).add(row["column_name"])
    return tables


async def alembic_revision(url: str) -> str | None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        if not await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL"):
            return None
        return await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()


EXPECTED_SCHEMA = {
    "collections": {
        "name", "model", "model_revision", "dimensions", "distance", "indexed_fields", "created_at",
        "keyword_index", "keyword_cursor", "chunk_max_tokens", "chunk_overlap_tokens", "vectors", "next_vectors",
        "next_model", "next_model_revision", "next_dimensions", "next_chunk_max_tokens", "next_chunk_overlap_tokens",
    },
    "documents": {
        "collection", "id", "text", "metadata", "content_hash", "point_id", "status", "created_at", "updated_at",
        "vector",
    },
    "model_replicas": {
        "model", "replica", "state", "attempts", "max_attempts", "bytes_done", "bytes_total", "device", "last_error",
        "fallback_for", "updated_at",
    },
    "replica_heartbeats": {"replica", "started_at", "seen_at"},
    "api_keys": {
        "id", "name", "prefix", "secret_hash", "scopes", "collections", "filter", "rate_per_second", "created_at",
        "last_used_at", "revoked_at",
    },
    "trusted_documents": {"hash", "document", "source", "created_at"},
    "jobs": {
        "id", "kind", "collection", "state", "replica", "principal_kind", "key_id", "sources", "metadata",
        "documents_total", "documents_done", "documents_failed", "chunks_done", "bytes_total", "bytes_done",
        "cursor_source", "cursor_offset", "cursor_id", "errors", "message", "run_seconds", "created_at", "updated_at",
        "finished_at",
    },
    "reindex_backlog": {"collection", "id"},
    "alembic_version": {"version_num"},
}  # fmt: skip
