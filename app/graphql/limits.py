"""How much work an operation asks for, counted before any is done (app/graphql/operation_rules.py refuses too much)."""

from __future__ import annotations

from graphql import ListValueNode

from app.graphql.walk import Given, OperationWalk

# Arguments whose list length is the real work of a request.
COSTLY_LIST_ARGUMENTS = {("embed", "texts"), ("ingest", "documents")}


def count_costly_items(walk: OperationWalk) -> int:
    """Texts and documents in all, each field counted as often as it runs (aliases, fragments)."""
    total = 0
    for field, times in walk.fields():
        for argument in field.arguments or ():
            if (field.name.value, argument.name.value) in COSTLY_LIST_ARGUMENTS:
                total += times * _list_length(walk.resolve(argument.value))
    return total


def _list_length(value: object) -> int:
    # A single value where a list is expected is coerced to a list of one.
    if isinstance(value, ListValueNode):
        return len(value.values)
    if isinstance(value, Given):
        return len(value.value) if isinstance(value.value, list) else 1
    return 1
