"""Per-request GraphQL context: the app's services, the caller, and fresh DataLoaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from app.domain.access import ANONYMOUS, Principal
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
    document_loader: DataLoader = field(init=False)
    count_loader: DataLoader = field(init=False)

    def __post_init__(self) -> None:
        self.reset_loaders()

    def reset_loaders(self) -> None:
        # A new loader per request: batching and caching never leak across requests or callers.
        self.document_loader = document_loader(self.services.documents, lambda: self.principal)
        self.count_loader = count_loader(self.services.documents, lambda: self.principal)
