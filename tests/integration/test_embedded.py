"""The embedded PostgreSQL and Redis: real servers, started, crashed and stopped for real."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis.asyncio as aioredis

from app.adapters.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    postgres_bin_dir,
    redis_server_binary,
)
from app.adapters.migrations import head_revision, upgrade_async
from app.adapters.postgres import PostgresRepo
from app.adapters.postgres_pool import create_pool
from app.errors import DependencyUnavailable
from tests.support.databases import EXPECTED_SCHEMA, alembic_revision, schema_columns

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition(), "condition not reached"


def server_processes(exe: Path, data_dir: Path) -> list[int]:
    """Pids of live processes of `exe` working in `data_dir` (servers chdir there)."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if Path(proc.exe()) == exe.resolve() and Path(proc.cwd()) == data_dir.resolve():
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def postgres_processes(pg: EmbeddedPostgres) -> list[int]:
    return server_processes(postgres_bin_dir() / "postgres", pg.pgdata)


def redis_processes(server: EmbeddedRedis) -> list[int]:
    return server_processes(redis_server_binary(), server.root)


@pytest.fixture
def owner_process() -> Iterator[object]:
    """Start a server from another Python process (to be killed with -9 like a crashed app)."""
    started: list[subprocess.Popen[str]] = []

    def spawn(kind: str, data_dir: Path) -> tuple[subprocess.Popen[str], int]:
        code = (
            "import sys, time\n"
            "from app.adapters.embedded import EmbeddedPostgres, EmbeddedRedis\n"
            "server = {'postgres': EmbeddedPostgres, 'redis': EmbeddedRedis}[sys.argv[1]](sys.argv[2])\n"
            "server.start()\n"
            "print(server.pid, flush=True)\n"
            "time.sleep(600)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, kind, str(data_dir)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip().isdigit(), f"owner did not start its server: {proc.wait(), proc.stderr.read()[-3000:]}"  # type: ignore[union-attr]
        return proc, int(line)

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir for PostgreSQL outside pytest's tmp_path: every pytest session that starts on
    this machine re-tightens /tmp/pytest-of-<user> to 0700, which would lock the server's
    unprivileged user out of a test that is running meanwhile."""
    path = Path(tempfile.mkdtemp(prefix="citadel-embedded-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- PostgreSQL ------------------------------------------------------------------------------


async def test_postgres_migrates_and_keeps_data_across_restarts(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    async with pg:
        first_pid = pg.pid
        assert pg.url.startswith("postgresql://") and "host=" in pg.url
        await upgrade_async(pg.url)
        assert await alembic_revision(pg.url) == head_revision()
        assert await schema_columns(pg.url) == EXPECTED_SCHEMA
        pool = await create_pool(pg.url)
        try:
            await PostgresRepo(pool).create_collection("kept", "m", "r", 3, "cosine", ["lang"])
        finally:
            await pool.close()
    assert first_pid is not None and not alive(first_pid)
    assert postgres_processes(pg) == []
    with pytest.raises(DependencyUnavailable):
        pg.url  # noqa: B018 - not running

    async with EmbeddedPostgres(data_dir) as again:
        assert again.pid != first_pid
        pool = await create_pool(again.url)
        try:
            row = await PostgresRepo(pool).get_collection("kept")
        finally:
            await pool.close()
        assert row is not None and row.indexed_fields == ("lang",)
        await upgrade_async(again.url)  # already at head
    assert postgres_processes(again) == []


def test_postgres_start_is_idempotent_and_the_dir_has_one_owner(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    try:
        url = pg.start()
        pid = pg.pid
        assert pg.start() == url and pg.pid == pid
        with pytest.raises(DependencyUnavailable, match="in use"):
            EmbeddedPostgres(data_dir).start()
        assert pg.running and pg.pid == pid
    finally:
        pg.stop()
    pg.stop()  # a second stop is harmless
    assert postgres_processes(pg) == []


def test_postgres_restarts_after_the_server_is_killed(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    try:
        asyncio.run(_write_marker(pg.start(), "before crash"))
        crashed = pg.pid
        assert crashed is not None
        os.kill(crashed, signal.SIGKILL)
        wait_until(lambda: not pg.running)

        pg.start()  # same object: notices the dead server, clears its leftovers, restarts
        assert pg.pid != crashed
        assert asyncio.run(_read_marker(pg.url)) == "before crash"
    finally:
        pg.stop()
    assert postgres_processes(pg) == []


def test_postgres_recovers_after_the_owner_process_is_killed(data_dir: Path, owner_process) -> None:
    owner, orphan = owner_process("postgres", data_dir)
    previous = EmbeddedPostgres(data_dir)
    asyncio.run(_write_marker(_url_for(previous), "from the dead owner"))
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    assert alive(orphan)  # the server outlived its owner, holding postmaster.pid

    pg = EmbeddedPostgres(data_dir)
    try:
        pg.start()
        assert not alive(orphan)
        assert pg.pid != orphan
        assert asyncio.run(_read_marker(pg.url)) == "from the dead owner"
    finally:
        pg.stop()
    assert postgres_processes(pg) == []


def test_postgres_recovers_after_owner_and_server_are_killed(data_dir: Path, owner_process) -> None:
    owner, server = owner_process("postgres", data_dir)
    asyncio.run(_write_marker(_url_for(EmbeddedPostgres(data_dir)), "committed"))
    os.kill(owner.pid, signal.SIGKILL)
    os.kill(server, signal.SIGKILL)
    owner.wait()
    wait_until(lambda: not alive(server))
    pg = EmbeddedPostgres(data_dir)
    assert (pg.pgdata / "postmaster.pid").exists()  # stale, like the lock file and the socket
    try:
        pg.start()
        assert asyncio.run(_read_marker(pg.url)) == "committed"
    finally:
        pg.stop()
    assert postgres_processes(pg) == []


def test_postgres_ignores_a_stale_pid_file_naming_a_recycled_pid(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    pg.start()
    pid_file = pg.pgdata / "postmaster.pid"
    contents = pid_file.read_text().splitlines()
    pg.stop()
    stranger = subprocess.Popen(["sleep", "60"])  # alive, and not a postgres
    try:
        pid_file.write_text("\n".join([str(stranger.pid), *contents[1:]]) + "\n")
        pg.start()
        assert pg.running and alive(stranger.pid)
    finally:
        pg.stop()
        stranger.kill()
        stranger.wait()
    assert postgres_processes(pg) == []


def test_postgres_as_root_runs_as_an_unprivileged_user(data_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only meaningful when the tests run as root (PostgreSQL refuses root)")
    pg = EmbeddedPostgres(data_dir)
    try:
        pg.start()
        assert pg.pid is not None
        user = psutil.Process(pg.pid).username()
        assert user == pg.run_as != "root"
        assert (pg.pgdata.stat().st_mode & 0o777) == 0o700
        assert (pg.socket_dir.stat().st_mode & 0o777) == 0o700
    finally:
        pg.stop()


def _url_for(pg: EmbeddedPostgres) -> str:
    # The URL of a server another process started in the same dir (same socket directory).
    return f"postgresql://postgres@/postgres?host={pg.socket_dir}&port={pg.port}"


async def _write_marker(url: str, value: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS marker (value text)")
        await conn.execute("INSERT INTO marker VALUES ($1)", value)
    finally:
        await conn.close()


async def _read_marker(url: str) -> str | None:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT value FROM marker")
    finally:
        await conn.close()


# -- Redis -----------------------------------------------------------------------------------


async def test_redis_serves_over_the_unix_socket_with_the_memory_policy(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, max_memory_mb=8)
    async with server:
        assert server.url.startswith("unix://") and server.url.endswith(".sock")
        client = aioredis.from_url(server.url)
        try:
            assert await client.set("k", "v")
            assert await client.get("k") == b"v"
            assert (await client.config_get("maxmemory"))["maxmemory"] == str(8 * 1024 * 1024)
            assert (await client.config_get("maxmemory-policy"))["maxmemory-policy"] == "allkeys-lru"
            assert (await client.config_get("port"))["port"] == "0"  # no TCP listener
        finally:
            await client.aclose()
        pid = server.pid
    assert pid is not None and not alive(pid)
    assert redis_processes(server) == []


async def test_redis_restart_reuses_the_data(tmp_path: Path) -> None:
    async with EmbeddedRedis(tmp_path, max_memory_mb=8) as server:
        client = aioredis.from_url(server.url)
        await client.set("kept", "yes")
        await client.aclose()
    async with EmbeddedRedis(tmp_path, max_memory_mb=8) as server:
        client = aioredis.from_url(server.url)
        try:
            assert await client.get("kept") == b"yes"
        finally:
            await client.aclose()
    assert redis_processes(server) == []


def test_redis_restarts_after_the_server_is_killed(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, max_memory_mb=8)
    try:
        server.start()
        asyncio.run(_redis_call(server.url, "SET", "saved", "1"))
        asyncio.run(_redis_call(server.url, "SAVE"))
        crashed = server.pid
        assert crashed is not None
        os.kill(crashed, signal.SIGKILL)
        wait_until(lambda: not server.running)
        server.start()
        assert server.pid != crashed
        assert asyncio.run(_redis_call(server.url, "GET", "saved")) == b"1"
    finally:
        server.stop()
    assert redis_processes(server) == []


def test_redis_recovers_after_the_owner_process_is_killed(tmp_path: Path, owner_process) -> None:
    owner, orphan = owner_process("redis", tmp_path)
    url = f"unix://{EmbeddedRedis(tmp_path).socket_path}"
    asyncio.run(_redis_call(url, "SET", "unsaved", "kept"))  # no SAVE: the orphan's shutdown writes it
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    assert alive(orphan)

    server = EmbeddedRedis(tmp_path)
    try:
        server.start()
        assert not alive(orphan)
        assert asyncio.run(_redis_call(server.url, "GET", "unsaved")) == b"kept"
    finally:
        server.stop()
    assert redis_processes(server) == []


def test_redis_in_a_deep_data_dir_uses_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis(deep, max_memory_mb=8)
    assert not server.socket_path.is_relative_to(deep)
    try:
        server.start()
        assert asyncio.run(_redis_call(server.url, "PING")) is True
    finally:
        server.stop()
    assert not server.socket_path.parent.exists()  # the /tmp socket dir is removed on stop
    assert redis_processes(server) == []


async def _redis_call(url: str, *command: str) -> object:
    client = aioredis.from_url(url)
    try:
        return await client.execute_command(*command)
    finally:
        await client.aclose()
