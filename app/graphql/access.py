"""The operation-level gate: a refused key, introspection for non-admins, and the rate limit.

Runs before any resolver of an operation (queries, mutations and each subscription); the
per-field checks (scopes, grants, tenants) are the services' (app/domain/access.py).
"""

from __future__ import annotations

from typing import AsyncIterator

from graphql import BREAK, FieldNode, Visitor, visit
from strawberry.extensions import SchemaExtension

from app.errors import Forbidden, Unauthenticated

INTROSPECTION_FIELDS = frozenset({"__schema", "__type"})


class _IntrospectionFinder(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def enter_field(self, node: FieldNode, *_: object) -> object:
        if node.name.value in INTROSPECTION_FIELDS:
            self.found = True
            return BREAK
        return None


def introspects(document: object) -> bool:
    """Whether a parsed document asks for the schema (`__typename` is not introspection)."""
    finder = _IntrospectionFinder()
    visit(document, finder)  # type: ignore[arg-type]
    return finder.found


class AccessGate(SchemaExtension):
    async def on_execute(self) -> AsyncIterator[None]:
        context = self.execution_context.context
        principal = getattr(context, "principal", None)
        if principal is not None:
            if context.ws_secret is not None and principal.kind != "rejected":
                # Same key, checked again per operation (a cache hit, unless it was revoked).
                principal = context.principal = await context.services.keys.authenticate(context.ws_secret)
            if context.auth_error is not None:
                raise context.auth_error
            if principal.kind == "rejected":
                raise Unauthenticated(principal.reason or "a valid API key is required")
            services = context.services
            document = self.execution_context.graphql_document
            if not services.settings.server.introspection and not principal.is_admin and document is not None:
                if introspects(document):
                    raise Forbidden("introspection is turned off for non-admin keys")
            await services.limiter.check(principal)
            context.reset_loaders()  # fresh per operation, also on a long-lived WebSocket
        yield
