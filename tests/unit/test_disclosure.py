"""What a caller who is not ADMIN may read of errors and dependencies: no path, URL or address."""

from __future__ import annotations

import pytest

from app.domain.models import DownloadEvent, ModelState
from app.services.health import DependencyStatus, Disclosure, HealthReport, without_paths


@pytest.mark.parametrize(
    "text,shown",
    [
        ("model 'local/x': /srv/data/nowhere/model is not a model directory",
         "model 'local/x': <path> is not a model directory"),
        ("FileNotFoundError: [Errno 2] No such file or directory: '/srv/c/m.bin'",
         "FileNotFoundError: [Errno 2] No such file or directory: '<path>'"),
        ("GET https://user:pw@hub.example/api/models?x=1 failed: 404", "GET <url> failed: 404"),
        ("redis://:secret@10.0.0.1:6379/0 refused", "<url> refused"),
        (r"C:\Users\me\citadel\models is full", "<path> is full"),
        ("~/citadel/models is full", "<path> is full"),
        ("attempt 1/3 failed and/or timed out", "attempt 1/3 failed and/or timed out"),  # not paths
    ],
)  # fmt: skip
def test_paths_and_urls_are_taken_out(text, shown):
    assert without_paths(text) == shown


def test_a_known_directory_goes_whole_even_with_a_space_in_it():
    text = "checking cached files in /home/my user/citadel data/models/m"
    assert without_paths(text, ["/home/my user/citadel data"]) == "checking cached files in <path>"
    assert "user" in without_paths(text)  # without the hint the space ends the path: why it is given


def test_admins_see_everything_others_no_addresses_or_paths():
    report = HealthReport("degraded", [
        DependencyStatus("postgres", True, 1.0, "postgresql://citadel@db.internal:5432/citadel"),
        DependencyStatus("redis", False, None, "ConnectionError: Error connecting to redis://cache.internal:6379"),
    ])  # fmt: skip
    assert Disclosure(full=True).report(report) is report
    shown = Disclosure(full=False).report(report)
    assert [(d.name, d.ok, d.detail) for d in shown.dependencies] == [
        ("postgres", True, None),
        ("redis", False, "ConnectionError: Error connecting to <url>"),
    ]
    event = DownloadEvent("m", ModelState.FAILED, 3, 3, message="no space in /data/models", last_error="/data/models full")
    hidden = Disclosure(full=False, directories=("/data",)).errors(event)
    assert (hidden.message, hidden.last_error, hidden.model) == ("no space in <path>", "<path> full", "m")
    assert Disclosure(full=True).errors(event) is event
