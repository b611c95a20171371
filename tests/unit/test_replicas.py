"""The cluster view of models on replicas, replica ids and the Redis namespace (no I/O: a fake store)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.adapters.events import EventBus
from app.domain.models import DownloadEvent, ModelState, ModelStatus
from app.services.replicas import ClusterView
from app.settings import CacheSettings, ServerSettings, Settings

S = ModelState
MODEL = "m"
T0 = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


class FakeStore:
    def __init__(self) -> None:
        self.rows: list[ModelStatus] = []
        self.beats: list[str] = []
        self.forgotten: list[str] = []
        self.saved: list[ModelStatus] = []
        self.down = False

    async def heartbeat(self, replica: str) -> None:
        if self.down:
            raise ConnectionRefusedError("PostgreSQL is down")
        self.beats.append(replica)

    async def save_model_status(self, status: ModelStatus) -> None:
        self.saved.append(status)

    async def forget_replica(self, replica: str) -> None:
        self.forgotten.append(replica)

    async def live_model_statuses(self, within_seconds: float) -> list[ModelStatus]:
        return [row.copy() for row in self.rows]


def local(state: ModelState = S.NOT_DOWNLOADED) -> list[ModelStatus]:
    return [ModelStatus(name=MODEL, backend="fastembed", dimensions=384, replica="me", state=state)]


def event(replica: str, state: ModelState, at: datetime, **extra: object) -> DownloadEvent:
    return DownloadEvent(model=MODEL, replica=replica, state=state, attempt=1, max_attempts=3, at=at, **extra)  # type: ignore[arg-type]


def test_replica_id_defaults_to_host_and_port_and_can_be_set(tmp_path: Path) -> None:
    import socket

    assert settings(tmp_path, server=ServerSettings(port=8123)).replica == f"{socket.gethostname()}:8123"
    assert settings(tmp_path, replica_id="gw-7").replica == "gw-7"


def test_the_namespace_follows_the_database_so_clusters_never_mix(tmp_path: Path) -> None:
    one = settings(tmp_path, database_url="postgresql://app:secret@db1:5432/citadel")
    same_db_other_credentials = settings(tmp_path / "x", database_url="postgresql://other@db1/citadel")
    other_db = settings(tmp_path, database_url="postgresql://app:secret@db1:5432/citadel_staging")
    assert one.namespace == same_db_other_credentials.namespace  # one database: one cluster
    assert one.namespace != other_db.namespace
    assert "secret" not in one.namespace and len(one.namespace) == 12
    assert settings(tmp_path / "a").namespace != settings(tmp_path / "b").namespace  # embedded: per data dir
    assert settings(tmp_path, redis_namespace="blue").namespace == "blue"


def test_every_redis_name_lives_inside_the_namespace(tmp_path: Path) -> None:
    s = settings(tmp_path, redis_namespace="blue")
    assert s.redis_key("model-events") == "citadel:blue:model-events"
    assert s.redis_key("ratelimit", "key-1") == "citadel:blue:ratelimit:key-1"
    assert s.embedding_key_prefix == "citadel:blue:emb:"
    overridden = settings(tmp_path, redis_namespace="blue", cache=CacheSettings(key_prefix="legacy:"))
    assert overridden.embedding_key_prefix == "legacy:"


def test_a_status_follows_newer_events_and_ignores_older_ones() -> None:
    status = ModelStatus(name=MODEL, backend="", dimensions=None, replica="a", updated_at=T0)
    status.follow(event("a", S.DOWNLOADING, T0 + timedelta(seconds=1), model_bytes_done=5, model_bytes_total=10))
    assert (status.state, status.bytes_done, status.bytes_total) == (S.DOWNLOADING, 5, 10)
    status.follow(event("a", S.QUEUED, T0))  # late delivery of an older event
    assert status.state is S.DOWNLOADING
    failed = event("a", S.FAILED, T0 + timedelta(seconds=2), last_error="timeout")
    status.follow(failed)
    assert status.state is S.FAILED and status.last_error == "timeout"
    assert status.as_event().message == "timeout"


async def test_other_replicas_come_from_events_and_this_one_from_its_manager() -> None:
    bus = EventBus()
    view = ClusterView("me", bus, local, {}, store=None, heartbeat_seconds=60)
    bus.publish(event("a", S.DOWNLOADING, T0, model_bytes_done=3, model_bytes_total=9))
    bus.publish(event("me", S.READY, T0))  # our own events do not override the manager's truth
    replicas = view.replicas(MODEL)
    assert [(r.replica, r.state) for r in replicas] == [("me", S.NOT_DOWNLOADED), ("a", S.DOWNLOADING)]
    assert replicas[1].bytes_done == 3 and view.replicas("other") == []


async def test_the_store_fills_in_replicas_started_after_their_events_and_silent_ones_drop_out() -> None:
    bus, store = EventBus(), FakeStore()
    store.rows = [ModelStatus(name=MODEL, backend="", dimensions=None, replica="b", state=S.READY, updated_at=T0)]
    view = ClusterView("me", bus, local, {}, store=store, heartbeat_seconds=0.05)
    await view.start()
    try:
        assert store.beats and store.beats[0] == "me"
        assert [(r.replica, r.state) for r in view.replicas(MODEL)] == [("me", S.NOT_DOWNLOADED), ("b", S.READY)]
        bus.publish(event("b", S.QUEUED, T0 - timedelta(seconds=5)))  # older than the row: ignored
        assert view.replicas(MODEL)[1].state is S.READY
        store.rows = []  # b stops heart-beating
        for _ in range(100):
            if len(view.replicas(MODEL)) == 1:
                break
            await asyncio.sleep(0.02)
        assert [r.replica for r in view.replicas(MODEL)] == ["me"]
    finally:
        await view.close()
    assert store.forgotten == ["me"]


async def test_after_a_database_outage_this_replica_saves_its_states_again() -> None:
    store = FakeStore()
    store.down = True
    view = ClusterView("me", EventBus(), lambda: local(S.READY), {}, store=store, heartbeat_seconds=60)
    await view.refresh()  # fails: nothing saved, nothing raised
    assert store.saved == [] and view.replicas(MODEL)[0].state is S.READY
    store.down = False
    await view.refresh()
    assert [(s.replica, s.state) for s in store.saved] == [("me", S.READY)]
    await view.refresh()  # once is enough
    assert len(store.saved) == 1


class SlowStore(FakeStore):
    """A database that takes longer than the first beat waits (a busy machine), answering later."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = asyncio.Event()

    async def heartbeat(self, replica: str) -> None:
        if not self.slow.is_set():
            self.slow.set()
            await asyncio.Event().wait()  # no answer: start()'s timeout cancels it
        await super().heartbeat(replica)


def captured(level: str = "DEBUG") -> tuple[list[tuple[str, str]], int]:
    from loguru import logger

    records: list[tuple[str, str]] = []
    sink = logger.add(lambda m: records.append((m.record["level"].name, m.record["message"])), level=level)
    return records, sink


async def test_a_slow_first_heartbeat_is_no_warning(monkeypatch) -> None:
    from loguru import logger

    import app.services.replicas as replicas

    monkeypatch.setattr(replicas, "FIRST_REFRESH_TIMEOUT_SECONDS", 0.05)
    store = SlowStore()
    view = ClusterView("me", EventBus(), local, {}, store=store, heartbeat_seconds=60)
    records, sink = captured()
    try:
        await view.start()
        assert store.slow.is_set() and store.beats == []  # it did time out
        await view.refresh()  # the next beat answers
        assert store.beats == ["me"]
    finally:
        logger.remove(sink)
        await view.close()
    assert [level for level, _ in records if level in ("WARNING", "ERROR")] == [], records
    [first] = [message for level, message in records if level == "INFO"]
    assert "first replica heartbeat took over 0.05 s" in first and "starting anyway" in first


async def test_only_beats_failing_in_a_row_warn_with_what_it_means_and_what_to_do() -> None:
    from loguru import logger

    store = FakeStore()
    store.down = True
    view = ClusterView("me", EventBus(), local, {}, store=store, heartbeat_seconds=60)
    records, sink = captured()
    try:
        for _ in range(2):
            await view.refresh()
        assert [m for level, m in records if level == "WARNING"] == []  # one or two missed beats: routine
        await view.refresh()
        [warning] = [m for level, m in records if level == "WARNING"]
        assert "failed 3 times in a row" in warning and "PostgreSQL is down" in warning
        assert "treat this one as gone" in warning and "CITADEL_DATABASE_URL" in warning and "citadel doctor" in warning
        await view.refresh()  # still down: no new warning
        assert len([m for level, m in records if level == "WARNING"]) == 1
        store.down = False
        await view.refresh()
        assert any(level == "INFO" and "answered again after 4 missed beats" in m for level, m in records), records
        store.down = True
        await view.refresh()  # a fresh count: one miss is no warning
        assert len([m for level, m in records if level == "WARNING"]) == 1
    finally:
        logger.remove(sink)
