"""Every string argument is storable before any resolver runs (BAD_INPUT naming the argument;
run by app/graphql/operation_rules.py).

Walks the arguments of every field of the document, literals and variables alike, so a NUL or
an unpaired surrogate in a name, an id, a cursor or a filter never reaches PostgreSQL, Redis or
Qdrant. Lists that a service checks item by item are left to it, so one bad item fails alone
(ingest reports per-document errors) and nothing is scanned twice.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    ListValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    StringValueNode,
    VariableNode,
)

from app.validation import MAX_NAME_CHARS, check_string, check_value

# (field, argument) pairs whose items the service validates itself (app/validation.py too).
ITEMS_VALIDATED_BY_SERVICE = {("ingest", "documents"), ("embed", "texts")}
# Identifiers: short by nature. Every other string argument may be as long as a text.
IDENTIFIER_ARGUMENTS = {"name", "collection", "id", "ids", "after", "model", "field", "indexedFields"}


def check_document(document: Any, variables: dict[str, Any], max_text_chars: int) -> None:
    for definition in document.definitions:
        if isinstance(definition, (OperationDefinitionNode, FragmentDefinitionNode)):
            _check_selections(definition.selection_set, variables, max_text_chars)


def _check_selections(selection_set: Any, variables: dict[str, Any], max_text_chars: int) -> None:
    for selection in getattr(selection_set, "selections", None) or ():
        if isinstance(selection, FieldNode):
            field = selection.name.value
            for argument in selection.arguments or ():
                name = argument.name.value
                if (field, name) in ITEMS_VALIDATED_BY_SERVICE:
                    continue
                limit = MAX_NAME_CHARS if name in IDENTIFIER_ARGUMENTS else max_text_chars
                _check_node(argument.value, name, name, variables, limit)
        _check_selections(getattr(selection, "selection_set", None), variables, max_text_chars)


def _check_node(node: Any, what: str, argument: str, variables: dict[str, Any], limit: int) -> None:
    if isinstance(node, StringValueNode):
        check_string(node.value, what, limit, argument)
    elif isinstance(node, VariableNode):
        check_value(variables.get(node.name.value), what, limit, argument)
    elif isinstance(node, ListValueNode):
        for index, item in enumerate(node.values):
            _check_node(item, f"{what}[{index}]", argument, variables, limit)
    elif isinstance(node, ObjectValueNode):
        for item in node.fields:
            _check_node(item.value, f"{what}.{item.name.value}", argument, variables, limit)
