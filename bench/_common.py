"""Shared pieces of the benchmarks, by job: the real server stack and its /metrics (`_server`),
a closed-loop HTTP load generator and CPU meters (`_load`), a deterministic corpus (`_corpus`),
the in-process encode ceiling (`_ceiling`) and tables (`_report`). Benchmarks import them from
here, one line for all.

The benchmarks are scripts, not tests: they print tables whose ratios compare the server with a
baseline measured in the same run, because absolute times on a shared 2-core machine mean little.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._server import (  # noqa: E402 (after the path is set)
    MODEL,
    POSTGRES_ADMIN_URL,
    REDIS_URL,
    BenchServer,
    Samples,
    bench_server,
    delta,
    histogram_mean,
    sample_total,
    scrape,
)
from bench._load import (  # noqa: E402 (after the path is set)
    CLIENTS,
    TRANSPORT_ERRORS,
    Connection,
    CpuMeter,
    GraphQLError,
    HttpStatusError,
    HttpxConnection,
    LoadResult,
    RawConnection,
    graphql_body,
    run,
    run_closed_loop,
)
from bench._corpus import (  # noqa: E402 (after the path is set)
    TOPICS,
    CorpusItem,
    corpus,
)
from bench._ceiling import (  # noqa: E402 (after the path is set)
    EncodeRate,
    InProcessEncoder,
    mean_rate,
)
from bench._report import (  # noqa: E402 (after the path is set)
    fmt,
    machine_summary,
    percentile,
    render_table,
)

__all__ = [
    "BenchServer",
    "CLIENTS",
    "Connection",
    "CorpusItem",
    "CpuMeter",
    "EncodeRate",
    "GraphQLError",
    "HttpStatusError",
    "HttpxConnection",
    "InProcessEncoder",
    "LoadResult",
    "MODEL",
    "POSTGRES_ADMIN_URL",
    "REDIS_URL",
    "ROOT",
    "RawConnection",
    "Samples",
    "TOPICS",
    "TRANSPORT_ERRORS",
    "bench_server",
    "corpus",
    "delta",
    "fmt",
    "graphql_body",
    "histogram_mean",
    "machine_summary",
    "mean_rate",
    "percentile",
    "render_table",
    "run",
    "run_closed_loop",
    "sample_total",
    "scrape",
]
