"""The embedded store at scale, through the gateway: N documents with their own vectors, GraphQL search.

    .venv/bin/python bench/scale.py [--n 200000] [--queries 200] [--exact-baseline]

Starts `python -m app serve` (fresh PostgreSQL database, Redis key prefix, Qdrant Edge in a temp
dir, the default index settings: exact below CITADEL_VECTORS__EXACT_BELOW_POINTS, HNSW m=16,
ef_construct=100, hnsw_ef=128 above), creates a collection (no keyword index, `topic` indexed)
and ingests N 384-dimensional vectors as `vectorBase64` in `ingest` calls of 256 documents from 4
clients at once (the model never runs). Then it waits for the background build to fold every
point into the HNSW graph (`Collection.vectorIndex`: indexedPoints == points, optimizing false)
and reports:

- load rate (documents/s through GraphQL, PostgreSQL and Qdrant Edge),
- index build time: from the last ingest to every point indexed (passes overlap the load),
- GraphQL `search(vector:, limit: 10)` latency p50/p99, client round trip, with 1 client and with
  16 at once, without and with a metadata filter that keeps 10% of the points (and the server's
  own `tookMs`),
- recall@10 against exact numpy search over the same vectors (filtered: over the filtered subset),
- the server's RSS (its process and children) and the Qdrant data dir on disk.
--exact-baseline: a second server with CITADEL_VECTORS__HNSW_M=0 (exact search, as before);
--exact-only: that server alone.

The vectors are synthetic but shaped like sentence embeddings: a 48-dimensional mixture of 200
Gaussian clusters projected to 384 dimensions plus noise, unit length (real embeddings have a low
intrinsic dimension; isotropic random vectors would understate recall). Queries are held-out
points of the same distribution.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    GraphQLError,
    RawConnection,
    bench_server,
    fmt,
    graphql_body,
    machine_summary,
    percentile,
    render_table,
    run,
)

DIMS = 384
TOPICS = [f"topic-{i}" for i in range(10)]
BATCH = 256
LOADERS = 4
K = 10
NAME = "scale"

CREATE = """mutation($n: String!) { createCollection(name: $n, keywordIndex: false, indexedFields: ["topic"]) { name } }"""
INGEST = """mutation($c: String!, $d: [DocumentInput!]!) { ingest(collection: $c, documents: $d) { inserted failed } }"""
STATUS = """query($c: String!) { collection(name: $c) { vectorIndex { points indexedPoints optimizing } } }"""
SEARCH = """query($c: String!, $v: [Float!], $f: JSON) { search(collection: $c, vector: $v, limit: 10, filter: $f) { tookMs hits { id } } }"""


@dataclass
class Row:
    config: str
    clients: int
    load_per_s: float = math.nan
    build_s: float = math.nan
    p50: float = math.nan
    p99: float = math.nan
    p50_filter: float = math.nan
    p99_filter: float = math.nan
    qps: float = math.nan
    took_p50: float = math.nan
    recall: float = math.nan
    recall_filter: float = math.nan
    rss_mb: float = math.nan
    disk_mb: float = math.nan
    notes: list[str] = field(default_factory=list)


def embedding_like(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).standard_normal((200, 48)).astype(np.float32) * 2.0
    projection = np.random.default_rng(4321).standard_normal((48, DIMS)).astype(np.float32) / math.sqrt(48)
    latent = centers[rng.integers(0, 200, count)] + rng.standard_normal((count, 48)).astype(np.float32)
    vectors = latent @ projection + 0.3 * rng.standard_normal((count, DIMS)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype("<f4")


def exact_top(vectors: np.ndarray, queries: np.ndarray, allowed: np.ndarray | None = None) -> list[list[int]]:
    out = []
    for q in queries:
        scores = vectors @ q
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        top = np.argpartition(-scores, K)[:K]
        out.append([int(i) for i in top[np.argsort(-scores[top])]])
    return out


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return sum(len(set(f) & set(t)) for f, t in zip(found, truth)) / (K * len(truth))


def ingest_body(vectors: np.ndarray, topics: np.ndarray, start: int) -> bytes:
    docs = [
        {
            "id": f"d{i}",
            "text": f"document {i}",
            "metadata": {"topic": TOPICS[topics[i]]},
            "vectorBase64": base64.b64encode(vectors[i].tobytes()).decode(),
        }
        for i in range(start, min(start + BATCH, len(vectors)))
    ]
    return graphql_body(INGEST, {"c": NAME, "d": docs})


async def load(url: str, vectors: np.ndarray, topics: np.ndarray) -> float:
    starts = iter(range(0, len(vectors), BATCH))
    done = 0

    async def loader() -> None:
        nonlocal done
        connection = RawConnection(url, timeout=600)
        try:
            for start in starts:
                data = await connection.post(ingest_body(vectors, topics, start))
                assert data["ingest"]["failed"] == 0, data
                done += data["ingest"]["inserted"]
                if done % 20_480 < BATCH:
                    print(f"    loaded {done:,}", flush=True)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(loader() for _ in range(LOADERS)))
    assert done == len(vectors), done
    return len(vectors) / (time.perf_counter() - started)


async def status(connection: RawConnection) -> dict:
    return (await connection.post(graphql_body(STATUS, {"c": NAME})))["collection"]["vectorIndex"]


async def wait_for_index(url: str, n: int) -> tuple[float, dict]:
    """Seconds until every point is indexed and no pass runs (two polls in a row)."""
    connection = RawConnection(url, timeout=600)
    started = time.perf_counter()
    settled = 0
    try:
        while True:
            state = await status(connection)
            settled = settled + 1 if (state["points"] == n and not state["optimizing"]) else 0
            if settled >= 2 and state["indexedPoints"] in (0, n):
                return time.perf_counter() - started, state
            if settled >= 4:  # a tail below the fold-in size stays outside the graph, searched exactly
                return time.perf_counter() - started, state
            await asyncio.sleep(1.0)
    finally:
        await connection.close()


async def searches(
    url: str, queries: np.ndarray, topic: int | None, clients: int, took: list[float] | None = None
) -> tuple[list[float], list[list[int]]]:
    flt = {"topic": {"eq": TOPICS[topic]}} if topic is not None else None
    bodies = iter(enumerate(graphql_body(SEARCH, {"c": NAME, "v": q.tolist(), "f": flt}) for q in queries))
    latencies: list[float] = []
    found: dict[int, list[int]] = {}

    async def client() -> None:
        connection = RawConnection(url, timeout=600)
        try:
            await connection.post(graphql_body("{ __typename }"))
            for index, body in bodies:
                started = time.perf_counter()
                data = await connection.post(body)
                latencies.append(time.perf_counter() - started)
                found[index] = [int(h["id"][1:]) for h in data["search"]["hits"]]
                if took is not None:
                    took.append(float(data["search"]["tookMs"]))
        finally:
            await connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, [found[i] for i in range(len(queries))]


def tree_rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20


async def measure(config: str, extra_env: dict[str, str], args: argparse.Namespace, data: dict) -> list[Row]:
    vectors, topics, queries = data["vectors"], data["topics"], data["queries"]
    rows: list[Row] = []
    async with bench_server(extra_env=extra_env) as server:
        probe = RawConnection(server.url, timeout=600)
        created = await probe.post(graphql_body(CREATE, {"n": NAME}))
        assert created["createCollection"]["name"] == NAME
        rss_before = tree_rss_mb(server.pid)
        print(f"  {config}: loading {len(vectors):,} documents ({LOADERS} clients, {BATCH} per ingest)", flush=True)
        rate = await load(server.url, vectors, topics)
        print(f"  loaded at {rate:,.0f} documents/s; {await status(probe)}", flush=True)
        # Searches while passes run (the graph of the last points not built yet): answered, timed.
        during, _ = await searches(server.url, queries[:20], None, 1)
        build_s, state = await wait_for_index(server.url, len(vectors))
        print(f"  index settled {build_s:.1f}s after the load: {state}", flush=True)
        await probe.close()
        for clients in (1, 16):
            took: list[float] = []
            lat, found = await searches(server.url, queries, None, clients, took)
            started = time.perf_counter()
            lat_f, found_f = await searches(server.url, queries, data["topic"], clients)
            row = Row(config, clients, load_per_s=rate, build_s=build_s)
            row.p50, row.p99 = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
            row.p50_filter, row.p99_filter = percentile(lat_f, 50) * 1e3, percentile(lat_f, 99) * 1e3
            row.qps = len(queries) / (time.perf_counter() - started)
            row.took_p50 = percentile(took, 50)
            row.recall, row.recall_filter = recall(found, data["truth"]), recall(found_f, data["truth_filtered"])
            row.rss_mb = tree_rss_mb(server.pid)
            row.disk_mb = disk_mb(server.data_dir / "qdrant")
            row.notes.append(f"indexed {state['indexedPoints']:,}/{state['points']:,}")
            if clients == 1:
                row.notes.append(f"p50 during the last passes {percentile(during, 50) * 1e3:.1f} ms")
                row.notes.append(f"server RSS before the load {rss_before:,.0f} MB")
            rows.append(row)
            print(f"  {clients} client(s): p50 {row.p50:.1f} ms, recall {row.recall:.3f} / {row.recall_filter:.3f}", flush=True)
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-baseline", action="store_true")
    parser.add_argument("--exact-only", action="store_true", help="only the exact baseline")
    args = parser.parse_args()
    n = args.n
    print(f"machine: {machine_summary()}; N = {n:,}, {args.queries} queries, k = {K}", flush=True)
    vectors = embedding_like(n, seed=1)
    queries = embedding_like(args.queries, seed=2)
    topics = np.random.default_rng(3).integers(0, len(TOPICS), n)
    topic = 3
    data = {
        "vectors": vectors, "topics": topics, "queries": queries, "topic": topic,
        "truth": exact_top(vectors, queries),
        "truth_filtered": exact_top(vectors, queries, allowed=topics == topic),
    }  # fmt: skip
    rows = [] if args.exact_only else await measure("HNSW (defaults: m=16, ef_construct=100, hnsw_ef=128)", {}, args, data)
    if args.exact_baseline or args.exact_only:
        rows += await measure("exact (CITADEL_VECTORS__HNSW_M=0)", {"CITADEL_VECTORS__HNSW_M": "0"}, args, data)

    headers = [
        "configuration", "clients", "load docs/s", "index build s", "p50 ms", "p99 ms", "server tookMs p50", "p50 ms (filter 10%)",
        "p99 ms (filter 10%)", "filtered searches/s", "recall@10", "recall@10 (filter)", "server RSS MB",
        "qdrant disk MB", "notes",
    ]  # fmt: skip
    table = [
        [
            r.config, r.clients, r.load_per_s, r.build_s, r.p50, r.p99, r.took_p50, r.p50_filter, r.p99_filter, r.qps,
            f"{r.recall:.3f}", f"{r.recall_filter:.3f}", r.rss_mb, r.disk_mb, "; ".join(r.notes),
        ]  # fmt: skip
        for r in rows
    ]
    print()
    print(f"## bench/scale.py: {n:,} documents x {DIMS} dims through GraphQL (Qdrant Edge, one shard)")
    print(
        f"recall baseline: exact numpy top-{K} over the same vectors; latency: client round trip of "
        f"GraphQL search(vector:); raw float32 vectors alone are {fmt(n * DIMS * 4 / 2**20, 0)} MB; {machine_summary()}"
    )
    print()
    print(render_table(headers, table))
    one = rows[0]
    met = one.p50 <= 15 and one.recall >= 0.98 and one.recall_filter >= 0.98
    print()
    print(
        f"goal: p50 <= 15 ms with recall@10 >= 0.98 unfiltered and filtered (1 client): p50 {one.p50:.1f} ms, "
        f"recall {one.recall:.3f} / {one.recall_filter:.3f} -> {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    try:
        run(main)
    except GraphQLError as exc:
        raise SystemExit(f"GraphQL error: {exc}") from None
