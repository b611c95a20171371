"""The Strawberry schema with its safety extensions."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter

from strawberry.schema.config import StrawberryConfig

from app.graphql.errors import PublicErrors
from app.graphql.limits import TotalTextsLimit
from app.graphql.mutations import Mutation
from app.graphql.queries import Query
from app.graphql.scalars import SCALAR_MAP
from app.graphql.subscriptions import Subscription
from app.settings import LimitSettings


class CitadelSchema(strawberry.Schema):
    def process_errors(self, errors: list[Any], execution_context: Any = None) -> None:
        # PublicErrors logs what matters (unexpected errors, with their traceback); client
        # mistakes are not server errors and would only flood the log.
        return None


def build_schema(limits: LimitSettings | None = None) -> strawberry.Schema:
    limits = limits or LimitSettings()
    return CitadelSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        extensions=[
            PublicErrors,
            lambda: QueryDepthLimiter(max_depth=limits.max_query_depth),
            lambda: MaxAliasesLimiter(max_alias_count=limits.max_aliases),
            lambda: MaxTokensLimiter(max_token_count=limits.max_query_tokens),
            lambda: TotalTextsLimit(max_total=max(limits.max_texts_per_request, limits.max_documents_per_ingest)),
        ],
    )


def schema_sdl() -> str:
    return build_schema().as_str() + "\n"
