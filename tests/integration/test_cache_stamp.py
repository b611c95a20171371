"""Start-up cost of a cached model: sizes and a stored (size, mtime) stamp at start, full hashes
only for files that changed, or for everything on `citadel models verify`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.domain.models import ModelSpec
from app.downloads import cache as cache_module
from app.downloads.cache import ModelCache
from app.downloads.hub import RemoteFile, RepoSnapshot

ROOT = Path(__file__).resolve().parents[2]
FILES = {"config.json": b'{"a": 1}' * 100, "weights.bin": os.urandom(300_000), "vocab.txt": b"word\n" * 500}
SPEC = ModelSpec(name="test/stamped", repo_id="test/stamped", dimensions=8)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files the cache hashes."""
    calls: list[str] = []
    real = cache_module.sha256_of

    def counting(path: Path) -> str:
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(cache_module, "sha256_of", counting)
    return calls


def cached_model(root: Path, age_seconds: float = 60.0) -> ModelCache:
    """A complete cached model whose files were written `age_seconds` ago."""
    cache = ModelCache(root)
    directory = cache.model_dir(SPEC)
    directory.mkdir(parents=True)
    old = time.time() - age_seconds
    for name, data in FILES.items():
        path = directory / name
        path.write_bytes(data)
        os.utime(path, (old, old))
    snapshot = RepoSnapshot(
        repo_id=SPEC.repo_id or "", revision="main", commit="c0ffee",
        files=tuple(RemoteFile(name=n, size=len(d)) for n, d in FILES.items()),
    )  # fmt: skip
    cache.write_manifest(SPEC, snapshot, {n: hashlib.sha256(d).hexdigest() for n, d in FILES.items()})
    return cache


def test_an_unchanged_cache_is_verified_without_hashing(tmp_path: Path, hashed: list[str]) -> None:
    cache = cached_model(tmp_path)
    assert cache.verify(SPEC) == []
    assert hashed == []
    assert cache.verify(SPEC, full=True) == []  # what `citadel models verify` asks for
    assert sorted(hashed) == sorted(FILES)


def test_only_a_changed_file_is_hashed_and_a_bad_one_is_found(tmp_path: Path, hashed: list[str]) -> None:
    cache = cached_model(tmp_path)
    path = cache.file_path(SPEC, "weights.bin")
    data = bytearray(path.read_bytes())
    data[1234] ^= 0xFF  # same size, new mtime
    path.write_bytes(bytes(data))
    problems = cache.verify(SPEC)
    assert hashed == ["weights.bin"]
    assert len(problems) == 1 and problems[0].startswith("weights.bin: sha256")


def test_a_file_changed_behind_the_stamps_back_is_found_by_a_full_verify(tmp_path: Path, hashed: list[str]) -> None:
    cache = cached_model(tmp_path)
    path = cache.file_path(SPEC, "weights.bin")
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[99] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: the stamp cannot tell
    assert cache.verify(SPEC) == []  # the documented trade-off of a quick start
    assert any(p.startswith("weights.bin: sha256") for p in cache.verify(SPEC, full=True))


def test_fresh_files_are_hashed_until_a_stamp_can_vouch_for_them(tmp_path: Path, hashed: list[str]) -> None:
    # Written just now: a change within the clock's granularity would not move mtime, so hash.
    cache = cached_model(tmp_path, age_seconds=0)
    assert cache.verify(SPEC) == []
    assert sorted(hashed) == sorted(FILES)


def test_the_cli_verify_hashes_every_file(tmp_path: Path) -> None:
    cache = cached_model(tmp_path / "models")
    path = cache.file_path(SPEC, "config.json")
    before = path.stat()
    path.write_bytes(path.read_bytes().replace(b"1", b"2"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    env = {
        **os.environ,
        "CITADEL_DATA_DIR": str(tmp_path),
        "CITADEL_MODELS": '{"test/stamped": {"repo_id": "test/stamped", "dimensions": 8}}',
    }
    done = subprocess.run(
        [sys.executable, "-m", "app", "models", "verify", "test/stamped"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "config.json: sha256" in done.stdout
