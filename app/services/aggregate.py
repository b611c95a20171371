"""Aggregates and sorted listings over a collection's rows in PostgreSQL, the source of truth.

Both read every row of the collection (not being deleted): page by page, only the metadata keys
they need (PostgresRepo.document_metadata_keys), each page filtered and counted in a scan thread
(app.domain.scans.off_loop) with the filter language's own matcher, so the counts equal what
search would match, exactly. The cost is the collection's rows, charged to the request's
ScanBudget before the first page: over CITADEL_LIMITS__MAX_SCAN_POINTS is BAD_INPUT before the
work. A count with no filter, tenant, field or group is one COUNT query and costs nothing.
DocumentService (app/services/documents.py) checks access and calls these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from app.domain.aggregation import (
    Aggregation,
    FieldSummary,
    SortKey,
    decode_cursor,
    encode_cursor,
    page_after,
    sort_kinds,
    sort_value,
    top_level_keys,
)
from app.domain.filter_matcher import matches
from app.domain.filters import FilterNode
from app.domain.scans import ScanBudget, off_loop

SCAN_PAGE_ROWS = 2_000  # rows (id, the needed metadata keys) read per query by an aggregate or a sort


@dataclass
class AggregateGroupOutcome:
    value: Any
    count: int
    fields: list[FieldSummary]


@dataclass
class AggregateOutcome:
    count: int
    fields: list[FieldSummary]
    groups: list[AggregateGroupOutcome] | None = None
    group_count: int | None = None  # distinct groups before max_groups


async def _scan(repo: Any, collection: str, keys: Sequence[str], visit: Callable[[list[tuple[str, Any]]], None]) -> None:
    cursor: str | None = None
    while True:
        batch = await repo.document_metadata_keys(collection, cursor, SCAN_PAGE_ROWS, keys)
        await off_loop(visit, batch)
        if len(batch) < SCAN_PAGE_ROWS:
            return
        cursor = batch[-1][0]


async def _charge(repo: Any, collection: str, budget: ScanBudget, what: str) -> None:
    rows = await repo.count_documents(collection)
    budget.charge(
        rows,
        f"{what} of collection {collection!r} (every row's metadata)",
        "Ask for fewer aggregates or sorted pages in one request, or split the collection.",
        unit="rows",
    )


async def aggregate(
    repo: Any,
    collection: str,
    node: FilterNode | None,
    fields: list[str],
    group_by: str | None,
    max_groups: int,
    budget: ScanBudget,
) -> AggregateOutcome:
    if node is None and not fields and group_by is None:
        return AggregateOutcome(count=await repo.count_documents(collection), fields=[])
    await _charge(repo, collection, budget, "aggregate")
    state = Aggregation(node, fields, group_by)
    keys = top_level_keys(fields + ([group_by] if group_by else []), node)
    await _scan(repo, collection, keys, state.add_page)
    outcome = AggregateOutcome(count=state.count, fields=state.summaries())
    if group_by is not None:
        ranked = state.ranked_groups()
        outcome.group_count = len(ranked)
        outcome.groups = [
            AggregateGroupOutcome(value=value, count=group.count, fields=group.summaries())
            for value, group in ranked[:max_groups]
        ]
    return outcome


async def sorted_page(
    repo: Any,
    collection: str,
    node: FilterNode | None,
    sort: list[SortKey],
    after: str | None,
    first: int,
    budget: ScanBudget,
) -> tuple[list[Any], str | None]:
    """Up to `first` rows in `sort` order (ties by id) after the cursor, and the next cursor
    (None at the end). The cursor carries the last row's sort values and id, so a page starts
    strictly after it: no row is listed twice or skipped while the rows stay as they are."""
    await _charge(repo, collection, budget, "a sorted listing")
    matching: list[tuple[str, Any]] = []

    def keep(batch: list[tuple[str, Any]]) -> None:
        matching.extend(r for r in batch if node is None or matches(node, r[1] or {}))

    await _scan(repo, collection, top_level_keys([k.field for k in sort], node), keep)
    kinds = await off_loop(sort_kinds, sort, matching)
    start = decode_cursor(after, sort, kinds) if after else None

    def entries() -> list[tuple[list[Any], str]]:
        return [([sort_value(md, k, kind) for k, kind in zip(sort, kinds)], doc_id) for doc_id, md in matching]

    window = await off_loop(lambda: page_after(entries(), sort, start, first + 1))
    items = window[:first]
    following = encode_cursor(sort, kinds, items[-1]) if len(window) > first else None
    rows = await repo.get_documents(collection, [doc_id for _, doc_id in items])
    # Read again by id: a row deleted or changed out of the filter since is left out.
    kept = [r for r in rows if r is not None and r.status != "deleting" and (node is None or matches(node, r.metadata or {}))]
    return kept, following
