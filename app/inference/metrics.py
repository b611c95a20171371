"""Prometheus metrics of the embedding path, named after TEI's (te_* -> citadel_*).

Module-level objects on the default registry; /metrics serves them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

EMBED_REQUESTS = Counter(
    "citadel_embed_requests_total", "embed() calls by outcome (ok or an error code)", ["model", "outcome"]
)
EMBED_DURATION = Histogram(
    "citadel_embed_request_duration_seconds", "embed() duration, cache and inference included", ["model"],
    buckets=_LATENCY,
)
QUEUE_SIZE = Gauge("citadel_queue_size", "Texts admitted to a model's batchers and not yet answered", ["model"])
QUEUE_TIME = Histogram(
    "citadel_queue_time_seconds", "Time a text waited before its forward pass started", ["model"], buckets=_LATENCY
)
BATCH_SIZE = Histogram("citadel_batch_size", "Texts per forward pass", ["model"], buckets=_SIZES)
BATCH_TOKENS = Histogram(
    "citadel_batch_tokens", "Padded tokens per forward pass (texts x longest)", ["model"], buckets=_TOKENS
)
INFERENCE_SECONDS = Histogram(
    "citadel_inference_seconds", "Duration of one forward pass", ["model", "device"], buckets=_LATENCY
)
FORWARD_PASSES = Counter("citadel_forward_passes_total", "Forward passes (backend.encode calls)", ["model", "device"])
CACHE_HITS = Counter("citadel_cache_hits_total", "Texts served from the embedding cache", ["model"])
CACHE_MISSES = Counter("citadel_cache_misses_total", "Texts looked up in the embedding cache and not found", ["model"])
CACHE_ERRORS = Counter(
    "citadel_cache_errors_total", "Cache calls that failed or timed out (served without the cache)", ["operation"]
)
OVERLOADED = Counter("citadel_overloaded_total", "Requests refused because the model's queue was full", ["model"])


def sample_sum(metric: MetricWrapperBase, sample: str, **labels: str) -> float:
    """Sum of the samples called `sample` whose labels include `labels` (e.g. every device).

    Lets tests and the bench read a counter or a histogram's _count/_sum without knowing
    every label value.
    """
    total = 0.0
    for family in metric.collect():
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
