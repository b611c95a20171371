"""Child and leftover server processes: find them by binary and working directory, stop them in
order, and read the tail of their log."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
from loguru import logger

from app.errors import DependencyUnavailable

_LOG_TAIL_CHARS = 3_000


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


def end_leftovers(kind: str, exe: Path, cwd: Path, graceful: int) -> None:
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


def stop_child(proc: subprocess.Popen[bytes], graceful: list[tuple[int, float]]) -> None:
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


def log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
    except OSError:
        return ""


def server_env() -> dict[str, str]:
    # PG* variables of the caller's shell must not redirect the embedded server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env
