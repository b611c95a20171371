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

Search extras (--extras-docs, default 10,000; `--only-extras` skips the rest): a collection of
documents bringing their own random unit vectors (no model runs) with a metadata `group` of 50
values, searched by one client in alternating rounds (the order rotates each round):
plain search by a vector, the same vector with groupBy (10 groups of 3), similarTo of a
document, an `aggregate` (count, stats, groups of half the documents: it reads all 10,000 rows)
and a filtered, sorted `documents` page; p50/p99 of each, ratios against the plain search of the
same run.
"""

from __future__ import annotations

import argparse
import random
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
    parser.add_argument("--extras-docs", type=int, default=10_000, help="documents of the search-extras collection (default 10,000)")
    parser.add_argument("--rounds", type=int, default=200, help="alternating rounds of the search extras (default 200)")
    parser.add_argument("--only-extras", action="store_true", help="only the search extras (groupBy, similarTo)")
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


EXTRA_SEARCHES = {
    "plain": """query($v: [Float!]) { search(collection: "extras", vector: $v, limit: 10) { tookMs hits { id } } }""",
    "groupBy": """query($v: [Float!]) { search(collection: "extras", vector: $v, groupBy: {field: "group", groups: 10, hitsPerGroup: 3}) {
  tookMs groups { value hits { id } } } }""",
    "similarTo": """query($d: ID) { search(collection: "extras", similarTo: $d, limit: 10) { tookMs hits { id } } }""",
    # Exact over PostgreSQL's rows: every row of the collection is read (the scan budget's cost).
    "aggregate": """query { aggregate(collection: "extras", filter: {group: {lt: 25}}, fields: ["group"], groupBy: "group") {
  count groupCount fields { count mean topValues { value count } } groups { value count } } }""",
    "documents sorted": """query { documents(collection: "extras", filter: {group: {gte: 40}}, sort: [{field: "group", order: DESC}],
  first: 10) { items { id } nextCursor } }""",
}


def unit_vector(rng: random.Random, dims: int) -> list[float]:
    v = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v]


async def search_extras(conn: Any, docs: int, rounds: int) -> tuple[list[SearchRow], float]:
    """Ingest the extras collection, then `rounds` rounds of plain / groupBy / similarTo, rotating."""
    rng = random.Random(17)
    dims = (await conn.post(graphql_body(EMBED, {"t": ["dimensions"]})))["embed"]["dimensions"]
    await conn.post(graphql_body(CREATE, {"n": "extras", "k": False, "c": None}))
    started = time.perf_counter()
    for i in range(0, docs, CALL_DOCS):
        batch = [
            {"id": f"e{j:06d}", "text": f"extra document {j}", "metadata": {"group": j % 50}, "vector": unit_vector(rng, dims)}
            for j in range(i, min(docs, i + CALL_DOCS))
        ]
        result = (await conn.post(graphql_body(INGEST, {"n": "extras", "d": batch})))["ingest"]
        if result["failed"]:
            raise RuntimeError(f"ingest into extras failed for {result['failed']} documents")
    ingest_seconds = time.perf_counter() - started
    rows = {kind: SearchRow("extras", "extras", kind, "") for kind in EXTRA_SEARCHES}
    kinds = list(EXTRA_SEARCHES)
    for turn in range(rounds):
        variables = {"v": unit_vector(rng, dims), "d": f"e{rng.randrange(docs):06d}"}
        for kind in kinds[turn % len(kinds) :] + kinds[: turn % len(kinds)]:
            sent = time.perf_counter()
            result = next(iter((await conn.post(graphql_body(EXTRA_SEARCHES[kind], variables))).values()))
            rows[kind].latencies.append(time.perf_counter() - sent)
            if "tookMs" in result:  # aggregate and documents have none
                rows[kind].took_ms.append(result["tookMs"])
    for row in rows.values():
        print(f"  search extras {row.mode}: p50 {percentile(row.latencies, 50) * 1000:.1f} ms", flush=True)
    return list(rows.values()), ingest_seconds


def print_extras(rows: list[SearchRow], docs: int, rounds: int, ingest_seconds: float) -> None:
    plain = rows[0]
    print()
    print(f"search extras: {docs:,} documents with their own {MODEL}-sized vectors (ingested in {ingest_seconds:.1f} s), "
          f"{rounds} alternating rounds, one client; ratios against plain search (limit 10) of the same rounds")
    print(
        render_table(
            ["search", "p50 ms", "p99 ms", "server tookMs p50", "server tookMs p99", "p50 ratio to plain", "p99 ratio to plain"],
            [[r.mode, percentile(r.latencies, 50) * 1000, percentile(r.latencies, 99) * 1000,
              percentile(r.took_ms, 50) if r.took_ms else "", percentile(r.took_ms, 99) if r.took_ms else "", f"{percentile(r.latencies, 50) / percentile(plain.latencies, 50):.2f}x",
              f"{percentile(r.latencies, 99) / percentile(plain.latencies, 99):.2f}x"] for r in rows],
        )
    )  # fmt: skip


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
    if args.only_extras:
        async with bench_server() as server:
            conn = Connection(server.url, timeout=600)
            extras, ingest_seconds = await search_extras(conn, args.extras_docs, args.rounds)
            await conn.close()
        print_extras(extras, args.extras_docs, args.rounds, ingest_seconds)
        return
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
        extras, ingest_seconds = await search_extras(conn, args.extras_docs, args.rounds)
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
    print_extras(extras, args.extras_docs, args.rounds, ingest_seconds)


if __name__ == "__main__":
    run(main)
