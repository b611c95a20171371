"""`citadel models list | pull | verify | purge`: the model cache from the terminal.

`pull` drives the same ModelManager, downloader and cache as the server (retries, resume,
verification, events), with a loader that only checks the files are there: nothing is loaded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from app.adapters.events import EventBus
from app.downloads.cache import ModelCache
from app.domain.models import DownloadEvent, ModelState
from app.domain.models import ModelSpec
from app.settings import Settings

models_app = typer.Typer(help="The model catalog and cache: list, pull, verify, purge.", no_args_is_help=True)


def _console() -> Console:
    """A console sized when the command runs (the terminal, or COLUMNS, then), not at import."""
    return Console()


def _settings() -> Settings:
    return Settings()


def _spec(settings: Settings, name: str) -> ModelSpec:
    from app.errors import NotFound

    try:
        return settings.model(name)
    except NotFound as error:
        _console().print(f"[red]{error.message}[/red]")
        raise typer.Exit(2) from None


def _source(spec: ModelSpec) -> str:
    if spec.repo_id:
        return f"hub {spec.repo_id}@{spec.revision}"
    if spec.package:
        return f"package {spec.package}"
    return f"path {spec.path}"


def _cache_state(cache: ModelCache, spec: ModelSpec) -> str:
    if not spec.repo_id:
        return "bundled" if spec.package else "local"
    manifest = cache.manifest(spec)
    if manifest is not None:
        return f"cached ({manifest.total_bytes / 1e6:.1f} MB)"
    partial = cache.bytes_on_disk(spec)
    return f"partial ({partial / 1e6:.1f} MB)" if partial else "not cached"


@models_app.command("list")
def list_models() -> None:
    """The catalog: each model's source, size and whether it is in the cache."""
    settings = _settings()
    cache = ModelCache(settings.model_cache_dir)
    table = Table(title=f"Models (cache: {cache.root})")
    table.add_column("name", no_wrap=True)  # an identifier to copy: never folded, the other columns give way
    for column in ("backend", "dims", "source", "cache", "role"):
        table.add_column(column, overflow="fold")
    fallbacks = {s.fallback for s in settings.models.values() if s.fallback}
    for spec in settings.models.values():
        role = ", ".join(
            r
            for r, on in (
                ("default", spec.name == settings.default_model),
                ("fallback", spec.name in fallbacks),
                ("reranker" + (", default" if spec.name == settings.default_reranker else ""), spec.is_reranker),
            )
            if on
        )
        dims = "-" if spec.is_reranker else str(spec.dimensions)
        table.add_row(spec.name, spec.backend, dims, _source(spec), _cache_state(cache, spec), role)
    _console().print(table)


async def _files_present(spec: ModelSpec, directory: Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")


class _Bars:
    """Rich progress bars fed by download events: one for the model, one per file."""

    def __init__(self, progress: Progress, model: str) -> None:
        self.progress = progress
        self.model = model
        self.total: TaskID = progress.add_task(model, total=None)
        self.files: dict[str, TaskID] = {}

    def show(self, event: DownloadEvent) -> None:
        if event.kind == "progress" and event.file:
            task = self.files.get(event.file)
            if task is None:
                task = self.files[event.file] = self.progress.add_task(f"  {event.file}", total=event.bytes_total)
            self.progress.update(task, completed=event.bytes_done, total=event.bytes_total)
            self.progress.update(self.total, completed=event.model_bytes_done, total=event.model_bytes_total)
            return
        self.progress.update(self.total, description=f"{self.model} [{event.state.value}]")
        if event.state in (ModelState.RETRYING, ModelState.FAILED) or (
            event.message and "cache broken" in event.message
        ):
            self.progress.console.print(
                f"[yellow]{event.state.value}[/yellow] attempt {event.attempt}/{event.max_attempts}: {event.message}"
            )


async def _pull(settings: Settings, spec: ModelSpec) -> bool:
    from app.services.models import ModelManager

    bus = EventBus()
    manager = ModelManager(settings, _files_present, bus)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=_console(), transient=False) as progress:
            bars = _Bars(progress, spec.name)
            async with bus.subscribe(spec.name) as events:
                job = asyncio.create_task(manager.ensure(spec.name))
                while not job.done():
                    next_event = asyncio.ensure_future(events.__anext__())
                    await asyncio.wait({job, next_event}, return_when=asyncio.FIRST_COMPLETED)
                    if next_event.done():
                        bars.show(next_event.result())
                    else:
                        next_event.cancel()
                while events.pending():
                    bars.show(await events.__anext__())
                status = job.result()
    finally:
        await manager.close()
        await bus.close()
    if status.state is ModelState.READY:
        where = manager.cache.model_dir(spec) if spec.repo_id else "its package"
        _console().print(f"[green]{spec.name} is ready[/green] in {where}")
        return True
    _console().print(f"[red]{spec.name} FAILED after {status.attempts} attempt(s):[/red] {status.last_error}")
    return False


@models_app.command()
def pull(name: str = typer.Argument(..., help="Catalog name, e.g. BAAI/bge-small-en-v1.5.")) -> None:
    """Download a model into the cache (resuming, verifying, retrying) with progress bars."""
    settings = _settings()
    if not asyncio.run(_pull(settings, _spec(settings, name))):
        raise typer.Exit(1)


@models_app.command()
def verify(name: str | None = typer.Argument(None, help="One model; all cached hub models when omitted.")) -> None:
    """Check cached files against the manifest (presence, size, sha256); non-zero exit on problems."""
    settings = _settings()
    cache = ModelCache(settings.model_cache_dir)
    specs = (
        [_spec(settings, name)]
        if name
        else [s for s in settings.models.values() if s.repo_id and cache.bytes_on_disk(s)]
    )
    if not specs:
        _console().print(f"no downloaded models in {cache.root}")
        return
    broken = 0
    for spec in specs:
        if not spec.repo_id:
            _console().print(f"{spec.name}: {_cache_state(cache, spec)}, nothing to verify")
            continue
        problems = cache.verify(spec, full=True)
        if problems:
            broken += 1
            _console().print(f"[red]{spec.name}: {len(problems)} problem(s)[/red]")
            for problem in problems:
                _console().print(f"  - {problem}")
        else:
            _console().print(f"[green]{spec.name}: OK[/green] ({cache.model_dir(spec)})")
    if broken:
        _console().print("repair with `citadel models purge NAME` then `citadel models pull NAME`")
        raise typer.Exit(1)


@models_app.command()
def purge(name: str = typer.Argument(..., help="Catalog name of the model to remove from the cache.")) -> None:
    """Delete a model's cached files (complete or partial)."""
    settings = _settings()
    spec = _spec(settings, name)
    if not spec.repo_id:
        _console().print(f"{spec.name} is not downloaded ({_source(spec)}); nothing to purge")
        return
    cache = ModelCache(settings.model_cache_dir)
    directory = cache.model_dir(spec)
    if cache.purge(spec):
        _console().print(f"removed {directory}")
    else:
        _console().print(f"{spec.name} is not in the cache ({directory})")
