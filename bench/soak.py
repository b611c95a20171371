"""Soak at a steady document count: does the server's memory or data dir grow, or only its work?

    .venv/bin/python bench/soak.py [--duration 900] [--warmup 120] [--clients 8] [--docs 2000] [--embedded]

Starts `python -m app serve` (see bench/README.md for the stores), ingests `--docs` documents,
then runs closed-loop clients for `--duration` seconds, each request one of:
- ingest: 20 documents of the fixed id set with new texts (updates: the count never changes),
- search: a query from a fixed pool of 300 (cached after the first time) or, one in four, a new one,
- embed: 4 texts from a pool of 2,000 phrases, one of them new,
- health.
Every `--sample` seconds it prints the server's RSS (the `serve` process, its anonymous part, and
its whole process tree for embedded PostgreSQL/Redis), the data dir's size on disk and the Qdrant
Edge part of it.
The baseline is the first sample after `--warmup`; every later row carries its ratio to it, and
the summary gives the RSS slope after warm-up (least squares, MiB per minute).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench._common import GraphQLError, RawConnection, bench_server, graphql_body, machine_summary, render_table, run

COLLECTION = "soak"
CREATE = 'mutation { createCollection(name: "soak") { name } }'
INGEST = (
    "mutation($d: [DocumentInput!]!) { ingest(collection: \"soak\", documents: $d) "
    "{ inserted updated unchanged failed } }"
)
SEARCH = 'query($q: String!) { search(collection: "soak", query: $q, limit: 5) { hits { id score } } }'
EMBED = "query($t: [String!]!) { embed(texts: $t) { dimensions } }"
HEALTH = "{ health { status } }"
COUNT = '{ collection(name: "soak") { documentCount } }'
WORDS = "river stone garden market winter engine violin harbor forest lantern orbit copper meadow".split()


def phrase(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)  # error messages, to say what failed


def disk_mib(path: Path) -> float:
    total = 0
    # os.walk skips folders that vanish while it walks (segments replaced by an optimization).
    for folder, _, files in os.walk(path, onerror=lambda _: None):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name), follow_symlinks=False).st_blocks * 512
            except OSError:
                pass  # removed while we walk (WAL rotation, temp files)
    return total / 2**20


def rss_mib(pid: int) -> tuple[float, float, float]:
    """(the process's RSS, its anonymous part, its process tree's RSS), MiB. The rest of RSS is
    file-backed: mapped shard files and the WAL of Qdrant Edge, libraries; the kernel drops
    those pages under pressure, so growth there is data, not a leak."""
    process = psutil.Process(pid)
    info = process.memory_info()
    tree = info.rss + sum(c.memory_info().rss for c in process.children(recursive=True) if c.is_running())
    anonymous = info.rss - getattr(info, "shared", 0)  # Linux: shared = file-backed + shmem
    return info.rss / 2**20, anonymous / 2**20, tree / 2**20


def ratio(value: float, base: float) -> str:
    return f"{value / base:.3f}x" if base else "-"


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else float("nan")


async def client(url: str, ids: list[str], seed: int, stop: float, tally: Tally) -> None:
    rng = random.Random(seed)
    queries = [phrase(random.Random(i), 6) for i in range(300)]
    pool = [phrase(random.Random(10_000 + i)) for i in range(2_000)]
    connection = RawConnection(url)
    version = 0
    try:
        while time.monotonic() < stop:
            kind = rng.choices(["ingest", "search", "embed", "health"], weights=[2, 4, 3, 1])[0]
            if kind == "ingest":
                version += 1
                chosen = rng.sample(ids, 20)
                docs = [{"id": i, "text": f"{phrase(rng)} v{seed}.{version}", "metadata": {"v": version}} for i in chosen]
                body = graphql_body(INGEST, {"d": docs})
            elif kind == "search":
                query = rng.choice(queries) if rng.random() < 0.75 else phrase(rng, 6) + f" {rng.random():.6f}"
                body = graphql_body(SEARCH, {"q": query})
            elif kind == "embed":
                texts = rng.sample(pool, 3) + [f"{phrase(rng)} {rng.random():.6f}"]
                body = graphql_body(EMBED, {"t": texts})
            else:
                body = graphql_body(HEALTH)
            failed = False
            try:
                await connection.post(body)  # raises on GraphQL errors and non-200 answers
            except GraphQLError as exc:
                failed = True
                tally.samples.append(str(exc)[:160])
            except Exception as exc:
                failed = True
                tally.samples.append(repr(exc)[:160])
                await connection.reset()
            tally.requests += 1
            tally.errors += failed
            tally.by_kind[kind] = tally.by_kind.get(kind, 0) + 1
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=900.0, help="seconds of load after the initial ingest")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before the baseline sample")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--docs", type=int, default=2_000, help="the steady document count")
    parser.add_argument("--embedded", action="store_true", help="the server's embedded PostgreSQL and Redis")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the server (e.g. MALLOC_ARENA_MAX=2); repeatable")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    print(machine_summary(), flush=True)

    async with bench_server(embedded=args.embedded, extra_env=extra_env) as server:
        setup = RawConnection(server.url)
        await setup.post(graphql_body(CREATE))
        ids = [f"doc-{i:06d}" for i in range(args.docs)]
        rng = random.Random(0)
        for start in range(0, len(ids), 256):  # the most documents one ingest takes by default
            docs = [{"id": i, "text": phrase(rng), "metadata": {"v": 0}} for i in ids[start : start + 256]]
            await setup.post(graphql_body(INGEST, {"d": docs}))

        tally = Tally()
        began = time.monotonic()
        stop = began + args.duration
        workers = [asyncio.create_task(client(server.url, ids, seed, stop, tally)) for seed in range(args.clients)]
        rows: list[list[object]] = []
        baseline: tuple[float, float, float, float] | None = None
        rss_after_warmup: list[tuple[float, float]] = []
        anon_after_warmup: list[tuple[float, float]] = []
        last_requests = 0
        while True:
            elapsed = time.monotonic() - began
            own, anon, tree = rss_mib(server.pid)
            data = disk_mib(server.data_dir)
            qdrant = disk_mib(server.data_dir / "qdrant")
            if baseline is None and elapsed >= args.warmup:
                baseline = (own, anon, tree, data)
            if baseline is not None:
                rss_after_warmup.append((elapsed, own))
                anon_after_warmup.append((elapsed, anon))
            rows.append([
                f"{elapsed / 60:.1f}", tally.requests, tally.requests - last_requests, tally.errors,
                round(own, 1), ratio(own, baseline[0]) if baseline else "warm-up",
                round(anon, 1), ratio(anon, baseline[1]) if baseline else "warm-up",
                round(tree, 1), ratio(tree, baseline[2]) if baseline else "warm-up",
                round(data, 1), ratio(data, baseline[3]) if baseline else "warm-up", round(qdrant, 1),
            ])  # fmt: skip
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
            last_requests = tally.requests
            if all(w.done() for w in workers):
                break
            if time.monotonic() >= stop:
                await asyncio.gather(*workers)  # then one last sample
                continue
            await asyncio.sleep(min(args.sample, stop - time.monotonic()))
        await asyncio.gather(*workers)
        count = (await setup.post(graphql_body(COUNT)))["collection"]["documentCount"]
        await setup.close()

    print()
    print(
        f"soak: {args.duration / 60:.1f} min, {args.clients} clients, steady {args.docs} documents "
        f"(count at the end: {count}); requests by kind: {tally.by_kind}; server env: {extra_env or 'default'}"
    )
    print(render_table(
        ["min", "requests", "in sample", "errors", "RSS MiB", "RSS ratio", "anon MiB", "anon ratio",
         "tree RSS MiB", "tree ratio",
         "data dir MiB", "data ratio", "qdrant MiB"],
        rows,
    ))  # fmt: skip
    print(
        f"\nslope after warm-up: RSS {slope_per_minute(rss_after_warmup):.2f} MiB/min, "
        f"anonymous {slope_per_minute(anon_after_warmup):.2f} MiB/min"
    )
    if tally.samples:
        print(f"first errors: {tally.samples[:5]}")


if __name__ == "__main__":
    run(main)
