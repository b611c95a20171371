"""Models and health as a client sees them: the access checks in front of the ModelManager and
HealthService (which the server also uses for itself, e.g. /readyz)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from app.domain.access import Principal, Scope
from app.services.audit import audit


class ModelCatalog:
    def __init__(self, settings: Any, models: Any, health: Any, replicas: Any) -> None:
        self.settings = settings
        self.models = models  # app.services.models.ModelManager
        self.health_service = health  # app.services.health.HealthService
        self.cluster = replicas  # app.services.replicas.ClusterView

    def replicas_of(self, name: str) -> list[Any]:
        """Every live replica's state of `name` (this one included); READ is checked by the caller's
        statuses()/status() call for the same model."""
        return self.cluster.replicas(name)

    @property
    def effective_default(self) -> str:
        return self.models.effective_default

    def statuses(self, principal: Principal) -> list[Any]:
        principal.require(Scope.READ)
        return list(self.models.statuses())

    def status(self, name: str, principal: Principal) -> Any | None:
        principal.require(Scope.READ)
        return self.models.status(name)

    def download(self, name: str, principal: Principal) -> Any:
        principal.require(Scope.ADMIN)
        status = self.models.download(name)
        audit(principal, "started download of", name)
        return status

    async def health(self, principal: Principal) -> Any:
        principal.require(Scope.READ)
        return await self.health_service.check()

    @asynccontextmanager
    async def progress(self, model: str | None, principal: Principal) -> AsyncIterator[tuple[list[Any], Any]]:
        """The current state on every live replica (as events, to send first) and the live events after them."""
        principal.require(Scope.READ)
        if model is not None:
            self.settings.model(model)  # NOT_FOUND for an unknown model
        # Subscribe before reading the snapshot so no event falls between the two.
        names = [model] if model is not None else list(self.settings.models)
        async with self.models.bus.subscribe(model) as events:
            snapshot = [status.as_event() for name in names for status in self.cluster.replicas(name)]
            yield snapshot, events
