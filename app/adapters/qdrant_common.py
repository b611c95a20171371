"""What both Qdrant adapters share: one table of distances and payload index types, one filter
translator, and the facet fallback (a scan, counted page by page). qdrant-edge-py and
qdrant-client spell the same concepts differently; each adapter passes a small QdrantDialect
that builds its library's objects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable

from app.domain.filters import And, Eq, Exists, FilterNode, In, Not, Or, Range
from app.domain.vectors import CHUNK_KEY, Distance, FacetValue, payload_key

# Attribute names in (qdrant_edge, qdrant_client.models).
DISTANCES: dict[Distance, tuple[str, str]] = {
    Distance.COSINE: ("Cosine", "COSINE"),
    Distance.DOT: ("Dot", "DOT"),
    Distance.EUCLID: ("Euclid", "EUCLID"),
}
INDEX_TYPES: dict[str, tuple[str, str]] = {
    "keyword": ("Keyword", "KEYWORD"),
    "integer": ("Integer", "INTEGER"),
    "float": ("Float", "FLOAT"),
    "bool": ("Bool", "BOOL"),
    "datetime": ("Datetime", "DATETIME"),
}
EDGE, CLIENT = 0, 1  # column of the tables above


@dataclass(frozen=True)
class QdrantDialect:
    """Builders of one library's filter objects."""

    filter_type: type
    make_filter: Callable[..., Any]  # (must=, should=, must_not=) -> Filter
    is_empty: Callable[[str], Any]
    match_value: Callable[[str, Any], Any]
    match_any: Callable[[str, list[Any]], Any]
    number_range: Callable[[str, dict[str, float]], Any]
    datetime_range: Callable[[str, dict[str, datetime]], Any]


def qdrant_filter(node: FilterNode, dialect: QdrantDialect) -> Any:
    """The filter AST as the library's Filter object."""
    condition = _condition(node, dialect)
    return condition if isinstance(condition, dialect.filter_type) else dialect.make_filter(must=[condition])


def _condition(node: FilterNode, d: QdrantDialect) -> Any:
    if isinstance(node, And):
        return d.make_filter(must=[_condition(item, d) for item in node.items])
    if isinstance(node, Or):
        return d.make_filter(should=[_condition(item, d) for item in node.items])
    if isinstance(node, Not):
        if isinstance(node.item, Exists):  # not exists == is empty
            return d.is_empty(payload_key(node.item.field))
        return d.make_filter(must_not=[_condition(node.item, d)])
    key = payload_key(node.field)
    if isinstance(node, Eq):
        return d.match_value(key, node.value)
    if isinstance(node, In):
        return d.match_any(key, list(node.values))
    if isinstance(node, Range):
        bounds = {k: v for k in ("gt", "gte", "lt", "lte") if (v := getattr(node, k)) is not None}
        if node.is_datetime:
            return d.datetime_range(key, bounds)
        return d.number_range(key, {k: float(v) for k, v in bounds.items()})
    if isinstance(node, Exists):
        return d.make_filter(must_not=[d.is_empty(key)])
    raise TypeError(f"not a filter node: {node!r}")


def document_points(node: FilterNode | None, dialect: QdrantDialect) -> Any:
    """`node` restricted to one point per document (unchunked points and first chunks), so facets
    count documents, not chunks."""
    first = dialect.make_filter(should=[dialect.is_empty(CHUNK_KEY), dialect.match_value(f"{CHUNK_KEY}.index", 0)])
    return dialect.make_filter(must=[first] if node is None else [first, qdrant_filter(node, dialect)])


class FacetCounter:
    """Facet counts kept as a scan goes, page by page, as Qdrant counts them: each document
    counts once per distinct string/integer/bool value of `key` (list elements are values).

    A scan reads every point under the request's filter with only `fields` of its payload: the
    faceted key and the chunk index, so a document's later chunks are skipped here rather than
    by a payload filter in the store (which would read every point's payload in one call).
    Memory grows with the distinct values, never with the points scanned."""

    def __init__(self, key: str) -> None:
        self.path = key.split(".")
        self.fields = [key, f"{CHUNK_KEY}.index"]
        self.counts: Counter[tuple[str, Any]] = Counter()

    def add(self, payloads: Iterable[Mapping[str, Any] | None]) -> None:
        for payload in payloads:
            if not _first_point(payload):
                continue
            raw: Any = payload
            for part in self.path:
                raw = raw.get(part) if isinstance(raw, Mapping) else None
            values = raw if isinstance(raw, list) else [raw]
            # (type tag, value): True and 1 are different facet values.
            self.counts.update({(type(v).__name__, v) for v in values if isinstance(v, (str, int, bool))})

    def top(self, limit: int) -> list[FacetValue]:
        """Most frequent first, ties by value."""
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0][0], str(item[0][1])))
        return [FacetValue(value=v, count=n) for (_, v), n in ranked[:limit]]


def _first_point(payload: Mapping[str, Any] | None) -> bool:
    """An unchunked point or a document's first chunk (what document_points() keeps)."""
    chunk = payload.get(CHUNK_KEY) if isinstance(payload, Mapping) else None
    if chunk is None or chunk == []:
        return True
    index = chunk.get("index") if isinstance(chunk, Mapping) else None
    return index == 0 and not isinstance(index, bool)


def count_facets(payloads: Iterable[Mapping[str, Any]], key: str, limit: int) -> list[FacetValue]:
    """Facet counts of payloads already in memory (see FacetCounter)."""
    counter = FacetCounter(key)
    counter.add(payloads)
    return counter.top(limit)


async def scan_facets(key: str, limit: int, page: Callable[[Any, FacetCounter], Awaitable[Any]]) -> list[FacetValue]:
    """The facet fallback for fields without a facet index: `page(offset, counter)` reads one
    page of points from `offset` (None: the start) with only `counter.fields` of their payloads,
    adds them to the counter off the event loop (app.domain.scans.off_loop), and returns where
    the next page starts (None: that was the last). One page is in memory at a time."""
    counter = FacetCounter(key)
    offset = await page(None, counter)
    while offset is not None:
        offset = await page(offset, counter)
    return counter.top(limit)
