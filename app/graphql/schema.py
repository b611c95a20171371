"""The Strawberry schema with its safety extensions."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any, AsyncGenerator

import strawberry
from strawberry.extensions.max_aliases import create_validator as max_aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as max_depth_rule
from strawberry.schema.config import StrawberryConfig

from app.graphql.access import AccessGate
from app.graphql.arguments import ArgumentStrings
from app.graphql.errors import public_error
from app.graphql.execution import CitadelExecutionContext
from app.graphql.operations import OperationNameRequired
from app.graphql.mutations import Mutation
from app.graphql.queries import Query
from app.graphql.request_rules import RequestRules
from app.graphql.scalars import SCALAR_MAP
from app.graphql.subscriptions import Subscription
from app.settings import LimitSettings


class CitadelSchema(strawberry.Schema):
    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        # Errors raised by an extension's parse hook (the parser cache) skip the operation hooks
        # where RequestRules maps errors, so map them here too; public_error() is idempotent.
        result = await super().execute(*args, **kwargs)
        if getattr(result, "errors", None):
            result.errors = [public_error(error) for error in result.errors]
        return result

    async def stream(self, *args: Any, **kwargs: Any) -> Any:
        # Subscriptions (and operations over WebSocket) bypass execute(): map their errors too,
        # e.g. an extension's refusal before the first event.
        return _public_results(await super().stream(*args, **kwargs))

    def process_errors(self, errors: list[Any], execution_context: Any = None) -> None:
        # public_error() logs what matters (unexpected errors, with their traceback); client
        # mistakes are not server errors and would only flood the log.
        return None


async def _public_results(source: Any) -> AsyncGenerator[Any, None]:
    async with aclosing(source):
        async for result in source:
            if getattr(result, "errors", None):
                result.errors = [public_error(error) for error in result.errors]
            yield result


def safety_extensions(limits: LimitSettings) -> list[Any]:
    """Error mapping, cost limits and the document caches: one extension (request_rules.py)."""
    # The cost rules are built once: the validation cache is keyed on them, so rules made anew
    # for every request (as QueryDepthLimiter does) would never hit.
    cost_rules = [max_depth_rule(limits.max_query_depth, None, None), max_aliases_rule(limits.max_aliases)]
    max_total_texts = max(limits.max_texts_per_request, limits.max_documents_per_ingest)
    return [
        lambda: RequestRules(
            cost_rules=cost_rules, max_tokens=limits.max_query_tokens, max_total_texts=max_total_texts
        ),
        OperationNameRequired,
        # Depends on variables, so it runs for every request.
        lambda: ArgumentStrings(max_text_chars=limits.max_text_chars),
        # Who may run it at all, and how often: before any resolver.
        AccessGate,
    ]


def build_schema(limits: LimitSettings | None = None, execution_context_class: type | None = None) -> strawberry.Schema:
    return CitadelSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        extensions=safety_extensions(limits or LimitSettings()),
        execution_context_class=execution_context_class or CitadelExecutionContext,
    )


def schema_sdl() -> str:
    return build_schema().as_str() + "\n"
