"""Every per-request rule of the GraphQL endpoint in one Strawberry extension.

Strawberry runs each extension's hooks through its own context managers for every request; six
small extensions (error mapping, cost rules, token limit, parser and validation caches, the texts
limit) cost ~9% of a cached `embed`. One extension with the same hooks, in the same order, does
the same work once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

from graphql.error import GraphQLError
from graphql.language.parser import parse
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionResult

from app.graphql.errors import public_error
from app.graphql.limits import count_costly_items

# Frontends send the same few documents over and over: parsing and validating each once saves
# most of a cached request's CPU (validation alone was ~58% of it).
DOCUMENT_CACHE_SIZE = 1024
_cached_parse = lru_cache(maxsize=DOCUMENT_CACHE_SIZE)(parse)
_cached_validate = lru_cache(maxsize=DOCUMENT_CACHE_SIZE)(validate_document)


class RequestRules(SchemaExtension):
    def __init__(self, *, cost_rules: Sequence[Any], max_tokens: int, max_total_texts: int) -> None:
        # cost_rules are built once by the caller: the validation cache is keyed on them.
        self.cost_rules = tuple(cost_rules)
        self.max_tokens = max_tokens
        self.max_total_texts = max_total_texts

    def on_operation(self) -> Iterator[None]:
        ctx = self.execution_context
        ctx.parse_options["max_tokens"] = self.max_tokens
        ctx.validation_rules = ctx.validation_rules + self.cost_rules
        yield
        # What clients see of errors (API.md codes, never internals): one place, app/graphql/errors.py.
        result = ctx.result
        if result is not None and result.errors:
            result.errors = [public_error(e) for e in result.errors]

    def on_parse(self) -> Iterator[None]:
        ctx = self.execution_context
        ctx.graphql_document = _cached_parse(ctx.query, **ctx.parse_options)
        yield

    def on_validate(self) -> Iterator[None]:
        ctx = self.execution_context
        ctx.pre_execution_errors = _cached_validate(ctx.schema._schema, ctx.graphql_document, ctx.validation_rules)
        yield

    def on_execute(self) -> Iterator[None]:
        # Aliases can repeat `embed` many times in one document; the sum of texts is capped.
        # Depends on variables, so it runs for every request.
        ctx = self.execution_context
        total = count_costly_items(ctx.graphql_document, ctx.variables or {}) if ctx.graphql_document else 0
        if total > self.max_total_texts:
            ctx.result = ExecutionResult(
                data=None,
                errors=[
                    GraphQLError(
                        f"document asks for {total} texts in all; the limit is {self.max_total_texts}",
                        extensions={"code": "BAD_INPUT"},
                    )
                ],
            )
        yield
