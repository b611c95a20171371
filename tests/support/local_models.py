"""ReadyModels for tests whose models are all on disk already (package or path sources): the
service stack without the download manager (app/services/models.py), which serves hub models."""

from __future__ import annotations

import asyncio

from app.domain.models import ModelSpec
from app.inference.pool import ModelPool
from app.inference.sources import local_model_dir
from app.settings import Settings


class LocalModels:
    """ReadyModels for models whose files are already here (package or path sources): loads
    each into the pool on first use. The download manager replaces it for hub models."""

    def __init__(self, settings: Settings, pool: ModelPool) -> None:
        self.settings = settings
        self.pool = pool
        self._ready: set[str] = set()
        self._lock = asyncio.Lock()

    async def ready_spec(self, name: str | None, wait: bool = False, *, may_download: bool = True) -> ModelSpec:
        spec = self.settings.model(name)  # NotFound for a name outside the catalog; nothing to fetch
        if spec.name not in self._ready:
            async with self._lock:
                if spec.name not in self._ready:
                    model_dir = await asyncio.to_thread(local_model_dir, spec)
                    await self.pool.load(spec, model_dir)
                    self._ready.add(spec.name)
        return spec
