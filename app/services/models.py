"""ModelManager: gets every model to READY without ever taking the service down.

One task per model walks the state machine of app.domain.models: verify what is cached (purge
it when broken), download with retries, load, and fall back to the configured fallback when the
default model cannot be had. Every state change and throttled progress tick is published on the
EventBus (labelled with this replica) and the last state is persisted by a background writer.

With a shared model cache (CITADEL_DOWNLOADS__SHARED_CACHE) one replica of the cluster downloads a
model, holding a lock in PostgreSQL that dies with it; the others wait and then load the files
its manifest vouches for. If the holder dies, the next one takes the lock and resumes its partials.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from loguru import logger
from prometheus_client import Counter, Gauge

from app.adapters.events import EventBus
from app.domain.models import BUSY, DownloadEvent, ModelSpec, ModelState, ModelStatus, can_move
from app.downloads.cache import ModelCache
from app.downloads.errors import BrokenModel, DownloadError, OfflineMode
from app.downloads.fetch import fetch_model
from app.downloads.hub import HubClient, RepoSnapshot
from app.errors import DependencyUnavailable, ModelUnavailable
from app.inference.sources import local_model_dir
from app.services.model_progress import ProgressThrottle, Transfer
from app.services.model_status_store import Persist, StatusPersister
from app.settings import Settings
from app.tasks import cancel_and_wait

Loader = Callable[[ModelSpec, Path], Awaitable[object]]  # may return the device (str) it loaded on

MAX_RETRY_AFTER_SECONDS = 300.0  # a server asking for more than this is not worth waiting for
PERSIST_PROGRESS_EVERY_SECONDS = 1.0
SHARED_CACHE_POLL_SECONDS = 1.0  # how often a waiting replica looks whether the holder is done or gone

MODEL_STATE = Gauge("citadel_model_state", "1 for the current state of each model", ["model", "state"])
DOWNLOAD_ATTEMPTS = Counter(
    "citadel_model_download_attempts_total", "Model download attempts by outcome", ["model", "outcome"]
)
DOWNLOAD_BYTES = Counter("citadel_model_download_bytes_total", "Bytes of model files downloaded", ["model"])


class DownloadLock(Protocol):
    """A cluster-wide lock that is released when its holder dies (PostgreSQL advisory locks)."""

    def try_hold(self, key: str) -> AbstractAsyncContextManager[bool]:
        """`async with lock.try_hold(key) as mine:` mine is True while this process holds it."""
        ...


def _now() -> datetime:
    return datetime.now(UTC)


def _state_detail(status: ModelStatus) -> str:
    if status.state is ModelState.FAILED:
        return f"failed after {status.attempts} attempt(s): {status.last_error}"
    if status.state is ModelState.NOT_DOWNLOADED:
        return "is not downloaded"
    progress = f", {status.percent:.0f}%" if status.percent is not None else ""
    return f"is {status.state.value} (attempt {status.attempts}/{status.max_attempts}{progress})"


class ModelManager:
    def __init__(
        self,
        settings: Settings,
        loader: Loader,
        bus: EventBus,
        persist: Persist | None = None,
        *,
        hub: HubClient | None = None,
        cache: ModelCache | None = None,
        lock: DownloadLock | None = None,
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.bus = bus
        self.hub = hub or HubClient.from_settings(settings)
        self.cache = cache or ModelCache(settings.model_cache_dir)
        self.replica = settings.replica
        # Only a shared cache needs the lock: with separate caches every replica downloads its own.
        self._lock = lock if settings.downloads.shared_cache else None
        self._persister = StatusPersister(persist)
        self._throttle = ProgressThrottle(settings.downloads.progress_interval_seconds)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._statuses = {
            name: ModelStatus(
                name=name,
                backend=spec.backend,
                dimensions=spec.dimensions or None,  # rerankers have none
                replica=self.replica,
                max_attempts=settings.downloads.max_attempts,
            )
            for name, spec in settings.models.items()
        }
        self._warned_fallback: str | None = None
        self._last_persist: dict[str, float] = {}

    # -- public API ------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin preparing the default model in the background; never waits for it."""
        for status in self._statuses.values():
            MODEL_STATE.labels(model=status.name, state=status.state.value).set(1)
            self._persister.submit(status)  # the cluster learns this replica's models at once
        if self.settings.load_models_at_startup:
            self._launch(self.settings.default_model)

    def download(self, name: str) -> ModelStatus:
        """Start (or join) preparing `name` and return its status at once (the downloadModel mutation)."""
        self._launch(name)
        return self.status(name)

    async def ensure(self, name: str) -> ModelStatus:
        """Start or join preparing `name` and wait until it is READY or FAILED."""
        task = self._launch(name)
        if task is not None:
            await asyncio.shield(task)
        return self.status(name)

    def status(self, name: str) -> ModelStatus:
        spec = self.settings.model(name)
        return self._statuses[spec.name].copy()

    def statuses(self) -> list[ModelStatus]:
        return [s.copy() for s in self._statuses.values()]

    @property
    def effective_default(self) -> str:
        """The configured default, or its fallback while the default has FAILED."""
        default = self.settings.default_model
        fallback = self.settings.models[default].fallback
        if fallback and self._statuses[default].state is ModelState.FAILED:
            if self._warned_fallback != fallback:
                self._warned_fallback = fallback
                logger.warning(
                    "default model {} is unavailable ({}); using fallback {} as the default",
                    default,
                    self._statuses[default].last_error,
                    fallback,
                )
            return fallback
        self._warned_fallback = None
        return default

    async def ready_spec(
        self, name: str | None = None, wait: bool = False, *, may_download: bool = True
    ) -> ModelSpec:
        """The spec of a READY model, for the embedding service; else ModelUnavailable with progress.

        `None` means the effective default. A model never requested before starts preparing now:
        loaded from the cache, or downloaded where `may_download` (the caller may make the server
        fetch a model: app/services/embedding.py decides) or it is the default model. A FAILED one
        is not retried behind the caller's back (downloadModel does that).
        """
        for _ in range(2):  # once more if, while we waited, the default failed over to its fallback
            spec = self.settings.model(name or self.effective_default)
            status = self._statuses[spec.name]
            if status.state is ModelState.READY:
                return spec
            if status.state is ModelState.NOT_DOWNLOADED and not may_download and await self._needs_fetching(spec):
                raise self.unavailable(spec.name, "is not downloaded; only an ADMIN key may start its download (downloadModel)")
            if status.state is ModelState.NOT_DOWNLOADED or (wait and status.state in BUSY):
                task = self._launch(spec.name)
                if wait and task is not None:
                    await asyncio.shield(task)
                    if self._statuses[spec.name].state is ModelState.READY:
                        return spec
            if not wait or name is not None:
                break
        raise self.unavailable(spec.name)

    async def _needs_fetching(self, spec: ModelSpec) -> bool:
        """Whether preparing this model would fetch it from the hub (the default model never counts:
        the server was told to serve it)."""
        if spec.repo_id is None or spec.name == self.settings.default_model:
            return False
        return not await asyncio.to_thread(self.cache.is_complete, spec)

    def unavailable(self, name: str, detail: str | None = None) -> ModelUnavailable:
        """MODEL_UNAVAILABLE with the model's state and progress; `detail` says why, if not the state."""
        status = self._statuses[name]
        return ModelUnavailable(
            f"model {name} {detail or _state_detail(status)}",
            model=name,
            state=status.state.value,
            attempt=status.attempts,
            maxAttempts=status.max_attempts,
            progress=status.percent,
            bytesDone=status.bytes_done,
            bytesTotal=status.bytes_total,
            lastError=status.last_error,
        )

    async def close(self) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        self._tasks.clear()
        # A download's own failure was already reported as FAILED; closing only needs them gone.
        await cancel_and_wait(*tasks, ignore_errors=True)
        await self.hub.aclose()
        await self._persister.close()

    # -- the state machine -----------------------------------------------------------------

    def _launch(self, name: str) -> asyncio.Task[None] | None:
        spec = self.settings.model(name)
        task = self._tasks.get(spec.name)
        if task is not None and not task.done():
            return task
        if self._statuses[spec.name].state is ModelState.READY:
            return None
        self._move(spec.name, ModelState.QUEUED, attempts=0)
        task = asyncio.create_task(self._prepare(spec), name=f"citadel-prepare-{spec.name}")
        self._tasks[spec.name] = task
        return task

    async def _prepare(self, spec: ModelSpec) -> None:
        try:
            if spec.repo_id:
                await self._prepare_hub_model(spec)
            else:
                await self._prepare_local_model(spec)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug here must cost one model, never the service
            logger.exception("preparing {} failed unexpectedly", spec.name)
            self._fail(spec, DownloadError(f"unexpected error: {error!r}", reason="internal", retryable=False))

    async def _prepare_local_model(self, spec: ModelSpec) -> None:
        try:
            directory = local_model_dir(spec)
        except Exception as error:
            self._fail(
                spec,
                DownloadError(
                    f"cannot locate the files of {spec.name}: {error}", reason="missing_files", retryable=False
                ),
            )
            return
        failure = await self._load(spec, directory, purge_on_failure=False)
        if failure is not None:
            self._fail(spec, failure)

    async def _prepare_hub_model(self, spec: ModelSpec) -> None:
        if self.cache.is_complete(spec):
            if await self._use_cached(spec):
                return
        if self.settings.hf_offline:
            self._fail(
                spec,
                OfflineMode(
                    f"offline mode is on (HF_HUB_OFFLINE) and {spec.name} is not in the model cache "
                    f"{self.cache.model_dir(spec)}; run `citadel models pull {spec.name}` where the hub is reachable"
                ),
            )
            return
        if self._lock is None:
            await self._download(spec)
            return
        await self._download_once_for_the_cluster(spec)

    async def _download_once_for_the_cluster(self, spec: ModelSpec) -> None:
        """Shared cache: download holding the cluster lock, or wait for its holder and use its files."""
        assert self._lock is not None
        key = self.settings.redis_key("model-download", spec.repo_id or spec.name, spec.revision)
        told = False
        while True:
            try:
                async with self._lock.try_hold(key) as mine:
                    if mine:
                        # The holder before us may have finished between our look and our lock.
                        if self.cache.is_complete(spec) and await self._use_cached(spec):
                            return
                        await self._download(spec)
                        return
                why = f"another replica is downloading it into the shared cache {self.cache.root}; waiting"
            except DependencyUnavailable:  # no lock without PostgreSQL, and two writers would clash
                why = "PostgreSQL, which coordinates the shared model cache, is unavailable; waiting"
            if not told:
                told = True
                self._publish(spec.name, why)
            await asyncio.sleep(SHARED_CACHE_POLL_SECONDS)
            if self.cache.is_complete(spec) and await self._use_cached(spec):
                return

    async def _download(self, spec: ModelSpec) -> None:
        max_attempts = self.settings.downloads.max_attempts
        transfer = Transfer()
        for attempt in range(1, max_attempts + 1):
            failure = await self._attempt(spec, attempt, transfer)
            if failure is None:
                DOWNLOAD_ATTEMPTS.labels(model=spec.name, outcome="success").inc()
                return
            DOWNLOAD_ATTEMPTS.labels(model=spec.name, outcome=failure.reason).inc()
            if not failure.retryable or attempt == max_attempts:
                self._fail(spec, failure)
                return
            delay = max(
                self.settings.downloads.retry_delay_seconds, min(failure.retry_after or 0.0, MAX_RETRY_AFTER_SECONDS)
            )
            logger.warning(
                "{} attempt {}/{} failed: {}; retrying in {:g}s", spec.name, attempt, max_attempts, failure, delay
            )
            self._move(
                spec.name,
                ModelState.RETRYING,
                message=f"{failure.reason}: {failure}; retrying in {delay:g}s",
                last_error=str(failure),
                reason=failure.reason,
            )
            await asyncio.sleep(delay)

    async def _use_cached(self, spec: ModelSpec) -> bool:
        """Verify and load a cached model; a broken one is purged (and False returned) for re-download."""
        directory = self.cache.model_dir(spec)
        checking = f"checking cached files in {directory}"
        if self._statuses[spec.name].state is ModelState.VERIFYING:  # a second look (shared cache)
            self._publish(spec.name, checking)
        else:
            self._move(spec.name, ModelState.VERIFYING, message=checking)
        problems = await asyncio.to_thread(self.cache.verify, spec)
        if problems:
            logger.warning("cached {} is broken ({}); purging it and downloading again", spec.name, "; ".join(problems))
            await asyncio.to_thread(self.cache.purge, spec)
            self._publish(spec.name, f"cache broken ({'; '.join(problems)}); purged, fetching again")
            return False
        manifest = self.cache.manifest(spec)
        status = self._statuses[spec.name]
        if manifest is not None:
            status.bytes_done = status.bytes_total = manifest.total_bytes
        failure = await self._load(spec, directory, purge_on_failure=True)
        if failure is not None:
            logger.warning("cached {} does not load ({}); purged, downloading again", spec.name, failure)
            return False
        return True

    async def _attempt(self, spec: ModelSpec, attempt: int, transfer: Transfer) -> DownloadError | None:
        max_attempts = self.settings.downloads.max_attempts
        line = f"Downloading {spec.name}... (Attempt {attempt}/{max_attempts})"
        logger.info(line)
        self._move(spec.name, ModelState.DOWNLOADING, attempts=attempt, message=line)
        try:
            manifest = await fetch_model(
                spec,
                self.cache,
                self.hub,
                min_free_disk_mb=self.settings.downloads.min_free_disk_mb,
                on_snapshot=lambda snapshot: self._on_snapshot(spec.name, transfer, snapshot),
                on_progress=lambda file, done, total: self._on_progress(spec.name, transfer, file, done, total),
            )
        except DownloadError as error:
            return error
        self._move(
            spec.name,
            ModelState.VERIFYING,
            message=f"{len(manifest.files)} files verified (size and hash); manifest written",
            bytes_done=manifest.total_bytes,
            bytes_total=manifest.total_bytes,
        )
        return await self._load(spec, self.cache.model_dir(spec), purge_on_failure=True)

    async def _load(self, spec: ModelSpec, directory: Path, *, purge_on_failure: bool) -> DownloadError | None:
        self._move(spec.name, ModelState.LOADING, message=f"loading from {directory}")
        try:
            device = await self.loader(spec, directory)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if purge_on_failure:
                await asyncio.to_thread(self.cache.purge, spec)
                return BrokenModel(f"{spec.name} does not load from {directory} ({error!r}); cache purged")
            return BrokenModel(f"{spec.name} does not load from {directory} ({error!r})")
        self._move(
            spec.name,
            ModelState.READY,
            message=f"ready from {directory}",
            device=device if isinstance(device, str) else None,
            last_error=None,
            reason=None,
        )
        logger.info("model {} is READY", spec.name)
        if spec.name == self.settings.default_model:
            self._stand_down_fallback(spec)
        return None

    def _fail(self, spec: ModelSpec, error: DownloadError) -> None:
        status = self._statuses[spec.name]
        logger.error("model {} FAILED after {} attempt(s): {}", spec.name, status.attempts, error)
        self._move(
            spec.name, ModelState.FAILED, message=f"{error.reason}: {error}", last_error=str(error), reason=error.reason
        )
        if spec.name == self.settings.default_model and spec.fallback:
            fallback = self._statuses[spec.fallback]
            fallback.fallback_for = spec.name
            logger.warning("default model {} is unavailable; falling back to {}", spec.name, spec.fallback)
            self._publish(spec.fallback, f"standing in for {spec.name}")
            self._launch(spec.fallback)

    def _stand_down_fallback(self, spec: ModelSpec) -> None:
        if spec.fallback and self._statuses[spec.fallback].fallback_for == spec.name:
            self._statuses[spec.fallback].fallback_for = None
            self._publish(spec.fallback, f"no longer standing in for {spec.name}")

    # -- progress and events ---------------------------------------------------------------

    def _on_snapshot(self, name: str, transfer: Transfer, snapshot: RepoSnapshot) -> None:
        transfer.snapshot(snapshot)
        status = self._statuses[name]
        status.bytes_total = snapshot.total_bytes

    def _on_progress(self, name: str, transfer: Transfer, file: str, done: int, total: int | None) -> None:
        DOWNLOAD_BYTES.labels(model=name).inc(transfer.update(file, done))
        status = self._statuses[name]
        status.bytes_done = transfer.done
        final = total is not None and done >= total
        if not self._throttle.allow((name, file), final=final):
            return
        self.bus.publish(
            DownloadEvent(
                model=name,
                replica=self.replica,
                state=status.state,
                attempt=status.attempts,
                max_attempts=status.max_attempts,
                file=file,
                bytes_done=done,
                bytes_total=total,
                percent=round(100.0 * done / total, 2) if total else None,
                bytes_per_second=transfer.rate(file, done),
                model_bytes_done=status.bytes_done,
                model_bytes_total=status.bytes_total,
                device=status.device,
                last_error=status.last_error,
                kind="progress",
            )
        )
        self._persist_progress(status)

    def _persist_progress(self, status: ModelStatus) -> None:
        now = time.monotonic()
        if now - self._last_persist.get(status.name, 0.0) >= PERSIST_PROGRESS_EVERY_SECONDS:
            self._last_persist[status.name] = now
            self._persister.submit(status)

    def _move(self, name: str, state: ModelState, *, message: str | None = None, **changes: object) -> None:
        status = self._statuses[name]
        if not can_move(status.state, state):
            raise RuntimeError(f"illegal model state change for {name}: {status.state.value} -> {state.value}")
        MODEL_STATE.labels(model=name, state=status.state.value).set(0)
        MODEL_STATE.labels(model=name, state=state.value).set(1)
        status.state = state
        for key, value in changes.items():
            setattr(status, key, value)
        self._publish(name, message)

    def _publish(self, name: str, message: str | None) -> None:
        status = self._statuses[name]
        status.updated_at = _now()
        self.bus.publish(status.as_event(message))
        self._persister.submit(status)
