"""Ingest and search through GraphQL on the real server, against the in-process encode rate.

    .venv/bin/python bench/ingest_search.py [--quick] [--embedded] [--docs 10000]

Starts `python -m app serve` (fresh PostgreSQL database, unique Redis key prefix, Qdrant Edge in
a temp dir; --embedded: the server's embedded defaults), creates a collection indexed on
`topic` and `n`, and ingests a deterministic corpus of short sentences (metadata: a topic
keyword and an integer) in `ingest` calls of 500 documents:

- the first third by one client (calls one after another, as a simple importer does),
- the second third by two clients at once, the last by four (storage of one call overlaps
  encoding of another),
- then everything again: all `unchanged`, no forward pass, so this row is the storage and API
  cost alone;
- then 8 writers at once in alternating rounds: each on ids of its own ("disjoint"), then all on
  the same ids in shuffled orders with their own texts ("overlapping": every id is rewritten by
  every writer, so rows are locked and versions overtaken). Texts are new every round (no cache
  hits) and the embedding work is the same on both sides; the ratio is the price of writers
  that collide.

documents/s is compared with sentence-transformers `encode` of the same texts (a sample) in
batches of 64 in this process, measured right before and right after each ingest row while the
server idles (a noisy neighbour then skews both sides alike). Then one client runs search
queries, each first uncached (a new text: one forward pass) and then again cached (the query
embedding comes from Redis), without and with a metadata filter; latency is the client's round
trip, `tookMs` the server's own measure.
"""

from __future__ import annotations

import os

# The in-process encode runs under the server's OpenMP wait policy (app/inference sets it): with
# busy-waiting threads a loaded machine would slow the baseline, not the server.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import asyncio
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    MODEL,
    TOPICS,
    Connection,
    CorpusItem,
    CpuMeter,
    EncodeRate,
    InProcessEncoder,
    bench_server,
    corpus,
    delta,
    fmt,
    graphql_body,
    histogram_mean,
    machine_summary,
    mean_rate,
    percentile,
    render_table,
    run,
    scrape,
)

COLLECTION = "bench_docs"
CREATE = """mutation Create($name: String!) {
  createCollection(name: $name, indexedFields: ["topic", "n"]) { name dimensions }
}"""
INGEST = """mutation Ingest($c: String!, $docs: [DocumentInput!]!) {
  ingest(collection: $c, documents: $docs) { inserted updated unchanged failed errors { index code message } }
}"""
SEARCH = """query Search($c: String!, $q: String!, $f: JSON) {
  search(collection: $c, query: $q, limit: 10, filter: $f) { tookMs hits { id score text metadata } }
}"""
COUNT = "query Count($c: String!) { collection(name: $c) { documentCount } }"
CONTENTION_WRITERS = 8
CONTENTION_ROUNDS = 2  # per side, alternating


@dataclass
class ContentionRow:
    scenario: str  # "disjoint" | "overlapping"
    round: int
    documents: int
    seconds: float
    counts: dict[str, int]

    @property
    def per_second(self) -> float:
        return self.documents / self.seconds if self.seconds > 0 else math.nan


async def contention(url: str, items: list[CorpusItem], per_writer: int, batch: int) -> list[ContentionRow]:
    """8 writers at once, alternating rounds of disjoint ids and of the same ids in shuffled orders."""
    setup = Connection(url)
    await setup.post(graphql_body(CREATE, {"name": "bench_contention"}))
    await setup.close()
    rng = random.Random(21)
    rows: list[ContentionRow] = []
    for round_ in range(CONTENTION_ROUNDS):
        for scenario in ("disjoint", "overlapping"):
            calls: list[list[bytes]] = []
            for writer in range(CONTENTION_WRITERS):
                ids = [
                    f"{scenario}-{round_}-{writer if scenario == 'disjoint' else 'all'}-{i:05d}" for i in range(per_writer)
                ]
                rng.shuffle(ids)
                docs = [
                    {"id": doc_id, "text": f"{items[n % len(items)].text} (writer {writer}, round {round_}, {scenario})",
                     "metadata": {"writer": writer}}
                    for n, doc_id in enumerate(ids)
                ]  # fmt: skip
                calls.append(
                    [graphql_body(INGEST, {"c": "bench_contention", "docs": docs[i : i + batch]}) for i in range(0, len(docs), batch)]
                )
            counts = {"inserted": 0, "updated": 0, "unchanged": 0, "failed": 0}
            connections = [Connection(url, timeout=600) for _ in range(CONTENTION_WRITERS)]

            async def writer(connection: Connection, bodies: list[bytes]) -> None:
                for body in bodies:
                    result = (await connection.post(body))["ingest"]
                    for key in counts:
                        counts[key] += result[key]
                    if result["errors"]:
                        raise RuntimeError(f"ingest reported errors: {result['errors'][:3]}")

            started = time.perf_counter()
            try:
                await asyncio.gather(*(writer(c, b) for c, b in zip(connections, calls)))
            finally:
                seconds = time.perf_counter() - started
                await asyncio.gather(*(c.close() for c in connections))
            row = ContentionRow(scenario, round_ + 1, CONTENTION_WRITERS * per_writer, seconds, counts)
            rows.append(row)
            print(f"  contention {scenario} round {round_ + 1}: {row.per_second:.1f} docs/s, {counts}", flush=True)
    return rows


def contention_table(rows: list[ContentionRow], per_writer: int) -> str:
    def total(scenario: str) -> float:
        mine = [r for r in rows if r.scenario == scenario]
        return sum(r.documents for r in mine) / sum(r.seconds for r in mine)

    baseline = total("disjoint")
    table = render_table(
        ["writers", "ids", "round", "documents", "seconds", "documents/s", "ratio to disjoint", "inserted", "updated", "unchanged", "failed"],
        [
            [f"{CONTENTION_WRITERS} x {r.scenario}", per_writer if r.scenario == "overlapping" else per_writer * CONTENTION_WRITERS,
             r.round, r.documents, r.seconds, r.per_second, f"{r.per_second / baseline:.2f}x", r.counts["inserted"],
             r.counts["updated"], r.counts["unchanged"], r.counts["failed"]]
            for r in rows
        ],
    )  # fmt: skip
    overall = total("overlapping") / baseline
    return f"{table}\n\noverlapping writers against disjoint ones, all rounds: {overall:.2f}x"


@dataclass
class IngestRow:
    name: str
    clients: int
    documents: int
    seconds: float
    call_seconds: list[float]
    counts: dict[str, int]
    forward_passes: float
    mean_batch: float
    server_cpu: float
    loadgen_cpu: float
    encode_rate: float = math.nan  # in-process sentences/s measured right before and after

    @property
    def per_second(self) -> float:
        return self.documents / self.seconds if self.seconds > 0 else math.nan


@dataclass
class SearchRow:
    name: str
    latencies: list[float] = field(default_factory=list)
    took_ms: list[float] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)
    seconds: float = 0.0
    cache_hits: float = 0.0
    forward_passes: float = 0.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2,000 documents and 50 queries: about a minute",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="embedded PostgreSQL/Redis instead of the machine's",
    )
    parser.add_argument(
        "--docs",
        type=int,
        default=None,
        help="corpus size (default 10,000; quick 2,000)",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=None,
        help="queries per search scenario (default 200; quick 50)",
    )
    parser.add_argument("--batch", type=int, default=256, help="documents per ingest call (default 256, the default limit)")
    return parser.parse_args()


def documents(items: list[CorpusItem], start: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"doc-{start + i:06d}",
            "text": item.text,
            "metadata": {"topic": item.topic, "n": item.n},
        }
        for i, item in enumerate(items)
    ]


async def ingest(
    url: str,
    server_pid: int,
    name: str,
    docs: list[dict[str, Any]],
    batch: int,
    clients: int,
) -> IngestRow:
    calls = [docs[i : i + batch] for i in range(0, len(docs), batch)]
    bodies = iter([graphql_body(INGEST, {"c": COLLECTION, "docs": call}) for call in calls])
    counts = {"inserted": 0, "updated": 0, "unchanged": 0, "failed": 0}
    call_seconds: list[float] = []
    connections = [Connection(url, timeout=600) for _ in range(clients)]

    async def client(connection: Connection) -> None:
        for body in bodies:
            started = time.perf_counter()
            result = (await connection.post(body))["ingest"]
            call_seconds.append(time.perf_counter() - started)
            for key in counts:
                counts[key] += result[key]
            if result["errors"]:
                raise RuntimeError(f"ingest reported errors: {result['errors'][:3]}")

    before = scrape(url)
    own, server = CpuMeter().start(), CpuMeter(server_pid, children=True).start()
    started = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in connections))
    finally:
        seconds = time.perf_counter() - started
        server_cpu, loadgen_cpu = server.stop(), own.stop()
        await asyncio.gather(*(c.close() for c in connections))
    after = scrape(url)
    row = IngestRow(
        name=name,
        clients=clients,
        documents=len(docs),
        seconds=seconds,
        call_seconds=call_seconds,
        counts=counts,
        forward_passes=delta(before, after, "citadel_forward_passes_total", model=MODEL),
        mean_batch=histogram_mean(before, after, "citadel_batch_size", model=MODEL),
        server_cpu=server_cpu,
        loadgen_cpu=loadgen_cpu,
    )
    print(
        f"  {name}: {row.per_second:.1f} docs/s over {len(docs):,} docs, {counts}, "
        f"{int(row.forward_passes)} forward passes, server CPU {server_cpu:.0f}%",
        flush=True,
    )
    return row


async def search(url: str, name: str, queries: list[str], filters: list[Any] | None) -> SearchRow:
    row = SearchRow(name=name)
    connection = Connection(url)
    await connection.post(graphql_body("{ __typename }"))
    before = scrape(url)
    started = time.perf_counter()
    try:
        for index, text in enumerate(queries):
            variables = {
                "c": COLLECTION,
                "q": text,
                "f": filters[index] if filters else None,
            }
            body = graphql_body(SEARCH, variables)
            sent = time.perf_counter()
            result = (await connection.post(body))["search"]
            row.latencies.append(time.perf_counter() - sent)
            row.took_ms.append(result["tookMs"])
            row.hits.append(len(result["hits"]))
    finally:
        row.seconds = time.perf_counter() - started
        await connection.close()
    after = scrape(url)
    row.cache_hits = delta(before, after, "citadel_cache_hits_total", model=MODEL)
    row.forward_passes = delta(before, after, "citadel_forward_passes_total", model=MODEL)
    print(
        f"  {name}: p50 {percentile(row.latencies, 50) * 1000:.1f} ms, p99 {percentile(row.latencies, 99) * 1000:.1f} ms, "
        f"{int(row.forward_passes)} forward passes, {int(row.cache_hits)} cache hits",
        flush=True,
    )
    return row


def topic_filter(index: int, topics: list[str]) -> dict[str, Any]:
    return {
        "and": [
            {"topic": {"eq": topics[index % len(topics)]}},
            {"n": {"gte": 100, "lt": 900}},
        ]
    }


async def main() -> None:
    args = parse_args()
    total = args.docs or (2_000 if args.quick else 10_000)
    n_queries = args.queries or (50 if args.quick else 200)
    items = corpus(total + 2 * n_queries, seed=23)
    docs = documents(items[:total], 0)
    # Queries are sentences of the same kind the collection has never seen (so never cached yet).
    plain_queries = [i.text for i in items[total : total + n_queries]]
    filtered_queries = [i.text for i in items[total + n_queries :]]
    topics = list(TOPICS)
    filters = [topic_filter(i, topics) for i in range(n_queries)]
    sample = [d["text"] for d in docs[:: max(1, total // (500 if args.quick else 2_000))]]

    print(f"machine: {machine_summary()}")
    encoder = InProcessEncoder(MODEL)
    rates: list[EncodeRate] = []

    def measure_encode() -> None:
        # Right before and after every ingest row (server idle): each row is compared with its own.
        rates.append(encoder.rate(sample))
        print(f"  in-process encode: {rates[-1].per_second:.1f} sentences/s ({len(sample)} texts)", flush=True)

    async with bench_server(embedded=args.embedded) as server:
        setup = Connection(server.url)
        await setup.post(graphql_body(CREATE, {"name": COLLECTION}))
        third = total // 3
        plan = [
            ("ingest, new documents", docs[:third], 1),
            ("ingest, new documents", docs[third : 2 * third], 2),
            ("ingest, new documents", docs[2 * third :], 4),
            ("re-ingest, all unchanged", docs, 1),
        ]
        ingest_rows = []
        for name, part, clients in plan:
            measure_encode()
            ingest_rows.append(await ingest(server.url, server.pid, name, part, args.batch, clients))
        measure_encode()
        for index, row in enumerate(ingest_rows):
            row.encode_rate = mean_rate(rates[index : index + 2])
        count = (await setup.post(graphql_body(COUNT, {"c": COLLECTION})))["collection"]["documentCount"]
        await setup.close()
        if count != total:
            raise RuntimeError(f"collection holds {count} documents, expected {total}")

        per_writer = max(args.batch // 5, 50 if args.quick else 200)
        contention_rows = await contention(server.url, items, per_writer, min(args.batch, 100))

        search_rows = [
            await search(server.url, "no filter, uncached query", plain_queries, None),
            await search(server.url, "no filter, cached query", plain_queries, None),
            await search(server.url, "filter, uncached query", filtered_queries, filters),
            await search(server.url, "filter, cached query", filtered_queries, filters),
        ]

    print()
    print(f"## bench/ingest_search.py{' --quick' if args.quick else ''}: {total:,} documents, {MODEL}")
    print(
        f"in-process encode (sentence-transformers, batches of 64, {len(sample)} of the corpus texts) before and "
        f"after every ingest row: {', '.join(f'{r.per_second:.0f}' for r in rates)} sentences/s; "
        "each row's ratio uses its own two"
    )
    print(f"ingest calls of {args.batch} documents; CPU % = percent of one core; load-gen = this process")
    print()
    print(
        render_table(
            ["ingest", "clients", "documents", "seconds", "documents/s", "encode sent/s", "ratio to encode", "call p50 s",
             "inserted", "unchanged", "forward passes", "mean batch", "server CPU %", "load-gen CPU %"],
            [
                [r.name, r.clients, r.documents, r.seconds, r.per_second, r.encode_rate, f"{r.per_second / r.encode_rate:.2f}x",
                 percentile(r.call_seconds, 50), r.counts["inserted"], r.counts["unchanged"], int(r.forward_passes),
                 r.mean_batch, f"{r.server_cpu:.0f}%", f"{r.loadgen_cpu:.0f}%"]
                for r in ingest_rows
            ],
        )
    )  # fmt: skip
    print()
    print(f"search over {total:,} documents, limit 10, one client, {n_queries} queries per row")
    print(
        render_table(
            ["search", "queries", "p50 ms", "p99 ms", "mean ms", "server tookMs p50", "queries/s", "hits/query",
             "forward passes", "cache hits"],
            [
                [r.name, len(r.latencies), percentile(r.latencies, 50) * 1000, percentile(r.latencies, 99) * 1000,
                 1000 * sum(r.latencies) / len(r.latencies), percentile(r.took_ms, 50), len(r.latencies) / r.seconds,
                 sum(r.hits) / len(r.hits), int(r.forward_passes), int(r.cache_hits)]
                for r in search_rows
            ],
        )
    )  # fmt: skip
    print()
    print(f"{CONTENTION_WRITERS} concurrent writers, {per_writer} documents each in calls of {min(args.batch, 100)}, alternating rounds")
    print(contention_table(contention_rows, per_writer))
    new_rows = [r for r in ingest_rows if r.counts["inserted"]]
    best = max(new_rows, key=lambda r: r.per_second / r.encode_rate)
    cached = [r for r in search_rows if "cached query" in r.name and "uncached" not in r.name]
    print()
    ratio = best.per_second / best.encode_rate
    print(
        f"goal: ingest >= 0.80x of the in-process encode rate: best {ratio:.2f}x ({best.clients} clients) -> "
        f"{'met' if ratio >= 0.8 else 'NOT met'}"
    )
    for r in new_rows:
        if r.clients >= 2:
            each = r.per_second / r.encode_rate
            print(f"goal: {r.clients} concurrent ingest clients >= 0.90x the encode rate: {each:.2f}x -> {'met' if each >= 0.9 else 'NOT met'}")
    for r in cached:
        p50 = percentile(r.latencies, 50) * 1000
        print(f"goal: cached-query search p50 < 20 ms ({r.name}): {fmt(p50)} ms -> {'met' if p50 < 20 else 'NOT met'}")


if __name__ == "__main__":
    run(main)
