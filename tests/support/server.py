"""Run the real `citadel serve` in a subprocess and talk to it over real HTTP/WebSocket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
# Server logs and screenshots, one folder per pytest-xdist worker (their servers share names).
ARTIFACTS = ROOT / "test-artifacts" / os.environ.get("PYTEST_XDIST_WORKER", "main")


def artifact_path(name: str) -> Path:
    """A file in ARTIFACTS (a screenshot), the folder created."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    # What runs and where; by default this checkout's `citadel serve`.
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "app", "serve"])
    cwd: Path = ROOT
    # Ctrl-C as a terminal sends it (to the whole process group) rather than to the server only.
    interrupt_group: bool = False
    process: subprocess.Popen | None = None
    _log: Any = None
    _http: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        """The tests' HTTP client, built once: every httpx.post() builds a client and its SSL context
        (about 18 ms of CPU, of no use over plain-http loopback). Without keep-alive, so each request
        is a connection of its own, as with httpx.post()."""
        if self._http is None:
            self._http = httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0))
        return self._http

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def start(self, wait_ready: bool = True, timeout: float = 180.0) -> "LiveServer":
        env = {**os.environ, **self.env, "CITADEL_SERVER__PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)  # test-artifacts/<worker>/ on its first server
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so Ctrl-C (SIGINT) reaches only the server
        )
        self.wait_for("/readyz" if wait_ready else "/healthz", timeout)
        return self

    def wait_for(self, path: str, timeout: float) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                last = self.http.get(self.url + path, timeout=5)
                if last.status_code == 200:
                    return last
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"{path} not ready after {timeout}s (last: {last}):\n{self.log_tail()}")

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 120) -> dict[str, Any]:
        response = self.http.post(self.url + "/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout)
        assert response.status_code == 200, response.text
        return response.json()

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True) if self.process else []
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 60.0) -> int:
        """Ctrl-C, as an operator would; returns the exit code."""
        if not self.process or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        if self.interrupt_group:
            os.killpg(self.process.pid, signal.SIGINT)
        else:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self._log:
            self._log.close()
        return code

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def processes_mentioning(*paths: Path) -> list[psutil.Process]:
    """Every process whose command line or working directory mentions one of the paths."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(str(p) in text for p in paths):
            found.append(proc)
    return found
