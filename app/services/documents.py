"""Reading stored documents as a caller may see them: one document, pages, and counts.

Every read checks READ and the collection grant; a tenant-bound key sees only documents whose
metadata matches its filter (app.domain.filter_matcher.matches, the same semantics as search).
A tenant's counts and pages scan rows' metadata: bounded by the request's ScanBudget and
filtered off the event loop (app.domain.scans).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.domain.access import INTERNAL, Principal, Scope
from app.domain.aggregation import MAX_AGGREGATE_FIELDS, SortKey, check_fields, check_sort
from app.domain.filter_matcher import matches
from app.domain.filters import FilterNode, check_field, parse_filter
from app.domain.scans import ScanBudget, off_loop
from app.errors import NotFound
from app.services import aggregate as aggregates
from app.services.aggregate import AggregateOutcome
from app.settings import Settings
from app.validation import check_count

SCAN_PAGE = 500  # rows (id, metadata) read per query while a tenant's documents are counted or paged


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
        self,
        collection: str,
        after: str | None,
        first: int,
        *,
        principal: Principal = INTERNAL,
        budget: ScanBudget | None = None,
        filter: Any | None = None,
        sort: Sequence[SortKey] | None = None,
    ) -> tuple[list[Any], str | None]:
        """Up to `first` documents in id order (or `sort` order, ties by id) after the cursor,
        and the next cursor (None at the end).

        A page under a filter (the request's, a tenant-bound key's) in id order is found by
        scanning rows' metadata from the cursor on; the scan stops at the request's `budget`
        (without one, CITADEL_LIMITS__MAX_SCAN_POINTS for this call), and the page may then hold
        fewer than `first` documents, even none, with a cursor to go on from. A sorted page
        reads every row of the collection (app/services/aggregate.py): charged in full first,
        BAD_INPUT over the budget."""
        await self._collection(collection, principal)
        first = max(1, min(first, self.settings.limits.max_search_limit))
        node = principal.read_filter(None if filter is None else parse_filter(filter))
        keys = check_sort(list(sort or []))
        if keys:
            return await aggregates.sorted_page(
                self.repo, collection, node, keys, after, first, budget or self._budget()
            )
        if node is None:
            rows = await self.repo.list_documents(collection, after, first + 1)
            items = rows[:first]
            return items, (items[-1].id if len(rows) > first else None)
        return await self._tenant_page(collection, after, first, principal, budget or self._budget(), node, filter is None)

    async def aggregate(
        self,
        collection: str,
        *,
        filter: Any | None = None,
        fields: Sequence[str] = (),
        group_by: str | None = None,
        max_groups: int = 100,
        principal: Principal = INTERNAL,
        budget: ScanBudget | None = None,
    ) -> AggregateOutcome:
        """Documents under the filter (and the caller's tenant): their count, stats of `fields`,
        and with `group_by` the same per value of that field (the `max_groups` largest groups).
        Exact over PostgreSQL's rows; see app/services/aggregate.py for the cost."""
        await self._collection(collection, principal)
        node = principal.read_filter(None if filter is None else parse_filter(filter))
        names = check_fields(list(fields), "fields", MAX_AGGREGATE_FIELDS)
        if group_by is not None:
            check_field(group_by, "groupBy")
        check_count(max_groups, "maxGroups", self.settings.limits.max_search_limit)
        return await aggregates.aggregate(
            self.repo, collection, node, names, group_by, max_groups, budget or self._budget()
        )

    async def _tenant_page(
        self,
        collection: str,
        after: str | None,
        first: int,
        principal: Principal,
        budget: ScanBudget,
        node: FilterNode | None = None,
        tenant_only: bool = True,
    ) -> tuple[list[Any], str | None]:
        node = node if node is not None else principal.tenant
        owned: list[str] = []  # ids of the tenant's documents, in id order
        cursor, scanned = after, 0
        while len(owned) <= first:  # one more than the page says whether another follows
            allowed = budget.take(SCAN_PAGE)
            if not allowed:
                if not scanned:
                    who = "for a tenant-bound key" if tenant_only else "under a filter"
                    what = f"paging collection {collection!r} {who} scans rows' metadata"
                    raise budget.refusal(what, "Ask for fewer pages in one request.")
                break  # stopped by the budget: the cursor goes on from the last row read
            batch = await self.repo.document_metadata(collection, cursor, allowed)
            budget.give_back(allowed - len(batch))
            scanned += len(batch)
            owned.extend(await off_loop(_matching_ids, batch, node))
            if len(batch) < allowed:
                cursor = None  # the end of the collection
                break
            cursor = batch[-1][0]
        ids = owned[:first]
        following = ids[-1] if len(owned) > first else cursor
        rows = await self.repo.get_documents(collection, ids)
        # Read again by id: a row deleted or moved to another tenant since is left out.
        return [r for r in rows if r is not None and r.status != "deleting" and _holds(node, r.metadata)], following

    async def document_counts(
        self, names: Sequence[str], *, principal: Principal = INTERNAL, budget: ScanBudget | None = None
    ) -> list[int]:
        """documentCount of each collection, in order; one query for callers without a tenant.

        A tenant-bound key's counts scan every row's metadata: the rows are counted first (one
        query) and charged to `budget` (without one, CITADEL_LIMITS__MAX_SCAN_POINTS for this
        call), so a request over it is BAD_INPUT before any scan."""
        for name in names:
            principal.require(Scope.READ, name)
        counts = await self.repo.count_documents_in(names)
        if principal.tenant is None:
            return [counts[name] for name in names]
        listed = ", ".join(repr(name) for name in list(names)[:3]) + (", ..." if len(names) > 3 else "")
        (budget or self._budget()).charge(
            sum(counts.values()),
            f"documentCount for a tenant-bound key (every row's metadata of {listed})",
            "Ask for documentCount of fewer collections in one request.",
            unit="rows",
        )
        return [await self._tenant_count(name, principal) for name in names]

    async def _tenant_count(self, collection: str, principal: Principal) -> int:
        total, cursor = 0, None
        while True:
            batch = await self.repo.document_metadata(collection, cursor, SCAN_PAGE)
            total += len(await off_loop(_owned_ids, batch, principal))
            if len(batch) < SCAN_PAGE:
                return total
            cursor = batch[-1][0]

    def _budget(self) -> ScanBudget:
        return ScanBudget(self.settings.limits.max_scan_points)


def _holds(node: FilterNode | None, metadata: Any) -> bool:
    return node is None or matches(node, metadata or {})


def _matching_ids(batch: Sequence[tuple[str, Any]], node: FilterNode | None) -> list[str]:
    """Ids of the rows the filter matches (a scan page's work, in a scan thread)."""
    return [doc_id for doc_id, metadata in batch if _holds(node, metadata)]


def _owned_ids(batch: Sequence[tuple[str, Any]], principal: Principal) -> list[str]:
    """Ids of the rows in the caller's tenant (a scan page's work, in a scan thread)."""
    return [doc_id for doc_id, metadata in batch if principal.owns(metadata)]
