"""Every string argument is storable before any resolver runs (BAD_INPUT naming the argument;
run by app/graphql/operation_rules.py).

Reads the arguments of every field the operation runs (app/graphql/walk.py: through fragments),
literals, variables and variable defaults alike, so a NUL or an unpaired surrogate in a name, an id, a cursor or a filter never reaches PostgreSQL, Redis or
Qdrant. Lists that a typed request checks item by item (app/requests.py) are left to it, so one
bad item fails alone (ingest reports per-document errors) and nothing is scanned twice.
"""

from __future__ import annotations

from typing import Any

from graphql import ListValueNode, ObjectValueNode, StringValueNode

from app.graphql.walk import Given, OperationWalk
from app.validation import MAX_NAME_CHARS, check_string, check_value

# (field, argument) pairs whose items their typed request checks (app/requests.py).
ITEMS_CHECKED_BY_REQUEST = {("ingest", "documents"), ("embed", "texts"), ("rerank", "documents")}
# Identifiers: short by nature. Every other string argument may be as long as a text.
IDENTIFIER_ARGUMENTS = {"name", "collection", "id", "ids", "after", "model", "field", "indexedFields"}


def check_document(walk: OperationWalk, max_text_chars: int) -> None:
    for field, _ in walk.fields():
        for argument in field.arguments or ():
            name = argument.name.value
            if (field.name.value, name) in ITEMS_CHECKED_BY_REQUEST:
                continue
            limit = MAX_NAME_CHARS if name in IDENTIFIER_ARGUMENTS else max_text_chars
            _check_node(argument.value, name, name, walk, limit)


def _check_node(node: Any, what: str, argument: str, walk: OperationWalk, limit: int) -> None:
    node = walk.resolve(node)
    if isinstance(node, Given):
        check_value(node.value, what, limit, argument)
    elif isinstance(node, StringValueNode):
        check_string(node.value, what, limit, argument)
    elif isinstance(node, ListValueNode):
        for index, item in enumerate(node.values):
            _check_node(item, f"{what}[{index}]", argument, walk, limit)
    elif isinstance(node, ObjectValueNode):
        for item in node.fields:
            _check_node(item.value, f"{what}.{item.name.value}", argument, walk, limit)
