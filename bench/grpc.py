"""One-text embeds over gRPC (citadel.v1.Citadel/Embed) against the same over GraphQL HTTP
(`embed(texts: [$t])`), on one real server with both transports on.

    .venv/bin/python bench/grpc.py [--quick] [--embedded] [--clients 1,16] [--requests 400] [--rounds 4]

Starts `python -m app serve` with CITADEL_GRPC__ENABLED (fresh PostgreSQL database and a unique
Redis key prefix on the machine's servers, Qdrant Edge in a temp dir; --embedded: the server's
own). Closed-loop clients, one connection each: gRPC clients are grpc.aio channels of their own
(a local subchannel pool, so 16 clients are 16 HTTP/2 connections, not one shared), GraphQL
clients the bare asyncio HTTP/1.1 keep-alive client of bench/_load.py. Every request embeds one
short text:

- `cold`: a text never sent before (a forward pass, a cache miss and a cache write);
- `cached`: a text the same transport embedded earlier in this run (served from the cache).

Rounds alternate: in each round every (phase, clients) row runs once per transport, the
transports' order reversed every round, so a machine that speeds up or slows down mid-run skews
both alike. The table adds the rounds up per row: requests/s, p50/p99 latency, the server's CPU
per request (the steadiest figure on a shared machine) and the ratio gRPC / GraphQL of each, and
what the clients in this process spent per request (they share the machine with the server).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This script is named grpc.py: with its own folder first on sys.path, `import grpc` would find it, not grpcio.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import grpc  # noqa: E402

from app.grpc.citadel.v1 import citadel_pb2 as pb  # noqa: E402
from app.grpc.citadel.v1 import citadel_pb2_grpc as pb_grpc  # noqa: E402
from bench._common import (  # noqa: E402
    CpuMeter,
    LoadResult,
    bench_server,
    corpus,
    fmt,
    graphql_body,
    machine_summary,
    render_table,
    run,
    run_closed_loop,
)
from tests.support.server import free_port  # noqa: E402

EMBED = "query($t: String!) { embed(texts: [$t]) { embeddings { index vector cached } } }"
GRPC, GRAPHQL = "gRPC", "GraphQL"
PHASES = ("cold", "cached")


async def grpc_closed_loop(target: str, texts: list[str], clients: int, server_pid: int) -> LoadResult:
    """As bench/_load.run_closed_loop, over gRPC: `clients` channels, each sending its next Embed as
    soon as the previous one answered, until every text was sent once; connections opened first."""
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(clients)]
    stubs = [pb_grpc.CitadelStub(channel) for channel in channels]
    await asyncio.gather(*(asyncio.wait_for(channel.channel_ready(), 30) for channel in channels))
    queue = iter(texts)
    result = LoadResult(clients=clients, requests=len(texts), seconds=0.0)

    async def client(stub: pb_grpc.CitadelStub) -> None:
        for text in queue:
            started = time.perf_counter()
            try:
                await stub.Embed(pb.EmbedRequest(texts=[text]), timeout=120)
            except grpc.aio.AioRpcError as exc:
                trailing = dict(exc.trailing_metadata() or ())
                code = trailing.get("citadel-code") or exc.code().name
                result.errors[code] = result.errors.get(code, 0) + 1
                continue
            result.latencies.append(time.perf_counter() - started)

    own_cpu, server_cpu = CpuMeter().start(), CpuMeter(server_pid, children=True).start()
    started = time.perf_counter()
    try:
        await asyncio.gather(*(client(stub) for stub in stubs))
    finally:
        result.seconds = time.perf_counter() - started
        result.loadgen_cpu_percent, result.server_cpu_percent = own_cpu.stop(), server_cpu.stop()
        await asyncio.gather(*(channel.close() for channel in channels))
    return result


async def graphql_closed_loop(url: str, texts: list[str], clients: int, server_pid: int) -> LoadResult:
    bodies = [graphql_body(EMBED, {"t": text}) for text in texts]
    return await run_closed_loop(url, bodies, clients, server_pid=server_pid)


def ratio(a: float, b: float) -> str:
    return fmt(a / b, 2) if b and not math.isnan(a) and not math.isnan(b) else "-"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--requests", type=int, default=400, help="requests per row, transport and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 60 requests")
    parser.add_argument("--embedded", action="store_true", help="the server's embedded PostgreSQL and Redis")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 60, 2
    client_counts = [int(c) for c in args.clients.split(",")]
    print(machine_summary(), flush=True)

    # Disjoint texts: every cold request sends one never sent before, by either transport.
    cold_per_transport = args.requests * args.rounds * len(client_counts)
    texts = iter(item.text for item in corpus(2 * cold_per_transport + 64))
    warm_texts = [next(texts) for _ in range(64)]
    cold = {t: [[next(texts) for _ in range(args.requests)] for _ in range(args.rounds * len(client_counts))] for t in (GRPC, GRAPHQL)}
    sent: dict[str, list[str]] = {GRPC: [], GRAPHQL: []}  # what each transport embedded (cached rows resend them)

    port = free_port()
    env = {"CITADEL_GRPC__ENABLED": "true", "CITADEL_GRPC__PORT": str(port)}
    async with bench_server(embedded=args.embedded, extra_env=env) as server:
        target, pid = f"127.0.0.1:{port}", server.pid
        # Warm both paths (first forward passes, connections, caches of the server's own) unmeasured.
        await grpc_closed_loop(target, warm_texts[:32], 4, pid)
        await graphql_closed_loop(server.url, warm_texts[32:], 4, pid)

        results: dict[tuple[str, int, str], list[LoadResult]] = {}
        drawn = 0
        for round_index in range(args.rounds):
            order = (GRPC, GRAPHQL) if round_index % 2 == 0 else (GRAPHQL, GRPC)
            for clients in client_counts:
                for phase in PHASES:
                    for transport in order:
                        if phase == "cold":
                            batch = cold[transport][drawn]
                            sent[transport].extend(batch)
                        else:  # texts this transport embedded in earlier cold rows: all in the cache
                            batch = [sent[transport][i % len(sent[transport])] for i in range(args.requests)]
                        loop = grpc_closed_loop(target, batch, clients, pid) if transport == GRPC else graphql_closed_loop(server.url, batch, clients, pid)
                        result = await loop
                        results.setdefault((phase, clients, transport), []).append(result)
                        print(
                            f"round {round_index + 1}/{args.rounds} {phase:6} {clients:3} clients {transport:7} "
                            f"{result.per_second:8.1f} req/s p50 {result.latency_ms(50):7.2f} ms errors {result.error_summary}",
                            flush=True,
                        )
                    if phase == "cold":
                        drawn += 1

    headers = [
        "phase", "clients",
        "gRPC req/s", "GraphQL req/s", "ratio req/s",
        "gRPC p50 ms", "GraphQL p50 ms", "ratio p50",
        "gRPC p99 ms", "GraphQL p99 ms", "ratio p99",
        "gRPC server CPU ms/req", "GraphQL server CPU ms/req", "ratio CPU/req",
        "gRPC client CPU ms/req", "GraphQL client CPU ms/req",
        "errors (gRPC / GraphQL)",
    ]  # fmt: skip
    rows = []
    for phase in PHASES:
        for clients in client_counts:
            g = LoadResult.combined(results[(phase, clients, GRPC)])
            h = LoadResult.combined(results[(phase, clients, GRAPHQL)])
            rows.append([
                phase, clients,
                fmt(g.per_second), fmt(h.per_second), ratio(g.per_second, h.per_second),
                fmt(g.latency_ms(50), 2), fmt(h.latency_ms(50), 2), ratio(g.latency_ms(50), h.latency_ms(50)),
                fmt(g.latency_ms(99), 2), fmt(h.latency_ms(99), 2), ratio(g.latency_ms(99), h.latency_ms(99)),
                fmt(g.server_cpu_ms_per_request, 2), fmt(h.server_cpu_ms_per_request, 2),
                ratio(g.server_cpu_ms_per_request, h.server_cpu_ms_per_request),
                fmt(g.loadgen_cpu_ms_per_request, 2), fmt(h.loadgen_cpu_ms_per_request, 2),
                f"{g.error_summary} / {h.error_summary}",
            ])  # fmt: skip
    print()
    print(f"{args.rounds} rounds x {args.requests} one-text embeds per row and transport; ratio = gRPC / GraphQL")
    print(render_table(headers, rows))


if __name__ == "__main__":
    run(main)
