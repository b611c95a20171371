"""bench/locustfile.py, headless for a few seconds against the real server: every user type runs
and nothing fails (GraphQL errors count as failures there)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_headless_locust_run_has_no_failures(live_server, tmp_path):
    prefix = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
            "--host", live_server.url, "--users", "6", "--spawn-rate", "6", "--run-time", "8s",
            "--only-summary", "--csv", str(prefix), "--exit-code-on-error", "1", "--stop-timeout", "20",
        ],  # fmt: skip
        cwd=ROOT,
        env={**os.environ, "CITADEL_LOCUST_COLLECTION": "locust_e2e"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows.pop("Aggregated")
    assert int(total["Failure Count"]) == 0, rows
    names = set(rows)
    assert {"embed (1 text, hot)", "search", "ingest (20 docs)"} <= names, names
    assert all(int(r["Request Count"]) > 0 for r in rows.values())
