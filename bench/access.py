"""What access control costs per request: no key (today's path) against a key from the
environment, a stored key (cached lookup) and a stored key with a rate limit (one Redis Lua
call per request), on one real server over HTTP.

    .venv/bin/python bench/access.py [--quick] [--clients 8] [--requests 3000]

The request is `{ models { name state } }`, answered from memory, so the table shows the
access path itself: key lookup, scope check, rate-limit bucket. Rows alternate, twice each,
so a noisy neighbour skews them alike; the baseline is the no-key row of the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench._common import RawConnection, bench_server, fmt, graphql_body, machine_summary, render_table, run, run_closed_loop
import bench._common as common

ADMIN_KEY = "bench-admin-" + "0123456789abcdef0123456789abcdef"
QUERY = "{ models { name state } }"


def keyed_connection(secret: str | None):
    class KeyedConnection(RawConnection):
        def __init__(self, base_url: str, timeout: float = 120.0) -> None:
            super().__init__(base_url, timeout)
            if secret:
                self._head += f"Authorization: Bearer {secret}\r\n"

    return KeyedConnection


def create_key(url: str, name: str, rate: float | None) -> str:
    body = httpx.post(
        url + "/graphql",
        json={"query": "mutation($i: ApiKeyInput!) { createApiKey(input: $i) { secret } }",
              "variables": {"i": {"name": name, "scopes": ["READ"], "ratePerSecond": rate}}},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ).json()  # fmt: skip
    return body["data"]["createApiKey"]["secret"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3000)
    return parser.parse_args()


async def main() -> None:
    args = parse_args()
    requests = 800 if args.quick else args.requests
    print(f"machine: {machine_summary()}")
    env = {"CITADEL_AUTH__REQUIRED": "false", "CITADEL_AUTH__ADMIN_KEY": ADMIN_KEY}
    async with bench_server(extra_env=env) as server:
        scenarios = {
            "no key (baseline)": None,
            "env admin key": ADMIN_KEY,
            "stored key, cached": create_key(server.url, "bench-plain", None),
            "stored key + rate limit (Redis)": create_key(server.url, "bench-rated", 1e9),
        }
        body = graphql_body(QUERY)
        results: dict[str, list] = {name: [] for name in scenarios}
        for _ in range(2):
            for name, secret in scenarios.items():
                common.CLIENTS["keyed"] = keyed_connection(secret)
                result = await run_closed_loop(server.url, [body] * requests, args.clients, server.pid, client_kind="keyed")
                results[name].append(result)
        base = sum(r.per_second for r in results["no key (baseline)"]) / 2
        base_cpu = sum(r.server_cpu_ms_per_request for r in results["no key (baseline)"]) / 2
        rows = []
        for name, runs in results.items():
            rate = sum(r.per_second for r in runs) / len(runs)
            cpu = sum(r.server_cpu_ms_per_request for r in runs) / len(runs)
            p50 = sum(r.latency_ms(50) for r in runs) / len(runs)
            errors = ", ".join(r.error_summary for r in runs)
            rows.append([name, fmt(rate), fmt(rate / base, 2), fmt(p50, 2), fmt(cpu, 3), fmt(cpu / base_cpu, 2), errors])
    print()
    print(f"{args.clients} clients, {requests} requests per row and round, 2 rounds; query {QUERY}")
    print(render_table(["scenario", "req/s", "ratio to baseline", "p50 ms", "server CPU ms/req", "CPU ratio", "errors"], rows))


if __name__ == "__main__":
    run(main)
