"""Citadel's model cache on disk.

    <cache_dir>/<org>--<name>/<revision>/      one directory per (repo, revision)
        <file>.partial                         being downloaded (resumable)
        <file>                                 verified, renamed from .partial
        .citadel-download.json                 the commit being fetched (a new commit voids partials)
        .citadel-manifest.json                 written LAST: its presence means "complete"
        .citadel-verified.json                 (size, mtime) of each file when its hash last matched

A model without a manifest is never loaded, so a crash at any point leaves nothing half-usable.
A start checks sizes and the stamp, hashing only the files that changed since they were last
verified (multi-GB models start in milliseconds); `citadel models verify` hashes everything.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from loguru import logger

from app.downloads.errors import CacheNotWritable, InsufficientDisk
from app.downloads.hashing import sha256_of
from app.downloads.hub import RepoSnapshot
from app.domain.models import ModelSpec

MANIFEST = ".citadel-manifest.json"
PENDING = ".citadel-download.json"
STAMP = ".citadel-verified.json"
PARTIAL_SUFFIX = ".partial"
# A file modified within this long of its stamp may have changed within the clock's granularity
# ("racy git"): such a stamp does not vouch for it, and its next check hashes it again.
RACY_NS = 2_000_000_000
_ENV_HINT = "set CITADEL_CACHE_DIR (or CITADEL_DATA_DIR) to a writable directory"


@dataclass(frozen=True)
class ManifestFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    repo_id: str
    revision: str
    commit: str
    files: tuple[ManifestFile, ...]
    completed_at: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _write_json_atomically(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- layout ----------------------------------------------------------------------------

    def model_dir(self, spec: ModelSpec) -> Path:
        if not spec.repo_id:
            raise ValueError(f"model {spec.name!r} is not fetched from a hub repo")
        # "/" cannot appear in a directory name; "--" follows the hub's own cache naming.
        return self.root / spec.repo_id.replace("/", "--") / quote(spec.revision, safe="")

    def file_path(self, spec: ModelSpec, name: str) -> Path:
        target = (self.model_dir(spec) / name).resolve()
        if not target.is_relative_to(self.model_dir(spec).resolve()):
            raise ValueError(f"file name {name!r} escapes the model directory")
        return target

    def partial_path(self, spec: ModelSpec, name: str) -> Path:
        path = self.file_path(spec, name)
        return path.with_name(path.name + PARTIAL_SUFFIX)

    # -- state -----------------------------------------------------------------------------

    def manifest(self, spec: ModelSpec) -> Manifest | None:
        path = self.model_dir(spec) / MANIFEST
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return Manifest(
                repo_id=raw["repo_id"],
                revision=raw["revision"],
                commit=raw["commit"],
                files=tuple(ManifestFile(**f) for f in raw["files"]),
                completed_at=raw["completed_at"],
            )
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "model cache manifest {} is unreadable ({}); treating the model as not downloaded", path, error
            )
            return None

    def is_complete(self, spec: ModelSpec) -> bool:
        return self.manifest(spec) is not None

    def bytes_on_disk(self, spec: ModelSpec) -> int:
        directory = self.model_dir(spec)
        if not directory.exists():
            return 0
        return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())

    def begin(self, spec: ModelSpec, snapshot: RepoSnapshot) -> None:
        """Prepare the directory for fetching `snapshot`; partials of another commit are dropped."""
        directory = self.model_dir(spec)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST).unlink(missing_ok=True)
        pending = directory / PENDING
        try:
            previous = json.loads(pending.read_text(encoding="utf-8")).get("commit")
        except (FileNotFoundError, ValueError):
            previous = None
        if previous and previous != snapshot.commit:
            logger.info("{} moved from {} to {}; discarding partial files", spec.name, previous, snapshot.commit)
            for partial in directory.rglob("*" + PARTIAL_SUFFIX):
                partial.unlink()
        _write_json_atomically(pending, {"commit": snapshot.commit})

    def finish_file(self, spec: ModelSpec, name: str) -> Path:
        final = self.file_path(spec, name)
        os.replace(self.partial_path(spec, name), final)
        return final

    def write_manifest(self, spec: ModelSpec, snapshot: RepoSnapshot, sha256s: dict[str, str]) -> Manifest:
        files = tuple(
            ManifestFile(name=f.name, size=self.file_path(spec, f.name).stat().st_size, sha256=sha256s[f.name])
            for f in snapshot.files
        )
        manifest = Manifest(
            repo_id=snapshot.repo_id,
            revision=snapshot.revision,
            commit=snapshot.commit,
            files=files,
            completed_at=datetime.now(UTC).isoformat(),
        )
        directory = self.model_dir(spec)
        payload = asdict(manifest)
        payload["files"] = [asdict(f) for f in files]
        _write_json_atomically(directory / MANIFEST, payload)
        (directory / PENDING).unlink(missing_ok=True)
        self._write_stamp(spec, [f.name for f in files])  # every file was just hashed while downloading
        return manifest

    def verify(self, spec: ModelSpec, full: bool = False) -> list[str]:
        """Problems of a cached model (empty when it is complete and intact). Blocking.

        Sizes are always checked; a file's hash only when `full` or when the file changed (size or
        mtime) since its hash last matched.
        """
        manifest = self.manifest(spec)
        if manifest is None:
            return [f"{self.model_dir(spec)} has no complete download (no {MANIFEST})"]
        stamp = {} if full else self._read_stamp(spec)
        problems, verified = [], []
        for entry in manifest.files:
            path = self.file_path(spec, entry.name)
            if not path.is_file():
                problems.append(f"{entry.name}: missing")
                continue
            stat = path.stat()
            if stat.st_size != entry.size:
                problems.append(f"{entry.name}: {stat.st_size} bytes, expected {entry.size}")
                continue
            if stamp.get(entry.name) == (stat.st_size, stat.st_mtime_ns):
                verified.append(entry.name)
                continue
            digest = sha256_of(path)
            if digest != entry.sha256:
                problems.append(f"{entry.name}: sha256 {digest[:12]}…, expected {entry.sha256[:12]}…")
            else:
                verified.append(entry.name)
        if not problems:
            self._write_stamp(spec, verified)
        return problems

    def _write_stamp(self, spec: ModelSpec, names: list[str]) -> None:
        directory = self.model_dir(spec)
        files = {}
        for name in names:
            stat = self.file_path(spec, name).stat()
            files[name] = [stat.st_size, stat.st_mtime_ns]
        try:
            _write_json_atomically(directory / STAMP, {"verified_at_ns": time.time_ns(), "files": files})
        except OSError as error:  # a read-only cache still works, it is only hashed at every start
            logger.debug("cannot write {}: {}", directory / STAMP, error)

    def _read_stamp(self, spec: ModelSpec) -> dict[str, tuple[int, int]]:
        """Files whose stamp may be trusted: (size, mtime_ns) as they were when their hash matched."""
        try:
            raw = json.loads((self.model_dir(spec) / STAMP).read_text(encoding="utf-8"))
            verified_at = int(raw["verified_at_ns"])
            entries = {name: (int(size), int(mtime)) for name, (size, mtime) in raw["files"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return {name: entry for name, entry in entries.items() if entry[1] + RACY_NS < verified_at}

    def purge(self, spec: ModelSpec) -> bool:
        """Delete the model's directory; True when there was something to delete."""
        directory = self.model_dir(spec)
        if not directory.exists():
            return False
        # The manifest goes first so that an interrupted purge leaves an incomplete model, not a broken one.
        (directory / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(directory)
        parent = directory.parent
        if parent != self.root and parent.exists() and not any(parent.iterdir()):
            parent.rmdir()
        return True

    # -- preconditions ---------------------------------------------------------------------

    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".citadel-write-test-"):
                pass
        except OSError as error:
            raise CacheNotWritable(
                f"model cache directory {self.root} is not writable ({error.strerror or error}); {_ENV_HINT}"
            ) from error

    def check_free_space(self, needed_bytes: int, min_free_mb: int) -> None:
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        required = needed_bytes + min_free_mb * 1024 * 1024
        if free < required:
            raise InsufficientDisk(
                f"not enough free disk in {self.root}: the download needs {_mib(needed_bytes)} and "
                f"{min_free_mb} MiB must stay free (CITADEL_DOWNLOADS__MIN_FREE_DISK_MB), "
                f"but only {_mib(free)} are free; free some space or {_ENV_HINT} on a larger disk"
            )

    def missing_bytes(self, spec: ModelSpec, snapshot: RepoSnapshot) -> int:
        """Bytes still to fetch: finished and partial files already on disk count as done."""
        missing = 0
        for remote in snapshot.files:
            if remote.size is None:
                continue
            have = 0
            for candidate in (self.file_path(spec, remote.name), self.partial_path(spec, remote.name)):
                if candidate.is_file():
                    have = max(have, candidate.stat().st_size)
            missing += max(0, remote.size - have)
        return missing


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"
