"""Descriptions for the values of enums the GraphQL schema shares with the domain.

The domain's enums (app/domain) stay plain Python; their GraphQL descriptions live beside the
GraphQL types that expose them. Every type, field, argument and enum value of the schema has a
description (tests/unit/test_schema_descriptions.py).
"""

from __future__ import annotations

from typing import Any, TypeVar

import strawberry

E = TypeVar("E")


def described_enum(cls: type[E], *, name: str, description: str, values: dict[str, str]) -> type[E]:
    """strawberry.enum(cls) with a description for each value, named by the member's name."""
    enum_type: Any = strawberry.enum(cls, name=name, description=description)
    definition = enum_type.__strawberry_definition__
    missing = {value.name for value in definition.values} - values.keys()
    unknown = values.keys() - {value.name for value in definition.values}
    if missing or unknown:
        raise ValueError(f"{name}: describe exactly its values (missing {sorted(missing)}, unknown {sorted(unknown)})")
    for value in definition.values:
        value.description = values[value.name]
    return enum_type


# The filter language of `search`, `facets` and tenant keys (README "Search filters").
FILTER_DESCRIPTION = """A JSON filter over document metadata:
filter := {"and": [filter, ...]} | {"or": [filter, ...]} | {"not": filter} | {FIELD: {OP: value, ...}, ...}
(several fields or ops in one object must all hold). OP: eq, ne (a string, integer or boolean);
in, nin (a non-empty list of strings or integers); gt, gte, lt, lte (a number or an ISO-8601
datetime); exists (true: present and not null or []). FIELD is a metadata key; a dotted path
(author.name) reaches nested keys. Types are strict (1 does not match "1"). On a list value,
eq/in/ranges hold when any element does, ne/nin when none equals. A missing field satisfies only
ne, nin and not. Example: {"and": [{"topic": {"in": ["cooking", "baking"]}}, {"year": {"gte": 2020}}]}.
A malformed filter is BAD_INPUT naming the part, e.g. filter.and[1].n: unknown operator 'gtx'."""
