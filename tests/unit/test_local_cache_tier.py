"""The in-memory tier in front of Redis: bounded by bytes, least recently used out, own copies."""

import numpy as np

from app.adapters.redis_cache import LocalTier


def vector(value: float, dims: int = 4) -> np.ndarray:
    return np.full(dims, value, dtype=np.float32)


def test_evicts_the_least_recently_used_past_the_byte_bound():
    tier = LocalTier(max_bytes=3 * 16)  # three 4-float vectors
    for key in "abc":
        tier.put(key, vector(ord(key)))
    assert tier.get("a") is not None  # a is now the most recent
    tier.put("d", vector(4))
    assert tier.get("b") is None
    assert [k for k in "acd" if tier.get(k) is not None] == ["a", "c", "d"]
    assert tier.used_bytes == 48


def test_keeps_its_own_read_only_copy():
    tier = LocalTier(max_bytes=1024)
    mine = vector(1.0)
    tier.put("k", mine)
    mine[:] = 9.0  # the caller reuses its buffer
    kept = tier.get("k")
    np.testing.assert_array_equal(kept, vector(1.0))
    assert not kept.flags.writeable


def test_zero_bytes_keeps_nothing():
    tier = LocalTier(max_bytes=0)
    tier.put("k", vector(1.0))
    assert tier.get("k") is None and tier.used_bytes == 0
