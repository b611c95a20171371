"""How much work a document asks for, counted before any is done (app/graphql/operation_rules.py refuses too much)."""

from __future__ import annotations

from typing import Any

from graphql import FieldNode, ListValueNode, OperationDefinitionNode, VariableNode

# Arguments whose list length is the real work of a request.
COSTLY_LIST_ARGUMENTS = {("embed", "texts"), ("ingest", "documents")}


def count_costly_items(document: Any, variables: dict[str, Any]) -> int:
    total = 0
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            total += _walk(definition.selection_set, variables)
    return total


def _walk(selection_set: Any, variables: dict[str, Any]) -> int:
    total = 0
    for selection in getattr(selection_set, "selections", None) or ():
        if isinstance(selection, FieldNode):
            for argument in selection.arguments or ():
                if (selection.name.value, argument.name.value) in COSTLY_LIST_ARGUMENTS:
                    total += _list_length(argument.value, variables)
        total += _walk(getattr(selection, "selection_set", None), variables)
    return total


def _list_length(node: Any, variables: dict[str, Any]) -> int:
    if isinstance(node, ListValueNode):
        return len(node.values)
    if isinstance(node, VariableNode):
        value = variables.get(node.name.value)
        return len(value) if isinstance(value, list) else 1
    return 1
