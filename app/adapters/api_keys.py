"""API key rows in PostgreSQL (table api_keys, migration 0002): hashes only, never a secret."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.adapters.postgres_pool import connection


@dataclass(frozen=True)
class ApiKeyRow:
    id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    collections: tuple[str, ...] | None
    filter: Any
    rate_per_second: float | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


_COLUMNS = "id, name, prefix, scopes, collections, filter, rate_per_second, created_at, last_used_at, revoked_at"


def _row(record: asyncpg.Record) -> ApiKeyRow:
    collections = record["collections"]
    return ApiKeyRow(
        id=record["id"],
        name=record["name"],
        prefix=record["prefix"],
        scopes=tuple(record["scopes"]),
        collections=None if collections is None else tuple(collections),
        filter=record["filter"],
        rate_per_second=record["rate_per_second"],
        created_at=record["created_at"],
        last_used_at=record["last_used_at"],
        revoked_at=record["revoked_at"],
    )


class ApiKeyRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def insert(
        self,
        id: str,
        name: str,
        prefix: str,
        secret_hash: str,
        scopes: Sequence[str],
        collections: Sequence[str] | None,
        filter: Any,
        rate_per_second: float | None,
    ) -> ApiKeyRow:
        async with connection(self.pool) as conn:
            record = await conn.fetchrow(
                f"""
                INSERT INTO api_keys (id, name, prefix, secret_hash, scopes, collections, filter, rate_per_second)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                RETURNING {_COLUMNS}
                """,
                id, name, prefix, secret_hash, list(scopes),
                None if collections is None else list(collections), filter, rate_per_second,
            )  # fmt: skip
        return _row(record)

    async def list(self) -> list[ApiKeyRow]:
        async with connection(self.pool) as conn:
            records = await conn.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_row(r) for r in records]

    async def get(self, id: str) -> ApiKeyRow | None:
        async with connection(self.pool) as conn:
            record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", id)
        return _row(record) if record else None

    async def use(self, secret_hash: str) -> ApiKeyRow | None:
        """The key with this hash, marked used now; revoked keys come back too (callers refuse them)."""
        async with connection(self.pool) as conn:
            record = await conn.fetchrow(
                f"""
                UPDATE api_keys SET last_used_at = CASE WHEN revoked_at IS NULL THEN now() ELSE last_used_at END
                WHERE secret_hash = $1 RETURNING {_COLUMNS}
                """,
                secret_hash,
            )
        return _row(record) if record else None

    async def revoke(self, id: str) -> bool:
        """True when the key existed and was not revoked before."""
        async with connection(self.pool) as conn:
            status = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", id
            )
        return int(status.rsplit(" ", 1)[-1]) > 0

    async def has_active_admin(self) -> bool:
        async with connection(self.pool) as conn:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL AND 'ADMIN' = ANY(scopes))"
                )
            )
