"""The model state machine, ModelStatus and the MODEL_UNAVAILABLE error a request gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.adapters.events import EventBus
from app.domain.models import BUSY, TRANSITIONS, ModelState, can_move
from app.errors import ModelUnavailable, NotFound
from app.domain.models import ModelStatus
from app.services.models import ModelManager
from app.domain.models import BUILTIN_DEFAULT_RERANKER, FALLBACK_MODEL, BUILTIN_DEFAULT_MODEL
from app.settings import Settings

S = ModelState


def test_every_state_has_its_transitions_listed() -> None:
    assert set(TRANSITIONS) == set(ModelState)


@pytest.mark.parametrize(
    "path",
    [
        # a fresh download
        [S.NOT_DOWNLOADED, S.QUEUED, S.DOWNLOADING, S.VERIFYING, S.LOADING, S.READY],
        # two failed attempts, then success
        [
            S.QUEUED,
            S.DOWNLOADING,
            S.RETRYING,
            S.DOWNLOADING,
            S.RETRYING,
            S.DOWNLOADING,
            S.VERIFYING,
            S.LOADING,
            S.READY,
        ],
        # a healthy cache: no download at all
        [S.QUEUED, S.VERIFYING, S.LOADING, S.READY],
        # a broken cache found while verifying, then while loading
        [S.QUEUED, S.VERIFYING, S.DOWNLOADING, S.VERIFYING, S.LOADING, S.DOWNLOADING],
        # a bundled model, and a retry of a failed one
        [S.QUEUED, S.LOADING, S.READY],
        # a shared cache: our load failed, the files another replica fetched again are checked
        [S.QUEUED, S.VERIFYING, S.LOADING, S.VERIFYING, S.LOADING, S.READY],
        [S.QUEUED, S.FAILED, S.QUEUED],
    ],
)
def test_legal_paths(path: list[ModelState]) -> None:
    assert all(can_move(a, b) for a, b in zip(path, path[1:]))


@pytest.mark.parametrize(
    "current,new",
    [
        (S.NOT_DOWNLOADED, S.READY),
        (S.READY, S.DOWNLOADING),
        (S.FAILED, S.READY),
        (S.QUEUED, S.READY),
        (S.RETRYING, S.READY),
    ],
)
def test_illegal_moves(current: ModelState, new: ModelState) -> None:
    assert not can_move(current, new)


def test_busy_states_are_exactly_the_ones_with_work_in_flight() -> None:
    assert BUSY == {S.QUEUED, S.DOWNLOADING, S.RETRYING, S.VERIFYING, S.LOADING}


def test_status_percent() -> None:
    status = ModelStatus(name="m", backend="fastembed", dimensions=384, bytes_done=25, bytes_total=200)
    assert status.percent == 12.5
    assert ModelStatus(name="m", backend="fastembed", dimensions=384).percent is None


async def _never_load(spec: object, path: Path) -> None:
    raise AssertionError("nothing is loaded in these tests")


def manager(tmp_path: Path) -> ModelManager:
    settings = Settings(data_dir=tmp_path, default_model=BUILTIN_DEFAULT_MODEL, load_models_at_startup=False)
    return ModelManager(settings, _never_load, EventBus())


def test_statuses_start_not_downloaded_with_configured_attempts(tmp_path: Path) -> None:
    statuses = {s.name: s for s in manager(tmp_path).statuses()}
    assert set(statuses) == {FALLBACK_MODEL, BUILTIN_DEFAULT_MODEL, BUILTIN_DEFAULT_RERANKER, "BAAI/bge-reranker-base"}
    assert statuses[BUILTIN_DEFAULT_RERANKER].dimensions is None and statuses[FALLBACK_MODEL].dimensions == 384
    assert all(s.state is S.NOT_DOWNLOADED and s.attempts == 0 and s.max_attempts == 3 for s in statuses.values())


def test_status_is_a_copy(tmp_path: Path) -> None:
    models = manager(tmp_path)
    models.status(BUILTIN_DEFAULT_MODEL).state = S.READY
    assert models.status(BUILTIN_DEFAULT_MODEL).state is S.NOT_DOWNLOADED


def test_unknown_model_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        manager(tmp_path).status("no/such-model")


def test_effective_default_is_the_default_until_it_fails(tmp_path: Path) -> None:
    models = manager(tmp_path)
    assert models.effective_default == BUILTIN_DEFAULT_MODEL
    models._statuses[BUILTIN_DEFAULT_MODEL].state = S.DOWNLOADING
    assert models.effective_default == BUILTIN_DEFAULT_MODEL  # still coming: requests wait or get MODEL_UNAVAILABLE
    models._statuses[BUILTIN_DEFAULT_MODEL].state = S.FAILED
    assert models.effective_default == FALLBACK_MODEL


def test_unavailable_error_carries_state_attempt_progress_and_last_error(tmp_path: Path) -> None:
    models = manager(tmp_path)
    status = models._statuses[BUILTIN_DEFAULT_MODEL]
    status.state, status.attempts, status.bytes_done, status.bytes_total = S.DOWNLOADING, 2, 50, 200
    status.last_error = "http_500: boom"
    error = models.unavailable(BUILTIN_DEFAULT_MODEL)
    assert isinstance(error, ModelUnavailable)
    assert error.to_extensions() == {
        "code": "MODEL_UNAVAILABLE",
        "model": BUILTIN_DEFAULT_MODEL,
        "state": "DOWNLOADING",
        "attempt": 2,
        "maxAttempts": 3,
        "progress": 25.0,
        "bytesDone": 50,
        "bytesTotal": 200,
        "lastError": "http_500: boom",
    }
    assert "DOWNLOADING (attempt 2/3, 25%)" in error.message
