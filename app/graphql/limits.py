"""Refuse documents that are too costly before any work is done (BAD_INPUT)."""

from __future__ import annotations

from typing import Any, Iterator

from graphql import FieldNode, ListValueNode, OperationDefinitionNode, VariableNode
from graphql.error import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionResult

# Arguments whose list length is the real work of a request.
COSTLY_LIST_ARGUMENTS = {("embed", "texts"), ("ingest", "documents")}


class TotalTextsLimit(SchemaExtension):
    """Aliases can repeat `embed` many times in one document; cap the sum of texts."""

    def __init__(self, max_total: int) -> None:
        self.max_total = max_total

    def on_execute(self) -> Iterator[None]:
        ctx = self.execution_context
        total = _count_costly_items(ctx.graphql_document, ctx.variables or {}) if ctx.graphql_document else 0
        if total > self.max_total:
            ctx.result = ExecutionResult(
                data=None,
                errors=[
                    GraphQLError(
                        f"document asks for {total} texts in all; the limit is {self.max_total}",
                        extensions={"code": "BAD_INPUT"},
                    )
                ],
            )
        yield


def _count_costly_items(document: Any, variables: dict[str, Any]) -> int:
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
