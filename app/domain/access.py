"""Who is calling and what they may do: scopes, collection grants and tenant filters (no I/O).

A Principal is resolved once per request at the edge (app/web/auth.py) and handed to every
service call; the services ask it before they read or write anything.

- Scopes: READ (queries, subscriptions) < WRITE (+ ingest, deleteDocuments) < ADMIN (everything:
  collections, downloads, keys). A key's level is its highest scope.
- Grants: `collections` None means every collection; otherwise only those names.
- Tenant binding: `filter` is ANDed into every read and must hold for every document written.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from app.domain.filter_matcher import holds_for_every_reading, matches
from app.domain.filters import And, FilterNode, parse_filter
from app.errors import Forbidden, Unauthenticated


class Scope(enum.Enum):
    READ = "READ"
    WRITE = "WRITE"
    ADMIN = "ADMIN"

    @property
    def level(self) -> int:
        return _LEVELS[self]


_LEVELS = {Scope.READ: 1, Scope.WRITE: 2, Scope.ADMIN: 3}


def parse_scopes(values: Any) -> frozenset[Scope]:
    try:
        return frozenset(Scope(getattr(v, "value", v)) for v in values)
    except ValueError as exc:
        from app.errors import BadInput

        raise BadInput(f"unknown scope: {exc}; one of READ, WRITE, ADMIN", field="scopes") from None


@dataclass(frozen=True)
class Principal:
    """The caller. `kind`: "key" (a stored key), "env" (CITADEL_AUTH__ADMIN_KEY), "anonymous"
    (no key while keys are not required: full access, as before keys existed), "internal"
    (the server itself: reconciler, tests of one service), or "rejected" (a key was needed or given
    and is not valid: every check fails with UNAUTHENTICATED, `reason` says why)."""

    kind: str
    key_id: str | None = None
    name: str = ""
    prefix: str = ""
    scopes: frozenset[Scope] = frozenset()
    collections: frozenset[str] | None = None
    filter: Any = None  # the tenant filter as given (JSON)
    rate_per_second: float | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    reason: str = ""
    tenant: FilterNode | None = field(default=None, compare=False)
    # Whose share of the model its work takes, when not its key's: a background job is a caller
    # of its own, so the key's interactive requests are served fairly beside it.
    fair_key: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.filter is not None and self.tenant is None:
            object.__setattr__(self, "tenant", parse_filter(self.filter))

    # -- what the caller is ---------------------------------------------------------------

    @property
    def level(self) -> int:
        return max((s.level for s in self.scopes), default=0)

    @property
    def is_admin(self) -> bool:
        return self.kind != "rejected" and self.level >= Scope.ADMIN.level

    @property
    def unrestricted_admin(self) -> bool:
        """ADMIN with no collection list and no tenant filter: may manage keys."""
        return self.is_admin and self.collections is None and self.tenant is None

    @property
    def label(self) -> str:
        """Who, for audit lines: never the secret."""
        return f"{self.key_id or self.kind} ({self.name})" if self.name else str(self.key_id or self.kind)

    # -- checks ---------------------------------------------------------------------------

    def require(self, scope: Scope, collection: str | None = None) -> None:
        """UNAUTHENTICATED for a rejected caller, FORBIDDEN for a missing scope or grant."""
        if self.kind == "rejected":
            raise Unauthenticated(self.reason or "a valid API key is required")
        if self.level < scope.level:
            raise Forbidden(f"this key lacks the {scope.value} scope", scope=scope.value)
        if collection is not None and not self.may_see(collection):
            raise Forbidden(f"collection {collection!r} is not granted to this key", collection=collection)

    def may_see(self, collection: str) -> bool:
        return self.kind != "rejected" and (self.collections is None or collection in self.collections)

    def require_key_admin(self) -> None:
        self.require(Scope.ADMIN)
        if not self.unrestricted_admin:
            # A restricted admin could otherwise mint itself an unrestricted key.
            raise Forbidden("managing keys needs an ADMIN key without collection or filter restrictions")

    def read_filter(self, requested: FilterNode | None) -> FilterNode | None:
        """The request's filter narrowed by the tenant's: never widened by it."""
        if self.tenant is None:
            return requested
        if requested is None:
            return self.tenant
        return And((self.tenant, requested))

    def owns(self, metadata: Mapping[str, Any] | None) -> bool:
        """Whether a document with this metadata is in the caller's tenant's view (as search
        filters see it: a list matches when any element does)."""
        return self.tenant is None or matches(self.tenant, metadata or {})

    def may_write(self, metadata: Mapping[str, Any] | None) -> bool:
        """Whether the caller may write (or overwrite, or delete) a document with this metadata:
        it must match the tenant's filter however it is read, so it can never show up in
        another tenant's view (app.domain.filter_matcher.holds_for_every_reading)."""
        return self.tenant is None or holds_for_every_reading(self.tenant, metadata or {})


ANONYMOUS = Principal(kind="anonymous", name="anonymous", scopes=frozenset({Scope.ADMIN}))
INTERNAL = Principal(kind="internal", name="internal", scopes=frozenset({Scope.ADMIN}))


def rejected(reason: str) -> Principal:
    return Principal(kind="rejected", reason=reason)
