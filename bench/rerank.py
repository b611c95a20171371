"""Rerank throughput of the real server (Cohere's POST /v1/rerank) against Infinity's POST /rerank
serving the same cross-encoder and against CrossEncoder.predict in batches (the ceiling).

    .venv/bin/python bench/rerank.py [--quick] [--clients 1,8,32] [--rounds 3] [--model-dir DIR]
                                     [--infinity /path/to/infinity_emb]

Starts `python -m app serve` (fresh PostgreSQL database and a unique Redis key prefix on the
machine's servers, Qdrant Edge in a temp dir) with a cross-encoder in its catalog, then
closed-loop clients (one HTTP/1.1 keep-alive connection each, httpx in this process) send requests
of 1 query x 16 documents (new queries every request: nothing is cached for rerank anyway).

--infinity PATH (the `infinity_emb` of a virtualenv of its own: infinity-emb 0.0.78 pins numpy<2,
sentence-transformers<4 and transformers<=5.0, so it cannot share Citadel's): Infinity serves the
same model directory under the same model name (torch, CPU, batch size 64, its own OpenMP
defaults), and gets byte-for-byte the same bodies on its POST /rerank. Before any timing the
bench checks that both servers' relevance scores for all 16 documents of a few requests equal
CrossEncoder.predict's for the same pairs (max |difference| printed; over 1e-3 stops the bench):
the same model, so a throughput ratio compares servers, not models.

The ceiling: CrossEncoder.predict of 32 requests' pairs in batches of 64, in two subprocesses
(bench/_ceiling.py HonestCeiling: OpenMP's default wait policy and OMP_WAIT_POLICY=PASSIVE, the
higher rate taken), measured while both servers idle before every block and after the last.
Rounds alternate: in each round every client count runs once per server, the servers' order
reversed every round, so a machine that speeds up or slows down mid-run skews both alike.

The model: without --model-dir, a cross-encoder with the architecture of
cross-encoder/ms-marco-MiniLM-L-6-v2 (6 layers, 384 wide: the same compute), built from the bundled
all-MiniLM-L6-v2 weights with a one-label head, since the hub may not be reachable here
(tests/support/cross_encoders.py). --model-dir: any CrossEncoder directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._ceiling import HonestCeiling
from bench._common import CpuMeter, bench_server, fmt, machine_summary, percentile, render_table, run
from bench._infinity import infinity_server

DOCUMENTS_PER_REQUEST = 16
TOP_N = 5
CEILING_REQUESTS = 16
SCORE_TOLERANCE = 1e-3
RERANKER = "bench/cross-encoder"
WORDS = (
    "espresso descaling limescale water tank filter grinder milk frother pump pressure boiler steam wand "
    "portafilter crema beans roast temperature cleaning cycle manual warranty display error code"
).split()
CITADEL, INFINITY = "Citadel", "Infinity"


def texts(seed: int, count: int, words: int) -> list[str]:
    out = []
    for i in range(count):
        n = seed * 7919 + i * 104729
        out.append(" ".join(WORDS[(n // (k + 1) + k * 31) % len(WORDS)] for k in range(words)) + f" #{seed}-{i}")
    return out


def request(seed: int, top_n: int | None = TOP_N) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": RERANKER,
        "query": f"how do I fix error {seed} on my espresso machine",
        "documents": texts(seed, DOCUMENTS_PER_REQUEST, 40),
    }
    if top_n is not None:
        body["top_n"] = top_n
    return body


async def load(url: str, path: str, bodies: list[dict[str, Any]], clients: int, server_pid: int) -> dict[str, Any]:
    queue = iter(bodies)
    latencies: list[float] = []
    errors = 0
    first_error = ""
    connections = [
        httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=1)) for _ in range(clients)
    ]
    await asyncio.gather(*(c.post(path, json=request(-1)) for c in connections))  # open, warm

    async def client(connection: httpx.AsyncClient) -> None:
        nonlocal errors, first_error
        for body in queue:
            started = time.perf_counter()
            response = await connection.post(path, content=json.dumps(body).encode(),
                                             headers={"content-type": "application/json"})  # fmt: skip
            if response.status_code != 200 or len(response.json()["results"]) != TOP_N:
                errors += 1
                first_error = first_error or f"{response.status_code} {response.text[:200]}"
                continue
            latencies.append(time.perf_counter() - started)

    own_cpu = CpuMeter().start()
    server_cpu = CpuMeter(server_pid, children=True).start()
    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    seconds = time.perf_counter() - started
    cpu, loadgen = server_cpu.stop(), own_cpu.stop()
    await asyncio.gather(*(c.aclose() for c in connections))
    if first_error:
        print(f"  first error from {url}{path}: {first_error}", flush=True)
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "per_second": len(latencies) / seconds,
        "latencies": latencies,
        "errors": errors,
        "server_cpu": cpu,
        "loadgen_cpu": loadgen,
    }


async def check_scores(url: str, path: str, reference: Any, label: str, seeds: range) -> float:
    """The largest |relevance_score - CrossEncoder.predict| over every document of these requests."""
    worst = 0.0
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for seed in seeds:
            body = request(seed, top_n=None)
            response = await client.post(path, json=body)
            response.raise_for_status()
            scores = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
            if sorted(scores) != list(range(DOCUMENTS_PER_REQUEST)):
                raise SystemExit(f"{label} answered indices {sorted(scores)} for {DOCUMENTS_PER_REQUEST} documents")
            expected = reference.predict([(body["query"], d) for d in body["documents"]], show_progress_bar=False)
            worst = max(worst, max(abs(scores[i] - float(expected[i])) for i in range(DOCUMENTS_PER_REQUEST)))
    print(f"scores: {label} vs CrossEncoder.predict, {len(seeds)} requests x {DOCUMENTS_PER_REQUEST} documents: "
          f"max |difference| {worst:.2e}", flush=True)  # fmt: skip
    if worst > SCORE_TOLERANCE:
        raise SystemExit(f"{label} does not serve the same model: scores differ by up to {worst:.3g}")
    return worst


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=48, help="requests per client count per server per round")
    parser.add_argument("--quick", action="store_true", help="1 round of 16 requests")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--infinity", metavar="INFINITY_EMB", help="the infinity_emb executable of another venv")
    parser.add_argument("--infinity-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for Infinity; repeatable")  # fmt: skip
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
    ceiling_bodies = [request(1_000_000 + i) for i in range(CEILING_REQUESTS)]
    ceiling = HonestCeiling([(b["query"], d) for b in ceiling_bodies for d in b["documents"]], str(model_dir), "rerank")
    await asyncio.to_thread(ceiling.start)
    try:
        await _measure(args, counts, model_dir, reference, env, ceiling)
    finally:
        ceiling.close()


async def _measure(args, counts: list[int], model_dir: Path, reference: Any, env: dict[str, str],
                   ceiling: HonestCeiling) -> None:  # fmt: skip
    import contextlib

    sides = [CITADEL] + ([INFINITY] if args.infinity else [])
    results: dict[tuple[str, int], list[dict[str, Any]]] = {(s, c): [] for s in sides for c in counts}
    brackets: dict[int, set[int]] = {c: set() for c in counts}  # client count -> indices of its ceiling samples
    scores: dict[str, float] = {}
    async with bench_server(extra_env=env) as server, contextlib.AsyncExitStack() as stack:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as admin:  # load the reranker first
            await admin.post("/graphql", json={"query": f'mutation {{ downloadModel(name: "{RERANKER}") {{ state }} }}'})
            for _ in range(600):
                state = (await admin.post("/graphql", json={"query": f'{{ model(name: "{RERANKER}") {{ state }} }}'})).json()
                if state["data"]["model"]["state"] == "READY":
                    break
                await asyncio.sleep(0.5)
        targets = {CITADEL: (server.url, "/v1/rerank", server.pid)}
        if args.infinity:
            extra = dict(item.split("=", 1) for item in args.infinity_env)
            url, pid, name = stack.enter_context(infinity_server(args.infinity, model_dir, RERANKER, extra))
            print(f"Infinity ready at {url}, serving {name!r}", flush=True)
            targets[INFINITY] = (url, "/rerank", pid)
        for side, (url, path, _pid) in targets.items():
            scores[side] = await check_scores(url, path, reference, side, range(2_000_000, 2_000_004))
        seed = 0
        for round_ in range(args.rounds):
            for clients in counts:
                bodies = [request(seed + i) for i in range(max(args.requests, clients))]
                seed += len(bodies)
                brackets[clients].add(len(ceiling.samples))
                await asyncio.to_thread(ceiling.measure, f"round {round_ + 1}, before {clients} clients", True)
                brackets[clients].add(len(ceiling.samples))  # the sample after its block (the next block's first)
                order = sides if round_ % 2 == 0 else sides[::-1]
                for side in order:
                    url, path, pid = targets[side]
                    results[(side, clients)].append(await load(url, path, bodies, clients, pid))
                    await asyncio.sleep(1.0)
                line = ", ".join(f"{s} {results[(s, clients)][-1]['per_second']:.1f}" for s in order)
                sample = ceiling.samples[-1]
                best = max(r.per_second for r in sample.rates.values()) / DOCUMENTS_PER_REQUEST
                print(f"round {round_ + 1}, {clients} clients: {line} req/s (ceiling before: {best:.1f} req/s)", flush=True)
        await asyncio.to_thread(ceiling.measure, "after the last block", True)

    headers = ["clients", "server", "req/s", "pairs/s", "p50 ms", "p99 ms", "ceiling req/s", "ratio to ceiling",
               "ratio to infinity", "ahead of infinity in rounds", "load-gen CPU %", "server CPU %",
               "server CPU ms/req", "errors"]  # fmt: skip
    rows = []
    for clients in counts:
        samples = [ceiling.samples[i] for i in sorted(brackets[clients]) if i < len(ceiling.samples)]
        ceiling_rate = ceiling.best(samples)[0] / DOCUMENTS_PER_REQUEST
        rate = {}
        for side in sides:
            runs = results[(side, clients)]
            rate[side] = sum(r["requests"] for r in runs) / sum(r["seconds"] for r in runs)
        for side in sides:
            runs = results[(side, clients)]
            seconds = sum(r["seconds"] for r in runs)
            requests = sum(r["requests"] for r in runs)
            latencies = [latency for r in runs for latency in r["latencies"]]
            to_infinity = f"{rate[side] / rate[INFINITY]:.2f}x" if INFINITY in rate else "-"
            ahead = "-"
            if INFINITY in rate and side != INFINITY:
                wins = sum(a["per_second"] > b["per_second"] for a, b in zip(runs, results[(INFINITY, clients)]))
                ahead = f"{wins} of {len(runs)}"
            server_cpu = sum(r["server_cpu"] * r["seconds"] for r in runs) / seconds
            rows.append([
                clients, side, fmt(rate[side]), fmt(rate[side] * DOCUMENTS_PER_REQUEST, 0),
                fmt(percentile(latencies, 50) * 1000), fmt(percentile(latencies, 99) * 1000), fmt(ceiling_rate),
                f"{rate[side] / ceiling_rate:.2f}x", to_infinity, ahead,
                f"{sum(r['loadgen_cpu'] * r['seconds'] for r in runs) / seconds:.0f}%", f"{server_cpu:.0f}%",
                fmt(10.0 * server_cpu * seconds / requests if requests else float("nan")),
                sum(int(r["errors"]) for r in runs),
            ])  # fmt: skip
    by_policy = ceiling.by_policy(ceiling.samples)
    best, policy = ceiling.best(ceiling.samples)
    print()
    print(f"## bench/rerank.py: POST /v1/rerank{' vs Infinity POST /rerank' if args.infinity else ''}, 1 query x "
          f"{DOCUMENTS_PER_REQUEST} documents (~50 tokens each) per request, top_n {TOP_N}, {args.rounds} alternating "
          f"rounds, {args.requests} requests per server per client count per round")  # fmt: skip
    print("scores (all 16 documents of 4 requests) against CrossEncoder.predict: "
          + ", ".join(f"{side} max |difference| {worst:.1e}" for side, worst in scores.items()))  # fmt: skip
    print(f"ceiling = CrossEncoder.predict of {CEILING_REQUESTS} requests' pairs, batches of 64, in subprocesses, servers "
          "idle, before every block and after the last; a row's ceiling: the higher policy over the samples around "
          f"its blocks. All samples, pairs/s: " + ", ".join(f"{n} {r:.0f}" for n, r in by_policy.items())
          + f" (the higher: {policy}, {best / DOCUMENTS_PER_REQUEST:.1f} req/s)")  # fmt: skip
    print("load-gen = httpx in this process; CPU % = percent of one core over the runs")
    print()
    print(render_table(headers, rows))


if __name__ == "__main__":
    run(main)
