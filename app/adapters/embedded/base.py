"""The lifecycle both embedded servers share: own the data dir, prepare, launch, wait until
ready, stop in order; sync and async, as context managers too."""

from __future__ import annotations

import abc
import asyncio
import atexit
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from loguru import logger

from app.adapters.embedded.accounts import Account, lock_owner
from app.adapters.embedded.processes import log_tail, server_env, stop_child
from app.errors import DependencyUnavailable


class EmbeddedServer(abc.ABC):
    kind = ""

    def __init__(self, data_dir: str | os.PathLike[str], start_timeout: float) -> None:
        self.root = Path(data_dir).expanduser().resolve() / self.kind
        self.log_path = self.root / f"{self.kind}.log"
        self.start_timeout = start_timeout
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._account: Account | None = None  # who the server runs as; None: this process's user

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
                self._lock_fd = lock_owner(self.root / ".lock")
            try:
                self._prepare()
                self._launch()
                self._wait_ready()
            except BaseException:
                if self._proc is not None:
                    stop_child(self._proc, [])
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
                env=server_env(),
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
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise DependencyUnavailable(
                    f"embedded {self.kind} not ready after {self.start_timeout}s; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
