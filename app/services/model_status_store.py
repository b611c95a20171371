"""Saving each model's last state (PostgreSQL in the app) in the background, coalescing bursts, so a
slow database slows no download down."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger

from app.domain.models import ModelStatus
from app.tasks import cancel_and_wait

Persist = Callable[[ModelStatus], Awaitable[None]]


class StatusPersister:
    """Saves the latest status of each model in the background, coalescing bursts."""

    def __init__(self, persist: Persist | None) -> None:
        self._persist = persist
        self._pending: dict[str, ModelStatus] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def submit(self, status: ModelStatus) -> None:
        if self._persist is None:
            return
        self._pending[status.name] = status.copy()
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="citadel-model-status-persist")

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._drain()

    async def _drain(self) -> None:
        assert self._persist is not None
        while self._pending:
            _, status = self._pending.popitem()
            try:
                await self._persist(status)
            except Exception as error:  # the status row is a convenience; downloads go on without it
                logger.warning("saving the state of {} failed: {}", status.name, error)

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._persist is not None:
            await self._drain()
