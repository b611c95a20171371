"""Aggregates and sorted listings over documents' metadata: plain computations (no I/O).

The services read PostgreSQL's rows page by page and hand each page to these accumulators in a
scan thread (app.domain.scans); the filter is the filter language evaluated by
app.domain.filter_matcher, so what is counted is exactly what search would match.

Definitions (docs/from-weaviate.md and schema.graphql describe them to users):
- a field's values are its value, or the elements of a list value (one level), as for filters;
- `count` of a field: documents where it exists (present, not null, not an empty list);
- min / max: over the numeric values (integers and floats, never booleans); a field with no
  numeric values whose string values all parse as datetimes (the filter's formats) gets the
  earliest / latest as an ISO-8601 UTC string;
- sum / mean: over the numeric values, computed exactly and rounded once (the order of the rows
  never changes the result);
- top values: strings, integers and booleans, each counted once per document, most frequent
  first, ties by type (booleans, integers, strings) then value;
- groups: one per string, integer or boolean value of the groupBy field (a document with a list
  is in the group of each element), largest first, ties as top values.

Sorting: each sort field must hold one kind of value in the rows sorted (numbers, datetimes,
strings or booleans; strings sort as datetimes when every one parses as a datetime); documents
without it (missing or null) come last in either order; ties are broken by id, ascending.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

from app.domain.filter_matcher import matches, parse_payload_datetime
from app.domain.filters import And, Exists, FilterNode, Not, Or, check_field
from app.errors import BadInput

MAX_AGGREGATE_FIELDS = 32
MAX_SORT_FIELDS = 8
MAX_TOP_VALUES = 1_000
_SCALE = 2**1074  # every float is an integer multiple of 2**-1074: sums stay exact integers
_MISSING = object()


# -- reading metadata ---------------------------------------------------------------------------


def lookup(metadata: Any, path: str) -> Any:
    """The value at a dotted path (objects only, as the filter language walks), or _MISSING."""
    current = metadata
    for key in path.split("."):
        if not isinstance(current, dict) or key not in current:  # decoded JSON: dicts (typing's Mapping is slow here)
            return _MISSING
        current = current[key]
    return current


def values_of(metadata: Any, path: str) -> list[Any]:
    raw = lookup(metadata, path)
    if raw is _MISSING or raw is None:
        return []
    return list(raw) if isinstance(raw, list) else [raw]


def exists(metadata: Any, path: str) -> bool:
    raw = lookup(metadata, path)
    return raw is not _MISSING and raw is not None and raw != []


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def countable(value: Any) -> tuple[int, Any] | None:
    """A top-value / group key: (type rank, value) for booleans, integers and strings."""
    if isinstance(value, bool):
        return (0, value)
    if isinstance(value, int):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return None


def top_level_keys(paths: Iterable[str], node: FilterNode | None = None) -> list[str]:
    """The metadata keys a computation reads: the first segment of each path and filter field."""
    keys = {p.split(".", 1)[0] for p in paths}
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, (And, Or)):
            stack.extend(current.items)
        elif isinstance(current, Not):
            stack.append(current.item)
        else:
            keys.add(current.field.split(".", 1)[0])
    return sorted(keys)


def check_fields(fields: Sequence[str], where: str, most: int) -> list[str]:
    """Field names checked like filter fields, duplicates dropped (first kept)."""
    if len(fields) > most:
        raise BadInput(f"{where}: at most {most} fields, got {len(fields)}", field=where)
    out: list[str] = []
    for i, name in enumerate(fields):
        check_field(name, f"{where}[{i}]")
        if name not in out:
            out.append(name)
    return out


# -- aggregates ---------------------------------------------------------------------------------


@dataclass
class FieldSummary:
    field: str
    count: int
    min: Any
    max: Any
    mean: float | None
    sum: float | None
    top: list[tuple[Any, int]]  # (value, documents), most frequent first


@dataclass
class FieldAccumulator:
    field: str
    documents: int = 0
    numbers: int = 0
    int_sum: int = 0  # exact sum of the integer values
    scaled_sum: int = 0  # exact sum of the float values times _SCALE
    num_min: Any = None
    num_max: Any = None
    strings: int = 0
    all_datetimes: bool = True
    dt_min: datetime | None = None
    dt_max: datetime | None = None
    top: Counter = field(default_factory=Counter)

    def add(self, metadata: Any) -> None:
        raw = lookup(metadata, self.field)
        if raw is _MISSING or raw is None or raw == []:
            return
        self.documents += 1
        values = raw if isinstance(raw, list) else [raw]
        seen: set[tuple[int, Any]] = set()
        for value in values:
            if is_number(value):
                self.numbers += 1
                if isinstance(value, int):
                    self.int_sum += value
                else:
                    self.scaled_sum += _scaled(value)
                if self.num_min is None or value < self.num_min:
                    self.num_min = value
                if self.num_max is None or value > self.num_max:
                    self.num_max = value
            elif isinstance(value, str):
                self.strings += 1
                if self.all_datetimes:
                    when = parse_payload_datetime(value)
                    if when is None:
                        self.all_datetimes = False
                    else:
                        if self.dt_min is None or when < self.dt_min:
                            self.dt_min = when
                        if self.dt_max is None or when > self.dt_max:
                            self.dt_max = when
            key = countable(value)
            if key is not None and key not in seen:
                seen.add(key)
                self.top[key] += 1

    def summary(self) -> FieldSummary:
        low: Any = None
        high: Any = None
        total: float | None = None
        mean: float | None = None
        if self.numbers:
            low, high = self.num_min, self.num_max
            exact = self.int_sum + Fraction(self.scaled_sum, _SCALE)
            total, mean = float(exact), float(exact / self.numbers)
        elif self.strings and self.all_datetimes and self.dt_min is not None and self.dt_max is not None:
            low, high = self.dt_min.isoformat(), self.dt_max.isoformat()
        return FieldSummary(self.field, self.documents, low, high, mean, total, ranked(self.top))


def _scaled(value: float) -> int:
    numerator, denominator = value.as_integer_ratio()  # denominator: a power of two <= 2**1074
    return numerator * (_SCALE // denominator)


def ranked(counts: Counter) -> list[tuple[Any, int]]:
    """(value, count), most frequent first, ties by (type rank, value)."""
    return [(key[1], n) for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


@dataclass
class Aggregation:
    """Documents under a filter: their count, field stats, and (with group_by) the same per group.
    `add_page` runs in a scan thread, one page at a time."""

    node: FilterNode | None
    fields: list[str]
    group_by: str | None = None
    count: int = 0
    scanned: int = 0
    stats: dict[str, FieldAccumulator] = field(default_factory=dict)
    groups: dict[tuple[int, Any], "Aggregation"] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats = {f: FieldAccumulator(f) for f in self.fields}

    def add_page(self, batch: Sequence[tuple[str, Any]]) -> None:
        for _doc_id, metadata in batch:
            self.scanned += 1
            if self.node is None or matches(self.node, metadata or {}):
                self._add(metadata)

    def _add(self, metadata: Any) -> None:
        self.count += 1
        for acc in self.stats.values():
            acc.add(metadata)
        if self.group_by is None:
            return
        keys = {k for k in (countable(v) for v in values_of(metadata, self.group_by)) if k is not None}
        for key in keys:
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = Aggregation(None, self.fields)
            group._add(metadata)

    def summaries(self) -> list[FieldSummary]:
        return [self.stats[f].summary() for f in self.fields]

    def ranked_groups(self) -> list[tuple[Any, "Aggregation"]]:
        order = sorted(self.groups.items(), key=lambda kv: (-kv[1].count, kv[0]))
        return [(key[1], group) for key, group in order]


# -- sorted listings ----------------------------------------------------------------------------

KINDS = ("number", "datetime", "string", "boolean")
_OF_KIND = {"number": is_number, "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool)}


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool = False


def check_sort(sort: Sequence[SortKey]) -> list[SortKey]:
    if len(sort) > MAX_SORT_FIELDS:
        raise BadInput(f"sort: at most {MAX_SORT_FIELDS} fields, got {len(sort)}", field="sort")
    seen: set[str] = set()
    for i, key in enumerate(sort):
        check_field(key.field, f"sort[{i}].field")
        if key.field in seen:
            raise BadInput(f"sort[{i}].field: {key.field!r} is already sorted on", field="sort")
        seen.add(key.field)
    return list(sort)


def sort_kinds(sort: Sequence[SortKey], rows: Sequence[tuple[str, Any]]) -> list[str]:
    """The kind each sort field holds in `rows` (id, metadata); BadInput for a list, an object,
    kinds mixed in one field, or a field no row has."""
    kinds: list[str] = []
    for key in sort:
        seen: set[str] = set()
        all_dates = True
        for doc_id, metadata in rows:
            value = lookup(metadata, key.field)
            if value is _MISSING or value is None:
                continue
            if isinstance(value, (list, Mapping)):
                kind = "a list" if isinstance(value, list) else "an object"
                raise BadInput(
                    f"sort: field {key.field!r} holds {kind} in document {doc_id!r}; "
                    "a sort field needs one number, string, boolean or datetime per document",
                    field="sort",
                )
            if isinstance(value, bool):
                seen.add("boolean")
            elif is_number(value):
                seen.add("number")
            else:
                seen.add("string")
                if all_dates and parse_payload_datetime(value) is None:
                    all_dates = False
        if not seen:
            if rows:
                raise BadInput(f"sort: no document here has the field {key.field!r}", field="sort")
            kinds.append("string")
            continue
        if len(seen) > 1:
            raise BadInput(
                f"sort: field {key.field!r} mixes {' and '.join(sorted(seen))} values; "
                "filter to one kind (e.g. exists plus a range) or sort on another field",
                field="sort",
            )
        kind = seen.pop()
        kinds.append("datetime" if kind == "string" and all_dates else kind)
    return kinds


def sort_value(metadata: Any, key: SortKey, kind: str) -> Any:
    """The comparable value of one sort field (None: missing or null)."""
    value = lookup(metadata, key.field)
    if value is _MISSING or value is None:
        return None
    return parse_payload_datetime(value) if kind == "datetime" else value


def compare(a: tuple[list[Any], str], b: tuple[list[Any], str], sort: Sequence[SortKey]) -> int:
    """Order of two (sort values, id): missing last in either order, ties by id ascending."""
    for key, x, y in zip(sort, a[0], b[0]):
        if x is None or y is None:
            if x is None and y is None:
                continue
            return 1 if x is None else -1
        if x != y:
            less = x < y
            return (1 if less else -1) if key.descending else (-1 if less else 1)
    return (a[1] > b[1]) - (a[1] < b[1])


def page_after(
    entries: Sequence[tuple[list[Any], str]],
    sort: Sequence[SortKey],
    after: tuple[list[Any], str] | None,
    first: int,
) -> list[tuple[list[Any], str]]:
    """The first `first` entries (sort values, id) in order strictly after `after`."""
    import heapq

    cmp = functools.partial(compare, sort=sort)
    later = entries if after is None else [e for e in entries if cmp(e, after) > 0]
    return heapq.nsmallest(first, later, key=functools.cmp_to_key(cmp))


def encode_cursor(sort: Sequence[SortKey], kinds: Sequence[str], entry: tuple[list[Any], str]) -> str:
    keys = [
        None if v is None else (v.isoformat() if isinstance(v, datetime) else v) for v in entry[0]
    ]
    body = {"s": [[k.field, "d" if k.descending else "a", kind] for k, kind in zip(sort, kinds)], "k": keys, "id": entry[1]}
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return "s:" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, sort: Sequence[SortKey], kinds: Sequence[str]) -> tuple[list[Any], str]:
    """The (sort values, id) of a cursor made by encode_cursor for this sort; BadInput otherwise."""
    bad = BadInput("after: not a cursor of this sorted listing (pass the nextCursor of the same sort)", field="after")
    if not cursor.startswith("s:") or len(cursor) > 8_192:
        raise bad
    try:
        padded = cursor[2:] + "=" * (-len(cursor[2:]) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8"))
        spec, keys, doc_id = body["s"], body["k"], body["id"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError):
        raise bad from None
    wanted = [[k.field, "d" if k.descending else "a"] for k in sort]
    if not isinstance(spec, list) or [s[:2] for s in spec if isinstance(s, list)] != wanted or not isinstance(doc_id, str):
        raise bad
    if not isinstance(keys, list) or len(keys) != len(sort):
        raise bad
    values: list[Any] = []
    for (_f, _o, was), now, value in zip(spec, kinds, keys):
        if value is not None and was != now:
            raise BadInput(
                "after: the sort fields' values changed kind since this cursor was made; start from the first page",
                field="after",
            )
        if value is not None and now == "datetime":
            value = parse_payload_datetime(value) if isinstance(value, str) else None
            if value is None:
                raise bad
        elif value is not None and not _OF_KIND[now](value):
            raise bad
        values.append(value)
    return values, doc_id
