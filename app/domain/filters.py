"""The metadata filter language of `search(filter: JSON)`: parser, AST and reference predicate.

    filter := {"and": [filter, ...]} | {"or": [filter, ...]} | {"not": filter}
            | {FIELD: {OP: value, ...}, ...}      # several fields / ops in one object: all hold
    OP     := eq | ne | in | nin | gt | gte | lt | lte | exists

`parse_filter` validates the JSON and returns an immutable AST; every problem is a BadInput
naming the offending part (`filter.and[1].price: unknown operator 'gtx'`). The vector store
adapters translate the AST to Qdrant filters (app.adapters.qdrant_common); the tests' reference
matcher (tests/support/filter_matcher.py) evaluates it in Python with exactly these semantics.

Semantics (those of Qdrant, which the adapters rely on):
- FIELD `a.b` is the metadata key `b` inside the object under `a`. Paths walk objects only: a
  list on the way (`a` = [{"b": 1}]) makes the field missing.
- The values of a field are its value, or the elements of a list value (one level; nested
  lists are never equal to anything). A missing field has no values.
- eq / in / ranges hold when ANY value satisfies them, so a missing field never satisfies them.
  Types are strict: 1 does not equal "1", true, or 1.0 (floats never equal anything).
- ne / nin are the negations of eq / in: they hold when NO value equals, so a missing field, a
  null or an empty list satisfies them, and ["a", "b"] satisfies neither ne "a" nor nin ["a"].
- Ranges: all bounds of one op-object must hold for the SAME value. Numeric bounds see int and
  float values (compared as float64, like Qdrant), never bools or strings. Datetime bounds see
  string values that parse as datetimes (Qdrant's accepted formats; no zone means UTC).
- exists: true holds when the field is present and neither null nor an empty list; false is its
  negation. (A list holding only nulls, [null], is not empty: it exists.)
- not is plain boolean negation of its filter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Union

from app.errors import BadInput

MAX_FILTER_DEPTH = 8  # nesting of and / or / not
MAX_FILTER_CONDITIONS = 64  # operators in the whole filter
MAX_IN_VALUES = 256  # values in one in / nin list
MAX_FIELD_CHARS = 256

# Keys of Qdrant JSON paths that need no quoting; anything else would change the path's meaning.
_FIELD_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_LOGICAL = ("and", "or", "not")
_RANGE_OPS = ("gt", "gte", "lt", "lte")
OPERATORS = ("eq", "ne", "in", "nin", *_RANGE_OPS, "exists")

Scalar = Union[str, int, bool]
Bound = Union[int, float, datetime]


@dataclass(frozen=True)
class Eq:
    field: str
    value: Scalar


@dataclass(frozen=True)
class In:
    field: str
    values: tuple[str, ...] | tuple[int, ...]


@dataclass(frozen=True)
class Range:
    """All given bounds hold for one value. Bounds are all numbers or all aware UTC datetimes."""

    field: str
    gt: Bound | None = None
    gte: Bound | None = None
    lt: Bound | None = None
    lte: Bound | None = None

    @property
    def is_datetime(self) -> bool:
        return any(isinstance(b, datetime) for b in (self.gt, self.gte, self.lt, self.lte))


@dataclass(frozen=True)
class Exists:
    field: str


@dataclass(frozen=True)
class And:
    items: tuple["FilterNode", ...]


@dataclass(frozen=True)
class Or:
    items: tuple["FilterNode", ...]


@dataclass(frozen=True)
class Not:
    item: "FilterNode"


FilterNode = Union[Eq, In, Range, Exists, And, Or, Not]

# ---------------------------------------------------------------------------------------------
# Parsing


def parse_filter(raw: Any) -> FilterNode:
    """Validate the filter JSON (already decoded) and return its AST; BadInput on any problem."""
    parser = _Parser()
    return parser.node(raw, "filter", depth=0)


class _Parser:
    def __init__(self) -> None:
        self.conditions = 0

    def node(self, raw: Any, where: str, depth: int) -> FilterNode:
        if not isinstance(raw, Mapping):
            raise BadInput(f"{where}: expected an object, got {_json_type(raw)}")
        if not raw:
            raise BadInput(f"{where}: empty filter object")
        logical = [k for k in raw if k in _LOGICAL]
        if logical:
            if len(raw) != 1:
                raise BadInput(f"{where}: {logical[0]!r} must be the only key of its object")
            if depth >= MAX_FILTER_DEPTH:
                raise BadInput(f"{where}: filter nested deeper than {MAX_FILTER_DEPTH} levels")
            key = logical[0]
            value = raw[key]
            if key == "not":
                return Not(self.node(value, f"{where}.not", depth + 1))
            if not isinstance(value, list):
                raise BadInput(f"{where}.{key}: expected a list of filters, got {_json_type(value)}")
            if not value:
                raise BadInput(f"{where}.{key}: empty list")
            items = tuple(self.node(v, f"{where}.{key}[{i}]", depth + 1) for i, v in enumerate(value))
            return And(items) if key == "and" else Or(items)
        parts: list[FilterNode] = []
        for field, ops in raw.items():
            parts.extend(self.field(field, ops, f"{where}.{field}"))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def field(self, field: Any, ops: Any, where: str) -> list[FilterNode]:
        check_field(field, where)
        if not isinstance(ops, Mapping):
            raise BadInput(f"{where}: expected an object of operators, got {_json_type(ops)}")
        if not ops:
            raise BadInput(f"{where}: no operators")
        out: list[FilterNode] = []
        bounds: dict[str, Bound] = {}
        for op, value in ops.items():
            at = f"{where}.{op}"
            if op not in OPERATORS:
                raise BadInput(f"{where}: unknown operator {op!r}; expected one of {', '.join(OPERATORS)}")
            self.conditions += 1
            if self.conditions > MAX_FILTER_CONDITIONS:
                raise BadInput(f"{at}: more than {MAX_FILTER_CONDITIONS} conditions in the filter")
            if op in ("eq", "ne"):
                node: FilterNode = Eq(field, _scalar(value, at))
                out.append(node if op == "eq" else Not(node))
            elif op in ("in", "nin"):
                node = In(field, _scalar_list(value, at))
                out.append(node if op == "in" else Not(node))
            elif op == "exists":
                if not isinstance(value, bool):
                    raise BadInput(f"{at}: expected true or false, got {_json_type(value)}")
                out.append(Exists(field) if value else Not(Exists(field)))
            else:
                bounds[op] = _bound(value, at)
        if bounds:
            kinds = {isinstance(b, datetime) for b in bounds.values()}
            if len(kinds) > 1:
                raise BadInput(f"{where}: range bounds mix numbers and datetimes")
            out.append(Range(field, **bounds))
        return out


def check_field(field: Any, where: str) -> None:
    """BadInput unless `field` is a metadata path the filter language (and facets) can address."""
    if not isinstance(field, str) or not field:
        raise BadInput(f"{where}: empty field name")
    if len(field) > MAX_FIELD_CHARS:
        raise BadInput(f"{where[:64]}...: field name longer than {MAX_FIELD_CHARS} characters")
    for segment in field.split("."):
        if not _FIELD_SEGMENT.fullmatch(segment):
            raise BadInput(
                f"{where}: invalid field name; use letters, digits, '_' and '-', with '.' between nested keys"
            )


def _scalar(value: Any, at: str) -> Scalar:
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        return _int64(value, at)
    if isinstance(value, float):
        raise BadInput(f"{at}: floats cannot be matched exactly; use a range (gte/lte)")
    raise BadInput(f"{at}: expected a string, integer or boolean, got {_json_type(value)}")


def _scalar_list(value: Any, at: str) -> tuple[str, ...] | tuple[int, ...]:
    if not isinstance(value, list):
        raise BadInput(f"{at}: expected a list, got {_json_type(value)}")
    if not value:
        raise BadInput(f"{at}: empty list")
    if len(value) > MAX_IN_VALUES:
        raise BadInput(f"{at}: more than {MAX_IN_VALUES} values")
    if all(isinstance(v, str) for v in value):
        return tuple(value)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(_int64(v, f"{at}[{i}]") for i, v in enumerate(value))
    raise BadInput(f"{at}: expected a list of only strings or only integers")


def _int64(value: int, at: str) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise BadInput(f"{at}: integer out of the 64-bit range")
    return value


def _bound(value: Any, at: str) -> Bound:
    if isinstance(value, bool):
        raise BadInput(f"{at}: expected a number or an ISO-8601 datetime, got boolean")
    if isinstance(value, int):
        return _int64(value, at)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadInput(f"{at}: expected a finite number")
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise BadInput(f"{at}: {value[:64]!r} is not a number or an ISO-8601 datetime") from None
        return as_utc(parsed)
    raise BadInput(f"{at}: expected a number or an ISO-8601 datetime, got {_json_type(value)}")


def as_utc(dt: datetime) -> datetime:
    """Qdrant reads a datetime without a zone as UTC; so do the filters and their matcher."""
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# Indexed fields of a collection: "FIELD" or "FIELD:TYPE" (TYPE defaults to keyword).

INDEX_TYPES = ("keyword", "integer", "float", "bool", "datetime")


@dataclass(frozen=True)
class IndexedField:
    field: str
    type: str = "keyword"


def parse_indexed_field(spec: str) -> IndexedField:
    """`topic`, `price:float`, `author.name:keyword`, ...; BadInput when malformed."""
    where = f"indexedFields[{spec[:64]!r}]"
    field, _, kind = spec.partition(":")
    check_field(field, where)
    kind = kind or "keyword"
    if kind not in INDEX_TYPES:
        raise BadInput(f"{where}: unknown index type {kind!r}; expected one of {', '.join(INDEX_TYPES)}")
    return IndexedField(field, kind)
