"""Rerank throughput of the real server (Cohere's POST /v1/rerank) against in-process
CrossEncoder.predict in batches (the ceiling).

    .venv/bin/python bench/rerank.py [--quick] [--clients 1,8,32] [--rounds 3] [--model-dir DIR]

Starts `python -m app serve` (fresh PostgreSQL database and a unique Redis key prefix on the
machine's servers, Qdrant Edge in a temp dir) with a cross-encoder in its catalog, then
closed-loop clients (one HTTP/1.1 keep-alive connection each) send requests of 1 query x 16
documents (new queries every request: nothing is cached for rerank anyway). The ceiling is
sentence-transformers CrossEncoder.predict of the same pairs in batches of 64 in this process,
measured in alternating rounds with the server (server, ceiling; ceiling, server; ...) while the
other side idles, so a machine that speeds up or slows down mid-run skews both alike.

The model: without --model-dir, a cross-encoder with the architecture of
cross-encoder/ms-marco-MiniLM-L-6-v2 (6 layers, 384 wide: the same compute), built from the bundled
all-MiniLM-L6-v2 weights with a one-label head, since the hub may not be reachable here
(tests/support/cross_encoders.py). --model-dir: any CrossEncoder directory.

Infinity is not compared here: infinity-emb 0.0.78 pins numpy<2, sentence-transformers<4 and
transformers<=5.0, so it needs a virtualenv of its own with another torch (bench/embed.py --infinity
shows how a head-to-head with such a venv's Infinity is run for embeddings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# As the server sets it: spinning OpenMP threads would make the in-process ceiling fight for cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench._common import CpuMeter, bench_server, fmt, machine_summary, percentile, render_table, run

DOCUMENTS_PER_REQUEST = 16
RERANKER = "bench/cross-encoder"
WORDS = (
    "espresso descaling limescale water tank filter grinder milk frother pump pressure boiler steam wand "
    "portafilter crema beans roast temperature cleaning cycle manual warranty display error code"
).split()


def texts(seed: int, count: int, words: int) -> list[str]:
    out = []
    for i in range(count):
        n = seed * 7919 + i * 104729
        out.append(" ".join(WORDS[(n // (k + 1) + k * 31) % len(WORDS)] for k in range(words)) + f" #{seed}-{i}")
    return out


def request(seed: int) -> dict[str, Any]:
    return {
        "model": RERANKER,
        "query": f"how do I fix error {seed} on my espresso machine",
        "documents": texts(seed, DOCUMENTS_PER_REQUEST, 40),
        "top_n": 5,
    }


async def load(url: str, bodies: list[dict[str, Any]], clients: int, server_pid: int) -> dict[str, Any]:
    queue = iter(bodies)
    latencies: list[float] = []
    errors = 0
    connections = [
        httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=1)) for _ in range(clients)
    ]
    await asyncio.gather(*(c.post("/v1/rerank", json=request(-1)) for c in connections))  # open, warm

    async def client(connection: httpx.AsyncClient) -> None:
        nonlocal errors
        for body in queue:
            started = time.perf_counter()
            response = await connection.post("/v1/rerank", content=json.dumps(body).encode(),
                                             headers={"content-type": "application/json"})
            if response.status_code != 200 or len(response.json()["results"]) != 5:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    server_cpu = CpuMeter(server_pid, children=True).start()
    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    seconds = time.perf_counter() - started
    cpu = server_cpu.stop()
    await asyncio.gather(*(c.aclose() for c in connections))
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "per_second": len(latencies) / seconds,
        "latencies": latencies,
        "errors": errors,
        "server_cpu": cpu,
    }


def ceiling(model: Any, bodies: list[dict[str, Any]]) -> float:
    """Requests/s of CrossEncoder.predict over the same pairs, batches of 64, in this process."""
    pairs = [(b["query"], d) for b in bodies for d in b["documents"]]
    started = time.perf_counter()
    model.predict(pairs, batch_size=64, show_progress_bar=False)
    return len(bodies) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=48, help="requests per client count per round")
    parser.add_argument("--quick", action="store_true", help="1 round of 16 requests")
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests = 1, 16
    counts = [int(c) for c in args.clients.split(",")]

    from sentence_transformers import CrossEncoder

    model_dir = args.model_dir
    if model_dir is None:
        from tests.support.cross_encoders import build_cross_encoder

        model_dir = await asyncio.to_thread(build_cross_encoder, Path(tempfile.mkdtemp(prefix="bench-ce-")) / "model")
    reference = CrossEncoder(str(model_dir), device="cpu", local_files_only=True)
    env = {
        "CITADEL_MODELS": json.dumps({RERANKER: {"task": "rerank", "path": str(model_dir)}}),
        "CITADEL_DEFAULT_RERANKER": RERANKER,
    }
    print(machine_summary(), flush=True)
    results: dict[int, list[dict[str, Any]]] = {c: [] for c in counts}
    ceilings: dict[int, list[float]] = {c: [] for c in counts}
    async with bench_server(extra_env=env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as admin:  # load the reranker first
            await admin.post("/graphql", json={"query": f'mutation {{ downloadModel(name: "{RERANKER}") {{ state }} }}'})
            for _ in range(600):
                state = (await admin.post("/graphql", json={"query": f'{{ model(name: "{RERANKER}") {{ state }} }}'})).json()
                if state["data"]["model"]["state"] == "READY":
                    break
                await asyncio.sleep(0.5)
        seed = 0
        for round_ in range(args.rounds):
            for clients in counts:
                bodies = [request(seed + i) for i in range(max(args.requests, clients))]
                seed += len(bodies)
                sides = ["server", "ceiling"] if round_ % 2 == 0 else ["ceiling", "server"]
                for side in sides:
                    if side == "server":
                        results[clients].append(await load(server.url, bodies, clients, server.pid))
                    else:
                        ceilings[clients].append(await asyncio.to_thread(ceiling, reference, bodies))
                print(f"round {round_ + 1}, {clients} clients: {results[clients][-1]['per_second']:.1f} req/s "
                      f"(ceiling {ceilings[clients][-1]:.1f})", flush=True)

    rows = []
    for clients in counts:
        runs = results[clients]
        requests = sum(r["requests"] for r in runs)
        seconds = sum(r["seconds"] for r in runs)
        rate = requests / seconds
        ceiling_rate = sum(ceilings[clients]) / len(ceilings[clients])
        latencies = [latency for r in runs for latency in r["latencies"]]
        rows.append([
            clients,
            fmt(rate),
            fmt(rate * DOCUMENTS_PER_REQUEST, 0),
            fmt(percentile(latencies, 50) * 1000),
            fmt(percentile(latencies, 99) * 1000),
            fmt(ceiling_rate),
            f"{rate / ceiling_rate:.2f}",
            sum(int(r["errors"]) for r in runs),
        ])
    print()
    print(f"POST /v1/rerank, 1 query x {DOCUMENTS_PER_REQUEST} documents (~50 tokens each) per request, "
          f"{args.rounds} alternating rounds")
    print(render_table(
        ["clients", "req/s", "pairs/s", "p50 ms", "p99 ms", "ceiling req/s",
         "ratio to ceiling", "errors"],
        rows,
    ))


if __name__ == "__main__":
    run(main)
