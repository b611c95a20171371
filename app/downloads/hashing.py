"""Reading a file through hashes, in one block size for every caller."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

HASH_BLOCK_BYTES = 4 << 20  # large enough to keep the hashing loop out of the profile, small for memory


def feed_file(path: Path, update: Callable[[bytes], object]) -> None:
    """Pass the file's bytes to `update` (a hash's update method) block by block."""
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            update(block)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    feed_file(path, digest.update)
    return digest.hexdigest()
