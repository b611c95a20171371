"""The Strawberry schema with its safety extensions."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.extensions import AddValidationRules, MaxTokensLimiter, ParserCache, ValidationCache
from strawberry.extensions.max_aliases import create_validator as max_aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as max_depth_rule
from strawberry.schema.config import StrawberryConfig

from app.graphql.arguments import ArgumentStrings
from app.graphql.errors import PublicErrors, public_error
from app.graphql.limits import TotalTextsLimit
from app.graphql.operations import OperationNameRequired
from app.graphql.mutations import Mutation
from app.graphql.queries import Query
from app.graphql.scalars import SCALAR_MAP
from app.graphql.subscriptions import Subscription
from app.settings import LimitSettings

# Frontends send the same few documents over and over: parsing and validating each once saves
# most of a cached request's CPU (validation alone was ~58% of it).
DOCUMENT_CACHE_SIZE = 1024


class CitadelSchema(strawberry.Schema):
    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        # Errors raised by an extension's parse hook (the parser cache) skip the operation hooks
        # where PublicErrors works, so map them here too; public_error() is idempotent.
        result = await super().execute(*args, **kwargs)
        if getattr(result, "errors", None):
            result.errors = [public_error(error) for error in result.errors]
        return result

    def process_errors(self, errors: list[Any], execution_context: Any = None) -> None:
        # PublicErrors logs what matters (unexpected errors, with their traceback); client
        # mistakes are not server errors and would only flood the log.
        return None


def safety_extensions(limits: LimitSettings) -> list[Any]:
    """Error mapping and cost limits, in the order they must run."""
    # The cost rules are built once: the validation cache is keyed on them, so rules made anew
    # for every request (as QueryDepthLimiter does) would never hit.
    cost_rules = [max_depth_rule(limits.max_query_depth, None, None), max_aliases_rule(limits.max_aliases)]
    max_total_texts = max(limits.max_texts_per_request, limits.max_documents_per_ingest)
    return [
        PublicErrors,
        lambda: AddValidationRules(cost_rules),
        lambda: MaxTokensLimiter(max_token_count=limits.max_query_tokens),
        lambda: ParserCache(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: ValidationCache(maxsize=DOCUMENT_CACHE_SIZE),
        OperationNameRequired,
        # These depend on variables, so they run for every request.
        lambda: TotalTextsLimit(max_total=max_total_texts),
        lambda: ArgumentStrings(max_text_chars=limits.max_text_chars),
    ]


def build_schema(limits: LimitSettings | None = None) -> strawberry.Schema:
    return CitadelSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        extensions=safety_extensions(limits or LimitSettings()),
    )


def schema_sdl() -> str:
    return build_schema().as_str() + "\n"
