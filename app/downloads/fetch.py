"""One attempt at putting a hub model into the cache: list, check the disk, fetch, verify, publish.

Retries, states and events belong to the caller (ModelManager, `citadel models pull`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.downloads.cache import Manifest, ModelCache
from app.downloads.errors import DownloadError
from app.downloads.hub import HubClient, RepoSnapshot, local_copy_matches
from app.domain.models import ModelSpec

SnapshotCallback = Callable[[RepoSnapshot], None]
FileProgressCallback = Callable[[str, int, "int | None"], None]  # file, bytes done, file size


async def fetch_model(
    spec: ModelSpec,
    cache: ModelCache,
    hub: HubClient,
    *,
    min_free_disk_mb: int,
    on_snapshot: SnapshotCallback = lambda snapshot: None,
    on_progress: FileProgressCallback = lambda file, done, total: None,
) -> Manifest:
    assert spec.repo_id, f"{spec.name} is not a hub model"
    try:
        cache.ensure_writable()
        snapshot = await hub.snapshot(spec.repo_id, spec.revision, spec.files)
        on_snapshot(snapshot)
        cache.check_free_space(cache.missing_bytes(spec, snapshot), min_free_disk_mb)
        cache.begin(spec, snapshot)
        digests: dict[str, str] = {}
        for remote in snapshot.files:
            # A file finished by an earlier attempt is kept if it still checks out.
            digest = await asyncio.to_thread(local_copy_matches, remote, cache.file_path(spec, remote.name))
            if digest is None:
                partial = cache.partial_path(spec, remote.name)
                digest = await hub.download(snapshot, remote, partial, _reporter(on_progress, remote.name, remote.size))
                cache.finish_file(spec, remote.name)
            else:
                size = cache.file_path(spec, remote.name).stat().st_size
                on_progress(remote.name, size, size)
            digests[remote.name] = digest
        return cache.write_manifest(spec, snapshot, digests)
    except OSError as error:
        raise DownloadError(
            f"writing {spec.name} into {cache.root} failed: {error}", reason="io_error", retryable=False
        ) from error


def _reporter(on_progress: FileProgressCallback, name: str, size: int | None) -> Callable[[int], None]:
    return lambda done: on_progress(name, done, size)
