"""What both Qdrant adapters share: one table of distances and payload index types, one filter
translator, and the facet fallback. qdrant-edge-py and qdrant-client spell the same concepts
differently; each adapter passes a small QdrantDialect that builds its library's objects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

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


def count_facets(payloads: Iterable[Mapping[str, Any]], key: str, limit: int) -> list[FacetValue]:
    """Facet counts computed from payloads, as Qdrant counts them: each point counts once per
    distinct string/integer/bool value of `key` (list elements are values); most frequent first,
    ties by value. For a store whose facet API is missing or partial."""
    counts: Counter[tuple[str, Any]] = Counter()
    for payload in payloads:
        raw: Any = payload
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, Mapping) else None
        values = raw if isinstance(raw, list) else [raw]
        # (type tag, value): True and 1 are different facet values.
        counts.update({(type(v).__name__, v) for v in values if isinstance(v, (str, int, bool))})
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0][0], str(item[0][1])))
    return [FacetValue(value=v, count=n) for (_, v), n in ranked[:limit]]
