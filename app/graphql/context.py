"""Per-request GraphQL context: the app's services plus fresh DataLoaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from app.graphql.loaders import document_loader
from app.services.container import Services


@dataclass
class Context:
    request: Request | WebSocket
    response: Any
    services: Services
    document_loader: DataLoader = field(init=False)

    def __post_init__(self) -> None:
        # A new loader per request: batching and caching never leak across requests.
        self.document_loader = document_loader(self.services.repo)
