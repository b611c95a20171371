"""Models and health as a client sees them: the access checks in front of the ModelManager and
HealthService (which the server also uses for itself), and what of their errors each caller may
read (a Disclosure: full for ADMIN; no paths, URLs or addresses for anyone else)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from app.domain.access import Principal, Scope
from app.services.audit import audit
from app.services.health import Disclosure


class ModelCatalog:
    def __init__(self, settings: Any, models: Any, health: Any, replicas: Any) -> None:
        self.settings = settings
        self.models = models  # app.services.models.ModelManager
        self.health_service = health  # app.services.health.HealthService
        self.cluster = replicas  # app.services.replicas.ClusterView
        places = (settings.data_dir, settings.model_cache_dir, settings.hf_home)
        self._directories = tuple(str(p) for p in places if p is not None)

    def disclosure(self, principal: Principal) -> Disclosure:
        """What `principal` may read of errors and dependencies (no scope needed: /readyz uses it)."""
        return Disclosure(principal.is_admin, self._directories)

    def replicas_of(self, name: str, principal: Principal) -> list[Any]:
        """Every live replica's state of `name` (this one included); READ is checked by the caller's
        statuses()/status() call for the same model."""
        shown = self.disclosure(principal)
        return [shown.errors(status) for status in self.cluster.replicas(name)]

    @property
    def effective_default(self) -> str:
        return self.models.effective_default

    def statuses(self, principal: Principal) -> list[Any]:
        principal.require(Scope.READ)
        shown = self.disclosure(principal)
        return [shown.errors(status) for status in self.models.statuses()]

    def status(self, name: str, principal: Principal) -> Any | None:
        principal.require(Scope.READ)
        return self.disclosure(principal).errors(self.models.status(name))

    def download(self, name: str, principal: Principal) -> Any:
        principal.require(Scope.ADMIN)
        status = self.models.download(name)
        audit(principal, "started download of", name)
        return status

    async def health(self, principal: Principal) -> Any:
        principal.require(Scope.READ)
        return self.disclosure(principal).report(await self.health_service.check())

    @asynccontextmanager
    async def progress(self, model: str | None, principal: Principal) -> AsyncIterator[tuple[list[Any], Any]]:
        """The current state on every live replica (as events, to send first) and the live events after them."""
        principal.require(Scope.READ)
        if model is not None:
            self.settings.model(model)  # NOT_FOUND for an unknown model
        # Subscribe before reading the snapshot so no event falls between the two.
        names = [model] if model is not None else list(self.settings.models)
        shown = self.disclosure(principal)
        async with self.models.bus.subscribe(model) as events:
            snapshot = [shown.errors(status.as_event()) for name in names for status in self.cluster.replicas(name)]
            yield snapshot, (events if shown.full else _disclosed(events, shown))


async def _disclosed(events: AsyncIterator[Any], shown: Disclosure) -> AsyncIterator[Any]:
    async for event in events:
        yield shown.errors(event)
