"""A command beside a running `citadel serve`: finding the embedded PostgreSQL the data dir's owner
runs, from the postmaster.pid PostgreSQL writes (no server started here; the end-to-end run is
tests/e2e/test_embedded_defaults.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.adapters.embedded import EmbeddedPostgres
from app.adapters.embedded.accounts import DataDirInUse
from app.errors import DependencyUnavailable


def pid_file(server: EmbeddedPostgres, pid: int, status: str) -> None:
    server.pgdata.mkdir(parents=True)
    lines = [str(pid), str(server.pgdata), "1765000000", "5432", "/tmp/citadel pg", "", "0 0", status]
    (server.pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")


def test_a_ready_server_is_reached_through_the_socket_its_pid_file_names(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path)
    pid_file(server, os.getpid(), "ready")
    url = server.url_of_owner(DataDirInUse(server.root, "4242"))
    assert url == "postgresql://postgres@/postgres?host=/tmp/citadel%20pg&port=5432"


@pytest.mark.parametrize("status", ["starting", "stopping"])
def test_a_server_not_ready_is_no_url_but_what_to_do(tmp_path: Path, status: str) -> None:
    server = EmbeddedPostgres(tmp_path)
    pid_file(server, os.getpid(), status)
    with pytest.raises(DependencyUnavailable, match=r"pid 4242.*not running and ready.*try again") as refused:
        server.url_of_owner(DataDirInUse(server.root, "4242"))
    assert str(tmp_path) in refused.value.message


def test_a_stale_pid_file_or_none_is_not_a_running_server(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path)
    with pytest.raises(DependencyUnavailable, match="not running and ready"):
        server.url_of_owner(DataDirInUse(server.root, "4242"))  # no pid file at all
    pid_file(server, 2**22 + 7, "ready")  # beyond pid_max: no such process
    with pytest.raises(DependencyUnavailable, match="not running and ready"):
        server.url_of_owner(DataDirInUse(server.root, "4242"))
