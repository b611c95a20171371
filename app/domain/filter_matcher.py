"""The filter language evaluated in Python against a document's metadata, with exactly the
semantics of the Qdrant translation (see the docstring of app.domain.filters). A tenant-bound key's
writes are checked with it (app.domain.access); the contract tests check the adapters agree with it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Mapping

from app.domain.filters import And, Eq, Exists, FilterNode, In, Not, Or, Range, Scalar, as_utc



def matches(node: FilterNode, metadata: Mapping[str, Any]) -> bool:
    """Whether a document's metadata satisfies the filter, exactly as the Qdrant translation does."""
    if isinstance(node, And):
        return all(matches(item, metadata) for item in node.items)
    if isinstance(node, Or):
        return any(matches(item, metadata) for item in node.items)
    if isinstance(node, Not):
        return not matches(node.item, metadata)
    if isinstance(node, Exists):
        raw = _lookup(metadata, node.field)
        return raw is not _MISSING and raw is not None and raw != []
    values = _values(metadata, node.field)
    if isinstance(node, Eq):
        return any(_same(v, node.value) for v in values)
    if isinstance(node, In):
        return any(_same(v, x) for v in values for x in node.values)
    if isinstance(node, Range):
        check = _in_datetime_range if node.is_datetime else _in_number_range
        return any(check(v, node) for v in values)
    raise TypeError(f"not a filter node: {node!r}")


_MISSING = object()


# -- the write rule: a document a tenant-bound key writes must match its filter however it is read --


def holds_for_every_reading(node: FilterNode, metadata: Mapping[str, Any]) -> bool:
    """Whether every reading of the metadata satisfies the filter: the rule for a tenant-bound
    key's writes. Readers match a list "if any element does" (matches(), and Qdrant), so
    `{tenant: ["a", "b"]}` would be seen by tenant a's filter and by tenant b's. Here a field
    the filter names holds only if it has a value and every element (of lists nested at any
    depth, and of lists of objects on a dotted path) satisfies the condition; a missing field
    never does, also under `not`. Or is judged branch by branch, which is stricter than needed
    and never looser: no document written under a filter can be seen through another's."""
    if isinstance(node, And):
        return all(holds_for_every_reading(item, metadata) for item in node.items)
    if isinstance(node, Or):
        return any(holds_for_every_reading(item, metadata) for item in node.items)
    if isinstance(node, Not):
        return all(_every_value(metadata, f) for f in _fields(node.item)) and not _holds_for_some_reading(
            node.item, metadata
        )
    values = _every_value(metadata, node.field)
    return bool(values) and all(_leaf_holds(node, v) for v in values)


def _holds_for_some_reading(node: FilterNode, metadata: Mapping[str, Any]) -> bool:
    """Whether some reading might satisfy the filter (the dual of holds_for_every_reading)."""
    if isinstance(node, And):
        return all(_holds_for_some_reading(item, metadata) for item in node.items)
    if isinstance(node, Or):
        return any(_holds_for_some_reading(item, metadata) for item in node.items)
    if isinstance(node, Not):
        return not holds_for_every_reading(node.item, metadata)
    return any(_leaf_holds(node, v) for v in _every_value(metadata, node.field))


def _leaf_holds(node: FilterNode, value: Any) -> bool:
    if isinstance(node, Exists):
        return value is not None
    if isinstance(node, Eq):
        return _same(value, node.value)
    if isinstance(node, In):
        return any(_same(value, x) for x in node.values)
    if isinstance(node, Range):
        return (_in_datetime_range if node.is_datetime else _in_number_range)(value, node)
    raise TypeError(f"not a filter leaf: {node!r}")


def _fields(node: FilterNode) -> list[str]:
    if isinstance(node, (And, Or)):
        return [f for item in node.items for f in _fields(item)]
    if isinstance(node, Not):
        return _fields(node.item)
    return [] if isinstance(node, Exists) else [node.field]  # `exists: false` asks for absence


def _every_value(metadata: Any, field: str) -> list[Any]:
    """Every scalar a reader could find at the dotted path: lists (nested or of objects) are
    walked into at every step."""
    found: list[Any] = []
    level: list[Any] = [metadata]
    for key in field.split("."):
        next_level: list[Any] = []
        for current in _flatten(level):
            if isinstance(current, Mapping) and key in current:
                next_level.append(current[key])
        level = next_level
    found.extend(_flatten(level))
    return found


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = list(reversed(values))
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        else:
            out.append(value)
    return out



def _lookup(metadata: Mapping[str, Any], field: str) -> Any:
    current: Any = metadata
    for key in field.split("."):
        if not isinstance(current, Mapping) or key not in current:
            return _MISSING
        current = current[key]
    return current


def _values(metadata: Mapping[str, Any], field: str) -> list[Any]:
    raw = _lookup(metadata, field)
    if raw is _MISSING:
        return []
    return list(raw) if isinstance(raw, list) else [raw]


def _same(value: Any, wanted: Scalar) -> bool:
    # Python says True == 1 == 1.0; Qdrant keeps bool, integer, float and string apart.
    return type(value) is type(wanted) and value == wanted


def _in_number_range(value: Any, r: Range) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return _bounds_hold(float(value), r, float)


def _in_datetime_range(value: Any, r: Range) -> bool:
    if not isinstance(value, str):
        return False
    parsed = parse_payload_datetime(value)
    return parsed is not None and _bounds_hold(parsed, r, lambda b: b)


def _bounds_hold(value: Any, r: Range, conv: Any) -> bool:
    return (
        (r.gt is None or value > conv(r.gt))
        and (r.gte is None or value >= conv(r.gte))
        and (r.lt is None or value < conv(r.lt))
        and (r.lte is None or value <= conv(r.lte))
    )


# The payload string formats Qdrant recognises as datetimes (segment/src/types.rs, the
# DateTimeWrapper parser): RFC 3339, then with or without 'T', fraction and zone, date only.
_PAYLOAD_DATETIME_FORMATS = (
    "%Y-%m-%dT%H:%M:%S.%f%z",
    "%Y-%m-%d %H:%M:%S.%f%z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_payload_datetime(value: str) -> datetime | None:
    """A metadata string as Qdrant reads it for datetime ranges (aware UTC), or None."""
    # Qdrant keeps nanoseconds; microseconds are as fine as both sides compare here.
    text = _LONG_FRACTION.sub(r"\1", value.lstrip())
    for fmt in _PAYLOAD_DATETIME_FORMATS:
        try:
            return as_utc(datetime.strptime(text, fmt))
        except ValueError:
            continue
    return None


