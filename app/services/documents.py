"""Reading stored documents as a caller may see them: one document, pages, and counts.

Every read checks READ and the collection grant; a tenant-bound key sees only documents whose
metadata matches its filter (app.domain.filter_matcher.matches, the same semantics as search).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.domain.access import INTERNAL, Principal, Scope
from app.errors import NotFound
from app.settings import Settings

SCAN_PAGE = 1_000  # rows read per query while a tenant's documents are counted or paged


class DocumentService:
    def __init__(self, settings: Settings, repo: Any) -> None:
        self.settings = settings
        self.repo = repo

    async def _collection(self, name: str, principal: Principal) -> Any:
        principal.require(Scope.READ, name)
        row = await self.repo.get_collection(name)
        if row is None:
            raise NotFound(f"collection {name!r} not found", collection=name)
        return row

    async def get_documents(
        self, collection: str, ids: Sequence[str], *, principal: Principal = INTERNAL
    ) -> list[Any]:
        """Rows in the order of `ids`; None for a missing row or one the caller may not see."""
        principal.require(Scope.READ, collection)
        rows = await self.repo.get_documents(collection, list(ids))
        return [row if row is not None and principal.owns(row.metadata) else None for row in rows]

    async def get(self, collection: str, doc_id: str, *, principal: Principal = INTERNAL) -> Any | None:
        await self._collection(collection, principal)
        return (await self.get_documents(collection, [doc_id], principal=principal))[0]

    async def page(
        self, collection: str, after: str | None, first: int, *, principal: Principal = INTERNAL
    ) -> tuple[list[Any], str | None]:
        """Up to `first` documents in id order after the cursor, and the next cursor (None at the end)."""
        await self._collection(collection, principal)
        first = max(1, min(first, self.settings.limits.max_search_limit))
        if principal.tenant is None:
            rows = await self.repo.list_documents(collection, after, first + 1)
        else:
            rows = await self._tenant_rows(collection, after, first + 1, principal)
        items = rows[:first]
        return items, (items[-1].id if len(rows) > first else None)

    async def _tenant_rows(self, collection: str, after: str | None, wanted: int, principal: Principal) -> list[Any]:
        found: list[Any] = []
        cursor = after
        while len(found) < wanted:
            batch = await self.repo.list_documents(collection, cursor, SCAN_PAGE)
            found.extend(row for row in batch if principal.owns(row.metadata))
            if len(batch) < SCAN_PAGE:
                break
            cursor = batch[-1].id
        return found[:wanted]

    async def document_counts(self, names: Sequence[str], *, principal: Principal = INTERNAL) -> list[int]:
        """documentCount of each collection, in order; one query for callers without a tenant."""
        for name in names:
            principal.require(Scope.READ, name)
        if principal.tenant is None:
            counts = await self.repo.count_documents_in(names)
            return [counts[name] for name in names]
        return [await self._tenant_count(name, principal) for name in names]

    async def _tenant_count(self, collection: str, principal: Principal) -> int:
        total, cursor = 0, None
        while True:
            batch = await self.repo.document_metadata(collection, cursor, SCAN_PAGE)
            total += sum(1 for _, metadata in batch if principal.owns(metadata))
            if len(batch) < SCAN_PAGE:
                return total
            cursor = batch[-1][0]
