"""PostgresRepo and the migrations against the machine's real PostgreSQL (a fresh database)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator

from pathlib import Path

import asyncpg
import pytest

from app.adapters.migrations import (
    MIGRATION_LOCK_KEY,
    head_revision,
    upgrade,
    upgrade_async,
)
from app.adapters.postgres import (
    CollectionRow,
    DocumentWrite,
    PostgresRepo,
    UpsertOutcome,
)
from app.adapters.postgres_pool import create_pool
from app.errors import BadInput, Conflict, DependencyUnavailable, NotFound
from tests.support.databases import (
    EXPECTED_SCHEMA,
    alembic_revision,
    create_database,
    drop_database,
    schema_columns,
    temporary_database,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def db_url() -> AsyncIterator[str]:
    url = await create_database("citadel_repo")
    try:
        await upgrade_async(url)
        yield url
    finally:
        await drop_database(url)


@pytest.fixture(scope="module")
async def repo(db_url: str) -> AsyncIterator[PostgresRepo]:
    pool = await create_pool(db_url, min_size=1, max_size=4)
    try:
        yield PostgresRepo(pool)
    finally:
        await pool.close()


def unique(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def doc(id: str, text: str = "hello", metadata: dict | None = None, content_hash: str | None = None) -> DocumentWrite:
    return DocumentWrite(
        id=id,
        text=text,
        metadata=metadata or {},
        content_hash=content_hash or f"h:{text}",
        point_id=str(uuid.uuid5(uuid.NAMESPACE_URL, id)),
    )


async def new_collection(repo: PostgresRepo, indexed_fields: tuple[str, ...] = ()) -> str:
    name = unique()
    await repo.create_collection(name, "m", "rev1", 3, "cosine", indexed_fields)
    return name


# -- migrations -----------------------------------------------------------------------------


async def test_migrations_create_the_schema_and_rerun_as_no_op(db_url: str) -> None:
    assert await alembic_revision(db_url) == head_revision() == "0008"
    assert await schema_columns(db_url) == EXPECTED_SCHEMA
    await upgrade_async(db_url)  # at head already: nothing to do, nothing fails
    assert await alembic_revision(db_url) == head_revision()


def test_upgrade_refuses_to_block_an_event_loop(db_url: str) -> None:
    async def call() -> None:
        upgrade(db_url)

    with pytest.raises(RuntimeError, match="upgrade_async"):
        asyncio.run(call())


async def test_concurrent_upgrades_from_two_threads() -> None:
    async with temporary_database("citadel_mig") as url:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                upgrade(url)
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        def run_both() -> None:
            threads = [threading.Thread(target=run) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        await asyncio.to_thread(run_both)
        assert errors == []
        assert await alembic_revision(url) == head_revision()
        assert await schema_columns(url) == EXPECTED_SCHEMA


async def test_concurrent_upgrades_from_two_processes() -> None:
    async with temporary_database("citadel_mig") as url:
        code = "import sys; from app.adapters.migrations import upgrade; upgrade(sys.argv[1])"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def run_both() -> list[tuple[int, bytes]]:
            procs = [
                subprocess.Popen([sys.executable, "-c", code, url], cwd="/", env=env, stderr=subprocess.PIPE)
                for _ in range(2)
            ]
            return [(p.wait(120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]

        results = await asyncio.to_thread(run_both)
        assert [rc for rc, _ in results] == [0, 0], [err.decode()[-2000:] for _, err in results]
        assert await alembic_revision(url) == head_revision()
        assert await schema_columns(url) == EXPECTED_SCHEMA


async def test_upgrade_waits_for_the_advisory_lock() -> None:
    async with temporary_database("citadel_mig") as url:
        holder = await asyncpg.connect(url)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            task = asyncio.create_task(upgrade_async(url))
            # The upgrade's backend shows up waiting on an advisory lock we hold.
            for _ in range(600):
                waiting = await holder.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
                if waiting or task.done():
                    break
                await asyncio.sleep(0.05)
            assert not task.done(), task.exception() if task.done() else None
            assert waiting == 1
            await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
            await asyncio.wait_for(task, 120)
        finally:
            await holder.close()
        assert await alembic_revision(url) == head_revision()


# -- collections ----------------------------------------------------------------------------


async def test_collection_lifecycle_and_conflict(repo: PostgresRepo) -> None:
    name = unique()
    row = await repo.create_collection(name, "sentence-transformers/x", "abc123", 384, "dot", ["lang", "year"])
    assert isinstance(row, CollectionRow)
    assert (row.name, row.model, row.model_revision, row.dimensions, row.distance, row.indexed_fields) == (
        name, "sentence-transformers/x", "abc123", 384, "dot", ("lang", "year"),
    )  # fmt: skip
    assert row.created_at.tzinfo is not None
    assert await repo.get_collection(name) == row
    assert name in [c.name for c in await repo.list_collections()]

    with pytest.raises(Conflict):
        await repo.create_collection(name, "other", "r", 8, "cosine", [])
    with pytest.raises(BadInput):
        await repo.create_collection(unique(), "m", "r", 8, "manhattan", [])

    assert await repo.delete_collection(name) is True
    assert await repo.get_collection(name) is None
    assert await repo.delete_collection(name) is False


async def test_list_collections_is_ordered_by_name(repo: PostgresRepo) -> None:
    names = [await new_collection(repo) for _ in range(3)]
    listed = [c.name for c in await repo.list_collections() if c.name in names]
    assert listed == sorted(names)


async def test_delete_collection_cascades_to_documents(repo: PostgresRepo, db_url: str) -> None:
    name = await new_collection(repo)
    await repo.upsert_documents(name, [doc("a"), doc("b")])
    assert await repo.count_documents(name) == 2
    assert await repo.delete_collection(name)
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM documents WHERE collection = $1", name) == 0
    finally:
        await conn.close()


# -- documents ------------------------------------------------------------------------------


async def test_upsert_reports_inserted_updated_unchanged(repo: PostgresRepo) -> None:
    name = await new_collection(repo)
    first = await repo.upsert_documents(name, [doc("a", "alpha"), doc("b", "beta", {"k": 1})])
    assert first == [UpsertOutcome("inserted", True), UpsertOutcome("inserted", True)]
    assert await repo.count_documents(name, "pending") == 2

    # Same again while still pending: unchanged, but reported pending so the caller indexes it.
    again = await repo.upsert_documents(name, [doc("a", "alpha"), doc("b", "beta", {"k": 1})])
    assert again == [UpsertOutcome("unchanged", True), UpsertOutcome("unchanged", True)]

    assert await repo.mark_indexed(name, ["a", "b"]) == 2
    before = await repo.get_documents(name, ["a", "b"])
    same = await repo.upsert_documents(name, [doc("a", "alpha"), doc("b", "beta", {"k": 1})])
    assert same == [UpsertOutcome("unchanged", False), UpsertOutcome("unchanged", False)]
    assert await repo.get_documents(name, ["a", "b"]) == before  # untouched, updated_at included

    changed = await repo.upsert_documents(
        name, [doc("a", "alpha 2"), doc("b", "beta", {"k": 2}), doc("c", "gamma")]
    )
    assert changed == [UpsertOutcome("updated", True), UpsertOutcome("updated", True), UpsertOutcome("inserted", True)]
    a, b, c = await repo.get_documents(name, ["a", "b", "c"])
    assert a is not None and (a.text, a.content_hash, a.status) == ("alpha 2", "h:alpha 2", "pending")
    assert b is not None and (b.metadata, b.status) == ({"k": 2}, "pending")
    assert b.updated_at > before[1].updated_at  # type: ignore[union-attr]
    assert c is not None and c.point_id == str(uuid.uuid5(uuid.NAMESPACE_URL, "c"))
    assert await repo.count_documents(name) == 3
    assert await repo.count_documents(name, "indexed") == 0


async def test_upsert_keeps_metadata_as_json(repo: PostgresRepo) -> None:
    name = await new_collection(repo)
    metadata = {"lang": "fr", "year": 2024, "score": 0.5, "tags": ["x", "y"], "nested": {"ok": True, "none": None}}
    await repo.upsert_documents(name, [doc("a", metadata=metadata)])
    row = await repo.get_document(name, "a")
    assert row is not None and row.metadata == metadata
    # Key order is not a change: jsonb compares values.
    reordered = dict(reversed(list(metadata.items())))
    assert await repo.upsert_documents(name, [doc("a", metadata=reordered)]) == [UpsertOutcome("unchanged", True)]


async def test_upsert_errors(repo: PostgresRepo) -> None:
    with pytest.raises(NotFound):
        await repo.upsert_documents(unique("missing"), [doc("a")])
    name = await new_collection(repo)
    with pytest.raises(BadInput):
        await repo.upsert_documents(name, [doc("a"), doc("a", "other")])
    assert await repo.upsert_documents(name, []) == []


async def test_upsert_is_one_transaction(repo: PostgresRepo) -> None:
    name = await new_collection(repo)
    await repo.upsert_documents(name, [doc("kept", "v1")])
    # PostgreSQL refuses NUL in text: the whole batch, including the valid update, is rolled back.
    with pytest.raises(asyncpg.PostgresError):
        await repo.upsert_documents(name, [doc("kept", "v2"), doc("new", "ok"), doc("bad", "nul\x00byte")])
    rows = await repo.get_documents(name, ["kept", "new", "bad"])
    assert rows[0] is not None and rows[0].text == "v1"
    assert rows[1:] == [None, None]


async def test_mark_indexed_only_touches_pending_rows_with_the_indexed_hash(repo: PostgresRepo) -> None:
    name = await new_collection(repo)
    await repo.upsert_documents(name, [doc("a", "one"), doc("b", "two")])
    # "a" was rewritten after it was embedded: its old hash must not mark the new content indexed.
    await repo.upsert_documents(name, [doc("a", "one v2")])
    assert await repo.mark_indexed(name, ["a", "b", "missing"], ["h:one", "h:two", "h:x"]) == 1
    a, b = await repo.get_documents(name, ["a", "b"])
    assert a is not None and a.status == "pending"
    assert b is not None and b.status == "indexed"
    assert await repo.mark_indexed(name, ["b"]) == 0  # already indexed
    with pytest.raises(BadInput):
        await repo.mark_indexed(name, ["a", "b"], ["h:one v2"])


async def test_pending_documents_across_collections_oldest_first(repo: PostgresRepo) -> None:
    first, second = await new_collection(repo), await new_collection(repo)
    await repo.upsert_documents(first, [doc("a1"), doc("a2"), doc("a3")])
    await repo.upsert_documents(second, [doc("b1")])
    await repo.mark_indexed(first, ["a2", "a3"])
    await repo.mark_deleting(first, ["a3"])  # indexed, then deleted: waits for its vector to go

    rows = [r for r in await repo.pending_documents(10_000) if r.collection in (first, second)]
    assert [(r.collection, r.id, r.status) for r in rows] == [
        (first, "a1", "pending"),
        (second, "b1", "pending"),
        (first, "a3", "deleting"),
    ]
    assert [r.updated_at for r in rows] == sorted(r.updated_at for r in rows)
    assert len(await repo.pending_documents(1)) == 1


async def test_get_documents_keeps_key_order_in_one_query(db_url: str) -> None:
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        repo = PostgresRepo(pool)
        name = await new_collection(repo)
        await repo.upsert_documents(name, [doc("a"), doc("b"), doc("c")])
        queries: list[str] = []
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: queries.append(record.query))
        rows = await repo.get_documents(name, ["c", "missing", "a", "b", "a"])
        assert [r.id if r else None for r in rows] == ["c", None, "a", "b", "a"]
        assert len([q for q in queries if "FROM documents" in q]) == 1
        assert await repo.get_documents(name, []) == []
        assert await repo.get_document(name, "missing") is None
        other = await new_collection(repo)
        assert await repo.get_documents(other, ["a"]) == [None]  # ids are per collection
    finally:
        await pool.close()


async def test_list_documents_pages_by_id(repo: PostgresRepo) -> None:
    name = await new_collection(repo)
    ids = ["b", "a", "B", "aa", "a-1", "é", "z", "10", "9"]
    await repo.upsert_documents(name, [doc(i) for i in ids])
    await repo.mark_deleting(name, ["z"])

    seen: list[str] = []
    after: str | None = None
    while True:
        page = await repo.list_documents(name, after=after, limit=2)
        if not page:
            break
        assert len(page) <= 2
        seen += [r.id for r in page]
        after = page[-1].id
    visible = sorted((i for i in ids if i != "z"), key=lambda s: s.encode())
    assert seen == visible
    everything = [r.id for r in await repo.list_documents(name, limit=100, include_deleting=True)]
    assert everything == sorted(ids, key=lambda s: s.encode())
    assert await repo.list_documents(name, after="é") == []
    assert await repo.list_documents(name, limit=0) == []


async def test_mark_deleting_then_purge(repo: PostgresRepo) -> None:
    name = await new_collection(repo)
    await repo.upsert_documents(name, [doc("a"), doc("b"), doc("c")])
    assert await repo.mark_deleting(name, ["a", "b", "missing"]) == ["a", "b"]
    assert await repo.count_documents(name) == 1
    assert await repo.count_documents(name, "deleting") == 2
    with pytest.raises(BadInput):
        await repo.count_documents(name, "gone")  # type: ignore[arg-type]

    # Re-ingested before its purge: it is live again and the purge must keep it.
    assert await repo.upsert_documents(name, [doc("b")]) == [UpsertOutcome("updated", True)]
    assert await repo.purge_if_deleting(name, ["a", "b", "c", "missing"], _nothing_to_remove) == 1
    rows = await repo.get_documents(name, ["a", "b", "c"])
    assert rows[0] is None
    assert rows[1] is not None and rows[1].status == "pending"
    assert rows[2] is not None and rows[2].status == "pending"
    assert await repo.mark_deleting(name, []) == []
    assert await repo.purge_if_deleting(name, [], _nothing_to_remove) == 0


# -- health and outages ---------------------------------------------------------------------


async def test_ping(repo: PostgresRepo) -> None:
    latency = await repo.ping()
    assert isinstance(latency, float) and latency >= 0.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


async def test_unreachable_database_is_dependency_unavailable() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    with pytest.raises(DependencyUnavailable) as caught:
        await create_pool(url, connect_timeout=5)
    assert caught.value.code == "DEPENDENCY_UNAVAILABLE"

    lazy = await create_pool(url, min_size=0, connect_timeout=5)  # connects on first use
    try:
        with pytest.raises(DependencyUnavailable):
            await PostgresRepo(lazy).ping()
    finally:
        await lazy.close()

    with pytest.raises(DependencyUnavailable):
        await asyncio.to_thread(upgrade, url)


async def test_closed_pool_is_dependency_unavailable(db_url: str) -> None:
    pool = await create_pool(db_url, min_size=1, max_size=1)
    repo = PostgresRepo(pool)
    assert await repo.get_collection(unique()) is None
    await pool.close()
    with pytest.raises(DependencyUnavailable):
        await repo.list_collections()


async def test_repo_recovers_after_its_connection_is_killed(db_url: str) -> None:
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        repo = PostgresRepo(pool)
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(db_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend)
        finally:
            await admin.close()
        # Depending on when the client reads the server's goodbye, the dead connection fails at
        # most one call; the pool then replaces it rather than failing every later call.
        try:
            await repo.get_collection(unique())
        except (DependencyUnavailable, asyncpg.PostgresError, asyncpg.InternalClientError):
            pass
        assert await repo.get_collection(unique()) is None
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != backend
    finally:
        await pool.close()


async def _nothing_to_remove(ids: list[str], live: object) -> None:
    """The vector side of a purge, for tests of the rows alone."""
