"""Trusted documents in PostgreSQL (table trusted_documents, migration 0006), keyed by the sha256
(hex) of the document's text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from app.adapters.postgres_pool import connection


@dataclass(frozen=True)
class TrustedDocumentRow:
    hash: str
    document: str
    source: str | None
    created_at: datetime


class TrustedDocumentRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def get(self, digest: str) -> str | None:
        async with connection(self.pool) as conn:
            return await conn.fetchval("SELECT document FROM trusted_documents WHERE hash = $1", digest)

    async def add(self, documents: dict[str, str], source: str | None) -> int:
        """Registers every document (hash -> text); returns how many were new."""
        async with connection(self.pool) as conn:
            async with conn.transaction():
                rows = await conn.fetch(
                    """
                    INSERT INTO trusted_documents (hash, document, source)
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
                    ON CONFLICT (hash) DO NOTHING RETURNING hash
                    """,
                    list(documents),
                    list(documents.values()),
                    [source] * len(documents),
                )
        return len(rows)

    async def list(self) -> list[TrustedDocumentRow]:
        async with connection(self.pool) as conn:
            records = await conn.fetch("SELECT hash, document, source, created_at FROM trusted_documents ORDER BY created_at, hash")
        return [TrustedDocumentRow(r["hash"], r["document"], r["source"], r["created_at"]) for r in records]

    async def remove(self, digests: Iterable[str]) -> int:
        async with connection(self.pool) as conn:
            rows = await conn.fetch("DELETE FROM trusted_documents WHERE hash = ANY($1::text[]) RETURNING hash", list(digests))
        return len(rows)
