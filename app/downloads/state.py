"""The states a model goes through on its way to serving, and which moves between them are legal."""

from __future__ import annotations

import enum


class ModelState(str, enum.Enum):
    NOT_DOWNLOADED = "NOT_DOWNLOADED"
    QUEUED = "QUEUED"
    DOWNLOADING = "DOWNLOADING"
    RETRYING = "RETRYING"
    VERIFYING = "VERIFYING"
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"


S = ModelState

# A cached model goes QUEUED -> VERIFYING -> LOADING without downloading; a broken cache found while
# verifying or loading goes back to DOWNLOADING (or RETRYING) to be fetched again.
TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    S.NOT_DOWNLOADED: frozenset({S.QUEUED}),
    S.QUEUED: frozenset({S.DOWNLOADING, S.VERIFYING, S.LOADING, S.FAILED}),
    S.DOWNLOADING: frozenset({S.VERIFYING, S.RETRYING, S.FAILED}),
    S.RETRYING: frozenset({S.DOWNLOADING, S.FAILED}),
    S.VERIFYING: frozenset({S.DOWNLOADING, S.LOADING, S.RETRYING, S.FAILED}),
    S.LOADING: frozenset({S.READY, S.DOWNLOADING, S.RETRYING, S.FAILED}),
    S.READY: frozenset({S.QUEUED}),
    S.FAILED: frozenset({S.QUEUED}),
}

# States in which a preparation task is running; a new request joins it instead of starting another.
BUSY = frozenset({S.QUEUED, S.DOWNLOADING, S.RETRYING, S.VERIFYING, S.LOADING})


def can_move(current: ModelState, new: ModelState) -> bool:
    return new in TRANSITIONS[current]
