"""Every per-operation rule of the GraphQL endpoint, defined once (OperationRules).

In order: parse (cached, token limit), validate (cached, spec and cost rules), admit (the key,
introspection for non-admins, the rate limit: before any resolver), refuse what depends on the
variables (a missing operationName; then, over one walk of the fields the operation runs,
fragments included (app/graphql/walk.py): too many texts in all, unstorable strings), then map
every error to what clients may see (app/graphql/errors.py). Before all of them, `document`
decides which text runs (persisted queries and trusted documents, app/graphql/persisted.py).

Two callers: CitadelSchema.execute (HTTP queries and mutations) runs the rules and graphql-core
directly, because Strawberry's per-request extension machinery cost more than the rules
themselves (~20% of a cached `embed`); the WebSocket transports go through Strawberry's
stream()/subscribe(), where OperationRulesExtension calls the same methods from its hooks.
"""

from __future__ import annotations

from collections.abc import Iterator, AsyncIterator
from functools import lru_cache
from typing import Any

from graphql import DocumentNode, GraphQLSchema, OperationDefinitionNode, specified_rules
from graphql.error import GraphQLError
from graphql.language.parser import parse
from strawberry.extensions import SchemaExtension
from strawberry.extensions.max_aliases import create_validator as max_aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as max_depth_rule
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionResult

from app.errors import BadInput, Forbidden
from app.graphql.access import introspects
from app.graphql.arguments import check_document
from app.graphql.errors import public_error
from app.graphql.limits import count_costly_items
from app.graphql.persisted import DocumentSource, PersistedQueries, TrustedDocuments
from app.graphql.walk import OperationWalk
from app.settings import LimitSettings
from app.web.auth import require_key

# Frontends send the same few documents over and over: parsing and validating each once saves
# most of a cached request's CPU (validation alone was ~58% of it).
DOCUMENT_CACHE_SIZE = 1024
_cached_parse = lru_cache(maxsize=DOCUMENT_CACHE_SIZE)(parse)
_cached_validate = lru_cache(maxsize=DOCUMENT_CACHE_SIZE)(validate_document)


class OperationRules:
    def __init__(self, limits: LimitSettings) -> None:
        # Built once: the validation cache is keyed on the rules, so rules made anew for every
        # request (as Strawberry's QueryDepthLimiter does) would never hit.
        cost_rules = (max_depth_rule(limits.max_query_depth, None, None), max_aliases_rule(limits.max_aliases))
        self.validation_rules = (*specified_rules, *cost_rules)
        self.max_tokens = limits.max_query_tokens
        self.max_total_texts = max(limits.max_texts_per_request, limits.max_documents_per_ingest)
        self.max_text_chars = limits.max_text_chars
        self._source: tuple[Any, DocumentSource] | None = None

    def document_source(self, services: Any) -> DocumentSource:
        """APQ and trusted documents over this app's Redis and PostgreSQL (made on first use)."""
        if self._source is None or self._source[0] is not services:
            from app.adapters.trusted_documents import TrustedDocumentRepo

            settings = services.settings
            server = settings.server
            persisted = None
            if server.persisted_queries:
                persisted = PersistedQueries(
                    services.redis,
                    settings.redis_key("apq") + ":",
                    server.persisted_query_ttl_seconds,
                    server.persisted_query_max_bytes,
                    settings.cache.timeout_ms / 1000,
                )
            trusted = TrustedDocuments(TrustedDocumentRepo(services.repo.pool), settings.auth.key_cache_seconds)
            self._source = (services, DocumentSource(persisted, trusted, server.trusted_documents == "require", self.parses))
        return self._source[1]

    def parses(self, query: str) -> bool:
        try:
            self.parse(query)
        except GraphQLError:
            return False
        return True

    async def document(self, context: Any, query: str | None, extensions: dict[str, Any] | None) -> str | None:
        """The text an HTTP operation runs: `query`, or the persisted or trusted document its
        extensions name; raises a CitadelError (PersistedQueryNotFound, FORBIDDEN, BAD_INPUT)."""
        services = getattr(context, "services", None)
        if services is None or not (extensions or _trusted_only(services)):
            return query  # the common case: a document sent whole, nothing to look up
        return await self.document_source(services).resolve(context, query, extensions)

    def parse(self, query: str) -> DocumentNode:
        """The document, or GraphQLError (syntax, more than max_query_tokens tokens)."""
        return _cached_parse(query, max_tokens=self.max_tokens)

    def validate(self, schema: GraphQLSchema, document: DocumentNode) -> list[GraphQLError]:
        return _cached_validate(schema, document, self.validation_rules)

    async def admit(self, context: Any, document: DocumentNode | None) -> None:
        """Who may run this operation at all, and how often; raises a CitadelError. Runs for
        every operation, also each one on a long-lived WebSocket."""
        principal = getattr(context, "principal", None)
        if principal is None:  # a schema used without Citadel's context (unit tests)
            return
        if context.ws_secret is not None and principal.kind != "rejected":
            # Same key, checked again per operation (a cache hit, unless it was revoked).
            principal = context.principal = await context.services.keys.authenticate(context.ws_secret)
        require_key(principal, context.auth_error)
        services = context.services
        if not services.settings.server.introspection and not principal.is_admin and document is not None:
            if introspects(document):
                raise Forbidden("introspection is turned off for non-admin keys")
        await services.limiter.check(principal)
        context.reset_loaders()  # fresh per operation, also on a long-lived WebSocket

    def refusal(
        self, document: DocumentNode, variables: dict[str, Any], operation_name: str | None
    ) -> GraphQLError | None:
        """Why this document with these variables must not run, or None."""
        if operation_name is None:
            # GraphQL spec, GetOperation: several operations need a name to pick one.
            operations = sum(isinstance(d, OperationDefinitionNode) for d in document.definitions)
            if operations > 1:
                message = f"the document has {operations} operations: operationName must name the one to run"
                return GraphQLError(message, extensions={"code": "BAD_INPUT"})
        # One walk of what the operation runs, fragments included, for every rule below.
        walk = OperationWalk(document, variables, operation_name)
        # Aliases and fragments can repeat `embed` many times in one document: the sum is capped.
        total = count_costly_items(walk)
        if total > self.max_total_texts:
            message = f"document asks for {total} texts in all; the limit is {self.max_total_texts}"
            return GraphQLError(message, extensions={"code": "BAD_INPUT"})
        try:
            check_document(walk, self.max_text_chars)
        except BadInput as exc:
            return GraphQLError(exc.message, extensions=exc.to_extensions())
        return None


def _trusted_only(services: Any) -> bool:
    return services.settings.server.trusted_documents == "require"


class OperationRulesExtension(SchemaExtension):
    """OperationRules from Strawberry's hooks, for the operations that run through stream()."""

    def __init__(self, rules: OperationRules) -> None:
        self.rules = rules

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is not None and result.errors:
            result.errors = [public_error(e) for e in result.errors]

    def on_parse(self) -> Iterator[None]:
        ctx = self.execution_context
        try:
            ctx.graphql_document = self.rules.parse(ctx.query or "")
        except GraphQLError:
            # Left to Strawberry's own parse (same token limit), which turns the error into a
            # result the transports send; raised from this hook it would escape stream().
            ctx.parse_options["max_tokens"] = self.rules.max_tokens
        yield

    def on_validate(self) -> Iterator[None]:
        ctx = self.execution_context
        ctx.pre_execution_errors = self.rules.validate(ctx.schema._schema, ctx.graphql_document)
        yield

    async def on_execute(self) -> AsyncIterator[None]:
        ctx = self.execution_context
        await self.rules.admit(ctx.context, ctx.graphql_document)
        services = getattr(ctx.context, "services", None)
        if services is not None and _trusted_only(services):  # WebSocket operations send their text
            await self.rules.document_source(services).check_text(ctx.context, ctx.query)
        if ctx.result is None and ctx.graphql_document is not None:
            refusal = self.rules.refusal(ctx.graphql_document, ctx.variables or {}, ctx._provided_operation_name)
            if refusal is not None:
                ctx.result = ExecutionResult(data=None, errors=[refusal])
        yield
