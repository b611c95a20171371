"""What every client string must be before it reaches PostgreSQL, Redis or Qdrant.

PostgreSQL `text`/`jsonb` refuse NUL and cannot encode an unpaired surrogate; the cache hashes
UTF-8 bytes. One definition here, used by the GraphQL edge and by services that take lists item
by item (ingest documents, embed texts), so every entry point refuses the same things with
BAD_INPUT naming the argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.errors import BadInput

# Names, ids, cursors, model names: what a client never needs longer.
MAX_NAME_CHARS = 256
# JSON values nested deeper than this are refused (filters, metadata); no real filter comes close.
MAX_JSON_DEPTH = 32


def string_problem(value: str) -> str | None:
    """Why a string cannot be stored as it is, or None."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode (unpaired surrogate)"
    return None


def check_string(value: str, what: str, max_chars: int | None = None, argument: str | None = None) -> str:
    """`what` names the value in the message (`texts[3]`); `argument` is the argument it is part of."""
    argument = argument or what
    problem = string_problem(value)
    if problem is not None:
        raise BadInput(f"{what} {problem}", argument=argument)
    if max_chars is not None and len(value) > max_chars:
        raise BadInput(f"{what} has {len(value)} characters; at most {max_chars}", argument=argument, limit=max_chars)
    return value


def check_value(
    value: Any, what: str, max_chars: int, argument: str | None = None, max_key_chars: int = MAX_NAME_CHARS
) -> None:
    """Every string in a JSON-like value (keys included), iteratively: depth is bounded too."""
    argument = argument or what
    stack: list[tuple[Any, str, int]] = [(value, what, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            check_string(item, path, max_chars, argument)
        elif isinstance(item, Mapping) or isinstance(item, (list, tuple)):
            if depth >= MAX_JSON_DEPTH:
                raise BadInput(f"{path} is nested more than {MAX_JSON_DEPTH} levels deep", argument=argument)
            if isinstance(item, Mapping):
                for key, child in item.items():
                    key = str(key)
                    check_string(key, f"a key of {path}", max_key_chars, argument)
                    stack.append((child, f"{path}.{key}", depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
