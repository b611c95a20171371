"""Which operation of a document runs: the spec's rule, not "the first one"."""

from __future__ import annotations

from typing import Iterator

from graphql import OperationDefinitionNode
from graphql.error import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionResult


class OperationNameRequired(SchemaExtension):
    """A document with several operations must say which one to run (GraphQL spec, GetOperation)."""

    def on_execute(self) -> Iterator[None]:
        ctx = self.execution_context
        document = ctx.graphql_document
        if ctx.result is None and document is not None and ctx._provided_operation_name is None:
            operations = sum(isinstance(d, OperationDefinitionNode) for d in document.definitions)
            if operations > 1:
                message = f"the document has {operations} operations: operationName must name the one to run"
                ctx.result = ExecutionResult(data=None, errors=[GraphQLError(message, extensions={"code": "BAD_INPUT"})])
        yield
