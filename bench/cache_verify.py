"""Start-up check of a cached model: sizes + the stored (size, mtime) stamp against full sha256.

    .venv/bin/python bench/cache_verify.py [--mib 256] [--files 4]

Writes a model of `--files` files totalling `--mib` MiB into a temp cache (aged so the stamp may
vouch for them), then times, in the same run and alternating:
- full: `ModelCache.verify(spec, full=True)` (what `citadel models verify` does, and what every
  start did before the stamp), reading and hashing every byte;
- stamped: `ModelCache.verify(spec)` (what a start does now), a stat per file;
- one changed: the same after touching one file, which alone is hashed again.
The page cache is warm for both (the files were just written), so `full` is a lower bound of a
start from a cold disk.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.domain.models import ModelSpec  # noqa: E402
from app.downloads.cache import ModelCache  # noqa: E402
from app.downloads.hub import RemoteFile, RepoSnapshot  # noqa: E402

SPEC = ModelSpec(name="bench/verify", repo_id="bench/verify", dimensions=8)


def build(root: Path, mib: int, count: int) -> ModelCache:
    cache = ModelCache(root)
    directory = cache.model_dir(SPEC)
    directory.mkdir(parents=True)
    size = mib * 1024 * 1024 // count
    digests, files = {}, []
    old = time.time() - 3600
    for i in range(count):
        name = f"part-{i}.bin"
        data = os.urandom(size)
        (directory / name).write_bytes(data)
        os.utime(directory / name, (old, old))
        digests[name] = hashlib.sha256(data).hexdigest()
        files.append(RemoteFile(name=name, size=size))
    snapshot = RepoSnapshot(repo_id="bench/verify", revision="main", commit="0" * 40, files=tuple(files))
    cache.write_manifest(SPEC, snapshot, digests)
    return cache


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        problems = fn()
        samples.append(time.perf_counter() - started)
        assert problems == [], problems
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="citadel-bench-verify-") as tmp:
        cache = build(Path(tmp), args.mib, args.files)
        full = timed(lambda: cache.verify(SPEC, full=True), args.repeats)
        stamped = timed(lambda: cache.verify(SPEC), args.repeats)

        def one_changed() -> list[str]:
            path = cache.file_path(SPEC, "part-0.bin")
            old = time.time() - 3600 + time.perf_counter() % 100  # a new mtime, still old enough to stamp
            os.utime(path, (old, old))
            return cache.verify(SPEC)

        changed = timed(one_changed, args.repeats)
    print(f"cached model: {args.files} files, {args.mib} MiB; median of {args.repeats}; warm page cache")
    print("| check | seconds | vs full |")
    print("|---|---|---|")
    for label, seconds in (("full sha256 (baseline)", full), ("sizes + stamp (a start)", stamped),
                           ("sizes + stamp, one file changed", changed)):  # fmt: skip
        print(f"| {label} | {seconds:.4f} | {seconds / full:.4f}x |")


if __name__ == "__main__":
    main()
