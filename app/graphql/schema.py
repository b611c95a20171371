"""The Strawberry schema, whose HTTP operations run straight on graphql-core under OperationRules."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import aclosing
from typing import Any, AsyncGenerator

import strawberry
from graphql import GraphQLError, execute as graphql_execute
from strawberry.exceptions import MissingQueryError
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES, optimized_is_awaitable
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.utils.operation import get_operation_type

from app.graphql.errors import public_error
from app.graphql.execution import CitadelExecutionContext
from app.graphql.mutations import Mutation
from app.graphql.operation_rules import OperationRules, OperationRulesExtension
from app.graphql.queries import Query
from app.graphql.scalars import SCALAR_MAP
from app.graphql.subscriptions import Subscription
from app.settings import LimitSettings


class CitadelSchema(strawberry.Schema):
    def __init__(self, *args: Any, rules: OperationRules, **kwargs: Any) -> None:
        super().__init__(*args, extensions=[lambda: OperationRulesExtension(rules)], **kwargs)
        self.rules = rules

    async def execute(  # type: ignore[override]
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Strawberry's execute() without its extension runner: the same steps and exceptions
        (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError for the view
        to answer with 400), with OperationRules in place of the extension hooks."""
        if not query:
            raise MissingQueryError
        rules = self.rules
        try:
            document = rules.parse(query)
        except GraphQLError as error:
            return _failed([error])
        try:
            operation_type = get_operation_type(document, operation_name)
        except RuntimeError as error:
            raise CannotGetOperationTypeError(operation_name) from error
        if operation_type not in (allowed_operation_types or DEFAULT_ALLOWED_OPERATION_TYPES):
            raise InvalidOperationTypeError(operation_type)
        if errors := rules.validate(self._schema, document):
            return _failed(errors)
        try:
            await rules.admit(context_value, document)
        except Exception as exc:  # noqa: BLE001 - a CitadelError (or a bug): mapped to its public code
            return _failed([GraphQLError(str(exc), original_error=exc)])
        if refusal := rules.refusal(document, variable_values or {}, operation_name):
            return _failed([refusal])
        result = graphql_execute(
            self._schema,
            document,
            root_value=root_value,
            context_value=context_value,
            variable_values=variable_values,
            operation_name=operation_name,
            executor_class=self.execution_context_class,
            is_awaitable=optimized_is_awaitable,
            operation_extensions=operation_extensions,
        )
        if optimized_is_awaitable(result):
            result = await result
        errors = [public_error(error) for error in result.errors] if result.errors else None
        return ExecutionResult(data=result.data, errors=errors)

    async def stream(self, *args: Any, **kwargs: Any) -> Any:
        # Operations over WebSocket run the extension; errors of Strawberry's own steps (a parse
        # error, a refused operation type) skip its operation hook, so they are mapped here.
        return _public_results(await super().stream(*args, **kwargs))

    def process_errors(self, errors: list[Any], execution_context: Any = None) -> None:
        # public_error() logs what matters (unexpected errors, with their traceback); client
        # mistakes are not server errors and would only flood the log.
        return None


def _failed(errors: list[GraphQLError]) -> ExecutionResult:
    return ExecutionResult(data=None, errors=[public_error(error) for error in errors])


async def _public_results(source: Any) -> AsyncGenerator[Any, None]:
    async with aclosing(source):
        async for result in source:
            if getattr(result, "errors", None):
                result.errors = [public_error(error) for error in result.errors]
            yield result


def build_schema(limits: LimitSettings | None = None, execution_context_class: type | None = None) -> strawberry.Schema:
    return CitadelSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        rules=OperationRules(limits or LimitSettings()),
        execution_context_class=execution_context_class or CitadelExecutionContext,
    )


def schema_sdl() -> str:
    return build_schema().as_str() + "\n"
