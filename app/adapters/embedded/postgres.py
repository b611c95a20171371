"""The embedded PostgreSQL: pgserver's binaries, a cluster under the data dir, a unix socket only."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

from loguru import logger

from app.adapters.embedded.accounts import DataDirInUse, grant_traversal, private_dir, service_account, socket_dir
from app.adapters.embedded.base import EmbeddedServer
from app.adapters.embedded.processes import end_leftovers, server_env, stop_child
from app.errors import DependencyUnavailable


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except PermissionError:  # alive, another user's (the server's account when run as root)
        return True
    except (ValueError, ProcessLookupError):
        return False
    return True


def postgres_bin_dir() -> Path:
    # find_spec does not run pgserver/__init__, whose import-time setup we do not use.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyUnavailable("the pgserver package (embedded PostgreSQL binaries) is not installed")
    return Path(spec.submodule_search_locations[0]).resolve() / "pginstall" / "bin"


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL (pgserver's build) in `<data_dir>/postgres/data`, reachable only through a unix
    socket in a 0700 directory: trust authentication is safe because nobody else can connect.

    Run as root, the server runs as the system user `run_as` (created when missing), which owns
    the data and socket directories; the data dir's parents get o+x (traverse, not list) so that
    user can reach them. The URL's database is `postgres`, user `postgres`.
    """

    kind = "postgres"
    port = 5432  # names the socket file only; there is no TCP listener

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        run_as: str = "citadel-pg",
        start_timeout: float = 120.0,
    ) -> None:
        super().__init__(data_dir, start_timeout)
        self.pgdata = self.root / "data"
        self.run_as = run_as
        self.socket_dir = socket_dir(self.root, "pg", f".s.PGSQL.{self.port}.lock")

    @property
    def runtime_dir(self) -> Path:
        return self.socket_dir

    def _url(self) -> str:
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://postgres@/postgres?host={host}&port={self.port}"

    def url_of_owner(self, busy: DataDirInUse) -> str:
        """The URL of the PostgreSQL that the process owning this data dir runs (`citadel serve`,
        as `busy` found), so a command can work beside it instead of starting its own; its
        postmaster.pid names the socket and says whether it is ready. DependencyUnavailable,
        saying what to do, when it cannot be reached."""
        owner = f"the Citadel process with pid {busy.holder}"
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except PermissionError:
            raise DependencyUnavailable(
                f"{self.root.parent} is in use by {owner}, and this user cannot reach its PostgreSQL: "
                "run this command as the user that runs the server"
            ) from None
        except OSError:
            lines = []
        if len(lines) < 8 or lines[7].strip() != "ready" or not _alive(lines[0].strip()):
            raise DependencyUnavailable(
                f"{self.root.parent} is in use by {owner}, whose embedded PostgreSQL is not running and ready "
                "(it is starting or stopping): try again once `citadel serve` answers /readyz, or stop that process"
            )
        host = quote(lines[4].strip(), safe="/")
        return f"postgresql://postgres@/postgres?host={host}&port={lines[3].strip()}"

    def _prepare(self) -> None:
        bin_dir = postgres_bin_dir()
        if os.geteuid() == 0:
            self._account = service_account(self.run_as)
            grant_traversal(self.root)
            grant_traversal(bin_dir.parent)
        self._init_cluster(bin_dir)
        private_dir(self.pgdata, self._account)
        private_dir(self.socket_dir, self._account)
        end_leftovers(self.kind, bin_dir / "postgres", self.pgdata, signal.SIGINT)
        # Nothing runs in pgdata now, so these are stale; a pid file naming a recycled pid would
        # otherwise make PostgreSQL refuse to start.
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
        for stale in self.socket_dir.glob(f".s.PGSQL.{self.port}*"):
            stale.unlink(missing_ok=True)

    def _init_cluster(self, bin_dir: Path) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise DependencyUnavailable(f"{self.pgdata} is not empty and is not a PostgreSQL data directory")
            self.pgdata.rmdir()
        # initdb into a staging dir renamed at the end, so a run killed halfway never leaves a
        # half-made cluster where the real one belongs.
        staging = self.root / "data.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        private_dir(staging, self._account)
        logger.info("embedded postgres: initialising a new cluster in {}", self.pgdata)
        argv = [str(bin_dir / "initdb"), "-D", str(staging), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--locale=C"]  # fmt: skip
        account = self._account
        try:
            subprocess.run(argv, check=True, capture_output=True, text=True, env=server_env(),
                           timeout=self.start_timeout, user=account.uid if account else None,
                           group=account.gid if account else None,
                           extra_groups=[] if account else None)  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise DependencyUnavailable(f"initdb failed: {(exc.stderr or exc.stdout).strip()}") from exc
        staging.rename(self.pgdata)

    def _command(self) -> list[str]:
        return [
            str(postgres_bin_dir() / "postgres"), "-D", str(self.pgdata),
            "-k", str(self.socket_dir), "-h", "", "-p", str(self.port),
            "-c", "unix_socket_permissions=0700",
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        # What pg_ctl -w checks: the pid file names our child and says "ready".
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return (
            len(lines) >= 8
            and self._proc is not None
            and lines[0].strip() == str(self._proc.pid)
            and lines[7].strip() == "ready"
        )

    def _shutdown(self, proc: subprocess.Popen[bytes]) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown (disconnect clients, checkpoint); SIGQUIT its
        # "immediate" one (crash recovery at the next start).
        stop_child(proc, [(signal.SIGINT, 60.0), (signal.SIGQUIT, 10.0)])
        end_leftovers(self.kind, postgres_bin_dir() / "postgres", self.pgdata, signal.SIGKILL)
