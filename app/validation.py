"""What every client string (and vector) must be before it reaches PostgreSQL, Redis or Qdrant:
one validator per concept (a storable string, a text, a list of texts, a name, a JSON value, a
vector).

PostgreSQL `text`/`jsonb` refuse NUL and cannot encode an unpaired surrogate; the cache hashes
UTF-8 bytes. Used by the typed requests (app/requests.py) and by the GraphQL edge's check of
every other string argument, so every entry point refuses the same things with BAD_INPUT naming
the argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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


def check_string(
    value: str, what: str, max_chars: int | None = None, argument: str | None = None, **extensions: Any
) -> str:
    """`what` names the value in the message (`texts[3]`); `argument` is the argument it is part of;
    `extensions` go into the error as they are (`index`, `param`)."""
    argument = argument or what
    problem = string_problem(value)
    if problem is not None:
        raise BadInput(f"{what} {problem}", argument=argument, **extensions)
    if max_chars is not None and len(value) > max_chars:
        raise BadInput(
            f"{what} has {len(value)} characters; at most {max_chars} are allowed",
            argument=argument, limit=max_chars, **extensions,
        )  # fmt: skip
    return value


def check_text(value: Any, what: str, max_chars: int, argument: str | None = None, blank: bool = False, **extensions: Any) -> str:
    """A text to embed, search for, score or store: a string, storable, at most `max_chars`, and
    not blank unless `blank` (a rerank candidate may be empty; a query or a document may not)."""
    argument = argument or what
    if not isinstance(value, str):
        raise BadInput(f"{what} is not a string", argument=argument, **extensions)
    if not blank and not value.strip():
        raise BadInput(f"{what} is blank (empty or only whitespace)", argument=argument, **extensions)
    return check_string(value, what, max_chars, argument, **extensions)


def check_texts(
    values: Any, argument: str, item: str, most: int, max_chars: int, max_total: int, blank: bool = False,
    already: int = 0, most_setting: str | None = None, **extensions: Any,
) -> tuple[str, ...]:
    """A request's list of texts (embed's texts, rerank's documents): 1 to `most` of them (the
    setting `most_setting`, named in the error), each a text (check_text, its error naming its
    index), at most `max_total` characters in all (`already`: characters the request holds
    besides, such as rerank's query)."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise BadInput(f"{argument} must be a list of strings", argument=argument, **extensions)
    if not values:
        raise BadInput(f"{argument} must not be empty", argument=argument, **extensions)
    if len(values) > most:
        setting = f" ({most_setting}): send the rest in another request" if most_setting else ""
        raise BadInput(
            f"{len(values)} {argument} in one request; at most {most} are allowed{setting}",
            argument=argument, limit=most, **extensions,
        )  # fmt: skip
    total = already
    for index, value in enumerate(values):
        check_text(value, f"{item} {index}", max_chars, argument, blank, index=index, **extensions)
        total += len(value)
        if total > max_total:
            raise BadInput(
                f"the request exceeds {max_total} characters in total at {item} {index}",
                argument=argument, index=index, limit=max_total, **extensions,
            )  # fmt: skip
    return tuple(values)


def check_count(value: Any, what: str, most: int, least: int = 1) -> int:
    """A number of things a client asks for (a limit, groups, candidates): an integer from `least`
    to `most`; the error names the argument (`field`)."""
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise BadInput(f"{what} must be between {least} and {most}, got {value!r}", field=what)
    return value


def check_name(value: Any, what: str) -> str:
    """An identifier a client names (a collection, a model, a document id): a short storable string."""
    if not isinstance(value, str):
        raise BadInput(f"{what} must be a string", argument=what)
    return check_string(value, what, MAX_NAME_CHARS)


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


def check_vector(values: Any, dimensions: int | None, what: str = "vector") -> np.ndarray:
    """A client's vector (a document's own embedding, or a search's query vector) as float32: a list
    of finite numbers, or an array already decoded, with exactly `dimensions` entries (None: any),
    not all zero (it has no direction: cosine cannot use it, and no model embeds text as zeros)."""
    if isinstance(values, np.ndarray):
        array = values.astype("<f4", copy=False)
    elif isinstance(values, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        array = np.asarray(values, dtype="<f4")
    else:
        raise BadInput(f"{what} must be a list of numbers")
    if array.ndim != 1:
        raise BadInput(f"{what} must be a list of numbers")
    if dimensions is not None:
        check_dimensions(array, dimensions, what)
    # The norm in float32, as the store normalises: values that overflow it have no usable direction either.
    with np.errstate(over="ignore"):
        norm = float(np.sqrt(np.square(array).sum(dtype=np.float32)))
    if not np.isfinite(array).all() or not math.isfinite(norm):
        raise BadInput(f"{what} must hold finite numbers only (no NaN, infinity or values too large)")
    if not array.any():
        raise BadInput(f"{what} is all zeros: it has no direction to store or search by")
    return array


def check_dimensions(vector: Sequence[float] | np.ndarray, dimensions: int, what: str = "vector", **extensions: Any) -> None:
    """A checked vector (check_vector) against the collection it is for."""
    if len(vector) != dimensions:
        raise BadInput(f"{what} has {len(vector)} dimensions; the collection's model has {dimensions}", **extensions)
