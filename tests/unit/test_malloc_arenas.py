"""The server's malloc arena cap (app/malloc_arenas.py), observed in glibc's own report."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from app.malloc_arenas import DEFAULT_ARENAS, limit_malloc_arenas

# A fresh process: optionally caps the arenas, runs threads that allocate at the same time, then
# prints how many heaps (arenas) glibc's malloc_info reports.
PROBE = textwrap.dedent(
    """
    import ctypes, sys, tempfile, threading
    from app.malloc_arenas import limit_malloc_arenas
    if sys.argv[1] == "cap":
        assert limit_malloc_arenas()
    barrier = threading.Barrier(12)
    def churn():
        barrier.wait()
        for _ in range(3000):
            blocks = [bytearray(2048) for _ in range(16)]
            del blocks
    threads = [threading.Thread(target=churn) for _ in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile("r", suffix=".xml") as report:
        stream = libc.fopen(report.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        print(report.read().count("<heap nr="))
    """
)

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="malloc arenas and malloc_info are glibc's",
)


def heaps(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@glibc_only
def test_the_cap_holds_threads_to_two_arenas_where_glibc_would_give_them_more():
    assert heaps("cap") <= DEFAULT_ARENAS
    assert heaps("default") > DEFAULT_ARENAS  # the probe does make glibc add arenas


def test_an_explicit_malloc_arena_max_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
