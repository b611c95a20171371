"""OS accounts and file modes: the unprivileged user PostgreSQL runs as under root, private
directories, socket paths short enough for the kernel, and the data dir's owner lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from app.errors import DependencyUnavailable

_SUN_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


@dataclass(frozen=True)
class Account:
    """The unprivileged user that runs PostgreSQL when Citadel runs as root."""

    name: str
    uid: int
    gid: int


def service_account(name: str) -> Account:
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
    return Account(name, entry.pw_uid, entry.pw_gid)


def grant_traversal(path: Path) -> None:
    """Let other users pass through (not list) `path` and its parents, as PostgreSQL's user must."""
    opened = []
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)
            opened.append(str(directory))
    if opened:
        logger.warning("embedded postgres: granted o+x (traverse only) on {}", opened)


def private_dir(path: Path, account: Account | None) -> None:
    """A 0700 directory owned by the server's user; refuses one that someone else owns."""
    path.mkdir(parents=True, exist_ok=True)
    uid = account.uid if account else os.geteuid()
    if account and path.stat().st_uid != uid:
        os.chown(path, account.uid, account.gid)
    if path.stat().st_uid != uid:
        raise DependencyUnavailable(f"{path} belongs to uid {path.stat().st_uid}, expected {uid}")
    path.chmod(0o700)


def socket_dir(root: Path, kind: str, longest_name: str) -> Path:
    """`<root>/run`, or a per-root directory under /tmp when that path is too long for a socket."""
    preferred = root / "run"
    if len(os.fsencode(preferred / longest_name)) <= _SUN_PATH_MAX:
        return preferred
    digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"citadel-{kind}-{digest}"


class DataDirInUse(DependencyUnavailable):
    """Another process owns this embedded server's directory (and runs the server, or is starting
    or stopping it); `holder` is its pid as it wrote it."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(f"{directory} is in use by another Citadel process (pid {holder})")
        self.directory = directory
        self.holder = holder


def lock_owner(path: Path) -> int:
    """An exclusive flock on `path`, held until closed; the kernel releases it if we die."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DataDirInUse(path.parent, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
