"""Custom scalars of the API contract: JSON, and Long for integers beyond 32 bits."""

from __future__ import annotations

from typing import Any, NewType

import strawberry

from app.errors import BadInput

JSON = NewType("JSON", object)
Long = NewType("Long", int)


def _parse_long(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadInput(f"Long expects an integer, got {value!r}")
    try:
        as_int = int(value)
    except ValueError:
        raise BadInput(f"Long expects an integer, got {value!r}") from None
    if isinstance(value, float) and value != as_int:
        raise BadInput(f"Long expects an integer, got {value!r}")
    return as_int


SCALAR_MAP = {
    JSON: strawberry.scalar(
        name="JSON", serialize=lambda v: v, parse_value=lambda v: v, description="Arbitrary JSON value"
    ),
    Long: strawberry.scalar(
        name="Long",
        serialize=int,
        parse_value=_parse_long,
        description="A 64-bit integer, serialised as a JSON number (byte counts exceed 2^31).",
    ),
}
