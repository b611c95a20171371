"""How a CPU replica shares the machine's cores: how many forward passes at once, torch threads
per pass, and how many tokens one pass may hold.

Measured on 2 cores (all-MiniLM-L6-v2, torch): in process, two passes of 32 texts at once, one
thread each, encode 1.06-1.29x the texts per second of one pass of 64 on two threads. Serving cold
one-text requests from 64 clients, 1.06x and 1.13x in two A/B runs (alternating rounds): a
multi-threaded pass stalls at every parallel region whose other thread the event loop has
preempted, and leaves a core idle while its callers are answered; independent single-threaded
passes just share the cores. The price is latency when idle: a lone text runs on one thread.
"""

from __future__ import annotations

import os

from app.settings import InferenceSettings

# Auto: this many passes at once where there are at least as many cores. More passes mean smaller
# batches and slower single requests (each pass has fewer threads) for little more throughput.
AUTO_PASSES = 2


def usable_cores() -> int:
    """Cores this process may run on (its affinity, e.g. a container's cpuset), not the host's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def passes_at_once(settings: InferenceSettings) -> int:
    """Forward passes a CPU replica runs at once (settings.passes_at_once; 0: auto)."""
    if settings.passes_at_once > 0:
        return settings.passes_at_once
    return min(AUTO_PASSES, usable_cores())


def threads_per_pass(settings: InferenceSettings) -> int:
    """torch threads of one CPU pass (settings.threads; 0: the cores divided among the passes)."""
    if settings.threads > 0:
        return settings.threads
    return max(1, usable_cores() // passes_at_once(settings))


def batch_tokens(settings: InferenceSettings, device: str) -> int:
    """Token budget of one forward pass on `device`: a CPU pass is kept to a fraction of a second
    (settings.max_batch_tokens_cpu; all-MiniLM-L6-v2 on one core of the 2-core machine: 2,048
    tokens in 0.63-0.68 s, 16,384 in 6.8 s), so a text that arrives behind a full queue waits
    little for a free pass; a GPU keeps the large batches it needs (settings.max_batch_tokens)."""
    return settings.max_batch_tokens_cpu if device == "cpu" else settings.max_batch_tokens
