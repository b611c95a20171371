"""Per-request GraphQL context: the app's services, the caller, fresh DataLoaders and the scan budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from app.domain.access import ANONYMOUS, Principal
from app.domain.scans import ScanBudget
from app.errors import CitadelError
from app.graphql.loaders import count_loader, document_loader
from app.services.container import Services


@dataclass
class Context:
    request: Request | WebSocket
    response: Any
    services: Services
    # Resolved at the edge (app/web/auth.py); on a WebSocket again at connection_init.
    principal: Principal = ANONYMOUS
    # Why the key could not be checked (e.g. PostgreSQL down): the operation fails with it.
    auth_error: CitadelError | None = None
    connection_params: Any = None
    # A WebSocket's key, kept (in memory only) so each operation re-checks it: a key revoked
    # while the connection is open cannot start anything new.
    ws_secret: str | None = field(default=None, repr=False)

    # A new loader per operation: batching and caching never leak across requests or callers.
    # Made on first use: most operations (embed, search) never load a document by id.
    @cached_property
    def document_loader(self) -> DataLoader:
        return document_loader(self.services.documents, lambda: self.principal)

    @cached_property
    def count_loader(self) -> DataLoader:
        return count_loader(self.services.documents, lambda: self.principal, lambda: self.scan_budget)

    # What the operation may still read by scanning (facets outside indexedFields, a tenant's
    # counts and pages): every alias draws from it, so a document cannot multiply its scans.
    @cached_property
    def scan_budget(self) -> ScanBudget:
        return ScanBudget(self.services.settings.limits.max_scan_points)

    def reset_loaders(self) -> None:
        """Fresh per-operation state (loaders and the scan budget), also on a long-lived WebSocket."""
        self.__dict__.pop("document_loader", None)
        self.__dict__.pop("count_loader", None)
        self.__dict__.pop("scan_budget", None)
