"""Two server versions or settings side by side: cold one-text embed in alternating rounds.

    .venv/bin/python bench/compare.py [--a-env K=V] [--b-env K=V] [--b-checkout DIR]
                                      [--rounds 6] [--requests 640] [--clients 64]

A is this checkout; B is this checkout too, or another one (`git worktree add /tmp/base <commit>`)
served by the same venv. Both servers run at once (an idle one costs nothing) and take turns, in
the order A B, B A, A B, ...: a noisy machine slows both alike, so their ratio resolves a
5-10% difference that two separate runs of bench/embed.py cannot (an A/A run gave 0.99x). Each
round sends `--requests` texts no server has seen from `--clients` closed-loop clients; the table
shows each round and the totals, and A/B = A's requests/s over B's.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the server and bench/embed.py

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import LoadResult, bench_server, corpus, graphql_body, machine_summary, render_table, run, run_closed_loop
from bench.embed import EMBED_ONE


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for A")
    parser.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for B")
    parser.add_argument("--b-checkout", type=Path, help="B serves the app of this checkout (default: this one)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=640, help="requests per side per round")
    parser.add_argument("--clients", type=int, default=64)
    return parser.parse_args()


async def main() -> None:
    args = parse_args()
    warm = 128 + args.requests
    texts = [item.text for item in corpus(2 * warm + 2 * args.rounds * args.requests, seed=31)]
    fresh = iter(texts)

    def bodies(count: int) -> list[bytes]:
        return [graphql_body(EMBED_ONE, {"t": next(fresh)}) for _ in range(count)]

    print(f"machine: {machine_summary()}")
    results: dict[str, list[LoadResult]] = {"A": [], "B": []}
    env_a = dict(item.split("=", 1) for item in args.a_env)
    env_b = dict(item.split("=", 1) for item in args.b_env)
    async with bench_server(extra_env=env_a) as a, bench_server(extra_env=env_b, checkout=args.b_checkout) as b:
        servers = {"A": a, "B": b}
        for server in servers.values():  # model loaded, caches and connections warm, JIT paths taken
            await run_closed_loop(server.url, bodies(128), 8)
            await run_closed_loop(server.url, bodies(args.requests), args.clients)
        for round_index in range(args.rounds):
            for side in ("AB" if round_index % 2 == 0 else "BA"):
                server = servers[side]
                result = await run_closed_loop(server.url, bodies(args.requests), args.clients, server_pid=server.pid)
                results[side].append(result)
                print(f"  round {round_index} {side}: {result.per_second:7.1f} req/s  errors {result.error_summary}", flush=True)

    def total_rate(side: str) -> float:
        return LoadResult.combined(results[side]).per_second

    def cpu_ms(rs: list[LoadResult]) -> float:
        return LoadResult.combined(rs).server_cpu_ms_per_request

    rows = [
        [i, ra.per_second, rb.per_second, f"{ra.per_second / rb.per_second:.2f}x", ra.server_cpu_ms_per_request,
         rb.server_cpu_ms_per_request]
        for i, (ra, rb) in enumerate(zip(results["A"], results["B"]))
    ]  # fmt: skip
    ahead = sum(ra.per_second > rb.per_second for ra, rb in zip(results["A"], results["B"]))
    rows.append(["total", total_rate("A"), total_rate("B"), f"{total_rate('A') / total_rate('B'):.2f}x",
                 cpu_ms(results["A"]), cpu_ms(results["B"])])  # fmt: skip
    print()
    print(f"## bench/compare.py: cold one-text embed, {args.clients} clients, {args.requests} requests per side per round")
    print(f"A = this checkout {env_a or ''}; B = {args.b_checkout or 'this checkout'} {env_b or ''}")
    print()
    print(render_table(["round", "A requests/s", "B requests/s", "A/B", "A server CPU ms/req", "B server CPU ms/req"], rows))
    print()
    print(f"A ahead in {ahead} of {args.rounds} rounds; A/B over all rounds {total_rate('A') / total_rate('B'):.3f}")


if __name__ == "__main__":
    run(main)
