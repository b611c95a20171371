"""Pure pieces of the hub client: error classification, header parsing, snapshot totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from app.downloads.errors import (
    CacheNotWritable,
    HubHTTPError,
    InsufficientDisk,
    IntegrityError,
    OfflineMode,
)
from app.downloads.hub import RemoteFile, RepoSnapshot, _etag, _retry_after
from app.errors import CitadelError


@pytest.mark.parametrize(
    "status,retryable", [(500, True), (503, True), (429, True), (408, True), (404, False), (401, False), (403, False)]
)
def test_http_errors_are_retryable_only_when_waiting_can_help(status: int, retryable: bool) -> None:
    error = HubHTTPError("x", status)
    assert error.retryable is retryable
    assert error.reason == f"http_{status}"


def test_local_problems_are_not_retried_and_integrity_problems_are() -> None:
    assert not OfflineMode("x").retryable
    assert not CacheNotWritable("x").retryable
    assert not InsufficientDisk("x").retryable
    assert IntegrityError("x", "hash_mismatch").retryable


def test_download_errors_are_citadel_errors_with_their_reason() -> None:
    error = InsufficientDisk("no room")
    assert isinstance(error, CitadelError)
    assert error.to_extensions() == {"code": "DEPENDENCY_UNAVAILABLE", "reason": "insufficient_disk"}


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 100 < (_retry_after(later) or 0) <= 120


def test_etag_quotes_and_weak_prefix_are_stripped() -> None:
    assert _etag('W/"abc"') == "abc"
    assert _etag('"abc"') == "abc"
    assert _etag(None) is None


def test_snapshot_total_is_unknown_when_one_size_is() -> None:
    known = RepoSnapshot("r", "main", "c", (RemoteFile("a", 3), RemoteFile("b", 4)))
    unknown = RepoSnapshot("r", "main", "c", (RemoteFile("a", 3), RemoteFile("b")))
    assert known.total_bytes == 7
    assert unknown.total_bytes is None
