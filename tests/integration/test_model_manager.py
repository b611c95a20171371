"""ModelManager end to end: a real hub-protocol server with faults, the real cache, real loaders."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from app.domain.models import DownloadEvent

from app.adapters.events import EventBus
from app.downloads.cache import MANIFEST, ModelCache, sha256_of
from app.domain.models import ModelState
from app.errors import ModelUnavailable
from app.domain.models import ModelStatus
from app.services.models import ModelManager
from app.domain.models import FALLBACK_MODEL, ModelSpec
from app.settings import Settings
from tests.support.fake_hub import (  # noqa: F401  (fixtures: hub, fresh_hub)
    HUB_MODEL,
    SMALL_FILES,
    FakeHub,
    fresh_hub,
    hub,
    hub_settings,
    load_configs,
    timeline,
    unused_port,
)

S = ModelState


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="DEBUG")
    yield lines
    logger.remove(sink)


async def load_sentence_transformer(spec: ModelSpec, directory: Path) -> str:
    """A real load: sentence-transformers from the directory, and one sentence through it."""

    def load() -> str:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(directory), device="cpu")
        vectors = model.encode(["a model that actually loads"])
        if vectors.shape != (1, spec.dimensions):
            raise ValueError(f"got vectors of shape {vectors.shape}")
        return "cpu"

    return await asyncio.to_thread(load)


class Recorder:
    """Everything the manager publishes and persists."""

    def __init__(self, bus: EventBus) -> None:
        self.subscription = bus.subscribe()
        self.persisted: list[ModelStatus] = []

    async def persist(self, status: ModelStatus) -> None:
        self.persisted.append(status)

    def drain(self) -> list[DownloadEvent]:
        events = []
        while self.subscription.pending():
            events.append(self.subscription._queue.popleft())
        return events


def state_events(events: list[DownloadEvent], model: str = HUB_MODEL) -> list[tuple[ModelState, int]]:
    return [(e.state, e.attempt) for e in events if e.model == model and e.kind == "state"]


def make(settings: Settings, loader: Any = load_configs, persist: bool = True) -> tuple[ModelManager, Recorder]:
    bus = EventBus(queue_size=100_000)
    recorder = Recorder(bus)
    return ModelManager(settings, loader, bus, recorder.persist if persist else None), recorder


# -- a clean download -------------------------------------------------------------------------


async def test_download_publishes_every_step_and_persists_the_result(
    hub: FakeHub, tmp_path: Path, log_lines: list[str]
) -> None:
    manager, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES))
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    events = rec.drain()

    total = hub.size_of(SMALL_FILES)
    assert (status.state, status.attempts, status.bytes_done, status.bytes_total, status.device) == (
        S.READY,
        1,
        total,
        total,
        "cpu",
    )
    assert timeline(events) == ["QUEUED", "DOWNLOADING", "progress", "VERIFYING", "LOADING", "READY"]
    assert state_events(events) == [(S.QUEUED, 0), (S.DOWNLOADING, 1), (S.VERIFYING, 1), (S.LOADING, 1), (S.READY, 1)]
    ticks = [e for e in events if e.kind == "progress"]
    last_per_file = {e.file: (e.bytes_done, e.bytes_total, e.percent) for e in ticks}
    assert last_per_file == {
        name: (len(f.data), len(f.data), 100.0) for name, f in hub.files.items() if name in last_per_file
    }
    assert len(last_per_file) == 10
    assert [e.model_bytes_done for e in ticks] == sorted(e.model_bytes_done for e in ticks)
    assert ticks[-1].model_bytes_done == ticks[-1].model_bytes_total == total
    assert f"Downloading {HUB_MODEL}... (Attempt 1/3)" in log_lines
    assert rec.persisted[-1].state is S.READY and rec.persisted[-1].attempts == 1
    assert {s.state for s in rec.persisted} >= {S.QUEUED, S.DOWNLOADING, S.READY}


# -- faults, retries and resume ---------------------------------------------------------------


async def test_http_500_is_retried_up_to_the_attempt_limit(hub: FakeHub, tmp_path: Path, log_lines: list[str]) -> None:
    hub.add_fault("status", target="api", status=500, times=2)
    manager, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES))
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    events = rec.drain()
    assert (status.state, status.attempts, status.last_error) == (S.READY, 3, None)
    assert state_events(events) == [
        (S.QUEUED, 0),
        (S.DOWNLOADING, 1), (S.RETRYING, 1),
        (S.DOWNLOADING, 2), (S.RETRYING, 2),
        (S.DOWNLOADING, 3), (S.VERIFYING, 3), (S.LOADING, 3), (S.READY, 3),
    ]  # fmt: skip
    retrying = [e.message or "" for e in events if e.state is S.RETRYING]
    assert all(m.startswith("http_500: ") and "HTTP 500" in m for m in retrying)
    assert [line for line in log_lines if line.startswith("Downloading ")] == [
        f"Downloading {HUB_MODEL}... (Attempt {n}/3)" for n in (1, 2, 3)
    ]


async def test_429_waits_for_retry_after(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_fault("status", file="vocab.txt", status=429, retry_after="1")
    manager, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES))
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    retrying = [e for e in rec.drain() if e.state is S.RETRYING]
    assert (status.state, status.attempts) == (S.READY, 2)
    assert len(retrying) == 1 and retrying[0].message.startswith("http_429: ")  # type: ignore[union-attr]
    assert retrying[0].message.endswith("retrying in 1s")  # type: ignore[union-attr]


async def test_dropped_connection_resumes_on_the_next_attempt(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_fault("drop", file="tokenizer.json", at_byte=200_000)
    manager, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES))
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    events = rec.drain()
    assert (status.state, status.attempts) == (S.READY, 2)
    assert [e.message.split(":")[0] for e in events if e.state is S.RETRYING] == ["connection_dropped"]  # type: ignore[union-attr]
    first, second = hub.file_requests("tokenizer.json")
    assert first.range is None and second.range is not None
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert resumed_at > 0
    # The second attempt's progress for the file starts where the first left off, not at 0.
    second_attempt = [e.bytes_done for e in events if e.file == "tokenizer.json" and e.attempt == 2]
    assert second_attempt[0] == resumed_at and min(second_attempt) == resumed_at
    assert len(hub.file_requests("vocab.txt")) == 1  # finished files are not fetched again


async def test_truncated_body_is_resumed(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_fault("truncate", file="vocab.txt", at_byte=50_000)
    manager, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES))
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    assert (status.state, status.attempts) == (S.READY, 2)
    assert [e.message.split(":")[0] for e in rec.drain() if e.state is S.RETRYING] == ["truncated"]  # type: ignore[union-attr]
    assert [r.range for r in hub.file_requests("vocab.txt")] == [None, "bytes=50000-"]


async def test_corrupted_file_is_discarded_and_fetched_again(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_fault("corrupt", file="tokenizer.json")
    settings = hub_settings(tmp_path, hub.url, files=SMALL_FILES)
    manager, rec = make(settings)
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    assert (status.state, status.attempts) == (S.READY, 2)
    assert [e.message.split(":")[0] for e in rec.drain() if e.state is S.RETRYING] == ["hash_mismatch"]  # type: ignore[union-attr]
    assert [r.range for r in hub.file_requests("tokenizer.json")] == [None, None]
    assert ModelCache(settings.model_cache_dir).verify(settings.models[HUB_MODEL]) == []


async def test_slow_server_times_out_and_the_retry_succeeds(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_fault("slow", file="vocab.txt", delay=5.0)
    manager, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES, downloads={"timeout_seconds": 0.3}))
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    assert (status.state, status.attempts) == (S.READY, 2)
    assert [e.message.split(":")[0] for e in rec.drain() if e.state is S.RETRYING] == ["timeout"]  # type: ignore[union-attr]


# -- failure and fallback ---------------------------------------------------------------------


async def test_after_all_attempts_the_fallback_serves_as_default(
    hub: FakeHub, tmp_path: Path, log_lines: list[str]
) -> None:
    hub.add_fault("status", target="api", status=500, times=100)
    manager, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES), loader=load_sentence_transformer)
    failed = await manager.ensure(HUB_MODEL)
    fallback = await manager.ensure(FALLBACK_MODEL)
    events = rec.drain()
    try:
        assert (failed.state, failed.attempts, failed.reason) == (S.FAILED, 3, "http_500")
        assert "HTTP 500" in (failed.last_error or "")
        assert (fallback.state, fallback.fallback_for) == (S.READY, HUB_MODEL)
        assert manager.effective_default == FALLBACK_MODEL
        assert any("using fallback" in line for line in log_lines)
        assert (await manager.ready_spec(None)).name == FALLBACK_MODEL
        with pytest.raises(ModelUnavailable) as caught:
            await manager.ready_spec(HUB_MODEL)
        ext = caught.value.to_extensions()
        assert (ext["state"], ext["attempt"], ext["maxAttempts"]) == ("FAILED", 3, 3)
        assert "HTTP 500" in ext["lastError"]
        assert "failed after 3 attempt(s)" in caught.value.message
        assert state_events(events)[-1] == (S.FAILED, 3)
        assert timeline(events, FALLBACK_MODEL) == ["NOT_DOWNLOADED", "QUEUED", "LOADING", "READY"]
        assert [e.message for e in events if e.model == FALLBACK_MODEL][0] == f"standing in for {HUB_MODEL}"
    finally:
        await manager.close()


async def test_unreachable_hub_fails_over_to_the_fallback(tmp_path: Path) -> None:
    manager, rec = make(hub_settings(tmp_path, f"http://127.0.0.1:{unused_port()}", files=SMALL_FILES))
    await manager.start()
    spec = await manager.ready_spec(None, wait=True)
    await manager.close()
    failed = manager.status(HUB_MODEL)
    assert spec.name == FALLBACK_MODEL
    assert (failed.state, failed.attempts, failed.reason) == (S.FAILED, 3, "unreachable")
    assert "cannot connect" in (failed.last_error or "")


async def test_offline_and_not_cached_fails_at_once_without_any_request(hub: FakeHub, tmp_path: Path) -> None:
    manager, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES, hf_offline=True))
    status = await manager.ensure(HUB_MODEL)
    fallback = await manager.ensure(FALLBACK_MODEL)
    await manager.close()
    assert (status.state, status.attempts, status.reason) == (S.FAILED, 0, "offline")
    assert "HF_HUB_OFFLINE" in (status.last_error or "") and "citadel models pull" in (status.last_error or "")
    assert fallback.state is S.READY and manager.effective_default == FALLBACK_MODEL
    assert state_events(rec.drain()) == [(S.QUEUED, 0), (S.FAILED, 0)]
    assert hub.requests == []


async def test_offline_with_the_model_cached_loads_it_without_any_request(hub: FakeHub, tmp_path: Path) -> None:
    online, _ = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES))
    assert (await online.ensure(HUB_MODEL)).state is S.READY
    await online.close()
    hub.requests.clear()

    offline, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES, hf_offline=True))
    status = await offline.ensure(HUB_MODEL)
    await offline.close()
    assert (status.state, status.attempts) == (S.READY, 0)
    assert timeline(rec.drain()) == ["QUEUED", "VERIFYING", "LOADING", "READY"]
    assert hub.requests == []


async def test_unwritable_cache_fails_without_retrying_and_says_what_to_set(hub: FakeHub, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    manager, _ = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES, cache_dir=blocker / "models"))
    status = await manager.ensure(HUB_MODEL)
    fallback = await manager.ensure(FALLBACK_MODEL)
    await manager.close()
    assert (status.state, status.attempts, status.reason) == (S.FAILED, 1, "cache_not_writable")
    assert str(blocker / "models") in (status.last_error or "") and "CITADEL_CACHE_DIR" in (status.last_error or "")
    assert fallback.state is S.READY
    assert hub.requests == []


async def test_too_little_disk_fails_before_fetching_any_file(hub: FakeHub, tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    manager, _ = make(
        hub_settings(tmp_path, hub.url, files=SMALL_FILES, downloads={"min_free_disk_mb": free_mb + 1024})
    )
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    assert (status.state, status.attempts, status.reason) == (S.FAILED, 1, "insufficient_disk")
    assert "not enough free disk" in (status.last_error or "")
    assert [r for r in hub.requests if r.file] == []


async def test_a_failed_model_can_be_retried(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_fault("status", target="api", status=503, times=3)
    manager, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES))
    assert (await manager.ensure(HUB_MODEL)).state is S.FAILED
    await manager.ensure(FALLBACK_MODEL)
    retried = await manager.ensure(HUB_MODEL)
    events = rec.drain()
    await manager.close()
    assert (retried.state, retried.attempts, retried.last_error) == (S.READY, 1, None)
    assert manager.effective_default == HUB_MODEL
    assert manager.status(FALLBACK_MODEL).fallback_for is None
    assert state_events(events)[-6:] == [
        (S.FAILED, 3),
        (S.QUEUED, 0),
        (S.DOWNLOADING, 1),
        (S.VERIFYING, 1),
        (S.LOADING, 1),
        (S.READY, 1),
    ]


# -- concurrency and startup ------------------------------------------------------------------


async def test_two_concurrent_requests_share_one_download(hub: FakeHub, tmp_path: Path) -> None:
    manager, rec = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES))
    first, second = await asyncio.gather(manager.ensure(HUB_MODEL), manager.ensure(HUB_MODEL))
    await manager.close()
    assert first == second and first.state is S.READY
    listings = [r for r in hub.requests if r.path.startswith("/api/")]
    assert len(listings) == 1
    assert all(len(hub.file_requests(name)) == 1 for name in {r.file for r in hub.requests if r.file})
    assert [s for s, _ in state_events(rec.drain())].count(S.DOWNLOADING) == 1


async def test_startup_does_not_wait_and_requests_get_progress(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_fault("slow", file="vocab.txt", delay=0.5)
    manager, _ = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES))
    await manager.start()
    assert manager.status(HUB_MODEL).state is S.QUEUED  # start() returned before any work was done
    with pytest.raises(ModelUnavailable) as caught:
        await manager.ready_spec(None)
    ext = caught.value.to_extensions()
    assert ext["code"] == "MODEL_UNAVAILABLE" and ext["state"] in {"QUEUED", "DOWNLOADING"} and ext["maxAttempts"] == 3
    assert set(ext) >= {"attempt", "progress", "bytesDone", "bytesTotal", "lastError"}
    spec = await manager.ready_spec(None, wait=True)
    await manager.close()
    assert spec.name == HUB_MODEL


async def test_a_model_never_requested_starts_downloading_on_first_use(hub: FakeHub, tmp_path: Path) -> None:
    manager, _ = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES, load_models_at_startup=False))
    await manager.start()
    assert manager.status(HUB_MODEL).state is S.NOT_DOWNLOADED
    with pytest.raises(ModelUnavailable) as caught:
        await manager.ready_spec(HUB_MODEL)
    assert caught.value.extensions["state"] == "QUEUED"
    assert (await manager.ensure(HUB_MODEL)).state is S.READY
    await manager.close()


# -- who may make the server fetch a model -------------------------------------------------------


async def test_a_caller_that_may_not_download_gets_model_unavailable_and_the_hub_sees_nothing(
    hub: FakeHub, tmp_path: Path
) -> None:
    settings = hub_settings(
        tmp_path, hub.url, files=SMALL_FILES, default_model=FALLBACK_MODEL, load_models_at_startup=False
    )
    manager, _ = make(settings)
    await manager.start()
    with pytest.raises(ModelUnavailable) as caught:
        await manager.ready_spec(HUB_MODEL, wait=True, may_download=False)
    ext = caught.value.to_extensions()
    assert (ext["code"], ext["model"], ext["state"]) == ("MODEL_UNAVAILABLE", HUB_MODEL, "NOT_DOWNLOADED")
    assert "only an ADMIN key may start its download" in caught.value.message
    assert manager.status(HUB_MODEL).state is S.NOT_DOWNLOADED and hub.requests == []
    # One that may (an ADMIN key) downloads it; then it serves every caller.
    assert (await manager.ready_spec(HUB_MODEL, wait=True)).name == HUB_MODEL
    assert hub.requests != []
    assert (await manager.ready_spec(HUB_MODEL, may_download=False)).name == HUB_MODEL
    await manager.close()


async def test_a_cached_model_loads_for_a_caller_that_may_not_download(hub: FakeHub, tmp_path: Path) -> None:
    online, _ = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES))
    assert (await online.ensure(HUB_MODEL)).state is S.READY
    await online.close()
    hub.requests.clear()

    settings = hub_settings(
        tmp_path, hub.url, files=SMALL_FILES, default_model=FALLBACK_MODEL, load_models_at_startup=False
    )
    restarted, _ = make(settings)
    spec = await restarted.ready_spec(HUB_MODEL, wait=True, may_download=False)
    await restarted.close()
    assert spec.name == HUB_MODEL and hub.requests == []


async def test_the_default_model_is_fetched_on_first_use_whoever_asks(hub: FakeHub, tmp_path: Path) -> None:
    manager, _ = make(hub_settings(tmp_path, hub.url, files=SMALL_FILES, load_models_at_startup=False))
    await manager.start()
    spec = await manager.ready_spec(None, wait=True, may_download=False)
    await manager.close()
    assert spec.name == HUB_MODEL and hub.requests != []


# -- a broken cache is repaired ---------------------------------------------------------------


async def test_corrupted_cached_model_is_purged_and_fetched_again_at_start(hub: FakeHub, tmp_path: Path) -> None:
    settings = hub_settings(tmp_path, hub.url)  # every file, weights included: a real load
    first, _ = make(settings, loader=load_sentence_transformer)
    assert (await first.ensure(HUB_MODEL)).state is S.READY
    await first.close()
    weights = ModelCache(settings.model_cache_dir).file_path(settings.models[HUB_MODEL], "model.safetensors")
    with weights.open("r+b") as handle:
        handle.seek(10_000_000)
        handle.write(b"\xde\xad\xbe\xef" * 4)
    hub.requests.clear()

    manager, rec = make(settings, loader=load_sentence_transformer)
    await manager.start()
    spec = await manager.ready_spec(None, wait=True)
    await manager.close()
    events = rec.drain()
    assert spec.name == HUB_MODEL
    assert timeline(events) == [
        "QUEUED",
        "VERIFYING",
        "VERIFYING",
        "DOWNLOADING",
        "progress",
        "VERIFYING",
        "LOADING",
        "READY",
    ]
    broken = [e.message or "" for e in events if e.state is S.VERIFYING][1]
    assert broken.startswith("cache broken (model.safetensors: sha256") and "purged" in broken
    assert sha256_of(weights) == hub.files["model.safetensors"].sha256
    assert [r.range for r in hub.file_requests("model.safetensors") if r.path.startswith("/cdn/")] == [None]


async def test_cached_files_that_do_not_load_are_purged_and_fetched_again(hub: FakeHub, tmp_path: Path) -> None:
    settings = hub_settings(tmp_path, hub.url, files=SMALL_FILES)
    spec = settings.models[HUB_MODEL]
    first, _ = make(settings)
    await first.ensure(HUB_MODEL)
    await first.close()
    # Sizes and hashes agree with the manifest, yet the file does not parse: only loading finds it.
    cache = ModelCache(settings.model_cache_dir)
    config = cache.file_path(spec, "config.json")
    config.write_text("{ not json")
    manifest_path = cache.model_dir(spec) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        if entry["name"] == "config.json":
            entry.update(size=config.stat().st_size, sha256=sha256_of(config))
    manifest_path.write_text(json.dumps(manifest))
    assert cache.verify(spec) == []

    manager, rec = make(settings)
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    assert (status.state, status.attempts) == (S.READY, 1)
    assert timeline(rec.drain()) == [
        "QUEUED",
        "VERIFYING",
        "LOADING",
        "DOWNLOADING",
        "progress",
        "VERIFYING",
        "LOADING",
        "READY",
    ]
    assert json.loads(config.read_text())  # the real config is back


async def test_a_model_that_never_loads_fails_with_the_loader_error(hub: FakeHub, tmp_path: Path) -> None:
    async def broken_loader(spec: ModelSpec, directory: Path) -> None:
        raise RuntimeError("unsupported architecture")

    settings = hub_settings(tmp_path, hub.url, files=SMALL_FILES)
    manager, _ = make(settings, loader=broken_loader)
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    assert (status.state, status.attempts, status.reason) == (S.FAILED, 3, "load_failed")
    assert "unsupported architecture" in (status.last_error or "")
    assert not ModelCache(settings.model_cache_dir).model_dir(settings.models[HUB_MODEL]).exists()


async def test_a_failing_status_store_does_not_stop_the_download(hub: FakeHub, tmp_path: Path) -> None:
    calls = 0

    async def persist(status: ModelStatus) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("database is down")

    manager = ModelManager(hub_settings(tmp_path, hub.url, files=SMALL_FILES), load_configs, EventBus(), persist)
    status = await manager.ensure(HUB_MODEL)
    await manager.close()
    assert status.state is S.READY and calls > 0
