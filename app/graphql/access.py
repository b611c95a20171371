"""Which documents ask for the schema: introspection is for admins unless turned on for all.

The operation-level gate (key, introspection, rate limit) is OperationRules.admit
(app/graphql/operation_rules.py); the per-field checks (scopes, grants, tenants) are the
services' (app/domain/access.py).
"""

from __future__ import annotations

from graphql import BREAK, FieldNode, Visitor, visit

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
