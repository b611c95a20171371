"""Progress accounting of a download: bytes per file across attempts, rates, and a throttle so a
fast download does not flood subscribers with ticks."""

from __future__ import annotations

import time

from app.downloads.hub import RepoSnapshot


class Transfer:
    """Byte counts and rates of one model's files, kept across attempts so a resume continues the bar."""

    def __init__(self) -> None:
        self.file_bytes: dict[str, int] = {}
        self.file_sizes: dict[str, int | None] = {}
        self.total: int | None = None
        self._last: dict[str, tuple[float, int]] = {}

    def snapshot(self, snapshot: RepoSnapshot) -> None:
        self.total = snapshot.total_bytes
        self.file_sizes = {f.name: f.size for f in snapshot.files}

    def update(self, file: str, done: int) -> int:
        """Record progress; returns the bytes newly received."""
        previous = self.file_bytes.get(file, 0)
        self.file_bytes[file] = done
        return max(0, done - previous)

    @property
    def done(self) -> int:
        return sum(self.file_bytes.get(name, 0) for name in self.file_sizes) if self.file_sizes else 0

    def rate(self, file: str, done: int) -> float | None:
        now = time.monotonic()
        last = self._last.get(file)
        self._last[file] = (now, done)
        if last is None or now <= last[0] or done < last[1]:
            return None
        return (done - last[1]) / (now - last[0])


class ProgressThrottle:
    """At most one progress tick per `interval` seconds per key (model, file); first and last always pass."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}

    def allow(self, key: tuple[str, str], final: bool = False) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if final or last is None or now - last >= self.interval:
            self._last[key] = now
            return True
        return False

    def forget(self, key: tuple[str, str]) -> None:
        self._last.pop(key, None)
