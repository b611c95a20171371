"""Vector-store scale: N documents with their own vectors in the engine Citadel embeds (Qdrant Edge).

    .venv/bin/python bench/scale.py [--n 100000] [--queries 200] [--no-int8]

Loads N 384-dimensional vectors with the adapter's point layout (uuid ids, payload `doc_id` and
`metadata.topic`, a keyword index on the topic) in batches of 500, then per configuration:

- exact: what the Qdrant Edge adapter searches today (`SearchParams(exact=True)`, no index);
- hnsw: after `optimize()` builds Qdrant's HNSW index (default m=16, ef_construct=100);
- hnsw+int8: a second collection with scalar int8 quantization (quantile 0.99, in RAM), searched
  with rescoring on the original vectors (oversampling 2).

Reported: load rate, index build time (optimize), search p50/p99 without and with a topic filter
(10% of the points), recall@10 against exact numpy search over the same vectors (filtered recall
against numpy over the filtered subset), RSS growth and disk per million vectors (scaled from N).

The vectors are synthetic but shaped like sentence embeddings: a 48-dimensional mixture of 200
Gaussian clusters projected to 384 dimensions plus noise, unit length (real embeddings have a low
intrinsic dimension; isotropic random vectors would understate recall). Queries are held-out
points of the same distribution. Single process, one shard; the baseline of every recall is the
exact answer computed here.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qdrant_edge as qe  # noqa: E402

from bench._common import fmt, machine_summary, percentile, render_table  # noqa: E402

DIMS = 384
TOPICS = [f"topic-{i}" for i in range(10)]
BATCH = 500
K = 10


@dataclass
class Config:
    name: str
    int8: bool
    hnsw: bool


@dataclass
class Row:
    config: str
    load_per_s: float = math.nan
    build_s: float = math.nan
    p50: float = math.nan
    p99: float = math.nan
    p50_filter: float = math.nan
    p99_filter: float = math.nan
    recall: float = math.nan
    recall_filter: float = math.nan
    rss_mb_per_m: float = math.nan
    disk_mb_per_m: float = math.nan
    notes: list[str] = field(default_factory=list)


def embedding_like(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).standard_normal((200, 48)).astype(np.float32) * 2.0
    projection = np.random.default_rng(4321).standard_normal((48, DIMS)).astype(np.float32) / math.sqrt(48)
    latent = centers[rng.integers(0, 200, count)] + rng.standard_normal((count, 48)).astype(np.float32)
    vectors = latent @ projection + 0.3 * rng.standard_normal((count, DIMS)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, queries: np.ndarray, allowed: np.ndarray | None = None) -> list[list[int]]:
    out = []
    for q in queries:
        scores = vectors @ q
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        top = np.argpartition(-scores, K)[:K]
        out.append(list(top[np.argsort(-scores[top])]))
    return out


def point_uuid(index: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"scale/{index}"))


def create(path: Path, int8: bool) -> qe.EdgeShard:
    quantization = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True) if int8 else None
    params = qe.EdgeVectorParams(size=DIMS, distance=qe.Distance.Cosine, quantization_config=quantization)
    shard = qe.EdgeShard.create(str(path), qe.EdgeConfig(vectors=params))
    shard.update(qe.UpdateOperation.create_field_index("metadata.topic", qe.PayloadSchemaType.Keyword))
    return shard


def load(shard: qe.EdgeShard, vectors: np.ndarray, topics: np.ndarray) -> float:
    started = time.perf_counter()
    for start in range(0, len(vectors), BATCH):
        points = [
            qe.Point(point_uuid(i), vectors[i].tolist(), {"doc_id": f"d{i}", "metadata": {"topic": TOPICS[topics[i]]}})
            for i in range(start, min(start + BATCH, len(vectors)))
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
    shard.flush()
    return len(vectors) / (time.perf_counter() - started)


def search(
    shard: qe.EdgeShard, queries: np.ndarray, params: qe.SearchParams, topic: int | None, ids: dict[str, int]
) -> tuple[list[float], list[list[int]]]:
    latencies, results = [], []
    flt = None
    if topic is not None:
        flt = qe.Filter(must=[qe.FieldCondition(key="metadata.topic", match=qe.MatchValue(TOPICS[topic]))])
    for q in queries:
        request = qe.QueryRequest(
            limit=K, query=qe.Query.Nearest(q.tolist()), filter=flt, params=params, with_payload=False, with_vector=False
        )
        started = time.perf_counter()
        found = shard.query(request)
        latencies.append(time.perf_counter() - started)
        results.append([ids[str(p.id)] for p in found])
    return latencies, results


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return sum(len(set(f) & set(t)) for f, t in zip(found, truth)) / (K * len(truth))


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-int8", action="store_true")
    args = parser.parse_args()
    n, scale = args.n, 1_000_000 / args.n
    print(f"machine: {machine_summary()}; N = {n:,}, {args.queries} queries, k = {K}", flush=True)

    vectors = embedding_like(n, seed=1)
    queries = embedding_like(args.queries, seed=2)
    topics = np.random.default_rng(3).integers(0, len(TOPICS), n)
    query_topic = 3
    truth = exact_top(vectors, queries)
    truth_filtered = exact_top(vectors, queries, allowed=topics == query_topic)
    ids = {point_uuid(i): i for i in range(n)}
    process = psutil.Process()
    folder = Path(tempfile.mkdtemp(prefix="citadel-scale-"))
    rows: list[Row] = []
    exact = qe.SearchParams(exact=True)
    hnsw = qe.SearchParams(exact=False, hnsw_ef=128)
    rescored = qe.SearchParams(
        exact=False, hnsw_ef=128, quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0)
    )
    try:
        for int8 in [False] + ([] if args.no_int8 else [True]):
            path = folder / ("int8" if int8 else "float")
            rss_before = process.memory_info().rss
            shard = create(path, int8)
            rate = load(shard, vectors, topics)
            print(f"  loaded {'int8' if int8 else 'float32'}: {rate:,.0f} points/s", flush=True)
            if not int8:
                row = Row("exact (adapter today)", load_per_s=rate)
                lat, found = search(shard, queries, exact, None, ids)
                lat_f, found_f = search(shard, queries, exact, query_topic, ids)
                row.p50, row.p99 = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
                row.p50_filter, row.p99_filter = percentile(lat_f, 50) * 1e3, percentile(lat_f, 99) * 1e3
                row.recall, row.recall_filter = recall(found, truth), recall(found_f, truth_filtered)
                row.rss_mb_per_m = (process.memory_info().rss - rss_before) / 2**20 * scale
                row.disk_mb_per_m = disk_mb(path) * scale
                rows.append(row)
                print(f"  exact: p50 {row.p50:.1f} ms, recall {row.recall:.3f}", flush=True)
            started = time.perf_counter()
            shard.optimize()
            build = time.perf_counter() - started
            info = shard.info()
            print(f"  optimize: {build:.1f}s, {info}", flush=True)
            row = Row("hnsw + int8 (rescored)" if int8 else "hnsw (default m=16, ef_construct=100)", load_per_s=rate)
            row.build_s = build
            params = rescored if int8 else hnsw
            lat, found = search(shard, queries, params, None, ids)
            lat_f, found_f = search(shard, queries, params, query_topic, ids)
            row.p50, row.p99 = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
            row.p50_filter, row.p99_filter = percentile(lat_f, 50) * 1e3, percentile(lat_f, 99) * 1e3
            row.recall, row.recall_filter = recall(found, truth), recall(found_f, truth_filtered)
            row.rss_mb_per_m = (process.memory_info().rss - rss_before) / 2**20 * scale
            row.disk_mb_per_m = disk_mb(path) * scale
            row.notes.append(f"indexed {info.indexed_vectors_count:,}/{info.points_count:,}")
            rows.append(row)
            print(f"  {row.config}: p50 {row.p50:.2f} ms, recall {row.recall:.3f}", flush=True)
            shard.close()
            del shard
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    raw_mb = n * DIMS * 4 / 2**20 * scale
    headers = [
        "configuration", "load points/s", "index build s", "p50 ms", "p99 ms", "p50 ms (filter 10%)",
        "p99 ms (filter 10%)", "recall@10", "recall@10 (filter)", "RSS MB per 1M", "disk MB per 1M", "notes",
    ]  # fmt: skip
    table = [
        [
            r.config, r.load_per_s, r.build_s, r.p50, r.p99, r.p50_filter, r.p99_filter, f"{r.recall:.3f}",
            f"{r.recall_filter:.3f}", r.rss_mb_per_m, r.disk_mb_per_m, "; ".join(r.notes),
        ]  # fmt: skip
        for r in rows
    ]
    print()
    print(f"## bench/scale.py: {n:,} vectors x {DIMS} dims (Qdrant Edge, one shard, this process)")
    print(
        f"recall baseline: exact numpy top-{K} over the same vectors; per-1M figures scale N linearly; "
        f"raw float32 vectors alone are {fmt(raw_mb, 0)} MB per 1M; {machine_summary()}"
    )
    print()
    print(render_table(headers, table))
    default = next((r for r in rows if r.config.startswith("hnsw (")), None)
    if default:
        print()
        print(f"goal: recall@10 >= 0.98 with the default index: {default.recall:.3f} -> {'met' if default.recall >= 0.98 else 'NOT met'}")


if __name__ == "__main__":
    main()
