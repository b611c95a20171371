"""Keyword index and chunking against the plain dense collection, in one run on the real server.

    .venv/bin/python bench/retrieval.py [--docs 2000] [--long-docs 150] [--queries 60]

Starts `python -m app serve` (fresh PostgreSQL database, unique Redis key prefix, Qdrant Edge)
and ingests, in calls of 250 documents by one client, the calls to the two collections of one
shape alternating (a noisy neighbour then slows both alike):

- short sentences into a dense-only collection (`keywordIndex: false`): the baseline,
- as many other short sentences into a collection with the keyword index (the default),
- long documents (~12 sentences, ~200 tokens) into a dense-only collection: the long baseline,
- as many other long documents into a chunked collection (maxTokens 64, overlap 8).

Each collection gets texts of its own (a slice of one corpus), so no ingest profits from
another's embedding cache. Then one client searches each collection with queries it has never
seen (one forward pass each, except KEYWORD, which embeds nothing): SEMANTIC on the baselines;
SEMANTIC, KEYWORD and HYBRID (RRF, DBSF) on the keyword and chunked collections. Ratios are
against the baseline of the same shape (short or long) measured in this run.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    MODEL,
    Connection,
    bench_server,
    corpus,
    graphql_body,
    machine_summary,
    percentile,
    render_table,
    run,
)

CREATE = """mutation($n: String!, $k: Boolean, $c: ChunkingInput) {
  createCollection(name: $n, keywordIndex: $k, chunking: $c) { name } }"""
INGEST = """mutation($n: String!, $d: [DocumentInput!]!) {
  ingest(collection: $n, documents: $d) { inserted failed chunks } }"""
SEARCH = """query Search($n: String!, $q: String!, $m: SearchMode!, $f: Fusion!) {
  search(collection: $n, query: $q, mode: $m, fusion: $f, limit: 10) { tookMs hits { id } } }"""
EMBED = "query($t: [String!]!) { embed(texts: $t, kind: QUERY) { dimensions } }"
CALL_DOCS = 250


@dataclass
class IngestRow:
    name: str
    shape: str  # short | long
    documents: int
    points: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.documents / self.seconds


@dataclass
class SearchRow:
    name: str
    shape: str
    mode: str
    fusion: str
    latencies: list[float] = field(default_factory=list)
    took_ms: list[float] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2_000, help="short documents per collection (default 2,000)")
    parser.add_argument("--long-docs", type=int, default=150, help="long documents per collection (default 150)")
    parser.add_argument("--queries", type=int, default=60, help="queries per search row (default 60)")
    return parser.parse_args()


async def ingest_interleaved(conn: Any, shape: str, plan: list[tuple[str, list[dict[str, Any]]]]) -> list[IngestRow]:
    """Calls to the collections of one shape alternate, so a noisy neighbour slows them alike."""
    rows = [IngestRow(name, shape, len(docs), 0, 0.0) for name, docs in plan]
    for turn, i in enumerate(range(0, max(len(docs) for _, docs in plan), CALL_DOCS)):
        order = list(zip(rows, plan))
        for row, (name, docs) in order if turn % 2 == 0 else order[::-1]:  # who goes first alternates too
            if i >= len(docs):
                continue
            started = time.perf_counter()
            result = (await conn.post(graphql_body(INGEST, {"n": name, "d": docs[i : i + CALL_DOCS]})))["ingest"]
            row.seconds += time.perf_counter() - started
            if result["failed"]:
                raise RuntimeError(f"ingest into {name} failed for {result['failed']} documents")
            row.points += result["chunks"]
    for row in rows:
        print(f"  ingest {row.name}: {row.per_second:.1f} docs/s, {row.points} points", flush=True)
    return rows


async def search(conn: Any, name: str, shape: str, mode: str, fusion: str, queries: list[str]) -> SearchRow:
    row = SearchRow(name, shape, mode, fusion)
    for text in queries:
        sent = time.perf_counter()
        result = (await conn.post(graphql_body(SEARCH, {"n": name, "q": text, "m": mode, "f": fusion})))["search"]
        row.latencies.append(time.perf_counter() - sent)
        row.took_ms.append(result["tookMs"])
    print(f"  search {name} {mode} {fusion}: p50 {percentile(row.latencies, 50) * 1000:.1f} ms", flush=True)
    return row


def short_docs(items: list[Any], prefix: str) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i:06d}", "text": it.text, "metadata": {"topic": it.topic}} for i, it in enumerate(items)]


def long_docs(items: list[Any], prefix: str, sentences: int = 12) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i:05d}", "text": " ".join(it.text for it in items[i * sentences : (i + 1) * sentences])}
        for i in range(len(items) // sentences)
    ]


async def main() -> None:
    args = parse_args()
    n, n_long, n_q = args.docs, args.long_docs, args.queries
    items = corpus(2 * n + 2 * 12 * n_long + 9 * n_q, seed=31)
    slices, start = [], 0
    for size in (n, n, 12 * n_long, 12 * n_long):
        slices.append(items[start : start + size])
        start += size
    queries = [it.text for it in items[start:]]
    plan = [
        ("dense", "short", False, None, short_docs(slices[0], "d")),
        ("keyword", "short", True, None, short_docs(slices[1], "k")),
        ("dense-long", "long", False, None, long_docs(slices[2], "dl")),
        ("chunked", "long", True, {"maxTokens": 64, "overlapTokens": 8}, long_docs(slices[3], "c")),
    ]
    searches = [
        ("dense", "SEMANTIC", "RRF"),
        ("keyword", "SEMANTIC", "RRF"),
        ("keyword", "KEYWORD", "RRF"),
        ("keyword", "HYBRID", "RRF"),
        ("keyword", "HYBRID", "DBSF"),
        ("dense-long", "SEMANTIC", "RRF"),
        ("chunked", "SEMANTIC", "RRF"),
        ("chunked", "KEYWORD", "RRF"),
        ("chunked", "HYBRID", "RRF"),
    ]
    print(f"machine: {machine_summary()}")
    async with bench_server() as server:
        conn = Connection(server.url, timeout=600)
        for name, _, keyword_index, chunking, _ in plan:
            await conn.post(graphql_body(CREATE, {"n": name, "k": keyword_index, "c": chunking}))
        ingest_rows = []
        for shape in ("short", "long"):
            pairs = [(name, docs) for name, row_shape, _, _, docs in plan if row_shape == shape]
            ingest_rows.extend(await ingest_interleaved(conn, shape, pairs))
        search_rows = []
        for index, (name, mode, fusion) in enumerate(searches):
            shape = next(r.shape for r in ingest_rows if r.name == name)
            row_queries = queries[index * n_q : (index + 1) * n_q]
            # Query embeddings are cached first: the rows then compare retrieval, not the model.
            await conn.post(graphql_body(EMBED, {"t": row_queries}))
            search_rows.append(await search(conn, name, shape, mode, fusion, row_queries))
        await conn.close()

    base_ingest = {r.shape: r for r in ingest_rows if r.name.startswith("dense")}
    base_search = {r.shape: r for r in search_rows if r.name.startswith("dense")}
    print()
    print(f"## bench/retrieval.py: {n:,} short and {len(plan[2][4])} long documents per collection, {MODEL}")
    print(f"ingest calls of {CALL_DOCS} documents, one client; ratios against the dense-only collection of the same shape")
    print()
    print(
        render_table(
            ["collection", "documents", "points", "seconds", "documents/s", "ratio to dense"],
            [[r.name, r.documents, r.points, r.seconds, r.per_second,
              f"{r.per_second / base_ingest[r.shape].per_second:.2f}x"] for r in ingest_rows],
        )
    )  # fmt: skip
    print()
    print(f"search, limit 10, one client, {n_q} new queries per row, query embeddings cached beforehand")
    print(
        render_table(
            ["collection", "mode", "fusion", "p50 ms", "p99 ms", "server tookMs p50", "p50 ratio to dense SEMANTIC"],
            [[r.name, r.mode, r.fusion if r.mode == "HYBRID" else "", percentile(r.latencies, 50) * 1000,
              percentile(r.latencies, 99) * 1000, percentile(r.took_ms, 50),
              f"{percentile(r.latencies, 50) / percentile(base_search[r.shape].latencies, 50):.2f}x"] for r in search_rows],
        )
    )  # fmt: skip


if __name__ == "__main__":
    run(main)
