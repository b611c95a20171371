"""Prometheus exposition, plus process figures from psutil."""

from __future__ import annotations

import psutil
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class PsutilCollector(Collector):
    """CPU, memory and open files of this process, read at scrape time."""

    def __init__(self) -> None:
        self.process = psutil.Process()

    def collect(self):  # type: ignore[override]
        with self.process.oneshot():
            cpu = self.process.cpu_times()
            memory = self.process.memory_info()
            open_files = len(self.process.open_files())
            threads = self.process.num_threads()
        yield GaugeMetricFamily("citadel_process_cpu_seconds", "User+system CPU seconds", value=cpu.user + cpu.system)
        yield GaugeMetricFamily("citadel_process_rss_bytes", "Resident memory in bytes", value=memory.rss)
        yield GaugeMetricFamily("citadel_process_open_files", "Open regular files", value=open_files)
        yield GaugeMetricFamily("citadel_process_threads", "OS threads", value=threads)


_registered = False


def register_process_metrics() -> None:
    global _registered
    if not _registered:  # one collector per process, however many apps a test builds
        REGISTRY.register(PsutilCollector())
        _registered = True


def render_metrics() -> bytes:
    return generate_latest(REGISTRY)
